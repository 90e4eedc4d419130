"""An explicit key -> shard directory in Redis or PostgreSQL, with a bounded local cache.

Use it to place or move single tenants by hand (a big customer on its own shard) while every
other key keeps a hashing strategy. Lookups are async (they may do I/O), cached locally for
``cache_ttl`` seconds (hits and "not mapped" answers alike), coalesced (concurrent misses for one
key make one request), and when the store fails a recently expired entry is served for up to
``stale_ttl`` seconds instead of failing.

A reassignment is seen at once by the process that made it and by others within ``cache_ttl``:
move a tenant by copying its rows first, then :meth:`DirectoryStrategy.assign` (so readers that
still see the old entry find complete data), then delete the old copy after ``cache_ttl``.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from scalekit._drivers import require
from scalekit._telemetry import get_logger
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError, ShardUnavailableError, UnknownShardError
from scalekit.sharding.backfill import _quote
from scalekit.sharding.keys import directory_key
from scalekit.sharding.strategies import JumpHash, Placement, Strategy

__all__ = [
    "DirectoryStore",
    "DirectoryStrategy",
    "MemoryDirectoryStore",
    "PostgresDirectoryStore",
    "RedisDirectoryStore",
]

logger = get_logger(__name__)

_JUMP = JumpHash()


@runtime_checkable
class DirectoryStore(Protocol):
    """Where directory entries live: text key -> shard name."""

    async def get(self, key: str) -> str | None:
        """The shard assigned to ``key``, or ``None``."""
        ...

    async def set(self, key: str, shard: str) -> None:
        """Assign ``key`` to ``shard``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove ``key``'s assignment."""
        ...


class MemoryDirectoryStore:
    """An in-process directory store, for tests and single-process tools."""

    def __init__(self, entries: dict[str, str] | None = None) -> None:
        self.entries: dict[str, str] = dict(entries or {})
        self.reads = 0

    async def get(self, key: str) -> str | None:
        """The shard assigned to ``key``, or ``None``."""
        self.reads += 1
        return self.entries.get(key)

    async def set(self, key: str, shard: str) -> None:
        """Assign ``key`` to ``shard``."""
        self.entries[key] = shard

    async def delete(self, key: str) -> None:
        """Remove ``key``'s assignment."""
        self.entries.pop(key, None)


class RedisDirectoryStore:
    """Directory entries in one Redis hash (``HGET``/``HSET``/``HDEL``).

    Args:
        client: a ``redis.asyncio.Redis`` client (``decode_responses`` either way).
        hash_key: the Redis key of the hash.
    """

    def __init__(self, client: Any, *, hash_key: str = "scalekit:shard-directory") -> None:
        require("redis.asyncio")
        self._client = client
        self.hash_key = hash_key

    async def get(self, key: str) -> str | None:
        """The shard assigned to ``key``, or ``None``."""
        value = await self._client.hget(self.hash_key, key)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    async def set(self, key: str, shard: str) -> None:
        """Assign ``key`` to ``shard``."""
        await self._client.hset(self.hash_key, key, shard)

    async def delete(self, key: str) -> None:
        """Remove ``key``'s assignment."""
        await self._client.hdel(self.hash_key, key)


class PostgresDirectoryStore:
    """Directory entries in a PostgreSQL table ``(key text primary key, shard text)``.

    Args:
        pool: an ``asyncpg`` pool (or connection).
        table: the table name (created by :meth:`create_table`).
    """

    def __init__(self, pool: Any, *, table: str = "scalekit_shard_directory") -> None:
        require("asyncpg")
        self._pool = pool
        self._table = _quote(table, "table")

    async def create_table(self) -> None:
        """Create the table if it does not exist."""
        await self._pool.execute(
            f"CREATE TABLE IF NOT EXISTS {self._table} (key text PRIMARY KEY, shard text NOT NULL)"
        )

    async def get(self, key: str) -> str | None:
        """The shard assigned to ``key``, or ``None``."""
        value: str | None = await self._pool.fetchval(
            f"SELECT shard FROM {self._table} WHERE key = $1", key
        )
        return value

    async def set(self, key: str, shard: str) -> None:
        """Assign ``key`` to ``shard``."""
        await self._pool.execute(
            f"INSERT INTO {self._table} (key, shard) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET shard = EXCLUDED.shard",
            key,
            shard,
        )

    async def delete(self, key: str) -> None:
        """Remove ``key``'s assignment."""
        await self._pool.execute(f"DELETE FROM {self._table} WHERE key = $1", key)


