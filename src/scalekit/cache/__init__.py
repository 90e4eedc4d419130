"""Read-through and write-through caching over Redis and in memory, stampede-proof and fail-open.

* :class:`Cache`: ``get``/``set``/``delete`` and their ``_many`` forms, tags, namespace
  ``clear``, :meth:`Cache.get_or_load` and the :meth:`Cache.cached` decorator with single-flight,
  an optional cross-process lease, stale-while-revalidate, stale-if-error, XFetch early refresh,
  negative caching and TTL jitter.
* Backends: :class:`MemoryBackend` (bounded LRU with TTLs) and :class:`RedisBackend`
  (``redis.asyncio.Redis`` or ``RedisCluster``).
* :class:`WriteThroughCache`: writes the system of record first, never caches a value a
  concurrent write made stale.
* :class:`NearCache`: an in-process L1 kept coherent by Redis invalidations.
* Serializers: :class:`JsonSerializer` (default), :class:`MsgpackSerializer`, and
  :class:`Signer` for HMAC-SHA256 signed values. No pickle.

Importing this package never imports redis.
"""

from __future__ import annotations

from scalekit.cache.backends import Backend, MemoryBackend
from scalekit.cache.core import BackendBreaker, Cache, CacheStats
from scalekit.cache.near import NearCache
from scalekit.cache.redis import RedisBackend
from scalekit.cache.serializers import (
    JsonSerializer,
    MsgpackSerializer,
    Serializer,
    SignedSerializer,
    Signer,
)
from scalekit.cache.write_through import WriteThroughCache

__all__ = [
    "Backend",
    "BackendBreaker",
    "Cache",
    "CacheStats",
    "JsonSerializer",
    "MemoryBackend",
    "MsgpackSerializer",
    "NearCache",
    "RedisBackend",
    "Serializer",
    "SignedSerializer",
    "Signer",
    "WriteThroughCache",
]
