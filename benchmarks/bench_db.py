"""Benchmark: scalekit.db.Database versus a raw asyncpg pool, and the balancers' choice cost.

Run: ``python benchmarks/bench_db.py`` (``--quick`` for a smoke run). Needs the primary on
:5432 and the replica on :5433 (DATABASE_URL / DATABASE_REPLICA_URL override them).

Every contender runs in the same process, interleaved round by round, and is reported as a ratio
to the raw asyncpg pool on the same server: ``db.fetchval`` reads from the replica, so its
baseline is a raw pool on the replica.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from scalekit.balance import LeastOutstanding, PowerOfTwoChoices, RoundRobin
from scalekit.db import Database

PRIMARY = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPLICA = os.environ.get("DATABASE_REPLICA_URL", "postgresql://postgres@127.0.0.1:5433/test")
ROWS = 10_000
POOL = {"min_size": 10, "max_size": 10}


async def measure(op: Callable[[], Awaitable[object]], n: int, concurrency: int) -> float:
    """Seconds per operation for ``n`` awaits of ``op``, ``concurrency`` at a time."""
    gc.collect()
    per_worker = max(1, n // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            await op()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.perf_counter() - start) / (per_worker * concurrency)


def table(title: str, rows: dict[str, list[float]], baseline: str) -> None:
    base = statistics.median(rows[baseline])
    width = max(len(name) for name in rows)
    print(f"\n{title}")
    print(f"{'contender':<{width}}  {'us/op':>9}  {'ops/s':>9}  {'x ' + baseline:>10}")
    for name, samples in rows.items():
        med = statistics.median(samples)
        print(f"{name:<{width}}  {med * 1e6:>9.1f}  {1 / med:>9,.0f}  {med / base:>10.2f}")


async def bench_queries(n: int, rounds: int) -> None:
    name = f"bench_db_{os.getpid()}"
    setup = await asyncpg.connect(PRIMARY)
    await setup.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text NOT NULL)")
    await setup.execute(
        f"INSERT INTO {name} SELECT i, md5(i::text) FROM generate_series(1, {ROWS}) i"
    )
    replica_conn = await asyncpg.connect(REPLICA)
    for _ in range(600):  # wait for the rows to reach the replica
        if await replica_conn.fetchval(f"SELECT count(*) = {ROWS} FROM {name}"):
            break
        await asyncio.sleep(0.05)
    await replica_conn.close()
    raw_replica = await asyncpg.create_pool(REPLICA, **POOL)
    raw_primary = await asyncpg.create_pool(PRIMARY, **POOL)
    try:
        async with Database(PRIMARY, [REPLICA], **POOL) as db:
            indexed = f"SELECT v FROM {name} WHERE id = $1"
            rnd = random.Random(1).randrange
            ops: dict[str, dict[str, Callable[[], Awaitable[object]]]] = {
                "SELECT 1": {
                    "raw pool (replica)": lambda: raw_replica.fetchval("SELECT 1"),
                    "raw pool (primary)": lambda: raw_primary.fetchval("SELECT 1"),
                    "Database.fetchval": lambda: db.fetchval("SELECT 1"),
                },
                "indexed read": {
                    "raw pool (replica)": lambda: raw_replica.fetchval(indexed, rnd(1, ROWS)),
                    "raw pool (primary)": lambda: raw_primary.fetchval(indexed, rnd(1, ROWS)),
                    "Database.fetchval": lambda: db.fetchval(indexed, rnd(1, ROWS)),
                },
            }
            for query, contenders in ops.items():
                for concurrency in (1, 32):
                    samples: dict[str, list[float]] = {k: [] for k in contenders}
                    for op in contenders.values():
                        await measure(op, max(50, n // 10), concurrency)  # warm-up
                    for _ in range(rounds):
                        for label, op in contenders.items():
                            samples[label].append(await measure(op, n, concurrency))
                    table(f"{query}, concurrency {concurrency}", samples, "raw pool (replica)")
    finally:
        await raw_replica.close()
        await raw_primary.close()
        await setup.execute(f"DROP TABLE IF EXISTS {name}")
        await setup.close()


def bench_balancers(n: int, rounds: int) -> None:
    for size in (3, 10):
        samples: dict[str, list[float]] = {}
        balancers = {
            "RoundRobin": RoundRobin(range(size)),
            "LeastOutstanding": LeastOutstanding(range(size)),
            "PowerOfTwoChoices": PowerOfTwoChoices(range(size), seed=1),
        }
        for pname, balancer in balancers.items():
            for _ in range(3):
                balancer.observe(0, latency=0.001)
            choose = balancer.choose
            lease = balancer.lease

            def choose_only(choose: Callable[[], object] = choose) -> None:
                for _ in range(n):
                    choose()

            def lease_release(lease: Callable[[], object] = lease) -> None:
                for _ in range(n):
                    lease().release()  # type: ignore[attr-defined]

            for label, fn in (
                (f"{pname}.choose", choose_only),
                (f"{pname}.lease+release", lease_release),
            ):
                samples[label] = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    fn()
                    samples[label].append((time.perf_counter() - start) / n)
        base = "RoundRobin.choose"
        table(f"balancer choice, {size} endpoints (goal: a few microseconds)", samples, base)


class _StubConnection:
    async def fetchval(self, query: str, *args: object, **kwargs: object) -> int:
        return 1


class _StubPool:
    """A pool that answers instantly: isolates the Python cost of routing from the network."""

    def __init__(self) -> None:
        self.conn = _StubConnection()

    async def acquire(self) -> _StubConnection:
        return self.conn

    async def release(self, conn: object, **kwargs: object) -> None:
        return None

    async def fetchval(self, query: str) -> int:
        conn = await self.acquire()
        try:
            return await conn.fetchval(query)
        finally:
            await self.release(conn)


async def bench_overhead(n: int, rounds: int) -> None:
    db = Database("postgresql://stub@127.0.0.1:1/x", ["postgresql://stub@127.0.0.1:2/x"])
    replica = db._replicas[0]
    replica.pool = _StubPool()  # type: ignore[assignment]
    replica.available = True
    db._balancer.mark_up(replica)
    stub = _StubPool()
    contenders = {
        "stub pool.fetchval": lambda: stub.fetchval("SELECT 1"),
        "Database.fetchval over stub": lambda: db.fetchval("SELECT 1"),
    }
    samples: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for label, op in contenders.items():
            samples[label].append(await measure(op, n, 1))
    table("routing overhead per read (no network)", samples, "stub pool.fetchval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n, rounds = (200, 2) if args.quick else (3000, args.rounds)
    bench_balancers(20_000 if not args.quick else 2_000, rounds)
    asyncio.run(bench_overhead(20_000 if not args.quick else 2_000, rounds))
    asyncio.run(bench_queries(n, rounds))


if __name__ == "__main__":
    main()
