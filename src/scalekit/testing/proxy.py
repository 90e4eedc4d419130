"""A loopback TCP proxy that injects network faults between a client and a real server."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

__all__ = ["FaultProxy"]

_CHUNK = 65536


class FaultProxy:
    """Forward TCP connections from a loopback port to a target, with faults on demand.

    Point the client under test at ``proxy.port`` instead of the server's own port, then cut,
    stall or refuse its connections at exact moments of the test::

        async with FaultProxy("127.0.0.1", 6379) as proxy:
            client = redis.asyncio.Redis(port=proxy.port)
            await proxy.cut()        # every open connection is reset mid-stream
            proxy.blackhole()        # connections stay open but nothing is forwarded: a hung server
            await proxy.refuse()     # new connections are refused, as if the server were down
            await proxy.restore()    # back to normal forwarding

    The proxy listens on 127.0.0.1 only and connects only to the target given.

    Args:
        target_host: the real server's host (a loopback address).
        target_port: the real server's port.
        listen_port: the port to listen on; 0 picks a free one.
        latency: seconds added before each forwarded chunk, in both directions.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_port: int = 0,
        latency: float = 0.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.latency = latency
        self._port = listen_port
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self.accepted = 0

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return "127.0.0.1"

    @property
    def port(self) -> int:
        """The port clients connect to (fixed once started, kept across refuse/restore)."""
        return self._port

    @property
    def connections(self) -> int:
        """How many client connections are open through the proxy now."""
        return len(self._pairs)

    async def start(self) -> FaultProxy:
        """Start listening (idempotent)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, self.host, self._port, reuse_address=True
            )
            self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        await self.refuse()
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cut(self) -> None:
        """Reset every open connection, in both directions, at once."""
        pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            for writer in (client, upstream):
                transport = writer.transport
                with contextlib.suppress(Exception):
                    transport.abort()
        await asyncio.sleep(0)

    def blackhole(self) -> None:
        """Keep connections open (and accept new ones) but forward nothing: a hung peer."""
        self._forwarding.clear()

    async def refuse(self) -> None:
        """Stop accepting: new connections are refused. Open ones are left as they are."""
        if self._server is not None:
            # close() shuts the listening socket at once. Not wait_closed(): since Python 3.12
            # it also waits for every accepted connection to end, which would hang right here.
            self._server.close()
            self._server = None
        await asyncio.sleep(0)

    async def restore(self) -> None:
        """Accept and forward normally again, on the same port."""
        self._forwarding.set()
        await self.start()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pump(src, dst, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await src.read(_CHUNK)
                if not data:
                    break
                if self.latency > 0:
                    await asyncio.sleep(self.latency)
                await self._forwarding.wait()
                if pair not in self._pairs:
                    break
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if pair in self._pairs:
                self._pairs.discard(pair)
                for w in pair:
                    with contextlib.suppress(Exception):
                        w.close()

    def __repr__(self) -> str:
        return (
            f"FaultProxy({self.host}:{self.port} -> {self.target_host}:{self.target_port}, "
            f"connections={self.connections})"
        )
