from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from scalekit.errors import (
    CircuitOpenError,
    ConfigurationError,
    RetryBudgetExhaustedError,
    RetryError,
)
from scalekit.resilience import Retry, RetryBudget, Timeout
from scalekit.testing import ManualClock


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``"ok"``."""

    def __init__(self, failures: int, exc: BaseException | None = None) -> None:
        self.failures = failures
        self.exc = exc or ConnectionError("reset")
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc
        return "ok"


class RecordingClock(ManualClock):
    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.set(self.monotonic() + seconds)


async def test_retries_until_success_with_full_jitter_bounds() -> None:
    clock = RecordingClock()
    flaky = Flaky(3)
    retry = Retry(attempts=4, wait_initial=0.1, wait_max=0.3, clock=clock, rng=random.Random(1))
    assert await retry.call(flaky) == "ok"
    assert flaky.calls == 4
    caps = [0.1, 0.2, 0.3]
    assert len(clock.sleeps) == 3
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))


async def test_gives_up_with_retry_error_carrying_the_last_exception() -> None:
    clock = RecordingClock()
    flaky = Flaky(10)
    with pytest.raises(RetryError) as info:
        await Retry(attempts=3, clock=clock).call(flaky)
    assert info.value.attempts == 3
    assert isinstance(info.value.last, ConnectionError)
    assert info.value.__cause__ is info.value.last
    assert flaky.calls == 3


async def test_non_retryable_exceptions_pass_through_at_once() -> None:
    flaky = Flaky(5, KeyError("x"))
    with pytest.raises(KeyError):
        await Retry(attempts=5, on=ConnectionError, clock=RecordingClock()).call(flaky)
    assert flaky.calls == 1


async def test_predicate_chooses_what_is_retried() -> None:
    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            self.status = status

    retry = Retry(
        attempts=3,
        on=lambda e: isinstance(e, HTTPError) and e.status >= 500,
        clock=RecordingClock(),
    )
    five = Flaky(1, HTTPError(503))
    assert await retry.call(five) == "ok"
    four = Flaky(1, HTTPError(404))
    with pytest.raises(HTTPError):
        await retry.call(four)
    assert four.calls == 1


async def test_cancellation_is_never_retried() -> None:
    flaky = Flaky(5, asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await Retry(attempts=5, on=BaseException, clock=RecordingClock()).call(flaky)
    assert flaky.calls == 1


async def test_circuit_open_is_not_retried_blindly() -> None:
    flaky = Flaky(5, CircuitOpenError("svc", 0.5))
    with pytest.raises(CircuitOpenError):
        await Retry(attempts=5, clock=RecordingClock()).call(flaky)
    assert flaky.calls == 1


async def test_circuit_open_retry_opt_in_waits_its_retry_after() -> None:
    clock = RecordingClock()
    flaky = Flaky(1, CircuitOpenError("svc", 2.5))
    retry = Retry(attempts=3, retry_open_circuit=True, wait_initial=0.01, clock=clock)
    assert await retry.call(flaky) == "ok"
    assert clock.sleeps[0] >= 2.5


async def test_retry_after_hint_is_honoured_and_capped() -> None:
    class Throttled(Exception):
        def __init__(self, retry_after: float) -> None:
            self.retry_after = retry_after

    clock = RecordingClock()
    retry = Retry(attempts=3, wait_initial=0.01, max_retry_after=5.0, clock=clock)
    assert await retry.call(Flaky(1, Throttled(4.0))) == "ok"
    assert clock.sleeps == [4.0]
    long = Flaky(1, Throttled(60.0))
    with pytest.raises(RetryError):
        await retry.call(long)
    assert long.calls == 1


async def test_custom_retry_after_extractor() -> None:
    clock = RecordingClock()
    retry = Retry(attempts=2, wait_initial=0.01, retry_after=lambda e: 1.5, clock=clock)
    assert await retry.call(Flaky(1)) == "ok"
    assert clock.sleeps == [1.5]


async def test_stops_when_the_deadline_is_shorter_than_the_next_wait() -> None:
    clock = ManualClock()
    flaky = Flaky(10)
    retry = Retry(attempts=10, wait_initial=0.001, retry_after=lambda e: 3.0, clock=clock)

    async def under_deadline() -> str:
        return await retry.call(flaky)

    task = asyncio.create_task(Timeout(10, clock=clock).call(under_deadline))
    while not task.done():
        await clock.advance(0.5)
    with pytest.raises(RetryError):
        await task
    # waits of ~3s: attempts at t=0, 3, 6 and 9; at t=9 only 1s remains, so no 5th attempt
    assert flaky.calls == 4
    assert clock.monotonic() < 10


async def test_max_elapsed_stops_retrying() -> None:
    clock = RecordingClock()
    flaky = Flaky(10)
    retry = Retry(attempts=10, max_elapsed=5.0, retry_after=lambda e: 2.0, clock=clock)
    with pytest.raises(RetryError):
        await retry.call(flaky)
    assert flaky.calls == 3


async def test_retry_budget_caps_retries_to_a_share_of_calls() -> None:
    clock = RecordingClock()
    budget = RetryBudget(ratio=0.1, min_retries_per_second=0, ttl=10, clock=clock)
    retry = Retry(attempts=3, wait_initial=0, budget=budget, clock=clock)

    async def healthy() -> str:
        return "ok"

    for _ in range(20):
        await retry.call(healthy)
    assert budget.available == pytest.approx(2.0)
    outcomes: list[Any] = []
    for _ in range(5):
        try:
            await retry.call(Flaky(10))
        except Exception as exc:
            outcomes.append(type(exc))
    # 25 calls earn 2.5 retries: 2 retries happen, then every failure is refused a retry
    assert outcomes.count(RetryBudgetExhaustedError) == 4
    assert outcomes.count(RetryError) == 1


async def test_retry_budget_forgets_old_calls() -> None:
    clock = ManualClock()
    budget = RetryBudget(ratio=1.0, min_retries_per_second=0, ttl=2, clock=clock)
    for _ in range(5):
        budget.record_call()
    assert budget.try_retry()
    await clock.advance(3)
    assert not budget.try_retry()


async def test_decorator_keeps_name() -> None:
    retry = Retry(attempts=2, clock=RecordingClock())
    flaky = Flaky(1)

    @retry
    async def fetch() -> str:
        return await flaky()

    assert fetch.__name__ == "fetch"
    assert await fetch() == "ok"


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"wait_initial": -1}, {"max_elapsed": 0}, {"on": 5}]
)
def test_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Retry(**kwargs)


@pytest.mark.parametrize("kwargs", [{"ratio": -1}, {"ttl": 0}, {"min_retries_per_second": -1}])
def test_bad_budget(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        RetryBudget(**kwargs)
