"""Placement strategies: how a key's stable hash (or the key itself) picks one shard name.

A strategy is configuration: :meth:`Strategy.bind` turns it into a placement function for one
list of shard names, so the same ``JumpHash()`` serves the router before and after a reshard.

=================  ===========================  =============================================
strategy           balance / movement           use it when
=================  ===========================  =============================================
``JumpHash``       best / minimal (1/(N+1))     shards are numbered and only added at the end
``Rendezvous``     best / minimal, weighted     shards are named, removed arbitrarily, or weighted
``Maglev``         best / near-minimal          named shards, many of them, O(1) lookups
``HashRing``       ~1/sqrt(vnodes) / minimal    you must agree with a ketama client (memcached)
``RangeStrategy``  what you choose / explicit   ordered keys, or moving hash ranges by hand
``RegionStrategy`` per region                   data must stay in its region (residency)
=================  ===========================  =============================================
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from array import array
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Mapping, Sequence
from hashlib import blake2b, md5
from typing import Any
from uuid import UUID

from scalekit._accel import speedups
from scalekit.errors import ConfigurationError, InvalidShardKeyError, UnknownShardError
from scalekit.sharding.keys import (
    MAX_KEY_BYTES,
    _bytes_tag,
    _unencodable,
    directory_key,
    hash_tag,
    key_hash,
    mix64,
)

__all__ = [
    "HashRing",
    "JumpHash",
    "Maglev",
    "Placement",
    "RangeStrategy",
    "RegionStrategy",
    "Rendezvous",
    "Strategy",
    "jump_hash",
]

_MASK = 0xFFFFFFFFFFFFFFFF
_TWO_64 = float(1 << 64)
_c_jump_hash: Callable[[int, int], int] | None = speedups.jump_hash if speedups else None
#: A str of at most this many characters encodes to at most MAX_KEY_BYTES UTF-8 bytes.
_MAX_FAST_STR = MAX_KEY_BYTES // 4

#: A bound strategy: key -> shard name.
Placement = Callable[[Any], str]


def jump_hash(key: int, buckets: int) -> int:
    """Lamping and Veach's jump consistent hash of a 64-bit ``key`` into ``buckets`` buckets.

    Args:
        key: an integer in ``[0, 2**64)``, already well mixed (use :func:`key_hash`).
        buckets: the number of buckets, at least 1.

    Returns:
        A bucket in ``[0, buckets)``; growing ``buckets`` by one moves only ``1/(buckets+1)``
        of the keys, all of them to the new bucket.
    """
    if _c_jump_hash is not None and 0 < buckets < 1 << 31:
        return _c_jump_hash(key, buckets)
    return _py_jump_hash(key, buckets)


def _py_jump_hash(key: int, buckets: int) -> int:
    """The reference algorithm in Python: what the compiled ``jump_hash`` must reproduce."""
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (2147483648.0 / ((key >> 33) + 1)))
    return b


def _check_names(names: Sequence[str]) -> list[str]:
    names = list(names)
    if not names:
        raise ConfigurationError("a shard router needs at least one shard")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"shard names must be unique, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"shard names must be non-empty strings, got {name!r}")
    return names


class Strategy(ABC):
    """How keys are placed on shards. Subclasses implement :meth:`bind`."""

    #: True when placement needs I/O (the directory): use the router's async methods.
    is_async: bool = False

    @abstractmethod
    def bind(self, shards: Sequence[str]) -> Placement:
        """Return the placement function for this ordered list of shard names.

        Raises:
            ConfigurationError: the names do not fit the strategy's configuration.
        """

    def abind(self, shards: Sequence[str]) -> Callable[[Any], Awaitable[str]]:
        """The async placement function; the default wraps :meth:`bind`."""
        place = self.bind(shards)

        async def locate(key: Any) -> str:
            return place(key)

        return locate


#: Bits of a jump step's 64-bit state that index a row of _JumpRows (1024 cells per row).
_ROW_BITS = 10
#: Rows exist for the first buckets only (a chain visits bucket b with probability
#: about 1/(b + 1)); steps from later buckets compute exactly.
_MAX_ROWS = 256
_CODE_32 = "I" if array("I").itemsize >= 4 else "L"


class _JumpRows:
    """Lookup rows for the steps of ``jump_hash`` at a fixed bucket count ``n``.

    A jump step from bucket ``b`` draws the next state ``h`` and jumps to
    ``j = int((b + 1) * (2**31 / ((h >> 33) + 1)))`` (IEEE doubles), stopping at ``b`` when
    ``j >= n``. For a fixed ``b``, ``j`` only decreases as ``h`` grows (each operation is
    correctly rounded, hence monotonic), so over one of the 1024 equal slices of the ``h``
    range (its top 10 bits) ``j`` is either constant or straddles a few values. Row ``b``
    stores, per slice: ``j`` when constant and below ``n``, ``n`` (stop) when ``j >= n``
    everywhere in the slice, and ``n + 1`` (compute exactly) when it straddles. The result
    is bit for bit the reference algorithm's. Straddling cells are where the jumps' thresholds
    crowd (small ``h``): 0.5 % of the steps at ``n = 10``, 6 % at ``n = 100``.

    Rows are built on first use (about 0.3 ms each); until then a row is all ``n + 1``, so
    the exact computation runs and builds it. At most ``_MAX_ROWS`` rows are built: at most
    1 MiB of rows, however many buckets.
    """

    __slots__ = ("_code", "_hi", "_lo", "n", "table", "unbuilt")

    def __init__(self, n: int) -> None:
        self.n = n
        # The smallest cell that holds n + 1 ("I" is 4 bytes wherever CPython runs).
        self._code = "B" if n + 1 < 1 << 8 else "H" if n + 1 < 1 << 16 else _CODE_32
        cells = 1 << _ROW_BITS
        width = 1 << (31 - _ROW_BITS)  # values of (h >> 33) per slice
        # 2**31 / (x + 1) at the top (smallest quotient) and bottom of each slice.
        self._lo = [2147483648.0 / ((i + 1) * width) for i in range(cells)]
        self._hi = [2147483648.0 / (i * width + 1) for i in range(cells)]
        #: The row every bucket starts with (all "compute exactly"); shared, never written.
        self.unbuilt = array(self._code, [n + 1]) * cells
        self.table: list[Sequence[int]] = [self.unbuilt] * n

    def build(self, b: int) -> None:
        """Build row ``b`` (idempotent: two threads may both build it, to the same value)."""
        n, b1, to_int = self.n, float(b + 1), int
        row = array(self._code)
        for low, high in zip(map(to_int, map(b1.__mul__, self._lo)), self._hi, strict=True):
            if low >= n:
                row.append(n)
            elif low == to_int(b1 * high):
                row.append(low)
            else:
                row.append(n + 1)
        self.table[b] = row


class JumpHash(Strategy):
    """Jump consistent hash over the shards in order (the default strategy).

    Shard ``i`` of the router's mapping is bucket ``i``: add shards at the END only. Removing
    or reordering any other shard moves most keys (``plan()`` shows it before you do it).
    Lookup cost is O(log N); balance is the best of all strategies.

    With the compiled accelerator (built at install time where a C compiler is present; see
    :data:`scalekit.sharding.ACCELERATED`) a lookup runs entirely in C: hashing, hash tags and
    the jump loop, about 0.2 µs per key. Without it, a pure-Python path computes the same
    answers, and since placement is a pure function of the key and the shard list, each
    bound router keeps the answers for up to ``cache_size`` recent ``str``/``int`` keys (a hit
    costs a dict lookup instead of a digest and the jump loop; when full, the cache starts
    over). The compiled path needs no cache: computing an answer costs about what a lookup in
    one would.

    Args:
        cache_size: answers remembered per bound router on the pure-Python path; 0 disables
            the cache.

    Raises:
        ConfigurationError: a negative ``cache_size``.
    """

    __slots__ = ("cache_size",)

    def __init__(self, *, cache_size: int = 16_384) -> None:
        if not isinstance(cache_size, int) or cache_size < 0:
            raise ConfigurationError(f"cache_size must be an int >= 0, got {cache_size!r}")
        self.cache_size = cache_size

    def bind(self, shards: Sequence[str]) -> Placement:
        """Return ``key -> shard name``: exactly ``names[jump_hash(key_hash(key), len(names))]``.

        The compiled placement when the accelerator is built, else the pure-Python one.
        """
        names = tuple(_check_names(shards))
        if speedups is not None and len(names) < 1 << 31:
            placement: Placement = speedups.JumpPlacement(names, key_hash, UUID)
            return placement
        return self._bind_python(names)

    def _bind_python(self, names: tuple[str, ...]) -> Placement:
        """The pure-Python placement, with hashing and the jump loop inlined (hot path).

        It only avoids Python overhead: one ``type()`` test per key kind, the digest or the
        splitmix64 finalizer written out, and jump steps read from per-bucket tables instead
        of two float operations, a division and an ``int()`` each (see ``_JumpRows``).
        """
        n = len(names)
        rows = _JumpRows(n)
        table = rows.table
        build = rows.build
        unbuilt = rows.unbuilt
        shift = 64 - _ROW_BITS
        term = n
        fb = int.from_bytes
        # Copying an empty blake2b-64 state costs a third less than creating one.
        fresh_digest = blake2b(digest_size=8).copy
        uuid_type = UUID
        slow = key_hash
        str_tag = hash_tag
        bytes_tag = _bytes_tag
        to_int = int

        def jump_placement(key: Any) -> str:
            kind = type(key)
            # Each branch computes key_hash(key); anything unusual takes the slow path,
            # which also raises InvalidShardKeyError for keys without a stable hash.
            if kind is str and len(key) <= _MAX_FAST_STR:
                if "{" in key:
                    key = str_tag(key)
                digest = fresh_digest()
                try:
                    digest.update(key.encode())
                except UnicodeEncodeError:
                    raise _unencodable(key) from None
                h = fb(digest.digest(), "little")
            elif kind is int and 0 <= key <= 0xFFFFFFFFFFFFFFFF:
                h = (key + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
                h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
                h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
                h ^= h >> 31
            elif kind is bytes and len(key) <= MAX_KEY_BYTES:
                if 123 in key:  # b"{" (an int test: 9x cheaper than a bytes one)
                    key = bytes_tag(key)
                digest = fresh_digest()
                digest.update(key)
                h = fb(digest.digest(), "little")
            elif kind is uuid_type:
                digest = fresh_digest()
                digest.update(key.int.to_bytes(16, "big"))
                h = fb(digest.digest(), "little")
            else:
                h = slow(key)
            # jump_hash(h, n): each step reads the next bucket from the current bucket's
            # row (see _JumpRows); only a row's rare straddling cells compute it exactly.
            b = 0
            while True:
                h = (h * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
                c = table[b][h >> shift]
                if c < term:
                    b = c
                    continue
                if c == term:
                    return names[b]
                if b < _MAX_ROWS and table[b] is unbuilt:
                    build(b)
                j = to_int((b + 1) * (2147483648.0 / ((h >> 33) + 1)))
                if j >= n:
                    return names[b]
                b = j

        limit = self.cache_size
        if not limit:
            return jump_placement
        cache: dict[Any, str] = {}
        get = cache.get

        def cached_jump_placement(key: Any) -> str:
            kind = type(key)
            if kind is str or kind is int:  # never bool/float: they compare equal to ints
                name = get(key)
                if name is None:
                    name = jump_placement(key)
                    if len(cache) >= limit:
                        cache.clear()
                    cache[key] = name
                return name
            return jump_placement(key)

        return cached_jump_placement

    def __repr__(self) -> str:
        return (
            "JumpHash()" if self.cache_size == 16_384 else f"JumpHash(cache_size={self.cache_size})"
        )


class Rendezvous(Strategy):
    """Highest-random-weight (rendezvous) hashing, optionally weighted.

    Every shard scores every key; the highest score wins. Removing ANY shard moves only its
    keys, and weights are exact (a shard with weight 2 gets twice the keys), at O(N) per lookup.

    Args:
        weights: relative weight per shard name (default 1.0 for shards not listed).
    """

    __slots__ = ("weights",)

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights or {})
        for name, weight in self.weights.items():
            if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
                raise ConfigurationError(f"weight of shard {name!r} must be > 0, got {weight!r}")

    def bind(self, shards: Sequence[str]) -> Placement:
        """Return ``key -> shard name``."""
        names = _check_names(shards)
        unknown = set(self.weights) - set(names)
        if unknown:
            raise ConfigurationError(f"weights name unknown shards: {sorted(unknown)}")
        seeds = [
            (int.from_bytes(blake2b(n.encode(), digest_size=8).digest(), "little"), n)
            for n in names
        ]
        unweighted = all(self.weights.get(n, 1.0) == 1.0 for n in names)
        if speedups is not None:
            weights = None if unweighted else tuple(float(self.weights.get(n, 1.0)) for n in names)
            compiled: Placement = speedups.RendezvousPlacement(
                tuple(names), tuple(seed for seed, _ in seeds), weights, key_hash, UUID
            )
            return compiled
        return self._bind_python(seeds, unweighted)

    def _bind_python(self, seeds: list[tuple[int, str]], unweighted: bool) -> Placement:
        """The pure-Python placement over ``(seed, name)`` pairs in shard order."""
        if unweighted:

            def rendezvous_placement(key: Any) -> str:
                h = key_hash(key)
                best, owner = -1, ""
                for seed, name in seeds:
                    score = mix64(h ^ seed)
                    if score > best:
                        best, owner = score, name
                return owner

            return rendezvous_placement
        weighted = [(seed, name, float(self.weights.get(name, 1.0))) for seed, name in seeds]
        log = math.log

        def weighted_placement(key: Any) -> str:
            h = key_hash(key)
            best, owner = -1.0, ""
            for seed, name, weight in weighted:
                u = (mix64(h ^ seed) + 0.5) / _TWO_64  # in (0, 1)
                score = -weight / log(u)
                if score > best:
                    best, owner = score, name
            return owner

        return weighted_placement

    def __repr__(self) -> str:
        return f"Rendezvous(weights={self.weights!r})" if self.weights else "Rendezvous()"


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


class Maglev(Strategy):
    """Maglev hashing (Eisenbud et al., NSDI 2016): named shards, O(1) lookups at any count.

    Each shard walks its own permutation of a table of ``table_size`` slots (a prime), and the
    shards take turns claiming their next free slot until the table is full; a key goes to the
    owner of slot ``key_hash(key) % table_size``. Every shard owns ``table_size / N`` slots
    within one, whatever the names. Removing or adding a shard moves its share of keys plus a
    little churn (1.5-2x the minimum, see the table in the docs); unlike :class:`JumpHash`, any
    shard may be removed, and unlike :class:`Rendezvous` a lookup does not grow with N.

    Args:
        table_size: slots in the lookup table, a prime at least 100x the shard count for
            balance within 1 %; the default 65,537 suits up to a few hundred shards.

    Raises:
        ConfigurationError: ``table_size`` is not a prime, or is smaller than the shard count.
    """

    __slots__ = ("table_size",)

    def __init__(self, table_size: int = 65_537) -> None:
        if not isinstance(table_size, int) or table_size > 1 << 24 or not _is_prime(table_size):
            raise ConfigurationError(
                f"Maglev table_size must be a prime up to 2**24 (65537, 655373, ...), got "
                f"{table_size!r}"
            )
        self.table_size = table_size

    def bind(self, shards: Sequence[str]) -> Placement:
        """Return ``key -> shard name`` (builds the table: a few ms compiled, 0.1-0.3 s not)."""
        names = tuple(_check_names(shards))
        size = self.table_size
        if len(names) > size:
            raise ConfigurationError(
                f"Maglev needs table_size >= the shard count ({len(names)}); use a larger prime"
            )
        offsets, skips = [], []
        for name in names:
            digest = blake2b(name.encode(), digest_size=16, person=b"scalekit-maglev").digest()
            offsets.append(int.from_bytes(digest[:8], "little") % size)
            skips.append(int.from_bytes(digest[8:], "little") % (size - 1) + 1)
        if speedups is not None:
            table = array("I")
            table.frombytes(speedups.maglev_table(tuple(offsets), tuple(skips), size))
            compiled: Placement = speedups.TablePlacement(names, table, key_hash, UUID)
            return compiled
        slots = [names[i] for i in _maglev_table(offsets, skips, size)]
        hash_of = key_hash

        def maglev_placement(key: Any) -> str:
            return slots[hash_of(key) % size]

        return maglev_placement

    def __repr__(self) -> str:
        return "Maglev()" if self.table_size == 65_537 else f"Maglev({self.table_size})"


def _maglev_table(offsets: Sequence[int], skips: Sequence[int], size: int) -> list[int]:
    """Maglev's population loop: the owner (shard index) of each slot."""
    n = len(offsets)
    following = [0] * n
    table = [-1] * size
    filled = 0
    while True:
        for i in range(n):
            offset, skip, j = offsets[i], skips[i], following[i]
            slot = (offset + j * skip) % size
            while table[slot] >= 0:
                j += 1
                slot = (offset + j * skip) % size
            table[slot] = i
            following[i] = j + 1
            filled += 1
            if filled == size:
                return table


