"""Routing during an online reshard: the phases of a move and where reads and writes go in each.

A move from router ``old`` to router ``new`` runs through these phases. Only keys whose owner
differs between the two routers ("moving keys") are affected; every other key reads and writes
its one shard throughout.

==============  =====================  ==========================  ================================
phase           reads of moving keys   writes of moving keys       what the operator does
==============  =====================  ==========================  ================================
``DUAL_WRITE``  old owner              old owner, then new owner   roll it out to every process
``BACKFILL``    old owner              old owner, then new owner   :meth:`Backfill.run` copies rows
``VERIFY``      old owner              old owner, then new owner   :meth:`Backfill.verify` compares
``CUT_OVER``    new owner              new owner, then old owner   flip reads; old kept for rollback
``CLEANUP``     new owner              new owner only              :meth:`Backfill.cleanup` deletes
==============  =====================  ==========================  ================================

Two adjacent phases always write a superset of what the earlier one reads, so a process one
phase behind stays correct. Advance to the next phase only once every process runs the current
one (distribute the phase through your config system and wait for it to be acknowledged).
The first shard listed by :meth:`MigratingRouter.write_shards` is the primary: its write
decides success; writes to the second are required too (an error is raised if it fails), so
dual writes must be idempotent (upserts and deletes by primary key) and safe to retry.
"""

from __future__ import annotations

import enum
from typing import Any

from scalekit.errors import ConfigurationError, ShardMovedError
from scalekit.sharding.router import ShardRouter

__all__ = ["MigratingRouter", "MigrationPhase"]


class MigrationPhase(enum.IntEnum):
    """The phases of an online move, in order."""

    DUAL_WRITE = 1
    BACKFILL = 2
    VERIFY = 3
    CUT_OVER = 4
    CLEANUP = 5

    @property
    def reads_new(self) -> bool:
        """Whether reads of moving keys go to the new owner."""
        return self >= MigrationPhase.CUT_OVER


class MigratingRouter:
    """Route keys while data moves from ``old`` to ``new`` (see the module docs for phases).

    Args:
        old: the router in force before the move.
        new: the router after the move; its epoch must be greater.
        phase: the current phase.

    Raises:
        ConfigurationError: ``new`` is not newer than ``old``, or a strategy needs async I/O.
    """

    __slots__ = ("_new_for", "_old_for", "new", "old", "phase")

    def __init__(
        self,
        old: ShardRouter[Any],
        new: ShardRouter[Any],
        phase: MigrationPhase = MigrationPhase.DUAL_WRITE,
    ) -> None:
        if new.epoch <= old.epoch:
            raise ConfigurationError(
                f"the new router's epoch ({new.epoch}) must be greater than the old one's "
                f"({old.epoch}); build it with old.evolve(...)"
            )
        if old.strategy.is_async or new.strategy.is_async:
            raise ConfigurationError(
                "MigratingRouter needs synchronous strategies; to move directory entries, "
                "copy the rows and then reassign the keys in the directory"
            )
        self.old = old
        self.new = new
        self.phase = MigrationPhase(phase)
        self._old_for = old.shard_for
        self._new_for = new.shard_for

    @property
    def epoch(self) -> int:
        """The old router's epoch before cut-over, the new router's from cut-over on."""
        return self.new.epoch if self.phase.reads_new else self.old.epoch

    @property
    def names(self) -> tuple[str, ...]:
        """Every shard either router uses (old ones first)."""
        return tuple(dict.fromkeys(self.old.names + self.new.names))

    @property
    def strategy(self) -> Any:
        """The strategy in force for reads (old before cut-over, new after)."""
        return self.new.strategy if self.phase.reads_new else self.old.strategy

    def moving(self, key: Any) -> bool:
        """Whether ``key`` changes shard in this move."""
        return self._old_for(key) != self._new_for(key)

    def shard_for(self, key: Any) -> str:
        """The shard that serves reads of ``key`` in this phase."""
        return self._new_for(key) if self.phase >= MigrationPhase.CUT_OVER else self._old_for(key)

    def write_shards(self, key: Any) -> tuple[str, ...]:
        """The shards a write of ``key`` goes to in this phase, the primary first."""
        source, target = self._old_for(key), self._new_for(key)
        if source == target:
            return (source,)
        phase = self.phase
        if phase <= MigrationPhase.VERIFY:
            return (source, target)
        if phase == MigrationPhase.CUT_OVER:
            return (target, source)
        return (target,)

    async def ashard_for(self, key: Any) -> str:
        """Async form of :meth:`shard_for` (same result)."""
        return self.shard_for(key)

    def advance(self) -> MigratingRouter:
        """The same move in the next phase.

        Raises:
            ConfigurationError: the move is already in its last phase (``CLEANUP``): switch
                to ``self.new`` once the old copies are deleted.
        """
        if self.phase == MigrationPhase.CLEANUP:
            raise ConfigurationError("CLEANUP is the last phase; route with the new router now")
        return MigratingRouter(self.old, self.new, MigrationPhase(self.phase + 1))

    def at(self, phase: MigrationPhase) -> MigratingRouter:
        """The same move in ``phase`` (for rollbacks: ``at(MigrationPhase.VERIFY)``)."""
        return MigratingRouter(self.old, self.new, phase)

    def check(self, key: Any, *, epoch: int, shard: str) -> None:
        """Refuse a request routed before the read owner of ``key`` changed.

        Raises:
            ShardMovedError: ``shard`` no longer serves ``key`` and the epoch is older.
        """
        owner = self.shard_for(key)
        if owner == shard or shard in self.write_shards(key):
            return
        raise ShardMovedError(
            f"key {key!r:.60} was routed to {shard!r} at epoch {epoch}, but in phase "
            f"{self.phase.name} it is served by {owner!r}: refresh the router and retry",
            epoch=epoch,
            current_epoch=self.epoch,
            shard=owner,
        )

    async def acheck(self, key: Any, *, epoch: int, shard: str) -> None:
        """Async form of :meth:`check` (same result)."""
        self.check(key, epoch=epoch, shard=shard)

    def __repr__(self) -> str:
        return (
            f"MigratingRouter(epoch {self.old.epoch} -> {self.new.epoch}, phase={self.phase.name})"
        )
