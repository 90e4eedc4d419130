"""Circuit breakers compared in one process run: scalekit vs pybreaker, aiobreaker, purgatory,
circuitbreaker and aiomisc.

Measured, each as the median of several repeats, in ns per call:

* **closed**: one protected call of a trivial coroutine, and its ratio to a bare ``await f()``
  (scalekit through ``call``, ``@breaker`` and ``async with``, with a count and a time window);
* **open**: one rejected call (raise + catch), for the first and the last batch of rejections,
  so a rejection cost that grows (a traceback kept and extended, as in purgatory) shows up;
* **shared**: scalekit with :class:`RedisBreakerStore` on local Redis (closed path) and
  purgatory with its Redis unit of work, if Redis answers at ``REDIS_URL``.

Times are the CPU time of this process (``time.process_time_ns``), so other jobs on a shared
machine do not land in the ratios; ``--wall`` uses the wall clock instead. The closed-state loops
run round-robin, and each ratio is the median over rounds of the loop's cost divided by the bare
await's cost in the same round.

Run: ``python benchmarks/bench_resilience.py [--quick] [--wall]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from scalekit.resilience import CircuitBreaker, RedisBreakerStore, TimeWindow

warnings.filterwarnings("ignore")

Loop = Callable[[int], Awaitable[None]]

now_ns = time.process_time_ns  # --wall: time.perf_counter_ns


async def f() -> int:
    return 1


async def boom() -> int:
    raise ValueError("down")


async def measure(loop: Loop, n: int, repeat: int, timer: Callable[[], int] | None = None) -> float:
    """Median ns per operation of ``loop(n)`` over ``repeat`` runs (after one warm-up)."""
    clock = timer or now_ns
    await loop(min(n, 2000))
    samples = []
    for _ in range(repeat):
        start = clock()
        await loop(n)
        samples.append((clock() - start) / n)
    return statistics.median(samples)


async def paired(
    loops: list[tuple[str, Loop]], n: int, repeat: int
) -> dict[str, tuple[float, float]]:
    """Round-robin the loops ``repeat`` times; per loop: median ns/op and median ratio to the
    first loop measured in the same round (so machine load shifts hit every candidate alike)."""
    for _, loop in loops:
        await loop(min(n, 2000))
    times: dict[str, list[float]] = {name: [] for name, _ in loops}
    ratios: dict[str, list[float]] = {name: [] for name, _ in loops}
    for _ in range(repeat):
        base = 0.0
        for i, (name, loop) in enumerate(loops):
            start = now_ns()
            await loop(n)
            cost = (now_ns() - start) / n
            if i == 0:
                base = cost
            times[name].append(cost)
            ratios[name].append(cost / base)
    return {
        name: (statistics.median(times[name]), statistics.median(ratios[name])) for name, _ in loops
    }


# -- closed-state loops ----------------------------------------------------------------------


async def bare(n: int) -> None:
    for _ in range(n):
        await f()


def scalekit_call(**options: Any) -> Loop:
    b = CircuitBreaker("bench", **options)

    async def loop(n: int) -> None:
        call = b.call
        for _ in range(n):
            await call(f)

    return loop


def scalekit_decorated(**options: Any) -> Loop:
    g = CircuitBreaker("bench", **options)(f)

    async def loop(n: int) -> None:
        for _ in range(n):
            await g()

    return loop


def scalekit_async_with(**options: Any) -> Loop:
    b = CircuitBreaker("bench", **options)

    async def loop(n: int) -> None:
        for _ in range(n):
            async with b:
                await f()

    return loop


def pybreaker_call() -> Loop:
    import pybreaker

    b = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600)

    async def loop(n: int) -> None:
        for _ in range(n):
            await b.call(f)  # call() returns the coroutine unawaited: it sees no async failure

    return loop


def aiobreaker_call() -> Loop:
    import aiobreaker

    b = aiobreaker.CircuitBreaker(fail_max=5)

    async def loop(n: int) -> None:
        for _ in range(n):
            await b.call_async(f)

    return loop


def purgatory_decorated() -> Loop:
    from purgatory import AsyncCircuitBreakerFactory

    factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)
    g = factory("bench")(f)

    async def loop(n: int) -> None:
        for _ in range(n):
            await g()

    return loop


def circuitbreaker_decorated() -> Loop:
    from circuitbreaker import circuit

    g = circuit(failure_threshold=5, recovery_timeout=3600)(f)

    async def loop(n: int) -> None:
        for _ in range(n):
            await g()

    return loop


def aiomisc_call() -> Loop:
    import aiomisc

    b = aiomisc.CircuitBreaker(error_ratio=0.5, response_time=10)

    async def loop(n: int) -> None:
        for _ in range(n):
            await b.call_async(f)

    return loop


# -- open-state loops ------------------------------------------------------------------------


def rejecting(call: Callable[[], Awaitable[Any]], errors: tuple[type[BaseException], ...]) -> Loop:
    async def loop(n: int) -> None:
        for _ in range(n):
            try:  # noqa: SIM105 - suppress() would add its own cost to every rejection
                await call()
            except errors:
                pass

    return loop


async def open_scalekit() -> Loop:
    from scalekit.errors import CircuitOpenError

    b = CircuitBreaker("bench-open", minimum_calls=5, open_duration=3600)
    for _ in range(5):
        with contextlib.suppress(ValueError):
            await b.call(boom)
    assert b.state.value == "open"
    return rejecting(lambda: b.call(f), (CircuitOpenError,))


async def open_pybreaker() -> Loop:
    import pybreaker

    b = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600)
    b.open()
    return rejecting(lambda: b.call(f), (pybreaker.CircuitBreakerError,))


async def open_aiobreaker() -> Loop:
    import aiobreaker

    b = aiobreaker.CircuitBreaker(fail_max=5)
    b.open()
    return rejecting(lambda: b.call_async(f), (aiobreaker.CircuitBreakerError,))


async def open_purgatory() -> Loop:
    from purgatory import AsyncCircuitBreakerFactory
    from purgatory.domain.model import OpenedState

    factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600)
    g = factory("bench-open")(f)
    bad = factory("bench-open")(boom)
    for _ in range(5):
        with contextlib.suppress(ValueError):
            await bad()
    return rejecting(g, (OpenedState,))


async def open_circuitbreaker() -> Loop:
    from circuitbreaker import CircuitBreakerError, circuit

    cb = circuit(failure_threshold=5, recovery_timeout=3600)
    g, bad = cb(f), cb(boom)
    for _ in range(5):
        with contextlib.suppress(ValueError):
            await bad()
    return rejecting(g, (CircuitBreakerError,))


async def open_aiomisc() -> Loop:
    import aiomisc
    from aiomisc.circuit_breaker import CircuitBreakerStates

    b = aiomisc.CircuitBreaker(error_ratio=0.5, response_time=10)
    # aiomisc has no public "open" switch: put it in BROKEN the way its own state machine does
    b._state = CircuitBreakerStates.BROKEN
    b._stuck_until = time.monotonic() + 3600
    b._last_exception = ValueError("down")
    return rejecting(lambda: b.call_async(f), (aiomisc.CircuitBroken,))


# -- shared state ----------------------------------------------------------------------------


async def shared_loops(redis_url: str) -> list[tuple[str, Loop, Callable[[], Awaitable[None]]]]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    await client.ping()
    prefix = f"bench:{os.getpid()}"
    b = CircuitBreaker("bench", store=RedisBreakerStore(client, prefix=prefix))

    async def sk(n: int) -> None:
        call = b.call
        for _ in range(n):
            await call(f)

    async def close_sk() -> None:
        await b.aclose()
        await client.delete(f"{prefix}:{{bench}}")
        await client.aclose()

    loops: list[tuple[str, Loop, Callable[[], Awaitable[None]]]] = [
        ("scalekit RedisBreakerStore (closed)", sk, close_sk)
    ]
    try:
        from purgatory import AsyncCircuitBreakerFactory, AsyncRedisUnitOfWork

        uow = AsyncRedisUnitOfWork(redis_url)
        factory = AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=3600, uow=uow)
        await factory.initialize()
        g = factory(f"{prefix}-purgatory")(f)

        async def pg(n: int) -> None:
            for _ in range(n):
                await g()

        async def close_pg() -> None:
            with contextlib.suppress(Exception):
                await uow.contexts.redis.close()

        loops.append(("purgatory AsyncRedisUnitOfWork (closed)", pg, close_pg))
    except Exception as exc:  # pragma: no cover - reported, not fatal
        print(f"purgatory redis skipped: {exc!r}")
    return loops


# -- report ----------------------------------------------------------------------------------


def table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--wall", action="store_true", help="wall-clock time, not CPU time")
    args = parser.parse_args()
    global now_ns
    if args.wall:
        now_ns = time.perf_counter_ns
    n, repeat = (5_000, 3) if args.quick else (20_000, 25)
    clock = "wall clock" if args.wall else "process CPU time"
    print(f"python {sys.version.split()[0]}, {n} calls x {repeat} rounds, median, {clock}")
    window = TimeWindow(seconds=60)

    closed: list[tuple[str, Loop]] = [
        ("bare await f()", bare),
        ("scalekit breaker.call(f)", scalekit_call()),
        ("scalekit @breaker", scalekit_decorated()),
        ("scalekit async with breaker", scalekit_async_with()),
        ("scalekit TimeWindow breaker.call(f)", scalekit_call(window=window)),
        ("scalekit TimeWindow @breaker", scalekit_decorated(window=window)),
        ("scalekit TimeWindow async with", scalekit_async_with(window=window)),
        ("circuitbreaker @circuit", circuitbreaker_decorated()),
        ("pybreaker call(f) [never awaits f]", pybreaker_call()),
        ("aiobreaker call_async(f)", aiobreaker_call()),
        ("purgatory @factory(name)", purgatory_decorated()),
        ("aiomisc call_async(f)", aiomisc_call()),
    ]
    paired_results = await paired(closed, n, repeat)
    results = {k: v[0] for k, v in paired_results.items()}
    base = results["bare await f()"]
    table(
        "closed state: one protected call of a trivial coroutine (ratio paired per round)",
        ["breaker", "ns/call", "x bare await"],
        [[k, f"{v:.0f}", f"{r:.2f}x"] for k, (v, r) in paired_results.items()],
    )

    opened = [
        ("scalekit", open_scalekit),
        ("circuitbreaker", open_circuitbreaker),
        ("pybreaker", open_pybreaker),
        ("aiobreaker", open_aiobreaker),
        ("purgatory", open_purgatory),
        ("aiomisc", open_aiomisc),
    ]
    batches = 5 if args.quick else 10
    size = n // 5 if args.quick else 20_000
    rows = []
    for name, make in opened:
        loop = await make()
        costs = [await measure(loop, size, 1) for _ in range(batches)]
        rows.append(
            [
                name,
                f"{costs[0]:.0f}",
                f"{costs[-1]:.0f}",
                f"{costs[-1] / costs[0]:.2f}x",
                str(batches * (size + min(size, 2000))),
            ]
        )
    table(
        "open state: one rejected call (raise + catch)",
        ["breaker", "ns first batch", "ns last batch", "growth", "rejections"],
        rows,
    )

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        loops = await shared_loops(redis_url)
    except Exception as exc:
        print(f"\nshared state skipped: Redis at {redis_url} did not answer ({exc!r})")
        return
    rows = []
    local = results["scalekit breaker.call(f)"]
    for name, loop, close in loops:
        shared_n = n if name.startswith("scalekit") else max(500, n // 50)
        # wall clock: the cost of a network round trip is waiting, not CPU
        cost = await measure(loop, shared_n, min(repeat, 7), time.perf_counter_ns)
        rows.append([name, f"{cost:.0f}", f"{cost / base:.2f}x", f"{cost / local:.2f}x"])
        await close()
    table(
        "shared state on local Redis: closed-state call",
        ["breaker", "ns/call", "x bare await", "x scalekit local"],
        rows,
    )


if __name__ == "__main__":
    asyncio.run(main())
