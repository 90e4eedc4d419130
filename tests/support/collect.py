"""What the no-extras run can collect: modules whose top-level imports are all installed."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path


def imports_missing_module(path: Path) -> bool:
    """Whether a module-level import of `path` names a package that is not installed."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (OSError, SyntaxError):
        return False
    for node in tree.body:  # module-level imports only; lazy imports are the point
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            if importlib.util.find_spec(name.partition(".")[0]) is None:
                return True
    return False
