"""Importing scalekit costs nothing the user did not ask for."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import scalekit

SRC = Path(__file__).resolve().parent.parent / "src"
PRIMITIVES = ["resilience", "cache", "sessions", "sharding", "db", "balance", "queue", "health"]
DRIVERS = ["redis", "asyncpg", "aio_pika", "aiormq", "msgpack", "grpc", "grpc_health"]


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(
    "module",
    ["scalekit", "scalekit.errors", "scalekit.testing", "scalekit.logging"]
    + [f"scalekit.{p}" for p in PRIMITIVES],
)
def test_import_pulls_in_no_driver(module: str) -> None:
    loaded = _modules_after(f"import {module}")
    pulled = sorted(m for m in loaded if m.partition(".")[0] in DRIVERS)
    assert not pulled, f"`import {module}` imported drivers: {pulled}"


def test_importing_every_primitive_together_pulls_in_no_driver() -> None:
    loaded = _modules_after("\n".join(f"import scalekit.{p}" for p in PRIMITIVES))
    assert not [m for m in loaded if m.partition(".")[0] in DRIVERS]


def test_opentelemetry_sdk_is_never_imported() -> None:
    loaded = _modules_after("\n".join(f"import scalekit.{p}" for p in PRIMITIVES))
    assert "opentelemetry.sdk" not in loaded


def test_public_api_of_the_top_level_package() -> None:
    assert {"ScalekitError", "CircuitOpenError", "__version__"} <= set(scalekit.__all__)
    for name in scalekit.__all__:
        assert getattr(scalekit, name) is not None


def test_version_is_single_sourced() -> None:
    from scalekit._version import __version__

    assert scalekit.__version__ == __version__
    pyproject = (SRC.parent / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "scalekit._version.__version__" }' in pyproject
    # the installed distribution's metadata took its version from the same place
    assert importlib.metadata.version("scalekit") == __version__


def test_package_is_typed() -> None:
    assert (SRC / "scalekit" / "py.typed").exists()
