"""Test your own handlers without RabbitMQ: MemoryBroker keeps the semantics and injects faults."""

from __future__ import annotations

import asyncio

from scalekit.queue import Consumer, MemoryBroker, MemoryDedupStore, Message, Producer


async def main() -> None:
    async with MemoryBroker() as broker:
        producer = Producer(broker, publish_timeout=2)
        await producer.declare("emails")
        sent: list[str] = []
        consumer = Consumer(broker, dedup=MemoryDedupStore())

        @consumer.handler("emails")
        async def send_email(message: Message[dict[str, str]]) -> None:
            sent.append(message.body["to"])

        async with consumer:
            broker.lose_confirms(1)  # the confirm of the next publish never arrives...
            publishing = asyncio.create_task(
                producer.publish({"to": "ada@example.com"}, queue="emails")
            )
            while broker.published == 0:  # noqa: ASYNC110
                await asyncio.sleep(0)
            await broker.drop_connection()  # ...and the connection drops: it is republished
            outcome = await publishing
            assert outcome.attempts == 2  # delivered twice, same message_id
            while consumer.workers["emails"].stats().duplicates == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert sent == ["ada@example.com"]  # the dedup store skipped the copy
        print("sent once:", sent)


if __name__ == "__main__":
    asyncio.run(main())
