"""A write fence inside each shard: writes routed by an older router are refused by PostgreSQL.

In-process, replacing ``db.router`` makes stale sessions raise
:class:`~scalekit.errors.ShardMovedError`. Across processes, only the shard itself knows which
topology is in force, so a fenced :class:`~scalekit.sharding.ShardedDatabase` tells it: every
write sets ``scalekit.epoch`` to the epoch of the router that routed it, and a statement
trigger on the sharded tables compares it with the shard's fence
(``scalekit_shard_fence.epoch``). After ``await db.raise_fence(new_epoch)``, a write routed
at an older epoch fails with ``ShardMovedError`` instead of landing on the wrong shard, in any
process. The trigger reads the fence row ``FOR SHARE``, so ``raise_fence`` waits for writes
already past the check to commit, and none slips in after it.

Writes that do not set ``scalekit.epoch`` (admin sessions, migrations, the backfill) are not
fenced.
"""

from __future__ import annotations

from scalekit.sharding.backfill import _quote

__all__ = ["FENCE_SQLSTATE", "fence_install_sql", "raise_fence_sql"]

#: The SQLSTATE the fence trigger raises (translated to ShardMovedError by scalekit).
FENCE_SQLSTATE = "SK409"

SET_EPOCH_SQL = "SELECT set_config('scalekit.epoch', $1, $2)"

_SETUP = [
    "CREATE TABLE IF NOT EXISTS scalekit_shard_fence ("
    " only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row), epoch bigint NOT NULL)",
    "INSERT INTO scalekit_shard_fence (epoch) VALUES (0) ON CONFLICT DO NOTHING",
    f"""CREATE OR REPLACE FUNCTION scalekit_fence_check() RETURNS trigger
LANGUAGE plpgsql AS $fence$
DECLARE
    mine text := current_setting('scalekit.epoch', true);
    fence bigint;
BEGIN
    IF mine IS NULL OR mine = '' THEN
        RETURN NULL;
    END IF;
    SELECT epoch INTO fence FROM scalekit_shard_fence FOR SHARE;
    IF fence IS NOT NULL AND mine::bigint < fence THEN
        RAISE EXCEPTION 'scalekit shard fence: a write routed at epoch % is refused since epoch %',
            mine, fence USING ERRCODE = '{FENCE_SQLSTATE}', DETAIL = fence::text;
    END IF;
    RETURN NULL;
END
$fence$""",
]


def fence_install_sql(table: str) -> list[str]:
    """The statements that install the fence table, function and ``table``'s trigger."""
    quoted = _quote(table, "table")
    return [
        *_SETUP,
        f"DROP TRIGGER IF EXISTS scalekit_fence ON {quoted}",
        f"CREATE TRIGGER scalekit_fence BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE "
        f"ON {quoted} FOR EACH STATEMENT EXECUTE FUNCTION scalekit_fence_check()",
    ]


def raise_fence_sql() -> str:
    """The statement that raises a shard's fence to ``$1`` (never lowers it)."""
    return "UPDATE scalekit_shard_fence SET epoch = greatest(epoch, $1)"
