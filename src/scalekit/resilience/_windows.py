"""Sliding windows of call outcomes for the circuit breaker, all O(1) per recorded call.

Two shapes, as in Resilience4j:

* :class:`CountWindow`: the last ``size`` calls. Successes are only counted (one integer
  increment); non-success outcomes are kept in a deque with the call's sequence number and
  evicted when they fall out of the window. A healthy breaker therefore pays one increment per
  call, and a failing one amortised O(1).
* :class:`TimeWindow`: the calls of the last ``seconds``, in ``buckets`` equal time slices; a
  slice is cleared when time moves past it, so recording is O(1) amortised and memory is fixed.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from scalekit.errors import ConfigurationError

__all__ = ["CountWindow", "TimeWindow", "Window"]

# outcome bits
FAILURE = 1
SLOW = 2


@dataclass(frozen=True, slots=True)
class CountWindow:
    """Judge the breaker on the last ``size`` calls.

    Args:
        size: how many of the most recent calls the failure and slow-call rates cover.
    """

    size: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigurationError(f"CountWindow(size={self.size!r}): size must be an int >= 1")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Judge the breaker on the calls of the last ``seconds``.

    Args:
        seconds: the length of the window.
        buckets: how many slices the window is cut into; an outcome leaves the window at the
            granularity of one slice (``seconds / buckets``).
    """

    seconds: float = 60.0
    buckets: int = 20

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, (int, float)) or not self.seconds > 0:
            raise ConfigurationError(f"TimeWindow(seconds={self.seconds!r}): seconds must be > 0")
        if not math.isfinite(self.seconds):
            raise ConfigurationError("TimeWindow(seconds=...): seconds must be finite")
        if not isinstance(self.buckets, int) or isinstance(self.buckets, bool) or self.buckets < 1:
            raise ConfigurationError(
                f"TimeWindow(buckets={self.buckets!r}): buckets must be an int >= 1"
            )


Window = CountWindow | TimeWindow


class _CountRecorder:
    """The runtime state of a :class:`CountWindow` (not thread-safe; one event loop)."""

    __slots__ = ("bad", "base", "check_at", "failures", "minimum", "seq", "size", "slow")

    def __init__(self, size: int, minimum: int, seq: int = 0) -> None:
        self.size = size
        self.minimum = minimum
        self.seq = seq  # calls ever recorded (also the cumulative counter for metrics)
        self.base = seq  # seq when this window started
        # a success can only open the breaker at the call that brings the window to minimum
        # (otherwise it lowers the failure rate), so the hot path compares seq with this
        self.check_at = seq + minimum
        self.bad: deque[tuple[int, int]] = deque()  # (seq, outcome bits) of non-successes
        self.failures = 0
        self.slow = 0

    def fresh(self) -> _CountRecorder:
        """A new, empty window continuing this one's cumulative count."""
        return _CountRecorder(self.size, self.minimum, self.seq)

    def should_check(self) -> bool:
        return self.seq == self.check_at

    def record(self, outcome: int, now: float) -> None:
        self.seq += 1
        seq = self.seq
        if outcome:
            self.bad.append((seq, outcome))
            if outcome & FAILURE:
                self.failures += 1
            if outcome & SLOW:
                self.slow += 1
        self.evict()

    def evict(self) -> None:
        bad = self.bad
        oldest = self.seq - self.size
        while bad and bad[0][0] <= oldest:
            _, outcome = bad.popleft()
            if outcome & FAILURE:
                self.failures -= 1
            if outcome & SLOW:
                self.slow -= 1

    def totals(self, now: float) -> tuple[int, int, int]:
        self.evict()
        return min(self.seq - self.base, self.size), self.failures, self.slow


