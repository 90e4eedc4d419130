"""Safe consuming: ack after success, retries through delay queues, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from opentelemetry.trace import SpanKind, Status, StatusCode

from scalekit._telemetry import get_logger, meter, tracer
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError, MessageDecodeError, QueueError
from scalekit.queue._broker import Broker, Delivery, OutgoingMessage, QueueSpec, Subscription
from scalekit.queue._message import (
    HEADER_ATTEMPT,
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTERED_AT,
    HEADER_ERROR,
    HEADER_ERROR_TYPE,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_QUEUE,
    HEADER_REASON,
    Message,
    decode_body,
    error_text,
)
from scalekit.queue._tracing import extract_context, tracing_enabled
from scalekit.queue.dedup import Claim, DedupStore, new_token
from scalekit.queue.producer import Producer
from scalekit.queue.retry import RetryPolicy

__all__ = ["Consumer", "HandlerStats", "Worker", "lifespan"]

log = get_logger(__name__)

T = TypeVar("T")
Handler = Callable[[Message[T]], Awaitable[None]]

#: delay before a copy that another consumer is processing right now is looked at again
_BUSY_DELAY_MS = 1000


class _Limiter:
    """A semaphore whose limit can change while held (the autoscaler resizes it)."""

    __slots__ = ("_waiters", "active", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.active < self.limit and not self._waiters:
            self.active += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def set_limit(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _wake(self) -> None:
        while self._waiters and self.active < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.active += 1
                fut.set_result(None)


@dataclass(frozen=True, slots=True)
class HandlerStats:
    """Counters of one queue's handler.

    Attributes:
        queue: the queue.
        concurrency: handlers allowed to run at once now.
        prefetch: messages the broker may hand over unacked.
        in_flight: handlers running now.
        buffered: delivered messages waiting for a handler slot.
        succeeded: messages processed and acked.
        retried: failures sent to a delay queue for another attempt.
        dead_lettered: messages sent to the dead-letter queue.
        duplicates: redeliveries skipped by the dedup store.
        mean_latency: mean handler duration in seconds over the recent window.
    """

    queue: str
    concurrency: int
    prefetch: int
    in_flight: int
    buffered: int
    succeeded: int
    retried: int
    dead_lettered: int
    duplicates: int
    mean_latency: float


class Worker(Generic[T]):
    """One queue's handler inside a :class:`Consumer` (created by ``Consumer.handler``).

    Its concurrency can be changed at run time with :meth:`set_concurrency` (the
    :class:`~scalekit.queue.Autoscaler` does).
    """

    def __init__(
        self,
        consumer: Consumer,
        spec: QueueSpec,
        fn: Handler[T],
        *,
        concurrency: int,
        prefetch: int,
        model: Any,
        retry: RetryPolicy,
        dedup: DedupStore | None,
    ) -> None:
        self.consumer = consumer
        self.spec = spec
        self.fn = fn
        self.model = model
        self.retry = retry
        self.dedup = dedup
        self.prefetch = prefetch
        self.max_concurrency = concurrency
        self._limiter = _Limiter(concurrency)
        self._subscription: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.succeeded = 0
        self.retried = 0
        self.dead_lettered = 0
        self.duplicates = 0
        self._latencies: deque[float] = deque(maxlen=256)

    @property
    def stopping(self) -> bool:
        """Whether intake has stopped (graceful shutdown in progress)."""
        return self._stopping

    @property
    def queue(self) -> str:
        """The queue this worker consumes."""
        return self.spec.name

    @property
    def concurrency(self) -> int:
        """Handlers allowed to run at once now."""
        return self._limiter.limit

    def set_concurrency(self, value: int) -> None:
        """Allow ``value`` handlers at once (capped by the prefetch, at least 1)."""
        self._limiter.set_limit(max(1, min(int(value), self.prefetch)))

    def stats(self) -> HandlerStats:
        """A snapshot of this worker's counters."""
        lat = list(self._latencies)
        return HandlerStats(
            queue=self.spec.name,
            concurrency=self._limiter.limit,
            prefetch=self.prefetch,
            in_flight=self._limiter.active,
            buffered=self._limiter.waiting,
            succeeded=self.succeeded,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            duplicates=self.duplicates,
            mean_latency=sum(lat) / len(lat) if lat else 0.0,
        )

    async def start(self) -> None:
        """Declare the queue's topology and subscribe (``Consumer.start`` calls this)."""
        broker = self.consumer.broker
        await broker.declare(self.spec)
        self._stopping = False
        self._subscription = await broker.subscribe(
            self.spec.name, self._on_delivery, prefetch=self.prefetch
        )

    async def stop_intake(self) -> None:
        """Stop receiving messages; running handlers go on (``Consumer.stop`` calls this)."""
        self._stopping = True
        sub = self._subscription
        if sub is not None:
            await sub.cancel()

    async def drain(self, timeout: float) -> int:
        """Wait for running handlers; cancel what is still running after ``timeout``."""
        pending = {t for t in self._tasks if not t.done()}
        still: set[asyncio.Task[None]] = set()
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.gather(*still, return_exceptions=True)
        sub, self._subscription = self._subscription, None
        if sub is not None:
            await sub.close()
        return len(still)

    async def _on_delivery(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._stopping:
                await delivery.reject(requeue=True)
                return
            await self._limiter.acquire()
            try:
                if self.stopping:  # stop() may have run while we waited for a slot
                    await delivery.reject(requeue=True)
                    return
                await self._process(delivery)
            finally:
                self._limiter.release()
        except asyncio.CancelledError:
            # Shutdown ran out of time or the channel closed: leave it for redelivery.
            with contextlib.suppress(BaseException):
                await delivery.reject(requeue=True)
            raise
        except Exception:  # never let one message kill the consumer
            log.exception("unexpected error while handling a message from %s", self.spec.name)
            with contextlib.suppress(Exception):
                await delivery.reject(requeue=True)
        finally:
            if task is not None:
                self._tasks.discard(task)

    def _attempt(self, delivery: Delivery) -> int:
        raw = delivery.headers.get(HEADER_ATTEMPT, 1)
        try:
            return max(1, int(raw))
        except (TypeError, ValueError):
            return 1

    async def _process(self, delivery: Delivery) -> None:
        attempt = self._attempt(delivery)
        message_id = delivery.message_id or hashlib.sha256(delivery.body).hexdigest()[:32]
        try:
            body = decode_body(delivery.body, delivery.content_type, self.model)
        except (MessageDecodeError, TypeError) as exc:
            await self._dead_letter(delivery, message_id, attempt, "undecodable", exc)
            return
        message: Message[Any] = Message(
            body=body,
            message_id=message_id,
            headers=delivery.headers,
            routing_key=delivery.routing_key,
            queue=self.spec.name,
            attempt=attempt,
            redelivered=delivery.redelivered,
            raw=delivery.body,
            content_type=delivery.content_type,
        )
        token = ""
        if self.dedup is not None:
            token = new_token()
            try:
                claim = await self.dedup.claim(f"{self.spec.name}:{message_id}", token)
            except Exception as exc:  # the dedup store is down: do not process blind
                log.warning(
                    "dedup store unavailable for %s (%s); retrying the message later",
                    message_id,
                    error_text(exc),
                )
                await self._schedule(delivery, message_id, attempt, _BUSY_DELAY_MS, None)
                return
            if claim is Claim.DONE:
                self.duplicates += 1
                await delivery.ack()
                return
            if claim is Claim.BUSY:
                await self._schedule(delivery, message_id, attempt, _BUSY_DELAY_MS, None)
                return
        started = time.perf_counter()
        try:
            if tracing_enabled():
                await self._call_traced(message)
            else:
                await self.fn(message)
        except Exception as exc:
            self._latencies.append(time.perf_counter() - started)
            if self.dedup is not None:
                try:
                    await self.dedup.release(f"{self.spec.name}:{message_id}", token)
                except Exception as err:  # the claim expires after its lease anyway
                    log.warning("cannot release dedup claim of %s: %s", message_id, err)
            await self._on_failure(delivery, message_id, attempt, exc)
            return
        except asyncio.CancelledError:
            if self.dedup is not None:
                with contextlib.suppress(BaseException):
                    await self.dedup.release(f"{self.spec.name}:{message_id}", token)
            raise
        self._latencies.append(time.perf_counter() - started)
        if self.dedup is not None:
            # The effect happened: record it even if shutdown cancels us now.
            try:
                await asyncio.shield(self.dedup.complete(f"{self.spec.name}:{message_id}", token))
            except Exception as err:
                log.warning("cannot record %s as processed: %s", message_id, err)
        if await delivery.ack():
            self.succeeded += 1
            self.consumer._m_processed.add(1)

    async def _call_traced(self, message: Message[Any]) -> None:
        ctx = extract_context(message.headers)
        with self.consumer._tracer.start_as_current_span(
            f"process {self.spec.name}",
            context=ctx,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "process",
                "messaging.destination.name": self.spec.name,
                "messaging.message.id": message.message_id,
                "scalekit.queue.attempt": message.attempt,
            },
        ) as span:
            try:
                await self.fn(message)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    async def _on_failure(
        self, delivery: Delivery, message_id: str, attempt: int, exc: Exception
    ) -> None:
        if self.retry.should_retry(attempt, exc):
            base_ms, ttl_ms = self.retry.delay_ms(attempt)
            log.info(
                "handler for %s failed on attempt %d (%s); retrying in %.3fs",
                self.spec.name,
                attempt,
                error_text(exc),
                ttl_ms / 1000,
            )
            await self._schedule(delivery, message_id, attempt + 1, base_ms, ttl_ms, exc)
            self.retried += 1
            return
        log.warning(
            "handler for %s failed on attempt %d (%s); dead-lettering",
            self.spec.name,
            attempt,
            error_text(exc),
        )
        await self._dead_letter(delivery, message_id, attempt, "failed", exc)

    async def _schedule(
        self,
        delivery: Delivery,
        message_id: str,
        attempt: int,
        queue_ttl_ms: int,
        message_ttl_ms: int | None,
        exc: BaseException | None = None,
    ) -> None:
        """Send a copy to the delay queue (confirmed), then ack the original."""
        headers = dict(delivery.headers)
        headers.pop("x-death", None)
        headers.pop("x-delivery-count", None)
        headers[HEADER_ATTEMPT] = attempt
        if exc is not None:
            headers[HEADER_ERROR] = error_text(exc)
        try:
            delay_queue = await self.consumer.broker.declare_delay_queue(self.spec, queue_ttl_ms)
            await self.consumer.producer.send(
                OutgoingMessage(
                    routing_key=delay_queue,
                    exchange="",
                    body=delivery.body,
                    message_id=message_id,
                    headers=headers,
                    content_type=delivery.content_type,
                    correlation_id=delivery.correlation_id,
                    expiration_ms=message_ttl_ms
                    if message_ttl_ms is not None and message_ttl_ms < queue_ttl_ms
                    else None,
                )
            )
        except (QueueError, TimeoutError) as err:
            log.warning("cannot schedule a retry for %s (%s); requeueing", message_id, err)
            await delivery.reject(requeue=True)
            return
        await delivery.ack()

    async def _dead_letter(
        self,
        delivery: Delivery,
        message_id: str,
        attempt: int,
        reason: str,
        exc: BaseException,
    ) -> None:
        if not self.spec.dead_letter:
            log.error("dropping message %s from %s: %s", message_id, self.spec.name, exc)
            await delivery.reject(requeue=False)
            return
        headers = dict(delivery.headers)
        headers.update(
            {
                HEADER_ERROR: error_text(exc),
                HEADER_ERROR_TYPE: type(exc).__name__,
                HEADER_ATTEMPTS: attempt,
                HEADER_REASON: reason,
                HEADER_QUEUE: self.spec.name,
                HEADER_ORIGINAL_EXCHANGE: delivery.exchange,
                HEADER_ORIGINAL_ROUTING_KEY: delivery.routing_key,
                HEADER_DEAD_LETTERED_AT: int(time.time()),
            }
        )
        try:
            await self.consumer.producer.send(
                OutgoingMessage(
                    routing_key=self.spec.dlq,
                    exchange="",
                    body=delivery.body,
                    message_id=message_id,
                    headers=headers,
                    content_type=delivery.content_type,
                    correlation_id=delivery.correlation_id,
                )
            )
        except (QueueError, TimeoutError) as err:
            log.warning("cannot dead-letter %s (%s); requeueing", message_id, err)
            await delivery.reject(requeue=True)
            return
        if await delivery.ack():
            self.dead_lettered += 1
            self.consumer._m_dead.add(1)


