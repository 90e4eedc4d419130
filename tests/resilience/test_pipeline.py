from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from scalekit.errors import CircuitOpenError, ConfigurationError, DeadlineExceededError
from scalekit.resilience import (
    AdaptiveLimit,
    BreakerState,
    Bulkhead,
    CircuitBreaker,
    CountWindow,
    Fallback,
    Pipeline,
    Retry,
    Timeout,
)
from scalekit.testing import ManualClock


class Recorder:
    """A custom policy that records the order in which it is entered."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    async def call(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.log.append(self.name)
        return await fn(*args, **kwargs)


def test_policies_are_sorted_into_the_documented_order() -> None:
    breaker = CircuitBreaker("p")
    bulkhead = Bulkhead(2)
    limit = AdaptiveLimit(latency_threshold=1)
    fallback: Fallback[None] = Fallback(None)
    overall, attempt = Timeout(2), Timeout(0.5, per_attempt=True)
    retry = Retry()
    pipeline = Pipeline(attempt, bulkhead, breaker, retry, limit, fallback, overall)
    assert pipeline.policies == (fallback, overall, retry, breaker, bulkhead, limit, attempt)
    as_given = Pipeline(attempt, breaker, reorder=False)
    assert as_given.policies == (attempt, breaker)


def test_two_policies_of_a_unique_role_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="two Retry"):
        Pipeline(Retry(), Retry())
    with pytest.raises(ConfigurationError, match="not a policy"):
        Pipeline(object())


async def test_custom_policies_wrap_in_order_given() -> None:
    log: list[str] = []

    async def fn(x: int) -> int:
        log.append("fn")
        return x

    pipeline = Pipeline(Recorder("a", log), Recorder("b", log), reorder=False)
    assert await pipeline.call(fn, 3) == 3
    assert log == ["a", "b", "fn"]


async def test_breaker_sees_every_retry_attempt_and_fallback_answers() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(
        "orders", window=CountWindow(10), minimum_calls=3, open_duration=30, clock=clock
    )
    calls = 0

    async def down() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionError("refused")

    pipeline = Pipeline(Fallback("cached"), Retry(attempts=3, wait_initial=0, clock=clock), breaker)
    assert await pipeline.call(down) == "cached"
    assert calls == 3
    assert breaker.state is BreakerState.OPEN
    # open: the retry does not hammer the open breaker, the fallback answers at once
    assert await pipeline.call(down) == "cached"
    assert calls == 3


async def test_per_attempt_timeout_trips_the_breaker_on_a_hung_dependency() -> None:
    breaker = CircuitBreaker("hung", window=CountWindow(5), minimum_calls=2)

    async def hang() -> None:
        await asyncio.Event().wait()

    pipeline = Pipeline(breaker, Timeout(0.01, per_attempt=True))
    for _ in range(2):
        with pytest.raises(DeadlineExceededError):
            await pipeline.call(hang)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await pipeline.call(hang)


async def test_overall_timeout_bounds_retries() -> None:
    attempts = 0

    async def slow() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    pipeline = Pipeline(Timeout(0.05), Retry(attempts=5), Timeout(0.02, per_attempt=True))
    with pytest.raises(Exception) as info:
        await pipeline.call(slow)
    assert isinstance(info.value, TimeoutError) or isinstance(info.value.__cause__, TimeoutError)
    assert attempts <= 3


async def test_decorator_keeps_the_signature() -> None:
    pipeline = Pipeline(Fallback(-1), Retry(attempts=2, wait_initial=0))

    @pipeline
    async def price(sku: str, *, currency: str = "EUR") -> int:
        """Look up a price."""
        if sku == "bad":
            raise ValueError(sku)
        return len(sku)

    assert price.__name__ == "price"
    assert list(inspect.signature(price).parameters) == ["sku", "currency"]
    assert await price("abc", currency="USD") == 3
    assert await price("bad") == -1
