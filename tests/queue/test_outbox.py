"""Transactional outbox on the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from scalekit.queue import (
    Consumer,
    Message,
    Outbox,
    OutboxMessage,
    OutboxRelay,
    Producer,
    RabbitMQBroker,
)
from tests.queue.conftest import wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


@pytest.fixture
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=6)
    assert p is not None
    yield p
    await p.close()


@pytest.fixture
async def outbox(pool: asyncpg.Pool, unique: str) -> AsyncIterator[Outbox]:
    box = Outbox(table=f"{unique}_outbox")
    await box.create_table(pool)
    await pool.execute(f"CREATE TABLE {unique}_orders (id int PRIMARY KEY)")
    yield box
    await pool.execute(f"DROP TABLE IF EXISTS {box.table}; DROP TABLE IF EXISTS {unique}_orders")


async def test_rolled_back_transaction_publishes_nothing_committed_one_publishes(
    pool: asyncpg.Pool, outbox: Outbox, rabbit: RabbitMQBroker, unique: str
) -> None:
    queue = f"{unique}.orders"
    producer = Producer(rabbit)
    await producer.declare(queue)
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):  # noqa: PT012
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {unique}_orders VALUES (1)")
                await outbox.add(conn, OutboxMessage({"order": 1}, queue=queue))
                raise RuntimeError("the request failed after the write")
        async with conn.transaction():
            await conn.execute(f"INSERT INTO {unique}_orders VALUES (2)")
            mid = await outbox.add(conn, OutboxMessage({"order": 2}, queue=queue))
    relay = OutboxRelay(outbox, pool, producer)
    assert await relay.drain() == 1
    assert await outbox.pending(pool) == 0
    got = await rabbit.get(queue)
    assert got is not None
    assert got.message_id == mid
    assert got.body == b'{"order":2}'
    await got.ack()
    assert await rabbit.get(queue) is None


async def test_crash_between_commit_and_publish_is_published_by_next_relay(
    pool: asyncpg.Pool, outbox: Outbox, rabbit: RabbitMQBroker, unique: str
) -> None:
    queue = f"{unique}.crash"
    producer = Producer(rabbit)
    await producer.declare(queue)
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, OutboxMessage({"n": 1}, queue=queue, message_id="row-1"))
    # a relay dies mid-batch: its transaction (publish done, mark not) rolls back
    crashed = OutboxRelay(outbox, pool, producer)
    crashed._mark = "SELECT pg_terminate_backend(pg_backend_pid())"
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await crashed.relay_once()
    assert await outbox.pending(pool) == 1
    relay = OutboxRelay(outbox, pool, producer)
    assert await relay.drain() == 1
    ids = []
    while (d := await rabbit.get(queue)) is not None:
        ids.append(d.message_id)
        await d.ack()
    assert ids == ["row-1", "row-1"]  # at-least-once, same id: the consumer deduplicates


async def test_two_relays_keep_per_key_order_and_publish_each_row_once(
    pool: asyncpg.Pool, outbox: Outbox, rabbit: RabbitMQBroker, unique: str
) -> None:
    queue = f"{unique}.ordered"
    producer = Producer(rabbit)
    await producer.declare(queue)
    async with pool.acquire() as conn, conn.transaction():
        for i in range(30):
            await outbox.add(
                conn, OutboxMessage({"key": f"k{i % 3}", "seq": i}, queue=queue, key=f"k{i % 3}")
            )
    seen: list[dict[str, object]] = []
    consumer = Consumer(rabbit)

    @consumer.handler(queue, concurrency=1, prefetch=1)
    async def handle(message: Message[dict[str, object]]) -> None:
        seen.append(message.body)

    relays = [OutboxRelay(outbox, pool, producer, batch_size=5) for _ in range(2)]
    async with consumer:
        await asyncio.gather(*(r.drain() for r in relays))
        await wait_for(lambda: len(seen) == 30)
    assert sum(r.published for r in relays) == 30
    for k in ("k0", "k1", "k2"):
        seqs = [m["seq"] for m in seen if m["key"] == k]
        assert seqs == sorted(seqs)
        assert len(seqs) == 10


async def test_relay_wakes_on_notify(
    pool: asyncpg.Pool, outbox: Outbox, rabbit: RabbitMQBroker, unique: str
) -> None:
    queue = f"{unique}.notify"
    producer = Producer(rabbit)
    await producer.declare(queue)
    relay = OutboxRelay(outbox, pool, producer, poll_interval=3600)  # polling would never fire
    async with relay:
        await wait_for(lambda: relay._listener is not None)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, OutboxMessage({"x": 1}, queue=queue))
        await wait_for(lambda: relay.published == 1)


async def test_unroutable_row_is_kept_and_retried_later(
    pool: asyncpg.Pool, outbox: Outbox, rabbit: RabbitMQBroker, unique: str
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, OutboxMessage({"x": 1}, queue=f"{unique}.missing"))
    producer = Producer(rabbit)
    await producer.declare(f"{unique}.exists")  # the exchange exists, no queue for the key
    relay = OutboxRelay(outbox, pool, producer)
    assert await relay.relay_once() == 0
    row = await pool.fetchrow(f"SELECT attempts, last_error FROM {outbox.table}")
    assert row is not None
    assert row["attempts"] == 1
    assert "UnroutableError" in row["last_error"]
    assert await outbox.pending(pool) == 1


async def test_relay_falls_back_to_polling_when_its_listen_connection_dies(
    pool: asyncpg.Pool, outbox: Outbox, rabbit: RabbitMQBroker, unique: str
) -> None:
    queue = f"{unique}.poll"
    producer = Producer(rabbit)
    await producer.declare(queue)
    relay = OutboxRelay(outbox, pool, producer, poll_interval=0.1)
    async with relay:
        await wait_for(lambda: relay._listener is not None)
        assert relay._listener is not None
        pid = relay._listener.get_server_pid()
        await pool.execute("SELECT pg_terminate_backend($1)", pid)
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, OutboxMessage({"x": 1}, queue=queue))
        await wait_for(lambda: relay.published == 1)
        # and it listens again on a fresh connection
        await wait_for(lambda: relay._listener_alive())
        assert relay._listener is not None
        assert relay._listener.get_server_pid() != pid


async def test_rows_wait_while_the_broker_is_unreachable_then_go_out(
    pool: asyncpg.Pool, outbox: Outbox, amqp_url: str, unique: str
) -> None:
    from urllib.parse import urlsplit

    from scalekit.testing import FaultProxy
    from tests.queue.conftest import cleanup_rabbit

    parts = urlsplit(amqp_url)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672) as proxy:
        url = amqp_url.replace(f":{parts.port or 5672}", f":{proxy.port}")
        broker = RabbitMQBroker(url, exchange=unique, reconnect_initial=0.05, reconnect_max=0.2)
        await broker.connect()
        try:
            queue = f"{unique}.outage"
            producer = Producer(broker, publish_timeout=0.3)
            await producer.declare(queue)
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, OutboxMessage({"x": 1}, queue=queue, message_id="o-1"))
            await proxy.refuse()
            await proxy.cut()
            relay = OutboxRelay(outbox, pool, producer, retry_delay=0.05)
            assert await relay.relay_once() == 0  # publish timed out: the row stays
            assert await outbox.pending(pool) == 1
            await proxy.restore()
            await broker.wait_connected(10)
            await wait_for(lambda: _drained(relay), timeout=10)
            got = await broker.get(queue)
            assert got is not None
            assert got.message_id == "o-1"
            await got.ack()
        finally:
            await proxy.restore()
            await cleanup_rabbit(broker)
            await broker.aclose()


async def _drained(relay: OutboxRelay) -> bool:
    await relay.relay_once()
    return relay.published == 1
