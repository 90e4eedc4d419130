# requires: redis
"""Write-through: the system of record is written first; a slow read never re-caches old data."""

import asyncio
import os

import redis.asyncio as redis

from scalekit.cache import Cache, RedisBackend, WriteThroughCache

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")

database: dict[str, dict[str, object]] = {"42": {"id": 42, "plan": "free"}}
read_started = asyncio.Event()
slow_read = asyncio.Event()


async def load(key: str) -> dict[str, object] | None:
    row = database.get(key)
    if not slow_read.is_set():
        read_started.set()
        await slow_read.wait()  # this read is slow: a write will overtake it
    return row


async def store(key: str, value: dict[str, object]) -> None:
    database[key] = value


async def delete(key: str) -> None:
    database.pop(key, None)


async def main() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    cache = Cache(RedisBackend(client), namespace=f"{PREFIX}:accounts", default_ttl=600)
    accounts = WriteThroughCache(cache, load=load, store=store, delete=delete)

    reader = asyncio.create_task(accounts.get("42"))  # reads {"plan": "free"}, slowly
    await read_started.wait()
    await accounts.put("42", {"id": 42, "plan": "pro"})  # database first, then the cache
    slow_read.set()
    assert (await reader)["plan"] == "free"  # the slow reader's caller gets what it read...

    # ... but that old row was not put back into the cache after the write
    assert (await accounts.get("42"))["plan"] == "pro"
    assert (await cache.get("42"))["plan"] == "pro"
    assert accounts.lost_fills == 1

    await accounts.remove("42")
    assert await accounts.get("42") is None

    await cache.clear()
    await client.aclose()


asyncio.run(main())
