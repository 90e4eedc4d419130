"""PostgreSQL's hash partitioning, reproduced: route a key where PostgreSQL would put its row.

``PARTITION BY HASH (a, b, ...)`` stores a row in the partition declared
``FOR VALUES WITH (MODULUS m, REMAINDER r)`` for which ``row_hash % m == r``. ``row_hash``
starts at 0 and folds in, column by column, the column type's seeded 64-bit hash (Bob
Jenkins' lookup3 as ``src/common/hashfn.c`` implements it, seed ``HASH_PARTITION_SEED``) with
``hash_combine64``; NULL columns are skipped. PgDog shards with the same function, so a
:class:`PostgresHash` router, a table partitioned by hash and a PgDog deployment all agree on
where a key lives. The test suite checks that against a real server, row by row.

How Python values hash (each as the column type PostgreSQL would hash them with):

* ``int``: ``hashint8extended``; PostgreSQL makes ``hashint2``/``hashint4`` agree with it on
  the values they share, so one rule serves ``smallint``, ``integer`` and ``bigint`` columns.
* ``str``: ``hashtextextended``, the UTF-8 bytes (a database in UTF8 with a deterministic
  collation, the default; nondeterministic ICU collations hash differently).
* ``bytes``: ``bytea``'s ``hashvarlenaextended``, the bytes as they are.
* ``uuid.UUID``: ``uuid_hash_extended``, its 16 bytes.

Hash tags do not apply (PostgreSQL has none): route by the partition key's own columns.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from scalekit._accel import speedups
from scalekit.errors import ConfigurationError, InvalidShardKeyError, UnknownShardError
from scalekit.sharding.keys import MAX_KEY_BYTES
from scalekit.sharding.strategies import Placement, Strategy, _check_names

__all__ = [
    "HASH_PARTITION_SEED",
    "PostgresHash",
    "hash_bytes_extended",
    "hash_combine64",
    "hash_int8_extended",
    "partition_hash",
]

#: The seed PostgreSQL passes to every column's extended hash function for partitioning.
HASH_PARTITION_SEED = 0x7A5B22367996DCFD

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_GOLDEN = 0x9E3779B9 + 3923095  # lookup3's initial value, before the length is added


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M32


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _M32
    a ^= _rot(c, 4)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rot(a, 6)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rot(b, 8)
    b = (b + a) & _M32
    a = (a - c) & _M32
    a ^= _rot(c, 16)
    c = (c + b) & _M32
    b = (b - a) & _M32
    b ^= _rot(a, 19)
    a = (a + c) & _M32
    c = (c - b) & _M32
    c ^= _rot(b, 4)
    b = (b + a) & _M32
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rot(b, 14)) & _M32
    a ^= c
    a = (a - _rot(c, 11)) & _M32
    b ^= a
    b = (b - _rot(a, 25)) & _M32
    c ^= b
    c = (c - _rot(b, 16)) & _M32
    a ^= c
    a = (a - _rot(c, 4)) & _M32
    b ^= a
    b = (b - _rot(a, 14)) & _M32
    c ^= b
    c = (c - _rot(b, 24)) & _M32
    return (b << 32) | c


def _seeded(length: int, seed: int) -> tuple[int, int, int]:
    a = b = c = (_GOLDEN + length) & _M32
    if seed:
        a = (a + (seed >> 32)) & _M32
        b = (b + (seed & _M32)) & _M32
        a, b, c = _mix(a, b, c)
    return a, b, c


def _py_hash_bytes_extended(data: bytes, seed: int) -> int:
    n = len(data)
    a, b, c = _seeded(n, seed)
    words = int.from_bytes
    i = 0
    while n - i >= 12:
        a = (a + words(data[i : i + 4], "little")) & _M32
        b = (b + words(data[i + 4 : i + 8], "little")) & _M32
        c = (c + words(data[i + 8 : i + 12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        i += 12
    rest = n - i
    if rest > 8:  # the lowest byte of c is the length's: the tail starts at bit 8
        c = (c + (words(data[i + 8 : n], "little") << 8)) & _M32
    if rest > 4:
        b = (b + words(data[i + 4 : min(n, i + 8)], "little")) & _M32
    if rest > 0:
        a = (a + words(data[i : min(n, i + 4)], "little")) & _M32
    return _final(a, b, c)


def _py_hash_int8_extended(value: int, seed: int) -> int:
    low, high = value & _M32, (value >> 32) & _M32
    low ^= high if value >= 0 else high ^ _M32
    a, b, c = _seeded(4, seed)
    return _final((a + low) & _M32, b, c)


if speedups is not None:
    _hash_bytes: Callable[[bytes, int], int] = speedups.pg_hash_bytes_extended
    _hash_int8: Callable[[int, int], int] = speedups.pg_hash_int8_extended
else:
    _hash_bytes, _hash_int8 = _py_hash_bytes_extended, _py_hash_int8_extended


def hash_bytes_extended(data: bytes, seed: int = HASH_PARTITION_SEED) -> int:
    """PostgreSQL's ``hash_bytes_extended``: a seeded 64-bit lookup3 hash of ``data``.

    The unsigned value; SQL functions (``hashtextextended``) show it as a signed ``bigint``.
    """
    return _hash_bytes(bytes(data), seed & _M64)


def hash_int8_extended(value: int, seed: int = HASH_PARTITION_SEED) -> int:
    """PostgreSQL's ``hashint8extended`` of a ``bigint`` (unsigned; SQL shows it signed).

    Raises:
        InvalidShardKeyError: ``value`` is outside the ``bigint`` range.
    """
    if not -(1 << 63) <= value < 1 << 63:
        raise InvalidShardKeyError(f"{value} is outside PostgreSQL's bigint range")
    return _hash_int8(value, seed & _M64)


def hash_combine64(a: int, b: int) -> int:
    """PostgreSQL's ``hash_combine64``: fold the 64-bit hash ``b`` into ``a``."""
    return a ^ ((b + 0x49A0F4DD15E5A8E3 + (a << 54) + (a >> 7)) & _M64)


