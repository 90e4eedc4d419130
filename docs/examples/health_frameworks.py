"""Mount one HealthApp in Starlette and Litestar; the same object serves both."""

from __future__ import annotations

import asyncio

import httpx
from litestar import Litestar, asgi
from litestar.types import Receive, Scope, Send
from starlette.applications import Starlette
from starlette.routing import Mount

from scalekit.health import CheckResult, HealthApp, HealthRegistry

registry = HealthRegistry(started=True)  # nothing to warm up


@registry.check("search:responseTime", critical=False, timeout=0.2)
async def search() -> CheckResult:
    # A non-critical dependency: when it fails the instance is degraded (warn, HTTP 200),
    # not taken out of rotation.
    return CheckResult.fail("search cluster unreachable")


health = HealthApp(registry)

# Starlette (FastAPI is the same: app.mount("/health", health))
starlette_app = Starlette(routes=[Mount("/health", health)])


# Litestar: an ASGI mount
@asgi("/health", is_mount=True, copy_scope=True)
async def health_mount(scope: Scope, receive: Receive, send: Send) -> None:
    await health(scope, receive, send)  # type: ignore[arg-type]


litestar_app = Litestar(route_handlers=[health_mount])


async def main() -> None:
    for app in (starlette_app, litestar_app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://pod") as client:
            ready = await client.get("/health/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "warn"}  # degraded but serving
            head = await client.head("/health/livez")
            assert head.status_code == 200
            assert head.content == b""
            assert head.headers["cache-control"] == "no-store"
    print("ok")


if __name__ == "__main__":
    asyncio.run(main())
