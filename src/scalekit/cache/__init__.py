"""Read-through and write-through caching over Redis and in memory, stampede-proof and fail-open.

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