class _TimeRecorder:
    """The runtime state of a :class:`TimeWindow`: a ring of time slices with running totals.

    ``end`` is the first instant past the newest slice, so the breaker's hot path counts a
    success with one float comparison and one increment of ``fresh`` (``now < end``: same
    slice, nothing to evict); ``fresh`` is folded into the slice and the totals before anything
    reads them.
    """

    __slots__ = (
        "_seq",
        "calls",
        "current",
        "end",
        "failures",
        "fresh_successes",
        "minimum",
        "n",
        "ring_calls",
        "ring_failures",
        "ring_slow",
        "scale",
        "seconds",
        "slot",
        "slow",
    )

    def __init__(self, seconds: float, buckets: int, minimum: int = 1, seq: int = 0) -> None:
        self.n = buckets
        self.seconds = seconds
        self.minimum = minimum
        self.scale = buckets / seconds  # slices per second
        self.ring_calls = [0] * buckets
        self.ring_failures = [0] * buckets
        self.ring_slow = [0] * buckets
        self.current: int | None = None  # absolute index of the newest slice
        self.end = -math.inf  # no slice yet: the hot path always takes the full route
        self.slot = 0
        self.fresh_successes = 0  # successes in the newest slice not yet folded in
        self.calls = 0
        self.failures = 0
        self.slow = 0
        self._seq = seq  # cumulative calls, for metrics

    @property
    def seq(self) -> int:
        """Calls ever recorded (the cumulative counter for metrics)."""
        return self._seq + self.fresh_successes

    def _fold(self) -> None:
        fresh = self.fresh_successes
        if fresh:
            self.fresh_successes = 0
            self.ring_calls[self.slot] += fresh
            self.calls += fresh
            self._seq += fresh

    def fresh(self) -> _TimeRecorder:
        """A new, empty window continuing this one's cumulative count.

        A new object (not this one cleared), so an outcome of a call admitted before the
        transition lands in the dead window and changes nothing.
        """
        return _TimeRecorder(self.seconds, self.n, self.minimum, self.seq)

    def _slice_end(self, index: int) -> float:
        # the smallest float t with int(t * scale) > index: exact agreement with _advance
        scale = self.scale
        end = (index + 1) / scale
        while int(end * scale) <= index:
            end = math.nextafter(end, math.inf)
        while int(math.nextafter(end, -math.inf) * scale) > index:
            end = math.nextafter(end, -math.inf)
        return end

    def _advance(self, now: float) -> int:
        self._fold()
        index = int(now * self.scale)
        current = self.current
        if current is None:
            self.current = index
        elif index > current:
            n = self.n
            # clear every slice that time moved past (at most n of them)
            for absolute in range(max(current + 1, index - n + 1), index + 1):
                i = absolute % n
                self.calls -= self.ring_calls[i]
                self.failures -= self.ring_failures[i]
                self.slow -= self.ring_slow[i]
                self.ring_calls[i] = self.ring_failures[i] = self.ring_slow[i] = 0
            self.current = index
        else:
            # a clock that went backwards (or a late outcome) lands in the newest slice
            return self.slot
        self.slot = slot = index % self.n
        self.end = self._slice_end(index)
        return slot

    def record(self, outcome: int, now: float) -> None:
        i = self._advance(now)
        self._seq += 1
        self.calls += 1
        self.ring_calls[i] += 1
        if outcome & FAILURE:
            self.failures += 1
            self.ring_failures[i] += 1
        if outcome & SLOW:
            self.slow += 1
            self.ring_slow[i] += 1

    def totals(self, now: float) -> tuple[int, int, int]:
        self._advance(now)
        return self.calls, self.failures, self.slow

    def should_check(self) -> bool:
        # old successes leaving a time window can raise the rate: check while failures remain
        return bool(self.failures or self.slow)


def make_recorder(window: Window, minimum: int) -> _CountRecorder | _TimeRecorder:
    """Build the runtime recorder of a window configuration."""
    if isinstance(window, CountWindow):
        return _CountRecorder(window.size, minimum)
    if isinstance(window, TimeWindow):
        return _TimeRecorder(float(window.seconds), window.buckets, minimum)
    raise ConfigurationError(
        f"window={window!r}: pass CountWindow(size) or TimeWindow(seconds=...)"
    )
