"""ShardRouter: routing, epochs and stale routers, reshard plans."""

from __future__ import annotations

import pytest

from scalekit.errors import (
    ConfigurationError,
    InvalidShardKeyError,
    ShardMovedError,
    UnknownShardError,
)
from scalekit.sharding import (
    DirectoryStrategy,
    JumpHash,
    MemoryDirectoryStore,
    RangeStrategy,
    Rendezvous,
    ShardRouter,
)


def shards(n: int) -> dict[str, str]:
    return {f"s{i}": f"postgresql://db{i}" for i in range(n)}


def test_router_returns_names_and_objects() -> None:
    router = ShardRouter(shards(4))
    name = router.shard_for("user:1")
    assert name in router
    assert router.get("user:1") == f"postgresql://db{name[1:]}"
    assert router.shard("s2") == "postgresql://db2"
    assert router.names == ("s0", "s1", "s2", "s3")
    assert len(router) == 4
    assert list(router) == list(router.names)
    assert "epoch=0" in repr(router)


def test_unknown_shard_name_is_a_key_error_with_a_clear_message() -> None:
    with pytest.raises(UnknownShardError, match="no shard named 'zz'") as info:
        ShardRouter(shards(2)).shard("zz")
    assert isinstance(info.value, KeyError)


def test_bad_keys_raise_invalid_shard_key() -> None:
    with pytest.raises(InvalidShardKeyError):
        ShardRouter(shards(2)).shard_for(1.5)


def test_negative_epoch_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        ShardRouter(shards(2), epoch=-1)


async def test_async_lookup_works_for_sync_strategies() -> None:
    router = ShardRouter(shards(3), Rendezvous())
    assert await router.ashard_for(7) == router.shard_for(7)
    assert await router.aget(7) == router.get(7)


def test_directory_router_refuses_sync_lookups() -> None:
    router = ShardRouter(shards(2), DirectoryStrategy(MemoryDirectoryStore()))
    with pytest.raises(ConfigurationError, match="ashard_for"):
        router.shard_for(1)


def test_evolve_bumps_the_epoch() -> None:
    old = ShardRouter(shards(4), epoch=3)
    new = old.evolve(shards(5))
    assert new.epoch == 4
    assert len(new) == 5
    assert isinstance(new.strategy, JumpHash)


def test_stale_router_gets_shard_moved_only_for_keys_that_moved() -> None:
    old = ShardRouter(shards(4), epoch=1)
    new = old.evolve(shards(5))
    moved = next(k for k in range(1000) if old.shard_for(k) != new.shard_for(k))
    stayed = next(k for k in range(1000) if old.shard_for(k) == new.shard_for(k))
    new.check(stayed, epoch=1, shard=old.shard_for(stayed))
    new.check(moved, epoch=2, shard=new.shard_for(moved))
    with pytest.raises(ShardMovedError) as info:
        new.check(moved, epoch=1, shard=old.shard_for(moved))
    err = info.value
    assert (err.epoch, err.current_epoch, err.shard) == (1, 2, new.shard_for(moved))
    assert "refresh the router and retry" in str(err)


def test_plan_jump_n_to_n_plus_one_moves_about_one_over_n_plus_one() -> None:
    old = ShardRouter(shards(10))
    new = old.evolve(shards(11))
    keys = range(100_000)
    plan = old.plan(new, keys=keys)
    assert plan.total == 100_000
    assert plan.moved_fraction is not None
    assert abs(plan.moved_fraction - 1 / 11) < 0.01
    assert {target for _, target in plan.flows()} == {"s10"}
    assert sum(plan.flows().values()) == len(plan.moves)
    move = plan.moves[0]
    assert plan.move_of(move.key) == move
    assert plan.move_of(-1) is None
    assert sum(len(v) for v in plan.routes().values()) == len(plan.moves)
    assert "epoch 0 -> 1" in plan.summary()
    assert sum(plan.loads_after.values()) == 100_000
    assert plan.loads_after["s10"] == sum(plan.flows().values())
    assert plan.balance_after is not None
    assert plan.balance_after < 0.05


def test_plan_shows_that_removing_a_middle_jump_shard_moves_most_keys() -> None:
    old = ShardRouter(shards(4))
    new = old.evolve({k: v for k, v in shards(4).items() if k != "s1"})
    plan = old.plan(new, keys=range(20_000))
    assert plan.moved_fraction is not None
    assert plan.moved_fraction > 0.4
    rendezvous_old = ShardRouter(shards(4), Rendezvous())
    rendezvous_new = rendezvous_old.evolve(new.shards)
    small = rendezvous_old.plan(rendezvous_new, keys=range(20_000))
    assert small.moved_fraction is not None
    assert small.moved_fraction < 0.3
    assert {source for source, _ in small.flows()} == {"s1"}


def test_range_plan_lists_moving_ranges() -> None:
    names = {"a": 1, "b": 2, "c": 3}
    old = ShardRouter(names, RangeStrategy([(None, "a"), (100, "b")]))
    new = old.evolve(strategy=RangeStrategy([(None, "a"), (50, "c"), (100, "b"), (200, "c")]))
    plan = old.plan(new)
    assert [(r.start, r.end, r.source, r.target) for r in plan.ranges] == [
        (50, 100, "a", "c"),
        (200, None, "b", "c"),
    ]
    assert plan.moved_fraction is None
    keyed = old.plan(new, keys=range(300))
    assert keyed.moved_fraction == pytest.approx(150 / 300)


def test_hash_range_split_moves_exact_fraction() -> None:
    old = ShardRouter(shards(2), RangeStrategy.split_keyspace(["s0", "s1"]))
    new = old.evolve(shards(3), RangeStrategy.split_keyspace(["s0", "s1", "s2"]))
    plan = old.plan(new)
    assert plan.moved_fraction == pytest.approx(0.5, abs=1e-9)
    sampled = old.plan(new, keys=range(50_000))
    assert sampled.moved_fraction == pytest.approx(0.5, abs=0.02)


def test_plan_without_keys_needs_range_strategies() -> None:
    old = ShardRouter(shards(2))
    with pytest.raises(ConfigurationError, match="keys="):
        old.plan(old.evolve())
