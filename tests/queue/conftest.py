"""Fixtures of the queue tests: a broker per backend, cleaned up after each test."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from scalekit.queue import Broker, MemoryBroker, QueueSpec, RabbitMQBroker


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 15.0,
    what: str = "",
) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def cleanup_rabbit(broker: RabbitMQBroker) -> None:
    with contextlib.suppress(Exception):
        await broker.wait_connected(5)
        for spec in list(broker._specs.values()):
            await broker.delete(spec)
        await broker.delete_exchange()


@pytest.fixture
async def rabbit(amqp_url: str, unique: str) -> AsyncIterator[RabbitMQBroker]:
    broker = RabbitMQBroker(amqp_url, exchange=unique, reconnect_initial=0.05, reconnect_max=0.5)
    await broker.connect()
    try:
        yield broker
    finally:
        await cleanup_rabbit(broker)
        await broker.aclose()


@pytest.fixture
async def memory() -> AsyncIterator[MemoryBroker]:
    async with MemoryBroker() as broker:
        yield broker


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
async def broker(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[Broker]:
    """The behavioural suite runs on both backends."""
    if request.param == "memory":
        async with MemoryBroker() as mem:
            yield mem
        return
    amqp_url = request.getfixturevalue("amqp_url")
    rmq = RabbitMQBroker(amqp_url, exchange=unique, reconnect_initial=0.05, reconnect_max=0.5)
    await rmq.connect()
    try:
        yield rmq
    finally:
        await cleanup_rabbit(rmq)
        await rmq.aclose()


@pytest.fixture
def qname(unique: str) -> str:
    return f"{unique}.q"


@pytest.fixture
def spec(qname: str) -> QueueSpec:
    return QueueSpec(qname)
