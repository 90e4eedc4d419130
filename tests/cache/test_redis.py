"""RedisBackend against the real Redis and the local Redis Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from scalekit.cache import Cache, RedisBackend
from scalekit.errors import ConfigurationError
from tests.cache.conftest import open_client


@pytest.fixture(params=["redis", "cluster"])
async def cache(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Cache]:
    client = await open_client(request, request.param)
    # functional tests: a generous timeout (a loaded CI machine), strict so failures show
    backend = RedisBackend(client, timeout=5.0)
    c = Cache(backend, namespace=unique, default_ttl=60, ttl_jitter=0, strict=True)
    try:
        yield c
    finally:
        await c.clear()
        await c.aclose()
        await client.aclose()


async def test_every_operation(cache: Cache) -> None:
    assert await cache.set("k", {"a": 1})
    assert await cache.get("k") == {"a": 1}
    keys = [f"key{i}" for i in range(40)]  # spread over many hash slots on the cluster
    assert await cache.set_many({k: i for i, k in enumerate(keys)})
    got = await cache.get_many([*keys, "absent"])
    assert got == {k: i for i, k in enumerate(keys)}
    assert await cache.delete("k")
    assert not await cache.delete("k")
    assert await cache.delete_many(keys[:10]) == 10
    assert len(await cache.get_many(keys)) == 30
    assert await cache.clear() == 30
    assert await cache.get_many(keys) == {}
    assert cache.stats().backend_errors == 0


async def test_ttl_is_set_in_redis(cache: Cache) -> None:
    await cache.set("k", 1, ttl=100)
    backend: Any = cache.backend
    pttl = await backend.client.pttl(cache.key("k"))
    assert 90_000 < pttl <= 100_000


async def test_tags(cache: Cache) -> None:
    await cache.set_many({f"u{i}": i for i in range(20)}, tags=["users"])
    await cache.set("other", 1, tags=["misc"])
    assert await cache.invalidate_tags(["users"]) == 20
    assert await cache.get_many([f"u{i}" for i in range(20)]) == {}
    assert await cache.get("other") == 1


@pytest.mark.parametrize("lease", [False, True])
async def test_a_thousand_concurrent_misses_load_once(cache: Cache, lease: bool) -> None:
    cache.lease = lease
    calls = 0

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "v"

    results = await asyncio.gather(*(cache.get_or_load("hot", loader) for _ in range(1000)))
    assert results == ["v"] * 1000
    assert calls == 1
    backend: Any = cache.backend
    assert await backend.client.exists(cache.key("hot") + ":#lease") == 0  # released


async def test_clear_escapes_glob_characters(redis_client: aioredis.Redis, unique: str) -> None:
    weird = Cache(RedisBackend(redis_client), namespace=unique + "[*]")
    other = Cache(RedisBackend(redis_client), namespace=unique + "x")
    await weird.set("a", 1)
    await other.set("a", 2)
    assert await weird.clear() == 1
    assert await other.get("a") == 2
    await other.clear()


async def test_decode_responses_client_is_refused(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisBackend(client)
    await client.aclose()


async def test_a_thousand_callers_never_see_max_connections_error(
    redis_url: str, unique: str
) -> None:
    client = aioredis.Redis.from_url(redis_url, max_connections=10)
    cache = Cache(RedisBackend(client, timeout=5.0), namespace=unique, strict=True)
    try:
        await cache.set("k", "v")
        results = await asyncio.gather(*(cache.get("k") for _ in range(1000)))
        assert results == ["v"] * 1000
        assert cache.stats().backend_errors == 0
        # the same burst on the raw client fails: the guard is what makes the difference
        raw = await asyncio.gather(
            *(client.get(cache.key("k")) for _ in range(1000)), return_exceptions=True
        )
        assert any(type(r).__name__ == "MaxConnectionsError" for r in raw)
    finally:
        await cache.clear()
        await client.aclose()


async def test_many_concurrent_misses_cost_few_redis_commands(
    redis_client: aioredis.Redis, unique: str
) -> None:
    cache = Cache(RedisBackend(redis_client, timeout=5.0), namespace=unique, lease=True)
    counted: list[str] = []
    backend: Any = cache.backend
    for name in ("get", "set", "add", "compare_and_delete"):
        original = getattr(backend, name)

        def wrap(original: Any = original, name: str = name) -> Any:
            async def call(*args: Any) -> Any:
                counted.append(name)
                return await original(*args)

            return call

        setattr(backend, name, wrap())

    async def loader() -> int:
        await asyncio.sleep(0.02)
        return 1

    await asyncio.gather(*(cache.get_or_load("cold", loader) for _ in range(1000)))
    assert sorted(counted) == ["add", "compare_and_delete", "get", "set"]
    await cache.clear()


async def test_a_thousand_callers_on_a_small_cluster_pool_see_no_errors(
    redis_cluster_nodes: list[tuple[str, int]], unique: str
) -> None:
    host, port = redis_cluster_nodes[0]
    client = aioredis.RedisCluster(host=host, port=port, max_connections=5)
    await client.initialize()
    cache = Cache(RedisBackend(client, timeout=10.0), namespace=unique, strict=True)
    keys = [f"k{i}" for i in range(50)]
    try:
        await cache.set_many({k: k for k in keys})
        results = await asyncio.gather(*(cache.get(keys[i % 50]) for i in range(1000)))
        assert results == [keys[i % 50] for i in range(1000)]
        assert cache.backend.max_connections == 5  # type: ignore[attr-defined]
    finally:
        await cache.clear()
        await client.aclose()
