"""Shard routing (jump hash, rendezvous, ring, range, directory, region), resharding plans and sharded pools.

Import what you need from here::

    from scalekit.sharding import ShardRouter, JumpHash, ShardedDatabase

Nothing here imports asyncpg or redis until a backend that needs it is constructed.
"""

from __future__ import annotations

from scalekit.sharding.keys import MAX_KEY_BYTES, ShardKey, directory_key, hash_tag, key_hash
from scalekit.sharding.router import KeyMove, RangeMove, ReshardPlan, ShardRouter
from scalekit.sharding.strategies import (
    HashRing,
    JumpHash,
    Placement,
    RangeStrategy,
    RegionStrategy,
    Rendezvous,
    Strategy,
    jump_hash,
)

__all__ = [
    "MAX_KEY_BYTES",
    "HashRing",
    "JumpHash",
    "KeyMove",
    "Placement",
    "RangeMove",
    "RangeStrategy",
    "RegionStrategy",
    "Rendezvous",
    "ReshardPlan",
    "ShardKey",
    "ShardRouter",
    "Strategy",
    "directory_key",
    "hash_tag",
    "jump_hash",
    "key_hash",
]
