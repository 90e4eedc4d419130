"""Benchmark: /readyz with cached results vs a bare ASGI app returning 200, in one run.

The ASGI apps are called directly (no HTTP client, no socket), so the numbers are the cost of
the health machinery itself: routing, cached group aggregation, rendering and the two ASGI
messages. Contenders are interleaved round by round; the table shows p50/p99 latency per
request over every round and the median requests/s of the rounds, with ratios to the bare app.

A second table shows a probe storm: 1,000 concurrent /readyz requests on a cold cache whose
checks take 5 ms each, and how many times each dependency was queried.

Run: /work/venv/bin/python benchmarks/bench_health.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from scalekit.health import CheckResult, HealthApp, HealthRegistry

Scope = dict[str, Any]


def scope(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [(b"host", b"pod"), (b"user-agent", b"kube-probe/1.30")],
        "client": ("10.0.0.1", 40000),
        "server": ("10.0.0.2", 8080),
    }


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class Sink:
    __slots__ = ("status",)

    def __init__(self) -> None:
        self.status = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


_BARE_HEADERS = [(b"content-type", b"application/health+json"), (b"content-length", b"17")]


async def bare_app(scope: Scope, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _BARE_HEADERS})
    await send({"type": "http.response.body", "body": b'{"status":"pass"}'})


def registry(*, cache_for: float = 5.0, delay: float = 0.0) -> HealthRegistry:
    reg = HealthRegistry(started=True, cache_for=cache_for)

    def check(value: float) -> Callable[[], Awaitable[CheckResult]]:
        async def run() -> CheckResult:
            if delay:
                await asyncio.sleep(delay)
            return CheckResult.passed(value, "ms")

        return run

    for name, value in (("redis:responseTime", 0.3), ("postgres:responseTime", 0.8)):
        reg.add(name, check(value), component_type="datastore")
    reg.add("rabbitmq:messages", check(12), critical=False)
    return reg


def contenders() -> list[tuple[str, Callable[[Scope, Any, Any], Awaitable[None]], Scope]]:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    hidden = HealthApp(registry())
    detailed = HealthApp(registry(), token="t0k3n")
    uncached = HealthApp(registry(cache_for=0.0))

    async def bare_route(request: Request) -> Response:
        return Response(b'{"status":"pass"}', media_type="application/health+json")

    starlette = Starlette(
        routes=[Route("/ping", bare_route), Mount("/health", HealthApp(registry()))]
    )
    auth = [(b"host", b"pod"), (b"authorization", b"Bearer t0k3n")]
    return [
        ("bare ASGI app returning 200", bare_app, scope("/readyz")),
        ("HealthApp /readyz (cached, public)", hidden, scope("/readyz")),
        ("HealthApp /readyz (cached, details+token)", detailed, scope("/readyz", auth)),
        ("HealthApp /livez (cached event-loop check)", hidden, scope("/livez")),
        ("HealthApp /readyz (checks run every probe)", uncached, scope("/readyz")),
        ("Starlette route returning 200", starlette, scope("/ping")),
        ("Starlette Mount -> HealthApp /readyz", starlette, scope("/health/readyz")),
    ]


async def one_round(app: Any, sc: Scope, n: int, latencies: list[int]) -> float:
    sink = Sink()
    clock = time.perf_counter_ns
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        t0 = clock()
        await app(sc.copy(), receive, sink)  # servers build a fresh scope per request
        latencies.append(clock() - t0)
    elapsed = time.perf_counter() - start
    assert sink.status == 200, sink.status
    return n / elapsed


async def latency_table(n: int, rounds: int) -> None:
    entries = contenders()
    for _, app, sc in entries:  # warm up: fill caches, JIT-free but import/alloc warm
        await one_round(app, sc, min(n, 500), [])
    lat: dict[str, list[int]] = {name: [] for name, _, _ in entries}
    rps: dict[str, list[float]] = {name: [] for name, _, _ in entries}
    for _ in range(rounds):
        for name, app, sc in entries:
            rps[name].append(await one_round(app, sc, n, lat[name]))
    base = statistics.median(rps[entries[0][0]])
    base_p50 = statistics.median(lat[entries[0][0]])
    print(
        f"\nProbe latency, direct ASGI call, {rounds} rounds x {n} requests (Python {sys.version.split()[0]})"
    )
    header = f"{'contender':48} {'p50 us':>8} {'p99 us':>8} {'req/s':>10} {'p50 x bare':>11} {'req/s / bare':>13}"
    print(header)
    print("-" * len(header))
    for name, _, _ in entries:
        samples = sorted(lat[name])
        p50 = samples[len(samples) // 2]
        p99 = samples[int(len(samples) * 0.99)]
        med = statistics.median(rps[name])
        print(
            f"{name:48} {p50 / 1000:8.2f} {p99 / 1000:8.2f} {med:10,.0f} "
            f"{p50 / base_p50:10.2f}x {med / base:12.2f}"
        )


async def storm_table() -> None:
    print("\nProbe storm: 1,000 concurrent /readyz, cold cache, each check takes 5 ms")
    reg = registry(delay=0.005)
    calls: dict[str, int] = {}
    app = HealthApp(reg)
    sink_statuses: list[int] = []

    async def probe() -> None:
        sink = Sink()
        await app(scope("/readyz"), receive, sink)
        sink_statuses.append(sink.status)

    start = time.perf_counter()
    await asyncio.gather(*(probe() for _ in range(1000)))
    elapsed = time.perf_counter() - start
    for name in reg.names:
        calls[name] = reg.runs(name)
    ok = sum(1 for s in sink_statuses if s == 200)
    print(f"  answered {ok}/1000 with 200 in {elapsed * 1000:.1f} ms")
    for name, count in calls.items():
        if name != "eventloop:lag":
            print(f"  {name:28} ran {count} time(s)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--n", type=int, default=None, help="requests per round")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (2_000 if args.quick else 20_000)
    rounds = args.rounds or (3 if args.quick else 7)
    await latency_table(n, rounds)
    await storm_table()


if __name__ == "__main__":
    asyncio.run(main())
