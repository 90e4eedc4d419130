"""Inspect and replay dead letters (the API behind ``python -m scalekit.queue dlq ...``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import ConfigurationError
from scalekit.queue._broker import Broker, Delivery, OutgoingMessage, QueueSpec
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
    HEADER_REPLAYED,
    new_message_id,
)
from scalekit.queue.producer import Producer

__all__ = ["DeadLetter", "DeadLetters"]

_DROPPED_ON_REPLAY = (
    "x-death",
    "x-delivery-count",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    HEADER_ERROR,
    HEADER_ERROR_TYPE,
    HEADER_ATTEMPTS,
    HEADER_REASON,
    HEADER_ORIGINAL_EXCHANGE,
    HEADER_ORIGINAL_ROUTING_KEY,
    HEADER_DEAD_LETTERED_AT,
)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in a dead-letter queue and why it is there.

    Attributes:
        message_id: the original message id.
        queue: the work queue it came from.
        reason: ``failed`` (retries exhausted), ``undecodable``, ``delivery_limit`` (it kept
            killing consumers), ``rejected`` or ``expired``.
        error: ``Type: message`` of the last error, when a handler raised.
        attempts: attempts made.
        routing_key: the routing key it was originally published with.
        dead_lettered_at: Unix time it was dead-lettered (``None`` when the broker did it).
        body: the raw body.
        content_type: the body's content type.
        headers: every header.
    """

    message_id: str
    queue: str | None
    reason: str
    error: str | None
    attempts: int
    routing_key: str | None
    dead_lettered_at: float | None
    body: bytes = field(repr=False)
    content_type: str | None = None
    headers: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_delivery(cls, delivery: Delivery) -> DeadLetter:
        """Read the scalekit headers (or the broker's ``x-death``) of a dead-lettered message."""
        h = delivery.headers
        deaths = h.get("x-death") or []
        death: Mapping[str, Any] = deaths[0] if deaths and isinstance(deaths[0], Mapping) else {}
        reason = _text(h.get(HEADER_REASON)) or _text(death.get("reason")) or "unknown"
        queue = _text(h.get(HEADER_QUEUE)) or _text(death.get("queue"))
        keys = death.get("routing-keys") or []
        routing_key = _text(h.get(HEADER_ORIGINAL_ROUTING_KEY)) or (
            _text(keys[0]) if keys else None
        )
        try:
            attempts = int(h.get(HEADER_ATTEMPTS) or h.get(HEADER_ATTEMPT) or 1)
        except (TypeError, ValueError):
            attempts = 1
        at = h.get(HEADER_DEAD_LETTERED_AT)
        return cls(
            message_id=delivery.message_id or "",
            queue=queue,
            reason=reason,
            error=_text(h.get(HEADER_ERROR)),
            attempts=attempts,
            routing_key=routing_key,
            dead_lettered_at=float(at) if isinstance(at, (int, float)) else None,
            body=delivery.body,
            content_type=delivery.content_type,
            headers=dict(h),
        )


Filter = Callable[[DeadLetter], bool]


class DeadLetters:
    """Look into a queue's dead-letter queue and send messages back for another try.

    Args:
        broker: a connected broker.
        queue: the work queue (its dead-letter queue is ``<queue>.dlq``) or its spec.
        publish_timeout: seconds allowed to publish each replayed message.
        clock: the clock for the replay rate limit.
    """

    def __init__(
        self,
        broker: Broker,
        queue: str | QueueSpec,
        *,
        publish_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.broker = broker
        self.spec = queue if isinstance(queue, QueueSpec) else QueueSpec(queue)
        self._producer = Producer(
            broker, publish_timeout=publish_timeout, max_message_bytes=2**31, clock=clock
        )
        self._clock = clock

    async def count(self) -> int:
        """Messages in the dead-letter queue now."""
        return (await self.broker.queue_stats(self.spec.dlq)).messages

    async def _walk(
        self, limit: int | None, where: Filter | None
    ) -> tuple[list[tuple[Delivery, DeadLetter]], list[Delivery]]:
        """Hold up to the current depth of messages; split into matching and the rest."""
        depth = await self.count()
        matched: list[tuple[Delivery, DeadLetter]] = []
        others: list[Delivery] = []
        for _ in range(depth):
            if limit is not None and len(matched) >= limit:
                break
            delivery = await self.broker.get(self.spec.dlq)
            if delivery is None:
                break
            letter = DeadLetter.from_delivery(delivery)
            if where is None or where(letter):
                matched.append((delivery, letter))
            else:
                others.append(delivery)
        return matched, others

    async def _requeue(self, deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            with contextlib.suppress(Exception):
                await delivery.reject(requeue=True)
        if not deliveries:
            return
        # The broker applies requeues asynchronously (a quorum queue through its log): wait,
        # briefly, until they are counted again so the next inspect/replay/purge sees them.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0  # real time: a ManualClock must not make this spin
        while loop.time() < deadline:
            with contextlib.suppress(Exception):
                if await self.count() >= len(deliveries):
                    return
            await asyncio.sleep(0.01)

    async def inspect(self, *, limit: int = 100, where: Filter | None = None) -> list[DeadLetter]:
        """Up to ``limit`` dead letters matching ``where``; they stay in the queue."""
        matched, others = await self._walk(limit, where)
        await self._requeue(others + [d for d, _ in matched])
        return [letter for _, letter in matched]

    async def replay(
        self,
        *,
        where: Filter | None = None,
        limit: int | None = None,
        rate: float | None = None,
    ) -> int:
        """Send matching dead letters back to their queue with a fresh attempt count.

        Each message is published (confirmed) before its dead-letter copy is acked, so a crash
        mid-replay duplicates at worst (consumers deduplicate on the same ``message_id``).

        Args:
            where: which messages to replay (default: all).
            limit: replay at most this many.
            rate: at most this many messages per second (protects a recovering dependency).

        Returns:
            How many were replayed.
        """
        if rate is not None and rate <= 0:
            raise ConfigurationError("rate must be positive (messages per second)")
        matched, others = await self._walk(limit, where)
        replayed = 0
        start = self._clock.monotonic()
        try:
            for delivery, letter in matched:
                if rate is not None:
                    wait = start + replayed / rate - self._clock.monotonic()
                    if wait > 0:
                        await self._clock.sleep(wait)
                headers = {k: v for k, v in delivery.headers.items() if k not in _DROPPED_ON_REPLAY}
                headers[HEADER_ATTEMPT] = 1
                headers[HEADER_REPLAYED] = int(headers.get(HEADER_REPLAYED) or 0) + 1
                await self._producer.send(
                    OutgoingMessage(
                        routing_key=letter.queue or self.spec.name,
                        body=delivery.body,
                        message_id=letter.message_id or new_message_id(),
                        headers=headers,
                        content_type=delivery.content_type,
                        correlation_id=delivery.correlation_id,
                    )
                )
                await delivery.ack()
                replayed += 1
        finally:
            await self._requeue(others + [d for d, _ in matched[replayed:]])
        return replayed

    async def purge(self, *, where: Filter | None = None, limit: int | None = None) -> int:
        """Delete matching dead letters for good; returns how many."""
        matched, others = await self._walk(limit, where)
        for delivery, _ in matched:
            await delivery.ack()
        await self._requeue(others)
        return len(matched)
