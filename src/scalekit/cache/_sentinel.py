"""The "nothing here" marker shared by the cache modules (``None`` is a legitimate value)."""

from __future__ import annotations

from typing import Any

__all__ = ["MISSING"]

MISSING: Any = object()
