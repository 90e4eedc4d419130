"""`make demo` works with the real services and, without them, with in-memory backends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "quickstart.py"


def _run(**env: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(DEMO)],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_demo_with_in_memory_backends() -> None:
    out = _run(SCALEKIT_DEMO_MEMORY="1")
    assert "Redis on 127.0.0.1:6379: no, using memory" in out
    assert "RabbitMQ on 127.0.0.1:5672: no, using memory" in out
    assert "1 database read" in out
    assert "/readyz -> 503 (drain)" in out


@pytest.mark.usefixtures("redis_url", "amqp_url")
def test_demo_with_real_services() -> None:
    out = _run()
    assert "Redis on 127.0.0.1:6379: yes, using it" in out
    assert "RabbitMQ on 127.0.0.1:5672: yes, using it" in out
    assert "1 database read" in out