class DirectoryStrategy(Strategy):
    """Explicit key -> shard entries, falling back to ``default`` for unmapped keys.

    Args:
        store: where entries live (:class:`RedisDirectoryStore`, :class:`PostgresDirectoryStore`
            or :class:`MemoryDirectoryStore`).
        default: the strategy for keys without an entry (jump hash over the router's shards);
            ``None`` makes an unmapped key an :class:`~scalekit.errors.UnknownShardError`.
        cache_size: entries kept in the local cache at most (least recently used evicted).
        cache_ttl: seconds an answer is trusted locally.
        stale_ttl: seconds past expiry an entry may still be served while the store fails.
        timeout: seconds a store lookup may take before it counts as failed.
        clock: time source.

    Raises:
        ConfigurationError: a negative size or duration.
    """

    is_async = True

    def __init__(
        self,
        store: DirectoryStore,
        *,
        default: Strategy | None = _JUMP,
        cache_size: int = 10_000,
        cache_ttl: float = 30.0,
        stale_ttl: float = 300.0,
        timeout: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if cache_size < 0 or cache_ttl < 0 or stale_ttl < 0 or not timeout > 0:
            raise ConfigurationError(
                "cache_size, cache_ttl and stale_ttl must be >= 0 and timeout > 0"
            )
        if default is not None and default.is_async:
            raise ConfigurationError("the default strategy of a directory must be synchronous")
        self.store = store
        self.default = default
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self.stale_ttl = stale_ttl
        self.timeout = timeout
        self._clock = clock
        # text key -> (shard or None for "not mapped", expires at)
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[str | None]] = {}
        self.lookups = 0

    def bind(self, shards: Sequence[str]) -> Placement:
        """Directories need I/O: the router uses :meth:`abind` (this raises)."""
        raise ConfigurationError(
            "DirectoryStrategy is async: use `await router.ashard_for(key)` / `router.aget(key)`"
        )

    def abind(self, shards: Sequence[str]) -> Callable[[Any], Awaitable[str]]:
        """Return the async ``key -> shard name`` for these shards."""
        names = frozenset(shards)
        fallback = self.default.bind(list(shards)) if self.default is not None else None

        async def directory_placement(key: Any) -> str:
            text = directory_key(key)
            shard = await self.lookup(text)
            if shard is None:
                if fallback is None:
                    raise UnknownShardError(
                        f"key {text!r:.60} has no directory entry and there is no default "
                        "strategy; assign it with `await strategy.assign(key, shard)`"
                    )
                return fallback(key)
            if shard not in names:
                raise UnknownShardError(
                    f"the directory assigns {text!r:.60} to shard {shard!r}, which this router "
                    f"does not have ({sorted(names)}); fix the entry or add the shard"
                )
            return shard

        return directory_placement

    async def lookup(self, key: Any) -> str | None:
        """The shard the directory assigns to ``key``, or ``None`` when unmapped (cached).

        Raises:
            ShardUnavailableError: the store failed and no fresh-enough entry is cached.
        """
        text = key if isinstance(key, str) else directory_key(key)
        now = self._clock.monotonic()
        cached = self._cache.get(text)
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(text)
            return cached[0]
        pending = self._inflight.get(text)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._inflight[text] = future
        try:
            self.lookups += 1
            async with asyncio.timeout(self.timeout):
                shard = await self.store.get(text)
        except Exception as exc:
            if cached is not None and cached[1] + self.stale_ttl > now:
                logger.warning("shard directory failed (%s); serving a stale entry", exc)
                future.set_result(cached[0])
                return cached[0]
            error = ShardUnavailableError(
                f"the shard directory could not be read ({type(exc).__name__}: {exc}); "
                "keys it maps cannot be routed until it answers"
            )
            error.__cause__ = exc
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise error from exc
        else:
            self._remember(text, shard)
            future.set_result(shard)
            return shard
        finally:
            del self._inflight[text]

    def _remember(self, text: str, shard: str | None) -> None:
        if self.cache_size == 0:
            return
        self._cache[text] = (shard, self._clock.monotonic() + self.cache_ttl)
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def assign(self, key: Any, shard: str) -> None:
        """Map ``key`` to ``shard`` in the store (and in this process's cache at once)."""
        text = directory_key(key)
        await self.store.set(text, shard)
        self._remember(text, shard)

    async def unassign(self, key: Any) -> None:
        """Remove ``key``'s entry: it goes back to the default strategy."""
        text = directory_key(key)
        await self.store.delete(text)
        self._remember(text, None)

    def invalidate(self, key: Any | None = None) -> None:
        """Drop one key (or everything) from the local cache."""
        if key is None:
            self._cache.clear()
        else:
            self._cache.pop(directory_key(key), None)

    def __repr__(self) -> str:
        return f"DirectoryStrategy({type(self.store).__name__}, default={self.default!r})"
