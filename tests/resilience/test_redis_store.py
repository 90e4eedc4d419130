"""Shared breaker state on a real Redis (standalone, a private stoppable one, and Cluster)."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from scalekit.errors import CircuitOpenError
from scalekit.resilience import BreakerState, CircuitBreaker, CountWindow, RedisBreakerStore
from tests.resilience.calls import ok, trip_until_open
from tests.support.polling import eventually

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def breaker(store: RedisBreakerStore, name: str, **kw: Any) -> CircuitBreaker:
    kw = {
        "window": CountWindow(10),
        "minimum_calls": 3,
        "open_duration": 0.5,
        "half_open_max_calls": 1,
        "store": store,
        **kw,
    }
    return CircuitBreaker(name, **kw)


@pytest.fixture
async def clients(
    redis_url: str, unique: str
) -> AsyncIterator[tuple[aioredis.Redis, aioredis.Redis]]:
    a, b = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    yield a, b
    keys = [k async for k in a.scan_iter(match=f"{unique}:*")]
    if keys:
        await a.delete(*keys)
    await a.aclose()
    await b.aclose()


async def test_two_breakers_trip_and_recover_together(
    clients: tuple[aioredis.Redis, aioredis.Redis], unique: str
) -> None:
    sa = RedisBreakerStore(clients[0], prefix=unique, sync_interval=0.05)
    sb = RedisBreakerStore(clients[1], prefix=unique, sync_interval=0.05)
    a, b = breaker(sa, "payments"), breaker(sb, "payments")
    await b.call(ok)
    await trip_until_open(a)

    async def b_open() -> bool:
        try:
            await b.call(ok)
        except CircuitOpenError:
            return True
        return False

    await eventually(b_open)
    assert b.state in (BreakerState.OPEN, BreakerState.HALF_OPEN)
    # recovery: after open time, one trial (from either) closes it for both
    await eventually(lambda: _succeeds(a))
    assert a.state is BreakerState.CLOSED
    await eventually(lambda: _closed(b))
    raw = await clients[0].hgetall(sa.key("payments"))
    assert raw[b"state"] == b"closed"
    assert await clients[0].pttl(sa.key("payments")) > 0


async def _succeeds(b: CircuitBreaker) -> bool:
    try:
        await b.call(ok)
    except CircuitOpenError:
        return False
    return True


async def _closed(b: CircuitBreaker) -> bool:
    try:
        await b.call(ok)
    except CircuitOpenError:
        return False
    return b.state is BreakerState.CLOSED


async def test_lua_operations_use_the_server_clock_and_are_atomic(
    clients: tuple[aioredis.Redis, aioredis.Redis], unique: str
) -> None:
    store = RedisBreakerStore(clients[0], prefix=unique)
    first = await store.trip("x", 30.0)
    again = await store.trip("x", 60.0)  # already open: the end is kept
    assert first.state == "open"
    assert 29 < first.remaining <= 30
    assert again.generation == first.generation
    assert again.remaining <= 30
    assert not (await store.acquire_trial("x", 3, 5.0)).admitted
    await clients[0].hset(store.key("x"), "until", 0)  # open time over
    results = await asyncio.gather(*(store.acquire_trial("x", 3, 5.0) for _ in range(50)))
    assert sum(r.admitted for r in results) == 3
    gen = results[0].generation
    outcome = None
    for _ in range(3):
        outcome = await store.report_trial(
            "x",
            generation=gen,
            failed=False,
            slow=False,
            max_calls=3,
            failure_rate_threshold=0.5,
            slow_call_rate_threshold=1.0,
            open_seconds=10,
        )
    assert outcome is not None
    assert outcome.state == "closed"
    assert (await store.reset("x")).state == "closed"


async def test_redis_stopped_mid_run_does_not_break_callers(
    redis_process: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = aioredis.from_url(redis_process.url, socket_connect_timeout=0.2, socket_timeout=0.2)
    store = RedisBreakerStore(client, prefix="t", sync_interval=0.05, timeout=0.3)
    b = breaker(store, "inventory", open_duration=0.2)
    try:
        await b.call(ok)
        redis_process.stop()
        deadline = time.monotonic() + 5
        while b.snapshot().store_healthy:  # calls keep working while the store fails
            assert await b.call(ok) == "ok"
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await trip_until_open(b)  # trips locally with the store down
        with pytest.raises(CircuitOpenError):
            await b.call(ok)
        await eventually(lambda: _succeeds(b))  # half-open trial decided locally
        assert b.state is BreakerState.CLOSED
        assert any("shared store failed" in r.getMessage() for r in caplog.records)
        redis_process.start()
        await eventually(lambda: _healthy(b))
        await trip_until_open(b)
        await eventually(lambda: _key_state(client, store, "inventory", b"open"))
    finally:
        await client.aclose()


async def _healthy(b: CircuitBreaker) -> bool:
    await b.call(ok)
    return b.snapshot().store_healthy


async def _key_state(client: Any, store: RedisBreakerStore, name: str, state: bytes) -> bool:
    return bool(await client.hget(store.key(name), "state") == state)


@pytest.mark.redis_cluster
async def test_works_on_redis_cluster(
    redis_cluster_nodes: list[tuple[str, int]], unique: str
) -> None:
    cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster_nodes])
    try:
        sa = RedisBreakerStore(cluster, prefix=unique, sync_interval=0.05)
        a, b = breaker(sa, "search"), breaker(sa, "search")
        await b.call(ok)
        await trip_until_open(a)

        async def b_open() -> bool:
            try:
                await b.call(ok)
            except CircuitOpenError:
                return True
            return False

        await eventually(b_open)
        assert (await sa.read("search")).state == "open"
        await sa.reset("search")
    finally:
        await cluster.delete(sa.key("search"))
        await cluster.aclose()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import redis.asyncio as aioredis
    from scalekit.errors import CircuitOpenError
    from scalekit.resilience import CircuitBreaker, CountWindow, RedisBreakerStore

    async def ok():
        return "ok"

    async def main():
        client = aioredis.from_url(sys.argv[1])
        store = RedisBreakerStore(client, prefix=sys.argv[2], sync_interval=0.05)
        b = CircuitBreaker("shared", window=CountWindow(10), minimum_calls=3,
                           open_duration=0.5, half_open_max_calls=1, store=store)
        await b.call(ok)
        print("ready", flush=True)
        for expected in ("open", "closed"):
            for _ in range(1000):
                try:
                    await b.call(ok)
                    seen = "closed" if b.state.value == "closed" else "other"
                except CircuitOpenError:
                    seen = "open"
                if seen == expected:
                    print(expected, flush=True)
                    break
                await asyncio.sleep(0.01)
        await client.aclose()

    asyncio.run(main())
    """
)


