"""Placement strategies: determinism, balance, minimal movement, ketama compatibility."""

from __future__ import annotations

import statistics
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from hashlib import blake2b
from typing import Any
from unittest import mock

import pytest
import uhashring
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit._accel import speedups
from scalekit.errors import ConfigurationError, InvalidShardKeyError, UnknownShardError
from scalekit.sharding import (
    HashRing,
    JumpHash,
    Maglev,
    RangeStrategy,
    RegionStrategy,
    Rendezvous,
    Strategy,
    jump_hash,
    key_hash,
)
from scalekit.sharding import keys as keys_module
from scalekit.sharding.keys import MAX_KEY_BYTES
from scalekit.sharding.strategies import _maglev_table, _py_jump_hash
from tests.support.accel import needs_speedups

NAMES = [f"s{i}" for i in range(10)]
KEYS_100K = [f"user:{i}" for i in range(50_000)] + list(range(50_000))
any_key = st.one_of(st.integers(min_value=0), st.text(max_size=30), st.binary(max_size=30))


def reference_key_hash(key: object) -> int:
    """key_hash with every digest taken by hashlib (never the compiled BLAKE2b)."""
    with mock.patch.object(keys_module, "_digest64", keys_module._py_digest64):
        return key_hash(key)


def _python_jump(cache_size: int) -> Callable[[list[str]], Callable[[Any], str]]:
    return lambda names: JumpHash(cache_size=cache_size)._bind_python(tuple(names))


def _compiled_jump(names: list[str]) -> Callable[[Any], str]:
    assert speedups is not None
    placement: Callable[[Any], str] = speedups.JumpPlacement(tuple(names), key_hash, uuid.UUID)
    return placement


#: Every jump placement there is: the compiled one (when built) and the pure-Python one,
#: with and without its answer cache. All must give the reference answer for every key.
JUMP_IMPLEMENTATIONS = [
    pytest.param(
        _compiled_jump,
        id="compiled",
        marks=needs_speedups,
    ),
    pytest.param(_python_jump(0), id="python"),
    pytest.param(_python_jump(4), id="python-cached"),
]


def loads(strategy: Strategy, names: list[str], keys: list[object]) -> Counter[str]:
    place = strategy.bind(names)
    return Counter(place(k) for k in keys)


def test_jump_hash_matches_the_reference_implementation() -> None:
    # The test vectors shared by the Go, C and Elixir ports of Lamping and Veach's code.
    vectors = [
        (1, 1, 0),
        (42, 57, 43),
        (0xDEAD10CC, 1, 0),
        (0xDEAD10CC, 666, 361),
        (256, 1024, 520),
        (1, 128, 55),
        (129, 128, 120),
        (128, 100_000_000, 38172097),
        (128, 2147483648, 1644467860),
        (2**64 - 1, 128, 92),
    ]
    assert [jump_hash(k, n) for k, n, _ in vectors] == [b for _, _, b in vectors]
    assert [_py_jump_hash(k, n) for k, n, _ in vectors] == [b for _, _, b in vectors]


@pytest.mark.parametrize("bind", JUMP_IMPLEMENTATIONS)
@given(key=any_key, n=st.integers(min_value=1, max_value=2000))
@settings(deadline=None)
def test_jump_placement_equals_jump_of_key_hash(
    bind: Callable[[list[str]], Callable[[Any], str]], key: object, n: int
) -> None:
    names = [f"s{i}" for i in range(n)]
    assert bind(names)(key) == names[_py_jump_hash(reference_key_hash(key), n)]


def test_jump_hash_binds_the_compiled_placement_when_it_is_built() -> None:
    place = JumpHash().bind(NAMES)
    assert (speedups is not None) == (type(place).__name__ == "JumpPlacement")