# column type -> (coerce a Python value to the form hashed, its hash function)
_INT_RANGES = {
    "smallint": 1 << 15,
    "int2": 1 << 15,
    "integer": 1 << 31,
    "int": 1 << 31,
    "int4": 1 << 31,
    "bigint": 1 << 63,
    "int8": 1 << 63,
}
_TEXT_TYPES = frozenset({"text", "varchar", "character varying"})
_KNOWN_TYPES = sorted({*_INT_RANGES, *_TEXT_TYPES, "bytea", "uuid"})
#: The column type a Python value is hashed as when the strategy names none.
_INFERRED: dict[type, str] = {
    int: "bigint",
    str: "text",
    bytes: "bytea",
    bytearray: "bytea",
    memoryview: "bytea",
}


def _bad(value: object, column: str | None) -> InvalidShardKeyError:
    where = f"a {column} column" if column else "a PostgreSQL hash partition key"
    return InvalidShardKeyError(
        f"{type(value).__name__} {value!r:.60} cannot be routed as {where}: use int, str, "
        "bytes or UUID values (a tuple of them for a multi-column key)"
    )


def _column_hash(value: Any, column: str | None) -> int:
    """The seeded hash PostgreSQL computes for ``value`` in a column of type ``column``."""
    kind = type(value)
    if column is None:
        inferred = _INFERRED.get(kind) or ("uuid" if isinstance(value, uuid.UUID) else None)
        if inferred is None:
            raise _bad(value, None)  # bool, float, None...: exact types only
        column = inferred
    bound = _INT_RANGES.get(column)
    if bound is not None:
        if kind is not int:  # bool is an int subclass: refused with floats and the rest
            raise _bad(value, column)
        if not -bound <= value < bound:
            raise InvalidShardKeyError(f"{value} is out of range for type {column}")
        return _hash_int8(value, HASH_PARTITION_SEED)
    if column in _TEXT_TYPES:
        if kind is not str:
            raise _bad(value, column)
        try:
            data = value.encode()
        except UnicodeEncodeError:
            raise InvalidShardKeyError(
                f"{value!r:.60} has no UTF-8 form (a lone surrogate) and cannot be stored "
                "in a text column"
            ) from None
    elif column == "bytea":
        if kind not in (bytes, bytearray, memoryview):
            raise _bad(value, column)
        data = bytes(value)
    else:  # uuid
        if kind is str:
            try:
                value = uuid.UUID(value)
            except ValueError:
                raise InvalidShardKeyError(f"{value!r:.60} is not a UUID") from None
        elif not isinstance(value, uuid.UUID):
            raise _bad(value, column)
        data = value.bytes
    if len(data) > MAX_KEY_BYTES:
        raise InvalidShardKeyError(
            f"partition key value is {len(data)} bytes, over the {MAX_KEY_BYTES}-byte limit"
        )
    return _hash_bytes(data, HASH_PARTITION_SEED)


def partition_hash(key: Any, column_types: Sequence[str] | None = None) -> int:
    """The row hash PostgreSQL computes for a partition key (``% modulus`` picks the partition).

    Args:
        key: one value, or a tuple with one value per column of a multi-column key.
        column_types: the partition key's column types (``bigint``, ``integer``, ``text``,
            ``uuid``, ``bytea``...); by default inferred from the Python types.

    Raises:
        InvalidShardKeyError: a value PostgreSQL could not store in the column, or a tuple
            whose length is not the number of columns.
    """
    if column_types is not None and len(column_types) == 1 and type(key) is not tuple:
        return hash_combine64(0, _column_hash(key, column_types[0]))
    if type(key) is tuple:
        values: tuple[Any, ...] = key
        if column_types is not None and len(values) != len(column_types):
            raise InvalidShardKeyError(
                f"the partition key has {len(column_types)} columns, got a tuple of {len(values)}"
            )
        if not values:
            raise InvalidShardKeyError("an empty tuple is not a partition key")
        row = 0
        for i, value in enumerate(values):
            row = hash_combine64(
                row, _column_hash(value, column_types[i] if column_types else None)
            )
        return row
    if column_types is not None:
        raise InvalidShardKeyError(
            f"the partition key has {len(column_types)} columns: pass a tuple of "
            f"{len(column_types)} values, not {type(key).__name__}"
        )
    return hash_combine64(0, _column_hash(key, None))


