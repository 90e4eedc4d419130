"""An in-process broker with RabbitMQ's delivery semantics and fault injection, for tests."""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import BrokerUnavailableError, PublishNackedError, UnroutableError
from scalekit.queue._broker import (
    Broker,
    ConnectionLostError,
    Delivery,
    DeliveryCallback,
    OutgoingMessage,
    QueueSpec,
    QueueStats,
    Subscription,
)

__all__ = ["MemoryBroker"]


@dataclass(slots=True)
class _Stored:
    body: bytes
    message_id: str | None
    headers: dict[str, Any]
    content_type: str | None
    exchange: str
    routing_key: str
    correlation_id: str | None
    expiration_ms: int | None
    delivery_count: int = 0
    delivered: bool = False
    expiry: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Queue:
    name: str
    ttl_ms: int | None = None
    dead_letter_routing_key: str | None = None
    delivery_limit: int | None = None
    ready: deque[_Stored] = field(default_factory=deque)
    subscriptions: list[_MemorySubscription] = field(default_factory=list)
    rr: int = 0


class _MemoryDelivery(Delivery):
    __slots__ = (
        "_broker",
        "_epoch",
        "_owner",
        "_queue",
        "_settled",
        "_stored",
        "_token",
        "body",
        "content_type",
        "correlation_id",
        "exchange",
        "headers",
        "message_id",
        "redelivered",
        "routing_key",
    )

    def __init__(self, broker: MemoryBroker, queue: _Queue, stored: _Stored, owner: Any) -> None:
        self._broker = broker
        self._queue = queue
        self._stored = stored
        self._owner = owner
        self._epoch = broker._epoch
        self._token = next(broker._ids)
        self._settled = False
        self.body = stored.body
        headers = dict(stored.headers)
        if stored.delivery_count and queue.delivery_limit is not None:
            headers["x-delivery-count"] = stored.delivery_count
        self.headers = headers
        self.message_id = stored.message_id
        self.content_type = stored.content_type
        self.routing_key = stored.routing_key
        self.exchange = stored.exchange
        self.redelivered = stored.delivered
        self.correlation_id = stored.correlation_id

    def _live(self) -> bool:
        return not self._settled and self._epoch == self._broker._epoch

    async def ack(self) -> bool:
        if not self._live():
            return False
        self._settled = True
        self._broker._settle(self, requeue=None)
        return True

    async def reject(self, *, requeue: bool) -> bool:
        if not self._live():
            return False
        self._settled = True
        self._broker._settle(self, requeue=requeue)
        return True


