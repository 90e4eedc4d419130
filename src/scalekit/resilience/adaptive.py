"""An adaptive concurrency limit (AIMD on latency and errors) that sheds load early.

A fixed bulkhead needs a number nobody knows; the right concurrency moves with the dependency's
health. :class:`AdaptiveLimit` discovers it the way TCP congestion control does (and Netflix's
``concurrency-limits`` AIMD limiter):

* every call that finishes **in time** (latency at most ``latency_threshold``) and without a
  dropped error, while the limit was at least half used, raises the limit by 1 (additive
  increase);
* a call that is **too slow** or fails with a ``drop_on`` exception multiplies the limit by
  ``backoff`` (multiplicative decrease, at most once per ``latency_threshold`` so one burst of
  slow calls cuts once), never below ``min_limit``;
* a call arriving when ``in_flight >= limit`` is **shed** at once with
  :class:`~scalekit.errors.LoadShedError`: queueing it would only add latency to an already
  saturated service. :class:`AdaptiveLimitMiddleware` turns that into ``503`` + ``Retry-After``.

AIMD was chosen over Vegas/Gradient2 because it needs no estimate of the no-load latency, which
is unstable under the bursty traffic of most web services; its cost is a sawtooth around the
best limit, bounded by ``backoff``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from scalekit._telemetry import get_logger
from scalekit.clock import SYSTEM_CLOCK, Clock, SystemClock
from scalekit.errors import ConfigurationError, LoadShedError
from scalekit.resilience._types import NEVER_COUNTED, ExceptionMatcher, matcher

__all__ = ["AdaptiveLimit", "AdaptiveLimitStats"]

P = ParamSpec("P")
T = TypeVar("T")

_log = get_logger("scalekit.resilience")


@dataclass(frozen=True, slots=True)
class AdaptiveLimitStats:
    """Counters of an :class:`AdaptiveLimit`.

    Attributes:
        limit: the current concurrency limit.
        in_flight: calls running now.
        shed: calls shed since construction.
        drops: slow or failed calls since construction (each may have cut the limit).
    """

    limit: int
    in_flight: int
    shed: int
    drops: int


class AdaptiveLimit:
    """A concurrency limit that grows while latency is good and shrinks when it is not.

    Args:
        latency_threshold: seconds above which a call counts as a congestion signal.
        initial_limit: the starting limit.
        min_limit: the limit never goes below this.
        max_limit: the limit never goes above this.
        backoff: the factor applied on a congestion signal (0 < backoff < 1).
        drop_on: exceptions that count as a congestion signal (e.g. ``TimeoutError``).
        retry_after: seconds suggested to shed callers (``Retry-After``).
        name: shown in errors and logs.
        clock: the time source.

    Raises:
        ConfigurationError: an argument is out of range.
    """

    def __init__(
        self,
        *,
        latency_threshold: float,
        initial_limit: int = 20,
        min_limit: int = 1,
        max_limit: int = 1000,
        backoff: float = 0.9,
        drop_on: ExceptionMatcher = TimeoutError,
        retry_after: float = 1.0,
        name: str = "adaptive",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(latency_threshold, (int, float)) or not latency_threshold > 0:
            raise ConfigurationError(f"latency_threshold={latency_threshold!r}: must be > 0")
        if not (isinstance(min_limit, int) and min_limit >= 1):
            raise ConfigurationError(f"min_limit={min_limit!r}: must be an int >= 1")
        if not (isinstance(max_limit, int) and max_limit >= min_limit):
            raise ConfigurationError(f"max_limit={max_limit!r}: must be an int >= min_limit")
        if not (isinstance(initial_limit, int) and min_limit <= initial_limit <= max_limit):
            raise ConfigurationError(
                f"initial_limit={initial_limit!r}: must be an int in [min_limit, max_limit]"
            )
        if not (isinstance(backoff, float) and 0 < backoff < 1):
            raise ConfigurationError(f"backoff={backoff!r}: must be a float in (0, 1)")
        if not (isinstance(retry_after, (int, float)) and retry_after >= 0):
            raise ConfigurationError(f"retry_after={retry_after!r}: must be seconds >= 0")
        self.latency_threshold = float(latency_threshold)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff = backoff
        self.retry_after = float(retry_after)
        self.name = name
        self.clock = clock
        self._now: Callable[[], float] = (
            time.monotonic if isinstance(clock, SystemClock) else clock.monotonic
        )
        self._drop_on = matcher(drop_on, "drop_on") or (lambda exc: False)
        self._limit = float(initial_limit)
        self._in_flight = 0
        self._shed = 0
        self._drops = 0
        self._last_cut = -math.inf

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return int(self._limit)

    @property
    def in_flight(self) -> int:
        """Calls running now."""
        return self._in_flight

    def stats(self) -> AdaptiveLimitStats:
        """The current counters."""
        return AdaptiveLimitStats(int(self._limit), self._in_flight, self._shed, self._drops)

    def try_acquire(self) -> bool:
        """Take a slot if the limit allows it, without waiting (``False``: shed the call)."""
        if self._in_flight >= int(self._limit):
            self._shed += 1
            return False
        self._in_flight += 1
        return True

    def release(self, started: float, *, dropped: bool = False) -> None:
        """Return a slot taken with :meth:`try_acquire` and learn from the call.

        Args:
            started: the :meth:`now` reading taken when the call started.
            dropped: the call failed in a way that signals congestion.
        """
        in_flight = self._in_flight
        self._in_flight = in_flight - 1
        now = self._now()
        if dropped or now - started > self.latency_threshold:
            self._drops += 1
            if now - self._last_cut >= self.latency_threshold:
                self._last_cut = now
                old = int(self._limit)
                self._limit = max(float(self.min_limit), self._limit * self.backoff)
                if int(self._limit) != old:
                    _log.debug("adaptive limit %r: %d -> %d", self.name, old, int(self._limit))
        elif in_flight * 2 >= self._limit:
            self._limit = min(float(self.max_limit), self._limit + 1.0)

    def now(self) -> float:
        """The clock reading to pass to :meth:`release`."""
        return self._now()

    def _shed_error(self) -> LoadShedError:
        return LoadShedError(
            f"adaptive limit {self.name!r} shed the call: {self._in_flight} calls in flight at a "
            f"limit of {int(self._limit)}. Retry after {self.retry_after:g}s; the limit grows "
            "back as latency recovers.",
            retry_after=self.retry_after,
        )

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with limit.slot():`` run a block under the limit.

        Raises:
            LoadShedError: the limit is reached.
        """
        if not self.try_acquire():
            raise self._shed_error()
        started = self._now()
        dropped = False
        try:
            yield
        except BaseException as exc:
            dropped = not isinstance(exc, NEVER_COUNTED) and bool(self._drop_on(exc))
            raise
        finally:
            self.release(started, dropped=dropped)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` under the limit.

        Raises:
            LoadShedError: the limit is reached; the call was not made.
        """
        if not self.try_acquire():
            raise self._shed_error()
        started = self._now()
        dropped = False
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            dropped = not isinstance(exc, NEVER_COUNTED) and bool(self._drop_on(exc))
            raise
        finally:
            self.release(started, dropped=dropped)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function so its calls go through the limit."""

        @functools.wraps(fn)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return limited

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit({self.name!r}, limit={int(self._limit)}, in_flight={self._in_flight})"
        )
