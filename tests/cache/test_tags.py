"""Versioned tags: a purge outdates every value tagged before it, even one whose write raced it.

The same scenarios run on the in-memory backend, a real Redis and the local Redis Cluster.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from scalekit.cache import Cache, MemoryBackend, RedisBackend
from scalekit.errors import InvalidCacheKeyError
from tests.cache.conftest import open_client


@pytest.fixture(params=["memory", "redis", "cluster"])
async def cache(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Cache]:
    client: Any = None
    if request.param == "memory":
        backend: Any = MemoryBackend()
    else:
        client = await open_client(request, request.param)
        backend = RedisBackend(client, timeout=5.0)
    c = Cache(backend, namespace=unique, default_ttl=60, ttl_jitter=0, strict=True)
    try:
        yield c
    finally:
        await c.clear()
        await c.aclose()
        if client is not None:
            await client.aclose()


async def test_a_load_that_races_a_purge_never_serves_its_outdated_value(cache: Cache) -> None:
    # The read misses and loads the old row; meanwhile the row changes and the tag is
    # purged; then the load stores what it read. Without versions that value would be served
    # until its TTL (the purge ran before it was tagged).
    database = {"price": 10}
    loading, release = asyncio.Event(), asyncio.Event()
    loads = 0

    async def load_price() -> int:
        nonlocal loads
        loads += 1
        value = database["price"]
        loading.set()
        await release.wait()
        return value

    reader = asyncio.create_task(cache.get_or_load("price", load_price, tags=["catalog"]))
    await loading.wait()
    database["price"] = 12
    await cache.invalidate_tags(["catalog"])
    release.set()
    assert await reader == 10  # its caller gets what it read, as without a cache
    assert await cache.get("price") is None  # but nobody else does
    assert await cache.get_or_load("price", load_price, tags=["catalog"]) == 12
    assert loads == 2
    assert await cache.get("price") == 12


async def test_a_purge_outdates_values_its_member_list_missed(cache: Cache) -> None:
    await cache.set("a", 1, tags=["t"])
    await cache.set_many({"b": 2, "c": 3}, tags=["t", "u"])
    await cache.set("plain", 4)
    # lose the member list, as a racing or failed tag write would
    backend: Any = cache.backend
    if isinstance(backend, MemoryBackend):
        backend._tags.pop(f"{cache.namespace}:#tag:t")
    else:
        await backend.delete(f"{cache.namespace}:#tag:t")
    assert await cache.invalidate_tags(["t"]) == 0  # nothing to delete...
    assert await cache.get("a") is None  # ...yet nothing tagged before it is served
    assert await cache.get_many(["a", "b", "c", "plain"]) == {"plain": 4}
    assert await cache.get_or_load("b", _const(20), tags=["t"]) == 20  # reloaded
    await cache.set("a", 5, tags=["t"])  # tagged after the purge: valid
    assert await cache.get_many(["a", "b"]) == {"a": 5, "b": 20}
    await cache.invalidate_tags(["u"])
    assert await cache.get_many(["a", "b"]) == {"a": 5}  # b also carried u


async def test_a_lost_version_counter_outdates_values_rather_than_reviving_them(
    cache: Cache,
) -> None:
    await cache.invalidate_tags(["t"])
    await cache.set("a", 1, tags=["t"])  # stored with version 1
    backend: Any = cache.backend
    if isinstance(backend, MemoryBackend):
        backend._counters.clear()
    else:
        await backend.client.delete(f"{cache.namespace}:#tagv:t")
    assert await cache.get("a") is None


def _const(value: Any) -> Any:
    async def load() -> Any:
        return value

    return load


# -- in memory only: counting calls, failures, malformed frames ----------------------------------


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.versions_fail = False

    async def get(self, key: str) -> bytes | None:
        self.calls.append("get")
        return await super().get(key)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        self.calls.append("get_many")
        if self.versions_fail and any("#tagv:" in k for k in keys):
            raise ConnectionError("down")
        return await super().get_many(keys)


async def test_untagged_values_cost_no_version_reads() -> None:
    backend = CountingBackend()
    cache = Cache(backend, namespace="n", default_ttl=60)
    await cache.set("k", 1)
    backend.calls.clear()
    assert await cache.get("k") == 1
    assert await cache.get_or_load("k", _const(2)) == 1
    assert await cache.get_many(["k"]) == {"k": 1}
    assert backend.calls == ["get", "get", "get_many"]
    await cache.set("t1", 1, tags=["x"])
    await cache.set("t2", 2, tags=["x", "y"])
    backend.calls.clear()
    assert await cache.get_many(["k", "t1", "t2"]) == {"k": 1, "t1": 1, "t2": 2}
    assert backend.calls == ["get_many", "get_many"]  # the values, then all their versions


async def test_a_tagged_read_through_reads_value_and_counters_in_one_call() -> None:
    backend = CountingBackend()
    cache = Cache(backend, namespace="n", default_ttl=60)
    assert await cache.get_or_load("k", _const(1), tags=["x", "y"]) == 1
    assert backend.calls == ["get_many"]  # the miss: value and counters together, then a set
    backend.calls.clear()
    assert await cache.get_or_load("k", _const(2), tags=["x", "y"]) == 1
    assert backend.calls == ["get_many"]  # the hit: validated by the same read
    backend.calls.clear()
    assert await cache.get_or_load("k", _const(3), tags=["x"]) == 1  # stored with x and y
    assert backend.calls == ["get_many", "get_many"]  # y was not read: one more read


async def test_unreadable_versions_fail_safe() -> None:
    backend = CountingBackend()
    cache = Cache(backend, namespace="n", default_ttl=60)
    await cache.set("t", 1, tags=["x"])
    await cache.set("plain", 2)
    backend.versions_fail = True
    assert await cache.get("t") is None  # cannot tell whether it was purged: a miss
    assert await cache.get_many(["t", "plain"]) == {"plain": 2}
    assert not await cache.set("u", 3, tags=["x"])  # a purge could miss it: not stored
    assert await cache.get_or_load("v", _const(4), tags=["x"]) == 4  # served, not stored
    backend.versions_fail = False
    assert await cache.get("u") is None
    assert await cache.get("v") is None
    assert await cache.get("t") == 1  # readable again: it was never purged
    strict = Cache(backend, namespace="n", default_ttl=60, strict=True)
    backend.versions_fail = True
    with pytest.raises(Exception, match="down"):
        await strict.get("t")


async def test_an_invalidated_value_is_not_served_stale_on_error() -> None:
    from scalekit.testing import ManualClock

    clock = ManualClock()
    cache = Cache(
        MemoryBackend(clock=clock), namespace="n", default_ttl=10, stale_if_error=60, clock=clock
    )
    assert await cache.get_or_load("k", _const(1), tags=["t"]) == 1
    clock.set(20)  # stale, within stale_if_error

    async def failing() -> int:
        raise RuntimeError("database down")

    assert await cache.get_or_load("k", failing, tags=["t"]) == 1  # stale on error: fine
    await cache.invalidate_tags(["t"])
    with pytest.raises(RuntimeError, match="database down"):
        await cache.get_or_load("k", failing, tags=["t"])  # purged data is not served


@pytest.mark.parametrize("tag", ["", "x" * 1025, "\ud800", 7, None])
async def test_bad_tags_are_refused_before_anything_is_written(tag: Any) -> None:
    backend = MemoryBackend()
    cache = Cache(backend, namespace="n", default_ttl=60)
    with pytest.raises(InvalidCacheKeyError, match="tags"):
        await cache.set("k", 1, tags=[tag])
    with pytest.raises(InvalidCacheKeyError, match="tags"):
        await cache.invalidate_tags([tag])
    assert len(backend) == 0


async def test_a_malformed_tag_section_is_a_decode_error_and_a_miss() -> None:
    backend = MemoryBackend()
    cache = Cache(backend, namespace="n", default_ttl=60)
    await cache.set("k", 1, tags=["t"])
    frame = await backend.get("n:k")
    assert frame is not None
    header = struct.calcsize("<BBddf")
    await backend.set("n:k", frame[: header + 3], None)  # cut inside the tag section
    assert await cache.get("k") is None
    assert cache.stats().decode_errors == 1
