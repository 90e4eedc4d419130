# requires: redis, redis_cluster, postgres, postgres_replica, rabbitmq
"""Every built-in check in one registry, with the health+json document it produces."""

from __future__ import annotations

import asyncio
import enum
import json
import os

import aio_pika
import asyncpg
import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from scalekit.health import (
    HealthApp,
    HealthRegistry,
    breaker_state,
    postgres_query,
    postgres_replica_lag,
    rabbitmq_connection,
    rabbitmq_queue_depth,
    redis_cluster_state,
    redis_ping,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CLUSTER = os.environ.get("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPLICA_URL = os.environ.get("DATABASE_REPLICA_URL", "postgresql://postgres@127.0.0.1:5433/test")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + ".orders"


class State(enum.Enum):  # any breaker with a .state works (scalekit's, pybreaker, purgatory)
    CLOSED = "closed"
    OPEN = "open"


class PaymentsBreaker:
    state = State.OPEN


async def main() -> None:
    cache = redis.Redis.from_url(REDIS_URL)
    nodes = [ClusterNode(h, int(p)) for h, p in (n.rsplit(":", 1) for n in CLUSTER.split(","))]
    cluster = RedisCluster(startup_nodes=nodes)
    pool = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=2)
    broker = await aio_pika.connect(AMQP_URL)
    channel = await broker.channel()
    await channel.declare_queue(QUEUE)
    try:
        registry = HealthRegistry(started=True)
        registry.add("redis:responseTime", redis_ping(cache, warn_after=0.1))
        registry.add("redis-cluster:slots", redis_cluster_state(cluster))
        registry.add("postgres:responseTime", postgres_query(pool))
        # replica lag from SQL on the replica; a callable returning seconds works too
        registry.add(
            "postgres-replica:lag",
            postgres_replica_lag(REPLICA_URL, warn_after=5, fail_after=30),
            critical=False,  # a lagging replica degrades, the primary still serves
        )
        registry.add("rabbitmq:connection", rabbitmq_connection(broker))
        registry.add(
            "orders-queue:messages",
            rabbitmq_queue_depth(broker, QUEUE, warn_above=1_000, fail_above=50_000),
        )
        registry.add("payments:breaker", breaker_state(PaymentsBreaker()))

        report = await registry.run("readiness")
        statuses = {c.name: c.status.value for c in report.checks}
        assert statuses["redis-cluster:slots"] == "pass"
        assert statuses["postgres:responseTime"] == "pass"
        assert statuses["orders-queue:messages"] == "pass"
        assert statuses["payments:breaker"] == "warn"  # open breaker: degraded, still ready
        assert report.status.value == "warn"
        assert report.healthy

        body = await HealthApp(registry, details=True).respond("/readyz")
        assert body.status_code == 200
        print(json.dumps(json.loads(body.body), indent=2))
    finally:
        await channel.queue_delete(QUEUE)
        await broker.close()
        await pool.close()
        await cluster.aclose()
        await cache.aclose()


if __name__ == "__main__":
    asyncio.run(main())
