"""Cache logic without a server: MemoryBackend and a ManualClock."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.cache import Cache, CacheStats, MemoryBackend, Signer
from scalekit.errors import (
    CacheBackendError,
    ConfigurationError,
    InvalidCacheKeyError,
    SerializationError,
    ValueTooLargeError,
)
from scalekit.testing import ManualClock


def make(clock: ManualClock | None = None, **kwargs: Any) -> Cache:
    clock = clock or ManualClock()
    kwargs.setdefault("ttl_jitter", 0.0)
    return Cache(MemoryBackend(clock=clock), namespace="t", default_ttl=10, clock=clock, **kwargs)


class Loader:
    def __init__(self, value: Any = "v") -> None:
        self.calls = 0
        self.value = value
        self.gate: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def __call__(self) -> Any:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.value


async def test_set_get_delete_round_trip() -> None:
    cache = make()
    assert await cache.get("k") is None
    assert await cache.set("k", {"a": [1, 2]})
    assert await cache.get("k") == {"a": [1, 2]}
    assert await cache.delete("k") is True
    assert await cache.get("k", "dflt") == "dflt"


async def test_values_expire_after_ttl() -> None:
    clock = ManualClock()
    cache = make(clock)
    await cache.set("k", 1, ttl=5)
    clock.set(4.9)
    assert await cache.get("k") == 1
    clock.set(5.0)
    assert await cache.get("k") is None


async def test_ttl_none_never_expires() -> None:
    clock = ManualClock()
    cache = make(clock)
    await cache.set("k", 1, ttl=None)
    clock.set(1e9)
    assert await cache.get("k") == 1


async def test_many_operations() -> None:
    cache = make()
    assert await cache.set_many({"a": 1, "b": 2, "c": None})
    assert await cache.get_many(["a", "b", "c", "zz"]) == {"a": 1, "b": 2, "c": None}
    assert await cache.delete_many(["a", "b", "zz"]) == 2
    assert await cache.get_many(["a", "b"]) == {}


async def test_clear_deletes_only_its_namespace() -> None:
    clock = ManualClock()
    backend = MemoryBackend(clock=clock)
    a = Cache(backend, namespace="a", default_ttl=10, clock=clock)
    ab = Cache(backend, namespace="ab", default_ttl=10, clock=clock)
    await a.set("x", 1, tags=["t"])
    await ab.set("x", 2)
    assert await a.clear() == 1
    assert await a.get("x") is None
    assert await ab.get("x") == 2


async def test_tags_invalidate_their_keys_only() -> None:
    cache = make()
    await cache.set("u1", 1, tags=["users"])
    await cache.set_many({"u2": 2, "u3": 3}, tags=["users", "page"])
    await cache.set("other", 4)
    assert await cache.invalidate_tags(["users"]) == 3
    assert await cache.get_many(["u1", "u2", "u3", "other"]) == {"other": 4}


async def test_ttl_jitter_only_shortens() -> None:
    clock = ManualClock()
    cache = make(clock, ttl_jitter=0.5)
    for i in range(50):
        await cache.set(f"k{i}", i, ttl=10)
    clock.set(4.99)
    assert len(await cache.get_many([f"k{i}" for i in range(50)])) == 50
    clock.set(10.0)
    assert await cache.get_many([f"k{i}" for i in range(50)]) == {}


async def test_jitter_spreads_expiry() -> None:
    clock = ManualClock()
    cache = make(clock, ttl_jitter=0.5)
    await cache.set_many({f"k{i}": i for i in range(100)}, ttl=10)
    clock.set(7.5)
    alive = len(await cache.get_many([f"k{i}" for i in range(100)]))
    assert 0 < alive < 100


@pytest.mark.parametrize("key", [1, b"k", "", None])
async def test_bad_keys_raise_invalid_cache_key(key: Any) -> None:
    cache = make()
    with pytest.raises(InvalidCacheKeyError):
        await cache.get(key)
    with pytest.raises(InvalidCacheKeyError):
        await cache.set(key, 1)


async def test_unencodable_value_raises_and_stores_nothing() -> None:
    cache = make()
    await cache.set("k", "old")
    with pytest.raises(SerializationError):
        await cache.set("k", {1, 2})
    assert await cache.get("k") == "old"


async def test_oversized_value_raises_value_too_large() -> None:
    cache = make(max_value_bytes=100)
    with pytest.raises(ValueTooLargeError, match="max_value_bytes=100"):
        await cache.set("k", "x" * 200)
    assert await cache.get("k") is None


async def test_oversized_loaded_value_is_returned_but_not_cached() -> None:
    cache = make(max_value_bytes=100)
    loader = Loader("x" * 200)
    assert await cache.get_or_load("k", loader) == "x" * 200
    assert await cache.get_or_load("k", loader) == "x" * 200
    assert loader.calls == 2
    assert cache.stats().too_large == 2


async def test_garbage_in_the_backend_counts_as_a_miss() -> None:
    cache = make()
    await cache.backend.set("t:k", b"\x00garbage", None)
    await cache.backend.set("t:j", b"", None)
    assert await cache.get("k") is None
    assert await cache.get("j") is None
    assert cache.stats().decode_errors == 2
    loader = Loader("fresh")
    assert await cache.get_or_load("k", loader) == "fresh"
    assert await cache.get("k") == "fresh"


async def test_garbage_raises_in_strict_mode() -> None:
    cache = make(strict=True)
    await cache.backend.set("t:k", b"\x00garbage", None)
    with pytest.raises(SerializationError):
        await cache.get("k")


async def test_signed_cache_refuses_injected_values() -> None:
    clock = ManualClock()
    backend = MemoryBackend(clock=clock)
    signed = Cache(backend, namespace="t", clock=clock, signer=Signer([b"k" * 32]))
    unsigned = Cache(backend, namespace="t", clock=clock)
    await unsigned.set("k", {"admin": True})  # an attacker with write access to the store
    assert await signed.get("k") is None
    assert signed.stats().decode_errors == 1
    await signed.set("k", {"admin": False})
    assert await signed.get("k") == {"admin": False}


# -- read-through --------------------------------------------------------------------------


async def test_get_or_load_caches_the_loaded_value() -> None:
    cache = make()
    loader = Loader({"id": 1})
    assert await cache.get_or_load("k", loader) == {"id": 1}
    assert await cache.get_or_load("k", loader) == {"id": 1}
    assert loader.calls == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.loads) == (1, 1, 1)
    assert stats.hit_ratio == 0.5


async def test_one_thousand_concurrent_misses_call_the_loader_once() -> None:
    cache = make()
    loader = Loader("v")
    loader.gate = asyncio.Event()
    tasks = [asyncio.create_task(cache.get_or_load("hot", loader)) for _ in range(1000)]
    for _ in range(5):
        await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.gather(*tasks)
    assert results == ["v"] * 1000
    assert loader.calls == 1
    assert cache.stats().coalesced == 999


async def test_loader_error_reaches_every_waiter_and_is_not_cached() -> None:
    cache = make()
    loader = Loader()
    loader.gate = asyncio.Event()
    loader.error = RuntimeError("db down")
    tasks = [asyncio.create_task(cache.get_or_load("k", loader)) for _ in range(10)]
    await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert loader.calls == 1
    loader.error = None
    assert await cache.get_or_load("k", loader) == "v"


async def test_cancelled_leader_hands_over_to_a_waiter() -> None:
    cache = make()
    loader = Loader()
    loader.gate = asyncio.Event()
    leader = asyncio.create_task(cache.get_or_load("k", loader))
    await asyncio.sleep(0)
    follower = asyncio.create_task(cache.get_or_load("k", loader))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    loader.gate.set()
    assert await follower == "v"
    assert leader.cancelled()
    assert loader.calls == 2


async def test_stale_while_revalidate_serves_stale_and_refreshes_once() -> None:
    clock = ManualClock()
    cache = make(clock, stale_ttl=30)
    loader = Loader("v1")
    await cache.get_or_load("k", loader)
    clock.set(11)
    loader.value = "v2"
    loader.gate = asyncio.Event()
    assert await cache.get_or_load("k", loader) == "v1"
    assert await cache.get_or_load("k", loader) == "v1"
    assert cache.stats().stale_hits == 2
    loader.gate.set()
    await asyncio.gather(*cache._refreshing.values())
    assert loader.calls == 2
    assert await cache.get_or_load("k", loader) == "v2"
    assert await cache.get("k") == "v2"


async def test_past_the_stale_window_callers_wait_for_the_load() -> None:
    clock = ManualClock()
    cache = make(clock, stale_ttl=5)
    loader = Loader("v1")
    await cache.get_or_load("k", loader)
    clock.set(15.1)
    loader.value = "v2"
    assert await cache.get_or_load("k", loader) == "v2"


async def test_plain_get_returns_fresh_values_only() -> None:
    clock = ManualClock()
    cache = make(clock, stale_ttl=30)
    await cache.set("k", 1)
    clock.set(11)
    assert await cache.get("k") is None


async def test_stale_if_error_serves_the_last_value_within_its_max_age(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    cache = make(clock, stale_if_error=60)
    loader = Loader("v1")
    await cache.get_or_load("k", loader)
    loader.error = ConnectionError("db down")
    clock.set(30)
    with caplog.at_level(logging.WARNING, logger="scalekit.cache"):
        assert await cache.get_or_load("k", loader) == "v1"
    assert "serving the value from 30.0s ago" in caplog.text
    assert cache.stats().stale_on_error == 1
    clock.set(70.1)  # 60.1 s past expiry: too old, and the backend dropped it anyway
    with pytest.raises(ConnectionError):
        await cache.get_or_load("k", loader)


async def test_negative_results_are_cached_with_their_own_ttl() -> None:
    clock = ManualClock()
    cache = make(clock, negative_ttl=2)
    loader = Loader(None)
    assert await cache.get_or_load("missing", loader) is None
    assert await cache.get_or_load("missing", loader) is None
    assert loader.calls == 1
    clock.set(2.0)
    assert await cache.get_or_load("missing", loader) is None
    assert loader.calls == 2


async def test_none_is_not_cached_without_negative_ttl() -> None:
    cache = make()
    loader = Loader(None)
    await cache.get_or_load("missing", loader)
    await cache.get_or_load("missing", loader)
    assert loader.calls == 2


async def test_xfetch_refreshes_early_in_the_background() -> None:
    clock = ManualClock()
    cache = make(clock, early_refresh=1.0)

    async def slow_loader() -> str:
        await clock.sleep(0)  # yields
        clock.set(clock.monotonic() + 2.0)  # the load "takes" 2 s
        return "v"

    await cache.get_or_load("k", slow_loader)  # fresh until 12, delta 2
    clock.set(11.9)  # 0.1 s before expiry: -2*ln(u) >= 0.1 for most u
    refreshed = 0
    for _ in range(20):
        await cache.get_or_load("k", slow_loader)
        refreshed = cache.stats().refreshes
        if refreshed:
            break
    assert refreshed >= 1


async def test_xfetch_is_off_by_default() -> None:
    clock = ManualClock()
    cache = make(clock)
    await cache.get_or_load("k", Loader())
    clock.set(9.99)
    for _ in range(50):
        await cache.get_or_load("k", Loader())
    assert cache.stats().refreshes == 0


# -- decorator -----------------------------------------------------------------------------


async def test_cached_decorator_builds_keys_from_a_template() -> None:
    cache = make()
    calls: list[int] = []

    @cache.cached(ttl=60, key="user:{user_id}")
    async def load_user(user_id: int, verbose: bool = False) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    assert await load_user(1) == {"id": 1}
    assert await load_user(user_id=1) == {"id": 1}
    assert await load_user(2) == {"id": 2}
    assert calls == [1, 2]
    assert await cache.get("user:1") == {"id": 1}
    assert load_user.cache_key(7) == "user:7"  # type: ignore[attr-defined]


async def test_cached_decorator_default_and_callable_keys() -> None:
    cache = make()

    @cache.cached()
    async def add(a: int, b: int = 1) -> int:
        return a + b

    @cache.cached(key=lambda a, b: f"mul:{a}:{b}")
    async def mul(a: int, b: int) -> int:
        return a * b

    assert await add(1) == 2
    assert await add(1, b=1) == 2
    assert cache.stats().hits == 1
    assert await mul(2, 3) == 6
    assert await cache.get("mul:2:3") == 6


def test_cached_decorator_rejects_unknown_template_fields() -> None:
    cache = make()
    with pytest.raises(ConfigurationError, match="user_id"):

        @cache.cached(key="user:{user_id}")
        async def load(uid: int) -> int:
            return uid


# -- failures ------------------------------------------------------------------------------


class BrokenBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.broken = True
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        if self.broken:
            raise ConnectionError("backend down")
        return await super().get(key)

    async def set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.calls += 1
        if self.broken:
            raise ConnectionError("backend down")
        await super().set(key, value, ttl)


async def test_backend_failure_fails_open_and_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    cache = Cache(BrokenBackend(), namespace="t")
    with caplog.at_level(logging.WARNING, logger="scalekit.cache"):
        assert await cache.get("k") is None
        assert await cache.set("k", 1) is False
        assert await cache.get_or_load("k", Loader("v")) == "v"
    assert cache.stats().backend_errors == 4
    assert caplog.text.count("failing open") == 1  # rate-limited


async def test_backend_failure_raises_in_strict_mode() -> None:
    cache = Cache(BrokenBackend(), namespace="t", strict=True)
    with pytest.raises(CacheBackendError, match="backend get failed") as info:
        await cache.get("k")
    assert isinstance(info.value.__cause__, ConnectionError)


class SimpleBreaker:
    def __init__(self) -> None:
        self.open = False
        self.failures = 0
        self.successes = 0

    def allow(self) -> bool:
        return not self.open

    def record_success(self) -> None:
        self.successes += 1

    def record_failure(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures >= 2:
            self.open = True


async def test_simple_breaker_stops_calls_to_a_dead_backend() -> None:
    backend = BrokenBackend()
    breaker = SimpleBreaker()
    cache = Cache(backend, namespace="t", breaker=breaker)
    for _ in range(10):
        assert await cache.get("k") is None
    assert backend.calls == 2
    stats = cache.stats()
    assert (stats.backend_errors, stats.breaker_rejections) == (2, 8)
    backend.broken = False
    breaker.open = False
    await cache.set("k", 1)
    assert await cache.get("k") == 1
    assert breaker.successes == 2


class ContextBreaker:
    def __init__(self) -> None:
        self.open = False
        self.exits: list[type[BaseException] | None] = []

    async def __aenter__(self) -> None:
        if self.open:
            raise RuntimeError("circuit open")

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.exits.append(exc_type)


async def test_context_manager_breaker_is_accepted() -> None:
    backend = BrokenBackend()
    breaker = ContextBreaker()
    cache = Cache(backend, namespace="t", breaker=breaker)
    assert await cache.get("k") is None
    assert breaker.exits == [ConnectionError]
    breaker.open = True
    assert await cache.get("k") is None
    assert backend.calls == 1
    assert cache.stats().breaker_rejections == 1


def test_bad_breaker_and_config_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="breaker"):
        Cache(MemoryBackend(), namespace="t", breaker=object())
    with pytest.raises(ConfigurationError):
        Cache(MemoryBackend(), namespace="", default_ttl=1)
    with pytest.raises(ConfigurationError):
        Cache(MemoryBackend(), namespace="t", stale_ttl=-1)
    with pytest.raises(ConfigurationError):
        Cache(MemoryBackend(), namespace="t", ttl_jitter=1.0)


def test_stats_is_a_frozen_snapshot() -> None:
    stats = make().stats()
    assert isinstance(stats, CacheStats)
    with pytest.raises(AttributeError):
        stats.hits = 3  # type: ignore[misc]
    assert stats.hit_ratio == 0.0


@given(data=st.binary(max_size=64) | st.binary(max_size=40).map(lambda b: b"\xc7\x00" + b))
@settings(max_examples=150, deadline=None)
def test_hostile_stored_bytes_are_misses_never_crashes(data: bytes) -> None:
    async def run() -> None:
        for signer in (None, Signer([b"k" * 32])):
            cache = Cache(MemoryBackend(), namespace="t", signer=signer)
            await cache.backend.set("t:k", data, None)
            value = await cache.get("k", "miss")
            loaded = await cache.get_or_load("k", Loader("fresh"))
            assert value == "miss" or cache.stats().decode_errors == 0
            assert loaded in ("fresh", value)

    asyncio.run(run())
