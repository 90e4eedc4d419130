"""Stable key hashing: determinism across processes, hash tags, refused key types."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from hashlib import blake2b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit.errors import InvalidShardKeyError
from scalekit.sharding import (
    MAX_KEY_BYTES,
    HashRing,
    JumpHash,
    Rendezvous,
    ShardRouter,
    directory_key,
    hash_tag,
    key_hash,
)
from scalekit.sharding.keys import mix64

keys = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.uuids(),
    st.tuples(st.integers(), st.text(max_size=10)),
)


@given(keys)
@settings(deadline=None)
def test_key_hash_is_a_64_bit_value_and_deterministic(key: object) -> None:
    h = key_hash(key)
    assert 0 <= h < 2**64
    assert key_hash(key) == h


def test_key_hash_is_identical_in_other_processes_whatever_the_hash_seed() -> None:
    sample = ["user:1", "{acme}:order:17", "", "ünïcode"]
    code = (
        "import sys, uuid; sys.path.insert(0, 'src');"
        "from scalekit.sharding import key_hash;"
        f"print([key_hash(k) for k in {sample!r}], key_hash(42), key_hash(('a', 1)),"
        " key_hash(uuid.UUID(int=7)), key_hash(-5), key_hash(2**70))"
    )
    outputs = set()
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout
        outputs.add(out)
    assert len(outputs) == 1
    here = (
        f"{[key_hash(k) for k in sample]} {key_hash(42)} {key_hash(('a', 1))} "
        f"{key_hash(uuid.UUID(int=7))} {key_hash(-5)} {key_hash(2**70)}\n"
    )
    assert outputs == {here}


def test_documented_encoding_is_pinned() -> None:
    # Other languages reproduce these: str -> blake2b-64 of UTF-8, little-endian.
    expected = int.from_bytes(blake2b(b"user:1", digest_size=8).digest(), "little")
    assert key_hash("user:1") == expected
    assert key_hash(b"user:1") == expected
    assert key_hash(5) == mix64(5)
    assert key_hash(uuid.UUID(int=7)) == key_hash(uuid.UUID(int=7).bytes)
    # Values pinned once: a change here moves users' data.
    assert key_hash(0) == 0xE220A8397B1DCDAF
    assert key_hash("acme") == int.from_bytes(blake2b(b"acme", digest_size=8).digest(), "little")


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        ("{acme}:order:17", "acme"),
        ("order:{acme}:17", "acme"),
        ("{}:x", "{}:x"),
        ("a{b", "a{b"),
        ("{a}{b}", "a"),
        ("plain", "plain"),
    ],
)
def test_hash_tag_follows_redis_cluster_rules(key: str, tag: str) -> None:
    assert hash_tag(key) == tag
    assert key_hash(key) == key_hash(tag)


def test_hash_tags_colocate_keys_of_one_tenant() -> None:
    assert key_hash("{acme}:order:17") == key_hash("{acme}:invoice:3") == key_hash("acme")
    assert key_hash(b"{acme}:order:17") == key_hash("acme")


@pytest.mark.parametrize("key", [1.0, True, None, object(), [1], {"a": 1}, frozenset(), (1, 2.0)])
def test_keys_without_a_stable_hash_are_refused(key: object) -> None:
    with pytest.raises(InvalidShardKeyError) as info:
        key_hash(key)
    assert isinstance(info.value, TypeError)
    assert "int, str, bytes, UUID" in str(info.value)


def test_oversized_key_is_refused_clearly() -> None:
    with pytest.raises(InvalidShardKeyError, match="over the"):
        key_hash("x" * (MAX_KEY_BYTES + 1))
    with pytest.raises(InvalidShardKeyError):
        directory_key("x" * (MAX_KEY_BYTES + 1))


def test_deeply_nested_tuple_is_refused() -> None:
    key: object = 1
    for _ in range(20):
        key = (key,)
    with pytest.raises(InvalidShardKeyError, match="nest"):
        key_hash(key)


def test_compound_keys_differ_by_structure() -> None:
    assert key_hash(("a", "bc")) != key_hash(("ab", "c"))
    assert key_hash((1, "a")) != key_hash(("1", "a"))
    assert key_hash(("a", 1)) == key_hash(("a", 1))


def test_directory_key_is_readable() -> None:
    assert directory_key("{acme}:order:1") == "acme"
    assert directory_key(42) == "42"
    assert directory_key(b"\x01") == "01"
    assert directory_key(("eu", 7)) == "eu/7"
    assert directory_key(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize("text", ["\ud800", "user:\udfff", "{\ud800}:x"])
def test_text_without_a_utf8_form_is_an_invalid_key(text: str) -> None:
    with pytest.raises(InvalidShardKeyError, match="not valid Unicode"):
        key_hash(text)
    with pytest.raises(InvalidShardKeyError, match="not valid Unicode"):
        key_hash((text, 1))
    for strategy in (JumpHash(), JumpHash(cache_size=0), HashRing(), Rendezvous()):
        router = ShardRouter({"a": 1, "b": 2}, strategy)
        with pytest.raises(InvalidShardKeyError, match="not valid Unicode"):
            router.shard_for(text)
