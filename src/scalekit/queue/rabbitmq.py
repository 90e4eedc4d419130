"""RabbitMQ backend on aio-pika: reconnecting connection, confirmed publishing, quorum topology.

Why not ``aio_pika.connect_robust``: it reconnects to one URL at a fixed interval, caches the
result of passive declares (so a queue's message count goes stale), and does not replay
publishes that lost their confirm. Here one supervisor task owns the connection: it tries the
nodes in turn with exponential backoff and jitter, re-declares the topology, re-subscribes the
consumers, and tells waiting publishers the connection is back so *they* can republish.
The hot paths (publish, ack) use the underlying aiormq channel directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import math
import random
import struct
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from scalekit._drivers import require
from scalekit._redact import redact_text, redact_url
from scalekit._telemetry import get_logger
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import (
    BrokerUnavailableError,
    ConfigurationError,
    PublishError,
    PublishNackedError,
    QueueError,
    UnroutableError,
)
from scalekit.queue._broker import (
    Broker,
    ConnectionLostError,
    Delivery,
    DeliveryCallback,
    OutgoingMessage,
    QueueSpec,
    QueueStats,
    QueueType,
    Subscription,
)

if TYPE_CHECKING:
    import aio_pika.abc
    import aiormq.abc

__all__ = ["RabbitMQBroker"]

_ABORT = "scalekit.queue: connection lost before the confirm"

log = get_logger(__name__)


class _RabbitDelivery(Delivery):
    __slots__ = (
        "_channel",
        "_settled",
        "_tag",
        "body",
        "content_type",
        "correlation_id",
        "exchange",
        "headers",
        "message_id",
        "redelivered",
        "routing_key",
    )

    def __init__(self, message: aiormq.abc.DeliveredMessage) -> None:
        props = message.header.properties
        delivery = message.delivery
        self._channel = message.channel
        self._tag: int = delivery.delivery_tag  # type: ignore[union-attr,assignment]
        self._settled = False
        self.body = message.body
        self.headers = props.headers or {}
        self.message_id = props.message_id
        self.content_type = props.content_type
        self.correlation_id = props.correlation_id
        self.routing_key = delivery.routing_key or ""  # type: ignore[union-attr]
        self.exchange = delivery.exchange or ""  # type: ignore[union-attr]
        self.redelivered = bool(delivery.redelivered)  # type: ignore[union-attr]

    async def ack(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        try:
            await self._channel.basic_ack(self._tag, wait=False)
        except Exception:  # the channel is gone: the broker redelivers the message
            return False
        return True

    async def reject(self, *, requeue: bool) -> bool:
        if self._settled:
            return False
        self._settled = True
        try:
            await self._channel.basic_nack(self._tag, requeue=requeue, wait=False)
        except Exception:
            return False
        return True


_HEADER_PREFIX = struct.Struct(">BHIHHQH")  # frame type, channel, size; class, weight, size, flags
_FRAME_END = b"\xce"


def _shortstr(value: str, name: str) -> bytes:
    data = value.encode()
    if len(data) > 255:
        raise ConfigurationError(f"the {name} is {len(data)} bytes; AMQP allows at most 255")
    return bytes((len(data),)) + data


def _content_header_frame(channel: int, message: OutgoingMessage) -> bytes:
    """The marshalled content-header frame of a ``basic.publish``, without pamqp's generic path.

    Byte-for-byte what pamqp writes for these properties (``test_pure`` compares the two): the
    property flags, then, in AMQP 0-9-1 order, content-type, headers, delivery-mode,
    correlation-id, expiration and message-id. Messages with a timestamp take pamqp's path.
    """
    flags = 0x1000  # delivery-mode is always set
    props: list[bytes] = []
    if message.content_type:  # pamqp leaves empty strings out too
        flags |= 0x8000
        props.append(_shortstr(message.content_type, "content type"))
    if message.headers:
        flags |= 0x2000
        props.append(_encode_headers(message.headers))
    props.append(b"\x02" if message.persistent else b"\x01")
    if message.correlation_id:
        flags |= 0x0400
        props.append(_shortstr(message.correlation_id, "correlation id"))
    if message.expiration_ms is not None:
        flags |= 0x0100
        props.append(_shortstr(str(message.expiration_ms), "expiration"))
    if message.message_id:
        flags |= 0x0080
        props.append(_shortstr(message.message_id, "message id"))
    payload = b"".join(props)
    return b"".join(
        (
            _HEADER_PREFIX.pack(2, channel, 14 + len(payload), 60, 0, len(message.body), flags),
            payload,
            _FRAME_END,
        )
    )


@functools.cache
def _field_table() -> Any:
    return require("pamqp.encode").field_table


_TABLES: dict[tuple[tuple[str, str], ...], bytes] = {}


def _encode_headers(headers: dict[str, Any]) -> bytes:
    """pamqp's field-table encoding, memoized for small all-string tables (the usual headers).

    Only ``str`` values are cached: equal keys must mean equal bytes, and ``True == 1 == 1.0``
    encode differently. Per-message values (a traceparent) just miss; the cache stays bounded.
    """
    if len(headers) > 4 or any(type(v) is not str for v in headers.values()):
        return _field_table()(headers)  # type: ignore[no-any-return]
    key = tuple(headers.items())
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= 256:
            _TABLES.clear()
        table = _TABLES[key] = _field_table()(headers)
    return table


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    fut.set_exception(exc)
    # Mark it retrieved: its task may be cancelled (a connection loss) before it reads it, and
    # asyncio would log "Future exception was never retrieved". The awaiting task still gets it.
    fut.exception()


class _Batcher:
    """Coalesce the publishes of one loop iteration into one socket write.

    aiormq writes every published message with its own ``transport.write`` (a syscall each);
    here the frames of all messages submitted since the last write are marshalled into one
    buffer. Delivery tags are assigned in the order frames are queued, and confirms, nacks and
    returns are resolved by aiormq's own handlers through ``channel.confirmations``, exactly as
    for ``basic_publish``.
    """

    def __init__(self, channel: Any, aiormq: Any, max_batch: int = 512) -> None:
        self.channel = channel
        self._publish = aiormq.spec.Basic.Publish
        self._marshal = require("pamqp.frame").marshal
        self._frame = aiormq.abc.ChannelFrame
        self._max_batch = max_batch
        # The method frame of basic.publish depends only on (exchange, routing key, mandatory):
        # marshal it once per destination instead of once per message.
        self._method_frames: dict[tuple[str, str, bool], bytes] = {}
        self.items: list[tuple[asyncio.Future[Any], bytes, str, str, bytes, str, bool]] = []
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._create_future = loop.create_future
        # Confirm futures are plain loop futures kept in ``pending`` (the publishing task drops
        # its own in ``forget``): registering each in aiormq's future stores costs three done
        # callbacks per message. One sentinel in the channel's store carries the channel's close
        # reason to every pending publish instead, as aiormq's ``reject_all`` would.
        self.pending: set[asyncio.Future[Any]] = set()
        self._sentinel: asyncio.Future[Any] = channel.create_future()
        self._sentinel.add_done_callback(self._on_channel_closed)
        # Deadlines of pending publishes: one loop timer for the earliest instead of an
        # asyncio.timeout() (a TimerHandle, a Timeout and a task cancel) per message.
        self._loop = loop
        self._deadlines: list[tuple[float, int, asyncio.Future[Any]]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = math.inf
        self._task = loop.create_task(self._run(), name="scalekit.queue.rabbitmq.batcher")

    def submit(
        self,
        body: bytes,
        exchange: str,
        routing_key: str,
        header_frame: bytes,
        message_id: str,
        mandatory: bool,
    ) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._create_future()
        sentinel = self._sentinel
        if sentinel.done():  # the channel is already closed
            fut.set_exception(
                ConnectionLostError("the channel closed before sending")
                if sentinel.cancelled()
                else sentinel.exception() or ConnectionLostError("the channel closed")
            )
            return fut
        self.pending.add(fut)
        self.items.append((fut, body, exchange, routing_key, header_frame, message_id, mandatory))
        self._wake.set()
        return fut

    def expire_after(self, fut: asyncio.Future[Any], seconds: float) -> None:
        """Fail ``fut`` with ``TimeoutError`` if it is still pending ``seconds`` from now."""
        when = self._loop.time() + seconds
        heap = self._deadlines
        self._seq += 1
        heapq.heappush(heap, (when, self._seq, fut))
        if when < self._timer_when:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(when, self._expire)
            self._timer_when = when
        if len(heap) > 4096 and len(heap) > 4 * len(self.pending):  # settled entries dominate
            self._deadlines = [entry for entry in heap if not entry[2].done()]
            heapq.heapify(self._deadlines)

    def _expire(self) -> None:
        self._timer, self._timer_when = None, math.inf
        heap = self._deadlines
        now = self._loop.time()
        while heap and (heap[0][0] <= now or heap[0][2].done()):
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                _fail(fut, TimeoutError())
        if heap:
            self._timer_when = heap[0][0]
            self._timer = self._loop.call_at(self._timer_when, self._expire)

    def forget(self, message_id: str, fut: asyncio.Future[Any]) -> None:
        """Drop the message-id → delivery-tag entry of a settled publish (returns use it).

        A basic.return always arrives before the confirm of the same message, so once ``fut`` is
        no longer the pending confirmation of the tag, the entry is no longer needed; an entry
        that belongs to a later publish of the same message id (its own pending future) stays.
        """
        self.pending.discard(fut)
        ids = self.channel.message_id_delivery_tag
        tag = ids.get(message_id)
        if tag is not None and self.channel.confirmations.get(tag, fut) is fut:
            del ids[message_id]

    def _on_channel_closed(self, sentinel: asyncio.Future[Any]) -> None:
        if sentinel.cancelled():  # close() of the batcher, not of the channel
            return
        exc = sentinel.exception() or ConnectionLostError("the channel closed")
        pending, self.pending = self.pending, set()
        for fut in pending:
            if not fut.done():
                _fail(fut, exc)

    def _method_frame(self, exchange: str, routing_key: str, mandatory: bool) -> bytes:
        key = (exchange, routing_key, mandatory)
        frame = self._method_frames.get(key)
        if frame is None:
            if len(self._method_frames) >= 1024:  # bounded: many distinct routing keys
                self._method_frames.clear()
            frame = self._method_frames[key] = self._marshal(
                self._publish(exchange=exchange, routing_key=routing_key, mandatory=mandatory),
                self.channel.number,
            )
        return frame

    async def _run(self) -> None:
        ch = self.channel
        marshal = self._marshal
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.items:
                batch = self.items[: self._max_batch]
                del self.items[: self._max_batch]
                number = ch.number
                parts: list[bytes] = []
                for fut, body, exchange, routing_key, header_frame, message_id, mandatory in batch:
                    if fut.done():  # timed out or cancelled before it was sent
                        continue
                    ch.delivery_tag += 1
                    tag = ch.delivery_tag
                    ch.confirmations[tag] = fut
                    ch.message_id_delivery_tag[message_id] = tag
                    parts.append(self._method_frame(exchange, routing_key, mandatory))
                    parts.append(header_frame)
                    for chunk in ch._split_body(body):
                        parts.append(marshal(chunk, number))
                if parts:
                    await ch.write_queue.put(
                        self._frame(payload=b"".join(parts), should_close=False)
                    )

    def close(self) -> None:
        self._task.cancel()
        self._sentinel.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._deadlines = None, []
        self.items = []
        pending, self.pending = self.pending, set()
        for fut in pending:  # queued or sent and unconfirmed: the producer republishes them
            if not fut.done():
                _fail(fut, ConnectionLostError("the publishing channel was replaced"))


class _RabbitSubscription(Subscription):
    def __init__(
        self, broker: RabbitMQBroker, queue: str, callback: DeliveryCallback, prefetch: int
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.callback = callback
        self.prefetch = prefetch
        self.channel: aio_pika.abc.AbstractChannel | None = None
        self.tag: str | None = None
        self.cancelled = False

    async def on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        await self.callback(_RabbitDelivery(message))

    async def start(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        underlay = await channel.get_underlay_channel()
        await underlay.basic_qos(prefetch_count=self.prefetch)
        ok = await underlay.basic_consume(self.queue, self.on_message, no_ack=False)
        self.channel, self.tag = channel, ok.consumer_tag

    async def cancel(self) -> None:
        self.cancelled = True
        self.broker._subscriptions.discard(self)
        channel, tag = self.channel, self.tag
        if channel is None or tag is None or channel.is_closed:
            return
        with contextlib.suppress(Exception):
            underlay = await channel.get_underlay_channel()
            await underlay.basic_cancel(tag)
        # The channel stays open so in-flight handlers can still ack; see close().

    async def close(self) -> None:
        await self.cancel()
        channel, self.channel = self.channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()


class RabbitMQBroker(Broker):
    """RabbitMQ through aio-pika, reconnecting across one or several nodes.

    Args:
        url: an ``amqp://`` URL, or a list of the URLs of a cluster's nodes (tried in turn).
        exchange: the durable direct exchange work queues are bound to.
        queue_type: the default type of queues declared through :class:`QueueSpec`
            (``"quorum"``: replicated, with a delivery limit; ``"classic"``).
        connect_timeout: seconds allowed for one connection attempt.
        reconnect_initial: the first reconnect delay in seconds.
        reconnect_max: the longest reconnect delay in seconds.
        heartbeat: AMQP heartbeat in seconds (how fast a dead peer is noticed).
        clock: the clock for reconnect delays.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        exchange: str = "scalekit",
        queue_type: QueueType = "quorum",
        connect_timeout: float = 5.0,
        reconnect_initial: float = 0.1,
        reconnect_max: float = 10.0,
        heartbeat: int = 30,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._aio_pika = require("aio_pika")
        self._aiormq = require("aiormq")
        self._pamqp_frame = require("pamqp.frame")
        self._pamqp_header = require("pamqp.header")
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ConfigurationError("RabbitMQBroker needs at least one amqp:// URL")
        self._urls = urls
        self.exchange = exchange
        self.queue_type: QueueType = queue_type
        self._connect_timeout = connect_timeout
        self._reconnect_initial = reconnect_initial
        self._reconnect_max = reconnect_max
        self._heartbeat = heartbeat
        self._clock = clock
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._publish_channel: aio_pika.abc.AbstractChannel | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._specs: dict[str, QueueSpec] = {}
        self._delays: dict[str, dict[int, str]] = {}
        self._subscriptions: set[_RabbitSubscription] = set()
        self._get_channel: aio_pika.abc.AbstractChannel | None = None
        self._channel_lock = asyncio.Lock()
        self._node = 0
        self._batcher: _Batcher | None = None
        self._publishing: set[asyncio.Task[Any]] = set()
        self._aborted: set[asyncio.Task[Any]] = set()
        self.reconnects = 0
        """How many times the connection was re-established after a loss."""

    def __repr__(self) -> str:
        nodes = ", ".join(redact_url(u) for u in self._urls)
        return f"RabbitMQBroker([{nodes}], exchange={self.exchange!r})"

    # -- lifecycle ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the connection supervisor and wait for the first connection.

        Raises:
            BrokerUnavailableError: no node accepted a connection within ``connect_timeout``
                (the supervisor keeps trying in the background).
        """
        self._closing = False
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name="scalekit.queue.rabbitmq.supervisor"
            )
        await self.wait_connected(self._connect_timeout)

    async def aclose(self) -> None:
        """Stop reconnecting and close the connection (unacked deliveries return to the broker)."""
        self._closing = True
        self._connected.clear()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
            self._supervisor = None
        conn, self._connection = self._connection, None
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        self._publish_channel = self._underlay = self._get_channel = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5.0)

    @property
    def is_connected(self) -> bool:
        """Whether a connection is up and set up right now."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float) -> None:
        """Wait until connected.

        Raises:
            BrokerUnavailableError: not connected within ``timeout`` seconds.
        """
        if self._connected.is_set():
            return
        if self._supervisor is None:
            raise BrokerUnavailableError(
                "the RabbitMQ broker is not started; call `await broker.connect()` (or use "
                "`async with broker:`) first"
            )
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            raise BrokerUnavailableError(
                f"no RabbitMQ node of {[redact_url(u) for u in self._urls]} accepted a "
                f"connection within {timeout:.1f}s; check the broker and the URL"
            ) from None

    def _backoff(self, failures: int) -> float:
        delay = min(self._reconnect_max, self._reconnect_initial * 2 ** min(failures, 30))
        return float(delay * (0.5 + random.random() / 2))

    async def _supervise(self) -> None:
        failures = 0
        first = True
        while not self._closing:
            url = self._urls[self._node % len(self._urls)]
            try:
                conn = await self._aio_pika.connect(
                    url,
                    timeout=self._connect_timeout,
                    client_properties={"connection_name": "scalekit.queue"},
                    heartbeat=self._heartbeat,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._node += 1
                delay = self._backoff(failures)
                failures += 1
                log.warning(
                    "cannot connect to RabbitMQ at %s (%s); retrying in %.2fs",
                    redact_url(url),
                    redact_text(str(exc)),
                    delay,
                )
                await self._clock.sleep(delay)
                continue
            lost = asyncio.Event()

            def on_close(*_: object, lost: asyncio.Event = lost) -> None:
                lost.set()
                self._connected.clear()
                self._abort_publishes()
                self._underlay = None

            conn.close_callbacks.add(on_close)
            try:
                async with asyncio.timeout(self._connect_timeout * 2):
                    await self._setup(conn)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await conn.close()
                raise
            except Exception as exc:
                log.warning("setting up the RabbitMQ connection failed: %s", redact_text(str(exc)))
                with contextlib.suppress(Exception):
                    await conn.close()
                delay = self._backoff(failures)
                failures += 1
                await self._clock.sleep(delay)
                continue
            failures = 0
            if not first:
                self.reconnects += 1
                log.info("reconnected to RabbitMQ at %s", redact_url(url))
            first = False
            self._connected.set()
            await lost.wait()
            self._connected.clear()
            self._underlay = None
            log.warning("lost the RabbitMQ connection to %s; reconnecting", redact_url(url))

    async def _setup(self, conn: aio_pika.abc.AbstractConnection) -> None:
        self._connection = conn
        await self._open_publish_channel(conn)
        self._get_channel = None
        for spec in list(self._specs.values()):
            await self._declare_on(conn, spec)
        for queue, delays in list(self._delays.items()):
            known = self._specs.get(queue)
            if known is not None:
                for delay_ms in list(delays):
                    await self._declare_delay_on(conn, known, delay_ms)
        for sub in list(self._subscriptions):
            if not sub.cancelled:
                await sub.start(conn)

    async def _open_publish_channel(self, conn: aio_pika.abc.AbstractConnection) -> None:
        channel = await conn.channel(publisher_confirms=True, on_return_raises=False)
        self._publish_channel = channel
        self._underlay = await channel.get_underlay_channel()

    def _abort_publishes(self) -> None:
        # aiormq does not reliably fail the confirm futures of a connection that died (we saw
        # publishes wait for their whole timeout after a TCP reset): interrupt every publish
        # still waiting; publish() turns that into ConnectionLostError and the producer
        # republishes the message (same message_id) on the next connection. A task in
        # _publishing has not resumed since its await, so the cancel lands inside publish().
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            batcher.close()
        for task in self._publishing:
            if not task.done():
                self._aborted.add(task)
                task.cancel(_ABORT)
        self._publishing.clear()

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        underlay = self._underlay
        if underlay is not None and not underlay.is_closed:
            return underlay
        conn = self._connection
        if not self._connected.is_set() or conn is None or conn.is_closed:
            raise ConnectionLostError("not connected to RabbitMQ")
        async with self._channel_lock:  # a channel error closed it: reopen, once
            if self._underlay is None or self._underlay.is_closed:
                try:
                    async with asyncio.timeout(self._connect_timeout):
                        await self._open_publish_channel(conn)
                except Exception as exc:
                    raise ConnectionLostError(f"cannot open a RabbitMQ channel: {exc}") from exc
            assert self._underlay is not None
            return self._underlay

    # -- topology -------------------------------------------------------------------------------

    def _queue_args(self, spec: QueueSpec, **extra: Any) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if spec.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
        args.update(extra)
        return args

    async def _declare_on(self, conn: aio_pika.abc.AbstractConnection, spec: QueueSpec) -> None:
        channel = await conn.channel(publisher_confirms=False)
        try:
            exchange = await channel.declare_exchange(self.exchange, "direct", durable=True)
            if spec.dead_letter:
                await channel.declare_queue(
                    spec.dlq, durable=True, arguments=self._queue_args(spec)
                )
            extra: dict[str, Any] = {}
            if spec.dead_letter:
                extra["x-dead-letter-exchange"] = ""
                extra["x-dead-letter-routing-key"] = spec.dlq
            if spec.queue_type == "quorum":
                if spec.delivery_limit is not None:
                    extra["x-delivery-limit"] = spec.delivery_limit
                if spec.dead_letter:  # dead letters survive a broker failure on the way
                    extra["x-dead-letter-strategy"] = "at-least-once"
                    extra["x-overflow"] = "reject-publish"
            queue = await channel.declare_queue(
                spec.name, durable=True, arguments=self._queue_args(spec, **extra)
            )
            await queue.bind(exchange, routing_key=spec.name)
        except self._aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"queue {spec.name!r} already exists with other arguments ({exc}); delete it or "
                "declare it with the same queue_type / delivery_limit"
            ) from exc
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def _declare_delay_on(
        self, conn: aio_pika.abc.AbstractConnection, spec: QueueSpec, delay_ms: int
    ) -> str:
        name = spec.delay_queue(delay_ms)
        extra: dict[str, Any] = {
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": self.exchange,
            "x-dead-letter-routing-key": spec.name,
        }
        if spec.queue_type == "quorum":
            extra["x-dead-letter-strategy"] = "at-least-once"
            extra["x-overflow"] = "reject-publish"
        channel = await conn.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(
                name, durable=True, arguments=self._queue_args(spec, **extra)
            )
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return name

    async def declare(self, spec: QueueSpec) -> None:
        """Declare the exchange, the queue, its dead-letter queue; re-declared on reconnect.

        Raises:
            ConfigurationError: the queue exists with different arguments.
            BrokerUnavailableError: not connected within ``connect_timeout``.
        """
        await self.wait_connected(self._connect_timeout)
        assert self._connection is not None
        await self._declare_on(self._connection, spec)
        self._specs[spec.name] = spec

    async def declare_delay_queue(self, spec: QueueSpec, delay_ms: int) -> str:
        """Declare (once, then cached) the delay queue for ``delay_ms``; return its name."""
        known = self._delays.setdefault(spec.name, {})
        name = known.get(delay_ms)
        if name is not None:
            return name
        await self.wait_connected(self._connect_timeout)
        assert self._connection is not None
        name = await self._declare_delay_on(self._connection, spec, delay_ms)
        known[delay_ms] = name
        return name

    async def delete(self, spec: QueueSpec) -> None:
        """Delete the queue, its dead-letter queue and the delay queues this broker declared."""
        await self.wait_connected(self._connect_timeout)
        assert self._connection is not None
        names = [spec.name, spec.dlq, *self._delays.pop(spec.name, {}).values()]
        self._specs.pop(spec.name, None)
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            underlay = await channel.get_underlay_channel()
            for name in names:
                await underlay.queue_delete(name)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    async def delete_exchange(self) -> None:
        """Delete this broker's exchange (tests use a unique exchange per run)."""
        await self.wait_connected(self._connect_timeout)
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            underlay = await channel.get_underlay_channel()
            await underlay.exchange_delete(self.exchange)
        finally:
            with contextlib.suppress(Exception):
                await channel.close()

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, message: OutgoingMessage, *, mandatory: bool, timeout: float) -> None:
        """Publish one message and wait for its confirm (see :meth:`Broker.publish`)."""
        channel = self._underlay
        if channel is None or channel.is_closed:
            try:
                async with asyncio.timeout(timeout):
                    channel = await self._channel()
            except TimeoutError:
                raise ConnectionLostError("no RabbitMQ channel could be opened in time") from None
        spec = self._aiormq.spec
        if message.timestamp is None:
            header_frame = _content_header_frame(channel.number, message)
        else:  # rare: let pamqp encode the timestamp exactly as it always did
            props = spec.Basic.Properties(
                delivery_mode=2 if message.persistent else 1,
                message_id=message.message_id,
                headers=message.headers or None,
                content_type=message.content_type,
                correlation_id=message.correlation_id,
                expiration=(
                    str(message.expiration_ms) if message.expiration_ms is not None else None
                ),
                timestamp=datetime.fromtimestamp(message.timestamp, tz=UTC),
            )
            header_frame = self._pamqp_frame.marshal(
                self._pamqp_header.ContentHeader(properties=props, body_size=len(message.body)),
                channel.number,
            )
        exchange = self.exchange if message.exchange is None else message.exchange
        errors = self._aiormq.exceptions
        if len(message.routing_key.encode()) > 255:
            raise ConfigurationError("a routing key is at most 255 bytes")
        task = asyncio.current_task()
        assert task is not None
        self._publishing.add(task)
        batcher = self._batcher
        if batcher is None or batcher.channel is not channel:
            if batcher is not None:
                batcher.close()
            batcher = self._batcher = _Batcher(channel, self._aiormq)
        fut = batcher.submit(
            message.body, exchange, message.routing_key, header_frame, message.message_id, mandatory
        )
        batcher.expire_after(fut, timeout)
        try:
            result = await fut
        except asyncio.CancelledError:
            if task not in self._aborted:
                raise
            self._aborted.discard(task)
            task.uncancel()
            raise ConnectionLostError(
                f"the connection dropped before RabbitMQ confirmed message {message.message_id}"
            ) from None
        except TimeoutError:
            raise
        except errors.DeliveryError as exc:
            raise PublishNackedError(
                f"RabbitMQ refused message {message.message_id} (nack): the queue may be full or "
                "the node out of resources; retry later"
            ) from exc
        except errors.ChannelNotFoundEntity as exc:
            raise PublishError(
                f"exchange {exchange!r} does not exist; declare the queue first ({exc})"
            ) from exc
        except (errors.AMQPError, errors.ChannelInvalidStateError, ConnectionError, OSError) as exc:
            raise ConnectionLostError(
                f"the connection dropped before RabbitMQ confirmed message {message.message_id}"
            ) from exc
        finally:
            self._publishing.discard(task)
            batcher.forget(message.message_id, fut)
        if isinstance(result, self._aiormq.abc.DeliveredMessage):
            raise UnroutableError(
                f"RabbitMQ returned message {message.message_id}: no queue is bound for routing "
                f"key {message.routing_key!r} on exchange {exchange!r}; declare the queue first"
            )
        if isinstance(result, spec.Basic.Nack):
            raise PublishNackedError(f"RabbitMQ nacked message {message.message_id}")

    # -- consuming ------------------------------------------------------------------------------

    async def subscribe(
        self, queue: str, callback: DeliveryCallback, *, prefetch: int
    ) -> Subscription:
        """Consume ``queue``; the subscription is restored after every reconnect."""
        await self.wait_connected(self._connect_timeout)
        assert self._connection is not None
        sub = _RabbitSubscription(self, queue, callback, max(1, prefetch))
        self._subscriptions.add(sub)
        try:
            await sub.start(self._connection)
        except self._aiormq.exceptions.ChannelNotFoundEntity as exc:
            self._subscriptions.discard(sub)
            raise QueueError(f"queue {queue!r} does not exist; declare it first") from exc
        return sub

    async def get(self, queue: str) -> Delivery | None:
        """``basic.get`` on a dedicated channel; fetched messages stay unacked until settled."""
        await self.wait_connected(self._connect_timeout)
        assert self._connection is not None
        if self._get_channel is None or self._get_channel.is_closed:
            self._get_channel = await self._connection.channel(publisher_confirms=False)
        underlay = await self._get_channel.get_underlay_channel()
        try:
            message = await underlay.basic_get(queue, no_ack=False)
        except self._aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise QueueError(f"queue {queue!r} does not exist") from exc
        if isinstance(message.delivery, self._aiormq.spec.Basic.GetEmpty):
            return None
        return _RabbitDelivery(message)

    async def release_held(self) -> None:
        """Close the ``get`` channel: every message fetched and not settled returns to its queue."""
        channel, self._get_channel = self._get_channel, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.close()

    async def queue_stats(self, queue: str) -> QueueStats:
        """Passive declare on a fresh channel, so the count is the broker's current one.

        Raises:
            QueueError: the queue does not exist.
        """
        await self.wait_connected(self._connect_timeout)
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            underlay = await channel.get_underlay_channel()
            ok = await underlay.queue_declare(queue, passive=True)
        except self._aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise QueueError(f"queue {queue!r} does not exist") from exc
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return QueueStats(queue, int(ok.message_count or 0), int(ok.consumer_count or 0))
