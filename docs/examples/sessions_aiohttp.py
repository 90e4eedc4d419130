# requires: redis
"""aiohttp: the session is loaded only by handlers that ask for it."""

import asyncio
import os

import redis.asyncio as redis
from aiohttp import ClientSession, CookieJar, web
from aiohttp.test_utils import TestServer

from scalekit.sessions import RedisSessionBackend, SessionStore
from scalekit.sessions.aiohttp import get_session, session_middleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + ":sessions:"

routes = web.RouteTableDef()


@routes.post("/cart")
async def add_to_cart(request: web.Request) -> web.Response:
    session = await get_session(request)  # one Redis round trip, only here
    session.setdefault("cart", []).append(request.query["item"])  # nested changes are saved
    return web.json_response(session["cart"])


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.login(request.query["user"])  # new id, same cart: fixation defence
    raise web.HTTPFound("/cart")  # a raised redirect still carries the new cookie


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")  # never touches Redis


STORE = web.AppKey("store", SessionStore)


def create_app() -> web.Application:
    # Nothing connects here: redis-py connects on first use, so building at import is fine.
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    store = SessionStore(
        RedisSessionBackend(client),
        secret_key="dev-only-server-key-change-me-0123456789",
        key_prefix=PREFIX,
    )
    app = web.Application(
        middlewares=[
            # secure=False only because this demo server speaks plain HTTP on localhost
            session_middleware(store, secret_keys=["cookie-key-0123456789abcdef"], secure=False)
        ]
    )
    app[STORE] = store
    app.add_routes(routes)

    async def close_redis(app: web.Application) -> None:
        await client.aclose()

    app.on_cleanup.append(close_redis)
    return app


async def main() -> None:
    app = create_app()
    store = app[STORE]
    server = TestServer(app)
    await server.start_server()
    try:
        async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as browser:  # 127.0.0.1
            async with browser.post(server.make_url("/cart"), params={"item": "tea"}) as r:
                assert await r.json() == ["tea"]
            anonymous_id = browser.cookie_jar.filter_cookies(server.make_url("/"))["session"].value
            async with browser.post(
                server.make_url("/login"), params={"user": "ada"}, allow_redirects=False
            ) as r:
                assert r.status == 302
            logged_in_id = browser.cookie_jar.filter_cookies(server.make_url("/"))["session"].value
            assert logged_in_id != anonymous_id
            async with browser.post(server.make_url("/cart"), params={"item": "milk"}) as r:
                assert await r.json() == ["tea", "milk"]
            assert await store.destroy_all_for_user("ada") == 1
    finally:
        await server.close()  # runs on_cleanup: the Redis client is closed
    print("aiohttp example: ok")


asyncio.run(main())