def _edge_keys() -> list[object]:
    """Keys for every branch of the inlined jump placement, and the edges between them."""
    max_fast = MAX_KEY_BYTES // 4  # the inlined str branch takes up to this many characters
    return [
        0,
        1,
        2**64 - 1,
        2**64,
        -1,
        -(2**70),
        2**200,
        "",
        "user:1",
        "{acme}:order:17",
        "{}:x",
        "a{b",
        "ünïcode €",
        "é{ü}z",  # a tag between multi-byte characters
        "{€}:1",
        "{}é{x}",
        "x" * max_fast,
        "é" * max_fast,  # 2 UTF-8 bytes per character
        "€" * (max_fast + 1),  # slow path, still under MAX_KEY_BYTES
        "{t}" + "x" * (MAX_KEY_BYTES + 10),  # over the limit, but its tag is short
        b"",
        b"\x00\xff",
        b"{acme}:order:17",
        b"x" * MAX_KEY_BYTES,
        b"{t}" + b"x" * MAX_KEY_BYTES,
        bytearray(b"{acme}:1"),
        memoryview(b"user:1"),
        uuid.UUID(int=0),
        uuid.UUID(int=7),
        uuid.UUID("7b7b7b7d-0000-0000-0000-00000000007d"),  # its bytes contain "{" and "}"
        uuid.uuid5(uuid.NAMESPACE_DNS, "example.org"),
        _UUIDSubclass(int=42),
        ("acme", 17),
        (1, (b"x", uuid.UUID(int=3))),
    ]


class _UUIDSubclass(uuid.UUID):
    pass


@pytest.mark.parametrize("bind", JUMP_IMPLEMENTATIONS)
@pytest.mark.parametrize("n", [1, 2, 3, 10, 100, 1000, 4099])
def test_inlined_jump_placement_equals_the_reference_on_every_key_kind(
    bind: Callable[[list[str]], Callable[[Any], str]], n: int
) -> None:
    names = [f"s{i}" for i in range(n)]
    place = bind(names)
    for key in _edge_keys():
        assert place(key) == names[_py_jump_hash(reference_key_hash(key), n)], key


@needs_speedups
@pytest.mark.parametrize(
    "weights",
    [
        {},
        {"s0": 2.0},
        {"s3": 0.25, "s7": 1e-9, "s9": 1e9},
        {f"s{i}": 1.0 + i / 7 for i in range(40)},
    ],
)
@pytest.mark.parametrize("n", [1, 2, 10, 40])
def test_compiled_rendezvous_equals_the_python_placement(weights: dict[str, float], n: int) -> None:
    names = [f"s{i}" for i in range(n)]
    weights = {name: w for name, w in weights.items() if name in names}
    strategy = Rendezvous(weights)
    compiled = strategy.bind(names)
    assert type(compiled).__name__ == "RendezvousPlacement"
    unweighted = all(w == 1.0 for w in weights.values())
    python = strategy._bind_python(_rendezvous_seeds(names), unweighted)
    for key in [*_edge_keys(), *range(3000), *(f"user:{i}" for i in range(3000))]:
        assert compiled(key) == python(key), key
    with pytest.raises(InvalidShardKeyError):
        compiled(1.5)


def _rendezvous_seeds(names: list[str]) -> list[tuple[int, str]]:
    """The per-shard seeds, as Rendezvous derives them (blake2b-64 of the name)."""
    return [
        (int.from_bytes(blake2b(n.encode(), digest_size=8).digest(), "little"), n) for n in names
    ]


@pytest.mark.parametrize("bind", JUMP_IMPLEMENTATIONS)
@pytest.mark.parametrize("n", [1, 7, 10, 100, 1000, 65_537])
def test_float_jump_loop_is_bit_exact_on_many_hashes(
    bind: Callable[[list[str]], Callable[[Any], str]], n: int
) -> None:
    # The inlined loops run in floats; the reference in ints. Same bucket for every hash.
    names = [f"s{i}" for i in range(n)]
    place = bind(names)
    for i in range(3000):
        key = i * 0x9E3779B97F4A7C15 % 2**64  # ints are mixed with splitmix64 first
        assert place(key) == names[_py_jump_hash(key_hash(key), n)]


@pytest.mark.parametrize("bind", JUMP_IMPLEMENTATIONS)
@pytest.mark.parametrize(
    "key",
    [
        1.0,
        True,
        None,
        object(),
        [1],
        {"a": 1},
        frozenset(),
        (1, 2.0),
        "x" * 70_000,
        b"x" * 70_000,
        "\ud800",  # a lone surrogate: no UTF-8 form
        "{\ud800}",
    ],
)
def test_inlined_jump_placement_refuses_bad_keys(
    bind: Callable[[list[str]], Callable[[Any], str]], key: object
) -> None:
    with pytest.raises(InvalidShardKeyError):
        bind(NAMES)(key)


