# requires: redis
"""Starlette: security settings, a password change that logs the user out on every device."""

import asyncio
import os

import httpx
import redis.asyncio as redis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from scalekit.sessions import RedisSessionBackend, SessionMiddleware, SessionStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + ":sessions:"


async def login(request: Request) -> JSONResponse:
    request.session.login(request.query_params["user"])
    return JSONResponse({"ok": True})


async def me(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.session.user_id})


async def change_password(request: Request) -> JSONResponse:
    user = request.session.user_id
    # ... store the new password hash ...
    ended = await request.app.state.store.destroy_all_for_user(user)  # every device, this one too
    request.session.login(user)  # ...then give this device a fresh session
    return JSONResponse({"ended": ended})


async def health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def main() -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    store = SessionStore(
        RedisSessionBackend(client),
        secret_key="dev-only-server-key-change-me-0123456789",
        key_prefix=PREFIX,
        idle_timeout=15 * 60,  # sliding: ends after 15 minutes without a request
        absolute_lifetime=8 * 3600,  # ends 8 hours after login however active
        max_bytes=16 * 1024,  # SessionTooLargeError beyond this
        timeout=0.5,  # no request waits longer than this on Redis
    )
    app = Starlette(
        routes=[
            Route("/login", login, methods=["POST"]),
            Route("/me", me),
            Route("/password", change_password, methods=["POST"]),
            Route("/health", health),
        ],
        middleware=[
            Middleware(
                SessionMiddleware,
                store=store,
                # newest first: the first key signs, every key verifies (rotate without logouts)
                secret_keys=[
                    "cookie-key-2026-0123456789abcdef",
                    "cookie-key-2025-0123456789abcdef",
                ],
                cookie_name="sid",
                samesite="lax",  # the defaults: Secure, HttpOnly, SameSite=Lax
                # health checks carry cookies too, but never need the session
                autoload=lambda scope: scope["path"] != "/health",
                on_unavailable="error",  # Redis down: 503 (or "continue" without a session)
            )
        ],
    )
    app.state.store = store

    def device() -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://app")

    async with device() as phone, device() as laptop:
        for browser in (phone, laptop):
            response = await browser.post("/login", params={"user": "grace"})
            set_cookie = response.headers["set-cookie"]
            assert "HttpOnly" in set_cookie
            assert "Secure" in set_cookie
            assert "SameSite=Lax" in set_cookie
        assert await store.count_for_user("grace") == 2

        assert (await laptop.post("/password")).json() == {"ended": 2}
        assert (await laptop.get("/me")).json() == {"user": "grace"}  # fresh session
        assert (await phone.get("/me")).json() == {"user": None}  # logged out
        assert await store.count_for_user("grace") == 1
        await store.destroy_all_for_user("grace")
    await client.aclose()
    print("starlette example: ok")


asyncio.run(main())
