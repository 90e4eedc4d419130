"""Redis stopped, hung, slow, cut and restarted: callers never see an error by default."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from scalekit.cache import Cache, RedisBackend
from scalekit.errors import CacheBackendError
from scalekit.testing import FaultProxy
from tests.support.processes import RedisProcess


async def test_redis_stopped_mid_load_serves_the_loader(
    redis_process: RedisProcess, unique: str
) -> None:
    client = aioredis.Redis.from_url(redis_process.url, socket_connect_timeout=0.2)
    cache = Cache(RedisBackend(client, timeout=0.3), namespace=unique)
    started = asyncio.Event()
    release = asyncio.Event()
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        started.set()
        await release.wait()
        return "from-db"

    try:
        tasks = [asyncio.create_task(cache.get_or_load("k", loader)) for _ in range(50)]
        await started.wait()
        redis_process.stop()  # Redis dies while the loader runs
        release.set()
        assert await asyncio.gather(*tasks) == ["from-db"] * 50
        assert calls == 1
        # still down: reads are misses, loads still serve, within the timeout
        t0 = time.monotonic()
        assert await cache.get_or_load("k", loader) == "from-db"
        assert time.monotonic() - t0 < 3.0
        assert cache.stats().backend_errors >= 2
        # restarted (empty): the cache works again
        redis_process.start()
        deadline = time.monotonic() + 10
        while not await cache.set("k", "again"):
            assert time.monotonic() < deadline, "the cache did not recover after the restart"
            await asyncio.sleep(0.05)
        assert await cache.get("k") == "again"
    finally:
        await client.aclose()


async def test_hung_redis_times_out_into_misses(redis_url: str, unique: str) -> None:
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    async with FaultProxy(host, int(port)) as proxy:
        client = aioredis.Redis(host=proxy.host, port=proxy.port)
        cache = Cache(RedisBackend(client, timeout=0.2), namespace=unique)
        try:
            await cache.set("k", "v")
            assert await cache.get("k") == "v"
            proxy.blackhole()
            t0 = time.monotonic()
            results = await asyncio.gather(*(cache.get("k") for _ in range(100)))
            elapsed = time.monotonic() - t0
            assert results == [None] * 100
            assert elapsed < 2.0  # bounded by the 0.2 s timeout, not by the hung server
            assert await cache.get_or_load("k2", _const("loaded")) == "loaded"
            await proxy.restore()
            deadline = time.monotonic() + 10
            while await cache.get("k") != "v":
                assert time.monotonic() < deadline, "no recovery after the proxy was restored"
                await asyncio.sleep(0.05)
        finally:
            await client.delete(cache.key("k"), cache.key("k2"))
            await client.aclose()


async def test_slow_redis_beyond_the_timeout_is_a_miss_and_strict_raises(
    redis_url: str, unique: str
) -> None:
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    async with FaultProxy(host, int(port)) as proxy:
        client = aioredis.Redis(host=proxy.host, port=proxy.port)
        lenient = Cache(RedisBackend(client, timeout=0.1), namespace=unique)
        strict = Cache(RedisBackend(client, timeout=0.1), namespace=unique, strict=True)
        try:
            await lenient.set("k", "v")
            proxy.latency = 0.3
            assert await lenient.get("k") is None
            with pytest.raises(CacheBackendError, match="did not answer within") as info:
                await strict.get("k")
            assert isinstance(info.value.__cause__, TimeoutError)
            proxy.latency = 0.0
        finally:
            await client.delete(lenient.key("k"))
            await client.aclose()


async def test_connections_cut_mid_operation_recover(redis_url: str, unique: str) -> None:
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    async with FaultProxy(host, int(port)) as proxy:
        client = aioredis.Redis(host=proxy.host, port=proxy.port)
        cache = Cache(RedisBackend(client, timeout=0.5), namespace=unique)
        try:
            await cache.set("k", "v")
            proxy.latency = 0.05
            reads = [asyncio.create_task(cache.get("k")) for _ in range(20)]
            await asyncio.sleep(0.01)
            await proxy.cut()
            results = await asyncio.gather(*reads)
            assert set(results) <= {None, "v"}
            proxy.latency = 0.0
            deadline = time.monotonic() + 10
            while await cache.get("k") != "v":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        finally:
            await client.delete(cache.key("k"))
            await client.aclose()


def _const(value: str):  # type: ignore[no-untyped-def]
    async def load() -> str:
        return value

    return load
