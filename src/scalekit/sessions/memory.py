"""An in-process session backend with the same semantics as the Redis one, for tests and dev."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scalekit.sessions._codec import field_size
from scalekit.sessions.backend import Limits, Outcome, StoredSession, WriteResult

__all__ = ["MemorySessionBackend"]


@dataclass(slots=True)
class _Entry:
    fields: dict[str, str]
    created: float
    touched: float
    user_id: str | None
    index_key: str | None
    version: int = 1
    size: int = 0


class MemorySessionBackend:
    """Sessions in a dict, with Redis's semantics: idle and absolute deadlines, per-key merge,
    atomic rotation, per-user indexes and the size limit.

    Each operation runs without an ``await`` inside, so it is atomic on the event loop, as a Lua
    script is atomic in Redis. Several :class:`~scalekit.sessions.SessionStore` objects (several
    "app instances" in a test) can share one backend. Expired sessions are swept as time passes.
    """

    def __init__(self) -> None:
        self._sessions: dict[str, _Entry] = {}
        self._indexes: dict[str, set[str]] = {}
        self._ops = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def _alive(self, key: str, limits: Limits) -> _Entry | None:
        entry = self._sessions.get(key)
        if entry is None:
            return None
        now = limits.now
        if (
            now - entry.touched >= limits.idle_timeout
            or now - entry.created >= limits.absolute_lifetime
        ):
            self._drop(key)
            return None
        return entry

    def _drop(self, key: str) -> bool:
        entry = self._sessions.pop(key, None)
        if entry is None:
            return False
        if entry.index_key is not None:
            members = self._indexes.get(entry.index_key)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._indexes[entry.index_key]
        return True

    def _sweep(self, limits: Limits) -> None:
        self._ops += 1
        if self._ops % 256:
            return
        for key in list(self._sessions):
            self._alive(key, limits)

    @staticmethod
    def _apply(
        fields: dict[str, str],
        size: int,
        set_fields: Mapping[str, str],
        delete_fields: Sequence[str],
    ) -> int:
        for name, text in set_fields.items():
            old = fields.get(name)
            if old is not None:
                size -= field_size(name, old)
            fields[name] = text
            size += field_size(name, text)
        for name in delete_fields:
            old = fields.pop(name, None)
            if old is not None:
                size -= field_size(name, old)
        return size

    async def load(self, key: str, limits: Limits) -> StoredSession | None:
        """See :meth:`SessionBackend.load`."""
        entry = self._alive(key, limits)
        if entry is None:
            return None
        if limits.now - entry.touched >= limits.touch_interval:
            entry.touched = limits.now
        return StoredSession(dict(entry.fields), entry.created, entry.user_id, entry.version)

    async def create(
        self,
        key: str,
        fields: Mapping[str, str],
        limits: Limits,
        *,
        user_id: str | None = None,
        index_key: str | None = None,
    ) -> WriteResult:
        """See :meth:`SessionBackend.create`."""
        self._sweep(limits)
        if self._alive(key, limits) is not None:
            return WriteResult(Outcome.EXISTS)
        data: dict[str, str] = {}
        size = self._apply(data, 0, fields, ())
        if size > limits.max_bytes:
            return WriteResult(Outcome.TOO_LARGE, size=size)
        self._insert(key, data, size, limits.now, user_id, index_key, limits)
        return WriteResult(Outcome.OK, version=1, size=size)

    def _insert(
        self,
        key: str,
        data: dict[str, str],
        size: int,
        created: float,
        user_id: str | None,
        index_key: str | None,
        limits: Limits,
        version: int = 1,
    ) -> None:
        self._sessions[key] = _Entry(
            data, created, limits.now, user_id, index_key, version=version, size=size
        )
        if index_key is not None:
            members = self._indexes.setdefault(index_key, set())
            for member in list(members):
                if self._alive(member, limits) is None:
                    members.discard(member)
            members.add(key)

    async def merge(
        self,
        key: str,
        set_fields: Mapping[str, str],
        delete_fields: Sequence[str],
        limits: Limits,
    ) -> WriteResult:
        """See :meth:`SessionBackend.merge`."""
        entry = self._alive(key, limits)
        if entry is None:
            return WriteResult(Outcome.GONE)
        data = dict(entry.fields)
        size = self._apply(data, entry.size, set_fields, delete_fields)
        if size > limits.max_bytes:
            return WriteResult(Outcome.TOO_LARGE, size=size)
        entry.fields, entry.size = data, size
        entry.version += 1
        if limits.now - entry.touched >= limits.touch_interval:  # throttled, as for loads
            entry.touched = limits.now
        return WriteResult(Outcome.OK, version=entry.version, size=size)

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
        """See :meth:`SessionBackend.rotate`."""
        entry = self._alive(old_key, limits)
        if entry is None:
            return WriteResult(Outcome.GONE)
        if self._alive(new_key, limits) is not None:
            return WriteResult(Outcome.EXISTS)
        data = dict(entry.fields)
        size = self._apply(data, entry.size, set_fields, delete_fields)
        if size > limits.max_bytes:
            return WriteResult(Outcome.TOO_LARGE, size=size)
        self._drop(old_key)
        if bind is None:
            created, user_id, index_key = entry.created, entry.user_id, entry.index_key
        else:
            created, (user_id, index_key) = limits.now, bind
        version = entry.version + 1
        self._insert(new_key, data, size, created, user_id, index_key, limits, version)
        return WriteResult(Outcome.OK, version=version, size=size)

    async def destroy(self, key: str) -> bool:
        """See :meth:`SessionBackend.destroy`."""
        return self._drop(key)

    async def destroy_index(self, index_key: str) -> int:
        """See :meth:`SessionBackend.destroy_index`."""
        members = self._indexes.pop(index_key, set())
        return sum(1 for key in members if self._sessions.pop(key, None) is not None)

    async def count_index(self, index_key: str, limits: Limits) -> int:
        """See :meth:`SessionBackend.count_index`."""
        members = self._indexes.get(index_key, set())
        return sum(1 for key in list(members) if self._alive(key, limits) is not None)

    async def aclose(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"MemorySessionBackend(sessions={len(self._sessions)})"
