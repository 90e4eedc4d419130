"""The optional C accelerator: every compiled function equals its pure-Python twin bit for bit.

CI sets ``SCALEKIT_REQUIRE_SPEEDUPS=1``, so a build that silently failed (the extension is
optional at install time) fails here instead of leaving only the fallback tested; its
no-extras run sets ``SCALEKIT_NO_EXTENSIONS=1`` and runs every fallback alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from hashlib import blake2b
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit import sharding
from scalekit._accel import speedups
from scalekit.errors import InvalidShardKeyError
from scalekit.sharding import jump_hash, key_hash
from scalekit.sharding.strategies import _py_jump_hash
from tests.support.accel import needs_speedups

ROOT = Path(__file__).resolve().parent.parent


def test_the_accelerator_is_built_where_ci_requires_it() -> None:
    disabled = os.environ.get("SCALEKIT_NO_EXTENSIONS", "") not in ("", "0")
    if os.environ.get("SCALEKIT_REQUIRE_SPEEDUPS") == "1" and not disabled:
        assert speedups is not None, "scalekit._speedups did not build (see the pip log)"
    assert sharding.ACCELERATED is (speedups is not None)


def test_the_environment_switch_turns_the_accelerator_off() -> None:
    code = (
        "import scalekit._accel as a, scalekit.sharding as s;"
        "print(a.speedups is None, s.ACCELERATED, s.ShardRouter({'a': 1, 'b': 2}).shard_for('k'))"
    )
    env = {**os.environ, "SCALEKIT_NO_EXTENSIONS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    expected = sharding.ShardRouter({"a": 1, "b": 2}).shard_for("k")
    assert out == ["True", "False", expected]


def hashlib_64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


@needs_speedups
def test_blake2b_64_equals_hashlib_across_block_boundaries() -> None:
    assert speedups is not None
    for size in [*range(300), 383, 384, 385, 1023, 1024, 1025, 65536]:
        data = bytes((i * 131 + size) % 256 for i in range(size))
        assert speedups.blake2b_64(data) == hashlib_64(data), size


@needs_speedups
@given(st.binary(max_size=600))
@settings(max_examples=300, deadline=None)
def test_blake2b_64_equals_hashlib_on_any_bytes(data: bytes) -> None:
    assert speedups is not None
    assert speedups.blake2b_64(data) == hashlib_64(data)
    assert speedups.blake2b_64(bytearray(data)) == speedups.blake2b_64(memoryview(data))


@needs_speedups
def test_blake2b_64_refuses_text() -> None:
    assert speedups is not None
    with pytest.raises(TypeError):
        speedups.blake2b_64("text")


@needs_speedups
@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=2**31 - 1))
@settings(max_examples=500, deadline=None)
def test_compiled_jump_hash_equals_the_reference(key: int, buckets: int) -> None:
    assert speedups is not None
    assert speedups.jump_hash(key, buckets) == _py_jump_hash(key, buckets)
    assert jump_hash(key, buckets) == _py_jump_hash(key, buckets)  # the public one dispatches


@needs_speedups
@pytest.mark.parametrize("buckets", [0, -1, 2**31])
def test_compiled_jump_hash_refuses_bucket_counts_out_of_range(buckets: int) -> None:
    assert speedups is not None
    with pytest.raises(ValueError, match="buckets"):
        speedups.jump_hash(1, buckets)


@needs_speedups
def test_jump_placement_checks_its_construction_and_calls() -> None:
    assert speedups is not None
    placement = speedups.JumpPlacement(("a", "b"), key_hash, uuid.UUID)
    assert repr(placement) == "<JumpPlacement over 2 shards>"
    with pytest.raises(ValueError, match="names"):
        speedups.JumpPlacement((), key_hash, uuid.UUID)
    with pytest.raises(TypeError):
        speedups.JumpPlacement(["a"], key_hash, uuid.UUID)  # a tuple, not a list
    with pytest.raises(TypeError, match="callable"):
        speedups.JumpPlacement(("a",), 3, uuid.UUID)
    with pytest.raises(TypeError, match="one positional key"):
        placement()
    with pytest.raises(TypeError, match="one positional key"):
        placement("k", "k2")
    with pytest.raises(TypeError, match="one positional key"):
        placement(key="k")


@needs_speedups
def test_jump_placement_passes_fallback_errors_through() -> None:
    assert speedups is not None

    def broken(key: object) -> int:
        raise InvalidShardKeyError(f"no hash for {key!r}")

    placement = speedups.JumpPlacement(("a", "b"), broken, uuid.UUID)
    with pytest.raises(InvalidShardKeyError, match="no hash"):
        placement(("tuple", "key"))
    not_an_int = speedups.JumpPlacement(("a", "b"), lambda key: "x", uuid.UUID)
    with pytest.raises(TypeError):
        not_an_int(("tuple", "key"))
    negative = speedups.JumpPlacement(("a", "b"), lambda key: -1, uuid.UUID)
    with pytest.raises(OverflowError):
        negative(("tuple", "key"))


@needs_speedups
def test_jump_placement_leaks_no_references() -> None:
    assert speedups is not None
    names = tuple(f"s{i}" for i in range(3))
    jump = speedups.JumpPlacement(names, key_hash, uuid.UUID)
    weighted = speedups.RendezvousPlacement(names, (1, 2, 3), (1.0, 2.0, 3.0), key_hash, uuid.UUID)

    def place(key: object) -> None:
        jump(key)
        weighted(key)

    big = int("1" * 15)  # not a cached small int: its count is ours alone
    keys = ["k" * 3, b"k" * 3, big, big**5, uuid.UUID(int=9), ("t", big)]
    for key in keys:
        place(key)
    before = [sys.getrefcount(obj) for obj in (*names, *keys)]
    for _ in range(2000):
        for key in keys:
            place(key)
        with pytest.raises(InvalidShardKeyError):
            place(1.5)
    assert [sys.getrefcount(obj) for obj in (*names, *keys)] == before


@needs_speedups
def test_rendezvous_placement_checks_its_construction() -> None:
    assert speedups is not None
    make = speedups.RendezvousPlacement
    place = make(("a", "b"), (1, 2), None, key_hash, uuid.UUID)
    assert repr(place) == "<RendezvousPlacement over 2 shards>"
    assert place("k") in ("a", "b")
    with pytest.raises(ValueError, match="one item per name"):
        make(("a", "b"), (1,), None, key_hash, uuid.UUID)
    with pytest.raises(ValueError, match="one item per name"):
        make(("a", "b"), (1, 2), (1.0,), key_hash, uuid.UUID)
    with pytest.raises(ValueError, match="one item per name"):
        make(("a", "b"), (1, 2), [1.0, 1.0], key_hash, uuid.UUID)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite and > 0"):
            make(("a", "b"), (1, 2), (1.0, bad), key_hash, uuid.UUID)
    with pytest.raises(OverflowError):
        make(("a", "b"), (1, -2), None, key_hash, uuid.UUID)
    with pytest.raises(TypeError):
        make(("a", "b"), (1, 2), (1.0, "heavy"), key_hash, uuid.UUID)
    with pytest.raises(TypeError, match="one positional key"):
        place("k", "k")
