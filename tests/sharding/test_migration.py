"""MigratingRouter: where reads and writes go in every phase of a move."""

from __future__ import annotations

import itertools

import pytest

from scalekit.errors import ConfigurationError, ShardMovedError
from scalekit.sharding import (
    DirectoryStrategy,
    MemoryDirectoryStore,
    MigratingRouter,
    MigrationPhase,
    ShardRouter,
)

OLD = ShardRouter({f"s{i}": i for i in range(3)}, epoch=1)
NEW = OLD.evolve({f"s{i}": i for i in range(4)})
MOVING = next(k for k in range(1000) if OLD.shard_for(k) != NEW.shard_for(k))
STAYING = next(k for k in range(1000) if OLD.shard_for(k) == NEW.shard_for(k))
SRC, DST = OLD.shard_for(MOVING), NEW.shard_for(MOVING)


@pytest.mark.parametrize(
    ("phase", "read", "writes"),
    [
        (MigrationPhase.DUAL_WRITE, SRC, (SRC, DST)),
        (MigrationPhase.BACKFILL, SRC, (SRC, DST)),
        (MigrationPhase.VERIFY, SRC, (SRC, DST)),
        (MigrationPhase.CUT_OVER, DST, (DST, SRC)),
        (MigrationPhase.CLEANUP, DST, (DST,)),
    ],
)
def test_reads_and_writes_of_a_moving_key_per_phase(
    phase: MigrationPhase, read: str, writes: tuple[str, ...]
) -> None:
    router = MigratingRouter(OLD, NEW, phase)
    assert router.moving(MOVING)
    assert router.shard_for(MOVING) == read
    assert router.write_shards(MOVING) == writes


@pytest.mark.parametrize("phase", list(MigrationPhase))
def test_keys_that_stay_use_one_shard_in_every_phase(phase: MigrationPhase) -> None:
    router = MigratingRouter(OLD, NEW, phase)
    assert not router.moving(STAYING)
    assert router.shard_for(STAYING) == OLD.shard_for(STAYING)
    assert router.write_shards(STAYING) == (OLD.shard_for(STAYING),)


def test_adjacent_phases_write_where_the_other_reads() -> None:
    # A process one phase behind must still write where the newer phase reads.
    phases = list(MigrationPhase)
    for earlier, later in itertools.pairwise(phases):
        a, b = MigratingRouter(OLD, NEW, earlier), MigratingRouter(OLD, NEW, later)
        for key in range(300):
            assert b.shard_for(key) in a.write_shards(key)
            assert a.shard_for(key) in b.write_shards(key) or later == MigrationPhase.CLEANUP


def test_advance_walks_the_phases_and_stops_after_cleanup() -> None:
    router = MigratingRouter(OLD, NEW)
    seen = [router.phase]
    while router.phase != MigrationPhase.CLEANUP:
        router = router.advance()
        seen.append(router.phase)
    assert seen == list(MigrationPhase)
    with pytest.raises(ConfigurationError, match="last phase"):
        router.advance()
    assert router.at(MigrationPhase.VERIFY).phase == MigrationPhase.VERIFY


def test_epoch_switches_at_cut_over() -> None:
    assert MigratingRouter(OLD, NEW, MigrationPhase.VERIFY).epoch == OLD.epoch
    assert MigratingRouter(OLD, NEW, MigrationPhase.CUT_OVER).epoch == NEW.epoch
    assert set(MigratingRouter(OLD, NEW).names) == {"s0", "s1", "s2", "s3"}


def test_check_refuses_a_stale_read_owner_after_cleanup() -> None:
    router = MigratingRouter(OLD, NEW, MigrationPhase.CLEANUP)
    router.check(MOVING, epoch=1, shard=DST)
    with pytest.raises(ShardMovedError) as info:
        router.check(MOVING, epoch=1, shard=SRC)
    assert info.value.shard == DST


def test_new_router_must_be_newer_and_synchronous() -> None:
    with pytest.raises(ConfigurationError, match="epoch"):
        MigratingRouter(NEW, OLD)
    directory = ShardRouter({"s0": 0}, DirectoryStrategy(MemoryDirectoryStore()), epoch=5)
    with pytest.raises(ConfigurationError, match="synchronous"):
        MigratingRouter(OLD, directory)
