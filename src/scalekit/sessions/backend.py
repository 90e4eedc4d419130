"""The contract between :class:`~scalekit.sessions.SessionStore` and a storage backend.

A backend stores each session as a flat hash of fields (one JSON text per session key) plus a few
metadata fields, and performs every read-modify-write atomically on its side (a Lua script in
Redis, a plain critical section in memory). The store computes key names and encodes values; a
backend never sees a raw session id.

Implement :class:`SessionBackend` to keep sessions elsewhere; the store's tests
(``tests/sessions/test_store.py``) run against any backend.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Limits", "Outcome", "SessionBackend", "StoredSession", "WriteResult"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The time and size rules a backend applies atomically with each operation.

    Attributes:
        now: the store clock's wall time, in seconds since the epoch.
        idle_timeout: seconds without a touch after which a session is dead.
        absolute_lifetime: seconds after creation (or login) after which a session is dead.
        touch_interval: a load or a merge refreshes the idle deadline only if the last touch
            is older.
        max_bytes: the most bytes a session's keys and encoded values may total.
    """

    now: float
    idle_timeout: float
    absolute_lifetime: float
    touch_interval: float
    max_bytes: int


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A live session as a backend returns it.

    Attributes:
        fields: session key -> JSON text of its value.
        created: when the session was created (or last bound to a user), epoch seconds.
        user_id: the user the session is bound to, if any.
        version: incremented by every write.
    """

    fields: dict[str, str]
    created: float
    user_id: str | None
    version: int


class Outcome(enum.Enum):
    """How a backend write ended."""

    OK = "ok"
    GONE = "gone"  # the session expired or was destroyed: nothing was written
    TOO_LARGE = "too_large"  # the merged data would exceed max_bytes: nothing was written
    EXISTS = "exists"  # the new key is taken (a 256-bit collision: practically never)


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The result of :meth:`SessionBackend.create`, ``merge`` or ``rotate``.

    Attributes:
        outcome: what happened.
        version: the session's version after the write (``OK`` only).
        size: the data size in bytes after (``OK``) or that would have been (``TOO_LARGE``).
    """

    outcome: Outcome
    version: int = 0
    size: int = 0


@runtime_checkable
class SessionBackend(Protocol):
    """Atomic session storage. Every method must be safe to call from many app instances."""

    async def load(self, key: str, limits: Limits) -> StoredSession | None:
        """Return the live session at ``key`` and refresh its idle deadline (throttled).

        A session past its idle or absolute deadline is deleted and ``None`` returned.
        """
        ...

    async def create(
        self,
        key: str,
        fields: Mapping[str, str],
        limits: Limits,
        *,
        user_id: str | None = None,
        index_key: str | None = None,
    ) -> WriteResult:
        """Create a session (never overwriting one), optionally bound to a user's index."""
        ...

    async def merge(
        self,
        key: str,
        set_fields: Mapping[str, str],
        delete_fields: Sequence[str],
        limits: Limits,
    ) -> WriteResult:
        """Set and delete only the given fields of a live session, atomically.

        The idle deadline is refreshed as by :meth:`load` (only when the last touch is older
        than ``limits.touch_interval``).
        """
        ...

    async def rotate(
        self,
        old_key: str,
        new_key: str,
        set_fields: Mapping[str, str],
        delete_fields: Sequence[str],
        limits: Limits,
        *,
        bind: tuple[str, str] | None = None,
    ) -> WriteResult:
        """Move a live session to ``new_key`` with the changes applied; ``old_key`` dies.

        Args:
            bind: ``(user_id, index_key)`` to bind the new session to a user (its creation
                time restarts, so the absolute lifetime counts from login); ``None`` keeps the
                current binding and creation time.
        """
        ...

    async def destroy(self, key: str) -> bool:
        """Delete a session and its index entry; whether it existed."""
        ...

    async def destroy_index(self, index_key: str) -> int:
        """Delete every session in a user's index and the index; how many sessions died."""
        ...

    async def count_index(self, index_key: str, limits: Limits) -> int:
        """How many live sessions a user's index holds."""
        ...

    async def aclose(self) -> None:
        """Release what the backend owns (not a client the caller passed in)."""
        ...