class PostgresHash(Strategy):
    """Place keys exactly as PostgreSQL's ``PARTITION BY HASH`` (and PgDog) place rows.

    By default shard ``i`` of the router is the partition ``FOR VALUES WITH (MODULUS N,
    REMAINDER i)``. ``bounds`` declares other moduli, as PostgreSQL allows when a partition
    is split: each modulus must divide every larger one, so a key lands in at most one
    partition. Splitting ``(4, 2)`` into ``(8, 2)`` and ``(8, 6)`` moves only half of that
    partition's keys; ``old.plan(new, keys=...)`` lists them.

    Args:
        *column_types: the partition key's column types, in order (``"bigint"``,
            ``"integer"``, ``"smallint"``, ``"text"``, ``"varchar"``, ``"bytea"``,
            ``"uuid"``). They check values (an int out of the column's range, a str for a
            ``bigint`` column) and let a ``uuid`` column take UUID strings. Without them the
            Python type decides (see the module docstring).
        bounds: shard name -> ``(modulus, remainder)``; every shard of the router needs one.

    Raises:
        ConfigurationError: an unknown column type, or bounds PostgreSQL would refuse
            (remainder outside ``[0, modulus)``, a modulus that does not divide a larger
            one, two shards for the same hashes).
    """

    __slots__ = ("bounds", "column_types")

    def __init__(
        self, *column_types: str, bounds: Mapping[str, tuple[int, int]] | None = None
    ) -> None:
        unknown = [t for t in column_types if t not in _KNOWN_TYPES]
        if unknown:
            raise ConfigurationError(
                f"unsupported partition key column type(s) {unknown}; supported: {_KNOWN_TYPES}"
            )
        self.column_types: tuple[str, ...] | None = tuple(column_types) or None
        self.bounds = dict(bounds) if bounds is not None else None
        if self.bounds is not None:
            _slots(self.bounds)  # validate now, not at the first bind

    def bind(self, shards: Sequence[str]) -> Placement:
        """Return ``key -> shard name``."""
        names = _check_names(shards)
        if self.bounds is None:
            bounds = {name: (len(names), i) for i, name in enumerate(names)}
        else:
            bounds = self.bounds
            if set(bounds) != set(names):
                missing, extra = sorted(set(names) - set(bounds)), sorted(set(bounds) - set(names))
                raise ConfigurationError(
                    f"bounds must name exactly the router's shards: missing {missing}, "
                    f"unknown {extra}"
                )
        table = _slots(bounds)
        size = len(table)
        columns = self.column_types

        def postgres_placement(key: Any) -> str:
            row = partition_hash(key, columns)
            owner = table[row % size]
            if owner is None:
                raise UnknownShardError(
                    f"no partition takes hash remainder {row % size} (of {size}): the bounds "
                    "leave a gap, as a partitioned table without a partition for it would"
                )
            return owner

        return postgres_placement

    def __repr__(self) -> str:
        args = [repr(t) for t in self.column_types or ()]
        if self.bounds is not None:
            args.append(f"bounds={self.bounds!r}")
        return f"PostgresHash({', '.join(args)})"


def _slots(bounds: Mapping[str, tuple[int, int]]) -> list[str | None]:
    """The owner of each remainder of the greatest modulus (``None``: no partition)."""
    if not bounds:
        raise ConfigurationError("PostgresHash bounds need at least one partition")
    for name, bound in bounds.items():
        if (
            not isinstance(bound, tuple)
            or len(bound) != 2
            or not all(type(v) is int for v in bound)
            or not 0 <= bound[1] < bound[0]
        ):
            raise ConfigurationError(
                f"bound of {name!r} must be (modulus, remainder) ints with 0 <= remainder < "
                f"modulus, got {bound!r}"
            )
    moduli = sorted({modulus for modulus, _ in bounds.values()})
    for smaller, larger in itertools.pairwise(moduli):
        if larger % smaller:
            raise ConfigurationError(
                f"every modulus must be a factor of the next larger one (as in PostgreSQL): "
                f"{smaller} does not divide {larger}"
            )
    greatest = moduli[-1]
    if greatest > 1 << 20:
        raise ConfigurationError(f"a modulus of {greatest} is larger than scalekit supports")
    table: list[str | None] = [None] * greatest
    for name, (modulus, remainder) in bounds.items():
        for slot in range(remainder, greatest, modulus):
            if table[slot] is not None:
                raise ConfigurationError(
                    f"partitions {table[slot]!r} and {name!r} overlap (both take remainder "
                    f"{slot} of modulus {greatest})"
                )
            table[slot] = name
    return table
