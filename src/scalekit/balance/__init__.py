"""Client-side load balancing over any set of endpoints (replicas, HTTP upstreams).

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
