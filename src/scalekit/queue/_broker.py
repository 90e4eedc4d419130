"""The small contract every broker backend implements; producers and consumers only use this."""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from scalekit.errors import BrokerUnavailableError

__all__ = [
    "Broker",
    "ConnectionLostError",
    "Delivery",
    "OutgoingMessage",
    "QueueSpec",
    "QueueStats",
    "Subscription",
]

QueueType = Literal["quorum", "classic"]


class ConnectionLostError(BrokerUnavailableError):
    """The connection dropped before the broker confirmed the message (it may be republished)."""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """The topology of one logical work queue.

    Declaring it creates (idempotently): the queue bound to the broker's durable exchange under
    its own name, and its dead-letter queue ``<name>.dlq``. Delay queues ``<name>.delay.<ms>``
    (TTL + dead-letter exchange back to the queue) are declared on demand by retries and delayed
    publishes.

    Attributes:
        name: the queue name; also its routing key.
        queue_type: ``"quorum"`` (replicated, delivery limit, the default) or ``"classic"``.
        delivery_limit: redeliveries after which the broker itself dead-letters a message that
            keeps killing consumers (quorum queues only); ``None`` for no limit.
        dead_letter: declare the ``.dlq`` queue and route broker dead letters to it.
    """

    name: str
    queue_type: QueueType = "quorum"
    delivery_limit: int | None = 20
    dead_letter: bool = True

    @property
    def dlq(self) -> str:
        """The dead-letter queue's name."""
        return f"{self.name}.dlq"

    def delay_queue(self, delay_ms: int) -> str:
        """The name of the delay queue holding messages ``delay_ms`` before they return."""
        return f"{self.name}.delay.{delay_ms}"


@dataclass(slots=True)
class OutgoingMessage:
    """One message on its way to the broker (already encoded)."""

    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    exchange: str | None = None  # None: the broker's own exchange; "" the default exchange
    expiration_ms: int | None = None
    persistent: bool = True
    correlation_id: str | None = None
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A fresh reading of a queue.

    Attributes:
        name: the queue.
        messages: messages ready for delivery (not counting unacked ones).
        consumers: consumers attached now.
    """

    name: str
    messages: int
    consumers: int


class Delivery(abc.ABC):
    """One delivered message, settled exactly once with :meth:`ack` or :meth:`reject`."""

    __slots__ = ()

    body: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    content_type: str | None
    routing_key: str
    exchange: str
    redelivered: bool
    correlation_id: str | None

    @abc.abstractmethod
    async def ack(self) -> bool:
        """Acknowledge; returns False when the channel is gone (the broker will redeliver)."""

    @abc.abstractmethod
    async def reject(self, *, requeue: bool) -> bool:
        """Reject, requeueing or dropping (dead-lettering); False when the channel is gone."""


DeliveryCallback = Callable[[Delivery], Awaitable[None]]


class Subscription(abc.ABC):
    """A live consumer registration; survives reconnects until cancelled."""

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop receiving new deliveries (unacked ones stay with the channel until settled)."""

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release the subscription's channel; anything still unacked returns to the queue."""


class Broker(abc.ABC):
    """A message broker: confirmed publishing, acked consuming, idempotent topology.

    Implementations: :class:`~scalekit.queue.RabbitMQBroker` and
    :class:`~scalekit.queue.MemoryBroker`.
    """

    #: the durable exchange every work queue is bound to
    exchange: str

    @abc.abstractmethod
    async def connect(self) -> None:
        """Connect (waits for the first connection; later drops reconnect in the background)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close every channel and the connection."""

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        """Whether a connection is up right now."""

    @abc.abstractmethod
    async def wait_connected(self, timeout: float) -> None:
        """Wait until connected.

        Raises:
            BrokerUnavailableError: not connected within ``timeout`` seconds.
        """

    @abc.abstractmethod
    async def declare(self, spec: QueueSpec) -> None:
        """Declare the queue's topology idempotently; re-declared after every reconnect."""

    @abc.abstractmethod
    async def declare_delay_queue(self, spec: QueueSpec, delay_ms: int) -> str:
        """Declare ``spec``'s delay queue for ``delay_ms`` (idempotent, cached); return its name."""

    @abc.abstractmethod
    async def publish(self, message: OutgoingMessage, *, mandatory: bool, timeout: float) -> None:
        """Publish and wait for the broker's confirm.

        Raises:
            ConnectionLostError: not connected, or the connection dropped before the confirm.
            PublishNackedError: the broker refused the message.
            UnroutableError: ``mandatory`` and no queue is bound for the routing key.
            TimeoutError: no confirm within ``timeout`` seconds.
        """

    @abc.abstractmethod
    async def subscribe(
        self, queue: str, callback: DeliveryCallback, *, prefetch: int
    ) -> Subscription:
        """Consume ``queue`` with manual acks and ``prefetch`` unacked messages at most."""

    @abc.abstractmethod
    async def get(self, queue: str) -> Delivery | None:
        """Fetch one message without a consumer (``basic.get``), unacked; ``None`` if empty.

        Messages fetched on the same broker stay unacked (held) until settled, so repeated calls
        walk the queue.
        """

    @abc.abstractmethod
    async def queue_stats(self, queue: str) -> QueueStats:
        """Read the queue's depth and consumer count fresh from the broker."""

    @abc.abstractmethod
    async def delete(self, spec: QueueSpec) -> None:
        """Delete the queue, its dead-letter queue and its delay queues (tests, teardown)."""
