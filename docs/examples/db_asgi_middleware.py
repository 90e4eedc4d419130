# requires: postgres, postgres_replica
"""One consistency scope per request, carried to the next request by a header or cookie."""

from __future__ import annotations

import asyncio
import os

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from scalekit.db import ConsistencyMiddleware, Database

PRIMARY = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPLICA = os.environ.get("DATABASE_REPLICA_URL", "postgresql://postgres@127.0.0.1:5433/test")
TABLE = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + "_profiles"

db = Database(PRIMARY, [REPLICA], token_secret=os.environ.get("SECRET", "x" * 32))


async def update_profile(request: Request) -> JSONResponse:
    name = (await request.json())["name"]
    await db.execute(f"UPDATE {TABLE} SET name = $1 WHERE id = 1", name)
    return JSONResponse({"ok": True})  # the middleware adds x-consistency-token and the cookie


async def show_profile(request: Request) -> JSONResponse:
    return JSONResponse({"name": await db.fetchval(f"SELECT name FROM {TABLE} WHERE id = 1")})


app = ConsistencyMiddleware(
    Starlette(
        routes=[
            Route("/profile", update_profile, methods=["POST"]),
            Route("/profile", show_profile),
        ]
    ),
    db=db,
    cookie="ryw",  # browsers send it back; API clients can echo the header instead
)


async def main() -> None:
    async with db:
        await db.primary.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text)")
        await db.primary.execute(f"INSERT INTO {TABLE} VALUES (1, 'old')")
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as browser:
                posted = await browser.post("/profile", json={"name": "new"})
                assert "x-consistency-token" in posted.headers
                # the next request carries the cookie: it reads its own write, wherever it lands
                assert (await browser.get("/profile")).json() == {"name": "new"}
        finally:
            await db.primary.execute(f"DROP TABLE IF EXISTS {TABLE}")


if __name__ == "__main__":
    asyncio.run(main())
