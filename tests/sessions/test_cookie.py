"""Reading the session cookie and the options both middlewares share."""

from __future__ import annotations

from scalekit.sessions import MemorySessionBackend, SessionStore
from scalekit.sessions._cookie import SessionCookies, parse_cookie_header
from tests.sessions.conftest import COOKIE_KEYS, SERVER_KEY


def _cookies() -> SessionCookies:
    store = SessionStore(MemorySessionBackend(), secret_key=SERVER_KEY)
    return SessionCookies(
        store,
        COOKIE_KEYS,
        cookie_name="session",
        domain=None,
        path="/",
        max_age="lifetime",
        secure=True,
        httponly=True,
        samesite="lax",
    )


def test_parse_finds_every_value_and_skips_lookalikes() -> None:
    header = "a=1; xsession=2; session=first; session = second ; sessionx=3"
    assert parse_cookie_header(header, "session") == ["first", "second"]
    assert parse_cookie_header("other=1", "session") == []
    assert parse_cookie_header("session=" + "x" * 300, "session") == []


def test_the_first_validly_signed_value_wins() -> None:
    cookies = _cookies()
    session_id = cookies.store._keys.new_id()
    good = cookies.signer.sign(session_id)
    session, verified, resign = cookies.open(["planted-garbage", good])
    assert verified == session_id
    assert not resign
    assert not session.loaded  # lazy: nothing was read yet


def test_delete_header_expires_the_cookie_with_the_same_attributes() -> None:
    header = _cookies().settings.delete_header()
    assert header.startswith("session=;")
    assert "Max-Age=0" in header
    assert "Path=/" in header
    assert "Secure" in header
