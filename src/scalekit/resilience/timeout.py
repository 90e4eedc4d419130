"""Timeouts with one deadline budget shared by nested calls.

``Timeout(2.0)`` runs a call under :func:`asyncio.timeout` and publishes its deadline in a
context variable; a nested ``Timeout(5.0)`` inside it still ends when the outer two seconds are
up (the tighter deadline wins), and :class:`~scalekit.resilience.Retry` reads :func:`remaining`
to avoid a retry that cannot finish in time. The deadline is an instant on the monotonic clock
within this process; to pass a budget to another service, send :func:`remaining` (as gRPC does
with ``grpc-timeout``), never the instant.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

from scalekit.clock import SYSTEM_CLOCK, Clock, SystemClock
from scalekit.errors import ConfigurationError, DeadlineExceededError

__all__ = ["Timeout", "deadline", "remaining"]

P = ParamSpec("P")
T = TypeVar("T")

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "scalekit_deadline", default=None
)


def remaining(clock: Clock = SYSTEM_CLOCK) -> float | None:
    """Seconds left before the innermost enclosing deadline, or ``None`` without one.

    Never negative: an expired deadline gives ``0.0``.
    """
    until = _DEADLINE.get()
    if until is None:
        return None
    return max(0.0, until - clock.monotonic())


@asynccontextmanager
async def deadline(seconds: float, *, clock: Clock = SYSTEM_CLOCK) -> AsyncIterator[None]:
    """``async with deadline(2.0):`` the same as ``Timeout(2.0)`` around a block of code.

    Raises:
        DeadlineExceededError: the block (or an enclosing deadline) ran out of time.
    """
    timeout = Timeout(seconds, clock=clock)
    async with timeout._scope():
        yield


class Timeout:
    """Give a call at most ``seconds``, or less when an enclosing deadline ends sooner.

    Args:
        seconds: the budget of one call.
        per_attempt: in a :class:`~scalekit.resilience.Pipeline`, place this timeout inside the
            retry and the breaker (each attempt gets ``seconds``, and a timed-out attempt counts
            as a breaker failure) instead of outside them (one budget for all attempts).
        clock: the time source; with a non-system clock (tests) the timeout fires when that
            clock is advanced past the deadline.

    Raises:
        ConfigurationError: ``seconds`` is not a positive finite number.
    """

    __slots__ = ("clock", "per_attempt", "seconds")

    def __init__(
        self, seconds: float, *, per_attempt: bool = False, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        if (
            not isinstance(seconds, (int, float))
            or isinstance(seconds, bool)
            or not seconds > 0
            or not math.isfinite(seconds)
        ):
            raise ConfigurationError(f"Timeout({seconds!r}): seconds must be a finite number > 0")
        self.seconds = float(seconds)
        self.per_attempt = per_attempt
        self.clock = clock

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` within the deadline.

        Raises:
            DeadlineExceededError: the call did not finish in time (also a ``TimeoutError``).
        """
        async with self._scope():
            return await fn(*args, **kwargs)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function with this timeout."""
        import functools

        @functools.wraps(fn)
        async def timed(*args: P.args, **kwargs: P.kwargs) -> T:
            async with self._scope():
                return await fn(*args, **kwargs)

        return timed

    @asynccontextmanager
    async def _scope(self) -> AsyncIterator[None]:
        clock = self.clock
        now = clock.monotonic()
        outer = _DEADLINE.get()
        until = now + self.seconds
        inherited = outer is not None and outer < until
        if inherited:
            assert outer is not None
            until = outer
        budget = until - now
        if budget <= 0:
            raise DeadlineExceededError(
                "the deadline had already passed before the call started; it was not made. "
                "Give the outer Timeout more time or do less work under it."
            )
        token = _DEADLINE.set(until)
        loop = asyncio.get_running_loop()
        watcher: asyncio.Task[None] | None = None
        try:
            if isinstance(clock, SystemClock):
                cm = asyncio.timeout(budget)
            else:
                cm = asyncio.timeout(None)
            try:
                async with cm:
                    if not isinstance(clock, SystemClock):

                        async def fire() -> None:
                            await clock.sleep(budget)
                            cm.reschedule(loop.time())

                        watcher = loop.create_task(fire())
                    yield
            except TimeoutError as exc:
                if cm.expired():
                    what = "the enclosing deadline" if inherited else f"Timeout({self.seconds})"
                    raise DeadlineExceededError(
                        f"the call ran out of time ({what}, {budget:.3f}s budget) and was "
                        "cancelled. Raise the timeout, speed up the dependency, or serve a "
                        "fallback."
                    ) from exc
                raise
        finally:
            if watcher is not None:
                watcher.cancel()
            _DEADLINE.reset(token)

    def __repr__(self) -> str:
        return f"Timeout({self.seconds}, per_attempt={self.per_attempt})"