async def test_two_real_processes_trip_and_recover_together(
    clients: tuple[aioredis.Redis, aioredis.Redis], redis_url: str, unique: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        redis_url,
        unique,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 20) == b"ready\n"
        store = RedisBreakerStore(clients[0], prefix=unique, sync_interval=0.05)
        b = breaker(store, "shared")
        await trip_until_open(b)
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"open\n"
        await eventually(lambda: _succeeds(b))  # our trial closes it for everyone
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"closed\n"
        assert await asyncio.wait_for(child.wait(), 10) == 0
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_hung_or_cut_redis_costs_a_trial_at_most_the_store_timeout(
    redis_url: str, unique: str
) -> None:
    from urllib.parse import urlparse

    from scalekit.testing import FaultProxy

    target = urlparse(redis_url)
    async with FaultProxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
        client = aioredis.from_url(f"redis://127.0.0.1:{proxy.port}/0")
        store = RedisBreakerStore(client, prefix=unique, sync_interval=0.05, timeout=0.1)
        b = breaker(store, "hung", open_duration=0.1)
        try:
            await b.call(ok)
            proxy.blackhole()  # Redis answers nothing: every store call hangs until timeout
            started = time.monotonic()
            for _ in range(200):  # closed path never waits for the store
                await b.call(ok)
            assert time.monotonic() - started < 1.0
            await trip_until_open(b)
            await eventually(lambda: _succeeds(b))  # trials wait <= timeout, then go local
            assert b.state is BreakerState.CLOSED
            assert not b.snapshot().store_healthy
            await proxy.restore()
            await proxy.cut()  # drop the stalled connections; the client reconnects
            await eventually(lambda: _healthy(b))
        finally:
            await proxy.restore()
            await client.delete(store.key("hung"))
            await client.aclose()


async def test_hostile_or_corrupt_shared_data_never_fails_the_caller(
    clients: tuple[aioredis.Redis, aioredis.Redis], unique: str
) -> None:
    store = RedisBreakerStore(clients[0], prefix=unique, sync_interval=0.01)
    b = breaker(store, "corrupt")
    key = store.key("corrupt")
    await clients[0].hset(key, mapping={"state": "bogus", "until": "not-a-number", "gen": "x"})

    async def synced() -> bool:  # calls succeed while the corrupt state is read
        assert await b.call(ok) == "ok"
        return b._shared_gen >= 0

    await eventually(synced)
    assert b.snapshot().store_healthy
    await clients[0].delete(key)
    await clients[0].set(key, "a string, not a hash")  # WRONGTYPE inside the script

    async def unhealthy() -> bool:
        assert await b.call(ok) == "ok"
        return not b.snapshot().store_healthy

    await eventually(unhealthy)
    await trip_until_open(b)  # still trips on local state
    await b.aclose()
