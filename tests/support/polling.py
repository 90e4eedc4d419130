"""Waiting for a state without sleeping a fixed time: poll a condition under a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest


async def eventually(
    predicate: Callable[[], Awaitable[bool]], *, within: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true, failing the test after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)
