"""Write-through caching in front of a system of record, without the cache-aside race."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

from scalekit.cache._sentinel import MISSING
from scalekit.cache.core import _F_LEASE, Cache
from scalekit.errors import ConfigurationError, SerializationError, ValueTooLargeError

__all__ = ["WriteThroughCache"]

V = TypeVar("V")


class WriteThroughCache(Generic[V]):
    """Read-through and write-through over a :class:`~scalekit.cache.Cache` and your database.

    The classic race of cache-aside: a read misses, loads the *old* row, a write commits the new
    row and invalidates the cache, and then the slow read puts the old row back, where it stays
    until its TTL. Here a read that misses first stores a unique *fill lease* under the key
    (``SET NX``), loads, and replaces the lease with the value only if the lease is still there
    (an atomic compare-and-set). Every write replaces or deletes the key after the system of
    record is updated, so it voids any lease taken before it: the late read's value is returned
    to its caller but never cached. (This is the lease of "Scaling Memcache at Facebook".)

    Args:
        cache: the cache to keep in front of the system of record.
        load: ``await load(key)`` reads the system of record; ``None`` means "not found".
        store: ``await store(key, value)`` writes the system of record.
        delete: ``await delete(key)`` deletes from the system of record (needed by
            :meth:`remove`).
        ttl: seconds a cached value stays fresh; defaults to the cache's ``default_ttl``.
        on_write: after a write, ``"invalidate"`` deletes the cached entry (the safe default:
            concurrent writers cannot leave an older value last) or ``"set"`` stores the new
            value directly.
        fill_lease_ttl: seconds a fill lease lives at most (a crashed reader's lease expires).

    Raises:
        ConfigurationError: an unknown ``on_write`` or a non-positive lease TTL.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        load: Callable[[str], Awaitable[V | None]],
        store: Callable[[str, V], Awaitable[Any]],
        delete: Callable[[str], Awaitable[Any]] | None = None,
        ttl: float | None = MISSING,
        on_write: Literal["invalidate", "set"] = "invalidate",
        fill_lease_ttl: float = 10.0,
    ) -> None:
        if on_write not in ("invalidate", "set"):
            raise ConfigurationError("WriteThroughCache(on_write=...) is 'invalidate' or 'set'")
        if fill_lease_ttl <= 0:
            raise ConfigurationError("WriteThroughCache(fill_lease_ttl=...) must be positive")
        self.cache = cache
        self._load = load
        self._store = store
        self._delete = delete
        self.ttl = cache.default_ttl if ttl is MISSING else ttl
        self.on_write = on_write
        self.fill_lease_ttl = fill_lease_ttl
        self._inflight: dict[str, asyncio.Future[Any]] = {}
        self.lost_fills = 0
        """Loaded values not cached because a write voided their fill lease meanwhile."""

    async def get(self, key: str) -> V | None:
        """The value of ``key``: from the cache, else loaded (once per process) and cached.

        Raises:
            InvalidCacheKeyError: ``key`` is not a non-empty str.
            Exception: whatever ``load`` raised.
        """
        fut = self._inflight.get(key)
        if fut is not None:  # a lookup or load of this key is in flight: share its result
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            value = await self.cache.get(key, MISSING)
            if value is MISSING:
                value = await self._fill(key)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        else:
            fut.set_result(value)
            return value  # type: ignore[no-any-return]
        finally:
            del self._inflight[key]

    async def _fill(self, key: str) -> V | None:
        cache = self.cache
        full = cache.key(key)
        lease = cache._pack(os.urandom(8).hex(), self.fill_lease_ttl, flags=_F_LEASE)
        leased = await cache._call(
            "fill lease", cache.backend.add(full, lease, self.fill_lease_ttl), False
        )
        cache._loads += 1
        try:
            value = await self._load(key)
        except BaseException:
            if leased:
                await cache._call("fill lease", cache.backend.compare_and_delete(full, lease), 0)
            raise
        if not leased:
            return value
        ttl = self.ttl if value is not None else cache.negative_ttl
        if value is None and ttl is None:
            await cache._call("fill lease", cache.backend.compare_and_delete(full, lease), 0)
            return value
        eff = cache._ttl(ttl)
        try:
            frame = cache._pack(value, eff)
        except (SerializationError, ValueTooLargeError) as exc:
            cache._warn("fill", exc)
            await cache._call("fill lease", cache.backend.compare_and_delete(full, lease), 0)
            return value
        physical = cache._physical(eff, cache._keep)
        filled = await cache._call(
            "fill", cache.backend.compare_and_set(full, lease, frame, physical), False
        )
        if not filled:
            self.lost_fills += 1
        return value

    async def put(self, key: str, value: V) -> None:
        """Write ``value`` to the system of record, then invalidate (or set) the cache.

        If ``store`` raises, the cache is not touched and the error propagates.

        Raises:
            InvalidCacheKeyError: ``key`` is not a non-empty str.
            Exception: whatever ``store`` raised.
        """
        self.cache.key(key)  # validate before writing anything
        await self._store(key, value)
        if self.on_write == "set":
            await self.cache.set(key, value, ttl=self.ttl)
        else:
            await self.cache.delete(key)

    async def remove(self, key: str) -> None:
        """Delete ``key`` from the system of record, then from the cache.

        Raises:
            ConfigurationError: no ``delete`` callable was given.
            Exception: whatever ``delete`` raised.
        """
        if self._delete is None:
            raise ConfigurationError("WriteThroughCache.remove needs delete= at construction")
        self.cache.key(key)
        await self._delete(key)
        await self.cache.delete(key)

    def __repr__(self) -> str:
        return f"WriteThroughCache({self.cache!r}, on_write={self.on_write!r})"
