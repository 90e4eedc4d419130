"""A bulkhead: at most N concurrent calls, a bounded queue, and a maximum wait.

A slow dependency then ties up at most ``max_concurrent`` of your tasks (and ``max_queue``
waiters), instead of every task of the service. Slots are handed directly to the oldest waiter
on release (FIFO, no barging), and a waiter cancelled at the moment it was granted a slot passes
the slot on, so no slot is ever lost.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from scalekit.errors import BulkheadFullError, ConfigurationError

__all__ = ["Bulkhead", "BulkheadStats"]

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BulkheadStats:
    """Counters of a :class:`Bulkhead`.

    Attributes:
        active: calls running now.
        waiting: calls queued for a slot now.
        rejected: calls refused since construction (queue full or max wait passed).
    """

    active: int
    waiting: int
    rejected: int


class Bulkhead:
    """Limit concurrent calls to a dependency.

    Args:
        max_concurrent: calls allowed to run at once.
        max_queue: calls allowed to wait for a slot (0 rejects at once when full).
        max_wait: seconds a queued call waits before it is rejected (``None``: no limit other
            than an enclosing deadline).
        name: shown in errors.

    Raises:
        ConfigurationError: an argument is out of range.
    """

    __slots__ = (
        "_active",
        "_rejected",
        "_waiters",
        "max_concurrent",
        "max_queue",
        "max_wait",
        "name",
    )

    def __init__(
        self,
        max_concurrent: int,
        *,
        max_queue: int = 0,
        max_wait: float | None = None,
        name: str = "bulkhead",
    ) -> None:
        if (
            not isinstance(max_concurrent, int)
            or isinstance(max_concurrent, bool)
            or max_concurrent < 1
        ):
            raise ConfigurationError(f"max_concurrent={max_concurrent!r}: must be an int >= 1")
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ConfigurationError(f"max_queue={max_queue!r}: must be an int >= 0")
        if max_wait is not None and not (isinstance(max_wait, (int, float)) and max_wait >= 0):
            raise ConfigurationError(f"max_wait={max_wait!r}: must be seconds >= 0 or None")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.name = name
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._rejected = 0

    def stats(self) -> BulkheadStats:
        """The current counters."""
        waiting = sum(1 for f in self._waiters if not f.done())
        return BulkheadStats(self._active, waiting, self._rejected)

    def _full(self, why: str) -> BulkheadFullError:
        self._rejected += 1
        return BulkheadFullError(
            f"bulkhead {self.name!r} is full ({self.max_concurrent} running, {why}); the call "
            "was not made. Serve a fallback, or raise max_concurrent/max_queue if the "
            "dependency can take more."
        )

    async def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed.

        Raises:
            BulkheadFullError: no slot and the queue is full, or ``max_wait`` passed.
        """
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            return
        if len(self._waiters) >= self.max_queue:
            raise self._full(f"{len(self._waiters)} waiting")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            if self.max_wait is None:
                await future
            else:
                async with asyncio.timeout(self.max_wait):
                    await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                # we were granted the slot as we were cancelled: hand it on
                self.release()
            else:
                future.cancel()
                with suppress(ValueError):
                    self._waiters.remove(future)
            if isinstance(exc, TimeoutError):
                raise self._full(f"waited {self.max_wait}s in the queue") from None
            raise

    def release(self) -> None:
        """Give a slot back (handed to the oldest waiter, if any)."""
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes over; _active is unchanged
                return
        self._active -= 1

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with bulkhead.slot():`` hold a slot for a block of code."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``await fn(*args, **kwargs)`` in a slot.

        Raises:
            BulkheadFullError: no slot within the limits.
        """
        await self.acquire()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.release()

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """Decorate an async function so its calls go through the bulkhead."""

        @functools.wraps(fn)
        async def limited(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return limited

    def __repr__(self) -> str:
        return f"Bulkhead({self.max_concurrent}, max_queue={self.max_queue}, active={self._active})"
