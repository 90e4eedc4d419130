"""A pure ASGI middleware that sheds load with ``503`` and ``Retry-After``.

Works with any ASGI framework (Starlette, FastAPI, Litestar, Quart...)::

    app = FastAPI()
    app.add_middleware(AdaptiveLimitMiddleware, limit=AdaptiveLimit(latency_threshold=0.25))

Only ``http`` requests are limited; ``websocket`` and ``lifespan`` pass through. A response
with status 5xx counts as a congestion signal, as does an exception raised by the app.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from scalekit.resilience.adaptive import AdaptiveLimit

__all__ = ["AdaptiveLimitMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class AdaptiveLimitMiddleware:
    """Shed HTTP requests beyond an :class:`~scalekit.resilience.AdaptiveLimit`.

    Args:
        app: the ASGI application to protect.
        limit: the adaptive limit shared by the protected requests.
        exclude_paths: paths never limited (health checks, metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: AdaptiveLimit,
        exclude_paths: Collection[str] = ("/health", "/healthz", "/metrics"),
    ) -> None:
        self.app = app
        self.limit = limit
        self.exclude_paths = frozenset(exclude_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] != "http" or scope.get("path") in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if not limit.try_acquire():
            await self._shed(send)
            return
        started = limit.now()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        dropped = True  # an exception (or cancellation) unless the app returns normally
        try:
            await self.app(scope, receive, send_wrapper)
            dropped = status >= 500
        finally:
            limit.release(started, dropped=dropped)

    async def _shed(self, send: Send) -> None:
        body = b"Service overloaded; retry later.\n"
        retry_after = str(max(1, math.ceil(self.limit.retry_after)))
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", retry_after.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
