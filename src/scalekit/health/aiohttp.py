"""Serve a :class:`~scalekit.health.HealthApp` from aiohttp (which is not ASGI)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from scalekit._drivers import require
from scalekit.health.app import HealthApp

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["add_aiohttp_routes", "aiohttp_handler"]


def aiohttp_handler(
    health: HealthApp, path: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler answering the probe ``path`` of ``health`` (GET; HEAD is automatic).

    Args:
        health: the health app whose registry, paths and token rules apply.
        path: one of ``health.paths`` (``"/readyz"``...).

    Raises:
        MissingDependencyError: aiohttp is not installed.
        KeyError: ``path`` is not served by ``health``.
    """
    web_mod: Any = require("aiohttp.web", "aiohttp")
    if path not in health.paths:
        raise KeyError(f"{path!r} is not one of the health paths {sorted(health.paths)}")

    async def handler(request: web.Request) -> web.StreamResponse:
        detailed = health.details or health.authorized(
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()
        )
        response = await health.respond(path, detailed=detailed)
        headers = dict(response.headers)
        headers.pop("content-length", None)  # aiohttp sets it (and keeps it right for HEAD)
        result: web.StreamResponse = web_mod.Response(
            status=response.status_code, body=response.body, headers=headers
        )
        return result

    return handler


def add_aiohttp_routes(app: web.Application, health: HealthApp, *, prefix: str = "") -> None:
    """Add a GET (and HEAD) route for every path of ``health`` under ``prefix``.

    ::

        web_app = web.Application()
        add_aiohttp_routes(web_app, HealthApp(registry), prefix="/health")

    Args:
        app: the aiohttp application.
        health: the health app to serve.
        prefix: a path prefix such as ``"/health"`` (no trailing slash).
    """
    prefix = prefix.rstrip("/")
    for path in health.paths:
        route = prefix + path if path != "/" else (prefix or "/")
        app.router.add_get(route, aiohttp_handler(health, path))
