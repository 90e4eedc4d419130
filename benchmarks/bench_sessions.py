"""Per-request overhead of session middleware: scalekit vs starsessions vs a bare ASGI app.

Every variant is the same Starlette app, called directly through ASGI (no HTTP server, no
client library) so the numbers show the middleware and its Redis round trips, not the network
stack. All Redis variants use the same Redis server in the same run; requests are sequential
(latency-bound), repeats are interleaved across variants, and the median is reported.

    /work/venv/bin/python benchmarks/bench_sessions.py [--quick] [--redis-url URL] [--redis-cost]

``--redis-cost`` also starts a private ``redis-server`` (never the shared one: it resets the
server's statistics) and reports the Redis CPU time per request, from ``INFO commandstats``.

Routes: ``/read`` reads one key; ``/write`` reads and increments it. ``/none`` does not touch
the session (what scalekit costs a request that carries a cookie but does not need the session
when autoload is restricted, and what any middleware costs a request without a cookie).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

try:
    import scalekit  # noqa: F401
except ModuleNotFoundError:  # run from a checkout without installing
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from scalekit.sessions import (
    MemorySessionBackend,
    RedisSessionBackend,
    SessionMiddleware,
    SessionStore,
)

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
SERVER_KEY = "bench-server-key-0123456789abcdef"
COOKIE_KEY = "bench-cookie-key-0123456789abcdef"


async def read(request: Request) -> Response:
    session = request.scope.get("session")
    n = session.get("n", 0) if session is not None else 0
    return PlainTextResponse(str(n))


async def write(request: Request) -> Response:
    session = request.scope.get("session")
    if session is None:
        return PlainTextResponse("0")
    session["n"] = session.get("n", 0) + 1
    return PlainTextResponse(str(session["n"]))


async def untouched(request: Request) -> Response:
    return PlainTextResponse("ok")


ROUTES = [Route("/read", read), Route("/write", write), Route("/none", untouched)]


def app_with(*middleware: Middleware) -> App:
    return Starlette(routes=ROUTES, middleware=list(middleware))  # type: ignore[return-value]


async def call(app: App, path: str, cookie: str | None) -> list[bytes]:
    headers = [(b"host", b"bench")]
    if cookie is not None:
        headers.append((b"cookie", f"session={cookie}".encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("bench", 443),
    }
    set_cookies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
            set_cookies.extend(v for k, v in message["headers"] if k == b"set-cookie")

    await app(scope, receive, send)
    return set_cookies


def cookie_value(set_cookies: list[bytes]) -> str:
    first = set_cookies[0].decode()
    return first.split(";", 1)[0].split("=", 1)[1]


async def rate(app: App, path: str, cookie: str | None, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await call(app, path, cookie)
    return n / (time.perf_counter() - start)


async def redis_cost(n: int) -> None:
    """Redis time per request (µs, ``INFO commandstats``) on a private server, per variant."""
    if shutil.which("redis-server") is None:
        print("\nredis-server is not on PATH: no Redis-side cost table")
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = await asyncio.create_subprocess_exec(
        "redis-server", *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        client = aioredis.Redis(port=port)
        for _ in range(200):
            try:
                await client.ping()
                break
            except aioredis.ConnectionError:
                await asyncio.sleep(0.02)
        from starsessions import SessionAutoloadMiddleware
        from starsessions import SessionMiddleware as StarSessionMiddleware
        from starsessions.stores.redis import RedisStore

        store = SessionStore(RedisSessionBackend(client), secret_key=SERVER_KEY)
        variants = {
            "scalekit, Redis": app_with(
                Middleware(SessionMiddleware, store=store, secret_keys=[COOKIE_KEY])
            ),
            "starsessions, Redis": app_with(
                Middleware(
                    StarSessionMiddleware,
                    store=RedisStore(connection=client),
                    lifetime=900,
                    rolling=True,
                ),
                Middleware(SessionAutoloadMiddleware),
            ),
        }
        paths = ["/read", "/write"]
        print(
            "\nRedis time per request on a private redis-server, µs: command execution "
            "(INFO commandstats) / whole process CPU incl. network I/O (INFO cpu)\n"
        )
        print(f"{'variant':<28}" + "".join(f"{p:>24}" for p in paths))
        for name, app in variants.items():
            cookie = cookie_value(await call(app, "/write", None))
            cells = ""
            for path in paths:
                await client.config_resetstat()
                cpu = await client.info("cpu")
                await rate(app, path, cookie, n)
                stats = await client.info("commandstats")
                after = await client.info("cpu")
                # a script's own commands are counted in its time and again on their own rows
                top = sum(
                    v["usec"]
                    for k, v in stats.items()
                    if k in ("cmdstat_evalsha", "cmdstat_get", "cmdstat_set", "cmdstat_hgetall")
                )
                used = sum(after[k] - cpu[k] for k in ("used_cpu_sys", "used_cpu_user"))
                cells += f"{top / n:>11.1f} / {used * 1e6 / n:>10.1f}"
            print(f"{name:<28}{cells}")
        await client.aclose()
    finally:
        server.kill()
        await server.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--redis-cost",
        action="store_true",
        help="also measure Redis CPU time per request on a private redis-server",
    )
    args = parser.parse_args()
    n, batches = (100, 3) if args.quick else (250, 20)
    prefix = f"bench_sessions_{uuid.uuid4().hex[:8]}"

    from starsessions import SessionAutoloadMiddleware
    from starsessions import SessionMiddleware as StarSessionMiddleware
    from starsessions.stores.redis import RedisStore

    clients = [aioredis.Redis.from_url(args.redis_url) for _ in range(2)]
    scalekit_store = SessionStore(
        RedisSessionBackend(clients[0]), secret_key=SERVER_KEY, key_prefix=f"{prefix}:sk:"
    )
    encrypted_store = SessionStore(
        RedisSessionBackend(clients[0]),
        secret_key=SERVER_KEY,
        key_prefix=f"{prefix}:enc:",
        encryption_keys=["bench-data-key-0123456789abcdef"],
    )
    memory_store = SessionStore(MemorySessionBackend(), secret_key=SERVER_KEY)
    variants: dict[str, App] = {
        "bare ASGI (no sessions)": app_with(),
        "scalekit, memory backend": app_with(
            Middleware(SessionMiddleware, store=memory_store, secret_keys=[COOKIE_KEY])
        ),
        "scalekit, Redis": app_with(
            Middleware(SessionMiddleware, store=scalekit_store, secret_keys=[COOKIE_KEY])
        ),
        "scalekit, Redis, encrypted": app_with(
            Middleware(SessionMiddleware, store=encrypted_store, secret_keys=[COOKIE_KEY])
        ),
        "starsessions, Redis": app_with(
            Middleware(
                StarSessionMiddleware,
                store=RedisStore(connection=clients[1], prefix=f"{prefix}:ss:"),
                lifetime=900,
                rolling=True,
            ),
            Middleware(SessionAutoloadMiddleware),
        ),
    }
    commands = {id(c): 0 for c in clients}
    for client in clients:  # count Redis commands per request (deterministic, unlike timings)
        original = client.execute_command

        async def counted(
            *args: Any, _orig: Any = original, _id: int = id(client), **kwargs: Any
        ) -> Any:
            commands[_id] += 1
            return await _orig(*args, **kwargs)

        client.execute_command = counted  # type: ignore[method-assign]
    redis_of = {
        "scalekit, Redis": id(clients[0]),
        "scalekit, Redis, encrypted": id(clients[0]),
        "starsessions, Redis": id(clients[1]),
    }

    cookies: dict[str, str | None] = {}
    for name, app in variants.items():
        made = await call(app, "/write", None)
        cookies[name] = cookie_value(made) if made else None

    paths = ["/none", "/read", "/write"]
    per_request: dict[tuple[str, str], float] = {}
    for name, app in variants.items():  # warm up, and count commands
        for path in paths:
            before = commands.get(redis_of.get(name, 0), 0)
            await rate(app, path, cookies[name], 100)
            after = commands.get(redis_of.get(name, 0), 0)
            per_request[(name, path)] = (after - before) / 100

    # Small batches, round-robin across variants, so every variant sees the same machine noise.
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(batches):
        for path in paths:
            for name, app in variants.items():
                results.setdefault((name, path), []).append(await rate(app, path, cookies[name], n))

    print(f"\nsession middleware, sequential requests through ASGI: {batches} batches of {n}")
    print(f"Redis: {args.redis_url.split('@')[-1]}; median requests/s (µs per request)\n")
    header = f"{'variant':<28}" + "".join(f"{p:>24}" for p in paths)
    print(header)
    print("-" * len(header))
    med = {key: statistics.median(values) for key, values in results.items()}
    for name in variants:
        cells = "".join(f"{med[(name, p)]:>12,.0f} ({1e6 / med[(name, p)]:>6.1f}µs)" for p in paths)
        print(f"{name:<28}{cells}")
    bare = "bare ASGI (no sessions)"
    print("\noverhead over the bare app, µs per request (lower is better)\n")
    print(header)
    print("-" * len(header))
    for name in variants:
        if name == bare:
            continue
        cells = "".join(
            f"{1e6 / med[(name, p)] - 1e6 / med[(bare, p)]:>23.1f}" + " " for p in paths
        )
        print(f"{name:<28}{cells}")
    print("\nRedis commands per request (a request with a valid session cookie)\n")
    print(header)
    print("-" * len(header))
    for name in redis_of:
        print(f"{name:<28}" + "".join(f"{per_request[(name, p)]:>24.1f}" for p in paths))
    print("\nscalekit (Redis) speed vs starsessions (Redis): ratio of requests/s\n")
    for p in paths:
        ratio = med[("scalekit, Redis", p)] / med[("starsessions, Redis", p)]
        print(f"  {p:<8} {ratio:5.2f}x")

    for client in clients:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
        await client.aclose()
    if args.redis_cost:
        await redis_cost(1000 if args.quick else 5000)


if __name__ == "__main__":
    asyncio.run(main())
