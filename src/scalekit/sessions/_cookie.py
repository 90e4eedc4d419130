"""What both middlewares share: cookie settings, reading the cookie, committing the session."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from scalekit.errors import ConfigurationError
from scalekit.sessions._crypto import CookieSigner
from scalekit.sessions.store import Session, SessionStore

__all__ = ["CookieAction", "CookieSettings", "SessionCookies", "parse_cookie_header"]

_MAX_COOKIE_CHARS = 256


@dataclass(frozen=True, slots=True)
class CookieSettings:
    """Attributes of the session cookie."""

    name: str
    domain: str | None
    path: str
    max_age: int | None
    secure: bool
    httponly: bool
    samesite: Literal["lax", "strict", "none"]

    def attributes(self) -> str:
        parts = [f"Path={self.path}"]
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if self.secure:
            parts.append("Secure")
        if self.httponly:
            parts.append("HttpOnly")
        parts.append(f"SameSite={self.samesite.capitalize()}")
        return "; ".join(parts)

    def set_header(self, value: str) -> str:
        age = "" if self.max_age is None else f"; Max-Age={self.max_age}"
        return f"{self.name}={value}{age}; {self.attributes()}"

    def delete_header(self) -> str:
        return (
            f"{self.name}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {self.attributes()}"
        )


@dataclass(frozen=True, slots=True)
class CookieAction:
    """A ``Set-Cookie`` header value the response must carry."""

    header: str


def parse_cookie_header(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a ``Cookie`` header, oversized values left out.

    A browser sends several cookies of one name when they differ in path or domain (and a
    sibling subdomain can plant one); the middleware uses the first that verifies.
    """
    if name not in header:
        return []
    found = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) <= _MAX_COOKIE_CHARS:
                found.append(value)
    return found


class SessionCookies:
    """Validates the middleware options; reads and writes the session cookie; commits."""

    __slots__ = ("settings", "signer", "store")

    def __init__(
        self,
        store: SessionStore,
        secret_keys: Sequence[str | bytes],
        *,
        cookie_name: str,
        domain: str | None,
        path: str,
        max_age: int | Literal["lifetime"] | None,
        secure: bool,
        httponly: bool,
        samesite: Literal["lax", "strict", "none"],
    ) -> None:
        if not isinstance(store, SessionStore):
            raise ConfigurationError(f"store must be a SessionStore, got {type(store).__name__}")
        if not cookie_name or any(c in cookie_name for c in ' =;,"\t\r\n'):
            raise ConfigurationError(f"cookie_name {cookie_name!r} is not a valid cookie name")
        if samesite not in ("lax", "strict", "none"):
            raise ConfigurationError("samesite must be 'lax', 'strict' or 'none'")
        if samesite == "none" and not secure:
            raise ConfigurationError("browsers reject SameSite=None cookies without Secure")
        if max_age == "lifetime":
            max_age = int(store.absolute_lifetime)
        self.store = store
        self.signer = CookieSigner(secret_keys)
        self.settings = CookieSettings(
            cookie_name, domain, path, max_age, secure, httponly, samesite
        )

    def open(self, values: Sequence[str]) -> tuple[Session, str | None, bool]:
        """A (lazy) session for the cookie's values: ``(session, verified_id, needs_resign)``.

        The first value with a valid signature wins. A missing, malformed, oversized or badly
        signed cookie gives a new empty session without any I/O.
        """
        for raw in values:
            verified = self.signer.unsign(raw)
            if verified is not None:
                session_id, newest = verified
                return self.store.lazy(session_id), session_id, not newest
        return self.store.new(), None, False

    async def commit(
        self, session: Session, incoming: str | None, resign: bool
    ) -> CookieAction | None:
        """Save the session if it changed; the cookie the response needs, if any.

        Raises:
            SessionTooLargeError, SessionDataError, SessionStoreUnavailableError: from the save.
        """
        if not session.available:
            return None
        if not session.loaded:  # never touched: no I/O, but move an old signature forward
            return (
                CookieAction(self.settings.set_header(self.signer.sign(incoming)))
                if (resign and incoming is not None)
                else None
            )
        await self.store.save(session)  # writes nothing when nothing changed
        current = session.id
        if current is not None:
            if current != incoming or resign:
                return CookieAction(self.settings.set_header(self.signer.sign(current)))
            return None
        if incoming is not None:
            return CookieAction(self.settings.delete_header())
        return None
