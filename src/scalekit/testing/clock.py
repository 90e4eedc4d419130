"""A clock that moves only when the test says so."""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["ManualClock"]


class ManualClock:
    """A :class:`scalekit.clock.Clock` whose time moves only through :meth:`advance`.

    ``await clock.sleep(s)`` suspends until a test advances the clock past the wake-up time, so
    time-dependent logic is tested without real waiting and without races::

        clock = ManualClock()
        breaker = CircuitBreaker("payments", clock=clock, open_duration=30.0)
        ...
        await clock.advance(30.0)  # the breaker is now half-open

    Args:
        start: the initial monotonic reading.
        wall_start: the initial wall-clock reading (seconds since the epoch).
    """

    def __init__(self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        """The current reading."""
        return self._now

    def time(self) -> float:
        """The current wall-clock reading; moves with :meth:`advance`."""
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        """Suspend until the clock is advanced by at least ``seconds`` (0 just yields)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many coroutines are waiting in :meth:`sleep` (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def set(self, now: float) -> None:
        """Jump to ``now`` without waking sleepers (use :meth:`advance` to wake them)."""
        self._now = float(now)

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, waking every sleeper whose time has come, in order.

        After each wake-up the event loop runs once so the woken coroutines can proceed (and
        schedule new sleeps that may also fall inside the advanced interval).
        """
        if seconds < 0:
            raise ValueError("a clock cannot go backwards: advance() takes seconds >= 0")
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not future.done():
                future.set_result(None)
                for _ in range(3):
                    await asyncio.sleep(0)
        self._now = target
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now!r}, sleepers={self.sleepers})"
