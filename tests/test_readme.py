"""The README's example runs as written, and its commands exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_starts_with_the_two_commands() -> None:
    head = README[: README.index("## Install")]
    assert "make demo" in head
    assert "make test" in head
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)


def test_ci_runs_the_readme_test_command() -> None:
    assert "make --no-print-directory test" in (ROOT / ".ci" / "run").read_text()


def test_readme_example_runs(redis_url: str) -> None:
    section = README[README.index("## Example") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", code.group(1)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "'price': 42" in proc.stdout
