"""SessionMiddleware: two app instances sharing only Redis behind a round-robin balancer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from litestar import Litestar, post
from litestar import Request as LitestarRequest
from litestar.middleware import DefineMiddleware
from redis.asyncio.cluster import ClusterNode, RedisCluster
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from scalekit.errors import ConfigurationError, SessionTooLargeError
from scalekit.sessions import (
    MemorySessionBackend,
    RedisSessionBackend,
    SessionMiddleware,
    SessionStore,
    load_session,
)
from scalekit.sessions._crypto import CookieSigner
from scalekit.testing import FaultProxy
from tests.sessions.conftest import COOKIE_KEYS, SERVER_KEY, SpyBackend
from tests.support.processes import RedisProcess

BASE = "https://testserver"


def make_app(store: SessionStore, race: dict[str, Any] | None = None, **options: Any) -> Starlette:
    """One app instance: routes for login, identity, logout, writes and a no-session ping.

    ``race`` is a barrier shared by instances: ``/race`` waits until two requests loaded.
    """
    state = race if race is not None else {"arrived": 0, "both_loaded": asyncio.Event()}

    async def login(request: Request) -> Response:
        user = request.query_params["user"]
        request.session.login(user)  # type: ignore[attr-defined]
        request.session["name"] = user.title()
        return JSONResponse({"ok": True})

    async def me(request: Request) -> Response:
        session = request.session
        return JSONResponse({"user": session.user_id, "data": dict(session)})  # type: ignore[attr-defined]

    async def logout(request: Request) -> Response:
        request.session.clear()
        return JSONResponse({"ok": True})

    async def put(request: Request) -> Response:
        for key, value in request.query_params.items():
            request.session[key] = value
        return JSONResponse({"ok": True})

    async def put_after_barrier(request: Request) -> Response:
        # Both instances have loaded the same session before either writes back.
        state["arrived"] += 1
        if state["arrived"] == 2:
            state["both_loaded"].set()
        await asyncio.wait_for(state["both_loaded"].wait(), timeout=10)
        for key, value in request.query_params.items():
            request.session[key] = value
        return JSONResponse({"ok": True})

    async def ping(request: Request) -> Response:
        return PlainTextResponse("pong")

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json({"user": websocket.session.user_id})  # type: ignore[attr-defined]
        await websocket.close()

    return Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/me", me),
            Route("/logout", logout, methods=["POST"]),
            Route("/put", put, methods=["POST"]),
            Route("/race", put_after_barrier, methods=["POST"]),
            Route("/ping", ping),
            WebSocketRoute("/ws", ws),
        ],
        middleware=[Middleware(SessionMiddleware, store=store, secret_keys=COOKIE_KEYS, **options)],
    )


class RoundRobin(httpx.AsyncBaseTransport):
    """A load balancer: each request goes to the next instance in turn."""

    def __init__(self, *apps: Any) -> None:
        self.transports = [httpx.ASGITransport(app=app) for app in apps]
        self.served: list[int] = []
        self._next = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._next % len(self.transports)
        self._next += 1
        self.served.append(index)
        return await self.transports[index].handle_async_request(request)


def _set_cookie(response: httpx.Response) -> SimpleCookie:
    jar: SimpleCookie = SimpleCookie()
    for header in response.headers.get_list("set-cookie"):
        jar.load(header)
    return jar


@pytest.fixture(params=["redis", "cluster"])
def redis_target(request: pytest.FixtureRequest) -> tuple[str, Any]:
    if request.param == "redis":
        request.applymarker(pytest.mark.redis)
        return "redis", request.getfixturevalue("redis_url")
    request.applymarker(pytest.mark.redis_cluster)
    return "cluster", request.getfixturevalue("redis_cluster_nodes")


@pytest.fixture
async def two_stores(
    redis_target: tuple[str, Any], unique: str
) -> AsyncIterator[tuple[SessionStore, SessionStore]]:
    """Two app instances' stores, each with its own client: they share only the Redis server."""
    kind, where = redis_target
    clients: list[Any]
    if kind == "redis":
        clients = [aioredis.Redis.from_url(where) for _ in range(2)]
    else:
        clients = [
            RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in where]) for _ in range(2)
        ]
    stores = tuple(
        SessionStore(RedisSessionBackend(c), secret_key=SERVER_KEY, key_prefix=f"{unique}:")
        for c in clients
    )
    yield stores  # type: ignore[misc]
    async for key in clients[0].scan_iter(match=f"{unique}*"):
        await clients[0].delete(key)
    for client in clients:
        await client.aclose()