@pytest.mark.parametrize(
    "strategy",
    [JumpHash(), Rendezvous(), Rendezvous({"s0": 2.0}), HashRing(), HashRing(1000, ketama=False)],
    ids=repr,
)
@given(key=any_key)
@settings(max_examples=50, deadline=None)
def test_placement_is_deterministic_across_bindings(strategy: Strategy, key: object) -> None:
    assert strategy.bind(NAMES)(key) == strategy.bind(list(NAMES))(key)


@pytest.mark.parametrize(
    ("strategy", "max_dev"),
    [
        (JumpHash(), 0.05),
        (Rendezvous(), 0.05),
        (RangeStrategy.split_keyspace(NAMES), 0.05),
        (HashRing(1000, ketama=False), 0.25),
        (HashRing(160), 0.45),
    ],
    ids=repr,
)
def test_balance_on_100k_keys(strategy: Strategy, max_dev: float) -> None:
    counts = loads(strategy, NAMES, KEYS_100K)
    fair = len(KEYS_100K) / len(NAMES)
    assert set(counts) == set(NAMES)
    worst = max(abs(c - fair) / fair for c in counts.values())
    assert worst < max_dev, counts


def test_weighted_rendezvous_follows_weights() -> None:
    counts = loads(Rendezvous({"s0": 3.0}), NAMES, KEYS_100K)
    others = statistics.mean(counts[n] for n in NAMES[1:])
    assert 2.7 < counts["s0"] / others < 3.3


@given(st.lists(any_key, min_size=1, max_size=200), st.integers(min_value=1, max_value=60))
@settings(max_examples=60, deadline=None)
def test_jump_growing_moves_keys_only_to_the_new_shard(keys: list[object], n: int) -> None:
    before = JumpHash().bind([f"s{i}" for i in range(n)])
    after = JumpHash().bind([f"s{i}" for i in range(n + 1)])
    for key in keys:
        if before(key) != after(key):
            assert after(key) == f"s{n}"


@given(st.lists(any_key, min_size=1, max_size=200), st.sampled_from(NAMES))
@settings(max_examples=60, deadline=None)
def test_rendezvous_removing_a_shard_moves_only_its_keys(keys: list[object], gone: str) -> None:
    before = Rendezvous().bind(NAMES)
    after = Rendezvous().bind([n for n in NAMES if n != gone])
    for key in keys:
        if before(key) != gone:
            assert after(key) == before(key)


@given(st.lists(any_key, min_size=1, max_size=200))
@settings(max_examples=30, deadline=None)
def test_ring_adding_a_shard_moves_keys_only_to_it(keys: list[object]) -> None:
    before = HashRing(160, ketama=False).bind(NAMES)
    after = HashRing(160, ketama=False).bind([*NAMES, "s10"])
    for key in keys:
        if before(key) != after(key):
            assert after(key) == "s10"


def test_moved_fraction_for_jump_10_to_11_is_about_one_eleventh() -> None:
    before, after = JumpHash().bind(NAMES), JumpHash().bind([*NAMES, "s10"])
    moved = sum(before(k) != after(k) for k in KEYS_100K) / len(KEYS_100K)
    assert abs(moved - 1 / 11) < 0.01


@given(st.lists(st.text(max_size=30) | st.integers(min_value=0, max_value=10**12), max_size=100))
@settings(max_examples=40, deadline=None)
def test_ketama_ring_agrees_with_uhashring(keys: list[object]) -> None:
    theirs = uhashring.HashRing(NAMES, hash_fn="ketama")
    ours = HashRing(160).bind(NAMES)
    for key in keys:
        if isinstance(key, str) and "{" in key:
            continue  # hash tags are ours; uhashring hashes the whole string
        assert ours(key) == theirs.get_node(key)


def test_ketama_ring_agrees_with_uhashring_on_many_keys_and_weights() -> None:
    nodes = {"cache-a": 1, "cache-b": 2, "cache-c": 1}
    theirs = uhashring.HashRing(nodes, hash_fn="ketama")
    ours = HashRing(160, weights=nodes).bind(list(nodes))
    sample = [f"session:{i}" for i in range(5000)]
    assert all(ours(k) == theirs.get_node(k) for k in sample)
    plain = uhashring.HashRing(NAMES, hash_fn="ketama")
    assert [p for p, _ in HashRing(160).points(NAMES)] == sorted({p for p, _ in plain.get_points()})


