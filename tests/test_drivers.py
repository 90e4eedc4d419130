"""A missing driver raises an error that names the extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalekit._drivers import require
from scalekit.errors import MissingDependencyError, ScalekitError

SRC = Path(__file__).resolve().parent.parent / "src"


def test_require_returns_an_installed_module() -> None:
    assert require("json").__name__ == "json"


def test_missing_module_names_the_extra() -> None:
    with pytest.raises(MissingDependencyError) as info:
        require("scalekit_no_such_driver", extra="redis")
    assert 'pip install "scalekit[redis]"' in str(info.value)
    assert isinstance(info.value, ImportError)
    assert isinstance(info.value, ScalekitError)
    assert info.value.extra == "redis"


@pytest.mark.parametrize(
    ("module", "extra"),
    [("redis.asyncio", "redis"), ("asyncpg", "postgres"), ("aio_pika", "rabbitmq")],
)
def test_each_driver_maps_to_its_extra(module: str, extra: str) -> None:
    # Hide the driver in a fresh interpreter, as if the extra were not installed.
    top = module.partition(".")[0]
    code = (
        "import sys\n"
        f"sys.modules[{top!r}] = None\n"
        "from scalekit._drivers import require\n"
        "from scalekit.errors import MissingDependencyError\n"
        "try:\n"
        f"    require({module!r})\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc.extra)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == extra, out.stderr