@pytest.mark.parametrize("logout_on", [0, 1])
async def test_login_on_one_instance_authenticated_on_the_other_logout_on_either(
    two_stores: tuple[SessionStore, SessionStore], logout_on: int
) -> None:
    balancer = RoundRobin(make_app(two_stores[0]), make_app(two_stores[1]))
    async with httpx.AsyncClient(transport=balancer, base_url=BASE) as browser:
        assert (await browser.post("/login", params={"user": "ada"})).status_code == 200  # A
        stolen = browser.cookies["session"]
        for _ in range(3 + logout_on):  # B, A, B (, A)
            body = (await browser.get("/me")).json()
            assert body == {"user": "ada", "data": {"name": "Ada"}}
        assert (await browser.post("/logout")).status_code == 200
        assert "session" not in browser.cookies
        assert (await browser.get("/me")).json() == {"user": None, "data": {}}
    assert balancer.served[0] == 0
    assert balancer.served[-2] == logout_on  # the logout went to the chosen instance
    # a copy of the cookie taken before logout is dead on every instance
    for app in balancer.transports:
        async with httpx.AsyncClient(transport=app, base_url=BASE) as thief:
            thief.cookies.set("session", stolen)
            assert (await thief.get("/me")).json()["user"] is None


async def test_concurrent_requests_on_two_instances_keep_both_updates(
    two_stores: tuple[SessionStore, SessionStore],
) -> None:
    race: dict[str, Any] = {"arrived": 0, "both_loaded": asyncio.Event()}
    app_a, app_b = make_app(two_stores[0], race), make_app(two_stores[1], race)
    balancer = RoundRobin(app_a, app_b)
    async with httpx.AsyncClient(transport=balancer, base_url=BASE) as browser:
        await browser.post("/put", params={"start": "1"})  # A creates the session
        cookie = browser.cookies["session"]
        async with (
            httpx.AsyncClient(transport=balancer.transports[0], base_url=BASE) as tab_a,
            httpx.AsyncClient(transport=balancer.transports[1], base_url=BASE) as tab_b,
        ):
            tab_a.cookies.set("session", cookie)
            tab_b.cookies.set("session", cookie)
            first, second = await asyncio.gather(
                tab_a.post("/race", params={"theme": "dark"}),
                tab_b.post("/race", params={"lang": "fr"}),
            )
        assert first.status_code == second.status_code == 200
        assert race["arrived"] == 2
        body = (await browser.get("/me")).json()
    assert body["data"] == {"start": "1", "theme": "dark", "lang": "fr"}


async def test_fixation_login_issues_a_new_id(
    two_stores: tuple[SessionStore, SessionStore],
) -> None:
    balancer = RoundRobin(make_app(two_stores[0]), make_app(two_stores[1]))
    async with httpx.AsyncClient(transport=balancer, base_url=BASE) as attacker:
        await attacker.post("/put", params={"cart": "1"})
        planted = attacker.cookies["session"]
        async with httpx.AsyncClient(transport=balancer, base_url=BASE) as victim:
            victim.cookies.set("session", planted, domain="testserver.local")  # planted
            response = await victim.post("/login", params={"user": "victim"})
            assert response.cookies["session"] != planted
            assert (await victim.get("/me")).json()["data"] == {"cart": "1", "name": "Victim"}
        body = (await attacker.get("/me")).json()
        assert body == {"user": None, "data": {}}


@pytest.fixture
def spy() -> SpyBackend:
    return SpyBackend(MemorySessionBackend())


@pytest.fixture
def spy_store(spy: SpyBackend) -> SessionStore:
    return SessionStore(spy, secret_key=SERVER_KEY)


async def _logged_in_cookie(app: Starlette) -> str:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        await c.post("/login", params={"user": "ada"})
        return c.cookies["session"]


