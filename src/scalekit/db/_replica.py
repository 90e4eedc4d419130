"""One server (primary or replica) as the router sees it, and its public status snapshot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from scalekit._redact import redact_url

if TYPE_CHECKING:
    import asyncpg

__all__ = ["ReplicaStatus", "Role"]

Role = Literal["primary", "replica"]


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A replica as the health monitor last saw it.

    Attributes:
        name: the redacted DSN.
        available: whether reads are routed to it now.
        replay_lsn: the last WAL position it is known to have replayed (0 when unknown).
        lag: seconds of replication lag at the last check (``inf`` when unknown).
        checked_ago: seconds since the last successful check (``inf`` when never).
        reason: why it is out of rotation (``None`` when available).
    """

    name: str
    available: bool
    replay_lsn: int
    lag: float
    checked_ago: float
    reason: str | None


class _Server:
    """A DSN, its pool, and (for replicas) what the monitor learnt about it."""

    __slots__ = (
        "attributes",
        "available",
        "checked_at",
        "dsn",
        "good_checks",
        "host",
        "in_use",
        "lag",
        "monitor",
        "name",
        "pool",
        "port",
        "reason",
        "replay_lsn",
        "role",
    )

    def __init__(self, dsn: str, role: Role) -> None:
        self.dsn = dsn
        self.role: Role = role
        self.name = redact_url(dsn)
        parts = urlsplit(dsn)
        self.host = parts.hostname or "localhost"
        try:
            self.port = parts.port or 5432
        except ValueError:
            self.port = 5432
        self.pool: asyncpg.Pool[Any] | None = None
        self.in_use = 0  # connections acquired through the Database and not yet released
        self.monitor: Any = None  # the health monitor's own connection
        self.available = False
        self.good_checks = 0
        self.replay_lsn = 0
        self.lag = math.inf
        self.checked_at = -math.inf
        self.reason: str | None = "not checked yet"
        self.attributes: dict[str, str | int] = {
            "db.system.name": "postgresql",
            "server.address": self.host,
            "server.port": self.port,
            "scalekit.db.role": role,
        }
        database = parts.path.lstrip("/")
        if database:
            self.attributes["db.namespace"] = database

    def staleness(self, now: float) -> float:
        """An upper bound on how stale this replica's data may be now, in seconds."""
        return self.lag + (now - self.checked_at)

    def status(self, now: float) -> ReplicaStatus:
        return ReplicaStatus(
            name=self.name,
            available=self.available,
            replay_lsn=self.replay_lsn,
            lag=self.lag,
            checked_ago=now - self.checked_at,
            reason=None if self.available else self.reason,
        )

    def __repr__(self) -> str:
        return f"<{self.role} {self.name}>"
