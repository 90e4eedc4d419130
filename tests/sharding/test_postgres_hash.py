"""PostgresHash: PostgreSQL's hash partition placement, checked against the server row by row."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scalekit._accel import speedups
from scalekit.errors import ConfigurationError, InvalidShardKeyError, UnknownShardError
from scalekit.sharding import PostgresHash, ShardRouter, partition_hash
from scalekit.sharding import postgres_hash as pgh
from tests.support.accel import needs_speedups

SEED = pgh.HASH_PARTITION_SEED


def signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


@pytest.fixture
async def conn(postgres_dsn: str, unique: str) -> AsyncIterator[Any]:
    import asyncpg

    connection = await asyncpg.connect(postgres_dsn)
    await connection.execute(f'CREATE SCHEMA "{unique}"')
    await connection.execute(f'SET search_path TO "{unique}"')
    try:
        yield connection
    finally:
        await connection.execute(f'DROP SCHEMA "{unique}" CASCADE')
        await connection.close()


# -- the hash functions against the server's -----------------------------------------------

INTS = [0, 1, -1, 42, -42, 2**31 - 1, -(2**31), 2**31, -(2**31) - 5, 2**62, 2**63 - 1, -(2**63)]
TEXTS = ["", "a", "abcd", "hello world!", "hello world!x", "ünïcode €", "x" * 100, "{acme}:1"]


@pytest.mark.postgres
async def test_int_and_text_hashes_equal_the_servers(conn: Any) -> None:
    rows = await conn.fetch(
        "SELECT v, hashint8extended(v, $2) AS h FROM unnest($1::int8[]) AS v",
        INTS,
        signed(SEED),
    )
    assert [signed(pgh.hash_int8_extended(r["v"])) for r in rows] == [r["h"] for r in rows]
    small = await conn.fetch(
        "SELECT v, hashint4extended(v::int4, 0) AS h4, hashint2extended(v::int2, 0) AS h2 "
        "FROM unnest($1::int8[]) AS v WHERE v BETWEEN -32768 AND 32767",
        INTS,
    )
    for r in small:  # one rule for smallint, integer and bigint columns
        assert signed(pgh.hash_int8_extended(r["v"], 0)) == r["h4"] == r["h2"]
    texts = await conn.fetch(
        "SELECT hashtextextended(t, $2) AS h FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) "
        "ORDER BY i",
        TEXTS,
        signed(SEED),
    )
    assert [signed(pgh.hash_bytes_extended(t.encode())) for t in TEXTS] == [r["h"] for r in texts]


@pytest.mark.postgres
async def test_uuid_hashes_equal_the_servers(conn: Any) -> None:
    values = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1), *(uuid.uuid4() for _ in range(20))]
    rows = await conn.fetch(
        "SELECT uuid_hash_extended(u, $2) AS h FROM unnest($1::uuid[]) WITH ORDINALITY AS x(u, i) "
        "ORDER BY i",
        values,
        signed(SEED),
    )
    assert [signed(pgh.hash_bytes_extended(u.bytes)) for u in values] == [r["h"] for r in rows]


# -- routing against real partitioned tables ---------------------------------------------------


async def partitioned(
    conn: Any, columns: str, key: str, bounds: dict[str, tuple[int, int]]
) -> None:
    await conn.execute(f"CREATE TABLE t ({columns}) PARTITION BY HASH ({key})")
    for name, (modulus, remainder) in bounds.items():
        await conn.execute(
            f"CREATE TABLE {name} PARTITION OF t "
            f"FOR VALUES WITH (MODULUS {modulus}, REMAINDER {remainder})"
        )


async def placed(conn: Any, select: str) -> list[tuple[Any, str]]:
    rows = await conn.fetch(f"SELECT {select}, tableoid::regclass::text AS part FROM t")
    return [(r["k"], r["part"]) for r in rows]


def default_bounds(n: int) -> dict[str, tuple[int, int]]:
    return {f"p{i}": (n, i) for i in range(n)}


@pytest.mark.postgres
@pytest.mark.parametrize("n", [1, 3, 4, 7])
async def test_bigint_keys_land_where_postgres_puts_their_rows(conn: Any, n: int) -> None:
    await partitioned(conn, "id bigint", "id", default_bounds(n))
    rng = random.Random(n)
    keys = [*INTS, *(rng.randrange(-(2**63), 2**63) for _ in range(1500)), *range(500)]
    await conn.execute("INSERT INTO t SELECT unnest($1::int8[])", keys)
    router = ShardRouter(dict.fromkeys(default_bounds(n)), PostgresHash("bigint"))
    inferred = ShardRouter(dict.fromkeys(default_bounds(n)), PostgresHash())
    rows = await placed(conn, "id AS k")
    assert len(rows) == len(keys)
    for key, part in rows:
        assert router.shard_for(key) == part == inferred.shard_for(key), key


@pytest.mark.postgres
@pytest.mark.parametrize("column", ["integer", "smallint"])
async def test_narrow_int_columns_agree_too(conn: Any, column: str) -> None:
    await partitioned(conn, f"id {column}", "id", default_bounds(5))
    keys = list(range(-3000, 3000, 7))
    await conn.execute(f"INSERT INTO t SELECT unnest($1::{column}[])", keys)
    router = ShardRouter(dict.fromkeys(default_bounds(5)), PostgresHash(column))
    for key, part in await placed(conn, "id::int8 AS k"):
        assert router.shard_for(key) == part


@pytest.mark.postgres
async def test_text_uuid_and_bytea_keys_land_where_postgres_puts_their_rows(conn: Any) -> None:
    bounds = default_bounds(6)
    texts = [*TEXTS, *(f"user:{i}" for i in range(800)), *("é" * i for i in range(1, 40))]
    for column, cast, keys in [
        ("text", "text", texts),
        ("uuid", "uuid", [uuid.UUID(int=random.getrandbits(128)) for _ in range(800)]),
        ("bytea", "bytea", [t.encode() for t in texts]),
    ]:
        await partitioned(conn, f"k {column}", "k", bounds)
        await conn.execute(f"INSERT INTO t SELECT unnest($1::{cast}[])", keys)
        router = ShardRouter(dict.fromkeys(bounds), PostgresHash(column))
        rows = await placed(conn, "k")
        assert len(rows) == len(keys)
        for key, part in rows:
            assert router.shard_for(key) == part, (column, key)
            if column == "uuid":
                assert router.shard_for(str(key)) == part  # a uuid column takes UUID text
        await conn.execute("DROP TABLE t")


@pytest.mark.postgres
async def test_multi_column_keys_and_nulls_follow_postgres(conn: Any) -> None:
    bounds = default_bounds(4)
    await partitioned(conn, "tenant text, id bigint", "tenant, id", bounds)
    rows_in = [(f"t{i % 13}", i * 7919) for i in range(1000)]
    await conn.executemany("INSERT INTO t VALUES ($1, $2)", rows_in)
    router = ShardRouter(dict.fromkeys(bounds), PostgresHash("text", "bigint"))
    inferred = ShardRouter(dict.fromkeys(bounds), PostgresHash())
    for (tenant, ident), part in await placed(conn, "(tenant, id) AS k"):
        assert router.shard_for((tenant, ident)) == part == inferred.shard_for((tenant, ident))


@pytest.mark.postgres
async def test_split_partitions_with_mixed_moduli_agree_and_move_only_the_split_rows(
    conn: Any,
) -> None:
    # PostgreSQL's way to split p2: detach it, re-create it as (8, 2), add p2b as (8, 6)
    before = {"p0": (4, 0), "p1": (4, 1), "p2": (4, 2), "p3": (4, 3)}
    after = {"p0": (4, 0), "p1": (4, 1), "p2": (8, 2), "p2b": (8, 6), "p3": (4, 3)}
    await partitioned(conn, "id bigint", "id", after)
    keys = list(range(4000))
    await conn.execute("INSERT INTO t SELECT unnest($1::int8[])", keys)
    new = ShardRouter(dict.fromkeys(after), PostgresHash("bigint", bounds=after), epoch=1)
    for key, part in await placed(conn, "id AS k"):
        assert new.shard_for(key) == part
    old = ShardRouter(dict.fromkeys(before), PostgresHash("bigint", bounds=before))
    plan = old.plan(new, keys=keys)
    assert {(move.source, move.target) for move in plan.moves} == {("p2", "p2b")}
    owned_by_p2 = sum(1 for key in keys if old.shard_for(key) == "p2")
    assert 0.2 < owned_by_p2 / len(keys) < 0.3
    assert 0.4 < len(plan.moves) / owned_by_p2 < 0.6  # half of the split partition, no more


# -- pure logic ---------------------------------------------------------------------------------


def test_a_gap_in_the_bounds_is_an_unknown_shard() -> None:
    router = ShardRouter({"a": 1, "b": 2}, PostgresHash(bounds={"a": (4, 0), "b": (4, 1)}))
    covered = [key for key in range(200) if partition_hash(key) % 4 < 2]
    gaps = [key for key in range(200) if partition_hash(key) % 4 >= 2]
    assert {router.shard_for(key) for key in covered} == {"a", "b"}
    assert 60 < len(gaps) < 140  # remainders 2 and 3 of 4 have no partition
    for key in gaps:
        with pytest.raises(UnknownShardError, match="gap"):
            router.shard_for(key)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bounds": {"a": (4, 4)}}, "remainder"),
        ({"bounds": {"a": (0, 0)}}, "remainder"),
        ({"bounds": {"a": (4, 0), "b": (6, 1)}}, "factor"),
        ({"bounds": {"a": (4, 0), "b": (8, 4)}}, "overlap"),
        ({"bounds": {"a": (4.0, 0)}}, "ints"),
        ({"bounds": {"a": [4, 0]}}, "modulus, remainder"),
        ({"bounds": {}}, "at least one"),
    ],
)
def test_bounds_postgres_would_refuse_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PostgresHash(**kwargs)


def test_bounds_must_name_the_routers_shards_and_types_must_be_known() -> None:
    with pytest.raises(ConfigurationError, match="missing"):
        ShardRouter({"a": 1, "b": 2}, PostgresHash(bounds={"a": (1, 0)}))
    with pytest.raises(ConfigurationError, match="unsupported"):
        PostgresHash("float8")
    assert repr(PostgresHash("text", bounds={"a": (1, 0)})) == (
        "PostgresHash('text', bounds={'a': (1, 0)})"
    )


@pytest.mark.parametrize(
    ("types", "key", "message"),
    [
        ((), True, "cannot be routed"),
        ((), 1.5, "cannot be routed"),
        ((), None, "cannot be routed"),
        ((), 2**63, "out of range for type bigint"),
        ((), (), "empty tuple"),
        ((), ("a", [1]), "cannot be routed"),
        (("bigint",), "42", "bigint column"),
        (("integer",), 2**31, "out of range for type integer"),
        (("smallint",), -(2**15) - 1, "out of range for type smallint"),
        (("uuid",), "not-a-uuid", "not a UUID"),
        (("uuid",), 7, "uuid column"),
        (("text",), b"bytes", "text column"),
        (("text",), "\ud800", "UTF-8"),
        (("bytea",), "text", "bytea column"),
        (("text", "bigint"), ("a",), "2 columns"),
        (("text", "bigint"), "a", "pass a tuple"),
        (("text",), "x" * 70_000, "limit"),
    ],
)
def test_values_postgres_could_not_store_are_refused(
    types: tuple[str, ...], key: object, message: str
) -> None:
    place = PostgresHash(*types).bind(["a", "b"])
    with pytest.raises(InvalidShardKeyError, match=message):
        place(key)


def test_partition_hash_is_the_row_hash() -> None:
    one = pgh.hash_combine64(0, pgh.hash_int8_extended(42))
    assert partition_hash(42) == partition_hash((42,)) == partition_hash(42, ["bigint"]) == one
    two = pgh.hash_combine64(one, pgh.hash_bytes_extended(b"acme"))
    assert partition_hash((42, "acme")) == two


@needs_speedups
@given(st.binary(max_size=100), st.integers(min_value=0, max_value=2**64 - 1))
@settings(max_examples=300, deadline=None)
def test_compiled_bytes_hash_equals_the_python_one(data: bytes, seed: int) -> None:
    assert speedups is not None
    assert speedups.pg_hash_bytes_extended(data, seed) == pgh._py_hash_bytes_extended(data, seed)


@needs_speedups
@given(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, SEED, 12345]))
@settings(max_examples=300, deadline=None)
def test_compiled_int8_hash_equals_the_python_one(value: int, seed: int) -> None:
    assert speedups is not None
    assert speedups.pg_hash_int8_extended(value, seed) == pgh._py_hash_int8_extended(value, seed)
