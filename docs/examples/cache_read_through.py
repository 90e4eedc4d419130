# requires: redis
"""Read-through caching: get_or_load, the @cached decorator, one load per stampede."""

import asyncio
import os

import redis.asyncio as redis

from scalekit.cache import Cache, RedisBackend

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")


async def main() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    cache = Cache(
        RedisBackend(client, timeout=0.25),  # every call answers (or misses) within 250 ms
        namespace=f"{PREFIX}:users",
        default_ttl=300,
        stale_ttl=60,  # for a minute after expiry: serve the old value, refresh in background
        stale_if_error=3600,  # the database is down: serve values up to an hour past expiry
        negative_ttl=30,  # remember "no such user" for 30 s
    )
    db_reads = 0

    @cache.cached(ttl=120, key="user:{user_id}")
    async def load_user(user_id: int) -> dict[str, object] | None:
        nonlocal db_reads
        db_reads += 1
        await asyncio.sleep(0.05)  # the slow database query
        return {"id": user_id, "name": "Ada"} if user_id == 1 else None

    # 500 concurrent requests for a cold key: the database is read once
    users = await asyncio.gather(*(load_user(1) for _ in range(500)))
    assert all(u == {"id": 1, "name": "Ada"} for u in users)
    assert db_reads == 1

    # "not found" is cached too (negative_ttl), so a missing id does not hammer the database
    assert await load_user(2) is None
    assert await load_user(2) is None
    assert db_reads == 2

    # the same cache, used directly
    value = await cache.get_or_load("settings", lambda: asyncio.sleep(0, {"theme": "dark"}))
    assert value == {"theme": "dark"}
    assert await cache.get("settings") == {"theme": "dark"}

    stats = cache.stats()
    print(f"hit ratio {stats.hit_ratio:.2f}, loads {stats.loads}, coalesced {stats.coalesced}")
    assert stats.loads == 3

    await cache.clear()  # SCAN-based: deletes this namespace only
    await cache.aclose()
    await client.aclose()


asyncio.run(main())
