"""Built-in checks against the real services: up, stopped, refused, hung."""

from __future__ import annotations

import asyncio
import enum
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from scalekit.errors import ConfigurationError
from scalekit.health import (
    READINESS,
    CheckOutcome,
    EventLoopMonitor,
    HealthRegistry,
    Status,
    breaker_state,
    event_loop_lag,
    postgres_query,
    postgres_replica_lag,
    rabbitmq_connection,
    rabbitmq_queue_depth,
    redis_cluster_state,
    redis_ping,
    sharded_database,
)
from scalekit.health.checks import BuiltinCheck
from scalekit.testing import FaultProxy
from tests.support.processes import RedisProcess


async def run_one(check: Any, *, timeout: float = 2.0, critical: bool = True) -> CheckOutcome:
    reg = HealthRegistry(started=True, event_loop_check=False, cache_for=0)
    reg.add("dep:check", check, timeout=timeout, critical=critical)
    report = await reg.run(READINESS)
    return report.checks[0]


def via_proxy(url: str, proxy: FaultProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return urlunsplit(parts._replace(netloc=netloc_new))


def target(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


def test_importing_health_imports_no_driver() -> None:
    code = (
        "import sys, scalekit.health, scalekit.health.checks;"
        "import scalekit.health.aiohttp, scalekit.health.grpc;"
        "bad = {'redis', 'asyncpg', 'aio_pika', 'aiohttp', 'grpc'} & set(sys.modules);"
        "assert not bad, bad"
    )
    src = str(Path(__file__).resolve().parents[2] / "src")
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, env={**os.environ, "PYTHONPATH": src}
    )


# -- Redis ----------------------------------------------------------------------------------------


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.redis
async def test_redis_ping_passes_with_latency(redis_client: Any) -> None:
    outcome = await run_one(redis_ping(redis_client))
    assert outcome.status is Status.PASS
    assert outcome.observed_unit == "ms"
    assert isinstance(outcome.observed_value, float)
    assert outcome.component_type == "datastore"


@pytest.mark.redis
async def test_redis_ping_warns_when_slow(redis_client: Any) -> None:
    outcome = await run_one(redis_ping(redis_client, warn_after=0.0))
    assert outcome.status is Status.WARN
    assert "warn above" in (outcome.output or "")


@pytest.mark.redis
async def test_redis_stopped_then_restarted(redis_process: RedisProcess) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_process.url)
    try:
        assert (await run_one(redis_ping(client))).status is Status.PASS
        redis_process.stop()
        down = await run_one(redis_ping(client))
        assert down.status is Status.FAIL
        assert down.error is not None
        assert "ConnectionError" in down.error or "Connection" in (down.output or "")
        redis_process.start()
        assert (await run_one(redis_ping(client))).status is Status.PASS
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_hung_times_out(redis_url: str) -> None:
    import redis.asyncio as redis

    async with FaultProxy(*target(redis_url)) as proxy:
        client = redis.Redis(host=proxy.host, port=proxy.port)
        try:
            assert (await run_one(redis_ping(client))).status is Status.PASS
            proxy.blackhole()
            outcome = await run_one(redis_ping(client), timeout=0.2)
            assert outcome.status is Status.FAIL
            assert outcome.output == "timed out after 0.2s"
        finally:
            await proxy.cut()
            await client.aclose()


@pytest.mark.redis_cluster
async def test_redis_cluster_state_and_ping(redis_cluster_nodes: list[tuple[str, int]]) -> None:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    cluster = RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in redis_cluster_nodes])
    try:
        state = await run_one(redis_cluster_state(cluster))
        assert state.status is Status.PASS
        assert state.observed_value == 16384
        assert state.observed_unit == "slots"
        assert (await run_one(redis_ping(cluster))).status is Status.PASS
    finally:
        await cluster.aclose()


class FakeCluster:
    def __init__(self, info: dict[str, str]) -> None:
        self.info = info

    async def cluster_info(self) -> dict[str, str]:
        return self.info


