"""One server (primary or replica) as the router sees it, and its public status snapshot."""

from __future__ import annotations

import asyncio
import math
from collections import deque
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
        "free",
        "good_checks",
        "host",
        "lag",
        "monitor",
        "name",
        "pool",
        "port",
        "reason",
        "replay_lsn",
        "role",
        "timer",
        "waiters",
    )

    def __init__(self, dsn: str, role: Role, slots: int = 10) -> None:
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
        # The connection gate: ``free`` turns (one per pooled connection); callers beyond them
        # queue here, FIFO, each with a deadline. Deadlines grow with the queue, so ONE timer,
        # armed for the oldest waiter, bounds every wait: no per-call timeout object.
        self.free = slots
        self.waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self.timer: asyncio.TimerHandle | None = None
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

    async def wait_turn(self, seconds: float) -> None:
        """Wait (FIFO) until a holder passes its turn on; only called when ``free`` is 0.

        Raises:
            TimeoutError: no turn within ``seconds`` (the pool is exhausted).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        deadline = loop.time() + seconds
        self.waiters.append((deadline, fut))
        if self.timer is None:
            self.timer = loop.call_at(deadline, self._expire, deadline, seconds)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.pass_turn()  # granted, then cancelled before it ran: hand the turn on
            raise

    def pass_turn(self) -> None:
        """A holder is done: hand its turn to the oldest live waiter, else free it."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()[1]
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1

    def _expire(self, when: float, timeout: float) -> None:
        self.timer = None
        waiters = self.waiters
        while waiters and (waiters[0][0] <= when or waiters[0][1].done()):
            fut = waiters.popleft()[1]
            if not fut.done():
                fut.set_exception(
                    TimeoutError(
                        f"no connection to {self.name} within acquire_timeout={timeout:g}s: every "
                        "pooled connection is in use; raise max_size or retry later"
                    )
                )
        if waiters:
            self.timer = asyncio.get_running_loop().call_at(
                waiters[0][0], self._expire, waiters[0][0], timeout
            )

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
