"""A pure ASGI session middleware: works under Starlette, FastAPI, Litestar or any ASGI app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, Literal

from scalekit._telemetry import get_logger
from scalekit.errors import ConfigurationError, SessionStoreUnavailableError
from scalekit.sessions._cookie import SessionCookies, parse_cookie_header
from scalekit.sessions.store import Session, SessionStore

__all__ = ["SessionMiddleware", "load_session"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = get_logger(__name__)
_UNAVAILABLE_BODY = b"Service Unavailable: the session store cannot be reached. Retry shortly."


class SessionMiddleware:
    """Server-side sessions for any ASGI app: ``scope["session"]`` is a :class:`Session`.

    ::

        app.add_middleware(SessionMiddleware, store=store, secret_keys=[COOKIE_KEY])

        @app.post("/login")
        async def login(request: Request):
            request.session.login(user.id)      # binds the user, rotates the id on save
            request.session["name"] = user.name

    The cookie holds only the signed session id. A request without a valid cookie never
    reaches the store; a request with one loads the session before the app runs (one round
    trip), unless ``autoload`` says otherwise, in which case the app calls
    ``await load_session(request)`` where it needs the session. The session is written only
    if it changed, just before the response headers go out.

    Args:
        app: the ASGI app to wrap.
        store: the :class:`SessionStore`.
        secret_keys: cookie signing keys, newest first: the first signs, all verify. Cookies
            signed with an older key are re-signed with the newest on their next response.
        cookie_name: the cookie's name.
        domain: the cookie's ``Domain`` (``None``: this host only).
        path: the cookie's ``Path``.
        max_age: the cookie's ``Max-Age`` in seconds; ``"lifetime"`` uses the store's
            ``absolute_lifetime``; ``None`` makes a browser-session cookie. The server enforces
            the idle and absolute timeouts whatever the cookie says.
        secure: send the cookie over HTTPS only (turn off only for local HTTP development).
        httponly: hide the cookie from JavaScript.
        samesite: ``"lax"``, ``"strict"`` or ``"none"`` (``"none"`` requires ``secure``).
        autoload: whether to load the session before the app runs when a valid cookie is
            present; a callable gets the scope and decides per request (for example skip
            ``/static``).
        on_unavailable: when the store cannot be reached within its ``timeout``: ``"error"``
            answers 503 (HTTP) or closes the websocket with 1011; ``"continue"`` runs the app
            with an empty session whose changes are not saved (``session.available`` is
            ``False``) and keeps the cookie.

    Raises:
        ConfigurationError: an option is invalid.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: SessionStore,
        secret_keys: Sequence[str | bytes],
        cookie_name: str = "session",
        domain: str | None = None,
        path: str = "/",
        max_age: int | Literal["lifetime"] | None = "lifetime",
        secure: bool = True,
        httponly: bool = True,
        samesite: Literal["lax", "strict", "none"] = "lax",
        autoload: bool | Callable[[Scope], bool] = True,
        on_unavailable: Literal["error", "continue"] = "error",
    ) -> None:
        if on_unavailable not in ("error", "continue"):
            raise ConfigurationError("on_unavailable must be 'error' or 'continue'")
        self.app = app
        self._cookies = SessionCookies(
            store,
            secret_keys,
            cookie_name=cookie_name,
            domain=domain,
            path=path,
            max_age=max_age,
            secure=secure,
            httponly=httponly,
            samesite=samesite,
        )
        self._cookie_name = cookie_name
        self._autoload = autoload
        self._fail_open = on_unavailable == "continue"

    def _raw_cookies(self, scope: Scope) -> list[str]:
        found: list[str] = []
        for name, value in scope.get("headers", ()):
            if name == b"cookie":
                found += parse_cookie_header(value.decode("latin-1"), self._cookie_name)
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        cookies = self._cookies
        session, incoming, resign = cookies.open(self._raw_cookies(scope))
        scope["session"] = session
        if not session.loaded:
            autoload = self._autoload
            if autoload is True or (callable(autoload) and autoload(scope)):
                try:
                    await session.load()
                except SessionStoreUnavailableError as exc:
                    if not self._fail_open:
                        _log.warning("session store unavailable on load: %s", exc)
                        await _refuse(kind, send)
                        return
                    _log.warning("session store unavailable; continuing without session: %s", exc)
                    session._mark_unavailable()
        if kind == "websocket":  # sessions are read-only on websockets: no headers to set
            await self.app(scope, receive, send)
            return

        replaced = False

        async def send_with_session(message: Message) -> None:
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                try:
                    action = await cookies.commit(session, incoming, resign)
                except SessionStoreUnavailableError as exc:
                    if not self._fail_open:
                        _log.warning("session store unavailable on save: %s", exc)
                        replaced = True
                        await _refuse("http", send)
                        return
                    _log.warning("session changes not saved, store unavailable: %s", exc)
                    action = None
                if action is not None:
                    headers = list(message.get("headers", ()))
                    headers.append((b"set-cookie", action.header.encode("latin-1")))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_session)


async def _refuse(kind: str, send: Send) -> None:
    if kind == "websocket":
        await send({"type": "websocket.close", "code": 1011, "reason": "session store unavailable"})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(_UNAVAILABLE_BODY)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _UNAVAILABLE_BODY})


async def load_session(connection: Any) -> Session:
    """Load (if needed) and return the session of a request, for ``autoload=False`` setups.

    Args:
        connection: a Starlette/FastAPI/Litestar request or websocket, or an ASGI scope.

    Raises:
        SessionStoreUnavailableError: the store did not answer in time.
        LookupError: :class:`SessionMiddleware` is not installed.
    """
    scope = getattr(connection, "scope", connection)
    try:
        session = scope["session"]
    except KeyError:
        raise LookupError(
            "no session in the ASGI scope: add scalekit.sessions.SessionMiddleware to the app"
        ) from None
    if not isinstance(session, Session):
        raise LookupError("scope['session'] was not set by scalekit.sessions.SessionMiddleware")
    return await session.load()
