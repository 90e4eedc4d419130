"""The shard router: key -> shard name -> shard object, versioned by an epoch, and reshard plans."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from scalekit.errors import ConfigurationError, ShardMovedError, UnknownShardError
from scalekit.sharding.strategies import JumpHash, RangeStrategy, Strategy

__all__ = ["KeyMove", "RangeMove", "ReshardPlan", "ShardRouter"]

T = TypeVar("T")


class ShardRouter(Generic[T]):
    """Route keys to shards with a stable strategy.

    ``shards`` maps shard names to whatever you route to (asyncpg pools, Redis clients, URLs);
    its order matters to :class:`~scalekit.sharding.JumpHash` (shard ``i`` is bucket ``i``).

    Example::

        router = ShardRouter({"s0": pool0, "s1": pool1}, JumpHash())
        router.shard_for(42)      # "s1"
        router.get("{acme}:17")   # the pool of the shard that owns tenant acme

    Attributes:
        shard_for: ``key -> shard name`` (a plain function: the hot path has no extra layer).
        strategy: the placement strategy.
        epoch: the topology version this router represents; bump it for every change so a
            caller holding an older router gets :class:`~scalekit.errors.ShardMovedError`.

    Args:
        shards: shard name -> shard object, in placement order.
        strategy: the placement strategy (default :class:`~scalekit.sharding.JumpHash`).
        epoch: the topology version (a non-negative int).

    Raises:
        ConfigurationError: no shards, duplicate or empty names, a strategy that names
            unknown shards, or a negative epoch.
    """

    __slots__ = ("_ashard_for", "_shards", "epoch", "shard_for", "strategy")

    shard_for: Callable[[Any], str]

    def __init__(
        self,
        shards: Mapping[str, T],
        strategy: Strategy | None = None,
        *,
        epoch: int = 0,
    ) -> None:
        if not isinstance(epoch, int) or epoch < 0:
            raise ConfigurationError(f"epoch must be a non-negative int, got {epoch!r}")
        self._shards: dict[str, T] = dict(shards)
        self.strategy = strategy if strategy is not None else JumpHash()
        self.epoch = epoch
        names = list(self._shards)
        if self.strategy.is_async:
            self.shard_for = self._needs_async
        else:
            self.shard_for = self.strategy.bind(names)
        self._ashard_for: Callable[[Any], Awaitable[str]] = self.strategy.abind(names)

    def _needs_async(self, key: Any) -> str:
        raise ConfigurationError(
            f"{self.strategy!r} looks keys up over the network: "
            "use `await router.ashard_for(key)` or `await router.aget(key)`"
        )

    def get(self, key: Any) -> T:
        """The shard object that owns ``key``.

        Raises:
            InvalidShardKeyError: the key's type cannot be hashed stably.
            UnknownShardError: no shard owns the key (range gap, unknown region).
        """
        return self._shards[self.shard_for(key)]

    async def ashard_for(self, key: Any) -> str:
        """The shard name for ``key``; works with every strategy, including the directory."""
        return await self._ashard_for(key)

    async def aget(self, key: Any) -> T:
        """The shard object for ``key``; works with every strategy, including the directory."""
        return self._shards[await self._ashard_for(key)]

    def shard(self, name: str) -> T:
        """The shard object called ``name``.

        Raises:
            UnknownShardError: no shard has that name.
        """
        try:
            return self._shards[name]
        except KeyError:
            raise UnknownShardError(
                f"no shard named {name!r}; shards are {list(self._shards)}"
            ) from None

    @property
    def names(self) -> tuple[str, ...]:
        """The shard names, in placement order."""
        return tuple(self._shards)

    @property
    def shards(self) -> Mapping[str, T]:
        """A read-only view of name -> shard object."""
        return MappingProxyType(self._shards)

    def __len__(self) -> int:
        return len(self._shards)

    def __contains__(self, name: object) -> bool:
        return name in self._shards

    def __iter__(self) -> Iterator[str]:
        return iter(self._shards)

    def __repr__(self) -> str:
        return f"ShardRouter({list(self._shards)}, {self.strategy!r}, epoch={self.epoch})"

    def evolve(
        self, shards: Mapping[str, T] | None = None, strategy: Strategy | None = None
    ) -> ShardRouter[T]:
        """A new router with other shards and/or strategy and the next epoch.

        Args:
            shards: the new name -> shard mapping (default: the same shards).
            strategy: the new strategy (default: the same strategy).
        """
        return ShardRouter(
            self._shards if shards is None else shards,
            self.strategy if strategy is None else strategy,
            epoch=self.epoch + 1,
        )

    def check(self, key: Any, *, epoch: int, shard: str) -> None:
        """Refuse a request routed by an older router when its key no longer lives on ``shard``.

        Call this where the current topology is known (a shard's server side, or a shared
        database object) with the epoch and the shard the caller routed with.

        Args:
            key: the key the request is for.
            epoch: the epoch of the router the caller used.
            shard: the shard the caller chose.

        Raises:
            ShardMovedError: the caller's router is older and the key now lives elsewhere
                (``.shard`` names the current owner): refresh the router and retry.
        """
        if epoch == self.epoch:
            return
        self._refuse_if_moved(key, epoch, shard, self.shard_for(key))

    async def acheck(self, key: Any, *, epoch: int, shard: str) -> None:
        """Async form of :meth:`check`; works with every strategy, including the directory.

        Raises:
            ShardMovedError: as :meth:`check`.
        """
        if epoch == self.epoch:
            return
        self._refuse_if_moved(key, epoch, shard, await self._ashard_for(key))

    def _refuse_if_moved(self, key: Any, epoch: int, shard: str, owner: str) -> None:
        if epoch < self.epoch and owner == shard:
            return
        raise ShardMovedError(
            f"key {key!r:.60} was routed to {shard!r} by a router at epoch {epoch}, but at "
            f"epoch {self.epoch} it lives on {owner!r}: refresh the router and retry",
            epoch=epoch,
            current_epoch=self.epoch,
            shard=owner,
        )

    def plan(self, new: ShardRouter[Any], keys: Iterable[Any] | None = None) -> ReshardPlan:
        """What moving from this router to ``new`` means: which keys or ranges move where.

        Args:
            new: the target router.
            keys: the keys to evaluate (all of them, or a sample for an estimate). Without
                keys, both routers must use :class:`~scalekit.sharding.RangeStrategy` and the
                plan lists the moving ranges.

        Returns:
            A :class:`ReshardPlan`.

        Raises:
            ConfigurationError: no keys were given and the strategies are not both ranges.
        """
        if keys is None:
            if not (
                isinstance(self.strategy, RangeStrategy)
                and isinstance(new.strategy, RangeStrategy)
                and self.strategy.by_hash == new.strategy.by_hash
            ):
                raise ConfigurationError(
                    "plan() without keys compares range strategies of the same kind; "
                    "pass keys=... (all keys, or a sample) for hash strategies"
                )
            ranges = _range_moves(self.strategy, new.strategy)
            fraction: float | None = None
            if self.strategy.by_hash:
                fraction = sum(m.end - m.start for m in ranges) / float(1 << 64)
            return ReshardPlan(self.epoch, new.epoch, 0, (), tuple(ranges), fraction, {}, {})
        moves: list[KeyMove] = []
        total = 0
        old_for, new_for = self.shard_for, new.shard_for
        before: Counter[str] = Counter(dict.fromkeys(self.names, 0))
        after: Counter[str] = Counter(dict.fromkeys(new.names, 0))
        for key in keys:
            total += 1
            source, target = old_for(key), new_for(key)
            before[source] += 1
            after[target] += 1
            if source != target:
                moves.append(KeyMove(key, source, target))
        fraction = len(moves) / total if total else 0.0
        return ReshardPlan(
            self.epoch, new.epoch, total, tuple(moves), (), fraction, dict(before), dict(after)
        )


@dataclass(frozen=True, slots=True)
class KeyMove:
    """One key that changes shard."""

    key: Any
    source: str
    target: str


@dataclass(frozen=True, slots=True)
class RangeMove:
    """A range ``[start, end)`` of keys (or of key hashes) that changes shard.

    ``None`` bounds are unbounded; a ``None`` source means the keys had no shard before.
    """

    start: Any
    end: Any
    source: str | None
    target: str | None


@dataclass(frozen=True, slots=True)
class ReshardPlan:
    """The difference between two routers.

    Attributes:
        old_epoch: epoch of the router moved from.
        new_epoch: epoch of the router moved to.
        total: keys evaluated (0 for a range plan).
        moves: every key that changes shard.
        ranges: every range that changes shard (range strategies).
        moved_fraction: share of keys (or of the hash space) that moves; ``None`` for a range
            plan over raw keys, whose size is unknown.
        loads_before: keys per shard under the old router (key plans).
        loads_after: keys per shard under the new router (key plans).
    """

    old_epoch: int
    new_epoch: int
    total: int
    moves: tuple[KeyMove, ...]
    ranges: tuple[RangeMove, ...]
    moved_fraction: float | None
    loads_before: dict[str, int] = field(default_factory=dict)
    loads_after: dict[str, int] = field(default_factory=dict)
    _index: dict[Any, KeyMove] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {m.key: m for m in self.moves})

    @property
    def balance_after(self) -> float | None:
        """Coefficient of variation (stddev / mean) of keys per shard after the move, or
        ``None`` when no keys were evaluated. 0 is perfect; random placement of K keys on N
        shards gives about ``sqrt(N / K)``."""
        loads = list(self.loads_after.values())
        if not loads or not sum(loads):
            return None
        return statistics.pstdev(loads) / statistics.fmean(loads)

    def routes(self) -> dict[tuple[str, str], list[Any]]:
        """Moving keys grouped by ``(source, target)``, one backfill per pair."""
        out: dict[tuple[str, str], list[Any]] = {}
        for move in self.moves:
            out.setdefault((move.source, move.target), []).append(move.key)
        return out

    def flows(self) -> Counter[tuple[str, str]]:
        """How many keys move along each ``(source, target)`` pair."""
        return Counter((m.source, m.target) for m in self.moves)

    def move_of(self, key: Any) -> KeyMove | None:
        """The move for ``key``, or ``None`` when it stays (or was not evaluated)."""
        return self._index.get(key)

    def summary(self) -> str:
        """One line per flow, for logs and change reviews."""
        pct = "?" if self.moved_fraction is None else f"{self.moved_fraction:.2%}"
        lines = [f"epoch {self.old_epoch} -> {self.new_epoch}: {pct} moves"]
        balance = self.balance_after
        if balance is not None:
            lines[0] += f", load CoV after {balance:.2%}"
        if self.moves:
            lines += [f"  {s} -> {t}: {n} keys" for (s, t), n in sorted(self.flows().items())]
        lines += [f"  [{r.start!r}, {r.end!r}): {r.source} -> {r.target}" for r in self.ranges]
        return "\n".join(lines)


def _range_moves(old: RangeStrategy, new: RangeStrategy) -> list[RangeMove]:
    a, b = old.segments(), new.segments()
    cuts: set[Any] = set()
    for start, end, _ in a + b:
        for bound in (start, end):
            if bound is not None:
                cuts.add(bound)
    ordered = sorted(cuts)
    pieces: list[tuple[Any, Any]] = []
    edges: list[Any] = [None, *ordered, None]
    for start, end in itertools.pairwise(edges):
        if start is not None and end is not None and start >= end:
            continue
        pieces.append((start, end))

    def owner(segs: list[tuple[Any, Any, str | None]], start: Any, end: Any) -> str | None:
        for s, e, shard in segs:
            lo_ok = s is None or (start is not None and start >= s)
            hi_ok = e is None or (end is not None and end <= e)
            if lo_ok and hi_ok:
                return shard
        return None

    moves: list[RangeMove] = []
    for start, end in pieces:
        src, dst = owner(a, start, end), owner(b, start, end)
        if src == dst:
            continue
        if moves and moves[-1].end == start and (moves[-1].source, moves[-1].target) == (src, dst):
            moves[-1] = RangeMove(moves[-1].start, end, src, dst)
        else:
            moves.append(RangeMove(start, end, src, dst))
    return moves
