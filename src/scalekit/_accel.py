"""The optional compiled accelerator (``scalekit._speedups``), or ``None``.

The extension is built at install time when a C compiler is present; every function in it has
a pure-Python twin that defines its result. Set ``SCALEKIT_NO_EXTENSIONS=1`` to run the
pure-Python paths (to compare, or to rule the extension out while debugging).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["speedups"]


def _load() -> ModuleType | None:
    if os.environ.get("SCALEKIT_NO_EXTENSIONS", "") not in ("", "0"):
        return None
    try:
        return importlib.import_module("scalekit._speedups")
    except ImportError:
        return None


#: The loaded extension module, or None (not built here, or disabled by the environment).
speedups: ModuleType | None = _load()