def test_range_strategy_routes_by_bounds_and_fails_below_the_first() -> None:
    place = RangeStrategy([(None, "a"), (100, "b"), (1000, "c")]).bind(["a", "b", "c"])
    assert [place(k) for k in (-5, 99, 100, 999, 10**9)] == ["a", "a", "b", "b", "c"]
    closed = RangeStrategy([(0, "a"), (100, "b")]).bind(["a", "b"])
    with pytest.raises(UnknownShardError, match="below the first range"):
        closed(-1)
    with pytest.raises(InvalidShardKeyError):
        place("text")
    words = RangeStrategy([(None, "a"), ("m", "b")]).bind(["a", "b"])
    assert (words("alice"), words("zoe")) == ("a", "b")


@pytest.mark.parametrize(
    "bounds",
    [[], [(5, "a"), (1, "b")], [(1, "a"), ("x", "b")], [(None, "a"), (None, "b")], [(1.5, "a")]],
)
def test_range_strategy_refuses_bad_bounds(bounds: list[tuple[object, str]]) -> None:
    with pytest.raises(ConfigurationError):
        RangeStrategy(bounds)


def test_range_strategy_refuses_unknown_shards() -> None:
    with pytest.raises(ConfigurationError, match="does not have"):
        RangeStrategy([(None, "zz")]).bind(["a"])


def test_region_strategy_keeps_keys_in_their_region_and_fails_closed() -> None:
    regions = {"eu": ["eu-1", "eu-2"], "us": ["us-1", "us-2", "us-3"]}
    place = RegionStrategy(regions).bind([n for names in regions.values() for n in names])
    for i in range(2000):
        assert place(("eu", i)) in regions["eu"]
        assert place(("us", f"user:{i}")) in regions["us"]
    with pytest.raises(UnknownShardError, match="never fall back"):
        place(("ap", 1))
    with pytest.raises(InvalidShardKeyError):
        place(42)
    assert RegionStrategy(regions).region_of("us-2") == "us"


