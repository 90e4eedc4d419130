"""HealthApp mounted in FastAPI, Starlette, Litestar and aiohttp, under a prefix."""

from __future__ import annotations

import httpx
import pytest

from scalekit.health import CheckResult, HealthApp, HealthRegistry
from scalekit.health.aiohttp import add_aiohttp_routes, aiohttp_handler
from scalekit.testing import ManualClock

TOKEN = "tok"


def health_app() -> HealthApp:
    reg = HealthRegistry(clock=ManualClock(), started=True)

    async def degraded() -> CheckResult:
        return CheckResult.warn("slow")

    reg.add("search:latency", degraded)
    return HealthApp(reg, token=TOKEN)


async def probe_all(transport: httpx.AsyncBaseTransport, prefix: str) -> None:
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        live = await c.get(f"{prefix}/livez")
        assert live.status_code == 200, live.text
        assert live.headers["content-type"] == "application/health+json"
        assert live.json() == {"status": "pass"}
        ready = await c.get(f"{prefix}/readyz")
        assert ready.json() == {"status": "warn"}
        detailed = await c.get(f"{prefix}/readyz", headers={"authorization": f"Bearer {TOKEN}"})
        assert "search:latency" in detailed.json()["checks"]
        head = await c.head(f"{prefix}/startupz")
        assert head.status_code == 200
        assert head.content == b""
        assert (await c.get(f"{prefix}/")).json() == {"status": "warn"}
        assert (await c.get(f"{prefix}/missing")).status_code == 404
        # the host app still serves its own routes
        assert (await c.get("/hello")).text.strip('"') == "hello"


async def test_fastapi_mount() -> None:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()

    @app.get("/hello", response_class=PlainTextResponse)
    async def hello() -> str:
        return "hello"

    app.mount("/health", health_app())
    await probe_all(httpx.ASGITransport(app=app), "/health")


async def test_starlette_mount() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/hello", hello), Mount("/internal/health", health_app())])
    await probe_all(httpx.ASGITransport(app=app), "/internal/health")


async def test_litestar_mount() -> None:
    from litestar import Litestar, asgi, get
    from litestar.types import Receive, Scope, Send

    health = health_app()

    @asgi("/health", is_mount=True, copy_scope=True)
    async def health_mount(scope: Scope, receive: Receive, send: Send) -> None:
        await health(scope, receive, send)  # type: ignore[arg-type]

    @get("/hello", sync_to_thread=False)
    def hello() -> str:
        return "hello"

    app = Litestar(route_handlers=[health_mount, hello])
    await probe_all(httpx.ASGITransport(app=app), "/health")


async def test_aiohttp_routes() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    app = web.Application()
    add_aiohttp_routes(app, health_app(), prefix="/health")

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/hello", hello)
    async with TestClient(TestServer(app)) as c:
        live = await c.get("/health/livez")
        assert live.status == 200
        assert live.headers["Content-Type"] == "application/health+json"
        assert live.headers["Cache-Control"] == "no-store"
        assert await live.json(content_type=None) == {"status": "pass"}
        ready = await c.get("/health/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
        assert "search:latency" in (await ready.json(content_type=None))["checks"]
        head = await c.head("/health/readyz")
        assert head.status == 200
        assert await head.read() == b""
        assert (await c.get("/health")).status == 200


def test_aiohttp_handler_rejects_unknown_path() -> None:
    with pytest.raises(KeyError, match="not one of the health paths"):
        aiohttp_handler(health_app(), "/nope")
