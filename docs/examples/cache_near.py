# requires: redis
"""A near cache: hot keys served from process memory, invalidated by Redis within milliseconds."""

import asyncio
import os

import redis.asyncio as redis

from scalekit.cache import Cache, NearCache, RedisBackend

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")


async def main() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    near = NearCache(max_entries=10_000, max_ttl=30)
    cache = Cache(RedisBackend(client), namespace=f"{PREFIX}:flags", near=near)
    assert await near.wait_connected()  # optional: the link also starts on first use
    print("invalidation mode:", near.active_mode)  # "tracking" on Redis >= 6

    await cache.set("checkout-v2", True)
    while cache.stats().near_hits == 0:  # the first read fills the L1 from Redis
        assert await cache.get("checkout-v2") is True

    # another process (here: a raw client) changes the key: Redis tells us, the L1 drops it
    await client.set(f"{PREFIX}:flags:checkout-v2", b"not even a cache entry")
    for _ in range(500):
        if len(near) == 0:
            break
        await asyncio.sleep(0.002)
    assert len(near) == 0
    assert await cache.get("checkout-v2") is None  # undecodable: counted as a miss

    await cache.clear()
    await cache.aclose()
    await client.aclose()


asyncio.run(main())
