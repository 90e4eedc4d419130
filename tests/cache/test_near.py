"""NearCache in one process: coherence rules, link loss, bounds."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from scalekit.cache import Cache, MemoryBackend, NearCache, RedisBackend
from scalekit.errors import ConfigurationError
from scalekit.testing import FaultProxy
from tests.support.processes import RedisProcess


async def _until(predicate, what: str, limit: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_hits_are_served_locally_and_writes_invalidate(redis_url: str, unique: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    near = NearCache(max_entries=100)
    cache = Cache(RedisBackend(client, timeout=5.0), namespace=unique, near=near)
    try:
        assert await near.wait_connected()
        assert near.active_mode == "tracking"
        await cache.set("k", {"v": 1})
        await cache.get("k")
        await _until(lambda: f"{unique}:k" in near._data or near.invalidations > 0, "a fill")
        for _ in range(5):
            assert await cache.get("k") == {"v": 1}
        assert cache.stats().near_hits >= 4
        # a write by someone else (not through scalekit) is seen through tracking
        await client.set(f"{unique}:k", b"garbage")
        await _until(lambda: f"{unique}:k" not in near._data, "the invalidation")
        assert await cache.get("k") is None  # undecodable now: a miss, not the old L1 value
    finally:
        await cache.clear()
        await cache.aclose()
        await client.aclose()


async def test_an_invalidation_overtaking_a_read_prevents_its_fill() -> None:
    near = NearCache()
    near.connected = True
    near._time = time.time
    token = near.begin("ns:k")
    near._drop("ns:k")  # the invalidation arrives before the read's reply
    near.fill("ns:k", token, "old", time.time() + 60)
    assert len(near) == 0
    token = near.begin("ns:k")
    near.flush()
    near.fill("ns:k", token, "old", time.time() + 60)
    assert len(near) == 0
    token = near.begin("ns:k")
    near.fill("ns:k", token, "new", time.time() + 60)
    assert near.lookup("ns:k") == "new"


async def test_entries_expire_after_max_ttl_and_are_bounded() -> None:
    now = [1000.0]
    near = NearCache(max_entries=2, max_ttl=5)
    near.connected = True
    near._time = lambda: now[0]
    for k in "abc":
        near.fill(k, near.begin(k), k, now[0] + 60)
    assert len(near) == 2
    assert near.evictions == 1
    assert near.lookup("c") == "c"
    now[0] += 5
    assert near.lookup("c") is not "c"  # noqa: F632 - the sentinel, not the value


async def test_link_loss_flushes_and_bypasses_then_recovers(
    redis_process: RedisProcess, unique: str
) -> None:
    client = aioredis.Redis.from_url(redis_process.url, socket_connect_timeout=0.2)
    near = NearCache(ping_interval=0.1)
    cache = Cache(RedisBackend(client, timeout=0.2), namespace=unique, near=near)
    try:
        assert await near.wait_connected()
        await cache.set("k", "v")
        for _ in range(50):
            await cache.get("k")
            if cache.stats().near_hits:
                break
        assert cache.stats().near_hits
        redis_process.stop()
        await _until(lambda: not near.connected, "the link to drop")
        assert len(near) == 0
        assert await cache.get("k") is None  # bypassed: Redis is down, so a miss
        redis_process.start()  # restarted empty
        assert await near.wait_connected(max_wait=10)
        await cache.set("k", "v2")
        assert await cache.get("k") == "v2"
    finally:
        await cache.aclose()
        await client.aclose()


async def test_a_hung_link_is_detected_by_ping(redis_url: str, unique: str) -> None:
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    async with FaultProxy(host, int(port)) as proxy:
        client = aioredis.Redis(host=proxy.host, port=proxy.port)
        near = NearCache(ping_interval=0.1)
        cache = Cache(RedisBackend(client, timeout=0.2), namespace=unique, near=near)
        try:
            assert await near.wait_connected()
            proxy.blackhole()
            await _until(lambda: not near.connected, "the hung link to be noticed")
            await proxy.restore()
            assert await near.wait_connected(max_wait=10)
        finally:
            await cache.aclose()
            await client.aclose()


async def test_near_cache_on_redis_cluster_sees_writes_on_every_primary(
    redis_cluster_nodes: list[tuple[str, int]], unique: str
) -> None:
    host, port = redis_cluster_nodes[0]
    client = aioredis.RedisCluster(host=host, port=port)
    await client.initialize()
    near = NearCache()
    cache = Cache(RedisBackend(client, timeout=5.0), namespace=unique, near=near)
    keys = [f"k{i}" for i in range(12)]  # over all three primaries
    try:
        assert await near.wait_connected()
        assert near._links == 3
        await cache.set_many({k: k for k in keys})
        for k in keys:
            for _ in range(100):
                assert await cache.get(k) == k
                if f"{unique}:{k}" in near._data:
                    break
                await asyncio.sleep(0.005)
        assert len(near) == len(keys)
        before = cache.stats().near_hits
        assert await cache.get_many(keys) == {k: k for k in keys}
        assert cache.stats().near_hits == before + len(keys)  # all from memory
        for k in keys:  # written by someone else, on whichever primary owns the slot
            await client.set(f"{unique}:{k}", b"changed")
        await _until(lambda: len(near) == 0, "invalidations from every primary")
    finally:
        await cache.clear()
        await cache.aclose()
        await client.aclose()


async def test_near_cache_starts_on_a_cluster_client_that_has_not_connected_yet(
    redis_cluster_nodes: list[tuple[str, int]], unique: str
) -> None:
    # The usual order in an app: build the client, build the cache, serve. The link used to
    # start before the client knew its primaries, link none, and never start again.
    host, port = redis_cluster_nodes[0]
    client = aioredis.RedisCluster(host=host, port=port)  # no initialize()
    near = NearCache()
    cache = Cache(RedisBackend(client, timeout=5.0), namespace=unique, near=near)
    try:
        assert await near.wait_connected()
        assert near._links == 3
    finally:
        await cache.aclose()
        await client.aclose()


def test_near_cache_needs_a_redis_backend() -> None:
    with pytest.raises(ConfigurationError, match="RedisBackend"):
        Cache(MemoryBackend(), namespace="t", near=NearCache())
    with pytest.raises(ConfigurationError):
        NearCache(max_entries=0)
    with pytest.raises(ConfigurationError):
        NearCache(mode="x")  # type: ignore[arg-type]