class Consumer:
    """Run async handlers for queues: ack after success, retry, dead-letter, shut down cleanly.

    Register handlers with the :meth:`handler` decorator (or :meth:`add_handler`), then
    ``await consumer.start()`` / ``await consumer.stop()``, ``async with consumer:``, or
    ``await consumer.run()`` (until SIGTERM/SIGINT).

    Args:
        broker: the broker to consume from (you own its lifetime).
        retry: the default retry policy of handlers.
        dedup: a default :class:`~scalekit.queue.dedup.DedupStore` (``None``: no dedup).
        shutdown_timeout: seconds :meth:`stop` lets running handlers finish.
        publish_timeout: seconds allowed to publish a retry or a dead letter.
        clock: the clock for durations.
    """

    def __init__(
        self,
        broker: Broker,
        *,
        retry: RetryPolicy | None = None,
        dedup: DedupStore | None = None,
        shutdown_timeout: float = 30.0,
        publish_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.broker = broker
        self.retry = retry or RetryPolicy()
        self.dedup = dedup
        self.shutdown_timeout = shutdown_timeout
        self.producer = Producer(
            broker, publish_timeout=publish_timeout, max_message_bytes=2**31, clock=clock
        )
        self.workers: dict[str, Worker[Any]] = {}
        self._started = False
        self._stop_requested: asyncio.Event | None = None
        self._tracer = tracer()
        m = meter()
        self._m_processed = m.create_counter(
            "scalekit.queue.processed", unit="{message}", description="messages acked"
        )
        self._m_dead = m.create_counter(
            "scalekit.queue.dead_lettered", unit="{message}", description="dead letters"
        )

    def __repr__(self) -> str:
        return f"Consumer({self.broker!r}, queues={list(self.workers)})"

    def handler(
        self,
        queue: str | QueueSpec,
        *,
        concurrency: int = 16,
        prefetch: int | None = None,
        model: Any = None,
        retry: RetryPolicy | None = None,
        dedup: DedupStore | None = None,
    ) -> Callable[[Handler[T]], Handler[T]]:
        """Decorator registering ``async def fn(message: Message[T])`` for ``queue``.

        Args:
            queue: the queue name, or a :class:`QueueSpec` for non-default topology.
            concurrency: handlers running at once.
            prefetch: unacked messages the broker may hand over; default ``2 * concurrency``
                (at least 10) so the next message is already here when a handler finishes.
            model: decode bodies into this type (dataclass, TypedDict, pydantic model, bytes);
                a body that does not fit goes to the dead-letter queue.
            retry: this handler's retry policy (default: the consumer's).
            dedup: this handler's dedup store (default: the consumer's).
        """

        def register(fn: Handler[T]) -> Handler[T]:
            self.add_handler(
                queue,
                fn,
                concurrency=concurrency,
                prefetch=prefetch,
                model=model,
                retry=retry,
                dedup=dedup,
            )
            return fn

        return register

    def add_handler(
        self,
        queue: str | QueueSpec,
        fn: Handler[T],
        *,
        concurrency: int = 16,
        prefetch: int | None = None,
        model: Any = None,
        retry: RetryPolicy | None = None,
        dedup: DedupStore | None = None,
    ) -> Worker[T]:
        """Register ``fn`` for ``queue`` (see :meth:`handler`); returns its :class:`Worker`."""
        spec = (
            queue
            if isinstance(queue, QueueSpec)
            else QueueSpec(queue, queue_type=getattr(self.broker, "queue_type", "quorum"))
        )
        if spec.name in self.workers:
            raise ConfigurationError(f"queue {spec.name!r} already has a handler")
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if prefetch is None:
            prefetch = max(10, 2 * concurrency)
        if prefetch < concurrency:
            raise ConfigurationError(
                f"prefetch ({prefetch}) below concurrency ({concurrency}) leaves handlers idle"
            )
        worker: Worker[T] = Worker(
            self,
            spec,
            fn,
            concurrency=concurrency,
            prefetch=prefetch,
            model=model,
            retry=retry or self.retry,
            dedup=dedup if dedup is not None else self.dedup,
        )
        if self._started:
            raise ConfigurationError("register handlers before start()")
        self.workers[spec.name] = worker
        return worker

    async def start(self) -> None:
        """Declare every handler's topology and start consuming."""
        if self._started:
            return
        if not self.workers:
            raise ConfigurationError("no handlers registered; use @consumer.handler(queue)")
        self._started = True
        for worker in self.workers.values():
            await worker.start()

    async def stop(self, timeout: float | None = None) -> int:
        """Stop taking messages, let running handlers finish, requeue the rest.

        Args:
            timeout: seconds to wait for running handlers (default ``shutdown_timeout``); those
                still running after it are cancelled and their messages requeued.

        Returns:
            How many handlers had to be cancelled.
        """
        if not self._started:
            return 0
        self._started = False
        budget = self.shutdown_timeout if timeout is None else timeout
        for worker in self.workers.values():
            await worker.stop_intake()
        results = await asyncio.gather(*(w.drain(budget) for w in self.workers.values()))
        return sum(results)

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down (what SIGTERM does)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def run(self, *, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        """Consume until one of ``signals`` (or :meth:`request_stop`), then stop gracefully."""
        self._stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._stop_requested.set)
                installed.append(sig)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.stop()

    def stats(self) -> list[HandlerStats]:
        """One :class:`HandlerStats` per queue."""
        return [w.stats() for w in self.workers.values()]


def lifespan(
    *resources: Any,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    """An ASGI ``lifespan=`` that enters brokers, consumers (and anything async-with) in order.

    ``app = Starlette(lifespan=lifespan(broker, consumer))``: on startup the broker connects and
    the consumer starts; on shutdown they stop in reverse order (the consumer drains first).
    """

    @contextlib.asynccontextmanager
    async def _lifespan(app: Any) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for resource in resources:
                await stack.enter_async_context(resource)
            yield

    return _lifespan
