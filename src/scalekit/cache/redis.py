"""The Redis and Redis Cluster backend of :class:`~scalekit.cache.Cache`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from scalekit._drivers import require
from scalekit.cache._guard import Guard
from scalekit.errors import ConfigurationError

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

__all__ = ["RedisBackend"]

_CAS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if ARGV[3] == '0' then redis.call('SET', KEYS[1], ARGV[2])
  else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
  return 1
end
return 0
"""
_CAD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_TAG = """
local existed = redis.call('EXISTS', KEYS[1])
local ttl = tonumber(ARGV[1])
local old = redis.call('PTTL', KEYS[1])
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
if ttl == 0 then
  redis.call('PERSIST', KEYS[1])
elseif existed == 0 or (old >= 0 and old < ttl) then
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""
_POP_SET = """
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('DEL', KEYS[1])
return members
"""
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


def _ms(ttl: float | None) -> int | None:
    if ttl is None:
        return None
    return max(1, int(ttl * 1000))


class RedisBackend:
    """Cache storage on a ``redis.asyncio.Redis`` or ``redis.asyncio.RedisCluster`` client.

    Pass the client your application already has; the backend never closes it. Every call runs
    within ``timeout`` seconds (cheaply: one watchdog timer, not ``asyncio.timeout`` per call)
    and at most ``max_connections`` calls are in flight, so a burst of callers waits for a
    connection instead of making redis-py raise ``MaxConnectionsError``.

    On a cluster, ``get_many``, ``set_many`` and ``delete_many`` are cluster pipelines: redis-py
    groups the keys by the node owning their hash slot and sends each node its commands on one
    connection, all nodes concurrently (one round trip, never a cross-slot command);
    ``clear`` scans every primary.

    Args:
        client: the redis-py asyncio client (``decode_responses`` must be off: values are bytes).
        timeout: seconds allowed per call, including the wait for a connection.
        bulk_timeout: seconds allowed for ``clear`` and tag invalidation, which may scan.
        max_connections: calls in flight at once; defaults to the client's pool size (or 64).

    Raises:
        MissingDependencyError: redis is not installed.
        ConfigurationError: the client decodes responses, or a limit is not positive.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        timeout: float = 0.5,
        bulk_timeout: float = 10.0,
        max_connections: int | None = None,
    ) -> None:
        redis_asyncio: Any = require("redis.asyncio")
        self.client: Any = client
        self.is_cluster = isinstance(client, redis_asyncio.RedisCluster)
        if self.is_cluster:
            kwargs = client.nodes_manager.connection_kwargs  # type: ignore[union-attr]
        else:
            kwargs = client.connection_pool.connection_kwargs  # type: ignore[union-attr]
        if kwargs.get("decode_responses"):
            raise ConfigurationError(
                "RedisBackend needs a client with decode_responses=False: cache values are bytes"
            )
        if timeout <= 0 or bulk_timeout <= 0:
            raise ConfigurationError("RedisBackend timeouts must be positive seconds")
        if max_connections is None:
            pool_max = (
                kwargs.get("max_connections")
                if self.is_cluster
                else getattr(client.connection_pool, "max_connections", None)  # type: ignore[union-attr]
            )
            max_connections = int(pool_max) if pool_max else 64
        if max_connections < 1:
            raise ConfigurationError("RedisBackend(max_connections=...) must be at least 1")
        self.timeout = timeout
        self.bulk_timeout = bulk_timeout
        self.max_connections = max_connections
        self._guard = Guard(limit=max_connections, timeout=timeout)
        self._cas = client.register_script(_CAS)
        self._cad = client.register_script(_CAD)
        self._tag = client.register_script(_TAG)
        self._pop_set = client.register_script(_POP_SET)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisBackend:
        """Build a backend on a new ``redis.asyncio.Redis`` for ``url`` (closed by ``aclose``).

        Args:
            url: a ``redis://`` or ``rediss://`` URL.
            **kwargs: passed to :class:`RedisBackend`.
        """
        redis_asyncio: Any = require("redis.asyncio")
        backend = cls(redis_asyncio.Redis.from_url(url), **kwargs)
        backend._owns_client = True
        return backend

    _owns_client = False

    # -- single keys --------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        """``GET key``."""
        return await self._guard.run(self.client.get(key), self.timeout)

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """``SET key value PX ttl``."""
        await self._guard.run(self.client.set(key, value, px=_ms(ttl)), self.timeout)

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        """``SET key value NX PX ttl``."""
        return bool(
            await self._guard.run(self.client.set(key, value, px=_ms(ttl), nx=True), self.timeout)
        )

    async def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: float | None
    ) -> bool:
        """Replace atomically (a Lua script) only if the value is ``expected``."""
        args: list[bytes | int] = [expected, value, _ms(ttl) or 0]
        return bool(await self._guard.run(self._cas(keys=[key], args=args), self.timeout))

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Delete atomically (a Lua script) only if the value is ``expected``."""
        return bool(await self._guard.run(self._cad(keys=[key], args=[expected]), self.timeout))

    async def delete(self, key: str) -> bool:
        """``DEL key``."""
        return bool(await self._guard.run(self.client.delete(key), self.timeout))

    async def incr(self, key: str) -> int:
        """``INCR key``: the counter (0 when absent) plus one, stored without expiry."""
        return int(await self._guard.run(self.client.incr(key), self.timeout))

    # -- many keys ----------------------------------------------------------------------------

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """``MGET``; on a cluster, pipelined ``GET`` s, one connection per node."""
        if not keys:
            return []
        if not self.is_cluster:
            return await self._guard.run(self.client.mget(list(keys)), self.timeout)
        return await self._guard.run(self._cluster_mget(keys), self.timeout)

    async def _cluster_mget(self, keys: Sequence[str]) -> list[bytes | None]:
        # a cluster pipeline sends each node its GETs on one connection, all nodes at once:
        # one round trip, and never more than one connection per node per call
        pipe = self.client.pipeline()
        for key in keys:
            pipe.execute_command("GET", key)
        return list(await pipe.execute())

    async def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """``SET ... PX`` for each item in one pipeline (split by node on a cluster)."""
        if not items:
            return
        await self._guard.run(self._set_many(items), self.timeout)

    async def _set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        if self.is_cluster:
            pipe = self.client.pipeline()
        else:
            pipe = self.client.pipeline(transaction=False)
        for key, value, ttl in items:
            pipe.set(key, value, px=_ms(ttl))
        await pipe.execute()

    async def delete_many(self, keys: Sequence[str]) -> int:
        """``DEL``; on a cluster, pipelined per node."""
        if not keys:
            return 0
        return await self._guard.run(self._delete_many(keys), self.timeout)

    async def _delete_many(self, keys: Sequence[Any]) -> int:
        if not self.is_cluster:
            return int(await self.client.delete(*keys))
        pipe = self.client.pipeline()
        for key in keys:
            pipe.execute_command("DEL", key)
        return sum(int(c) for c in await pipe.execute())

    # -- namespace and tags -------------------------------------------------------------------

    async def clear(self, prefix: str) -> int:
        """``SCAN MATCH prefix*`` (on every primary of a cluster) and ``UNLINK`` in batches."""
        return await self._guard.run(self._clear(prefix), self.bulk_timeout)

    async def _clear(self, prefix: str) -> int:
        pattern = prefix.translate(_GLOB_SPECIAL) + "*"
        deleted = 0
        batch: list[str] = []
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await self._unlink(batch)
                batch = []
        if batch:
            deleted += await self._unlink(batch)
        return deleted

    async def _unlink(self, keys: list[Any]) -> int:
        if not self.is_cluster:
            return int(await self.client.unlink(*keys))
        pipe = self.client.pipeline()
        for key in keys:
            pipe.execute_command("UNLINK", key)
        return sum(int(c) for c in await pipe.execute())

    async def tag(self, tag_key: str, keys: Sequence[str], ttl: float | None) -> None:
        """``SADD`` the keys to the tag's set and extend its expiry to cover them."""
        if keys:
            args: list[str | int] = [_ms(ttl) or 0, *keys]
            await self._guard.run(self._tag(keys=[tag_key], args=args), self.timeout)

    async def invalidate_tag(self, tag_key: str) -> int:
        """Pop the tag's member set atomically, then delete its keys (pipelined per node)."""
        return await self._guard.run(self._invalidate_tag(tag_key), self.bulk_timeout)

    async def _invalidate_tag(self, tag_key: str) -> int:
        # take the member set and delete it atomically, so a key tagged meanwhile is not lost
        members = [m.decode() for m in await self._pop_set(keys=[tag_key])]
        return await self._delete_many(members) if members else 0

    async def aclose(self) -> None:
        """Stop the watchdog; close the client only if :meth:`from_url` created it."""
        self._guard.close()
        if self._owns_client:
            await self.client.aclose()

    def __repr__(self) -> str:
        kind = "cluster" if self.is_cluster else "redis"
        return (
            f"RedisBackend({kind}, timeout={self.timeout}, max_connections={self.max_connections})"
        )
