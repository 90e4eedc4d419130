"""Failure tests on the real RabbitMQ, with a FaultProxy between the client and the broker."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as aioredis

from scalekit.errors import BrokerUnavailableError, PublishTimeoutError
from scalekit.queue import (
    Consumer,
    Message,
    Producer,
    QueueSpec,
    RabbitMQBroker,
    RedisDedupStore,
)
from scalekit.testing import FaultProxy
from tests.queue.conftest import cleanup_rabbit, wait_for

pytestmark = pytest.mark.rabbitmq


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


@pytest.fixture
async def proxy(amqp_url: str) -> AsyncIterator[FaultProxy]:
    parts = urlsplit(amqp_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as p:
        yield p


@pytest.fixture
async def proxied(amqp_url: str, proxy: FaultProxy, unique: str) -> AsyncIterator[RabbitMQBroker]:
    broker = RabbitMQBroker(
        _via(amqp_url, proxy.port),
        exchange=unique,
        reconnect_initial=0.05,
        reconnect_max=0.3,
        connect_timeout=2.0,
        heartbeat=2,
    )
    await broker.connect()
    try:
        yield broker
    finally:
        await proxy.restore()
        await cleanup_rabbit(broker)
        await broker.aclose()


async def test_messages_survive_repeated_connection_cuts_none_lost_dedup_removes_duplicates(
    proxied: RabbitMQBroker, proxy: FaultProxy, redis_url: str, unique: str
) -> None:
    n = 5000
    queue = f"{unique}.chaos"
    producer = Producer(proxied, publish_timeout=20.0, max_in_flight=512)
    await producer.declare(queue)
    client = aioredis.from_url(redis_url)
    dedup = RedisDedupStore(client, prefix=f"{unique}:dedup:", ttl=300, lease=30)
    effects: list[int] = []
    consumer = Consumer(proxied, dedup=dedup)

    @consumer.handler(queue, concurrency=32, prefetch=128)
    async def handle(message: Message[dict[str, int]]) -> None:
        effects.append(message.body["i"])

    try:
        async with consumer:
            publishing = asyncio.gather(
                *(producer.publish({"i": i}, queue=queue, message_id=f"m{i}") for i in range(n))
            )
            for _ in range(3):  # cut every connection (publisher and consumer) mid-stream
                await wait_for(lambda: producer.stats().confirmed > 0 or publishing.done())
                await asyncio.sleep(0.15)
                await proxy.cut()
            outcomes = await publishing
            assert len(outcomes) == n
            worker = consumer.workers[queue]
            await wait_for(lambda: len(set(effects)) == n, timeout=30, what="all consumed")
            await wait_for(lambda: _depth(proxied, queue, 0), timeout=10)
        assert proxied.reconnects >= 1
        assert set(effects) == set(range(n))
        # a redelivered or republished copy is skipped by the dedup store, not processed again
        assert len(effects) == n, f"{len(effects) - n} duplicates processed"
        republished = producer.stats().republished
        print(f"reconnects={proxied.reconnects} republished={republished} dup={worker.duplicates}")
    finally:
        keys = [k async for k in client.scan_iter(f"{unique}:dedup:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _depth(broker: RabbitMQBroker, queue: str, n: int) -> bool:
    return (await broker.queue_stats(queue)).messages == n


async def test_publish_while_broker_unreachable_fails_within_timeout(
    proxied: RabbitMQBroker, proxy: FaultProxy, unique: str
) -> None:
    queue = f"{unique}.down"
    producer = Producer(proxied, publish_timeout=0.5)
    await producer.declare(queue)
    await proxy.refuse()
    await proxy.cut()
    await wait_for(lambda: not proxied.is_connected)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(PublishTimeoutError):
        await producer.publish({"x": 1}, queue=queue)
    assert loop.time() - started < 5  # bounded (raw aio-pika can wait forever)
    await proxy.restore()
    await proxied.wait_connected(10)
    outcome = await producer.publish({"x": 2}, queue=queue)
    assert outcome.attempts == 1


async def test_publish_waits_out_a_short_outage_and_succeeds(
    proxied: RabbitMQBroker, proxy: FaultProxy, unique: str
) -> None:
    queue = f"{unique}.blip"
    producer = Producer(proxied, publish_timeout=15.0)
    await producer.declare(queue)
    await proxy.refuse()
    await proxy.cut()
    await wait_for(lambda: not proxied.is_connected)
    pending = asyncio.create_task(producer.publish({"x": 1}, queue=queue, message_id="blip"))
    await asyncio.sleep(0.2)
    assert not pending.done()
    await proxy.restore()
    outcome = await pending
    assert outcome.message_id == "blip"
    await wait_for(lambda: _depth(proxied, queue, 1))


async def test_confirm_that_never_comes_raises_publish_timeout(
    proxied: RabbitMQBroker, proxy: FaultProxy, unique: str
) -> None:
    queue = f"{unique}.hung"
    producer = Producer(proxied, publish_timeout=0.5)
    await producer.declare(queue)
    proxy.blackhole()
    with pytest.raises(PublishTimeoutError):
        await producer.publish({"x": 1}, queue=queue)
    await proxy.restore()
    await proxy.cut()  # the hung connection is replaced
    await proxied.wait_connected(10)
    await producer.publish({"x": 2}, queue=queue, timeout=10)


async def test_connect_to_unreachable_node_raises_broker_unavailable(unique: str) -> None:
    from tests.support.processes import free_port

    broker = RabbitMQBroker(
        f"amqp://guest:guest@127.0.0.1:{free_port()}/", exchange=unique, connect_timeout=0.3
    )
    with pytest.raises(BrokerUnavailableError, match=r"127\.0\.0\.1"):
        await broker.connect()
    await broker.aclose()


async def test_second_node_used_when_first_is_down(amqp_url: str, unique: str) -> None:
    from tests.support.processes import free_port

    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    broker = RabbitMQBroker([dead, amqp_url], exchange=unique, reconnect_initial=0.01)
    await broker.connect()
    try:
        producer = Producer(broker)
        await producer.declare(f"{unique}.nodes")
        await producer.publish({"x": 1}, queue=f"{unique}.nodes")
    finally:
        await cleanup_rabbit(broker)
        await broker.aclose()


async def test_queue_stats_are_fresh_not_cached(rabbit: RabbitMQBroker, unique: str) -> None:
    queue = f"{unique}.depth"
    producer = Producer(rabbit)
    await producer.declare(queue)
    assert (await rabbit.queue_stats(queue)).messages == 0
    await asyncio.gather(*(producer.publish({"i": i}, queue=queue) for i in range(7)))
    await wait_for(lambda: _depth(rabbit, queue, 7))
    assert (await rabbit.queue_stats(queue)).consumers == 0


_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from scalekit.queue import Consumer, Message, RabbitMQBroker

    async def main(url, exchange, queue):
        async with RabbitMQBroker(url, exchange=exchange) as broker:
            consumer = Consumer(broker)

            @consumer.handler(queue, concurrency=10, prefetch=10)
            async def handle(message: Message[dict]) -> None:
                print(message.message_id, flush=True)
                await asyncio.Event().wait()  # never finishes: killed mid-batch

            async with consumer:
                print("ready", flush=True)
                await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_sigkilled_consumer_unacked_messages_are_redelivered_to_another(
    rabbit: RabbitMQBroker, amqp_url: str, unique: str
) -> None:
    queue = f"{unique}.kill"
    producer = Producer(rabbit)
    await producer.declare(queue)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _WORKER,
        amqp_url,
        unique,
        queue,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"ready"
        await asyncio.gather(
            *(producer.publish({"i": i}, queue=queue, message_id=f"k{i}") for i in range(25))
        )
        taken = set()
        while len(taken) < 10:
            taken.add((await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip())
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    seen: dict[str, bool] = {}
    consumer = Consumer(rabbit)

    @consumer.handler(queue)
    async def handle(message: Message[object]) -> None:
        seen[message.message_id] = message.redelivered

    async with consumer:
        await wait_for(lambda: len(seen) == 25, timeout=20)
    assert set(seen) == {f"k{i}" for i in range(25)}
    assert {m for m, redelivered in seen.items() if redelivered} == taken


async def test_consumer_resumes_after_connection_cut(
    proxied: RabbitMQBroker, proxy: FaultProxy, unique: str
) -> None:
    queue = f"{unique}.resume"
    producer = Producer(proxied, publish_timeout=15)
    await producer.declare(queue)
    seen: set[str] = set()
    consumer = Consumer(proxied)

    @consumer.handler(queue)
    async def handle(message: Message[object]) -> None:
        seen.add(message.message_id)

    async with consumer:
        await producer.publish({"x": 1}, queue=queue, message_id="before")
        await wait_for(lambda: "before" in seen)
        await proxy.cut()
        await producer.publish({"x": 2}, queue=queue, message_id="after")
        await wait_for(lambda: "after" in seen)


async def test_delivery_limit_dead_letters_a_message_that_keeps_coming_back(
    rabbit: RabbitMQBroker, unique: str
) -> None:
    spec = QueueSpec(f"{unique}.limit", delivery_limit=2)
    await rabbit.declare(spec)
    producer = Producer(rabbit)
    await producer.publish({"x": 1}, queue=spec.name, message_id="crashy")
    for _ in range(3):  # three consumers "crash" holding it
        delivery = None
        for _ in range(200):
            delivery = await rabbit.get(spec.name)
            if delivery is not None:
                break
            await asyncio.sleep(0.02)
        assert delivery is not None
        await delivery.reject(requeue=True)
    await wait_for(lambda: _depth(rabbit, spec.dlq, 1))
    from scalekit.queue import DeadLetters

    [letter] = await DeadLetters(rabbit, spec).inspect()
    assert letter.message_id == "crashy"
    assert letter.reason == "delivery_limit"
