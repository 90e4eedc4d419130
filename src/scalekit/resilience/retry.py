"""Retries built on tenacity: full jitter, a retry budget, Retry-After hints and deadlines.

What scalekit adds to tenacity's engine:

* **Full jitter** (``sleep = uniform(0, min(max_wait, base * 2**n))``, the AWS recommendation).
* **A retry budget** (:class:`RetryBudget`): retries are limited to a share of recent calls, as
  Finagle and gRPC do, so a struggling dependency sees at most ``1 + ratio`` times its normal
  load instead of ``max_attempts`` times.
* **Retry-After**: an exception carrying ``retry_after`` seconds (or whatever your
  ``retry_after=`` callable extracts) sets the wait, capped by ``max_retry_after``.
* **Deadline-aware**: no retry starts when the enclosing :class:`~scalekit.resilience.Timeout`
  deadline is shorter than the wait before it.
* **Never retried**: ``CancelledError``, ``KeyboardInterrupt``, ``SystemExit`` (tenacity itself
  would, jd/tenacity#529), and :class:`~scalekit.errors.CircuitOpenError` unless you opt in with
  ``retry_open_circuit=True`` (then its ``retry_after`` is honoured).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import tenacity
from opentelemetry.trace import get_current_span

from scalekit._telemetry import get_logger
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import (
    CircuitOpenError,
    ConfigurationError,
    RetryBudgetExhaustedError,
    RetryError,
)
from scalekit.resilience._types import NEVER_COUNTED, ExceptionMatcher, matcher
from scalekit.resilience.timeout import remaining

__all__ = ["Retry", "RetryBudget"]

P = ParamSpec("P")
T = TypeVar("T")

_log = get_logger("scalekit.resilience")


class RetryBudget:
    """Allow retries only up to ``ratio`` of the calls seen in the last ``ttl`` seconds.

    Share one budget between the :class:`Retry` policies that call the same dependency. A reserve
    of ``min_retries_per_second * ttl`` retries keeps low-traffic callers able to retry.

    Args:
        ratio: retries allowed per call (0.2 = a retry for one call in five).
        min_retries_per_second: the floor that is always allowed.
        ttl: seconds a call or a retry is remembered.
        clock: the time source.

    Raises:
        ConfigurationError: an argument is out of range.
    """

    __slots__ = (
        "_buckets",
        "_calls",
        "_current",
        "_retries",
        "clock",
        "min_retries",
        "ratio",
        "ttl",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_retries_per_second: float = 10.0,
        ttl: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1000:
            raise ConfigurationError(f"ratio={ratio!r}: must be >= 0")
        if not isinstance(min_retries_per_second, (int, float)) or min_retries_per_second < 0:
            raise ConfigurationError(
                f"min_retries_per_second={min_retries_per_second!r}: must be >= 0"
            )
        if not isinstance(ttl, (int, float)) or not 1 <= ttl <= 3600:
            raise ConfigurationError(f"ttl={ttl!r}: must be between 1 and 3600 seconds")
        self.ratio = float(ratio)
        self.min_retries = float(min_retries_per_second) * float(ttl)
        self.ttl = float(ttl)
        self.clock = clock
        n = math.ceil(ttl)
        self._buckets: list[list[int]] = [[0, 0] for _ in range(n)]  # [calls, retries] per second
        self._current = int(clock.monotonic())
        self._calls = 0
        self._retries = 0

    def _advance(self) -> list[int]:
        now = int(self.clock.monotonic())
        n = len(self._buckets)
        if now > self._current:
            for second in range(max(self._current + 1, now - n + 1), now + 1):
                bucket = self._buckets[second % n]
                self._calls -= bucket[0]
                self._retries -= bucket[1]
                bucket[0] = bucket[1] = 0
            self._current = now
        return self._buckets[self._current % n]

    def record_call(self) -> None:
        """Count a first attempt (it earns ``ratio`` retries)."""
        self._advance()[0] += 1
        self._calls += 1

    def try_retry(self) -> bool:
        """Spend one retry if the budget allows it; ``False`` means do not retry."""
        bucket = self._advance()
        if self._retries + 1 > self.ratio * self._calls + self.min_retries:
            return False
        bucket[1] += 1
        self._retries += 1
        return True

    @property
    def available(self) -> float:
        """Retries the budget would allow right now."""
        self._advance()
        return max(0.0, self.ratio * self._calls + self.min_retries - self._retries)

    def __repr__(self) -> str:
        return f"RetryBudget(ratio={self.ratio}, available={self.available:.1f})"


def _default_retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


class Retry:
    """Retry a failing call with exponential backoff and full jitter, within limits.

    Args:
        attempts: total attempts, the first included (``1`` disables retrying).
        on: which exceptions are retried (types or a predicate). Default: every ``Exception``
            except :class:`~scalekit.errors.CircuitOpenError`.
        wait_initial: the backoff base in seconds (the first wait is uniform in ``[0, base]``).
        wait_max: the cap of one backoff wait.
        max_elapsed: stop retrying once this many seconds have passed since the first attempt.
        retry_after: extracts a server's hint (seconds) from an exception; by default the
            exception's ``retry_after`` attribute. The wait becomes ``max(hint, backoff)``.
        max_retry_after: a hint longer than this is not waited for: the call fails instead.
        budget: a shared :class:`RetryBudget`; when it is exhausted the call fails with
            :class:`~scalekit.errors.RetryBudgetExhaustedError`.
        retry_open_circuit: retry :class:`~scalekit.errors.CircuitOpenError` after its
            ``retry_after`` (off by default: an open breaker means "stop calling").
        clock: the time source (its ``sleep`` is used between attempts).
        rng: the random source of the jitter (seed it in tests).

    Raises:
        ConfigurationError: an argument is out of range.
    """

    def __init__(
        self,
        *,
        attempts: int = 3,
        on: ExceptionMatcher = Exception,
        wait_initial: float = 0.1,
        wait_max: float = 10.0,
        max_elapsed: float | None = None,
        retry_after: Callable[[BaseException], float | None] | None = _default_retry_after,
        max_retry_after: float = 30.0,
        budget: RetryBudget | None = None,
        retry_open_circuit: bool = False,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ConfigurationError(f"attempts={attempts!r}: must be an int >= 1")
        for arg, value in (("wait_initial", wait_initial), ("wait_max", wait_max)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(f"{arg}={value!r}: must be seconds >= 0")
        if max_elapsed is not None and not max_elapsed > 0:
            raise ConfigurationError(f"max_elapsed={max_elapsed!r}: must be seconds > 0")
        self.attempts = attempts
        self.wait_initial = float(wait_initial)
        self.wait_max = float(wait_max)
        self.max_elapsed = max_elapsed
        self.max_retry_after = float(max_retry_after)
        self.budget = budget
        self.retry_open_circuit = retry_open_circuit
        self.clock = clock
        self._on = matcher(on, "on") or (lambda exc: False)
        self._retry_after = retry_after
        self._rng = rng or random.Random()

    # -- the decisions, as tenacity hooks ------------------------------------------------------

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, NEVER_COUNTED):
            return False
        if isinstance(exc, CircuitOpenError):
            return self.retry_open_circuit
        return bool(self._on(exc))

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        cap = min(self.wait_max, self.wait_initial * 2 ** (state.attempt_number - 1))
        wait = self._rng.uniform(0.0, cap)  # full jitter
        if exc is not None and self._retry_after is not None:
            hint = self._retry_after(exc)
            if hint is not None:
                wait = max(wait, hint)
        return wait

    def _stop(self, started: float, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.attempts:
            return True
        wait = state.upcoming_sleep
        exc = state.outcome.exception() if state.outcome is not None else None
        if exc is not None and self._retry_after is not None:
            hint = self._retry_after(exc)
            if hint is not None and hint > self.max_retry_after:
                return True
        if (
            self.max_elapsed is not None
            and self.clock.monotonic() - started + wait > self.max_elapsed
        ):
            return True
        left = remaining(self.clock)
        if left is not None and wait >= left:
            return True  # the deadline would end during the wait or right after it
        if self.budget is not None and not self.budget.try_retry():
            state.retry_object.statistics["budget_exhausted"] = True
            return True
        return False

    # -- calling -------------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)``, retrying as configured.

        Raises:
            RetryError: every allowed attempt failed with a retryable exception (``last`` and
                ``__cause__`` hold the last one).
            RetryBudgetExhaustedError: a retry was needed but the budget refused it.
            Exception: a non-retryable exception from ``fn`` passes through unchanged.
        """
        if self.budget is not None:
            self.budget.record_call()
        retrying = tenacity.AsyncRetrying(
            stop=functools.partial(self._stop, self.clock.monotonic()),
            wait=self._wait,
            retry=tenacity.retry_if_exception(self._retryable),
            sleep=self.clock.sleep,
            reraise=False,
            before_sleep=self._before_sleep,
        )
        try:
            return await retrying(fn, *args, **kwargs)
        except tenacity.RetryError as exc:
            last_attempt = exc.last_attempt
            last = last_attempt.exception()
            attempts = last_attempt.attempt_number
            if retrying.statistics.get("budget_exhausted"):
                raise RetryBudgetExhaustedError(
                    f"attempt {attempts} failed and the retry budget is spent (retries are capped "
                    "at a share of recent calls so they cannot multiply an outage); the call "
                    f"was not retried. Last error: {last!r}"
                ) from last
            raise RetryError(
                f"all {attempts} attempt(s) failed or time ran out; last error: {last!r}. "
                "Check the dependency, or raise attempts/deadline.",
                attempts=attempts,
                last=last,
            ) from last

    def _before_sleep(self, state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        span = get_current_span()
        if span.is_recording():
            span.add_event(
                "scalekit.retry",
                {
                    "scalekit.retry.attempt": state.attempt_number,
                    "scalekit.retry.wait": state.upcoming_sleep,
                    "error.type": type(exc).__qualname__,
                },
            )
        _log.debug(
            "retrying after %s (attempt %d, waiting %.3fs)",
            type(exc).__name__,
            state.attempt_number,
            state.upcoming_sleep,
        )

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function so every call is retried as configured."""

        @functools.wraps(fn)
        async def retried(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return retried

    def __repr__(self) -> str:
        return f"Retry(attempts={self.attempts}, wait_initial={self.wait_initial})"
