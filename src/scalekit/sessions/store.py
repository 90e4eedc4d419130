"""The session store and the session mapping applications read and write.

A :class:`Session` remembers the JSON text of every value as loaded; saving sends only the keys
whose encoding changed (and the keys deleted), and the backend merges them atomically. Two
requests of one user on two app instances that change different keys therefore both win;
changes to the *same* key are last-writer-wins.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator, Mapping, MutableMapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import trace

from scalekit._telemetry import get_logger, meter, tracer
from scalekit.clock import SYSTEM_CLOCK, Clock
from scalekit.errors import (
    ConfigurationError,
    SessionDataError,
    SessionError,
    SessionNotLoadedError,
    SessionStoreUnavailableError,
    SessionTooLargeError,
)
from scalekit.sessions._aead import FieldCipher
from scalekit.sessions._codec import decode_value, encode_value
from scalekit.sessions._crypto import KeySpace
from scalekit.sessions._deadline import Watchdog
from scalekit.sessions.backend import Limits, Outcome, SessionBackend, WriteResult

__all__ = ["Session", "SessionStore"]

_T = TypeVar("_T")
_log = get_logger(__name__)
_IMMUTABLE = (str, int, float, bool, type(None))  # values a caller cannot change in place


class Session(MutableMapping[str, Any]):
    """One user's session data: a mutable mapping of ``str`` keys to JSON values.

    Returned by :class:`SessionStore` and put in ``scope["session"]`` by the middleware (so
    Starlette's ``request.session`` is this object). Use ``dict(session)`` for a plain copy.

    - Values must be JSON types; they come back as JSON types (tuples become lists).
    - Changes are detected by comparing encodings when saved, so mutating a nested value
      (``session["cart"].append(3)``) is saved too.
    - :meth:`clear` (and :meth:`logout`) end the session: the server copy and the cookie are
      destroyed on save; keys set afterwards start a new session with a new id.
    - :meth:`login` binds the session to a user *and rotates its id* (the fixation defence).
    """

    __slots__ = (
        "_bind",
        "_created",
        "_data",
        "_dead_id",
        "_ended",
        "_id",
        "_key",
        "_loaded",
        "_original",
        "_pending_id",
        "_rotate",
        "_store",
        "_touched",
        "_unavailable",
        "_user_id",
        "_version",
    )

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = {}
        self._original: dict[str, str] = {}
        # Keys that may differ from _original: set or deleted, or read while holding a mutable
        # value (which the caller may change in place). Only these are re-encoded on save.
        self._touched: set[str] = set()
        self._id: str | None = None
        self._key: tuple[str, str] | None = None  # (id, its Redis key): one HMAC per id
        self._user_id: str | None = None
        self._created: float | None = None
        self._version = 0
        self._store: SessionStore | None = None
        self._pending_id: str | None = None
        self._loaded = True
        self._rotate = False
        self._bind: str | None = None
        self._dead_id: str | None = None
        self._ended = False
        self._unavailable = False
        if data:
            for key, value in data.items():
                self[key] = value

    # -- state ------------------------------------------------------------------------------

    @property
    def id(self) -> str | None:
        """The session id, ``None`` until the session is first saved (or after it ended)."""
        return self._id

    @property
    def user_id(self) -> str | None:
        """The user the session is bound to by :meth:`login` (after the save), as a string."""
        return self._user_id

    @property
    def created(self) -> float | None:
        """When the session was created or bound to its user (epoch seconds), once saved."""
        return self._created

    @property
    def version(self) -> int:
        """The stored version, incremented by every write of any instance."""
        return self._version

    @property
    def is_new(self) -> bool:
        """Whether the session has no server copy yet."""
        return self._id is None and self._pending_id is None

    @property
    def loaded(self) -> bool:
        """Whether the data is available (``False`` for a lazy session before :meth:`load`)."""
        return self._loaded

    @property
    def ended(self) -> bool:
        """Whether the session expired or was destroyed elsewhere before this save.

        Changes made in this request were then not written: a session is never resurrected.
        """
        return self._ended

    @property
    def available(self) -> bool:
        """``False`` when the store could not be reached to load it (changes are not saved)."""
        return not self._unavailable

    @property
    def modified(self) -> bool:
        """Whether saving would write anything."""
        if not self._loaded or self._unavailable:
            return False
        if self._rotate or self._bind is not None or self._dead_id is not None:
            return True
        sets, deletes = self.changes()
        return bool(sets or deletes)

    async def load(self) -> Session:
        """Load a lazy session from its store (no-op when already loaded); returns ``self``.

        Raises:
            SessionStoreUnavailableError: the store did not answer in time.
        """
        if not self._loaded and self._store is not None:
            await self._store._fill(self)
        return self

    # -- intent -----------------------------------------------------------------------------

    def login(self, user_id: str | int) -> None:
        """Bind the session to ``user_id`` and give it a new id when saved.

        The old id dies atomically, so an id an attacker planted before login is worthless
        after it. The absolute lifetime restarts at login. The user's index gains the session,
        so :meth:`SessionStore.destroy_all_for_user` reaches it.
        """
        self._require_loaded()
        if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
            raise SessionDataError(f"user_id must be str or int, got {type(user_id).__name__}")
        self._bind = str(user_id)
        self._rotate = True

    def regenerate(self) -> None:
        """Give the session a new id when saved, keeping its data and user."""
        self._require_loaded()
        self._rotate = True

    def logout(self) -> None:
        """End the session: destroyed in the store and the cookie deleted when saved."""
        self.clear()

    def clear(self) -> None:
        """End the session (like :meth:`logout`); keys set afterwards start a new session."""
        self._require_loaded()
        if self._id is not None:
            self._dead_id = self._id
        self._id = None
        self._user_id = None
        self._created = None
        self._version = 0
        self._data.clear()
        self._original = {}
        self._touched.clear()
        self._rotate = False
        self._bind = None

    def changes(self, *, full: bool = False) -> tuple[dict[str, str], list[str]]:
        """The encoded keys to set and the keys to delete since the load or last save.

        Only keys that were set, deleted, or read while holding a mutable value (a list or a
        dict) are re-encoded and compared (``full=True`` compares every key).

        Raises:
            SessionDataError: a value cannot be encoded as JSON.
        """
        original, data = self._original, self._data
        sets: dict[str, str] = {}
        deletes: list[str] = []
        for key in data if full else self._touched:
            if key in data:
                text = encode_value(key, data[key])
                if original.get(key) != text:
                    sets[key] = text
            elif key in original:
                deletes.append(key)
        if full:
            deletes = [key for key in original if key not in data]
        return sets, deletes

    def _saved(self) -> None:
        # Containers handed out earlier may still be mutated by the caller: keep watching them.
        data = self._data
        self._touched = {
            key for key in self._touched if key in data and not isinstance(data[key], _IMMUTABLE)
        }

    def _mark_unavailable(self) -> None:
        self._pending_id = None
        self._loaded = True
        self._unavailable = True

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise SessionNotLoadedError(
                "this session is loaded lazily and was not loaded yet: call "
                "`await session.load()` (or `await load_session(request)`) before using it, "
                "or enable autoload in SessionMiddleware"
            )

    # -- mapping ----------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        self._require_loaded()
        value = self._data[key]
        if not isinstance(value, _IMMUTABLE):
            self._touched.add(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._require_loaded()
        if not isinstance(key, str):
            raise SessionDataError(f"session keys must be str, got {type(key).__name__}")
        self._data[key] = value
        self._touched.add(key)

    def __delitem__(self, key: str) -> None:
        self._require_loaded()
        del self._data[key]
        self._touched.add(key)

    def __iter__(self) -> Iterator[str]:
        self._require_loaded()
        return iter(self._data)

    def __len__(self) -> int:
        self._require_loaded()
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        self._require_loaded()
        return key in self._data

    def __bool__(self) -> bool:
        return self._loaded and bool(self._data)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Session):
            return self is other
        if isinstance(other, Mapping):
            return self._loaded and self._data == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def get(self, key: str, default: Any = None) -> Any:
        """``session[key]`` or ``default``."""
        self._require_loaded()
        value = self._data.get(key, default)
        if not isinstance(value, _IMMUTABLE) and key in self._data:
            self._touched.add(key)
        return value

    def __repr__(self) -> str:
        shown = "<not loaded>" if not self._loaded else f"{len(self._data)} keys"
        ident = "new" if self._id is None else f"{self._id[:4]}…"
        return f"<Session {ident} user={self._user_id!r} {shown}>"

    def __reduce__(self) -> Any:
        raise TypeError("a Session is not picklable: copy its data with dict(session)")


class SessionStore:
    """Creates, loads, saves, rotates and destroys sessions in a backend.

    Args:
        backend: a :class:`~scalekit.sessions.RedisSessionBackend`,
            :class:`~scalekit.sessions.MemorySessionBackend` or your own
            :class:`~scalekit.sessions.backend.SessionBackend`.
        secret_key: the server key (16+ random bytes). Redis keys are HMACs of session ids and
            user ids under it, so a copy of Redis yields no usable id. Changing it ends every
            session.
        key_prefix: prefix of every Redis key (no ``{`` or ``}``).
        idle_timeout: seconds without a request after which a session ends (sliding).
        absolute_lifetime: seconds after creation (restarted by :meth:`Session.login`) after
            which a session ends however active it is.
        touch_interval: a load refreshes the idle deadline only when the last refresh is older
            than this, sparing a write per request; defaults to ``min(60, idle_timeout / 15)``.
            A session may so end up to this much before ``idle_timeout``.
        max_bytes: the largest total size of a session's keys and JSON values.
        timeout: seconds every backend call may take before
            :class:`~scalekit.errors.SessionStoreUnavailableError` is raised.
        encryption_keys: encrypt every value at rest (AES-256-GCM, one subkey per value, the
            key name as associated data) with the first of these keys (16+ random bytes each);
            all of them decrypt, so add a new key in front to rotate. Needs
            ``scalekit[crypto]``. Values stored in clear before are read and encrypted at
            their next change. ``max_bytes`` counts the encrypted size.
        clock: the time source (a :class:`~scalekit.testing.ManualClock` in tests).

    Raises:
        ConfigurationError: an argument is out of range or a key is too short.
        MissingDependencyError: ``encryption_keys`` without ``cryptography`` installed.
    """

    def __init__(
        self,
        backend: SessionBackend,
        *,
        secret_key: str | bytes,
        key_prefix: str = "scalekit:session:",
        idle_timeout: float = 900.0,
        absolute_lifetime: float = 8 * 3600.0,
        touch_interval: float | None = None,
        max_bytes: int = 64 * 1024,
        timeout: float = 1.0,
        encryption_keys: Sequence[str | bytes] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if idle_timeout <= 0 or absolute_lifetime <= 0:
            raise ConfigurationError("idle_timeout and absolute_lifetime must be > 0 seconds")
        if touch_interval is None:
            touch_interval = min(60.0, idle_timeout / 15)
        if not 0 <= touch_interval < idle_timeout:
            raise ConfigurationError("touch_interval must be >= 0 and below idle_timeout")
        if max_bytes <= 0 or timeout <= 0:
            raise ConfigurationError("max_bytes and timeout must be > 0")
        self.backend = backend
        self.idle_timeout = float(idle_timeout)
        self.absolute_lifetime = float(absolute_lifetime)
        self.touch_interval = float(touch_interval)
        self.max_bytes = int(max_bytes)
        self._watchdog = Watchdog(float(timeout))
        self._keys = KeySpace(secret_key, key_prefix)
        self._cipher = FieldCipher(encryption_keys) if encryption_keys is not None else None
        self._clock = clock
        self._tracer = tracer()
        self._ops = meter().create_counter(
            "scalekit.sessions.operations",
            unit="{operation}",
            description="Session store operations by operation and outcome",
        )

    @property
    def timeout(self) -> float:
        """Seconds every backend call may take (settable)."""
        return self._watchdog.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        if value <= 0:
            raise ConfigurationError("timeout must be > 0")
        self._watchdog = Watchdog(float(value))

    # -- helpers ----------------------------------------------------------------------------

    def _sealed(self, sets: dict[str, str]) -> dict[str, str]:
        """What is stored for ``sets``: encrypted when the store has keys."""
        return sets if self._cipher is None else self._cipher.seal_all(sets)

    def _limits(self) -> Limits:
        return Limits(
            self._clock.time(),
            self.idle_timeout,
            self.absolute_lifetime,
            self.touch_interval,
            self.max_bytes,
        )

    async def _run(self, operation: str, call: Awaitable[_T]) -> _T:
        span_cm: contextlib.AbstractContextManager[Any]
        if trace.get_current_span().is_recording():
            span_cm = self._tracer.start_as_current_span(
                f"session {operation}", attributes={"scalekit.sessions.operation": operation}
            )
        else:
            span_cm = contextlib.nullcontext()
        with span_cm:
            try:
                return await self._watchdog.run(call)
            except TimeoutError as exc:
                self._ops.add(1, {"operation": operation, "outcome": "unavailable"})
                raise SessionStoreUnavailableError(
                    f"the session store did not answer a {operation} within {self.timeout}s; "
                    "check the backend's health (the request can continue without a session)"
                ) from exc
            except SessionStoreUnavailableError:
                self._ops.add(1, {"operation": operation, "outcome": "unavailable"})
                raise

    def _count(self, operation: str, outcome: str) -> None:
        self._ops.add(1, {"operation": operation, "outcome": outcome})

    def _session_key(self, session: Session) -> str:
        session_id = session._id
        assert session_id is not None
        cached = session._key
        if cached is None or cached[0] != session_id:
            cached = session._key = (session_id, self._keys.session_key(session_id))
        return cached[1]

    def is_valid_id(self, session_id: object) -> bool:
        """Whether ``session_id`` has the shape of an id this store issues (no I/O)."""
        return self._keys.is_valid_id(session_id)

    # -- public API -------------------------------------------------------------------------

    def new(self, data: Mapping[str, Any] | None = None) -> Session:
        """An unsaved session; :meth:`save` creates it (and issues its id)."""
        session = Session(data)
        session._store = self
        return session

    def lazy(self, session_id: str) -> Session:
        """A session that loads ``session_id`` on ``await session.load()`` (used by middleware).

        An id of the wrong shape gives an empty new session without any I/O.
        """
        session = Session()
        session._store = self
        if self._keys.is_valid_id(session_id):
            session._pending_id = session_id
            session._loaded = False
        return session

    async def create(
        self, data: Mapping[str, Any] | None = None, *, user_id: str | int | None = None
    ) -> Session:
        """Create and save a session now, even an empty one, and issue its id.

        Args:
            data: initial keys and values.
            user_id: bind the session to this user (and their index) at once.

        Raises:
            SessionDataError: a key or value cannot be stored as JSON.
            SessionTooLargeError: the data exceeds ``max_bytes``.
            SessionStoreUnavailableError: the backend did not answer in time.
        """
        session = self.new(data)
        if user_id is not None:
            session.login(user_id)
        await self._create(session, session.changes(full=True)[0])  # even empty: it was asked
        return session

    async def load(self, session_id: str) -> Session | None:
        """The live session with this id, refreshing its idle deadline; ``None`` otherwise.

        An unknown, expired, malformed or foreign id gives ``None``: the store never adopts an
        id it did not issue.

        Raises:
            SessionStoreUnavailableError: the backend did not answer in time.
        """
        session = self.lazy(session_id)
        if session._pending_id is None:
            return None
        await self._fill(session)
        return None if session._id is None else session

    async def _fill(self, session: Session) -> None:
        session_id = session._pending_id
        if session._loaded or session_id is None:
            return
        key = self._keys.session_key(session_id)
        stored = await self._run("load", self.backend.load(key, self._limits()))
        session._pending_id = None
        session._loaded = True
        if stored is None:
            self._count("load", "miss")
            return
        fields = stored.fields
        try:
            if self._cipher is not None:
                fields = self._cipher.open_all(fields)
            data = {key: decode_value(text) for key, text in fields.items()}
        except ValueError as exc:
            # Never silently turn corrupt data into an empty session that later overwrites it.
            _log.error(
                "session %s… holds data that is not valid JSON or does not decrypt (%s); "
                "ignoring it",
                session_id[:4],
                exc,
            )
            self._count("load", "corrupt")
            return
        self._count("load", "hit")
        session._data = data
        session._original = dict(fields)
        session._touched = set()
        session._id = session_id
        session._key = (session_id, key)
        session._user_id = stored.user_id
        session._created = stored.created
        session._version = stored.version

    async def save(self, session: Session) -> None:
        """Write what changed: create, merge, rotate or destroy, as the session's state asks.

        Nothing is written for an unchanged session. If the session expired or was destroyed
        by another instance meanwhile, nothing is written and :attr:`Session.ended` is set.

        Raises:
            SessionDataError: a value cannot be stored as JSON.
            SessionTooLargeError: the merged data would exceed ``max_bytes`` (nothing written).
            SessionStoreUnavailableError: the backend did not answer in time, or the session
                could not be loaded in the first place.
        """
        if session._unavailable:
            raise SessionStoreUnavailableError(
                "this session could not be loaded because the store was unavailable; it "
                "cannot be saved"
            )
        if not session._loaded:
            return
        sets, deletes = session.changes()
        if session._dead_id is not None:
            await self._run(
                "destroy", self.backend.destroy(self._keys.session_key(session._dead_id))
            )
            self._count("destroy", "ok")
            session._dead_id = None
        if session._id is None:
            if sets or session._bind is not None:
                await self._create(session, sets)
            return
        if session._rotate or session._bind is not None:
            await self._rotate(session, sets, deletes)
            return
        if not sets and not deletes:
            return
        result = await self._run(
            "save",
            self.backend.merge(
                self._session_key(session), self._sealed(sets), deletes, self._limits()
            ),
        )
        self._apply(session, result, session._id, sets, deletes, "save")

    async def _create(self, session: Session, sets: dict[str, str]) -> None:
        bind = session._bind
        for _ in range(3):
            session_id = self._keys.new_id(None if bind is None else self._keys.user_tag(bind))
            limits = self._limits()
            result = await self._run(
                "create",
                self.backend.create(
                    self._keys.session_key(session_id),
                    self._sealed(sets),
                    limits,
                    user_id=bind,
                    index_key=None if bind is None else self._keys.index_key(bind),
                ),
            )
            if result.outcome is not Outcome.EXISTS:
                break
        session._ended = False
        self._apply(session, result, session_id, sets, [], "create")
        if result.outcome is Outcome.OK:
            session._created = limits.now
            session._user_id = bind
            session._bind = None
            session._rotate = False

    async def _rotate(self, session: Session, sets: dict[str, str], deletes: list[str]) -> None:
        assert session._id is not None
        bind = session._bind
        old_key = self._keys.session_key(session._id)
        tag = session._id[:4] if bind is None else self._keys.user_tag(bind)
        for _ in range(3):
            new_id = self._keys.new_id(tag)
            limits = self._limits()
            result = await self._run(
                "regenerate",
                self.backend.rotate(
                    old_key,
                    self._keys.session_key(new_id),
                    self._sealed(sets),
                    deletes,
                    limits,
                    bind=None if bind is None else (bind, self._keys.index_key(bind)),
                ),
            )
            if result.outcome is not Outcome.EXISTS:
                break
        if result.outcome is Outcome.GONE and bind is not None:
            # A login on a session that ended meanwhile (expired, or "log out everywhere" in
            # this very request): the user just authenticated, so start a fresh session.
            self._count("regenerate", "gone")
            session._id = None
            session._original = {}
            await self._create(session, session.changes(full=True)[0])
            return
        self._apply(session, result, new_id, sets, deletes, "regenerate")
        if result.outcome is Outcome.OK:
            if bind is not None:
                session._user_id = bind
                session._created = limits.now
            session._bind = None
            session._rotate = False

    def _apply(
        self,
        session: Session,
        result: WriteResult,
        session_id: str,
        sets: dict[str, str],
        deletes: list[str],
        operation: str,
    ) -> None:
        outcome = result.outcome
        self._count(operation, outcome.value)
        if outcome is Outcome.OK:
            session._id = session_id
            session._version = result.version
            original = session._original
            original.update(sets)
            for key in deletes:
                original.pop(key, None)
            session._saved()
            return
        if outcome is Outcome.TOO_LARGE:
            raise SessionTooLargeError(
                f"session data would be {result.size} bytes, over the {self.max_bytes}-byte "
                "limit; nothing was written. Keep large data elsewhere (a database, the cache) "
                "and store only its id in the session, or raise max_bytes"
            )
        if outcome is Outcome.GONE:
            session._id = None
            session._ended = True
            session._bind = None
            session._rotate = False
            return
        raise SessionError(  # EXISTS three times in a row: a broken random source
            "could not find a free session id after 3 attempts; check the system's random source"
        )

    async def regenerate(self, session: Session, *, user_id: str | int | None = None) -> None:
        """Give a session a new id now, atomically, with its pending changes; bind a user.

        Call it on login (with ``user_id``) and on any privilege change. The old id stops
        working in the same atomic step.

        Raises:
            SessionTooLargeError: the data exceeds ``max_bytes`` (nothing written).
            SessionStoreUnavailableError: the backend did not answer in time.
        """
        if user_id is None:
            session.regenerate()
        else:
            session.login(user_id)
        await self.save(session)

    async def destroy(self, session: Session | str) -> bool:
        """Destroy a session (a :class:`Session` or an id); whether it existed.

        Raises:
            SessionStoreUnavailableError: the backend did not answer in time.
        """
        if isinstance(session, Session):
            session_id = session._id or session._pending_id
            session._id = None
            session._pending_id = None
            session._loaded = True
            session._data.clear()
            session._original = {}
            session._touched.clear()
            session._user_id = None
            session._bind = None
            session._rotate = False
        else:
            session_id = session
        if session_id is None or not self._keys.is_valid_id(session_id):
            return False
        existed = await self._run(
            "destroy", self.backend.destroy(self._keys.session_key(session_id))
        )
        self._count("destroy", "ok" if existed else "miss")
        return existed

    async def destroy_all_for_user(self, user_id: str | int) -> int:
        """Destroy every session bound to ``user_id`` ("log out everywhere"); how many died.

        Raises:
            SessionStoreUnavailableError: the backend did not answer in time.
        """
        count = await self._run(
            "destroy_all", self.backend.destroy_index(self._keys.index_key(str(user_id)))
        )
        self._count("destroy_all", "ok")
        return count

    async def count_for_user(self, user_id: str | int) -> int:
        """How many live sessions are bound to ``user_id``.

        Raises:
            SessionStoreUnavailableError: the backend did not answer in time.
        """
        return await self._run(
            "count", self.backend.count_index(self._keys.index_key(str(user_id)), self._limits())
        )

    async def aclose(self) -> None:
        """Close the backend."""
        await self.backend.aclose()

    async def __aenter__(self) -> SessionStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"SessionStore({self.backend!r}, idle_timeout={self.idle_timeout}, "
            f"absolute_lifetime={self.absolute_lifetime}, max_bytes={self.max_bytes})"
        )
