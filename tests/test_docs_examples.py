"""Run every example the docs include, as the user would: ``python docs/examples/<name>.py``.

An example declares the services it needs in a header comment, e.g. ``# requires: redis, postgres``.
The runner resolves them with the suite's fixtures and passes them as the environment variables a
real deployment would use: REDIS_URL, REDIS_CLUSTER_NODES, DATABASE_URL, DATABASE_REPLICA_URL and
AMQP_URL. An example exits 0 when everything it shows worked (it asserts what it claims).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.collect import imports_missing_module

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))

_FIXTURE_ENV = {
    "redis": ("redis_url", "REDIS_URL"),
    "redis_cluster": ("redis_cluster_nodes", "REDIS_CLUSTER_NODES"),
    "postgres": ("postgres_dsn", "DATABASE_URL"),
    "postgres_replica": ("postgres_replica_dsn", "DATABASE_REPLICA_URL"),
    "rabbitmq": ("amqp_url", "AMQP_URL"),
}
_REQUIRES = re.compile(r"^#\s*requires:\s*(?P<names>.+)$", re.MULTILINE)


def _requirements(path: Path) -> list[str]:
    match = _REQUIRES.search(path.read_text())
    if not match:
        return []
    return [name.strip() for name in match["names"].split(",") if name.strip()]


def test_every_example_is_included_in_the_docs() -> None:
    pages = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    missing = [p.name for p in EXAMPLES if f"docs/examples/{p.name}" not in pages]
    assert not missing, f"examples no docs page includes: {missing}"


def _param(path: Path) -> object:
    # Examples on the shared replica run in its xdist group (see tests/conftest.py).
    marks = (
        [pytest.mark.xdist_group("replica_replay")]
        if "postgres_replica" in _requirements(path)
        else []
    )
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("example", [_param(p) for p in EXAMPLES])
def test_example_runs(example: Path, request: pytest.FixtureRequest, unique: str) -> None:
    if os.environ.get("SCALEKIT_NO_EXTRAS") == "1" and imports_missing_module(example):
        pytest.skip("the example imports a driver this no-extras run does not have")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["SCALEKIT_EXAMPLE_PREFIX"] = unique
    for name in _requirements(example):
        fixture, var = _FIXTURE_ENV[name]
        value = request.getfixturevalue(fixture)
        if isinstance(value, list):
            value = ",".join(f"{host}:{port}" for host, port in value)
        env[var] = value
    proc = subprocess.run(
        [sys.executable, str(example)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, f"{example.name} failed:\n{proc.stdout}\n{proc.stderr}"