def test_region_strategy_accepts_a_strategy_per_region() -> None:
    strategy = RegionStrategy(
        {"eu": ["eu-1"], "us": ["us-1", "us-2"]},
        {"eu": JumpHash(), "us": RangeStrategy([(None, "us-1"), (1000, "us-2")])},
    )
    place = strategy.bind(["eu-1", "us-1", "us-2"])
    assert (place(("us", 5)), place(("us", 5000)), place(("eu", 5))) == ("us-1", "us-2", "eu-1")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: RegionStrategy({}), "at least one region"),
        (lambda: RegionStrategy({"eu": []}), "no shard"),
        (lambda: RegionStrategy({"eu": ["a"], "us": ["a"]}), "exactly one region"),
        (lambda: RegionStrategy({"eu": ["a"]}, {"us": JumpHash()}), "no strategy"),
        (lambda: Rendezvous({"a": 0}), "must be > 0"),
        (lambda: HashRing(0), "positive"),
        (lambda: HashRing(10), "multiple of 4"),
        (lambda: HashRing(weights={"a": 0}), "positive int"),
    ],
)
def test_bad_strategy_configuration_is_refused(factory: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        factory()  # type: ignore[operator]


@pytest.mark.parametrize("names", [[], ["a", "a"], ["a", ""]])
def test_bad_shard_names_are_refused(names: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        JumpHash().bind(names)


def test_rendezvous_weights_must_name_known_shards() -> None:
    with pytest.raises(ConfigurationError, match="unknown shards"):
        Rendezvous({"zz": 1.0}).bind(["a"])


@given(st.lists(any_key, min_size=1, max_size=300))
@settings(max_examples=40, deadline=None)
def test_jump_cache_never_changes_an_answer(keys: list[object]) -> None:
    cached = _python_jump(8)(NAMES)  # tiny: it fills and restarts often
    plain = _python_jump(0)(NAMES)
    for key in keys + keys:
        assert cached(key) == plain(key)


def test_jump_cache_does_not_let_equal_floats_or_bools_through() -> None:
    place = _python_jump(16)(NAMES)
    place(1)
    place("1")
    for bad in (1.0, True):
        with pytest.raises(InvalidShardKeyError):
            place(bad)
    with pytest.raises(ConfigurationError):
        JumpHash(cache_size=-1)
    assert repr(JumpHash(cache_size=0)) == "JumpHash(cache_size=0)"


# -- Maglev -------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 10, 100])
def test_maglev_gives_every_shard_its_share_of_slots_within_one(n: int) -> None:
    names = [f"s{i}" for i in range(n)]
    size = 65_537
    offsets, skips = _maglev_walks(names, size)
    table = _maglev_table(offsets, skips, size)
    counts = Counter(table)
    assert set(counts) == set(range(n))
    assert max(counts.values()) - min(counts.values()) <= 1
    if speedups is not None:
        compiled = array("I")
        compiled.frombytes(speedups.maglev_table(tuple(offsets), tuple(skips), size))
        assert compiled.tolist() == table


@pytest.mark.parametrize(("n", "size"), [(1, 101), (7, 101), (10, 65_537), (100, 65_537)])
def test_compiled_and_python_maglev_place_every_key_alike(n: int, size: int) -> None:
    names = [f"s{i}" for i in range(n)]
    place = Maglev(size).bind(names)
    with mock.patch("scalekit.sharding.strategies.speedups", None):
        python = Maglev(size).bind(names)
    table = _reference_maglev_table(names, size)
    for key in [*_edge_keys(), *range(2000), *(f"user:{i}" for i in range(2000))]:
        assert place(key) == python(key) == names[table[reference_key_hash(key) % size]], key
    with pytest.raises(InvalidShardKeyError):
        place(1.5)


def _maglev_walks(names: list[str], size: int) -> tuple[list[int], list[int]]:
    """Each shard's offset and skip, derived from its name as Maglev.bind documents."""
    digests = [
        blake2b(name.encode(), digest_size=16, person=b"scalekit-maglev").digest() for name in names
    ]
    offsets = [int.from_bytes(d[:8], "little") % size for d in digests]
    skips = [int.from_bytes(d[8:], "little") % (size - 1) + 1 for d in digests]
    return offsets, skips


def _reference_maglev_table(names: list[str], size: int) -> list[int]:
    """The owner of each slot, from the names."""
    return _maglev_table(*_maglev_walks(names, size), size)


def test_maglev_moves_little_when_any_shard_leaves_or_joins() -> None:
    names = [f"s{i}" for i in range(20)]
    keys = [f"user:{i}" for i in range(40_000)]
    before = Maglev().bind(names)
    placed = [before(k) for k in keys]
    without = Maglev().bind([n for n in names if n != "s7"])  # any shard, not only the last
    moved = sum(1 for k, p in zip(keys, placed, strict=True) if without(k) != p)
    owned = placed.count("s7")
    assert all(without(k) != "s7" for k in keys)
    assert owned <= moved < 2 * owned  # its keys, plus less than as much again of churn
    grown = Maglev().bind([*names, "s20"])
    moved = sum(1 for k, p in zip(keys, placed, strict=True) if grown(k) != p)
    assert len(keys) / 21 * 0.8 < moved < 2 * len(keys) / 21


@pytest.mark.parametrize("size", [0, 1, 100, 65_536, 2**25 + 1, 10.5])
def test_maglev_table_size_must_be_a_reasonable_prime(size: Any) -> None:
    with pytest.raises(ConfigurationError, match="prime"):
        Maglev(size)


def test_maglev_needs_a_table_at_least_as_large_as_the_shard_count() -> None:
    with pytest.raises(ConfigurationError, match="table_size"):
        Maglev(7).bind([f"s{i}" for i in range(8)])
    assert repr(Maglev()) == "Maglev()"
    assert repr(Maglev(101)) == "Maglev(101)"


@needs_speedups
def test_compiled_maglev_pieces_refuse_bad_input() -> None:
    assert speedups is not None
    with pytest.raises(ValueError, match="prime"):
        speedups.maglev_table((0, 2), (2, 2), 8)  # even steps never reach the odd slots
    with pytest.raises(ValueError, match="size"):
        speedups.maglev_table((0,), (0,), 7)
    with pytest.raises(TypeError):
        speedups.maglev_table([0], [1], 7)
    with pytest.raises(TypeError, match="array"):
        speedups.TablePlacement(("a",), b"", key_hash, uuid.UUID)
    with pytest.raises(ValueError, match="past the last"):
        speedups.TablePlacement(("a",), array("I", [0, 1]), key_hash, uuid.UUID)
    place = speedups.TablePlacement(("a", "b"), array("I", [1]), key_hash, uuid.UUID)
    assert place("anything") == "b"
    assert repr(place) == "<TablePlacement over 2 shards>"
