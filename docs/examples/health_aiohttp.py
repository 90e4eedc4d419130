# requires: redis
"""aiohttp: the same probes as aiohttp routes, served on a real socket."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import redis.asyncio as redis
from aiohttp import web

from scalekit.health import HealthApp, HealthRegistry, redis_ping
from scalekit.health.aiohttp import add_aiohttp_routes

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def build() -> tuple[web.Application, HealthRegistry]:
    registry = HealthRegistry()
    app = web.Application()
    add_aiohttp_routes(app, HealthApp(registry), prefix="/health")

    async def clients(app: web.Application):  # type: ignore[no-untyped-def]
        client = redis.Redis.from_url(REDIS_URL)
        registry.add("redis:responseTime", redis_ping(client))
        registry.mark_started()
        yield
        registry.begin_shutdown()
        await client.aclose()

    app.cleanup_ctx.append(clients)
    return app, registry


async def main() -> None:
    app, registry = build()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/health/readyz") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "application/health+json"
                assert await resp.json(content_type=None) == {"status": "pass"}
            registry.begin_shutdown()
            async with http.get("/health/readyz") as resp:
                assert resp.status == 503
            async with http.get("/health/livez") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
