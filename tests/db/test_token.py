"""Consistency tokens and scopes, without a server."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit.db import Database
from scalekit.db._consistency import TokenCodec
from scalekit.errors import ConfigurationError, InvalidConsistencyTokenError

SECRET = "0123456789abcdef-secret"


@given(lsn=st.integers(min_value=0, max_value=2**64 - 1))
def test_token_round_trips_any_lsn(lsn: int) -> None:
    codec = TokenCodec(SECRET)
    token = codec.encode(lsn)
    assert len(token) == 34
    assert token.isascii()
    assert codec.decode(token) == lsn


@given(lsn=st.integers(min_value=0, max_value=2**64 - 1), position=st.integers(0, 33))
def test_any_altered_character_is_rejected(lsn: int, position: int) -> None:
    codec = TokenCodec(SECRET)
    token = codec.encode(lsn)
    replacement = "A" if token[position] != "A" else "B"
    tampered = token[:position] + replacement + token[position + 1 :]
    with pytest.raises(InvalidConsistencyTokenError):
        codec.decode(tampered)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "x" * 34,
        "x" * 10_000,
        "!" * 34,
        "AQAAAAAEAWaoQTrdkpI6VmGFsI_PeYD2H\u00e9",
        None,
        42,
        b"x",
    ],
)
def test_hostile_tokens_raise_a_clear_error(token: object) -> None:
    with pytest.raises(InvalidConsistencyTokenError) as info:
        TokenCodec(SECRET).decode(token)
    assert isinstance(info.value, ValueError)


def test_a_token_from_another_secret_is_rejected_but_rotation_works() -> None:
    old, new = "old-secret-0123456789", "new-secret-0123456789"
    token = TokenCodec(old).encode(123)
    with pytest.raises(InvalidConsistencyTokenError, match="token_secret"):
        TokenCodec(new).decode(token)
    assert TokenCodec([new, old]).decode(token) == 123
    with pytest.raises(ConfigurationError):
        TokenCodec([])
    with pytest.raises(ConfigurationError):
        TokenCodec("short")


async def test_scopes_nest_and_restore() -> None:
    db = Database("postgresql://127.0.0.1:1/x", token_secret=SECRET)  # never opened
    token = TokenCodec(SECRET).encode(500)
    assert db.required_lsn == 0
    db._note_write(100)
    assert db.required_lsn == 100
    async with db.consistent_with(token):
        assert db.required_lsn == 500  # the larger of the token and the enclosing scope
        async with db.consistency_scope():
            assert db.required_lsn == 0  # a fresh scope, as per request
            db._note_write(50)
            assert db.required_lsn == 50
        assert db.required_lsn == 500
        db._note_write(700)
        assert TokenCodec(SECRET).decode(db.consistency_token()) == 700
    assert db.required_lsn == 100
    async with db.consistent_with(None), db.consistent_with(""):
        assert db.required_lsn == 100


async def test_tasks_started_in_a_scope_share_its_writes() -> None:
    db = Database("postgresql://127.0.0.1:1/x")
    async with db.consistency_scope():

        async def child() -> None:
            db._note_write(42)

        await asyncio.create_task(child())
        assert db.required_lsn == 42  # one request = one scope, across its tasks