async def test_cluster_state_fail_and_pfail() -> None:
    failed = FakeCluster(
        {"cluster_state": "fail", "cluster_slots_ok": "10000", "cluster_slots_fail": "6384"}
    )
    outcome = await run_one(redis_cluster_state(failed))
    assert outcome.status is Status.FAIL
    assert "6384 slots failed" in (outcome.output or "")
    pfail = FakeCluster(
        {"cluster_state": "ok", "cluster_slots_ok": "16000", "cluster_slots_pfail": "384"}
    )
    assert (await run_one(redis_cluster_state(pfail))).status is Status.WARN


def test_redis_checks_reject_wrong_clients() -> None:
    with pytest.raises(TypeError):
        redis_ping(object())
    with pytest.raises(TypeError):
        redis_cluster_state(object())
    with pytest.raises(ConfigurationError):
        redis_ping(FakeRedis(), warn_after=-1)


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.mark.postgres
async def test_postgres_query_with_pool_connection_and_dsn(postgres_dsn: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        for source in (pool, conn, postgres_dsn):
            outcome = await run_one(postgres_query(source))
            assert outcome.status is Status.PASS, outcome
            assert outcome.observed_unit == "ms"
    finally:
        await conn.close()
        await pool.close()


@pytest.mark.postgres
async def test_postgres_query_error_is_a_fail(postgres_dsn: str) -> None:
    outcome = await run_one(postgres_query(postgres_dsn, "SELECT * FROM no_such_table_xyz"))
    assert outcome.status is Status.FAIL
    assert "no_such_table_xyz" in (outcome.output or "")


@pytest.mark.postgres
async def test_sharded_database_warns_for_some_shards_down_and_fails_for_all(
    postgres_dsn: str,
) -> None:
    import asyncpg

    from scalekit.sharding import ShardedDatabase

    async with (
        FaultProxy(*target(postgres_dsn)) as first,
        FaultProxy(*target(postgres_dsn)) as second,
        FaultProxy(*target(postgres_dsn)) as third,
    ):
        proxies = {"s0": first, "s1": second, "s2": third}
        pools = {
            name: await asyncpg.create_pool(via_proxy(postgres_dsn, proxy), min_size=0, max_size=2)
            for name, proxy in proxies.items()
        }
        db = ShardedDatabase(pools, timeout=2.0)
        try:
            outcome = await run_one(sharded_database(db, timeout=1.0))
            assert outcome.status is Status.PASS
            assert (outcome.observed_value, outcome.observed_unit) == (3, "shards")

            await second.refuse()
            await second.cut()
            outcome = await run_one(sharded_database(db, timeout=1.0))
            assert outcome.status is Status.WARN  # only s1's keys fail: no instance is better
            assert outcome.observed_value == 2
            assert "1 of 3 down: s1" in (outcome.output or "")
            strict = await run_one(sharded_database(db, timeout=1.0, max_down=0))
            assert strict.status is Status.FAIL

            third.blackhole()  # a hung shard counts as down once its timeout passes
            for proxy in (first, third):
                await proxy.refuse()
                await proxy.cut()
            outcome = await run_one(sharded_database(db, timeout=0.5))
            assert outcome.status is Status.FAIL
            assert outcome.observed_value == 0
        finally:
            for pool in pools.values():
                pool.terminate()


def test_sharded_database_refuses_what_it_cannot_check() -> None:
    with pytest.raises(TypeError, match="ShardedDatabase"):
        sharded_database(object())

    class Fake:
        shards = ("a",)

        async def scatter(self, *args: Any, **kwargs: Any) -> Any: ...

    with pytest.raises(ConfigurationError):
        sharded_database(Fake(), max_down=-1)


@pytest.mark.postgres
async def test_postgres_refused_fails_with_redacted_output(postgres_dsn: str) -> None:
    async with FaultProxy(*target(postgres_dsn)) as proxy:
        dsn = via_proxy(postgres_dsn, proxy)
        assert (await run_one(postgres_query(dsn))).status is Status.PASS
        await proxy.refuse()
        outcome = await run_one(postgres_query(dsn))
        assert outcome.status is Status.FAIL
        assert outcome.output is not None
        password = urlsplit(postgres_dsn).password
        if password:
            assert password not in outcome.output


@pytest.mark.postgres
async def test_postgres_pool_cut_and_hung(postgres_dsn: str) -> None:
    import asyncpg

    async with FaultProxy(*target(postgres_dsn)) as proxy:
        pool = await asyncpg.create_pool(via_proxy(postgres_dsn, proxy), min_size=1, max_size=1)
        try:
            check = postgres_query(pool)
            assert (await run_one(check)).status is Status.PASS
            proxy.blackhole()
            hung = await run_one(check, timeout=0.3)
            assert hung.status is Status.FAIL
            assert hung.output == "timed out after 0.3s"
            await proxy.restore()
            await proxy.cut()
            await proxy.refuse()
            cut = await run_one(check)
            assert cut.status is Status.FAIL
            await proxy.restore()
            await until_status(check, Status.PASS)  # the pool reconnects
        finally:
            pool.terminate()


async def until_status(check: Any, status: Status, attempts: int = 50) -> None:
    for _ in range(attempts):
        if (await run_one(check)).status is status:
            return
        await asyncio.sleep(0.05)  # polling a condition with a bounded number of attempts
    raise AssertionError(f"check never reached {status}")


@pytest.mark.postgres_replica
async def test_replica_lag_from_sql(postgres_replica_dsn: str) -> None:
    outcome = await run_one(
        postgres_replica_lag(postgres_replica_dsn, warn_after=60, fail_after=600)
    )
    assert outcome.status is Status.PASS, outcome
    assert outcome.observed_unit == "s"
    assert isinstance(outcome.observed_value, float)


@pytest.mark.postgres_replica
async def test_replica_lag_from_replica_pool(postgres_replica_dsn: str) -> None:
    import asyncpg

    pool = await asyncpg.create_pool(postgres_replica_dsn, min_size=1, max_size=1)
    try:
        outcome = await run_one(postgres_replica_lag(pool, warn_after=60, fail_after=600))
        assert outcome.status is Status.PASS, outcome
    finally:
        await pool.close()


@pytest.mark.postgres
async def test_replica_lag_on_a_primary_warns(postgres_dsn: str) -> None:
    outcome = await run_one(postgres_replica_lag(postgres_dsn))
    assert outcome.status is Status.WARN
    assert "not a replica" in (outcome.output or "")


@pytest.mark.parametrize(
    ("lag", "status"),
    [(0.0, Status.PASS), (5.0, Status.PASS), (5.5, Status.WARN), (31, Status.FAIL)],
)
async def test_replica_lag_from_callable(lag: float, status: Status) -> None:
    async def measure() -> float:
        return lag

    outcome = await run_one(postgres_replica_lag(measure, warn_after=5.0, fail_after=30.0))
    assert outcome.status is status
    assert outcome.observed_value == lag


async def test_replica_lag_callable_returning_garbage_fails() -> None:
    async def measure() -> Any:
        return "soon"

    outcome = await run_one(postgres_replica_lag(measure))
    assert outcome.status is Status.FAIL
    assert "not seconds" in (outcome.output or "")


def test_postgres_checks_reject_bad_sources() -> None:
    with pytest.raises(TypeError):
        postgres_query(42)
    with pytest.raises(ConfigurationError):
        postgres_query("redis://localhost")
    with pytest.raises(TypeError):
        postgres_replica_lag(42)
    with pytest.raises(ConfigurationError):
        postgres_replica_lag(lambda: 1.0, warn_after=10, fail_after=5)  # type: ignore[arg-type,return-value]


# -- RabbitMQ -------------------------------------------------------------------------------------


@pytest.fixture
async def amqp(amqp_url: str) -> AsyncIterator[Any]:
    import aio_pika

    connection = await aio_pika.connect(amqp_url)
    yield connection
    await connection.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_connection_and_url(amqp: Any, amqp_url: str) -> None:
    assert (await run_one(rabbitmq_connection(amqp))).status is Status.PASS
    assert (await run_one(rabbitmq_connection(amqp_url, warn_after=60))).status is Status.PASS


@pytest.mark.rabbitmq
async def test_rabbitmq_refused_and_closed(amqp_url: str) -> None:
    import aio_pika

    async with FaultProxy(*target(amqp_url)) as proxy:
        url = via_proxy(amqp_url, proxy)
        connection = await aio_pika.connect(url)
        try:
            check = rabbitmq_connection(connection)
            assert (await run_one(check)).status is Status.PASS
            await proxy.refuse()
            await proxy.cut()
            cut = await run_one(check)
            assert cut.status is Status.FAIL
            refused = await run_one(rabbitmq_connection(url))
            assert refused.status is Status.FAIL
        finally:
            await connection.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_hung_times_out(amqp_url: str) -> None:
    import aio_pika

    async with FaultProxy(*target(amqp_url)) as proxy:
        connection = await aio_pika.connect(via_proxy(amqp_url, proxy))
        try:
            proxy.blackhole()
            outcome = await run_one(rabbitmq_connection(connection), timeout=0.3)
            assert outcome.output == "timed out after 0.3s"
        finally:
            await proxy.cut()
            await connection.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_queue_depth_thresholds(amqp: Any, unique: str) -> None:
    import aio_pika

    channel = await amqp.channel()
    queue = await channel.declare_queue(unique, auto_delete=False)
    try:
        for i in range(5):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % i), routing_key=unique)
        ok = await run_one(rabbitmq_queue_depth(amqp, unique, warn_above=10))
        assert (ok.status, ok.observed_value, ok.observed_unit) == (Status.PASS, 5, "messages")
        warn = await run_one(rabbitmq_queue_depth(amqp, unique, warn_above=3, fail_above=10))
        assert warn.status is Status.WARN
        fail = await run_one(rabbitmq_queue_depth(amqp, unique, warn_above=3, fail_above=4))
        assert fail.status is Status.FAIL
        assert f"queue {unique!r} depth is 5 messages" in (fail.output or "")
        lonely = await run_one(rabbitmq_queue_depth(amqp, unique, min_consumers=1))
        assert lonely.status is Status.WARN
        # the depth is read fresh on every run (no stale cached declare)
        await queue.purge()
        assert (await run_one(rabbitmq_queue_depth(amqp, unique))).observed_value == 0
        # and the connection is still usable afterwards
        assert (await run_one(rabbitmq_connection(amqp))).status is Status.PASS
    finally:
        await queue.delete(if_unused=False, if_empty=False)
        await channel.close()


