"""DirectoryStrategy: explicit key -> shard entries in memory, Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from scalekit.errors import ConfigurationError, ShardUnavailableError, UnknownShardError
from scalekit.sharding import (
    DirectoryStrategy,
    JumpHash,
    MemoryDirectoryStore,
    PostgresDirectoryStore,
    RedisDirectoryStore,
    ShardRouter,
)
from scalekit.testing import ManualClock
from tests.support.processes import RedisProcess

SHARDS = {"s0": "pool-0", "s1": "pool-1", "s2": "pool-2", "vip": "pool-vip"}


class FlakyStore(MemoryDirectoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def get(self, key: str) -> str | None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("store down")
        return await super().get(key)


async def test_mapped_keys_go_to_their_shard_and_others_to_the_default() -> None:
    store = MemoryDirectoryStore()
    strategy = DirectoryStrategy(store, default=JumpHash())
    router = ShardRouter(SHARDS, strategy)
    await strategy.assign("{acme}", "vip")
    assert await router.ashard_for("{acme}:order:17") == "vip"
    assert await router.aget("acme") == "pool-vip"
    fallback = JumpHash().bind(list(SHARDS))
    assert await router.ashard_for("globex") == fallback("globex")
    await strategy.unassign("acme")
    assert await router.ashard_for("acme") == fallback("acme")


async def test_answers_are_cached_until_the_ttl_and_the_cache_is_bounded() -> None:
    clock = ManualClock()
    store = MemoryDirectoryStore({"t1": "s1"})
    strategy = DirectoryStrategy(store, cache_ttl=10.0, cache_size=2, clock=clock)
    router = ShardRouter(SHARDS, strategy)
    for _ in range(5):
        assert await router.ashard_for("t1") == "s1"
    await router.ashard_for("unmapped")  # negative answers are cached too
    await router.ashard_for("unmapped")
    assert store.reads == 2
    store.entries["t1"] = "s2"  # another process reassigned it
    assert await router.ashard_for("t1") == "s1"
    await clock.advance(10.5)
    assert await router.ashard_for("t1") == "s2"
    await router.ashard_for("a")
    await router.ashard_for("b")  # evicts the least recently used entry
    reads = store.reads
    await router.ashard_for("t1")
    assert store.reads == reads + 1


async def test_concurrent_misses_for_one_key_make_one_request() -> None:
    store = FlakyStore()
    store.entries["t"] = "s2"
    store.gate = asyncio.Event()
    strategy = DirectoryStrategy(store)
    router = ShardRouter(SHARDS, strategy)
    tasks = [asyncio.ensure_future(router.ashard_for("t")) for _ in range(20)]
    await asyncio.sleep(0)
    store.gate.set()
    assert set(await asyncio.gather(*tasks)) == {"s2"}
    assert strategy.lookups == 1


async def test_store_failure_serves_stale_entries_then_fails_clearly() -> None:
    clock = ManualClock()
    store = FlakyStore()
    store.entries["t"] = "s1"
    strategy = DirectoryStrategy(store, cache_ttl=5.0, stale_ttl=60.0, clock=clock)
    router = ShardRouter(SHARDS, strategy)
    assert await router.ashard_for("t") == "s1"
    store.fail = True
    await clock.advance(30)
    assert await router.ashard_for("t") == "s1"  # stale but within stale_ttl
    await clock.advance(60)
    with pytest.raises(ShardUnavailableError, match="directory could not be read") as info:
        await router.ashard_for("t")
    assert isinstance(info.value.__cause__, ConnectionError)
    with pytest.raises(ShardUnavailableError):
        await router.ashard_for("never-seen")


async def test_an_entry_naming_an_unknown_shard_fails_closed() -> None:
    strategy = DirectoryStrategy(MemoryDirectoryStore({"t": "gone"}))
    with pytest.raises(UnknownShardError, match="does not have"):
        await ShardRouter(SHARDS, strategy).ashard_for("t")
    strict = DirectoryStrategy(MemoryDirectoryStore(), default=None)
    with pytest.raises(UnknownShardError, match="no directory entry"):
        await ShardRouter(SHARDS, strict).ashard_for("t")


def test_bad_directory_configuration_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        DirectoryStrategy(MemoryDirectoryStore(), cache_ttl=-1)
    with pytest.raises(ConfigurationError):
        DirectoryStrategy(MemoryDirectoryStore(), default=DirectoryStrategy(MemoryDirectoryStore()))
    with pytest.raises(ConfigurationError):
        DirectoryStrategy(MemoryDirectoryStore()).bind(["a"])


@pytest.mark.redis
async def test_redis_store_round_trip(redis_url: str, unique: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = RedisDirectoryStore(client, hash_key=f"{unique}:directory")
        writer = DirectoryStrategy(store)
        reader = DirectoryStrategy(store)  # another process: its own cache
        await writer.assign(42, "vip")
        assert await ShardRouter(SHARDS, reader).ashard_for(42) == "vip"
        assert await client.hget(f"{unique}:directory", "42") == b"vip"
        await writer.unassign(42)
        assert await store.get("42") is None
    finally:
        await client.delete(f"{unique}:directory")
        await client.aclose()


@pytest.mark.redis
async def test_redis_stopped_serves_stale_then_recovers(redis_process: RedisProcess) -> None:
    clock = ManualClock()
    client = aioredis.Redis.from_url(redis_process.url, socket_timeout=1.0)
    try:
        strategy = DirectoryStrategy(
            RedisDirectoryStore(client), cache_ttl=1.0, stale_ttl=10.0, clock=clock
        )
        router = ShardRouter(SHARDS, strategy)
        await strategy.assign("tenant", "vip")
        await clock.advance(2)
        redis_process.stop()
        assert await router.ashard_for("tenant") == "vip"
        await clock.advance(20)
        with pytest.raises(ShardUnavailableError):
            await router.ashard_for("tenant")
        redis_process.start()
        # The private server has no persistence: the entry is gone and the default applies.
        # (Keep a production directory durable: PostgreSQL, or Redis with AOF.)
        assert await router.ashard_for("tenant") == JumpHash().bind(list(SHARDS))("tenant")
        await strategy.assign("tenant", "vip")
        assert await router.ashard_for("tenant") == "vip"
    finally:
        await client.aclose()


@pytest.mark.postgres
async def test_postgres_store_round_trip(postgres_dsn: str, unique: str) -> None:
    pool: Any = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        store = PostgresDirectoryStore(pool, table=f"dir_{unique}")
        await store.create_table()
        strategy = DirectoryStrategy(store)
        await strategy.assign(("eu", 7), "s2")
        await strategy.assign(("eu", 7), "vip")  # reassign: upsert
        fresh = DirectoryStrategy(store)
        assert await ShardRouter(SHARDS, fresh).ashard_for(("eu", 7)) == "vip"
        assert (
            await pool.fetchval(f'SELECT shard FROM "dir_{unique}" WHERE key = $1', "eu/7") == "vip"
        )
        await strategy.unassign(("eu", 7))
        assert await store.get("eu/7") is None
    finally:
        await pool.execute(f'DROP TABLE IF EXISTS "dir_{unique}"')
        await pool.close()
    with pytest.raises(ConfigurationError):
        PostgresDirectoryStore(pool, table="x; DROP TABLE y")
