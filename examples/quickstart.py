"""scalekit quickstart (`make demo`): a five-minute tour of the primitives.

It uses the real services when they answer on loopback (Redis on 6379, RabbitMQ on 5672) and
in-memory backends with the same semantics when they do not, and says which it picked.
``SCALEKIT_DEMO_MEMORY=1`` forces the in-memory backends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

from scalekit.cache import Backend, Cache, MemoryBackend, RedisBackend
from scalekit.health import HealthApp, HealthRegistry, redis_ping
from scalekit.queue import (
    Broker,
    Consumer,
    MemoryBroker,
    Message,
    Producer,
    QueueSpec,
    RabbitMQBroker,
)
from scalekit.resilience import BreakerState, CircuitBreaker, CountWindow, Fallback, Pipeline, Retry
from scalekit.sharding import JumpHash, ShardRouter

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RUN = uuid.uuid4().hex[:8]  # namespaces this run's keys and queues


def reachable(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (SCALEKIT_DEMO_MEMORY=1 says no)."""
    if os.environ.get("SCALEKIT_DEMO_MEMORY") == "1":
        return False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def say(title: str) -> None:
    """Print a section title."""
    print(f"\n== {title}")


async def resilience_tour() -> None:
    say("resilience: a failing downstream, a breaker and a fallback")
    calls = 0

    async def recommendations(user_id: int) -> list[str]:
        nonlocal calls
        calls += 1
        raise ConnectionError("recommender is down")

    breaker = CircuitBreaker("recommender", window=CountWindow(10), minimum_calls=4)
    guarded = Pipeline(Fallback(["bestsellers"]), Retry(attempts=2, wait_initial=0.001), breaker)(
        recommendations
    )
    answers = [await guarded(7) for _ in range(5)]
    print(f"answers: {answers[-1]} (fallback) x{len(answers)}; downstream called {calls} times")
    print(f"breaker is {breaker.state.value}: later calls fail fast, no downstream traffic")
    assert breaker.state is BreakerState.OPEN


async def cache_tour(backend: Backend) -> None:
    say("cache: 1,000 concurrent requests for a cold key, one database read")
    reads = 0

    async def load_user() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)  # the slow query
        return {"id": 42, "name": "Ada"}

    async with Cache(backend, namespace=f"demo:{RUN}", default_ttl=30) as cache:
        users = await asyncio.gather(
            *(cache.get_or_load("user:42", load_user) for _ in range(1000))
        )
        stats = cache.stats()
        print(f"{len(users)} answers, {reads} database read, {stats.coalesced} coalesced")
        await cache.clear()


def sharding_tour() -> None:
    say("sharding: stable routing and what moves when you add a shard")
    router = ShardRouter({f"pg{i}": f"postgresql://db{i}/app" for i in range(4)}, JumpHash())
    print(
        f"user:42 -> {router.shard_for('user:42')}; {{acme}}:order:1 and {{acme}}:invoice:9 "
        f"-> {router.shard_for('{acme}:order:1')} (same tenant, same shard)"
    )
    grown = router.evolve({**dict(router.shards), "pg4": "postgresql://db4/app"})
    plan = router.plan(grown, keys=range(50_000))
    print(f"4 -> 5 shards moves {plan.moved_fraction:.1%} of keys (ideal 20%), all to pg4")


async def queue_tour(broker: Broker) -> None:
    say("queue: the request enqueues and returns; a worker does the work")
    queue = f"demo.{RUN}.emails"
    done = asyncio.Event()
    sent: list[str] = []
    async with broker:
        producer = Producer(broker, publish_timeout=5)
        await producer.declare(queue)
        consumer = Consumer(broker)

        @consumer.handler(queue, concurrency=4)
        async def send_email(message: Message[dict[str, str]]) -> None:
            sent.append(message.body["to"])
            if len(sent) == 3:
                done.set()

        async with consumer:
            for to in ("ada@example.com", "grace@example.com", "alan@example.com"):
                outcome = await producer.publish({"to": to}, queue=queue)  # confirmed
            await asyncio.wait_for(done.wait(), 10)
        print(f"3 jobs confirmed (last id {outcome.message_id[:8]}…), handled: {sorted(sent)}")
        await broker.delete(QueueSpec(queue))  # the demo leaves nothing behind


async def health_tour(redis_client: Any) -> None:
    say("health: readiness that checks dependencies, liveness that does not")
    registry = HealthRegistry(started=True)
    if redis_client is not None:
        registry.add("redis:responseTime", redis_ping(redis_client))
    app = HealthApp(registry)
    for path in ("/livez", "/readyz"):
        response = await app.respond(path)
        print(f"GET {path} -> {response.status_code}")
    registry.begin_shutdown()
    response = await app.respond("/readyz")
    print(
        f"after begin_shutdown(): GET /readyz -> {response.status_code} (drain), "
        f"/livez -> {(await app.respond('/livez')).status_code}"
    )


async def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="   [log] %(name)s: %(message)s")
    redis_up, rabbit_up = reachable(6379), reachable(5672)
    print(f"Redis on 127.0.0.1:6379: {'yes, using it' if redis_up else 'no, using memory'}")
    print(f"RabbitMQ on 127.0.0.1:5672: {'yes, using it' if rabbit_up else 'no, using memory'}")
    redis_client = None
    if redis_up:
        import redis.asyncio as redis

        redis_client = redis.Redis.from_url(REDIS_URL)
    try:
        await resilience_tour()
        await cache_tour(RedisBackend(redis_client) if redis_client else MemoryBackend())
        sharding_tour()
        await queue_tour(RabbitMQBroker(AMQP_URL) if rabbit_up else MemoryBroker())
        await health_tour(redis_client)
    finally:
        if redis_client is not None:
            await redis_client.aclose()
    print("\nDone. Next: docs/getting-started.md, or `make test`.")


if __name__ == "__main__":
    asyncio.run(main())
