# requires: redis
"""Pin a big tenant to its own shard with a directory in Redis; everyone else is hashed."""

import asyncio
import os

import redis.asyncio as redis

from scalekit.sharding import DirectoryStrategy, JumpHash, RedisDirectoryStore, ShardRouter

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")


async def main() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    store = RedisDirectoryStore(client, hash_key=f"{PREFIX}:shard-directory")
    directory = DirectoryStrategy(store, default=JumpHash(), cache_ttl=30.0)
    router = ShardRouter({"s0": "…", "s1": "…", "s2": "…", "big": "…"}, directory)
    try:
        await directory.assign("megacorp", "big")

        # Lookups may do I/O, so they are async; answers are cached for cache_ttl seconds.
        assert await router.ashard_for("{megacorp}:order:1") == "big"  # hash tags work here too
        small = await router.ashard_for("tiny-shop")
        assert small == JumpHash().bind(["s0", "s1", "s2", "big"])("tiny-shop")
        for _ in range(100):
            await router.ashard_for("megacorp")
        # assign() primed this process's cache; tiny-shop was read once: then the local cache.
        assert directory.lookups == 1
    finally:
        await client.delete(f"{PREFIX}:shard-directory")
        await client.aclose()


asyncio.run(main())
