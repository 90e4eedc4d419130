"""Autoscaler, queue metrics and lifecycle helpers on the MemoryBroker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

from scalekit.queue import (
    Autoscaler,
    Consumer,
    MemoryBroker,
    Message,
    Producer,
    QueueMetrics,
    lifespan,
)
from scalekit.testing import ManualClock
from tests.queue.conftest import wait_for


async def test_autoscaler_grows_under_backlog_and_shrinks_when_idle(memory: MemoryBroker) -> None:
    producer = Producer(memory)
    await producer.declare("work")
    gate = asyncio.Event()
    consumer = Consumer(memory)

    @consumer.handler("work", concurrency=2, prefetch=32)
    async def handle(message: Message[object]) -> None:
        await gate.wait()

    worker = consumer.workers["work"]
    scaler = Autoscaler(worker, min_concurrency=1, max_concurrency=16)
    async with consumer:
        await asyncio.gather(*(producer.publish({"i": i}, queue="work") for i in range(100)))
        await wait_for(lambda: worker.stats().in_flight == 2)
        assert await scaler.step() == 3
        assert await scaler.step() == 5
        await wait_for(lambda: worker.stats().in_flight == 5)
        for _ in range(5):
            await scaler.step()
        assert worker.concurrency == 16
        gate.set()
        await wait_for(lambda: worker.stats().succeeded == 100)
        assert await scaler.step() == 12
        while worker.concurrency > 1:
            await scaler.step()
        assert worker.concurrency == 1


async def test_autoscaler_backs_off_when_handlers_slow_down(memory: MemoryBroker) -> None:
    producer = Producer(memory)
    await producer.declare("slow")
    consumer = Consumer(memory)
    gate = asyncio.Event()

    @consumer.handler("slow", concurrency=8, prefetch=16)
    async def handle(message: Message[object]) -> None:
        await gate.wait()

    worker = consumer.workers["slow"]
    worker._latencies.extend([5.0] * 10)  # recent handlers took 5 s
    scaler = Autoscaler(worker, min_concurrency=2, latency_limit=1.0)
    async with consumer:
        await asyncio.gather(*(producer.publish({"i": i}, queue="slow") for i in range(40)))
        assert await scaler.step() == 6
        gate.set()


async def test_autoscaler_runs_on_its_interval() -> None:
    clock = ManualClock()
    async with MemoryBroker(clock=clock) as broker:
        consumer = Consumer(broker)

        @consumer.handler("idle", concurrency=8)
        async def handle(message: Message[object]) -> None:
            pass

        async with consumer:
            scaler = Autoscaler(consumer.workers["idle"], interval=10, clock=clock)
            async with scaler:
                await wait_for(lambda: consumer.workers["idle"].concurrency == 6)
                await wait_for(lambda: clock.sleepers >= 1)
                await clock.advance(10)
                await wait_for(lambda: consumer.workers["idle"].concurrency == 5)


async def test_queue_metrics_reads_depth_and_net_rate() -> None:
    clock = ManualClock()
    async with MemoryBroker(clock=clock) as broker:
        producer = Producer(broker)
        await producer.declare("m")
        metrics = QueueMetrics(broker, ["m"], clock=clock)
        first = await metrics.sample()
        assert (first.messages, first.net_rate) == (0, None)
        await asyncio.gather(*(producer.publish({"i": i}, queue="m") for i in range(20)))
        await clock.advance(2)
        second = await metrics.sample()
        assert second.messages == 20
        assert second.net_rate == 10.0


async def test_lifespan_starts_and_drains_in_order(memory: MemoryBroker) -> None:
    consumer = Consumer(memory)
    seen: list[str] = []

    @consumer.handler("life")
    async def handle(message: Message[dict[str, str]]) -> None:
        seen.append(message.body["x"])

    async with lifespan(consumer)(object()):
        await Producer(memory).publish({"x": "a"}, queue="life")
        await wait_for(lambda: seen == ["a"])
        assert consumer.workers["life"].stopping is False
    assert consumer.workers["life"].stopping is True


async def test_run_stops_gracefully_on_sigterm(memory: MemoryBroker) -> None:
    consumer = Consumer(memory)

    @consumer.handler("sig")
    async def handle(message: Message[object]) -> None:
        pass

    running = asyncio.create_task(consumer.run())
    await wait_for(lambda: "sig" in consumer.workers and consumer._started)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 10)
    assert consumer.workers["sig"].stopping


_TRACE = textwrap.dedent(
    """
    import asyncio
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from scalekit.queue import Consumer, MemoryBroker, Message, Producer

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    async def main():
        async with MemoryBroker() as broker:
            producer = Producer(broker)
            await producer.declare("t")
            done = asyncio.Event()
            consumer = Consumer(broker)

            @consumer.handler("t")
            async def handle(message: Message[object]) -> None:
                assert "traceparent" in message.headers
                done.set()

            async with consumer:
                with trace.get_tracer("app").start_as_current_span("request"):
                    await producer.publish({"x": 1}, queue="t")
                await asyncio.wait_for(done.wait(), 5)
        spans = {s.name: s for s in exporter.get_finished_spans()}
        send, process, request = spans["send t"], spans["process t"], spans["request"]
        assert send.context.trace_id == request.context.trace_id
        assert process.context.trace_id == request.context.trace_id
        assert process.parent.span_id == send.context.span_id
        assert process.attributes["messaging.destination.name"] == "t"
        print("ok")

    asyncio.run(main())
    """
)


def test_consumer_span_continues_the_producer_trace() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-c", _TRACE], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
