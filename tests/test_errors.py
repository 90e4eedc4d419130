"""The error tree: one root, stdlib types where they fit, messages that say what to do."""

from __future__ import annotations

import inspect

import pytest

from scalekit import errors
from scalekit.errors import (
    CircuitOpenError,
    DeadlineExceededError,
    InvalidShardKeyError,
    PublishTimeoutError,
    ScalekitError,
    ShardMovedError,
    UnknownShardError,
)

ALL_ERRORS = [
    obj
    for _, obj in inspect.getmembers(errors, inspect.isclass)
    if issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]


def test_every_error_derives_from_the_root() -> None:
    assert ALL_ERRORS
    for cls in ALL_ERRORS:
        assert issubclass(cls, ScalekitError), cls


def test_all_lists_every_error() -> None:
    assert sorted(errors.__all__) == sorted(cls.__name__ for cls in ALL_ERRORS)


def test_every_error_is_drawn_in_the_tree() -> None:
    doc = errors.__doc__ or ""
    for cls in ALL_ERRORS:
        assert cls.__name__ in doc, f"{cls.__name__} is missing from the tree in errors.py"


def test_every_error_has_a_docstring() -> None:
    for cls in ALL_ERRORS:
        assert cls.__doc__, cls


def test_timeouts_are_also_timeout_errors() -> None:
    assert issubclass(DeadlineExceededError, TimeoutError)
    assert issubclass(PublishTimeoutError, TimeoutError)


def test_bad_keys_are_also_type_errors() -> None:
    assert issubclass(InvalidShardKeyError, TypeError)


def test_circuit_open_says_when_to_retry() -> None:
    exc = CircuitOpenError("payments", 12.5)
    assert exc.name == "payments"
    assert exc.retry_after == 12.5
    assert "payments" in str(exc)
    assert "Retry after 12.500s" in str(exc)


def test_circuit_open_never_reports_negative_wait() -> None:
    assert CircuitOpenError("x", -3.0).retry_after == 0.0


def test_shard_moved_carries_epochs() -> None:
    exc = ShardMovedError("refresh the router", epoch=3, current_epoch=4, shard="s2")
    assert (exc.epoch, exc.current_epoch, exc.shard) == (3, 4, "s2")


def test_unknown_shard_message_is_not_quoted_like_a_key_error() -> None:
    assert str(UnknownShardError("no shard named 'x'")) == "no shard named 'x'"


@pytest.mark.parametrize("cls", ALL_ERRORS)
def test_errors_are_picklable_free_plain_exceptions(cls: type[BaseException]) -> None:
    # Errors must be raisable and catchable by their root without special construction.
    assert issubclass(cls, Exception)