async def _get(app: Starlette, path: str, cookie: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        if cookie is not None:
            c.cookies.set("session", cookie)
        return await c.get(path)


async def test_requests_without_a_cookie_never_reach_the_store(
    spy: SpyBackend, spy_store: SessionStore
) -> None:
    app = make_app(spy_store)
    assert (await _get(app, "/ping")).text == "pong"
    response = await _get(app, "/me")
    assert response.json() == {"user": None, "data": {}}
    assert "set-cookie" not in response.headers
    assert spy.calls == []


@pytest.mark.parametrize(
    "cookie",
    [
        "garbage",
        "abcd." + "A" * 43 + "." + "B" * 43,  # well formed, signature forged
        "x" * 5000,  # oversized
        "",
    ],
)
async def test_forged_or_oversized_cookies_never_reach_the_store(
    spy: SpyBackend, spy_store: SessionStore, cookie: str
) -> None:
    app = make_app(spy_store)
    assert (await _get(app, "/me", cookie)).json() == {"user": None, "data": {}}
    assert spy.calls == []


async def test_tampered_cookie_is_no_session(spy: SpyBackend, spy_store: SessionStore) -> None:
    app = make_app(spy_store)
    cookie = await _logged_in_cookie(app)
    spy.calls.clear()
    tampered = cookie[:5] + ("A" if cookie[5] != "A" else "B") + cookie[6:]
    assert (await _get(app, "/me", tampered)).json()["user"] is None
    assert spy.calls == []
    assert (await _get(app, "/me", cookie)).json()["user"] == "ada"


async def test_a_validly_signed_unknown_id_is_not_adopted(
    spy: SpyBackend, spy_store: SessionStore
) -> None:
    app = make_app(spy_store)
    chosen = "abcd." + "Q" * 43  # signed with our key, but never issued by the store
    cookie = CookieSigner(COOKIE_KEYS).sign(chosen)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        c.cookies.set("session", cookie)
        response = await c.post("/put", params={"k": "v"})
    new_cookie = _set_cookie(response)["session"].value
    assert chosen not in new_cookie


async def test_reading_does_not_write(spy: SpyBackend, spy_store: SessionStore) -> None:
    app = make_app(spy_store)
    cookie = await _logged_in_cookie(app)
    spy.calls.clear()
    response = await _get(app, "/me", cookie)
    assert response.json()["user"] == "ada"
    assert spy.calls == ["load"]
    assert "set-cookie" not in response.headers


async def test_autoload_predicate_skips_the_store(spy: SpyBackend, spy_store: SessionStore) -> None:
    app = make_app(spy_store, autoload=lambda scope: not scope["path"].startswith("/ping"))
    cookie = await _logged_in_cookie(app)
    spy.calls.clear()
    assert (await _get(app, "/ping", cookie)).text == "pong"
    assert spy.calls == []
    assert (await _get(app, "/me", cookie)).json()["user"] == "ada"
    assert spy.calls == ["load"]


async def test_lazy_session_loads_on_demand(spy: SpyBackend, spy_store: SessionStore) -> None:
    async def lazy_me(request: Request) -> Response:
        if request.query_params.get("use") != "1":
            return PlainTextResponse("untouched")
        session = await load_session(request)
        return JSONResponse({"user": session.user_id})

    cookie = await _logged_in_cookie(make_app(spy_store))
    app = Starlette(
        routes=[Route("/", lazy_me)],
        middleware=[
            Middleware(SessionMiddleware, store=spy_store, secret_keys=COOKIE_KEYS, autoload=False)
        ],
    )
    spy.calls.clear()
    assert (await _get(app, "/", cookie)).text == "untouched"
    assert spy.calls == []
    assert (await _get(app, "/?use=1", cookie)).json() == {"user": "ada"}
    assert spy.calls == ["load"]


async def test_cookie_attributes(spy_store: SessionStore) -> None:
    app = make_app(spy_store)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        response = await c.post("/put", params={"k": "v"})
    header = response.headers["set-cookie"]
    assert "HttpOnly" in header
    assert "Secure" in header
    assert "SameSite=Lax" in header
    assert "Path=/" in header
    assert f"Max-Age={int(spy_store.absolute_lifetime)}" in header
    custom = make_app(
        spy_store,
        cookie_name="sid",
        domain="example.com",
        path="/app",
        max_age=None,
        samesite="strict",
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=custom), base_url=BASE) as c:
        header = (await c.post("/put", params={"k": "v"})).headers["set-cookie"]
    assert header.startswith("sid=")
    assert "Domain=example.com" in header
    assert "Path=/app" in header
    assert "SameSite=Strict" in header
    assert "Max-Age" not in header


