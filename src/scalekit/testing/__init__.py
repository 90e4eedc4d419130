"""Tools for testing code that uses scalekit: a controllable clock and a fault-injecting proxy.

Each primitive also ships an in-memory backend with the same semantics as its real one; they
are importable from here as well as from their own package.
"""

from __future__ import annotations

from scalekit.cache.backends import MemoryBackend as MemoryCacheBackend
from scalekit.queue.dedup import MemoryDedupStore
from scalekit.queue.memory import MemoryBroker
from scalekit.resilience.store import InMemoryBreakerStore
from scalekit.sessions.memory import MemorySessionBackend
from scalekit.sharding.directory import MemoryDirectoryStore
from scalekit.testing.clock import ManualClock
from scalekit.testing.proxy import FaultProxy

__all__ = [
    "FaultProxy",
    "InMemoryBreakerStore",
    "ManualClock",
    "MemoryBroker",
    "MemoryCacheBackend",
    "MemoryDedupStore",
    "MemoryDirectoryStore",
    "MemorySessionBackend",
]
