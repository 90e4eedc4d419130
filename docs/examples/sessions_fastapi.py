# requires: redis
"""FastAPI with server-side sessions in Redis: two app instances, one login, any instance serves."""

import asyncio
import os
from contextlib import asynccontextmanager

import httpx
import redis.asyncio as redis
from fastapi import FastAPI, HTTPException, Request

from scalekit.sessions import RedisSessionBackend, SessionMiddleware, SessionStore

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + ":sessions:"
SERVER_KEY = os.environ.get("SESSION_SERVER_KEY", "dev-only-server-key-change-me-0123456789")
COOKIE_KEYS = [os.environ.get("SESSION_COOKIE_KEY", "dev-only-cookie-key-change-me-0123456789")]


def create_app() -> FastAPI:
    """One app instance. It keeps no user state: everything lives in Redis."""
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1.0)
    store = SessionStore(RedisSessionBackend(client), secret_key=SERVER_KEY, key_prefix=PREFIX)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await client.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(SessionMiddleware, store=store, secret_keys=COOKIE_KEYS)

    @app.post("/login")
    async def login(request: Request, user: str) -> dict:
        # ... check the password here ...
        request.session.login(user)  # binds the user AND rotates the session id (fixation)
        request.session["display_name"] = user.title()
        return {"ok": True}

    @app.get("/me")
    async def me(request: Request) -> dict:
        if request.session.user_id is None:
            raise HTTPException(401, "log in first")
        return {"user": request.session.user_id, "name": request.session["display_name"]}

    @app.post("/logout")
    async def logout(request: Request) -> dict:
        request.session.logout()  # destroyed in Redis, cookie deleted
        return {"ok": True}

    return app


async def main() -> None:
    instance_a, instance_b = create_app(), create_app()
    # A browser talking to each instance in turn, as behind a round-robin load balancer.
    # (https:// because the cookie is Secure by default.)
    a = httpx.AsyncClient(transport=httpx.ASGITransport(app=instance_a), base_url="https://app")
    b = httpx.AsyncClient(transport=httpx.ASGITransport(app=instance_b), base_url="https://app")
    async with (
        instance_a.router.lifespan_context(instance_a),
        instance_b.router.lifespan_context(instance_b),
        a,
        b,
    ):
        response = await a.post("/login", params={"user": "ada"})
        assert response.status_code == 200
        cookie = response.cookies["session"]
        b.cookies.set("session", cookie, domain="app.local")

        me = await b.get("/me")  # the other instance knows the user
        assert me.json() == {"user": "ada", "name": "Ada"}, me.text

        assert (await b.post("/logout")).status_code == 200
        a.cookies.set("session", cookie, domain="app.local")  # replay the old cookie
        assert (await a.get("/me")).status_code == 401  # logged out everywhere
    print("fastapi example: ok")


asyncio.run(main())