async def test_old_signing_key_still_verifies_and_is_resigned(
    spy: SpyBackend, spy_store: SessionStore
) -> None:
    old_app = make_app(spy_store)
    old_app.user_middleware.clear()
    old_only = Starlette(
        routes=old_app.routes,
        middleware=[Middleware(SessionMiddleware, store=spy_store, secret_keys=[COOKIE_KEYS[1]])],
    )
    old_cookie = await _logged_in_cookie(old_only)
    rotated = make_app(spy_store)  # COOKIE_KEYS: new first, old second
    spy.calls.clear()
    response = await _get(rotated, "/me", old_cookie)
    assert response.json()["user"] == "ada"
    resigned = _set_cookie(response)["session"].value
    assert resigned != old_cookie
    assert resigned.rsplit(".", 1)[0] == old_cookie.rsplit(".", 1)[0]  # same id, new signature
    assert spy.calls == ["load"]  # re-signing costs no write


async def test_oversized_session_raises(spy_store: SessionStore) -> None:
    small = SessionStore(spy_store.backend, secret_key=SERVER_KEY, max_bytes=100)
    app = make_app(small)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as c:
        with pytest.raises(SessionTooLargeError):
            await c.post("/put", params={"k": "x" * 500})


async def _websocket(app: Starlette, cookie: str) -> list[dict[str, Any]]:
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "wss",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"cookie", f"session={cookie}".encode())],
        "subprotocols": [],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 443),
    }
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    inbox.put_nowait({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))
        if message["type"] == "websocket.close":
            inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})

    await asyncio.wait_for(app(scope, inbox.get, send), timeout=10)
    return sent


async def test_websocket_reads_the_session(spy_store: SessionStore) -> None:
    app = make_app(spy_store)
    cookie = await _logged_in_cookie(app)
    sent = await _websocket(app, cookie)
    texts = [m["text"] for m in sent if m["type"] == "websocket.send"]
    assert texts == ['{"user":"ada"}']


@pytest.mark.redis
async def test_websocket_is_refused_when_the_store_is_down(
    redis_process: RedisProcess, unique: str
) -> None:
    store = _outage_store(redis_process.url, unique)
    app = make_app(store)
    cookie = await _logged_in_cookie(app)
    redis_process.stop()
    sent = await _websocket(app, cookie)
    assert sent == [
        {"type": "websocket.close", "code": 1011, "reason": "session store unavailable"}
    ]
    redis_process.start()
    await store.aclose()