@pytest.mark.rabbitmq
async def test_rabbitmq_missing_queue_fails_and_is_not_created(amqp: Any, unique: str) -> None:
    outcome = await run_one(rabbitmq_queue_depth(amqp, unique))
    assert outcome.status is Status.FAIL
    assert "NOT_FOUND" in (outcome.output or "") or "404" in (outcome.output or "")
    assert (await run_one(rabbitmq_queue_depth(amqp, unique))).status is Status.FAIL
    assert (await run_one(rabbitmq_connection(amqp))).status is Status.PASS


def test_rabbitmq_checks_reject_bad_arguments() -> None:
    with pytest.raises(ConfigurationError):
        rabbitmq_connection("redis://x")
    with pytest.raises(TypeError):
        rabbitmq_connection(42)
    with pytest.raises(ConfigurationError):
        rabbitmq_queue_depth("amqp://x", "")
    with pytest.raises(ConfigurationError):
        rabbitmq_queue_depth("amqp://x", "q" * 256)
    with pytest.raises(ConfigurationError):
        rabbitmq_queue_depth("amqp://x", "q", warn_above=10, fail_above=1)


# -- breakers and the event loop ------------------------------------------------------------------


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class NamedState(enum.Enum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class Breaker:
    def __init__(self, state: Any) -> None:
        self.state = state


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (State.CLOSED, Status.PASS),
        (State.OPEN, Status.WARN),
        (State.HALF_OPEN, Status.WARN),
        (NamedState.CLOSED, Status.PASS),
        (NamedState.OPEN, Status.WARN),
        ("closed", Status.PASS),
        ("OPEN", Status.WARN),
        ("half-open", Status.WARN),
        ("forced_open", Status.WARN),
        ("weird", Status.WARN),
    ],
)
async def test_breaker_state(state: Any, status: Status) -> None:
    outcome = await run_one(breaker_state(Breaker(state)))
    assert outcome.status is status
    assert outcome.component_type == "component"


