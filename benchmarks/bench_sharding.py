"""Shard routing: lookup cost, balance and movement of every strategy, against uhashring and
naive ``hash(key) % n``, in one process run.

    /work/venv/bin/python benchmarks/bench_sharding.py            # full run (about a minute)
    /work/venv/bin/python benchmarks/bench_sharding.py --quick    # smoke run

Lookup timings are medians of interleaved rounds of this process's CPU time
(``time.process_time``), so other processes on a shared machine distort them less; compare
ratios. ``hash(str)`` is cached on the string object, which flatters the naive baseline. Balance
is the coefficient of variation (stddev / mean) of keys per shard over string keys; "moved" is
the share of keys that change shard when one shard is added (ideal: 1/(N+1)).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import uhashring

from scalekit.sharding import (
    ACCELERATED,
    HashRing,
    JumpHash,
    Maglev,
    PostgresHash,
    RangeStrategy,
    Rendezvous,
    ShardRouter,
    jump_hash,
    key_hash,
)

Lookup = Callable[[Any], Any]


def mix(i: int) -> int:
    """A spread-out 128-bit value per index (random-looking UUIDs, reproducibly)."""
    return (i * 0x9E3779B97F4A7C15F39CC0605CEDC835) % (1 << 128)


def names(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def contenders(n: int) -> dict[str, Callable[[int], Lookup]]:
    """name -> factory(n_shards) -> lookup function."""

    def router(strategy: Any) -> Callable[[int], Lookup]:
        return lambda size: ShardRouter(dict.fromkeys(names(size)), strategy).shard_for

    def ring_split(size: int) -> Lookup:
        return ShardRouter(
            dict.fromkeys(names(size)), RangeStrategy.split_keyspace(names(size))
        ).shard_for

    def uh_ketama(size: int) -> Lookup:
        return uhashring.HashRing(names(size), hash_fn="ketama").get_node

    def uh_default(size: int) -> Lookup:
        return uhashring.HashRing(names(size)).get_node

    def naive(size: int) -> Lookup:
        shard_names = names(size)
        return lambda key: shard_names[hash(key) % size]

    def python_jump(size: int) -> Lookup:
        return JumpHash(cache_size=0)._bind_python(tuple(names(size)))

    return {
        "scalekit JumpHash": router(JumpHash()),
        "scalekit JumpHash, pure Python": python_jump,
        "scalekit Rendezvous": router(Rendezvous()),
        "scalekit Maglev": router(Maglev()),
        "scalekit HashRing ketama 160": router(HashRing(160)),
        "scalekit HashRing 1000 vnodes": router(HashRing(1000, ketama=False)),
        "scalekit Range split_keyspace": ring_split,
        "scalekit PostgresHash('text')": router(PostgresHash("text")),
        "uhashring ketama (160 pts)": uh_ketama,
        "uhashring default (160 vnodes)": uh_default,
        "naive hash(key) % n (unstable!)": naive,
    }


def per_key_ns(fn: Lookup, keys: list[Any], rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        gc.collect()
        start = time.process_time()
        for key in keys:
            fn(key)
        samples.append((time.process_time() - start) / len(keys) * 1e9)
    return statistics.median(samples)


def cov(counts: Counter[Any], n: int) -> float:
    loads = [counts.get(name, 0) for name in names(n)]
    mean = statistics.fmean(loads)
    return statistics.pstdev(loads) / mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args()
    lookup_keys = 2_000 if args.quick else 20_000
    balance_keys = 10_000 if args.quick else 200_000
    rounds = 3 if args.quick else 7
    sizes = (10, 100)
    str_keys = [f"user:{i}" for i in range(lookup_keys)]
    int_keys = list(range(10**9, 10**9 + lookup_keys))

    print(
        f"Python {sys.version.split()[0]}; lookups: median of {rounds} rounds over "
        f"{lookup_keys} keys; balance/movement over {balance_keys} string keys\n"
    )

    # -- decomposition of the jump hash path ------------------------------------------------
    pre = [key_hash(k) for k in str_keys]
    parts: list[tuple[str, Lookup, list[Any]]] = [
        ("blake2b-64 of a str key (key_hash)", key_hash, str_keys),
        ("splitmix64 of an int key (key_hash)", key_hash, int_keys),
        ("jump_hash(prehashed, 10)", lambda h: jump_hash(h, 10), pre),
        ("jump_hash(prehashed, 100)", lambda h: jump_hash(h, 100), pre),
    ]
    jump = {n: ShardRouter(dict.fromkeys(names(n)), JumpHash()).shard_for for n in sizes}
    python_jump = {n: JumpHash(cache_size=0)._bind_python(tuple(names(n))) for n in sizes}
    warm10 = JumpHash(cache_size=lookup_keys)._bind_python(tuple(names(10)))
    for key in str_keys:
        warm10(key)
    cold_keys: dict[str, list[Any]] = {
        "int": int_keys,
        "str": str_keys,
        "bytes": [k.encode() for k in str_keys],
        "UUID": [uuid.UUID(int=mix(i)) for i in range(lookup_keys)],
    }
    cold_rows = [(kind, n) for n in sizes for kind in cold_keys]
    parts += [
        (f"router.shard_for({kind}), N={n}", jump[n], cold_keys[kind]) for kind, n in cold_rows
    ]
    parts += [
        (f"pure Python, {kind}, N={n}", python_jump[n], cold_keys[kind]) for kind, n in cold_rows
    ]
    parts += [
        (
            "router.shard_for('{tag}:k'), N=10",
            jump[10],
            [f"{{t{i}}}:order" for i in range(lookup_keys)],
        ),
        ("builtin hash(str) % 10 (baseline)", lambda k: hash(k) % 10, str_keys),
        ("pure Python, str, N=10, cached key", warm10, str_keys),
    ]
    print(f"C accelerator: {'built, in use' if ACCELERATED else 'NOT in use (pure-Python paths)'}")
    print(
        "Jump hash path, ns per key (median of interleaved rounds; cold = every key computed, "
        "no cache)"
    )
    print(f"  {'operation':<40} {'ns/key':>8}")
    for _, fn, keys in parts:  # warm up: a new JumpHash router builds its step tables
        for key in keys:
            fn(key)
    # Rounds interleave the rows, so load from other processes spreads over all of them.
    part_samples: dict[str, list[float]] = {label: [] for label, _, _ in parts}
    for _ in range(rounds):
        for label, fn, keys in parts:
            part_samples[label].append(per_key_ns(fn, keys, 1))
    measured = {label: statistics.median(values) for label, values in part_samples.items()}
    for label, _, _ in parts:
        print(f"  {label:<40} {measured[label]:>8.0f}")
    print()

    # -- lookups per second, interleaved -----------------------------------------------------
    table: dict[str, dict[int, float]] = {}
    factories = contenders(10)
    built = {(name, n): factory(n) for name, factory in factories.items() for n in sizes}
    slow = {"scalekit Rendezvous"}
    samples: dict[tuple[str, int], list[float]] = {k: [] for k in built}
    for _ in range(rounds):
        for (name, n), fn in built.items():
            keys = (
                str_keys[: max(200, lookup_keys // 10)] if name in slow and n == 100 else str_keys
            )
            samples[(name, n)].append(per_key_ns(fn, keys, 1))
    for (name, n), values in samples.items():
        table.setdefault(name, {})[n] = statistics.median(values)

    # -- balance and movement ----------------------------------------------------------------
    bal_keys = [f"user:{i}" for i in range(balance_keys)]
    quality: dict[str, dict[str, float]] = {}
    for name, factory in factories.items():
        row: dict[str, float] = {}
        for n in sizes:
            keys = bal_keys if not (name in slow and n == 100) else bal_keys[: balance_keys // 5]
            before, after = factory(n), factory(n + 1)
            placed = [before(k) for k in keys]
            row[f"cov{n}"] = cov(Counter(placed), n) * 100
            moved = sum(1 for k, p in zip(keys, placed, strict=True) if after(k) != p)
            row[f"moved{n}"] = moved / len(keys) * 100
        quality[name] = row

    base = table["naive hash(key) % n (unstable!)"]
    print("Strategies: ns/lookup (str keys), lookups/s, balance CoV and keys moved N -> N+1")
    header = (
        f"  {'strategy':<32} {'ns N=10':>8} {'ns N=100':>9} {'lookups/s N=10':>15} "
        f"{'x naive':>8} {'CoV% 10':>8} {'CoV% 100':>9} {'moved% 10->11':>14} {'moved% 100->101':>16}"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    for name in factories:
        t, q = table[name], quality[name]
        print(
            f"  {name:<32} {t[10]:>8.0f} {t[100]:>9.0f} {1e9 / t[10]:>15,.0f} "
            f"{t[10] / base[10]:>7.1f}x {q['cov10']:>8.2f} {q['cov100']:>9.2f} "
            f"{q['moved10']:>14.2f} {q['moved100']:>16.2f}"
        )
    print(
        f"  {'ideal':<32} {'':>8} {'':>9} {'':>15} {'':>8} {'':>8} {'':>9} "
        f"{100 / 11:>14.2f} {100 / 101:>16.2f}"
    )
    floor10 = (1 / (len(bal_keys) / 10)) ** 0.5 * 100
    floor100 = (1 / (len(bal_keys) / 100)) ** 0.5 * 100
    print(
        f"\n  CoV noise floor of a perfect random placement: {floor10:.2f}% (N=10), "
        f"{floor100:.2f}% (N=100)"
    )
    print("\n  Goal: jump hash lookup under 1 us per key including hashing, cold (no cache):")
    for kind, n in cold_rows:
        ns = measured[f"router.shard_for({kind}), N={n}"]
        py = measured[f"pure Python, {kind}, N={n}"]
        print(
            f"    {kind:<5} N={n:<4} {ns:>6.0f} ns  {'met' if ns < 1000 else 'NOT met':<8}"
            f"  (pure-Python path {py:>5.0f} ns, {py / ns:.1f}x slower)"
        )


if __name__ == "__main__":
    main()
