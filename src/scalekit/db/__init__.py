"""A read/write splitter over asyncpg: primary and replicas, lag-aware, read-your-writes.

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