def test_bad_options_are_rejected(spy_store: SessionStore) -> None:
    app = make_app(spy_store)
    with pytest.raises(ConfigurationError):
        SessionMiddleware(
            app, store=spy_store, secret_keys=COOKIE_KEYS, samesite="none", secure=False
        )
    with pytest.raises(ConfigurationError):
        SessionMiddleware(app, store=spy_store, secret_keys=COOKIE_KEYS, on_unavailable="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        SessionMiddleware(app, store=spy_store, secret_keys=[])
    with pytest.raises(ConfigurationError):
        SessionMiddleware(app, store=spy_store, secret_keys=COOKIE_KEYS, cookie_name="a b")


# -- store outages -------------------------------------------------------------------------------


def _outage_store(url_or_client: Any, unique: str, timeout: float = 0.5) -> SessionStore:
    backend = (
        RedisSessionBackend.from_url(url_or_client)
        if isinstance(url_or_client, str)
        else RedisSessionBackend(url_or_client)
    )
    return SessionStore(backend, secret_key=SERVER_KEY, key_prefix=f"{unique}:", timeout=timeout)


@pytest.mark.redis
async def test_redis_stopped_answers_503_or_continues(
    redis_process: RedisProcess, unique: str
) -> None:
    store = _outage_store(redis_process.url, unique)
    failing, tolerant = make_app(store), make_app(store, on_unavailable="continue")
    cookie = await _logged_in_cookie(failing)
    redis_process.stop()
    response = await asyncio.wait_for(_get(failing, "/me", cookie), timeout=10)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    response = await asyncio.wait_for(_get(tolerant, "/me", cookie), timeout=10)
    assert response.status_code == 200
    assert response.json() == {"user": None, "data": {}}
    assert "set-cookie" not in response.headers  # the user's cookie survives the outage
    # requests that carry no cookie never notice the outage
    assert (await _get(failing, "/ping")).text == "pong"
    redis_process.start()  # restarted empty: the old session is gone, nothing else breaks
    response = await _get(failing, "/me", cookie)
    assert response.json() == {"user": None, "data": {}}
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert await _logged_in_cookie(failing) != cookie
    await store.aclose()


@pytest.mark.redis
async def test_hung_redis_answers_503_within_the_timeout(redis_url: str, unique: str) -> None:
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.rpartition(":")
    async with FaultProxy(host or "127.0.0.1", int(port)) as proxy:
        client = aioredis.Redis(host=proxy.host, port=proxy.port)  # no socket timeout
        store = _outage_store(client, unique, timeout=0.3)
        app = make_app(store)
        cookie = await _logged_in_cookie(app)
        proxy.blackhole()
        response = await asyncio.wait_for(_get(app, "/me", cookie), timeout=10)
        assert response.status_code == 503
        await proxy.restore()
        assert (await _get(app, "/me", cookie)).json()["user"] == "ada"
        await client.aclose()
    cleanup = aioredis.Redis.from_url(redis_url)
    async for key in cleanup.scan_iter(match=f"{unique}*"):
        await cleanup.delete(key)
    await cleanup.aclose()


@pytest.mark.redis
async def test_store_failing_at_save_replaces_the_response(
    redis_process: RedisProcess, unique: str
) -> None:
    store = _outage_store(redis_process.url, unique)
    app = make_app(store, autoload=False)  # nothing loads before the handler runs

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        redis_process.stop()
        response = await asyncio.wait_for(c.post("/put", params={"k": "v"}), timeout=10)
    assert response.status_code == 503
    assert "set-cookie" not in response.headers
    redis_process.start()
    await store.aclose()


# -- frameworks ----------------------------------------------------------------------------------


async def test_fastapi_request_session(spy_store: SessionStore) -> None:
    from fastapi import FastAPI

    api = FastAPI()
    api.add_middleware(SessionMiddleware, store=spy_store, secret_keys=COOKIE_KEYS)

    @api.post("/visit")
    async def visit(request: Request) -> dict[str, int]:
        request.session["visits"] = request.session.get("visits", 0) + 1
        return {"visits": request.session["visits"]}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url=BASE) as c:
        assert [(await c.post("/visit")).json()["visits"] for _ in range(3)] == [1, 2, 3]


async def test_litestar_request_session(spy_store: SessionStore) -> None:
    @post("/visit")
    async def visit(request: LitestarRequest[Any, Any, Any]) -> dict[str, int]:
        request.session["visits"] = request.session.get("visits", 0) + 1
        return {"visits": request.session["visits"]}

    app = Litestar(
        route_handlers=[visit],
        middleware=[DefineMiddleware(SessionMiddleware, store=spy_store, secret_keys=COOKIE_KEYS)],
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        assert [(await c.post("/visit")).json()["visits"] for _ in range(3)] == [1, 2, 3]


async def test_sliding_expiry_end_to_end_with_a_manual_clock() -> None:
    from scalekit.testing import ManualClock

    clock = ManualClock()
    store = SessionStore(
        MemorySessionBackend(),
        secret_key=SERVER_KEY,
        idle_timeout=900,
        absolute_lifetime=3600,
        touch_interval=0,
        clock=clock,
    )
    app = make_app(store)
    cookie = await _logged_in_cookie(app)
    for _ in range(3):  # a request every 10 minutes keeps the user logged in
        await clock.advance(600)
        assert (await _get(app, "/me", cookie)).json()["user"] == "ada"
    await clock.advance(901)
    response = await _get(app, "/me", cookie)
    assert response.json()["user"] is None
    assert "Max-Age=0" in response.headers["set-cookie"]  # the dead cookie is deleted
    cookie = await _logged_in_cookie(app)
    for _ in range(5):  # active, but 3600 s after login the session ends anyway
        await clock.advance(600)
        assert (await _get(app, "/me", cookie)).json()["user"] == "ada"
    await clock.advance(600)
    assert (await _get(app, "/me", cookie)).json()["user"] is None