async def test_breaker_state_follows_the_breaker_and_open_can_fail() -> None:
    breaker = Breaker(State.CLOSED)
    check = breaker_state(breaker, open_status="fail")
    assert (await run_one(check)).status is Status.PASS
    breaker.state = State.OPEN
    outcome = await run_one(check)
    assert (outcome.status, outcome.observed_value) == (Status.FAIL, "open")
    # registered non-critical, an open breaker still only degrades readiness
    assert (await run_one(check, critical=False)).effective_status is Status.WARN


def test_breaker_state_needs_a_state() -> None:
    with pytest.raises(TypeError):
        breaker_state(object())  # type: ignore[arg-type]


async def test_event_loop_lag_passes_on_an_idle_loop() -> None:
    outcome = await run_one(event_loop_lag())
    assert outcome.status is Status.PASS
    assert outcome.component_type == "system"


async def test_event_loop_monitor_sees_a_blocked_loop() -> None:
    async with EventLoopMonitor(interval=0.01, window=50) as monitor:
        await until_samples(monitor, 1)
        time.sleep(0.2)  # noqa: ASYNC251 - blocking the loop is the condition under test
        await until_samples(monitor, 3)
        assert monitor.max_lag >= 0.1
        outcome = await run_one(event_loop_lag(monitor=monitor, warn_after=0.05))
        assert outcome.status is Status.WARN
        failing = await run_one(event_loop_lag(monitor=monitor, warn_after=0.01, fail_after=0.05))
        assert failing.status is Status.FAIL
    assert monitor._task is None


