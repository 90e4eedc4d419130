"""Shared breakers on a Redis Cluster that fails over: they keep protecting, then share again."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode

from scalekit.errors import CircuitOpenError
from scalekit.resilience import CircuitBreaker, CountWindow, RedisBreakerStore
from tests.resilience.calls import ok, trip_until_open
from tests.support.polling import eventually
from tests.support.processes import RedisFailoverCluster

pytestmark = pytest.mark.redis_cluster


def shared(store: RedisBreakerStore) -> CircuitBreaker:
    return CircuitBreaker(
        "payments",
        window=CountWindow(10),
        minimum_calls=3,
        open_duration=30.0,
        half_open_max_calls=1,
        store=store,
    )


async def test_breakers_protect_through_a_dead_primary_and_share_state_after_it(
    redis_failover_cluster: RedisFailoverCluster,
) -> None:
    nodes = [ClusterNode(h, p) for h, p in redis_failover_cluster.startup_nodes]
    client = aioredis.RedisCluster(startup_nodes=nodes)
    await client.initialize()
    store = RedisBreakerStore(client, prefix="fo", sync_interval=0.05, timeout=0.25)
    a, b = shared(store), shared(store)
    try:
        await b.call(ok)
        await trip_until_open(a)

        async def b_open() -> bool:
            try:
                await b.call(ok)
            except CircuitOpenError:
                return True
            return False

        await eventually(b_open)
        redis_failover_cluster.failover()  # graceful: the shared state moves with the data
        assert (await store.read("payments")).state == "open"

        redis_failover_cluster.sync()
        dead = redis_failover_cluster.kill_primary()
        # the store is gone: both breakers keep failing fast on their local state
        with pytest.raises(CircuitOpenError):
            await a.call(ok)
        with pytest.raises(CircuitOpenError):
            await b.call(ok)
        redis_failover_cluster.promote(dead)

        async def shared_again() -> bool:
            try:
                return (await store.read("payments")).state == "open"
            except Exception:
                return False

        await eventually(shared_again)  # the replicated trip survived the failover
        await store.reset("payments")

        async def b_closed() -> bool:
            try:
                return await b.call(ok) == "ok"
            except CircuitOpenError:
                return False

        await eventually(b_closed)  # the operator's reset reaches every process again
    finally:
        await a.aclose()
        await b.aclose()
        await client.aclose()
