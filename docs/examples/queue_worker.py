# requires: rabbitmq
"""A web handler enqueues work and returns "processing"; a worker does it, retries, dead-letters."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from scalekit.queue import (
    Consumer,
    DeadLetters,
    Message,
    Producer,
    QueueSpec,
    RabbitMQBroker,
    RetryPolicy,
)

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example")
QUEUE = f"{PREFIX}.resize-images"


@dataclass
class ResizeJob:
    image_id: int
    width: int


resized: list[int] = []


async def enqueue_resize(producer: Producer, image_id: int, width: int) -> dict[str, object]:
    """What the HTTP endpoint does: returns once RabbitMQ has the job (confirmed), not before."""
    outcome = await producer.publish(ResizeJob(image_id, width), queue=QUEUE)
    return {"status": "processing", "job": outcome.message_id}


def build_worker(broker: RabbitMQBroker) -> Consumer:
    consumer = Consumer(
        broker,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=1.0),
        shutdown_timeout=30,
    )

    @consumer.handler(QUEUE, concurrency=8, model=ResizeJob)
    async def resize(message: Message[ResizeJob]) -> None:
        job = message.body
        if job.width <= 0:
            raise ValueError(f"width must be positive, got {job.width}")  # retried, then DLQ
        resized.append(job.image_id)  # acked only after this returns

    return consumer


async def main() -> None:
    async with RabbitMQBroker(AMQP_URL, exchange=f"{PREFIX}.jobs") as broker:
        producer = Producer(broker)
        await producer.declare(QUEUE)
        consumer = build_worker(broker)
        try:
            async with consumer:  # in a worker process: `await consumer.run()` (stops on SIGTERM)
                replies = [await enqueue_resize(producer, i, 256) for i in range(5)]
                assert all(r["status"] == "processing" for r in replies)
                await enqueue_resize(producer, 99, 0)  # a bad job

                letters = DeadLetters(broker, QUEUE)
                for _ in range(500):
                    if len(resized) == 5 and await letters.count() == 1:
                        break
                    await asyncio.sleep(0.02)
                assert sorted(resized) == [0, 1, 2, 3, 4]
                [dead] = await letters.inspect()
                assert dead.reason == "failed"
                assert dead.attempts == 3
                assert dead.error == "ValueError: width must be positive, got 0"
                print("resized", sorted(resized), "dead letter:", dead.error)
        finally:
            await broker.delete(QueueSpec(QUEUE))
            await broker.delete_exchange()


if __name__ == "__main__":
    asyncio.run(main())
