"""Shard routing (jump hash, rendezvous, ring, range, directory, region), resharding plans and sharded pools.

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
