"""Shard routing, resharding plans and moves, and sharded asyncpg pools with scatter-gather.

Import what you need from here::

    from scalekit.sharding import JumpHash, ShardedDatabase, ShardRouter

Nothing here imports asyncpg or redis until a backend that needs it is constructed.
"""

from __future__ import annotations

from scalekit._accel import speedups as _speedups
from scalekit.sharding.backfill import Backfill, BackfillProgress, VerifyReport
from scalekit.sharding.database import ScatterResult, ShardedDatabase, ShardOutcome, ShardSession
from scalekit.sharding.directory import (
    DirectoryStore,
    DirectoryStrategy,
    MemoryDirectoryStore,
    PostgresDirectoryStore,
    RedisDirectoryStore,
)
from scalekit.sharding.keys import MAX_KEY_BYTES, ShardKey, directory_key, hash_tag, key_hash
from scalekit.sharding.migration import MigratingRouter, MigrationPhase
from scalekit.sharding.postgres_hash import PostgresHash, partition_hash
from scalekit.sharding.router import KeyMove, RangeMove, ReshardPlan, ShardRouter
from scalekit.sharding.strategies import (
    HashRing,
    JumpHash,
    Maglev,
    Placement,
    RangeStrategy,
    RegionStrategy,
    Rendezvous,
    Strategy,
    jump_hash,
)

__all__ = [
    "ACCELERATED",
    "MAX_KEY_BYTES",
    "Backfill",
    "BackfillProgress",
    "DirectoryStore",
    "DirectoryStrategy",
    "HashRing",
    "JumpHash",
    "KeyMove",
    "Maglev",
    "MemoryDirectoryStore",
    "MigratingRouter",
    "MigrationPhase",
    "Placement",
    "PostgresDirectoryStore",
    "PostgresHash",
    "RangeMove",
    "RangeStrategy",
    "RedisDirectoryStore",
    "RegionStrategy",
    "Rendezvous",
    "ReshardPlan",
    "ScatterResult",
    "ShardKey",
    "ShardOutcome",
    "ShardRouter",
    "ShardSession",
    "ShardedDatabase",
    "Strategy",
    "VerifyReport",
    "directory_key",
    "hash_tag",
    "jump_hash",
    "key_hash",
    "partition_hash",
]

#: True when the compiled accelerator is in use: :class:`JumpHash` lookups and the key hash
#: run in C. False where it could not be built at install time (no C compiler) or
#: ``SCALEKIT_NO_EXTENSIONS=1`` is set; results are identical either way.
ACCELERATED: bool = _speedups is not None
