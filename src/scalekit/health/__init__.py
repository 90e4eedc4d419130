"""Liveness, readiness and startup probes as a pure ASGI app, with built-in dependency checks.

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
