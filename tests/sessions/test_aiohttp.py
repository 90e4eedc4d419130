"""The aiohttp middleware, two aiohttp app instances sharing only Redis (aiohttp test utils)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from http.cookies import SimpleCookie
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, DummyCookieJar, web
from aiohttp.test_utils import TestServer

from scalekit.sessions import MemorySessionBackend, RedisSessionBackend, SessionStore
from scalekit.sessions.aiohttp import get_session, session_middleware
from tests.sessions.conftest import COOKIE_KEYS, SERVER_KEY, SpyBackend
from tests.support.processes import RedisProcess


def make_app(store: SessionStore, **options: Any) -> web.Application:
    routes = web.RouteTableDef()

    @routes.post("/login")
    async def login(request: web.Request) -> web.Response:
        session = await get_session(request)
        session.login(request.query["user"])
        session["name"] = request.query["user"].title()
        raise web.HTTPFound("/me")  # a raised redirect still carries the new cookie

    @routes.get("/me")
    async def me(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response({"user": session.user_id, "data": dict(session)})

    @routes.post("/logout")
    async def logout(request: web.Request) -> web.Response:
        (await get_session(request)).logout()
        return web.json_response({"ok": True})

    @routes.get("/ping")
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    app = web.Application(
        middlewares=[session_middleware(store, secret_keys=COOKIE_KEYS, **options)]
    )
    app.add_routes(routes)
    return app


class Browser:
    """Keeps the session cookie and sends it to whichever instance it is pointed at."""

    def __init__(self, http: ClientSession) -> None:
        self.http = http
        self.cookie: str | None = None

    async def request(self, server: TestServer, method: str, path: str, **kw: Any) -> Any:
        headers = {} if self.cookie is None else {"Cookie": f"session={self.cookie}"}
        async with self.http.request(
            method, server.make_url(path), headers=headers, allow_redirects=False, **kw
        ) as response:
            for header in response.headers.getall("Set-Cookie", ()):
                jar: SimpleCookie = SimpleCookie()
                jar.load(header)
                morsel = jar["session"]
                self.cookie = morsel.value or None
            body = await response.read()
            return response.status, response.headers, body


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with ClientSession(cookie_jar=DummyCookieJar()) as http:
        yield Browser(http)


async def _serve(app: web.Application) -> TestServer:
    server = TestServer(app)
    await server.start_server()
    return server


@pytest.mark.redis
async def test_two_instances_login_authenticated_logout(
    redis_url: str, redis_client: aioredis.Redis, unique: str, browser: Browser
) -> None:
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(2)]
    stores = [
        SessionStore(RedisSessionBackend(c), secret_key=SERVER_KEY, key_prefix=f"{unique}:")
        for c in clients
    ]
    a, b = await _serve(make_app(stores[0])), await _serve(make_app(stores[1]))
    try:
        status, headers, _ = await browser.request(a, "POST", "/login", params={"user": "ada"})
        assert status == 302
        assert "HttpOnly" in headers["Set-Cookie"]
        assert "Secure" in headers["Set-Cookie"]
        stolen = browser.cookie
        for server in (b, a, b):
            status, _, body = await browser.request(server, "GET", "/me")
            assert body == b'{"user": "ada", "data": {"name": "Ada"}}'
        await browser.request(a, "POST", "/logout")
        assert browser.cookie is None
        browser.cookie = stolen
        _, _, body = await browser.request(b, "GET", "/me")
        assert body == b'{"user": null, "data": {}}'
    finally:
        for server in (a, b):
            await server.close()
        for client in clients:
            await client.aclose()


async def test_handlers_that_never_ask_for_the_session_cost_no_io(browser: Browser) -> None:
    spy = SpyBackend(MemorySessionBackend())
    server = await _serve(make_app(SessionStore(spy, secret_key=SERVER_KEY)))
    try:
        await browser.request(server, "POST", "/login", params={"user": "ada"})
        spy.calls.clear()
        status, _, body = await browser.request(server, "GET", "/ping")
        assert (status, body) == (200, b"pong")
        assert spy.calls == []
        good = browser.cookie
        assert good is not None
        browser.cookie = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
        _, _, body = await browser.request(server, "GET", "/me")
        assert body == b'{"user": null, "data": {}}'
        assert spy.calls == []  # a tampered cookie never reaches the store
    finally:
        await server.close()


@pytest.mark.redis
async def test_store_down_answers_503_or_continues(
    redis_process: RedisProcess, unique: str, browser: Browser
) -> None:
    store = SessionStore(
        RedisSessionBackend.from_url(redis_process.url),
        secret_key=SERVER_KEY,
        key_prefix=f"{unique}:",
        timeout=0.5,
    )
    strict = await _serve(make_app(store))
    lenient = await _serve(make_app(store, on_unavailable="continue"))
    try:
        await browser.request(strict, "POST", "/login", params={"user": "ada"})
        redis_process.stop()
        status, headers, _ = await browser.request(strict, "GET", "/me")
        assert status == 503
        assert headers["Retry-After"] == "1"
        status, _, body = await browser.request(lenient, "GET", "/me")
        assert (status, body) == (200, b'{"user": null, "data": {}}')
        assert browser.cookie is not None  # kept for when the store is back
        status, _, _ = await browser.request(strict, "POST", "/logout")
        assert status == 503
    finally:
        await strict.close()
        await lenient.close()
        await store.aclose()
