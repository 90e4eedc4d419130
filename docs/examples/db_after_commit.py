# requires: postgres
"""Invalidate a cache entry after the transaction commits: never before, never after a rollback."""

from __future__ import annotations

import asyncio
import os

from scalekit.cache import Cache, MemoryBackend
from scalekit.db import Database

PRIMARY = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TABLE = os.environ.get("SCALEKIT_EXAMPLE_PREFIX", "example") + "_prices"


async def main() -> None:
    cache = Cache(MemoryBackend(), namespace="prices", default_ttl=300)
    async with Database(PRIMARY) as db:
        await db.execute(f"CREATE TABLE {TABLE} (sku text PRIMARY KEY, cents int NOT NULL)")
        try:
            await db.execute(f"INSERT INTO {TABLE} VALUES ('tea', 300)")

            async def load_price() -> int:
                return int(await db.fetchval(f"SELECT cents FROM {TABLE} WHERE sku = 'tea'"))

            assert await cache.get_or_load("tea", load_price) == 300

            tx = db.transaction()
            async with tx as conn:
                await conn.execute(f"UPDATE {TABLE} SET cents = 350 WHERE sku = 'tea'")
                # Deleting here would let a reader cache 300 again before the COMMIT.
                tx.after_commit(cache.delete, "tea")
            assert await cache.get_or_load("tea", load_price) == 350

            try:
                async with db.transaction() as conn:
                    await conn.execute(f"UPDATE {TABLE} SET cents = 999 WHERE sku = 'tea'")
                    raise RuntimeError("payment provider said no")
            except RuntimeError:
                pass  # rolled back: no callback ran, the cached 350 is still right
            assert await cache.get("tea") == 350
        finally:
            await db.execute(f"DROP TABLE {TABLE}")


if __name__ == "__main__":
    asyncio.run(main())