def ketama_bytes(key: Any) -> bytes:
    """The bytes a ketama client hashes for ``key``: str as UTF-8 (hash tag applied), ints in
    decimal, UUIDs in canonical text, bytes as they are."""
    kind = type(key)
    if kind is str:
        try:
            return hash_tag(key).encode()
        except UnicodeEncodeError:
            raise _unencodable(key) from None
    if kind is bytes or kind is bytearray or kind is memoryview:
        return _bytes_tag(bytes(key))
    return directory_key(key).encode()


class HashRing(Strategy):
    """A consistent-hash ring with virtual nodes.

    With ``ketama=True`` (the default) the ring is built exactly as libketama and
    ``uhashring.HashRing(hash_fn="ketama")`` build it: ``vnodes // 4`` md5 digests of
    ``"<shard>-<i>"`` per shard, four 32-bit little-endian points per digest, a key placed by the
    first 4 bytes of ``md5(key)``; so a memcached or twemproxy client with the same server names
    agrees with scalekit on every key. With ``ketama=False`` the ring uses the 64-bit key hash.

    Imbalance is roughly ``1/sqrt(vnodes)``: 160 points per shard leave the fullest shard
    10-30 % over the mean. Prefer :class:`JumpHash` or :class:`Rendezvous` unless you need
    ketama compatibility.

    Args:
        vnodes: ring points per shard (a multiple of 4 with ketama); uhashring's ketama default
            is 160 (40 digests x 4).
        ketama: build a ketama-compatible ring.
        weights: relative integer weights per shard name (ketama formula: a shard gets
            ``vnodes * shards * weight // total_weight`` points).
    """

    __slots__ = ("ketama", "vnodes", "weights")

    def __init__(
        self,
        vnodes: int = 160,
        *,
        ketama: bool = True,
        weights: Mapping[str, int] | None = None,
    ) -> None:
        if not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigurationError(f"vnodes must be a positive int, got {vnodes!r}")
        if ketama and vnodes % 4:
            raise ConfigurationError(f"ketama rings need vnodes as a multiple of 4, got {vnodes}")
        self.vnodes = vnodes
        self.ketama = ketama
        self.weights = dict(weights or {})
        for name, weight in self.weights.items():
            if not isinstance(weight, int) or weight < 1:
                raise ConfigurationError(
                    f"weight of shard {name!r} must be a positive int, got {weight!r}"
                )

    def points(self, shards: Sequence[str]) -> list[tuple[int, str]]:
        """The ring as sorted ``(point, shard)`` pairs (later shards win point collisions)."""
        names = _check_names(shards)
        total = sum(self.weights.get(n, 1) for n in names)
        ring: dict[int, str] = {}
        for name in names:
            weight = self.weights.get(name, 1)
            if self.ketama:
                digests = (self.vnodes // 4) * len(names) * weight // total
                for w in range(digests):
                    d = md5(f"{name}-{w}".encode()).digest()
                    for r in range(4):
                        ring[int.from_bytes(d[r * 4 : r * 4 + 4], "little")] = name
            else:
                count = self.vnodes * len(names) * weight // total
                for w in range(count):
                    ring[key_hash(f"{name}-{w}")] = name
        return sorted(ring.items())

    def bind(self, shards: Sequence[str]) -> Placement:
        """Return ``key -> shard name``."""
        ring = self.points(shards)
        keys = [p for p, _ in ring]
        owners = [n for _, n in ring]
        size = len(keys)
        if self.ketama:
            fb = int.from_bytes

            def ketama_placement(key: Any) -> str:
                try:
                    data = (
                        key.encode() if type(key) is str and "{" not in key else ketama_bytes(key)
                    )
                except UnicodeEncodeError:
                    raise _unencodable(key) from None
                pos = bisect_right(keys, fb(md5(data).digest()[:4], "little"))
                return owners[pos if pos < size else 0]

            return ketama_placement

        def ring_placement(key: Any) -> str:
            pos = bisect_right(keys, key_hash(key))
            return owners[pos if pos < size else 0]

        return ring_placement

    def __repr__(self) -> str:
        return f"HashRing(vnodes={self.vnodes}, ketama={self.ketama})"


class RangeStrategy(Strategy):
    """Ordered ranges of keys (or of their 64-bit hash) mapped to shards explicitly.

    ``bounds`` lists ``(lower_bound, shard)`` pairs in increasing order; a range runs from its
    lower bound (inclusive) to the next one (exclusive). The first lower bound may be ``None``
    (no lower limit); keys below a non-``None`` first bound belong to no shard.

    Args:
        bounds: ``[(None, "s0"), (1000, "s1"), (5000, "s2")]``: ids below 1000 on ``s0``...
        by_hash: compare the key's 64-bit stable hash instead of the key (Vitess keyspace-id
            style): hash ranges balance like hashing and move explicitly, range by range.

    Raises:
        ConfigurationError: bounds are empty, unordered, or mix types.
    """

    __slots__ = ("_kind", "_lowers", "_owners", "bounds", "by_hash")

    def __init__(self, bounds: Sequence[tuple[Any, str]], *, by_hash: bool = False) -> None:
        bounds = [(low, shard) for low, shard in bounds]
        if not bounds:
            raise ConfigurationError("RangeStrategy needs at least one (lower_bound, shard)")
        lowers = [low for low, _ in bounds]
        if any(low is None for low in lowers[1:]):
            raise ConfigurationError("only the first range may have lower bound None")
        concrete = [low for low in lowers if low is not None]
        kinds = {type(low) for low in concrete}
        if by_hash:
            kinds.add(int)
        if len(kinds) > 1 or not kinds <= {int, str, bytes}:
            raise ConfigurationError(
                f"range bounds must all be int, all str or all bytes, got {sorted(map(str, kinds))}"
            )
        if any(a >= b for a, b in itertools.pairwise(concrete)):
            raise ConfigurationError(f"range bounds must increase strictly, got {concrete!r}")
        self.bounds = bounds
        self.by_hash = by_hash
        self._kind: type = kinds.pop() if kinds else int
        self._lowers = concrete
        self._owners = [shard for _, shard in bounds]

    @classmethod
    def split_keyspace(cls, shards: Sequence[str]) -> RangeStrategy:
        """Split the 64-bit hash space into equal ranges, one per shard (``by_hash=True``).

        Args:
            shards: the shard names, one range each, in keyspace order.
        """
        names = _check_names(shards)
        step = (1 << 64) // len(names)
        return cls([(None if i == 0 else i * step, n) for i, n in enumerate(names)], by_hash=True)

    def segments(self) -> list[tuple[Any, Any, str | None]]:
        """The ranges as ``(start, end, shard)``; ``None`` means unbounded, shard ``None``
        means the keys there belong to no shard."""
        out: list[tuple[Any, Any, str | None]] = []
        starts: list[Any] = [low for low, _ in self.bounds]
        if starts[0] is not None:
            out.append((None, starts[0], None))
        for i, (low, shard) in enumerate(self.bounds):
            end = starts[i + 1] if i + 1 < len(starts) else None
            out.append((low, end, shard))
        if self.by_hash and out[-1][1] is None:
            last_start, _, last_shard = out[-1]
            out[-1] = (last_start, 1 << 64, last_shard)
            if out[0][0] is None:
                out[0] = (0, out[0][1], out[0][2])
        return out

    def bind(self, shards: Sequence[str]) -> Placement:
        """Return ``key -> shard name``."""
        names = set(_check_names(shards))
        unknown = sorted(set(self._owners) - names)
        if unknown:
            raise ConfigurationError(f"ranges name shards the router does not have: {unknown}")
        lowers = self._lowers
        owners = self._owners
        first_open = self.bounds[0][0] is None
        kind = self._kind
        by_hash = self.by_hash

        def range_placement(key: Any) -> str:
            value = key_hash(key) if by_hash else key
            if type(value) is not kind:
                raise InvalidShardKeyError(
                    f"this RangeStrategy compares {kind.__name__} keys, got "
                    f"{type(key).__name__} ({key!r:.60})"
                )
            i = bisect_right(lowers, value)
            if first_open:
                return owners[i]
            if i == 0:
                raise UnknownShardError(
                    f"key {key!r:.60} is below the first range ({lowers[0]!r}); "
                    "add a range that covers it"
                )
            return owners[i - 1]

        return range_placement

    def __repr__(self) -> str:
        return f"RangeStrategy({self.bounds!r}, by_hash={self.by_hash})"


class RegionStrategy(Strategy):
    """Route by region first (data residency), then by a per-region strategy.

    Keys are ``(region, key)`` tuples. The region picks the only shards the key may live on; the
    inner strategy places ``key`` among them. Routing fails closed: an unknown region raises
    :class:`~scalekit.errors.UnknownShardError`, and nothing ever falls back to another region
    (a down shard fails its keys, see :class:`~scalekit.sharding.ShardedDatabase`).

    Args:
        regions: region name -> the shard names in that region (each shard in one region).
        strategy: the placement inside every region, or a mapping region -> strategy.

    Raises:
        ConfigurationError: a shard is listed in two regions, or a region has no shard.
    """

    __slots__ = ("regions", "strategy")

    def __init__(
        self,
        regions: Mapping[str, Sequence[str]],
        strategy: Strategy | Mapping[str, Strategy] | None = None,
    ) -> None:
        if not regions:
            raise ConfigurationError("RegionStrategy needs at least one region")
        seen: dict[str, str] = {}
        for region, names in regions.items():
            if not names:
                raise ConfigurationError(f"region {region!r} has no shard")
            for name in names:
                if name in seen:
                    raise ConfigurationError(
                        f"shard {name!r} is in regions {seen[name]!r} and {region!r}; "
                        "a shard's data lives in exactly one region"
                    )
                seen[name] = region
        self.regions = {region: list(names) for region, names in regions.items()}
        if isinstance(strategy, Mapping):
            missing = sorted(set(self.regions) - set(strategy))
            if missing:
                raise ConfigurationError(f"no strategy for regions {missing}")
            self.strategy: dict[str, Strategy] = dict(strategy)
        else:
            inner = strategy or JumpHash()
            self.strategy = dict.fromkeys(self.regions, inner)

    def region_of(self, shard: str) -> str:
        """The region a shard belongs to.

        Raises:
            UnknownShardError: no region lists that shard.
        """
        for region, names in self.regions.items():
            if shard in names:
                return region
        raise UnknownShardError(f"shard {shard!r} is in no region")

    def bind(self, shards: Sequence[str]) -> Placement:
        """Return ``(region, key) -> shard name``."""
        names = set(_check_names(shards))
        placements: dict[str, Placement] = {}
        for region, members in self.regions.items():
            unknown = sorted(set(members) - names)
            if unknown:
                raise ConfigurationError(
                    f"region {region!r} lists shards the router does not have: {unknown}"
                )
            placements[region] = self.strategy[region].bind(members)

        def region_placement(key: Any) -> str:
            if type(key) is not tuple or len(key) != 2 or type(key[0]) is not str:
                raise InvalidShardKeyError(
                    f"RegionStrategy keys are (region, key) tuples, got {key!r:.60}"
                )
            place = placements.get(key[0])
            if place is None:
                raise UnknownShardError(
                    f"region {key[0]!r} is not configured (known: {sorted(placements)}); "
                    "keys never fall back to another region"
                )
            return place(key[1])

        return region_placement

    def __repr__(self) -> str:
        return f"RegionStrategy({self.regions!r})"
