"""ASGI middleware: one read-your-writes scope per request, carried across requests by a token."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import TYPE_CHECKING, Any

from scalekit import _telemetry
from scalekit.errors import InvalidConsistencyTokenError

if TYPE_CHECKING:
    from scalekit.db.database import Database

__all__ = ["ConsistencyMiddleware"]

_log = _telemetry.get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConsistencyMiddleware:
    """Give every HTTP request its own read-your-writes scope, continued by a token.

    The request's token (from the ``header``, else the ``cookie``) seeds the scope, so a client
    that wrote in one request reads its writes in the next, on any instance of the service. When
    the request wrote, the response carries the new token in the same header (and cookie, when
    ``cookie`` is set). A missing, malformed or forged token is ignored: the request then starts
    from an empty scope (reads may be eventually consistent), it never fails.

    Works with any ASGI framework (Starlette, FastAPI, Litestar, Quart)::

        app = ConsistencyMiddleware(app, db=db)

    Args:
        app: the ASGI application to wrap.
        db: the :class:`scalekit.db.Database` whose scope is narrowed.
        header: the request and response header carrying the token.
        cookie: also read and set the token in this cookie (``None``: header only).
        cookie_max_age: seconds the cookie lives.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        db: Database,
        header: str = "x-consistency-token",
        cookie: str | None = None,
        cookie_max_age: int = 60,
    ) -> None:
        self.app = app
        self.db = db
        self.header = header.lower()
        self._header_bytes = self.header.encode("latin-1")
        self.cookie = cookie
        self.cookie_max_age = cookie_max_age

    def _token(self, scope: Scope) -> str | None:
        cookie_header = None
        for name, value in scope.get("headers", ()):
            if name == self._header_bytes:
                return bytes(value).decode("latin-1")
            if name == b"cookie":
                cookie_header = bytes(value).decode("latin-1")
        if self.cookie and cookie_header:
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(cookie_header)
            except Exception:
                return None
            morsel = jar.get(self.cookie)
            return morsel.value if morsel is not None else None
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        db = self.db
        token = self._token(scope)
        try:
            request_scope = db.consistency_scope(token)
        except InvalidConsistencyTokenError as exc:
            _log.debug("ignoring an invalid consistency token: %s", exc)
            request_scope = db.consistency_scope(None)
        async with request_scope:
            start_lsn = db.required_lsn

            async def send_with_token(message: Message) -> None:
                if message["type"] == "http.response.start" and db.required_lsn > start_lsn:
                    new_token = db.consistency_token().encode("latin-1")
                    headers = list(message.get("headers", ()))
                    headers.append((self._header_bytes, new_token))
                    if self.cookie:
                        headers.append(
                            (
                                b"set-cookie",
                                (
                                    f"{self.cookie}={new_token.decode()}; "
                                    f"Max-Age={self.cookie_max_age}; Path=/; HttpOnly; SameSite=Lax"
                                ).encode("latin-1"),
                            )
                        )
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_with_token)
