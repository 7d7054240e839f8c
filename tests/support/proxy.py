"""A TCP proxy for tests that need the network to fail: ``await proxy.cut()``.

It listens on 127.0.0.1, port 0, and forwards every accepted connection to the
target.  :meth:`TcpProxy.cut` aborts both sides of every current connection at
once, with a reset (``SO_LINGER`` 0), whatever is in flight: to the service and
to the client it looks like a network failure, not a close.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable
from ssl import SSLContext

_LINGER_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on with a zero timeout: closing the socket sends a reset."""

_CHUNK = 65536


class TcpProxy:
    """``ssl``: terminate TLS on the listening side, as a TLS-offloading load balancer does."""

    def __init__(
        self, target_port: int, target_host: str = "127.0.0.1", *, ssl: SSLContext | None = None
    ) -> None:
        self._target = (target_host, target_port)
        self._ssl = ssl
        self._rotation: tuple[int, ...] = ()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._accepted = 0
        self._changed = asyncio.Condition()
        self.port = 0

    @property
    def accepted(self) -> int:
        """How many client connections the proxy has accepted so far."""
        return self._accepted

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._ssl)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def retarget(self, port: int) -> None:
        """Forward new connections to ``port`` (for a target that needs the proxy's port first)."""
        self._target = (self._target[0], port)
        self._rotation = ()

    def alternate(self, *ports: int) -> None:
        """Forward each new connection to the next of ``ports`` in turn (a load balancer
        that never sends a reconnection where the connection was)."""
        self._rotation = ports

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def cut(self) -> int:
        """Reset both sides of every current connection; returns how many were cut."""
        links = list(self._links)
        for link in links:
            link.abort()
        for link in links:
            await link.done()
        return len(links)

    async def cut_and_hold(self, meanwhile: Callable[[], Awaitable[object]], then: int) -> None:
        """Cut the current connections, refuse every reconnection while ``meanwhile``
        runs (a client that is away for a while), then forward them to port ``then``."""
        self.retarget(closed_port())
        assert await self.cut() >= 1
        await meanwhile()
        self.retarget(then)

    async def wait_accepted(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` connections have been accepted (bounded)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: self._accepted >= count)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = self._target
        if self._rotation:
            target = (target[0], self._rotation[self._accepted % len(self._rotation)])
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        async with self._changed:
            self._accepted += 1
            self._changed.notify_all()
        try:
            await link.run(reader, up_reader)
        finally:
            self._links.discard(link)


class _Link:
    """One proxied connection: two pumps, client→target and target→client."""

    def __init__(self, client: asyncio.StreamWriter, target: asyncio.StreamWriter) -> None:
        self._writers = (client, target)
        self._pumps: list[asyncio.Task[None]] = []
        self._finished = asyncio.Event()

    async def run(self, client: asyncio.StreamReader, target: asyncio.StreamReader) -> None:
        client_writer, target_writer = self._writers
        self._pumps = [
            asyncio.create_task(_pump(client, target_writer)),
            asyncio.create_task(_pump(target, client_writer)),
        ]
        try:
            # Either side closing ends the link: a proxy has no half-open state.
            await asyncio.wait(self._pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in self._pumps:
                pump.cancel()
            await asyncio.gather(*self._pumps, return_exceptions=True)
            for writer in self._writers:
                writer.close()
            self._finished.set()

    def abort(self) -> None:
        for writer in self._writers:
            _reset(writer)

    async def done(self) -> None:
        await self._finished.wait()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
