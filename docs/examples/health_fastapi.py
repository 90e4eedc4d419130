# requires: redis, postgres
"""FastAPI: readiness over Redis and PostgreSQL, liveness over the process, drain on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
import httpx
import redis.asyncio as redis
from fastapi import FastAPI

from scalekit.health import (
    HealthApp,
    HealthRegistry,
    health_lifespan,
    postgres_query,
    redis_ping,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
HEALTH_TOKEN = os.environ.get("HEALTH_TOKEN", "change-me")  # from a secret in production

registry = HealthRegistry()  # readiness fails until the lifespan marks it started


@contextlib.asynccontextmanager
async def resources(app: FastAPI) -> AsyncIterator[None]:
    # The application's own lifespan opens the clients; the checks borrow them.
    app.state.redis = redis.Redis.from_url(REDIS_URL)
    app.state.db = await asyncpg.create_pool(DATABASE_URL, min_size=1, max_size=4)
    registry.add("redis:responseTime", redis_ping(app.state.redis), timeout=0.5)
    registry.add("postgres:responseTime", postgres_query(app.state.db), timeout=0.5)
    try:
        yield
    finally:
        await app.state.db.close()
        await app.state.redis.aclose()


# health_lifespan runs ours, then marks the registry started; on shutdown it fails
# readiness first and waits drain_delay before our pools close.
app = FastAPI(lifespan=health_lifespan(registry, resources, drain_delay=0.1))
app.mount("/health", HealthApp(registry, token=HEALTH_TOKEN, version="1.4.2"))


@app.get("/orders/{order_id}")
async def order(order_id: int) -> dict[str, int]:
    return {"id": order_id}


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),  # what uvicorn does at startup and shutdown
        httpx.AsyncClient(transport=transport, base_url="http://pod") as client,
    ):
        ready = await client.get("/health/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.headers["content-type"] == "application/health+json"
        assert ready.json() == {"status": "pass"}  # public: no details

        detailed = await client.get(
            "/health/readyz", headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}
        )
        checks = detailed.json()["checks"]
        assert set(checks) == {"redis:responseTime", "postgres:responseTime"}
        print("readyz:", detailed.json())

        live = await client.get("/health/livez")
        assert live.status_code == 200

        registry.begin_shutdown()  # what SIGTERM / lifespan shutdown does
        assert (await client.get("/health/readyz")).status_code == 503
        assert (await client.get("/health/livez")).status_code == 200  # not restarted
        assert (await client.get("/orders/7")).json() == {"id": 7}  # still serving
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
