"""FaultProxy against a real Redis: forward, cut, blackhole, refuse, restore."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from scalekit.testing import FaultProxy

pytestmark = pytest.mark.redis


async def _ping(port: int, timeout: float = 1.0) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    try:
        writer.write(b"PING\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()


@pytest.fixture
def redis_addr(redis_url: str) -> tuple[str, int]:
    parts = urlsplit(redis_url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


async def test_forwards_traffic(redis_addr: tuple[str, int]) -> None:
    async with FaultProxy(*redis_addr) as proxy:
        assert await _ping(proxy.port) == b"+PONG\r\n"
        assert proxy.accepted == 1


async def test_cut_resets_open_connections(redis_addr: tuple[str, int]) -> None:
    async with FaultProxy(*redis_addr) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"PING\r\n")
        assert await reader.readline() == b"+PONG\r\n"
        await proxy.cut()
        assert proxy.connections == 0
        data = await asyncio.wait_for(reader.read(), 2)
        assert data == b""
        writer.close()


async def test_blackhole_hangs_then_restore(redis_addr: tuple[str, int]) -> None:
    async with FaultProxy(*redis_addr) as proxy:
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            await _ping(proxy.port, timeout=0.2)
        await proxy.restore()
        assert await _ping(proxy.port) == b"+PONG\r\n"


async def test_refuse_then_restore_on_the_same_port(redis_addr: tuple[str, int]) -> None:
    async with FaultProxy(*redis_addr) as proxy:
        port = proxy.port
        await proxy.refuse()
        with pytest.raises(OSError):
            await _ping(port)
        await proxy.restore()
        assert proxy.port == port
        assert await _ping(port) == b"+PONG\r\n"


async def test_unreachable_target_closes_the_client() -> None:
    async with FaultProxy("127.0.0.1", 1) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader.read(), 2) == b""
        writer.close()


async def test_refuse_returns_at_once_and_leaves_open_connections_working(
    redis_addr: tuple[str, int],
) -> None:
    # Python 3.12's Server.wait_closed() waits for every accepted connection: refuse() must
    # not, or it hangs for as long as a client keeps its connection (forever, in a pool).
    async with FaultProxy(*redis_addr) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        async with asyncio.timeout(2):
            await proxy.refuse()
        with pytest.raises(OSError):
            await _ping(proxy.port)
        writer.write(b"PING\r\n")  # the open connection still forwards
        assert await asyncio.wait_for(reader.readline(), 2) == b"+PONG\r\n"
        writer.close()
