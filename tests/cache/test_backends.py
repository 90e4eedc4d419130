"""MemoryBackend: a bounded, TTL-aware LRU with the Redis backend's semantics."""

from __future__ import annotations

import pytest

from scalekit.cache import Cache, MemoryBackend
from scalekit.errors import ConfigurationError
from scalekit.testing import ManualClock


async def test_lru_evicts_the_least_recently_used() -> None:
    backend = MemoryBackend(max_entries=3)
    for k in "abc":
        await backend.set(k, k.encode(), None)
    assert await backend.get("a") == b"a"  # a is now the most recent
    await backend.set("d", b"d", None)
    assert await backend.get("b") is None
    assert await backend.get_many(["a", "c", "d"]) == [b"a", b"c", b"d"]
    assert backend.evictions == 1
    assert len(backend) == 3


async def test_expired_entries_are_dropped_before_live_ones() -> None:
    clock = ManualClock()
    backend = MemoryBackend(max_entries=3, clock=clock)
    await backend.set("short", b"1", 1.0)
    await backend.set("a", b"a", None)
    await backend.set("b", b"b", None)
    clock.set(2.0)
    await backend.set("c", b"c", None)
    assert await backend.get_many(["a", "b", "c"]) == [b"a", b"b", b"c"]
    assert backend.evictions == 0


async def test_add_and_compare_operations() -> None:
    clock = ManualClock()
    backend = MemoryBackend(clock=clock)
    assert await backend.add("k", b"1", 1.0)
    assert not await backend.add("k", b"2", 1.0)
    assert not await backend.compare_and_set("k", b"x", b"3", None)
    assert await backend.compare_and_set("k", b"1", b"3", None)
    assert not await backend.compare_and_delete("k", b"1")
    assert await backend.compare_and_delete("k", b"3")
    await backend.add("e", b"1", 1.0)
    clock.set(1.0)
    assert await backend.add("e", b"2", None)  # expired counts as absent
    await backend.set("z", b"1", 0)
    assert await backend.get("z") is None


async def test_evictions_show_in_cache_stats() -> None:
    cache = Cache(MemoryBackend(max_entries=2), namespace="t")
    await cache.set_many({"a": 1, "b": 2, "c": 3})
    assert cache.stats().evictions == 1


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ConfigurationError):
        MemoryBackend(max_entries=0)
