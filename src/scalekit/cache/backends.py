"""The storage contract a :class:`~scalekit.cache.Cache` runs on, and the in-memory backend.

A backend stores opaque bytes under string keys with an optional time to live; everything else
(serialization, freshness, stampede control) lives in :class:`~scalekit.cache.Cache`. The
in-memory backend has the same semantics as :class:`~scalekit.cache.RedisBackend`, so users test
their own code against it without a server.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError

__all__ = ["Backend", "MemoryBackend"]


@runtime_checkable
class Backend(Protocol):
    """Byte storage with expiry; every method is a coroutine and may raise on failure.

    ``ttl`` is in seconds; ``None`` stores without expiry. Keys are full keys (the cache adds
    its namespace). A backend raises whatever its driver raises: the cache decides whether that
    becomes a miss (fail-open) or a :class:`~scalekit.errors.CacheBackendError` (strict).
    """

    async def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None``."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The bytes stored under each key, in order (``None`` where missing)."""
        ...

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value`` under ``key``."""
        ...

    async def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """Store each ``(key, value, ttl)``."""
        ...

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        """Store ``value`` only if ``key`` is absent; return whether it was stored."""
        ...

    async def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: float | None
    ) -> bool:
        """Replace the value only if it is exactly ``expected``; return whether it was replaced."""
        ...

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Delete ``key`` only if its value is exactly ``expected``."""
        ...

    async def delete(self, key: str) -> bool:
        """Delete ``key``; return whether it existed."""
        ...

    async def incr(self, key: str) -> int:
        """Add one to the counter under ``key`` (0 when absent), without expiry; return it.

        The cache keeps each tag's purge count this way: a counter that is lost (evicted)
        only makes values tagged after the last purge look outdated, never older ones valid.
        """
        ...

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete the keys; return how many existed."""
        ...

    async def clear(self, prefix: str) -> int:
        """Delete every key starting with ``prefix``; return how many were deleted."""
        ...

    async def tag(self, tag_key: str, keys: Sequence[str], ttl: float | None) -> None:
        """Remember that ``keys`` carry the tag stored under ``tag_key``."""
        ...

    async def invalidate_tag(self, tag_key: str) -> int:
        """Delete every key carrying the tag, and the tag; return how many keys were deleted."""
        ...

    async def aclose(self) -> None:
        """Release resources the backend owns (not a client the user passed in)."""
        ...


class MemoryBackend:
    """A bounded, TTL-aware LRU dictionary with the semantics of the Redis backend.

    Expired entries are never returned and are dropped when met or when room is needed; once
    ``max_entries`` is reached the least recently used entry is evicted. Single process only:
    use it for tests, for development, or as a per-process cache where coherence does not matter.

    Args:
        max_entries: the most entries kept (tags count separately).
        clock: the clock expiry is measured on.

    Raises:
        ConfigurationError: ``max_entries`` is below 1.
    """

    def __init__(self, *, max_entries: int = 10_000, clock: Clock = SYSTEM_CLOCK) -> None:
        if max_entries < 1:
            raise ConfigurationError("MemoryBackend(max_entries=...) must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._data: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()
        self._tags: dict[str, tuple[set[str], float | None]] = {}
        self._counters: dict[str, int] = {}  # tag versions: never evicted, never expire
        self.evictions = 0
        """How many live entries were evicted to make room (not counting expiries)."""

    def __len__(self) -> int:
        return len(self._data)

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires is not None and self._clock.monotonic() >= expires:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def _store(self, key: str, value: bytes, ttl: float | None) -> None:
        if ttl is not None and ttl <= 0:
            self._data.pop(key, None)
            return
        expires = None if ttl is None else self._clock.monotonic() + ttl
        data = self._data
        data[key] = (value, expires)
        data.move_to_end(key)
        if len(data) > self.max_entries:
            now = self._clock.monotonic()
            # drop expired entries first (cheap scan of the oldest), then the LRU one
            for old in list(data)[: max(1, len(data) // 10)]:
                exp = data[old][1]
                if exp is not None and now >= exp:
                    del data[old]
            while len(data) > self.max_entries:
                data.popitem(last=False)
                self.evictions += 1

    async def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or ``None`` when absent or expired."""
        return self._live(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The bytes under each key, in order (counters as their decimal text, as in Redis)."""
        counters = self._counters
        return [str(counters[k]).encode() if k in counters else self._live(k) for k in keys]

    async def incr(self, key: str) -> int:
        """Add one to the counter under ``key``; counters are kept apart from the LRU entries."""
        value = self._counters.get(key, 0) + 1
        self._counters[key] = value
        return value

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Store ``value``; a ``ttl`` of 0 or less deletes the key (as Redis would expire it)."""
        self._store(key, value, ttl)

    async def set_many(self, items: Sequence[tuple[str, bytes, float | None]]) -> None:
        """Store each ``(key, value, ttl)``."""
        for key, value, ttl in items:
            self._store(key, value, ttl)

    async def add(self, key: str, value: bytes, ttl: float | None) -> bool:
        """Store only if absent."""
        if self._live(key) is not None:
            return False
        self._store(key, value, ttl)
        return True

    async def compare_and_set(
        self, key: str, expected: bytes, value: bytes, ttl: float | None
    ) -> bool:
        """Replace only if the current value is ``expected``."""
        if self._live(key) != expected:
            return False
        self._store(key, value, ttl)
        return True

    async def compare_and_delete(self, key: str, expected: bytes) -> bool:
        """Delete only if the current value is ``expected``."""
        if self._live(key) != expected:
            return False
        del self._data[key]
        return True

    async def delete(self, key: str) -> bool:
        """Delete ``key``."""
        present = self._live(key) is not None
        self._data.pop(key, None)
        return present

    async def delete_many(self, keys: Sequence[str]) -> int:
        """Delete the keys."""
        return sum([await self.delete(k) for k in keys])

    async def clear(self, prefix: str) -> int:
        """Delete every key (and tag) starting with ``prefix``."""
        doomed = [k for k in self._data if k.startswith(prefix)]
        for k in doomed:
            del self._data[k]
        for t in [t for t in self._tags if t.startswith(prefix)]:
            del self._tags[t]
        for c in [c for c in self._counters if c.startswith(prefix)]:
            del self._counters[c]
        return len(doomed)

    async def tag(self, tag_key: str, keys: Sequence[str], ttl: float | None) -> None:
        """Add ``keys`` to the tag's member set, extending its life to ``ttl``."""
        members, expires = self._tags.get(tag_key, (set(), None))
        members.update(keys)
        new_exp = None if ttl is None else self._clock.monotonic() + ttl
        if expires is not None and new_exp is not None:
            new_exp = max(expires, new_exp)
        elif tag_key in self._tags and expires is None:
            new_exp = None
        self._tags[tag_key] = (members, new_exp)

    async def invalidate_tag(self, tag_key: str) -> int:
        """Delete the tag's member keys and the tag itself."""
        members, _ = self._tags.pop(tag_key, (set(), None))
        deleted = 0
        for key in members:
            if self._live(key) is not None:
                deleted += 1
            self._data.pop(key, None)
        return deleted

    async def aclose(self) -> None:
        """Drop every entry."""
        self._data.clear()
        self._tags.clear()
        self._counters.clear()

    def __repr__(self) -> str:
        return f"MemoryBackend(entries={len(self._data)}, max_entries={self.max_entries})"
