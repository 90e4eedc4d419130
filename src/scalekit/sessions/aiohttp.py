"""aiohttp middleware: ``session = await get_session(request)``, loaded only when asked for."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from scalekit._drivers import require
from scalekit._telemetry import get_logger
from scalekit.errors import ConfigurationError, SessionStoreUnavailableError
from scalekit.sessions._cookie import SessionCookies, parse_cookie_header
from scalekit.sessions.store import Session, SessionStore

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["get_session", "session_middleware"]

_log = get_logger(__name__)
_KEY: Any = None  # a web.RequestKey where aiohttp has them (3.12+), made on first use


def _request_key() -> Any:
    global _KEY
    if _KEY is None:
        web_mod = require("aiohttp.web", "aiohttp")
        request_key = getattr(web_mod, "RequestKey", None)
        _KEY = (
            "scalekit.sessions" if request_key is None else request_key("scalekit.sessions", _State)
        )
    return _KEY


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class _State:
    __slots__ = ("fail_open", "incoming", "resign", "session")

    def __init__(self, session: Session, incoming: str | None, resign: bool, fail_open: bool):
        self.session = session
        self.incoming = incoming
        self.resign = resign
        self.fail_open = fail_open


def session_middleware(
    store: SessionStore,
    *,
    secret_keys: Sequence[str | bytes],
    cookie_name: str = "session",
    domain: str | None = None,
    path: str = "/",
    max_age: int | Literal["lifetime"] | None = "lifetime",
    secure: bool = True,
    httponly: bool = True,
    samesite: Literal["lax", "strict", "none"] = "lax",
    on_unavailable: Literal["error", "continue"] = "error",
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """An aiohttp middleware giving each request a server-side session.

    ::

        app = web.Application(middlewares=[session_middleware(store, secret_keys=[KEY])])

        async def handler(request):
            session = await get_session(request)   # the only place the store is read

    The session is loaded on the first :func:`get_session` (never for handlers that do not
    call it) and saved, if it changed, before the response is sent, including responses
    raised as ``web.HTTPException`` (a redirect after login). Arguments mean what they mean
    for :class:`~scalekit.sessions.SessionMiddleware`. With ``on_unavailable="error"`` a store
    outage answers ``503``; with ``"continue"`` the handler gets an empty session whose changes
    are not saved.

    Raises:
        ConfigurationError: an option is invalid.
        MissingDependencyError: aiohttp is not installed.
    """
    web_mod = require("aiohttp.web", "aiohttp")
    if on_unavailable not in ("error", "continue"):
        raise ConfigurationError("on_unavailable must be 'error' or 'continue'")
    cookies = SessionCookies(
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
    fail_open = on_unavailable == "continue"
    key = _request_key()

    def unavailable() -> web.Response:
        response: web.Response = web_mod.Response(
            status=503,
            text="Service Unavailable: the session store cannot be reached. Retry shortly.",
            headers={"Retry-After": "1"},
        )
        return response

    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = "; ".join(request.headers.getall("Cookie", ()))
        session, incoming, resign = cookies.open(parse_cookie_header(header, cookie_name))
        state = _State(session, incoming, resign, fail_open)
        request[key] = state
        try:
            response = await handler(request)
        except web_mod.HTTPException as exc:  # a raised response (redirect, 403...) saves too
            response = exc
            raised = True
        except SessionStoreUnavailableError as exc:
            _log.warning("session store unavailable on load: %s", exc)
            return unavailable()
        else:
            raised = False
        if response.prepared:
            if session.loaded and session.modified:
                _log.warning("session changed after the response was sent (streaming?); not saved")
            return response
        try:
            action = await cookies.commit(session, incoming, resign)
        except SessionStoreUnavailableError as exc:
            if not fail_open:
                _log.warning("session store unavailable on save: %s", exc)
                return unavailable()
            _log.warning("session changes not saved, store unavailable: %s", exc)
            action = None
        if action is not None:
            response.headers.add("Set-Cookie", action.header)
        if raised:
            raise response  # type: ignore[misc]
        return response

    marked: Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]
    marked = web_mod.middleware(middleware)  # the new-style marker aiohttp checks for
    return marked


async def get_session(request: web.Request) -> Session:
    """The request's session, loading it from the store on first use.

    Raises:
        LookupError: :func:`session_middleware` is not installed.
        SessionStoreUnavailableError: the store did not answer (with ``on_unavailable="error"``
            the middleware turns it into a 503 response).
    """
    state: Any = request.get(_request_key())
    if not isinstance(state, _State):
        raise LookupError("no session: add scalekit.sessions.aiohttp.session_middleware(...)")
    session = state.session
    if not session.loaded:
        try:
            await session.load()
        except SessionStoreUnavailableError:
            if not state.fail_open:
                raise
            _log.warning("session store unavailable; continuing without session")
            session._mark_unavailable()
    return session
