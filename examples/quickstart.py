"""scalekit quickstart: `make demo`.

Uses the real services when they answer on loopback and in-memory backends otherwise, and says
which it picked.
"""

from __future__ import annotations

import asyncio
import socket


def reachable(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


async def main() -> None:
    """Run the tour."""
    redis_up = reachable(6379)
    print(f"redis on 127.0.0.1:6379: {'yes, using it' if redis_up else 'no, using memory'}")


if __name__ == "__main__":
    asyncio.run(main())
