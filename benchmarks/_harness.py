"""A small shared harness: run contenders in one process, repeat, print medians and ratios.

Machines are noisy, so a benchmark always runs scalekit and its peers in the same process run,
interleaved round by round, and reports ratios to a baseline (the raw driver or a bare call):
ratios move a few percent between runs where absolute numbers move tens of percent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Contender", "Result", "measure_async", "parse_args", "print_table", "run_rounds"]


@dataclass(frozen=True, slots=True)
class Contender:
    """One thing being measured: ``op`` is awaited ``n`` times per round."""

    name: str
    op: Callable[[], Awaitable[object]]
    concurrency: int = 1


@dataclass(slots=True)
class Result:
    """Per-round seconds-per-operation samples of one contender."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """Median seconds per operation."""
        return statistics.median(self.samples)

    @property
    def ops_per_s(self) -> float:
        """Operations per second at the median."""
        return 1.0 / self.median if self.median > 0 else float("inf")


async def measure_async(op: Callable[[], Awaitable[object]], n: int, concurrency: int = 1) -> float:
    """Seconds per operation for ``n`` awaits of ``op``, ``concurrency`` at a time."""
    gc.collect()
    if concurrency <= 1:
        start = time.perf_counter()
        for _ in range(n):
            await op()
        return (time.perf_counter() - start) / n
    per_worker = max(1, n // concurrency)

    async def worker() -> None:
        for _ in range(per_worker):
            await op()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return (time.perf_counter() - start) / (per_worker * concurrency)


async def run_rounds(
    contenders: Sequence[Contender], *, n: int, rounds: int, warmup: int | None = None
) -> list[Result]:
    """Measure every contender ``rounds`` times, interleaved, after a warm-up round each."""
    results = [Result(c.name) for c in contenders]
    for c in contenders:
        await measure_async(c.op, warmup if warmup is not None else max(1, n // 10), c.concurrency)
    for _ in range(rounds):
        for c, r in zip(contenders, results, strict=True):
            r.samples.append(await measure_async(c.op, n, c.concurrency))
    return results


def print_table(title: str, results: Sequence[Result], *, baseline: str) -> None:
    """Print median ns/op, ops/s and the ratio of each contender to ``baseline``."""
    base = next(r for r in results if r.name == baseline).median
    width = max(len(r.name) for r in results)
    print(f"\n{title}")
    print(f"{'contender':<{width}}  {'ns/op':>12}  {'ops/s':>12}  {'x ' + baseline:>14}")
    for r in results:
        print(
            f"{r.name:<{width}}  {r.median * 1e9:>12,.0f}  {r.ops_per_s:>12,.0f}  "
            f"{r.median / base:>14.2f}"
        )


def parse_args(description: str) -> argparse.Namespace:
    """Common flags: ``--quick`` for a smoke run, ``--rounds`` to repeat more."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per contender")
    return parser.parse_args()
