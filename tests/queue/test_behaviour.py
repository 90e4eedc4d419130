"""The behavioural suite: the same expectations on MemoryBroker and on the real RabbitMQ."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from scalekit.errors import MessageTooLargeError, PublishTimeoutError, UnroutableError
from scalekit.queue import (
    Broker,
    Consumer,
    DeadLetters,
    MemoryDedupStore,
    Message,
    Producer,
    QueueSpec,
    RetryPolicy,
)
from tests.queue.conftest import wait_for

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2, jitter=0.5)


@dataclass
class Job:
    id: int
    name: str


async def test_publish_returns_confirmed_outcome_and_consumer_acks(
    broker: Broker, qname: str
) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    seen: list[Job] = []
    consumer = Consumer(broker)

    @consumer.handler(qname, concurrency=4, model=Job)
    async def handle(message: Message[Job]) -> None:
        seen.append(message.body)

    async with consumer:
        outcome = await producer.publish(Job(1, "a"), queue=qname, message_id="m-1")
        assert outcome.message_id == "m-1"
        assert outcome.attempts == 1
        assert outcome.routing_key == qname
        await wait_for(lambda: len(seen) == 1)
    assert seen == [Job(1, "a")]
    stats = await broker.queue_stats(qname)
    assert stats.messages == 0


async def test_many_concurrent_publishes_all_consumed_once(broker: Broker, qname: str) -> None:
    producer = Producer(broker, max_in_flight=64)
    await producer.declare(qname)
    seen: list[int] = []
    consumer = Consumer(broker)

    @consumer.handler(qname, concurrency=8)
    async def handle(message: Message[dict[str, int]]) -> None:
        seen.append(message.body["i"])

    async with consumer:
        results = await asyncio.gather(
            *(producer.publish({"i": i}, queue=qname) for i in range(500))
        )
        assert len({r.message_id for r in results}) == 500
        await wait_for(lambda: len(seen) == 500)
    assert sorted(seen) == list(range(500))
    assert producer.stats().confirmed == 500
    assert producer.stats().in_flight == 0


async def test_unroutable_message_is_an_error(broker: Broker, qname: str) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    with pytest.raises(UnroutableError):
        await producer.publish({"x": 1}, routing_key=qname + ".nobody")


async def test_oversized_message_is_refused_before_sending(broker: Broker, qname: str) -> None:
    producer = Producer(broker, max_message_bytes=100)
    await producer.declare(qname)
    with pytest.raises(MessageTooLargeError):
        await producer.publish(b"x" * 101, queue=qname)
    assert (await broker.queue_stats(qname)).messages == 0


async def test_unserializable_body_raises_type_error(broker: Broker, qname: str) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    with pytest.raises(TypeError, match="JSON"):
        await producer.publish(object(), queue=qname)


async def test_failing_handler_retried_then_dead_lettered_with_headers(
    broker: Broker, qname: str
) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    attempts: list[int] = []
    consumer = Consumer(broker, retry=FAST_RETRY)

    @consumer.handler(qname)
    async def handle(message: Message[dict[str, int]]) -> None:
        attempts.append(message.attempt)
        raise RuntimeError("downstream said no")

    letters = DeadLetters(broker, qname)
    async with consumer:
        await producer.publish({"order": 7}, queue=qname, message_id="poison-1")
        await wait_for(lambda: letters.count(), what="dead letter arrives")
    assert attempts == [1, 2, 3]
    [letter] = await letters.inspect()
    assert letter.message_id == "poison-1"
    assert letter.reason == "failed"
    assert letter.attempts == 3
    assert letter.error == "RuntimeError: downstream said no"
    assert letter.routing_key == qname
    assert letter.queue == qname
    # inspect leaves it there (the broker's count catches up with the requeue)
    await wait_for(lambda: _count(letters, 1))


async def test_handler_succeeding_on_retry_is_acked(broker: Broker, qname: str) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    attempts: list[int] = []
    consumer = Consumer(broker, retry=FAST_RETRY)

    @consumer.handler(qname)
    async def handle(message: Message[object]) -> None:
        attempts.append(message.attempt)
        if message.attempt < 2:
            raise ConnectionError("flaky")

    async with consumer:
        await producer.publish({"x": 1}, queue=qname)
        await wait_for(lambda: consumer.workers[qname].succeeded == 1)
    assert attempts == [1, 2]
    assert await DeadLetters(broker, qname).count() == 0


async def test_undecodable_message_goes_straight_to_dlq_and_consumer_keeps_going(
    broker: Broker, qname: str
) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    seen: list[Job] = []
    consumer = Consumer(broker, retry=FAST_RETRY)

    @consumer.handler(qname, model=Job)
    async def handle(message: Message[Job]) -> None:
        seen.append(message.body)

    async with consumer:
        await producer.publish({"id": 1}, queue=qname)  # missing a field
        await producer.publish({"id": 2, "name": "b", "evil": "x"}, queue=qname)  # extra field
        await producer.publish(b"{not json", queue=qname, headers={})
        await producer.publish(Job(3, "ok"), queue=qname)
        await wait_for(lambda: len(seen) == 1)
        letters = DeadLetters(broker, qname)
        await wait_for(lambda: _count(letters, 3))
    dead = await DeadLetters(broker, qname).inspect()
    assert {d.reason for d in dead} == {"undecodable"}
    assert all(d.attempts == 1 for d in dead)
    assert seen == [Job(3, "ok")]


async def _count(letters: DeadLetters, n: int) -> bool:
    return await letters.count() == n


async def test_invalid_json_with_json_content_type_is_dead_lettered(
    broker: Broker, qname: str
) -> None:
    from scalekit.queue import OutgoingMessage

    producer = Producer(broker)
    await producer.declare(qname)
    consumer = Consumer(broker)
    called: list[object] = []

    @consumer.handler(qname)
    async def handle(message: Message[object]) -> None:
        called.append(message.body)

    async with consumer:
        await producer.send(
            OutgoingMessage(
                routing_key=qname,
                body=b"\xff\xfe{",
                message_id="bad",
                content_type="application/json",
            )
        )
        letters = DeadLetters(broker, qname)
        await wait_for(lambda: _count(letters, 1))
    assert called == []
    [letter] = await DeadLetters(broker, qname).inspect()
    assert letter.reason == "undecodable"
    assert "JSON" in (letter.error or "")


async def test_delayed_publish_arrives_after_the_delay(broker: Broker, qname: str) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    seen: list[tuple[str, int]] = []
    consumer = Consumer(broker)

    @consumer.handler(qname)
    async def handle(message: Message[dict[str, str]]) -> None:
        seen.append((message.body["k"], message.attempt))

    async with consumer:
        await producer.publish({"k": "later"}, queue=qname, delay=0.3)
        await producer.publish({"k": "now"}, queue=qname)
        await wait_for(lambda: len(seen) == 2)
    assert seen == [("now", 1), ("later", 1)]


async def test_replay_sends_dead_letters_back_filtered(broker: Broker, qname: str) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    fail = {"on": True}
    done: list[str] = []
    consumer = Consumer(broker, retry=RetryPolicy(max_attempts=1))

    @consumer.handler(qname)
    async def handle(message: Message[dict[str, str]]) -> None:
        if fail["on"]:
            raise ValueError(message.body["kind"])
        done.append(message.body["kind"])

    letters = DeadLetters(broker, qname)
    async with consumer:
        for kind in ("a", "b", "a"):
            await producer.publish({"kind": kind}, queue=qname)
        await wait_for(lambda: _count(letters, 3))
        fail["on"] = False
        replayed = await letters.replay(where=lambda d: d.error == "ValueError: a", rate=1000)
        assert replayed == 2
        await wait_for(lambda: len(done) == 2)
        await wait_for(lambda: _count(letters, 1))
        [left] = await letters.inspect()
        assert left.error == "ValueError: b"
        assert await letters.purge() == 1
    assert done == ["a", "a"]
    await wait_for(lambda: _count(letters, 0))


async def test_dedup_store_skips_a_redelivered_message(broker: Broker, qname: str) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    processed: list[str] = []
    consumer = Consumer(broker, dedup=MemoryDedupStore())

    @consumer.handler(qname)
    async def handle(message: Message[object]) -> None:
        processed.append(message.message_id)

    async with consumer:
        for _ in range(3):  # e.g. republished after a connection loss
            await producer.publish({"x": 1}, queue=qname, message_id="same-id")
        await producer.publish({"x": 2}, queue=qname, message_id="other-id")
        await wait_for(lambda: consumer.workers[qname].duplicates == 2)
        await wait_for(lambda: len(processed) == 2)
    assert sorted(processed) == ["other-id", "same-id"]


async def test_failed_handler_releases_dedup_claim_so_retry_runs(
    broker: Broker, qname: str
) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    attempts: list[int] = []
    consumer = Consumer(broker, dedup=MemoryDedupStore(), retry=FAST_RETRY)

    @consumer.handler(qname)
    async def handle(message: Message[object]) -> None:
        attempts.append(message.attempt)
        if message.attempt == 1:
            raise RuntimeError("once")

    async with consumer:
        await producer.publish({"x": 1}, queue=qname)
        await wait_for(lambda: consumer.workers[qname].succeeded == 1)
    assert attempts == [1, 2]


async def test_graceful_shutdown_finishes_in_flight_and_requeues_the_rest(
    broker: Broker, qname: str
) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    release = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []
    consumer = Consumer(broker)

    @consumer.handler(qname, concurrency=2, prefetch=10)
    async def handle(message: Message[dict[str, int]]) -> None:
        started.append(message.body["i"])
        await release.wait()
        finished.append(message.body["i"])

    await consumer.start()
    await asyncio.gather(*(producer.publish({"i": i}, queue=qname) for i in range(10)))
    await wait_for(lambda: len(started) == 2)
    stopping = asyncio.create_task(consumer.stop(timeout=10))
    await wait_for(lambda: consumer.workers[qname]._stopping)
    release.set()
    cancelled = await stopping
    assert cancelled == 0
    assert sorted(finished) == sorted(started)
    assert len(finished) == 2
    # the 8 never started are back in the queue for another consumer
    await wait_for(lambda: _depth(broker, qname, 8))

    rest: list[int] = []
    second = Consumer(broker)

    @second.handler(qname)
    async def again(message: Message[dict[str, int]]) -> None:
        rest.append(message.body["i"])

    async with second:
        await wait_for(lambda: len(rest) == 8)
    assert sorted(rest + finished) == list(range(10))


async def _depth(broker: Broker, queue: str, n: int) -> bool:
    return (await broker.queue_stats(queue)).messages == n


async def test_shutdown_timeout_cancels_and_requeues_stuck_handler(
    broker: Broker, qname: str
) -> None:
    producer = Producer(broker)
    await producer.declare(qname)
    started = asyncio.Event()
    consumer = Consumer(broker)

    @consumer.handler(qname, concurrency=1)
    async def handle(message: Message[object]) -> None:
        started.set()
        await asyncio.Event().wait()  # hangs forever

    await consumer.start()
    await producer.publish({"x": 1}, queue=qname, message_id="stuck")
    await started.wait()
    assert await consumer.stop(timeout=0.05) == 1
    await wait_for(lambda: _depth(broker, qname, 1))


async def test_publish_fails_within_timeout_when_queue_missing_on_delay(
    broker: Broker, qname: str
) -> None:
    producer = Producer(broker, publish_timeout=1.0)
    await producer.declare(qname)
    with pytest.raises(UnroutableError):
        await producer.publish({"x": 1}, routing_key="nowhere")
    assert producer.stats().failed == 1


async def test_queue_spec_redeclare_is_idempotent(broker: Broker, qname: str) -> None:
    spec = QueueSpec(qname)
    await broker.declare(spec)
    await broker.declare(spec)
    assert (await broker.queue_stats(qname)).messages == 0


_ = PublishTimeoutError
