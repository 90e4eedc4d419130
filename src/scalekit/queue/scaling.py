"""Scaling signals: fresh queue depth, rates, an in-process autoscaler, a KEDA-style target."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from scalekit._telemetry import get_logger, meter
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError
from scalekit.queue._broker import Broker, QueueStats
from scalekit.queue.consumer import Worker

__all__ = ["Autoscaler", "QueueMetrics", "QueueSample", "desired_workers", "next_concurrency"]

log = get_logger(__name__)


def desired_workers(
    *,
    backlog: int,
    throughput_per_worker: float,
    drain_seconds: float = 60.0,
    min_workers: int = 0,
    max_workers: int = 100,
    current: int | None = None,
    tolerance: float = 0.1,
) -> int:
    """How many worker processes drain ``backlog`` within ``drain_seconds`` (a KEDA-style target).

    This is KEDA's ``ceil(metric / target per replica)`` with the target derived from what one
    worker really processes: ``throughput_per_worker * drain_seconds`` messages each. Feed it
    the queue depth from :meth:`QueueMetrics.sample` and the measured per-worker rate, and
    export the result (a metric, an HTTP endpoint KEDA's ``metrics-api`` scaler reads).

    Args:
        backlog: messages waiting (ready) in the queue.
        throughput_per_worker: messages per second one worker processes.
        drain_seconds: how fast the backlog should be gone.
        min_workers: the floor (0 allows scale to zero when the queue is empty).
        max_workers: the ceiling.
        current: the workers running now; when given, a change within ``tolerance`` of it is
            ignored (no flapping on noise).
        tolerance: relative band around ``current`` that keeps it.

    Returns:
        The number of workers to run.
    """
    if throughput_per_worker <= 0 or drain_seconds <= 0:
        raise ConfigurationError("throughput_per_worker and drain_seconds must be positive")
    if not 0 <= min_workers <= max_workers:
        raise ConfigurationError("need 0 <= min_workers <= max_workers")
    if backlog <= 0:
        return min_workers
    per_worker = throughput_per_worker * drain_seconds
    want = math.ceil(backlog / per_worker)
    if current is not None and current > 0 and abs(want - current) <= tolerance * current:
        want = current
    return max(min_workers, min(max_workers, max(want, 1)))


def next_concurrency(
    current: int,
    *,
    backlog: int,
    in_flight: int,
    latency: float,
    min_concurrency: int,
    max_concurrency: int,
    latency_limit: float | None = None,
) -> int:
    """The autoscaler's rule, pure so it can be tested and reasoned about.

    * Handlers slower than ``latency_limit``: shrink by a quarter (a saturated dependency
      does not get faster with more callers).
    * A backlog beyond what is running and the slots nearly all busy: grow by half.
    * No backlog and under half the slots busy: shrink by a quarter.
    * Otherwise keep.
    """
    if latency_limit is not None and latency > latency_limit:
        target = math.floor(current * 0.75)
    elif backlog > 0 and in_flight >= 0.8 * current:
        target = max(current + 1, math.ceil(current * 1.5))
    elif backlog == 0 and in_flight < current / 2:
        target = current - max(1, current // 4)
    else:
        target = current
    return max(min_concurrency, min(max_concurrency, target))


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One reading of a queue.

    Attributes:
        queue: the queue.
        messages: ready messages.
        consumers: consumers attached.
        at: monotonic time of the reading.
        net_rate: change of ``messages`` per second since the previous reading (positive:
            growing); ``None`` for the first reading.
    """

    queue: str
    messages: int
    consumers: int
    at: float
    net_rate: float | None


class QueueMetrics:
    """Read queue depth fresh from the broker and export it as OpenTelemetry gauges.

    The depth comes from a passive declare on a *new* channel each time (aio-pika 10's robust
    channel would answer from its cache with a stale count). Gauges
    ``scalekit.queue.depth`` and ``scalekit.queue.consumers`` report the last sample; handler
    in-flight counts are exported as ``scalekit.queue.in_flight`` for the workers given.

    Args:
        broker: the broker.
        queues: the queue names to watch.
        workers: workers whose in-flight counts to export.
        clock: the clock for rates.
    """

    def __init__(
        self,
        broker: Broker,
        queues: Sequence[str],
        *,
        workers: Iterable[Worker[Any]] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.workers = list(workers)
        self._clock = clock
        self.last: dict[str, QueueSample] = {}
        m = meter()
        m.create_observable_gauge(
            "scalekit.queue.depth",
            [self._observe_depth],
            unit="{message}",
            description="ready messages in the queue",
        )
        m.create_observable_gauge(
            "scalekit.queue.consumers",
            [self._observe_consumers],
            unit="{consumer}",
            description="consumers attached to the queue",
        )
        m.create_observable_gauge(
            "scalekit.queue.in_flight",
            [self._observe_in_flight],
            unit="{message}",
            description="handlers running",
        )

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.messages, {"messaging.destination.name": q}) for q, s in self.last.items()
        ]

    def _observe_consumers(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(s.consumers, {"messaging.destination.name": q})
            for q, s in self.last.items()
        ]

    def _observe_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(w.stats().in_flight, {"messaging.destination.name": w.queue})
            for w in self.workers
        ]

    async def sample(self, queue: str | None = None) -> QueueSample:
        """Read one queue now (the first watched queue by default)."""
        name = queue or self.queues[0]
        stats: QueueStats = await self.broker.queue_stats(name)
        now = self._clock.monotonic()
        prev = self.last.get(name)
        rate = None
        if prev is not None and now > prev.at:
            rate = (stats.messages - prev.messages) / (now - prev.at)
        sample = QueueSample(name, stats.messages, stats.consumers, now, rate)
        self.last[name] = sample
        return sample

    async def sample_all(self) -> list[QueueSample]:
        """Read every watched queue."""
        return [await self.sample(q) for q in self.queues]


