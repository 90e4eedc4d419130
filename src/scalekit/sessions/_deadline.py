"""Cheap per-call deadlines: one watchdog timer per store instead of ``asyncio.timeout``.

``asyncio.timeout()`` pushes and cancels a timer handle on the loop's heap for every call (about
8 µs a call here, two calls per read+write request). Instead each call records its deadline in a
dict, and one timer, armed only while calls are in flight, wakes a few times per timeout period
and cancels the tasks past their deadline. A call therefore ends at most ``timeout * 1.25``
(plus one loop iteration) after it started: bounded, never a hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["Watchdog"]

T = TypeVar("T")

_current_task = asyncio.current_task
_get_loop = asyncio.get_running_loop


class Watchdog:
    """Runs awaitables within a deadline; raises :class:`TimeoutError` when one runs out."""

    __slots__ = ("_deadlines", "_expired", "_interval", "_loop", "_tick", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._interval = max(0.002, timeout / 4)
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._expired: dict[asyncio.Task[Any], int] = {}  # task -> cancel() calls we made
        self._tick: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, call: Awaitable[T]) -> T:
        """Await ``call`` within ``timeout`` seconds (a nested call keeps the outer deadline).

        Raises:
            TimeoutError: the call did not finish in time (it was cancelled).
        """
        loop = _get_loop()
        task = _current_task(loop)
        deadlines = self._deadlines
        if task is None or task in deadlines:
            return await call
        if self._loop is not loop:  # first use, or a new event loop (the old one is gone)
            self._loop, self._tick = loop, None
            deadlines.clear()
            self._expired.clear()
        deadlines[task] = loop.time() + self.timeout
        if self._tick is None:
            self._tick = loop.call_at(loop.time() + self._interval, self._check, loop)
        base = task.cancelling()
        try:
            return await call
        except asyncio.CancelledError:
            ours = self._expired.pop(task, 0)
            for _ in range(ours):
                task.uncancel()
            if ours and task.cancelling() <= base:  # ours alone, not also the caller's
                raise TimeoutError(f"no answer within {self.timeout}s") from None
            raise
        finally:
            del deadlines[task]
            ours = self._expired.pop(task, 0)  # cancelled by us, but the call swallowed it
            for _ in range(ours):
                task.uncancel()

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            now = loop.time()
            expired = self._expired
            for task, deadline in list(self._deadlines.items()):
                if deadline > now:
                    continue
                # a call that swallowed our cancellation is cancelled again every 4 ticks
                count = expired.get(task, 0)
                if count == 0 or now >= deadline + 4 * self._interval * count:
                    expired[task] = count + 1
                    task.cancel()
        finally:
            if self._deadlines:
                self._tick = loop.call_at(loop.time() + self._interval, self._check, loop)
            else:
                self._tick = None
