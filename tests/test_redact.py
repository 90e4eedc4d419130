"""Connection strings never show their passwords in reprs, logs or errors."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scalekit._redact import REDACTED, redact_text, redact_url
from scalekit.logging import JsonFormatter


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:s3cret@localhost:6379/0", "redis://:***@localhost:6379/0"),
        ("rediss://user:s3cret@cache.internal:6380", "rediss://user:***@cache.internal:6380"),
        ("postgresql://app:s3cret@db:5432/app", "postgresql://app:***@db:5432/app"),
        ("amqp://guest:s3cret@127.0.0.1:5672/vh", "amqp://guest:***@127.0.0.1:5672/vh"),
        ("postgresql://app:s3cret@[::1]:5432/app", "postgresql://app:***@[::1]:5432/app"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("redis://localhost:6379", "redis://localhost:6379"),
        (
            "postgresql://db/app?user=a&password=s3cret&sslmode=require",
            "postgresql://db/app?user=a&password=***&sslmode=require",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_libpq_keyword_form() -> None:
    assert redact_url("host=db user=app password=s3cret dbname=x") == (
        "host=db user=app password=*** dbname=x"
    )
    assert "s3 cret" not in redact_url("host=db password='s3 cret' dbname=x")


def test_password_with_reserved_characters() -> None:
    out = redact_url("postgresql://app:p%40ss%3Aw0rd@db:5432/app")
    assert "p%40ss" not in out
    assert REDACTED in out


def test_free_text_with_several_urls() -> None:
    text = "failed redis://:a1@h1:1 then amqp://u:b2@h2:2/ after 3 tries"
    out = redact_text(text)
    assert "a1" not in out
    assert "b2" not in out
    assert out.count(REDACTED) == 2


@given(st.text(alphabet=st.characters(blacklist_characters="@/:?#[]%\x00 "), min_size=1))
def test_any_password_is_redacted(password: str) -> None:
    url = f"postgresql://user:{password}@db.example:5432/app"
    out = redact_url(url)
    assert f":{password}@" not in out
    assert out.startswith("postgresql://user:***@")


def test_log_lines_are_redacted_by_the_json_formatter() -> None:
    record = logging.LogRecord(
        "scalekit.db", logging.WARNING, __file__, 1, "cannot reach %s", ("redis://:pw@h:1",), None
    )
    line = JsonFormatter().format(record)
    assert ":pw@" not in line
    assert REDACTED in line


def test_no_component_shows_a_password_in_its_repr() -> None:
    pytest.importorskip("redis")
    pytest.importorskip("asyncpg")
    pytest.importorskip("aio_pika")
    from scalekit.cache import RedisBackend
    from scalekit.db import Database
    from scalekit.queue import RabbitMQBroker
    from scalekit.sessions import RedisSessionBackend

    components = [
        Database(
            "postgresql://app:hunter2@127.0.0.1:1/x", ["postgresql://app:hunter2@127.0.0.1:2/x"]
        ),
        RabbitMQBroker("amqp://u:hunter2@127.0.0.1:1/"),
        RedisBackend.from_url("redis://:hunter2@127.0.0.1:1/0"),
        RedisSessionBackend.from_url("redis://:hunter2@127.0.0.1:1/0"),
    ]
    for component in components:
        assert "hunter2" not in repr(component), type(component).__name__
    assert REDACTED in repr(components[0])
    assert REDACTED in repr(components[1])
