"""Route keys stably, co-locate a tenant with a hash tag, and plan growing to N+1 shards."""

from scalekit.errors import InvalidShardKeyError, ShardMovedError, UnknownShardError
from scalekit.sharding import JumpHash, RegionStrategy, ShardRouter

# Shard name -> anything: pools, clients, URLs. Order matters to JumpHash: add at the end.
shards = {f"pg{i}": f"postgresql://db{i}.internal/app" for i in range(4)}
router = ShardRouter(shards, JumpHash(), epoch=1)

# The same key lands on the same shard in every process, on every machine.
assert router.shard_for("user:42") == router.shard_for("user:42")
assert router.get(42) == shards[router.shard_for(42)]

# Hash tags: only the part in {braces} is hashed, so a tenant's rows share a shard.
assert router.shard_for("{acme}:order:17") == router.shard_for("{acme}:invoice:3")

# A key type without a stable hash is refused, instead of being routed by accident.
refused: Exception | None = None
try:
    router.shard_for(4.2)
except InvalidShardKeyError as exc:
    refused = exc
assert refused is not None
assert "int, str, bytes, UUID" in str(refused)

# Growing from 4 to 5 shards: the plan says exactly what moves, and it is ~1/5 of the keys.
grown = router.evolve({**shards, "pg4": "postgresql://db4.internal/app"})
plan = router.plan(grown, keys=range(100_000))
assert plan.moved_fraction is not None
assert abs(plan.moved_fraction - 1 / 5) < 0.01
assert {target for _source, target in plan.flows()} == {"pg4"}  # only to the new shard
print(plan.summary())

# A caller still holding the epoch-1 router is told to refresh, like Redis Cluster's MOVED.
moved = plan.moves[0]
stale: ShardMovedError | None = None
try:
    grown.check(moved.key, epoch=router.epoch, shard=moved.source)
except ShardMovedError as exc:
    stale = exc
assert stale is not None
assert stale.shard == moved.target  # retry there, with the new router
assert stale.current_epoch == 2

# Residency: the region picks the shards, and nothing falls back across regions.
regional = ShardRouter(
    {"eu-1": "…", "eu-2": "…", "us-1": "…"},
    RegionStrategy({"eu": ["eu-1", "eu-2"], "us": ["us-1"]}),
)
assert regional.shard_for(("eu", "user:42")) in {"eu-1", "eu-2"}
try:
    regional.shard_for(("ap", "user:42"))
except UnknownShardError:
    pass
else:
    raise AssertionError("an unknown region must fail closed")
