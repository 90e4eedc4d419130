"""Dedup stores on the real Redis and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from scalekit.queue import (
    Claim,
    Consumer,
    MemoryBroker,
    Message,
    PostgresInbox,
    Producer,
    RedisDedupStore,
)
from tests.queue.conftest import wait_for
from tests.support.processes import RedisProcess


@pytest.fixture
async def redis_client(redis_url: str, unique: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    keys = [k async for k in client.scan_iter(f"{unique}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.mark.redis
async def test_redis_claim_done_busy_release(redis_client: aioredis.Redis, unique: str) -> None:
    store = RedisDedupStore(redis_client, prefix=f"{unique}:", ttl=60, lease=60)
    assert await store.claim("m", "t1") is Claim.NEW
    assert await store.claim("m", "t2") is Claim.BUSY
    await store.release("m", "t2")  # not ours: no effect
    assert await store.claim("m", "t3") is Claim.BUSY
    await store.release("m", "t1")
    assert await store.claim("m", "t4") is Claim.NEW
    await store.complete("m", "t4")
    assert await store.claim("m", "t5") is Claim.DONE
    assert 0 < await redis_client.pttl(f"{unique}:m") <= 60_000


@pytest.mark.postgres
async def test_postgres_inbox_runs_handler_once_in_its_transaction(
    postgres_dsn: str, unique: str
) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    assert pool is not None
    inbox = PostgresInbox(pool, table=f"{unique}_inbox", consumer="billing")
    await inbox.create_table()
    await pool.execute(f"CREATE TABLE {unique}_effects (message_id text)")
    try:
        calls = {"n": 0}

        async def charge(message: Message[dict[str, int]], conn: asyncpg.Connection) -> None:
            calls["n"] += 1
            await conn.execute(f"INSERT INTO {unique}_effects VALUES ($1)", message.message_id)
            if message.body.get("fail") and calls["n"] == 1:
                raise RuntimeError("rolled back with the inbox row")

        async with MemoryBroker() as broker:
            producer = Producer(broker)
            await producer.declare("billing")
            consumer = Consumer(broker)
            consumer.add_handler("billing", inbox.idempotent(charge))
            async with consumer:
                await producer.publish({"fail": 1}, queue="billing", message_id="pay-1")
                await producer.publish({"ok": 1}, queue="billing", message_id="pay-1")
                await wait_for(lambda: consumer.workers["billing"].succeeded == 2, timeout=20)
        rows = await pool.fetch(f"SELECT message_id FROM {unique}_effects")
        assert [r["message_id"] for r in rows] == ["pay-1"]  # the failed attempt rolled back
    finally:
        await pool.execute(f"DROP TABLE {unique}_effects; DROP TABLE {inbox.table}")
        await pool.close()


@pytest.mark.redis
async def test_consumer_holds_messages_while_redis_dedup_is_down_then_processes_once(
    redis_process: RedisProcess, unique: str
) -> None:
    client = aioredis.from_url(redis_process.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    store = RedisDedupStore(client, prefix=f"{unique}:", ttl=60, lease=30)
    processed: list[str] = []
    try:
        async with MemoryBroker() as broker:
            producer = Producer(broker)
            await producer.declare("jobs")
            consumer = Consumer(broker, dedup=store)

            @consumer.handler("jobs")
            async def handle(message: Message[object]) -> None:
                processed.append(message.message_id)

            async with consumer:
                redis_process.stop()
                await producer.publish({"x": 1}, queue="jobs", message_id="while-down")
                # not processed blind, not lost: parked in a delay queue
                await wait_for(lambda: bool(broker.messages("jobs.delay.1000")))
                assert processed == []
                redis_process.start()
                await wait_for(lambda: processed == ["while-down"], timeout=20)
                await producer.publish({"x": 1}, queue="jobs", message_id="while-down")
                await wait_for(lambda: consumer.workers["jobs"].duplicates == 1)
        assert processed == ["while-down"]
    finally:
        await client.aclose()
