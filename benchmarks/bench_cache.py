"""scalekit.cache against raw redis-py (+json), aiocache and cashews, in one process run.

Measures, against one Redis server (a private redis-server on a free port by default, so the
command counts are exact and other users of the shared server add no noise; ``--redis-url``
to use another):

* the ``get`` hit path (~200 B JSON), one caller at a time and 64 concurrent callers;
* the near-cache hit path against a plain Redis round trip;
* a stampede: 1,000 concurrent callers on a cold key with a 50 ms loader: loader calls,
  Redis commands, caller errors and wall time.

Run: ``python benchmarks/bench_cache.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import redis.asyncio as aioredis
from _harness import measure_async as measure

from scalekit.cache import Cache, NearCache, RedisBackend

# aiocache logs a full traceback for every MaxConnectionsError in the stampede; the table counts them.
logging.getLogger("aiocache").setLevel(logging.CRITICAL)

warnings.filterwarnings("ignore", category=DeprecationWarning)

DOC = {
    "id": 12345,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "roles": ["admin", "editor", "viewer"],
    "active": True,
    "score": 98.5,
    "bio": "Mathematician and writer, chiefly known for her work on the Analytical Engine.",
}


# -- rounds and tables over the shared harness's measurement ----------------------------------


async def rounds(
    contenders: dict[str, Callable[[], Awaitable[Any]]], n: int, repeat: int, concurrency: int
) -> dict[str, float]:
    """Median seconds per op of each contender, measured interleaved round by round."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for op in contenders.values():
        await measure(op, max(50, n // 10), concurrency)
    for _ in range(repeat):
        for name, op in contenders.items():
            samples[name].append(await measure(op, n, concurrency))
    return {name: statistics.median(s) for name, s in samples.items()}


def table(title: str, medians: dict[str, float], baseline: str) -> None:
    base = medians[baseline]
    print(f"\n{title}")
    print(f"  {'contender':<34} {'us/op':>9} {'ops/s':>10} {'x ' + baseline:>14}")
    for name, sec in medians.items():
        print(f"  {name:<34} {sec * 1e6:>9.2f} {1 / sec:>10.0f} {sec / base:>14.3f}")


# -- the server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_private_redis() -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bench_cache_")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--logfile",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    return proc, port, workdir


async def commands(client: aioredis.Redis) -> int:
    info = await client.info("stats")
    return int(info["total_commands_processed"])


# -- contenders ---------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--redis-url", default=None, help="use this server instead")
    args = parser.parse_args()
    n, repeat, callers = (300, 2, 1000) if args.quick else (4000, 5, 1000)

    proc = None
    if args.redis_url is None:
        if shutil.which("redis-server") is None:
            sys.exit("redis-server is not on PATH; pass --redis-url")
        proc, port, workdir = start_private_redis()
        url = f"redis://127.0.0.1:{port}/0"
    else:
        url = args.redis_url
    host_port = url.split("//")[1].split("/")[0]
    host, port = host_port.split(":")[0], int(host_port.split(":")[1])
    prefix = f"bench_cache_{os.getpid()}"

    import aiocache
    from aiocache.serializers import JsonSerializer as AioJson
    from cashews import Cache as CashewsCache

    raw = aioredis.Redis.from_url(url)
    sk = Cache(RedisBackend(raw), namespace=prefix + ":sk", default_ttl=600)
    near = NearCache(max_entries=10_000)
    sk_near = Cache(RedisBackend(raw), namespace=prefix + ":near", default_ttl=600, near=near)
    aio = aiocache.RedisCache(
        endpoint=host, port=port, namespace=prefix + ":aio", serializer=AioJson()
    )
    cashews = CashewsCache()
    cashews.setup(url, client_side=False)
    cashews_key = prefix + ":cashews:hit"

    raw_key = prefix + ":raw:hit"
    await raw.set(raw_key, json.dumps(DOC))
    await sk.set("hit", DOC)
    await sk_near.set("hit", DOC)
    await aio.set("hit", DOC)
    await cashews.set(cashews_key, DOC, expire=600)
    assert await near.wait_connected()
    for _ in range(10):
        await sk_near.get("hit")
    assert sk_near.stats().near_hits > 0, "near cache did not fill"

    import orjson

    async def raw_get() -> Any:
        return json.loads(await raw.get(raw_key))  # type: ignore[arg-type]

    async def raw_get_orjson() -> Any:
        return orjson.loads(await raw.get(raw_key))  # type: ignore[arg-type]

    async def sk_loader() -> Any:
        return DOC

    spread = [f"hit{i}" for i in range(64)]
    await sk.set_many(dict.fromkeys(spread, DOC))
    nxt = itertools.cycle(spread).__next__

    hit_ops: dict[str, Callable[[], Awaitable[Any]]] = {
        "raw redis-py + json": raw_get,
        "raw redis-py + orjson": raw_get_orjson,
        "scalekit Cache.get": lambda: sk.get("hit"),
        "scalekit get_or_load (hit)": lambda: sk.get_or_load("hit", sk_loader),
        "scalekit get_or_load (64 keys)": lambda: sk.get_or_load(nxt(), sk_loader),
        "aiocache RedisCache.get": lambda: aio.get("hit"),
        "cashews get": lambda: cashews.get(cashews_key),
    }
    for name, op in hit_ops.items():
        assert await op() == DOC, name

    print(f"scalekit.cache benchmark, Python {sys.version.split()[0]}, server {url}")
    print(f"n={n} per round, {repeat} rounds, median shown; ratios paired within this run")
    seq = await rounds(hit_ops, n, repeat, 1)
    table("GET hit path, ~200 B JSON, one caller at a time", seq, "raw redis-py + json")
    conc = await rounds(hit_ops, n, repeat, 64)
    table("GET hit path, 64 concurrent callers", conc, "raw redis-py + json")

    near_ops: dict[str, Callable[[], Awaitable[Any]]] = {
        "raw redis-py GET + json": raw_get,
        "scalekit Cache.get via Redis": lambda: sk.get("hit"),
        "scalekit Cache.get near hit": lambda: sk_near.get("hit"),
        "scalekit get_or_load near hit": lambda: sk_near.get_or_load("hit", sk_loader),
    }
    near_res = await rounds(near_ops, n * 5, repeat, 1)
    table("near cache hit vs a Redis round trip", near_res, "scalekit Cache.get near hit")
    speedup = near_res["raw redis-py GET + json"] / near_res["scalekit Cache.get near hit"]
    print(f"  near hit is {speedup:.0f}x faster than a raw Redis GET + json (goal >= 50x)")

    # -- stampede --------------------------------------------------------------------------
    print(f"\nStampede: {callers} concurrent callers on a cold key, loader 50 ms")
    print(f"  {'contender':<34} {'loads':>6} {'cmds':>6} {'errors':>7} {'wall s':>7}")

    async def stampede(name: str, make: Callable[[int], Callable[[], Awaitable[Any]]]) -> None:
        loads = 0

        async def loader() -> Any:
            nonlocal loads
            loads += 1
            await asyncio.sleep(0.05)
            return DOC

        holder["loader"] = loader
        holder["n"] = holder.get("n", 0) + 1
        call = make(holder["n"])  # a fresh cold key per run
        before = await commands(raw)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(call() for _ in range(callers)), return_exceptions=True)
        wall = time.perf_counter() - t0
        after = await commands(raw)
        errors = sum(1 for r in results if isinstance(r, BaseException))
        cmds = after - before - 1  # the INFO call itself
        print(f"  {name:<34} {loads:>6} {cmds:>6} {errors:>7} {wall:>7.3f}")

    holder: dict[str, Any] = {}

    def raw_aside(tag: int) -> Callable[[], Awaitable[Any]]:
        key = f"{prefix}:raw:cold:{tag}"

        async def call() -> Any:
            data = await raw.get(key)
            if data is not None:
                return json.loads(data)
            value = await holder["loader"]()
            await raw.set(key, json.dumps(value), ex=600)
            return value

        return call

    def sk_single(tag: int) -> Callable[[], Awaitable[Any]]:
        return lambda: sk.get_or_load(f"cold:{tag}", lambda: holder["loader"]())

    sk_lease_cache = Cache(RedisBackend(raw), namespace=prefix + ":skl", lease=True)

    def sk_lease(tag: int) -> Callable[[], Awaitable[Any]]:
        return lambda: sk_lease_cache.get_or_load(f"cold:{tag}", lambda: holder["loader"]())

    def aio_cached(tag: int) -> Callable[[], Awaitable[Any]]:
        @aiocache.cached(
            ttl=600,
            cache=aiocache.RedisCache,
            endpoint=host,
            port=port,
            namespace=f"{prefix}:aioc{tag}",
            serializer=AioJson(),
        )
        async def f() -> Any:
            return await holder["loader"]()

        return f

    def aio_stampede(tag: int) -> Callable[[], Awaitable[Any]]:
        @aiocache.cached_stampede(
            ttl=600,
            lease=2,
            cache=aiocache.RedisCache,
            endpoint=host,
            port=port,
            namespace=f"{prefix}:aios{tag}",
            serializer=AioJson(),
        )
        async def f() -> Any:
            return await holder["loader"]()

        return f

    def cashews_cached(tag: int) -> Callable[[], Awaitable[Any]]:
        @cashews(ttl="10m", key=f"{prefix}:cashews:cold:{tag}")
        async def f() -> Any:
            return await holder["loader"]()

        return f

    await stampede("raw redis-py cache-aside", raw_aside)
    await stampede("scalekit get_or_load", sk_single)
    await stampede("scalekit get_or_load lease=True", sk_lease)
    await stampede("  again (Lua scripts now cached)", sk_lease)
    await stampede("aiocache @cached", aio_cached)
    await stampede("aiocache @cached_stampede", aio_stampede)
    await stampede("cashews @cache", cashews_cached)

    # -- tags: the cost of a tagged hit, and a purge that races a load ----------------------
    tag_key = f"{prefix}:cashews:tagged"

    @cashews(ttl="10m", key=tag_key, tags=[f"{prefix}:catalog"])
    async def cashews_tagged() -> Any:
        return DOC

    tag_ops: dict[str, Callable[[], Awaitable[Any]]] = {
        "scalekit get_or_load, no tags": lambda: sk.get_or_load("hit", sk_loader),
        "scalekit get_or_load, 2 tags": lambda: sk.get_or_load(
            "tagged", sk_loader, tags=["catalog", "tenant:1"]
        ),
        "cashews @cache, 1 tag": cashews_tagged,
    }
    for name, op in tag_ops.items():
        assert await op() == DOC, name
    tagged = await rounds(tag_ops, n, repeat, 1)
    table("tagged read-through hit, one caller at a time", tagged, "scalekit get_or_load, no tags")

    async def raced(
        load: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]],
        purge: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Start a load that reads the old row, purge the tag meanwhile, finish the load,
        then read again: what the next caller is served."""
        row = {"price": 10}
        reading, release = asyncio.Event(), asyncio.Event()

        async def loader() -> Any:
            value = dict(row)
            reading.set()
            await release.wait()
            return value

        first = asyncio.create_task(load(loader))
        await reading.wait()
        row["price"] = 12
        await purge()
        release.set()
        await first
        release.clear()

        async def fresh() -> Any:
            return dict(row)

        return (await load(fresh))["price"]

    race_holder: dict[str, Callable[[], Awaitable[Any]]] = {}

    @cashews(ttl="10m", key=f"{prefix}:cashews:raced", tags=[f"{prefix}:prices"])
    async def cashews_price() -> Any:
        return await race_holder["loader"]()

    async def cashews_load(loader: Callable[[], Awaitable[Any]]) -> Any:
        race_holder["loader"] = loader
        return await cashews_price()

    sk_seen = await raced(
        lambda loader: sk.get_or_load("price", loader, tags=["prices"]),
        lambda: sk.invalidate_tags(["prices"]),
    )
    cashews_seen = await raced(cashews_load, lambda: cashews.delete_tags(f"{prefix}:prices"))
    print("\nA load reads price 10, the price becomes 12 and its tag is purged, the load stores:")
    for name, seen in (("scalekit", sk_seen), ("cashews", cashews_seen)):
        verdict = "current" if seen == 12 else "STALE until its TTL"
        print(f"  {name:<10} next caller is served {seen}: {verdict}")

    print(f"\nscalekit stats: {sk.stats()}")
    # cleanup
    await sk.clear()
    await sk_near.clear()
    await sk_lease_cache.clear()
    await sk_near.aclose()
    keys = [k async for k in raw.scan_iter(match=prefix + "*")]
    if keys:
        await raw.delete(*keys)
    await aio.close()
    await cashews.close()
    await raw.aclose()
    if proc is not None:
        proc.kill()
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
