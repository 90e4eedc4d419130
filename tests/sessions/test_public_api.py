"""The public surface of scalekit.sessions, and what importing it costs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import scalekit.sessions
import scalekit.sessions.aiohttp
import scalekit.sessions.backend


def test_public_names_are_pinned() -> None:
    assert sorted(scalekit.sessions.__all__) == [
        "MemorySessionBackend",
        "RedisSessionBackend",
        "Session",
        "SessionBackend",
        "SessionMiddleware",
        "SessionStore",
        "load_session",
    ]
    assert sorted(scalekit.sessions.aiohttp.__all__) == ["get_session", "session_middleware"]
    assert sorted(scalekit.sessions.backend.__all__) == [
        "Limits",
        "Outcome",
        "SessionBackend",
        "StoredSession",
        "WriteResult",
    ]


def test_import_loads_no_driver_or_framework() -> None:
    code = (
        "import sys, scalekit.sessions, scalekit.sessions.aiohttp\n"
        "bad = [m for m in ('redis', 'aiohttp', 'starlette') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2] / "src"
    )
