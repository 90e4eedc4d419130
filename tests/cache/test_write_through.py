"""WriteThroughCache: the cache-aside race, forced, on memory and on real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from scalekit.cache import Cache, MemoryBackend, RedisBackend, WriteThroughCache
from scalekit.errors import ConfigurationError


class SlowDB:
    """A system of record whose reads can be paused after they have read the row."""

    def __init__(self) -> None:
        self.rows: dict[str, Any] = {}
        self.read_done: asyncio.Event | None = None
        self.resume: asyncio.Event | None = None
        self.loads = 0

    async def load(self, key: str) -> Any:
        self.loads += 1
        value = self.rows.get(key)  # the row as it is *now*
        if self.resume is not None and self.read_done is not None:
            self.read_done.set()
            await self.resume.wait()  # ... and the reply is slow to come back
        return value

    async def store(self, key: str, value: Any) -> None:
        self.rows[key] = value

    async def delete(self, key: str) -> None:
        self.rows.pop(key, None)


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield Cache(MemoryBackend(), namespace=unique)
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    c = Cache(RedisBackend(client, timeout=5.0), namespace=unique, strict=True)
    try:
        yield c
    finally:
        await c.clear()
        await client.aclose()


@pytest.mark.parametrize("on_write", ["invalidate", "set"])
async def test_a_read_older_than_a_write_never_caches_the_old_value(
    cache: Cache, on_write: Any
) -> None:
    db = SlowDB()
    db.rows["k"] = "old"
    wt = WriteThroughCache(cache, load=db.load, store=db.store, on_write=on_write)
    db.read_done, db.resume = asyncio.Event(), asyncio.Event()
    reader = asyncio.create_task(wt.get("k"))
    await db.read_done.wait()  # the reader has read "old" from the database
    await wt.put("k", "new")  # a write commits and finishes meanwhile
    db.resume.set()
    assert await reader == "old"  # the reader's caller gets what it read...
    db.read_done = db.resume = None
    assert await cache.get("k") == (None if on_write == "invalidate" else "new")
    assert await wt.get("k") == "new"  # ... but the cache never holds it
    assert wt.lost_fills == 1


async def test_without_the_lease_the_race_would_cache_the_old_value(cache: Cache) -> None:
    """The control experiment: naive cache-aside with the same interleaving goes stale."""
    db = SlowDB()
    db.rows["k"] = "old"
    db.read_done, db.resume = asyncio.Event(), asyncio.Event()

    async def naive_get() -> Any:
        value = await cache.get("k")
        if value is None:
            value = await db.load("k")
            await cache.set("k", value)
        return value

    reader = asyncio.create_task(naive_get())
    await db.read_done.wait()
    await db.store("k", "new")
    await cache.delete("k")
    db.resume.set()
    await reader
    assert await cache.get("k") == "old"  # stale until its TTL: what the lease prevents


async def test_read_through_caches_and_coalesces(cache: Cache) -> None:
    db = SlowDB()
    db.rows["k"] = {"v": 1}
    wt = WriteThroughCache(cache, load=db.load, store=db.store, delete=db.delete)
    results = await asyncio.gather(*(wt.get("k") for _ in range(100)))
    assert results == [{"v": 1}] * 100
    assert db.loads == 1
    assert await wt.get("k") == {"v": 1}
    assert db.loads == 1
    await wt.remove("k")
    assert "k" not in db.rows
    assert await wt.get("k") is None


async def test_a_failed_store_leaves_the_cache_untouched(cache: Cache) -> None:
    db = SlowDB()
    db.rows["k"] = "v1"

    async def failing_store(key: str, value: Any) -> None:
        raise ConnectionError("db down")

    wt = WriteThroughCache(cache, load=db.load, store=failing_store)
    assert await wt.get("k") == "v1"
    with pytest.raises(ConnectionError):
        await wt.put("k", "v2")
    assert await cache.get("k") == "v1"


async def test_loader_error_releases_the_fill_lease(cache: Cache) -> None:
    calls = 0

    async def load(key: str) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("db down")
        return "v"

    wt = WriteThroughCache(cache, load=load, store=SlowDB().store)
    with pytest.raises(ConnectionError):
        await wt.get("k")
    assert await wt.get("k") == "v"
    assert await cache.get("k") == "v"  # the second fill was not blocked by a stale lease


def test_configuration_errors() -> None:
    cache = Cache(MemoryBackend(), namespace="t")
    with pytest.raises(ConfigurationError):
        WriteThroughCache(cache, load=SlowDB().load, store=SlowDB().store, on_write="x")  # type: ignore[arg-type]


async def test_remove_needs_delete() -> None:
    cache = Cache(MemoryBackend(), namespace="t")
    wt = WriteThroughCache(cache, load=SlowDB().load, store=SlowDB().store)
    with pytest.raises(ConfigurationError, match="delete="):
        await wt.remove("k")
