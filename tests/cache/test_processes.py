"""Behaviour across real processes: the distributed lease and near-cache invalidation."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parents[2]

LEASE_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import redis.asyncio as aioredis
    from scalekit.cache import Cache, RedisBackend

    async def main(url, ns):
        client = aioredis.Redis.from_url(url)
        cache = Cache(RedisBackend(client, timeout=5.0), namespace=ns, lease=True, lease_ttl=5)

        async def loader():
            await client.incr(ns + ":loads")
            await asyncio.sleep(0.3)
            return "value"

        while not await client.exists(ns + ":go"):
            await asyncio.sleep(0.005)
        results = await asyncio.gather(*(cache.get_or_load("hot", loader) for _ in range(50)))
        assert results == ["value"] * 50, results
        print("ok", flush=True)
        await client.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


async def test_four_processes_load_once_with_the_lease(redis_url: str, unique: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            LEASE_WORKER,
            redis_url,
            unique,
            env=_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    try:
        await asyncio.sleep(0)  # the workers poll for the "go" key
        await client.set(unique + ":go", 1, ex=60)
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
        for proc, (out, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err.decode()
            assert out.decode().strip() == "ok"
        assert int(await client.get(unique + ":loads") or 0) == 1
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
        keys = [k async for k in client.scan_iter(match=unique + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


NEAR_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    import redis.asyncio as aioredis
    from scalekit.cache import Cache, NearCache, RedisBackend

    async def main(url, ns, mode):
        client = aioredis.Redis.from_url(url)
        near = NearCache(max_ttl=60, mode=mode)
        cache = Cache(RedisBackend(client, timeout=5.0), namespace=ns, near=near)
        assert await near.wait_connected(), "link did not come up"
        print("ready", flush=True)
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "get":
                value = await cache.get(arg)
                print(f"{value}|{cache.stats().near_hits}", flush=True)
            elif cmd == "get_until_near":
                before = cache.stats().near_hits
                for _ in range(400):
                    value = await cache.get(arg)
                    if cache.stats().near_hits > before:
                        break
                    await asyncio.sleep(0.005)
                print(f"{value}|{cache.stats().near_hits > before}", flush=True)
            elif cmd == "set":
                key, value = arg.split("=")
                await cache.set(key, value)
                print("done", flush=True)
            elif cmd == "wait_invalidated":
                for _ in range(400):
                    if arg not in near._data:
                        break
                    await asyncio.sleep(0.005)
                print("gone" if arg not in near._data else "still", flush=True)
            elif cmd == "quit":
                break
        await cache.aclose()
        await client.aclose()

    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
    """
)


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write((line + "\n").encode())
        await self.proc.stdin.drain()
        reply = await asyncio.wait_for(self.proc.stdout.readline(), 20)
        return reply.decode().strip()


async def _spawn(redis_url: str, unique: str, mode: str) -> Worker:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        NEAR_WORKER,
        redis_url,
        unique,
        mode,
        env=_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert ready.decode().strip() == "ready"
    return Worker(proc)


async def _near_invalidation_across_processes(redis_url: str, unique: str, mode: str) -> None:
    a = await _spawn(redis_url, unique, mode)
    b = await _spawn(redis_url, unique, mode)
    try:
        assert await a.ask("set k=v1") == "done"
        # b reads from Redis until its L1 holds the value (a fill racing the invalidation of
        # a's own write is refused, so the first read may not fill)
        assert await b.ask("get_until_near k") == "v1|True"
        assert await a.ask("set k=v2") == "done"
        assert await b.ask(f"wait_invalidated {unique}:k") == "gone"
        assert (await b.ask("get k")).startswith("v2|")  # re-read from Redis, not the stale L1
        assert await b.ask("get_until_near k") == "v2|True"
    finally:
        for w in (a, b):
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
        client = aioredis.Redis.from_url(redis_url)
        await client.delete(unique + ":k")
        await client.aclose()


async def test_near_cache_invalidation_across_two_processes_tracking(
    redis_url: str, unique: str
) -> None:
    await _near_invalidation_across_processes(redis_url, unique, "tracking")


async def test_near_cache_invalidation_across_two_processes_pubsub(
    redis_url: str, unique: str
) -> None:
    await _near_invalidation_across_processes(redis_url, unique, "pubsub")
