"""The cache on a Redis Cluster that fails over: gracefully, and by losing its primary.

Each test runs its own two-node cluster (one primary with every slot, one replica), so it may
kill nodes freely; the shared cluster has no replicas.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode

from scalekit.cache import Cache, NearCache, RedisBackend
from scalekit.errors import CacheBackendError
from tests.support.polling import eventually
from tests.support.processes import RedisFailoverCluster

pytestmark = pytest.mark.redis_cluster


@pytest.fixture
async def client(redis_failover_cluster: RedisFailoverCluster) -> AsyncIterator[Any]:
    nodes = [ClusterNode(h, p) for h, p in redis_failover_cluster.startup_nodes]
    client = aioredis.RedisCluster(startup_nodes=nodes)
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


KEYS = [f"item:{i}" for i in range(40)]


async def test_a_graceful_failover_loses_nothing_and_raises_nothing(
    redis_failover_cluster: RedisFailoverCluster, client: Any
) -> None:
    cache = Cache(RedisBackend(client, timeout=2.0), namespace="fo", default_ttl=300, strict=True)
    assert await cache.set_many({k: i for i, k in enumerate(KEYS)})
    redis_failover_cluster.sync()
    old_primary = redis_failover_cluster.primary.port
    redis_failover_cluster.failover()
    assert redis_failover_cluster.primary.port != old_primary
    # strict: any backend error would raise; the client follows the MOVED replies
    assert await cache.get_many(KEYS) == {k: i for i, k in enumerate(KEYS)}
    assert await cache.set("after", 1)
    assert await cache.get("after") == 1
    assert cache.stats().backend_errors == 0


async def test_a_dead_primary_fails_open_then_the_promoted_replica_serves(
    redis_failover_cluster: RedisFailoverCluster, client: Any
) -> None:
    cache = Cache(RedisBackend(client, timeout=0.5), namespace="fo", default_ttl=300)
    strict = Cache(RedisBackend(client, timeout=0.5), namespace="fo", strict=True)
    assert await cache.set_many({k: i for i, k in enumerate(KEYS)})
    redis_failover_cluster.sync()
    dead = redis_failover_cluster.kill_primary()

    loads = 0

    async def load() -> str:
        nonlocal loads
        loads += 1
        return "from the database"

    started = time.monotonic()
    assert await cache.get("item:1") is None  # a miss, not an exception
    assert await cache.get_or_load("item:2", load) == "from the database"
    assert not await cache.set("item:3", 3)
    assert time.monotonic() - started < 10  # bounded by the timeouts, not by the outage
    with pytest.raises(CacheBackendError):
        await strict.get("item:1")
    assert cache.stats().backend_errors >= 3

    redis_failover_cluster.promote(dead)

    async def served() -> bool:
        return await cache.get("item:1") == 1

    await eventually(served)
    assert await cache.get_many(KEYS) == {k: i for i, k in enumerate(KEYS)}  # replicated
    assert await cache.set("item:3", 33)
    assert await cache.get("item:3") == 33


async def test_the_near_cache_stays_coherent_across_failovers(
    redis_failover_cluster: RedisFailoverCluster, client: Any
) -> None:
    # The near cache keeps values for up to a minute: only invalidations can make a reader see
    # another client's writes sooner, so every check below proves the link still works.
    near = NearCache(max_ttl=60)
    reader = Cache(RedisBackend(client, timeout=1.0), namespace="fo", default_ttl=300, near=near)
    nodes = [ClusterNode(h, p) for h, p in redis_failover_cluster.startup_nodes]
    other = aioredis.RedisCluster(startup_nodes=nodes)
    writer = Cache(RedisBackend(other, timeout=1.0), namespace="fo", default_ttl=300)
    try:
        await writer.set("k", 1)
        assert await near.wait_connected(max_wait=5)

        async def reads(value: int) -> bool:
            return await reader.get("k") == value

        await eventually(lambda: reads(1))
        assert await reader.get("k") == 1
        assert reader.stats().near_hits >= 1

        redis_failover_cluster.failover()

        async def write(value: int) -> Callable[[], Awaitable[bool]]:
            async def done() -> bool:
                return await writer.set("k", value)

            return done

        await eventually(await write(2))
        await eventually(lambda: reads(2))

        dead = redis_failover_cluster.kill_primary()
        redis_failover_cluster.promote(dead)
        await eventually(await write(3))
        await eventually(lambda: reads(3))
        hits = reader.stats().near_hits
        assert await reader.get("k") == 3
        await eventually(lambda: reads(3))
        assert reader.stats().near_hits > hits  # served locally again, and current
    finally:
        await reader.aclose()
        await writer.aclose()
        await other.aclose()


async def test_the_near_cache_relinks_when_its_primary_is_gone_for_good(
    redis_failover_cluster: RedisFailoverCluster,
) -> None:
    # A replaced node (a new pod, a new address) never answers at the old one again: the
    # link must follow the cluster to the promoted primary, or the L1 stays off for good.
    # redis-py replaces its startup nodes with the primaries it discovers, so on a one-shard
    # cluster whose primary is gone it has nobody left to ask (redis-py#3310): keep the list.
    def connect() -> Any:
        nodes = [ClusterNode(h, p) for h, p in redis_failover_cluster.startup_nodes]
        return aioredis.RedisCluster(startup_nodes=nodes, dynamic_startup_nodes=False)

    near = NearCache(max_ttl=60, ping_interval=0.25)
    mine, other = connect(), connect()
    reader = Cache(RedisBackend(mine, timeout=0.5), namespace="fo", default_ttl=300, near=near)
    writer = Cache(RedisBackend(other, timeout=0.5), namespace="fo", default_ttl=300)
    try:
        await writer.set("k", 1)
        assert await reader.get("k") == 1  # the first use starts the link
        assert await near.wait_connected(max_wait=5)
        redis_failover_cluster.sync()
        dead = redis_failover_cluster.kill_primary()
        redis_failover_cluster.promote(dead, restart=False)

        async def relinked() -> bool:
            return near.connected

        await eventually(relinked, within=15, what="the near cache linked to the new primary")

        async def wrote() -> bool:
            return await writer.set("k", 2)

        await eventually(wrote, what="a write on the new primary")

        async def reads_two_locally() -> bool:
            hits = reader.stats().near_hits
            return await reader.get("k") == 2 and reader.stats().near_hits > hits

        await eventually(reads_two_locally, what="near hits with the current value")
        assert await writer.set("k", 3)

        async def reads_three() -> bool:
            return await reader.get("k") == 3

        await eventually(reads_three, what="the invalidation of k through the new link")
    finally:
        await reader.aclose()
        await writer.aclose()
        await other.aclose()
        await mine.aclose()
