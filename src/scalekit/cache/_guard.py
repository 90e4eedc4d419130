"""Bounded concurrency and cheap deadlines for backend calls.

``asyncio.timeout()`` costs about 7 µs per call here (a timer handle pushed and cancelled on the
loop's heap), over 10 % of a Redis round trip. Instead one watchdog timer per backend wakes a few
times per timeout period while calls are in flight and cancels the tasks past their deadline;
each call only records its deadline in a dict. The connection bound is a counter with a FIFO of
waiters, so callers over the limit wait (within their deadline) instead of making the driver's
pool raise ``MaxConnectionsError``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["Guard"]

T = TypeVar("T")

_current_task = asyncio.current_task
_get_loop = asyncio.get_running_loop


class Guard:
    """Run coroutines with at most ``limit`` in flight, each within ``timeout`` seconds.

    A call that runs out of time raises :class:`TimeoutError` (whether it was waiting for a slot
    or for the server); the coroutine it ran is cancelled, as with ``asyncio.timeout``.
    """

    __slots__ = ("_deadlines", "_expired", "_interval", "_tick", "_waiters", "active", "limit")

    def __init__(self, *, limit: int, timeout: float) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: dict[asyncio.Task[Any], int] = {}  # task -> cancel() calls we made
        self._tick: asyncio.TimerHandle | None = None
        self._interval = max(0.002, timeout / 8)

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Await ``coro`` within ``timeout`` seconds, holding one of the ``limit`` slots.

        Raises:
            TimeoutError: no slot freed up, or the call did not finish, in time.
        """
        loop = _get_loop()
        task = _current_task(loop)
        deadlines = self._deadlines
        if task is None or task in deadlines:  # nested use: the outer deadline applies
            return await coro
        deadlines[task] = loop.time() + timeout
        if self._tick is None:
            self._tick = loop.call_later(self._interval, self._check, loop)
        try:
            if self.active < self.limit and not self._waiters:
                self.active += 1
            else:
                try:
                    await self._wait(loop)
                except BaseException:
                    coro.close()
                    raise
            try:
                return await coro
            finally:
                self._release()
        except asyncio.CancelledError:
            ours = self._expired.pop(task, 0)
            if ours:
                for _ in range(ours):
                    task.uncancel()
                raise TimeoutError(
                    f"the cache backend did not answer within {timeout:.3f}s"
                ) from None
            raise
        finally:
            del deadlines[task]
            ours = self._expired.pop(task, 0)  # cancelled by us, but the call swallowed it
            for _ in range(ours):
                task.uncancel()

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def _release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand our slot over; ``active`` is unchanged
                return
        self.active -= 1

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            now = loop.time()
            late = [t for t, d in self._deadlines.items() if d <= now]
            expired = self._expired
            for task in late:
                # a call that swallowed our cancellation is cancelled again, every 4 ticks
                # (not every tick, so its own cleanup after the first one is not interrupted)
                count = expired.get(task, 0)
                if count == 0 or now >= self._deadlines[task] + 4 * self._interval * count:
                    expired[task] = count + 1
                    task.cancel()
        finally:
            if self._deadlines:
                self._tick = loop.call_later(self._interval, self._check, loop)
            else:
                self._tick = None

    def close(self) -> None:
        """Stop the watchdog timer."""
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