class Autoscaler:
    """Grow and shrink a worker's concurrency between bounds from backlog and latency.

    Every ``interval`` seconds it reads the queue depth (fresh), the worker's in-flight count
    and recent handler latency, and applies :func:`next_concurrency`.

    Args:
        worker: the worker to resize (from ``Consumer.add_handler`` / ``consumer.workers[q]``).
        min_concurrency: the floor.
        max_concurrency: the ceiling (capped by the worker's prefetch).
        interval: seconds between adjustments.
        latency_limit: mean handler seconds above which it shrinks instead of growing.
        clock: the clock for the interval.
    """

    def __init__(
        self,
        worker: Worker[Any],
        *,
        min_concurrency: int = 1,
        max_concurrency: int | None = None,
        interval: float = 5.0,
        latency_limit: float | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        top = worker.prefetch if max_concurrency is None else min(max_concurrency, worker.prefetch)
        if not 1 <= min_concurrency <= top:
            raise ConfigurationError(
                f"need 1 <= min_concurrency <= max_concurrency (<= prefetch {worker.prefetch})"
            )
        self.worker = worker
        self.min_concurrency = min_concurrency
        self.max_concurrency = top
        self.interval = interval
        self.latency_limit = latency_limit
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def step(self) -> int:
        """Adjust once; returns the new concurrency."""
        stats = self.worker.stats()
        depth = (await self.worker.consumer.broker.queue_stats(self.worker.queue)).messages
        backlog = depth + stats.buffered
        new = next_concurrency(
            stats.concurrency,
            backlog=backlog,
            in_flight=stats.in_flight,
            latency=stats.mean_latency,
            min_concurrency=self.min_concurrency,
            max_concurrency=self.max_concurrency,
            latency_limit=self.latency_limit,
        )
        if new != stats.concurrency:
            log.info(
                "concurrency of %s: %d -> %d (backlog %d, in flight %d, latency %.3fs)",
                self.worker.queue,
                stats.concurrency,
                new,
                backlog,
                stats.in_flight,
                stats.mean_latency,
            )
            self.worker.set_concurrency(new)
        return new

    async def _run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception as exc:  # a failed reading must not stop scaling for good
                log.warning("autoscaler step for %s failed: %s", self.worker.queue, exc)
            await self._clock.sleep(self.interval)

    async def start(self) -> None:
        """Start adjusting in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop adjusting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Autoscaler:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