async def until_samples(monitor: EventLoopMonitor, n: int) -> None:
    start = monitor.samples
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while monitor.samples < min(start + n, 50):
        assert loop.time() < deadline
        await asyncio.sleep(0.005)


def test_event_loop_arguments() -> None:
    with pytest.raises(ConfigurationError):
        EventLoopMonitor(interval=0)
    with pytest.raises(ConfigurationError):
        EventLoopMonitor(window=0)
    with pytest.raises(ConfigurationError):
        event_loop_lag(warn_after=2, fail_after=1)


def test_builtin_check_repr() -> None:
    assert "redis ping" in repr(redis_ping(FakeRedis()))
    assert isinstance(redis_ping(FakeRedis()), BuiltinCheck)


class FakeRedis:
    async def ping(self) -> bool:
        return True


@pytest.mark.rabbitmq
async def test_rabbitmq_queue_depth_on_a_robust_connection_is_never_stale(
    amqp_url: str, unique: str
) -> None:
    import aio_pika

    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(unique)
        check = rabbitmq_queue_depth(connection, unique)
        try:
            published = 0
            for total in (2, 5):
                while published < total:
                    await channel.default_exchange.publish(aio_pika.Message(b"x"), unique)
                    published += 1
                assert (await run_one(check)).observed_value == total
            missing = rabbitmq_queue_depth(connection, unique + ".missing")
            assert (await run_one(missing)).status is Status.FAIL
            assert (await run_one(check)).observed_value == 5  # the connection survived the 404
        finally:
            await queue.delete(if_unused=False, if_empty=False)
            await channel.close()
    finally:
        await connection.close()
