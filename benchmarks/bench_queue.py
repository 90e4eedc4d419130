"""Queue benchmark: confirmed persistent publishing and manual-ack consuming on local RabbitMQ.

Runs raw aio-pika (awaiting each publish, and with 256 in flight), FastStream, scalekit, and two
reference rows (plain aiormq with 1024 publishes in flight, to a durable queue and to no queue at
all, which shows whether the broker's storage is the limit) in the same process run, repeats each case, and prints median messages/s, ratios and the client's CPU time per message (the broker runs
on the same machine, so client CPU saved is broker throughput gained). Client CPU includes
filling the queue for the consume cases.

    /work/venv/bin/python benchmarks/bench_queue.py [--quick] [--url amqp://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import aio_pika

from scalekit.queue import Consumer, Message, Producer, QueueSpec, RabbitMQBroker

BODY = {"user_id": 12345, "action": "resize", "path": "uploads/2024/img.png", "sizes": [64, 256]}
RAW = b'{"user_id":12345,"action":"resize","path":"uploads/2024/img.png","sizes":[64,256]}'


async def _fresh_queue(channel: aio_pika.abc.AbstractChannel, name: str, qtype: str) -> None:
    args = {"x-queue-type": "quorum"} if qtype == "quorum" else {}
    await channel.declare_queue(name, durable=True, arguments=args)


async def bench_aio_pika_each(url: str, n: int, qtype: str) -> float:
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    name = f"bench.{uuid.uuid4().hex[:8]}"
    await _fresh_queue(ch, name, qtype)
    t = time.perf_counter()
    for _ in range(n):
        await ch.default_exchange.publish(
            aio_pika.Message(RAW, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name
        )
    rate = n / (time.perf_counter() - t)
    await ch.queue_delete(name)
    await conn.close()
    return rate


async def bench_aio_pika_window(url: str, n: int, qtype: str) -> float:
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    name = f"bench.{uuid.uuid4().hex[:8]}"
    await _fresh_queue(ch, name, qtype)
    sem = asyncio.Semaphore(256)

    async def one() -> None:
        async with sem:
            await ch.default_exchange.publish(
                aio_pika.Message(RAW, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=name,
            )

    t = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    rate = n / (time.perf_counter() - t)
    await ch.queue_delete(name)
    await conn.close()
    return rate


async def _aiormq_workers(url: str, n: int, qtype: str, *, bound: bool, persistent: bool) -> float:
    """The best raw configuration we found: plain aiormq, 1024 workers each awaiting its own
    publish (exactly 1024 in flight, no semaphore), no aio-pika wrapper objects."""
    import aiormq

    conn = await aiormq.connect(url)
    ch = await conn.channel(publisher_confirms=True)
    name = f"bench.{uuid.uuid4().hex[:8]}"
    if bound:
        args = {"x-queue-type": "quorum"} if qtype == "quorum" else {}
        await ch.queue_declare(name, durable=True, arguments=args)
    props = aiormq.spec.Basic.Properties(delivery_mode=2 if persistent else 1)
    workers = 1024

    async def worker(count: int) -> None:
        for _ in range(count):
            await ch.basic_publish(RAW, routing_key=name, properties=props)

    t = time.perf_counter()
    await asyncio.gather(*(worker(n // workers + (i < n % workers)) for i in range(workers)))
    rate = n / (time.perf_counter() - t)
    if bound:
        await ch.queue_delete(name)
    await conn.close()
    return rate


async def bench_aiormq_best(url: str, n: int, qtype: str) -> float:
    return await _aiormq_workers(url, n, qtype, bound=True, persistent=True)


async def bench_aiormq_unrouted(url: str, n: int, qtype: str) -> float:
    # Confirmed but routed nowhere: nothing is enqueued or written to disk. When this rate is no
    # higher than the persistent one, storage (fsync) is not what limits publishing here.
    return await _aiormq_workers(url, n, qtype, bound=False, persistent=True)


async def bench_faststream(url: str, n: int, qtype: str) -> float:
    from faststream.rabbit import RabbitBroker

    name = f"bench.{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    await _fresh_queue(ch, name, qtype)
    broker = RabbitBroker(url, logger=None)
    await broker.connect()
    t = time.perf_counter()
    for _ in range(n):
        await broker.publish(BODY, queue=name, persist=True)
    rate = n / (time.perf_counter() - t)
    await broker.stop()
    await ch.queue_delete(name)
    await conn.close()
    return rate


async def bench_scalekit(url: str, n: int, qtype: str) -> float:
    name = f"bench.{uuid.uuid4().hex[:8]}"
    async with RabbitMQBroker(url, exchange=f"bench.{uuid.uuid4().hex[:6]}", queue_type=qtype) as b:  # type: ignore[arg-type]
        producer = Producer(b)
        spec = await producer.declare(QueueSpec(name, queue_type=qtype))  # type: ignore[arg-type]
        t = time.perf_counter()
        await asyncio.gather(*(producer.publish(BODY, queue=name) for _ in range(n)))
        rate = n / (time.perf_counter() - t)
        await b.delete(spec)
        await b.delete_exchange()
    return rate


async def _fill(url: str, name: str, n: int, qtype: str, exchange: str | None = None) -> None:
    async with RabbitMQBroker(url, exchange=exchange or "bench.fill", queue_type=qtype) as b:  # type: ignore[arg-type]
        producer = Producer(b)
        if exchange:
            await producer.declare(QueueSpec(name, queue_type=qtype))  # type: ignore[arg-type]
        from scalekit.queue import OutgoingMessage

        await asyncio.gather(
            *(
                producer.send(
                    OutgoingMessage(
                        routing_key=name,
                        exchange="",
                        body=RAW,
                        message_id=uuid.uuid4().hex,
                        content_type="application/json",
                    )
                )
                for _ in range(n)
            )
        )


async def consume_aio_pika(url: str, n: int, qtype: str) -> float:
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    await ch.set_qos(prefetch_count=256)
    name = f"bench.{uuid.uuid4().hex[:8]}"
    await _fresh_queue(ch, name, qtype)
    await _fill(url, name, n, qtype)
    queue = await ch.get_queue(name)
    done = asyncio.Event()
    count = 0

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal count
        await message.ack()
        count += 1
        if count == n:
            done.set()

    t = time.perf_counter()
    tag = await queue.consume(on_message)
    await done.wait()
    rate = n / (time.perf_counter() - t)
    await queue.cancel(tag)
    await ch.queue_delete(name)
    await conn.close()
    return rate


async def consume_faststream(url: str, n: int, qtype: str) -> float:
    from faststream.rabbit import RabbitBroker, RabbitQueue

    name = f"bench.{uuid.uuid4().hex[:8]}"
    conn = await aio_pika.connect(url)
    ch = await conn.channel()
    await _fresh_queue(ch, name, qtype)
    await _fill(url, name, n, qtype)
    broker = RabbitBroker(url, logger=None)
    done = asyncio.Event()
    count = 0
    args = {"x-queue-type": "quorum"} if qtype == "quorum" else {}

    @broker.subscriber(RabbitQueue(name, durable=True, arguments=args))
    async def handle(body: dict[str, object]) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    t = time.perf_counter()
    await broker.start()
    await done.wait()
    rate = n / (time.perf_counter() - t)
    await broker.stop()
    await ch.queue_delete(name)
    await conn.close()
    return rate


async def consume_scalekit(url: str, n: int, qtype: str) -> float:
    name = f"bench.{uuid.uuid4().hex[:8]}"
    exchange = f"bench.{uuid.uuid4().hex[:6]}"
    await _fill(url, name, n, qtype, exchange=exchange)
    async with RabbitMQBroker(url, exchange=exchange, queue_type=qtype) as b:  # type: ignore[arg-type]
        consumer = Consumer(b)
        done = asyncio.Event()
        count = 0

        @consumer.handler(QueueSpec(name, queue_type=qtype), concurrency=128, prefetch=256)  # type: ignore[arg-type]
        async def handle(message: Message[dict[str, object]]) -> None:
            nonlocal count
            count += 1
            if count == n:
                done.set()

        t = time.perf_counter()
        await consumer.start()
        await done.wait()
        rate = n / (time.perf_counter() - t)
        await consumer.stop()
        await b.delete(QueueSpec(name))
        await b.delete_exchange()
    return rate


Case = Callable[[str, int, str], Awaitable[float]]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    )
    ap.add_argument("--queue-type", default="classic", choices=["classic", "quorum"])
    args = ap.parse_args()
    n_slow, n_fast, repeat = (300, 2000, 1) if args.quick else (1500, 10000, 3)
    publish: list[tuple[str, Case, int]] = [
        ("aio-pika, await each publish", bench_aio_pika_each, n_slow),
        ("aio-pika, 256 in flight", bench_aio_pika_window, n_fast),
        ("FastStream, await each publish", bench_faststream, n_slow),
        ("scalekit Producer (window 512)", bench_scalekit, n_fast),
        ("raw aiormq, 1024 in flight (best raw)", bench_aiormq_best, n_fast),
        ("raw aiormq, 1024 in flight, no queue (no disk)", bench_aiormq_unrouted, n_fast),
    ]
    consume: list[tuple[str, Case, int]] = [
        ("aio-pika, manual ack, prefetch 256", consume_aio_pika, n_fast),
        ("FastStream subscriber (ack after handler)", consume_faststream, n_fast),
        ("scalekit Consumer (ack after handler)", consume_scalekit, n_fast),
    ]
    print(f"RabbitMQ, persistent messages, {args.queue_type} queues, confirms; median of {repeat}")
    for title, cases in (("publish (confirmed)", publish), ("consume (manual ack)", consume)):
        results: list[tuple[str, float, float]] = []
        for label, fn, n in cases:
            rates, cpus = [], []
            for _ in range(repeat):
                cpu = time.process_time()
                rates.append(await fn(args.url, n, args.queue_type))
                cpus.append((time.process_time() - cpu) / n * 1e6)
            results.append((label, statistics.median(rates), statistics.median(cpus)))
        base = results[0][1]
        print(f"\n{title:<45} {'msg/s':>10} {'vs first':>9} {'client CPU us/msg':>18}")
        for label, rate, cpu_us in results:
            print(f"{label:<45} {rate:>10,.0f} {rate / base:>8.2f}x {cpu_us:>18,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
