"""Confirmed publishing and safe consuming over RabbitMQ, with retries, dead letters and an outbox.

Nothing here imports ``aio_pika``, ``redis`` or ``asyncpg`` until a backend is constructed.
"""

from __future__ import annotations

from scalekit.queue._broker import Broker, Delivery, OutgoingMessage, QueueSpec, QueueStats
from scalekit.queue._message import Confirmed, Message
from scalekit.queue.consumer import Consumer, HandlerStats, Worker, lifespan
from scalekit.queue.deadletter import DeadLetter, DeadLetters
from scalekit.queue.dedup import (
    Claim,
    DedupStore,
    MemoryDedupStore,
    PostgresInbox,
    RedisDedupStore,
)
from scalekit.queue.memory import MemoryBroker
from scalekit.queue.outbox import Outbox, OutboxMessage, OutboxRelay
from scalekit.queue.producer import Producer, ProducerStats
from scalekit.queue.rabbitmq import RabbitMQBroker
from scalekit.queue.retry import RetryPolicy
from scalekit.queue.scaling import Autoscaler, QueueMetrics, desired_workers

__all__ = [
    "Autoscaler",
    "Broker",
    "Claim",
    "Confirmed",
    "Consumer",
    "DeadLetter",
    "DeadLetters",
    "DedupStore",
    "Delivery",
    "HandlerStats",
    "MemoryBroker",
    "MemoryDedupStore",
    "Message",
    "OutgoingMessage",
    "Outbox",
    "OutboxMessage",
    "OutboxRelay",
    "PostgresInbox",
    "Producer",
    "ProducerStats",
    "QueueMetrics",
    "QueueSpec",
    "QueueStats",
    "RabbitMQBroker",
    "RedisDedupStore",
    "RetryPolicy",
    "Worker",
    "desired_workers",
    "lifespan",
]
