"""Server-side sessions in Redis with ASGI and aiohttp middleware, so app instances stay stateless.

Coming: this primitive is being built.
"""

from __future__ import annotations

__all__: list[str] = []