class _MemorySubscription(Subscription):
    def __init__(
        self, broker: MemoryBroker, queue: _Queue, callback: DeliveryCallback, prefetch: int
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.unacked = 0
        self.active = True

    async def cancel(self) -> None:
        self.active = False
        if self in self.queue.subscriptions:
            self.queue.subscriptions.remove(self)


class MemoryBroker(Broker):
    """An in-process broker for tests and demos, with the semantics of RabbitMQ quorum queues.

    It confirms publishes, rejects unroutable mandatory messages, holds deliveries unacked up to
    each consumer's prefetch, redelivers what was not acked when the "connection" drops, expires
    messages by queue and per-message TTL into their dead-letter route (which is how delays and
    retries work), and dead-letters a message whose delivery count passes the queue's delivery
    limit. Fault injection: :meth:`drop_connection`, :meth:`go_offline` / :meth:`go_online`,
    :meth:`lose_confirms` and :meth:`nack_next`.

    Args:
        exchange: the name of the exchange work queues are bound to.
        clock: the clock for TTLs (a ``ManualClock`` makes delays instant in tests).
    """

    def __init__(self, *, exchange: str = "scalekit", clock: Clock = SYSTEM_CLOCK) -> None:
        self.exchange = exchange
        self._clock = clock
        self._queues: dict[str, _Queue] = {}
        self._bindings: dict[str, str] = {}  # routing key on our exchange -> queue
        self._connected = asyncio.Event()
        self._epoch = 0
        self._unacked: dict[int, tuple[_Queue, _Stored, Any]] = {}
        self._ids = itertools.count()
        self._pending_confirms: set[asyncio.Future[None]] = set()
        self._lose_confirms = 0
        self._nack_next = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.published = 0
        """Messages the broker accepted (routed and confirmed or confirm lost)."""

    def __repr__(self) -> str:
        return f"MemoryBroker(exchange={self.exchange!r}, queues={len(self._queues)})"

    # -- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Mark the broker connected."""
        self._closed = False
        self._connected.set()

    async def aclose(self) -> None:
        """Disconnect: unacked messages return to their queues; expiry timers stop."""
        self._disconnect()
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def is_connected(self) -> bool:
        """Whether the simulated connection is up."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        """Wait for the simulated connection.

        Raises:
            BrokerUnavailableError: still offline after ``timeout`` seconds.
        """
        if self._connected.is_set():
            return
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BrokerUnavailableError(
                f"the memory broker stayed offline for {timeout:.1f}s (go_online() was not called)"
            ) from None

    # -- fault injection ------------------------------------------------------------------------

    def _disconnect(self) -> None:
        self._connected.clear()
        self._epoch += 1
        for fut in list(self._pending_confirms):
            if not fut.done():
                fut.set_exception(ConnectionLostError("the memory broker dropped the connection"))
        self._pending_confirms.clear()
        for queue, stored, owner in list(self._unacked.values()):
            if isinstance(owner, _MemorySubscription):
                owner.unacked = 0
            self._return(queue, stored)
        self._unacked.clear()

    async def drop_connection(self) -> None:
        """Drop the connection and reconnect at once.

        Pending confirms fail (the producer republishes), unacked deliveries are requeued as
        redelivered (their settle calls become no-ops), consumers resume on the new connection.
        """
        self._disconnect()
        self._connected.set()
        for queue in self._queues.values():
            self._dispatch(queue)

    def go_offline(self) -> None:
        """Drop the connection and stay disconnected until :meth:`go_online`."""
        self._disconnect()

    def go_online(self) -> None:
        """Reconnect after :meth:`go_offline`."""
        self._connected.set()
        for queue in self._queues.values():
            self._dispatch(queue)

    def lose_confirms(self, count: int = 1) -> None:
        """The next ``count`` published messages are routed but their confirm never arrives."""
        self._lose_confirms += count

    def nack_next(self, count: int = 1) -> None:
        """The broker negatively acknowledges (and drops) the next ``count`` publishes."""
        self._nack_next += count

    # -- topology -------------------------------------------------------------------------------

    def _declare_queue(
        self,
        name: str,
        *,
        ttl_ms: int | None = None,
        dead_letter_routing_key: str | None = None,
        delivery_limit: int | None = None,
    ) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = _Queue(
                name, ttl_ms, dead_letter_routing_key, delivery_limit
            )
        return queue

    async def declare(self, spec: QueueSpec) -> None:
        """Declare the work queue and its dead-letter queue (idempotent)."""
        self._require_connected()
        if spec.dead_letter:
            self._declare_queue(spec.dlq)
        self._declare_queue(
            spec.name,
            dead_letter_routing_key=spec.dlq if spec.dead_letter else None,
            delivery_limit=spec.delivery_limit if spec.queue_type == "quorum" else None,
        )
        self._bindings[spec.name] = spec.name

    async def declare_delay_queue(self, spec: QueueSpec, delay_ms: int) -> str:
        """Declare a delay queue that returns messages to ``spec`` after ``delay_ms``."""
        self._require_connected()
        name = spec.delay_queue(delay_ms)
        self._declare_queue(name, ttl_ms=delay_ms, dead_letter_routing_key=spec.name)
        return name

    async def delete(self, spec: QueueSpec) -> None:
        """Forget the queue, its dead-letter queue and delay queues."""
        prefix = f"{spec.name}.delay."
        for name in [spec.name, spec.dlq, *(n for n in self._queues if n.startswith(prefix))]:
            queue = self._queues.pop(name, None)
            if queue is not None:
                for stored in queue.ready:
                    if stored.expiry is not None:
                        stored.expiry.cancel()
        self._bindings.pop(spec.name, None)

    def _require_connected(self) -> None:
        if not self._connected.is_set():
            raise ConnectionLostError("the memory broker is offline")

    # -- publishing -----------------------------------------------------------------------------

    def _route(self, exchange: str, routing_key: str) -> _Queue | None:
        if exchange == "":
            return self._queues.get(routing_key)
        name = self._bindings.get(routing_key)
        return self._queues.get(name) if name is not None else None

    async def publish(self, message: OutgoingMessage, *, mandatory: bool, timeout: float) -> None:
        """Route the message and confirm it (or fail as the injected faults say)."""
        self._require_connected()
        exchange = self.exchange if message.exchange is None else message.exchange
        if self._nack_next:
            self._nack_next -= 1
            raise PublishNackedError("the memory broker nacked the message (nack_next)")
        queue = self._route(exchange, message.routing_key)
        if queue is None and mandatory:
            raise UnroutableError(
                f"no queue is bound for routing key {message.routing_key!r} on exchange "
                f"{exchange!r}; declare the queue before publishing"
            )
        if queue is not None:
            self.published += 1
            self._enqueue(
                queue,
                _Stored(
                    body=message.body,
                    message_id=message.message_id,
                    headers=dict(message.headers),
                    content_type=message.content_type,
                    exchange=exchange,
                    routing_key=message.routing_key,
                    correlation_id=message.correlation_id,
                    expiration_ms=message.expiration_ms,
                ),
            )
        if self._lose_confirms:
            self._lose_confirms -= 1
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending_confirms.add(fut)
            try:
                async with asyncio.timeout(timeout):
                    await fut
            finally:
                self._pending_confirms.discard(fut)

    # -- queues ---------------------------------------------------------------------------------

    def _enqueue(self, queue: _Queue, stored: _Stored) -> None:
        ttls = [t for t in (queue.ttl_ms, stored.expiration_ms) if t is not None]
        if ttls:
            stored.expiry = self._spawn(self._expire_later(queue, stored, min(ttls) / 1000))
        queue.ready.append(stored)
        self._dispatch(queue)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _expire_later(self, queue: _Queue, stored: _Stored, seconds: float) -> None:
        await self._clock.sleep(seconds)
        stored.expiry = None
        try:
            queue.ready.remove(stored)
        except ValueError:
            return  # delivered meanwhile (a delay queue has no consumers, so rare)
        self._dead_letter(queue, stored, "expired")

    def _dead_letter(self, queue: _Queue, stored: _Stored, reason: str) -> None:
        if queue.dead_letter_routing_key is None or self._queues.get(queue.name) is not queue:
            return  # dropped, as RabbitMQ does without a dead-letter exchange
        target = self._route(self.exchange, queue.dead_letter_routing_key) or self._queues.get(
            queue.dead_letter_routing_key
        )
        if target is None:
            return
        headers = dict(stored.headers)
        deaths = list(headers.get("x-death") or [])
        deaths.insert(
            0,
            {
                "queue": queue.name,
                "reason": reason,
                "count": 1,
                "exchange": stored.exchange,
                "routing-keys": [stored.routing_key],
            },
        )
        headers["x-death"] = deaths
        self._enqueue(
            target,
            _Stored(
                body=stored.body,
                message_id=stored.message_id,
                headers=headers,
                content_type=stored.content_type,
                exchange=self.exchange,
                routing_key=queue.dead_letter_routing_key,
                correlation_id=stored.correlation_id,
                expiration_ms=None,
            ),
        )

    def _return(self, queue: _Queue, stored: _Stored) -> None:
        if self._queues.get(queue.name) is not queue:
            return
        stored.delivery_count += 1
        if queue.delivery_limit is not None and stored.delivery_count > queue.delivery_limit:
            self._dead_letter(queue, stored, "delivery_limit")
            return
        queue.ready.appendleft(stored)

    def _settle(self, delivery: _MemoryDelivery, *, requeue: bool | None) -> None:
        entry = self._unacked.pop(delivery._token, None)
        if entry is None:
            return
        queue, stored, owner = entry
        if isinstance(owner, _MemorySubscription):
            owner.unacked -= 1
        if requeue is True:
            self._return(queue, stored)
        elif requeue is False:
            self._dead_letter(queue, stored, "rejected")
        self._dispatch(queue)

    def _dispatch(self, queue: _Queue) -> None:
        if not self._connected.is_set():
            return
        while queue.ready:
            subs = [s for s in queue.subscriptions if s.active and s.unacked < s.prefetch]
            if not subs:
                return
            sub = subs[queue.rr % len(subs)]
            queue.rr += 1
            stored = queue.ready.popleft()
            if stored.expiry is not None:
                stored.expiry.cancel()
                stored.expiry = None
            delivery = _MemoryDelivery(self, queue, stored, sub)
            stored.delivered = True
            sub.unacked += 1
            self._unacked[delivery._token] = (queue, stored, sub)
            self._spawn(sub.callback(delivery))

    async def subscribe(
        self, queue: str, callback: DeliveryCallback, *, prefetch: int
    ) -> Subscription:
        """Consume ``queue`` with manual acks (``prefetch`` unacked at most)."""
        self._require_connected()
        q = self._queues.get(queue)
        if q is None:
            raise ConnectionLostError(f"no queue named {queue!r}: declare it first")
        sub = _MemorySubscription(self, q, callback, max(1, prefetch))
        q.subscriptions.append(sub)
        self._dispatch(q)
        return sub

    async def get(self, queue: str) -> Delivery | None:
        """Fetch one ready message, held unacked until settled."""
        self._require_connected()
        q = self._queues.get(queue)
        if q is None or not q.ready:
            return None
        stored = q.ready.popleft()
        if stored.expiry is not None:
            stored.expiry.cancel()
            stored.expiry = None
        delivery = _MemoryDelivery(self, q, stored, None)
        stored.delivered = True
        self._unacked[delivery._token] = (q, stored, None)
        return delivery

    async def queue_stats(self, queue: str) -> QueueStats:
        """Ready messages and consumers of ``queue`` (zero for an unknown queue)."""
        q = self._queues.get(queue)
        if q is None:
            return QueueStats(queue, 0, 0)
        return QueueStats(queue, len(q.ready), sum(1 for s in q.subscriptions if s.active))

    def messages(self, queue: str) -> list[Mapping[str, Any]]:
        """A snapshot of the ready messages of ``queue`` (for assertions in tests)."""
        q = self._queues.get(queue)
        if q is None:
            return []
        return [
            {"message_id": s.message_id, "headers": dict(s.headers), "body": s.body}
            for s in q.ready
        ]
