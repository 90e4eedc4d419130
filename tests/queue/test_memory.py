"""MemoryBroker fault injection: what users' own tests rely on."""

from __future__ import annotations

import asyncio

import pytest

from scalekit.errors import PublishNackedError, PublishTimeoutError
from scalekit.queue import Consumer, MemoryBroker, Message, Producer, QueueSpec
from scalekit.testing import ManualClock
from tests.queue.conftest import wait_for


async def test_dropped_connection_republishes_unconfirmed_with_same_id(
    memory: MemoryBroker,
) -> None:
    producer = Producer(memory, publish_timeout=5)
    await producer.declare("q")
    memory.lose_confirms(1)
    pending = asyncio.create_task(producer.publish({"x": 1}, queue="q", message_id="keep-me"))
    await wait_for(lambda: memory.published == 1)
    await memory.drop_connection()
    outcome = await pending
    assert outcome.attempts == 2
    assert outcome.message_id == "keep-me"
    ids = [m["message_id"] for m in memory.messages("q")]
    assert ids == ["keep-me", "keep-me"]  # at-least-once: the consumer deduplicates


async def test_lost_confirm_fails_after_bounded_time(memory: MemoryBroker) -> None:
    producer = Producer(memory, publish_timeout=0.2)
    await producer.declare("q")
    memory.lose_confirms(1)
    with pytest.raises(PublishTimeoutError, match="may still be delivered"):
        await producer.publish({"x": 1}, queue="q")


async def test_offline_broker_publish_times_out_then_recovers(memory: MemoryBroker) -> None:
    producer = Producer(memory, publish_timeout=0.2)
    await producer.declare("q")
    memory.go_offline()
    with pytest.raises(PublishTimeoutError, match="unreachable"):
        await producer.publish({"x": 1}, queue="q")
    pending = asyncio.create_task(producer.publish({"x": 2}, queue="q", timeout=5))
    await asyncio.sleep(0)
    memory.go_online()
    assert (await pending).attempts == 1


async def test_nack_is_a_typed_error(memory: MemoryBroker) -> None:
    producer = Producer(memory)
    await producer.declare("q")
    memory.nack_next()
    with pytest.raises(PublishNackedError):
        await producer.publish({"x": 1}, queue="q")


async def test_drop_connection_redelivers_unacked_marked_redelivered(memory: MemoryBroker) -> None:
    producer = Producer(memory)
    await producer.declare("q")
    gate = asyncio.Event()
    seen: list[tuple[str, bool]] = []
    consumer = Consumer(memory)

    @consumer.handler("q", concurrency=2)
    async def handle(message: Message[object]) -> None:
        seen.append((message.message_id, message.redelivered))
        await gate.wait()

    async with consumer:
        await producer.publish({"x": 1}, queue="q", message_id="a")
        await wait_for(lambda: len(seen) == 1)
        await memory.drop_connection()
        await wait_for(lambda: len(seen) == 2)
        gate.set()
    assert seen == [("a", False), ("a", True)]


async def test_delivery_limit_dead_letters(memory: MemoryBroker) -> None:
    spec = QueueSpec("q", delivery_limit=1)
    await memory.declare(spec)
    await Producer(memory).publish({"x": 1}, queue="q")
    for _ in range(2):
        d = await memory.get("q")
        assert d is not None
        await d.reject(requeue=True)
    assert [m["headers"]["x-death"][0]["reason"] for m in memory.messages(spec.dlq)] == [
        "delivery_limit"
    ]


async def test_delays_follow_a_manual_clock() -> None:
    clock = ManualClock()
    async with MemoryBroker(clock=clock) as broker:
        producer = Producer(broker)
        await producer.declare("q")
        await producer.publish({"x": 1}, queue="q", delay=60)
        assert (await broker.queue_stats("q")).messages == 0
        await wait_for(lambda: clock.sleepers == 1)
        await clock.advance(61)
        await wait_for(lambda: _ready(broker))


async def _ready(broker: MemoryBroker) -> bool:
    return (await broker.queue_stats("q")).messages == 1


async def test_foreign_messages_with_odd_headers_and_no_id_are_handled(
    memory: MemoryBroker,
) -> None:
    from scalekit.queue import OutgoingMessage

    producer = Producer(memory)
    await producer.declare("odd")
    seen: list[Message[object]] = []
    consumer = Consumer(memory)

    @consumer.handler("odd")
    async def handle(message: Message[object]) -> None:
        seen.append(message)

    async with consumer:
        await memory.publish(
            OutgoingMessage(
                routing_key="odd",
                body=b'{"a": 1}',
                message_id="",
                headers={"x-sk-attempt": "not-a-number", "x-other": b"\x00\xff"},
                content_type="application/json",
            ),
            mandatory=True,
            timeout=1,
        )
        await wait_for(lambda: len(seen) == 1)
    [message] = seen
    assert message.attempt == 1
    assert message.body == {"a": 1}
    assert len(message.message_id) == 32  # derived from the body, stable across redeliveries


async def test_in_flight_window_is_bounded_and_a_full_window_times_out(
    memory: MemoryBroker,
) -> None:
    producer = Producer(memory, max_in_flight=2, publish_timeout=0.5)
    await producer.declare("w")
    memory.lose_confirms(2)  # two publishes hang, holding the whole window
    hung = [asyncio.create_task(producer.publish({"i": i}, queue="w")) for i in range(2)]
    await wait_for(lambda: producer.stats().in_flight == 2)
    with pytest.raises(PublishTimeoutError, match="slot"):
        await producer.publish({"i": 3}, queue="w", timeout=0.05)
    for task in hung:
        with pytest.raises(PublishTimeoutError):
            await task
    assert producer.stats().in_flight == 0
    assert (await producer.publish({"i": 4}, queue="w")).attempts == 1


async def test_publish_arguments_are_validated(memory: MemoryBroker) -> None:
    from scalekit.errors import ConfigurationError

    producer = Producer(memory)
    with pytest.raises(ConfigurationError):
        await producer.publish({"x": 1})
    with pytest.raises(ConfigurationError):
        await producer.publish({"x": 1}, queue="a", routing_key="b")
    with pytest.raises(ConfigurationError):
        await producer.publish({"x": 1}, routing_key="a", delay=1)
    with pytest.raises(ConfigurationError):
        Producer(memory, max_in_flight=0)
