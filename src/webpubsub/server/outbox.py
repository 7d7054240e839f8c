"""The coalescing outbox: one transport write per connection per event-loop turn.

The fan-out offers pre-encoded frames; the outbox queues them and flushes all
frames queued during one loop turn with a single ``transport.write``.  One
:class:`Flusher` per service schedules those flushes: one loop callback per turn
for all the outboxes that have something queued.  Writing
raw frames to the transport relies on aiohttp writing its own frames (pings,
pongs, close) whole and synchronously on the loop thread; ``tests/server``
pins that behaviour.

The outbox is bounded: when a frame would take the backlog (queued bytes plus
the transport's own buffer) past ``limit``, the client is too slow and is
closed.  A frame offered to a connection with no backlog is always accepted,
so one message larger than ``limit`` does not close a client that keeps up.

A replay (a recovered reliable connection's buffer, possibly larger than
``limit``) is paced with :meth:`Outbox.drained`: write a chunk, wait for the
transport to drain, continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from webpubsub.core.connection import Sink

log = logging.getLogger("webpubsub.outbox")

#: How long a slow client gets to take its close frame before the socket is cut.
SLOW_CLIENT_GRACE_SECONDS = 5.0

_LINGER_RESET = struct.pack("ii", 1, 0)
"""``SO_LINGER`` on with a zero timeout: closing the socket sends a reset."""


class WriteTarget(Protocol):
    """The transport methods the outbox uses (asyncio's and uvloop's transports).

    uvloop's transports do not derive from ``asyncio.WriteTransport``: type the
    outbox by what it calls, not by class.
    """

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def abort(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


class Flusher:
    """Flushes, in one loop callback per turn, every outbox that queued frames in it.

    A broadcast to N connections then costs one scheduled callback instead of N; the
    outboxes are flushed in the order they first queued something in the turn.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._due: list[Outbox] = []

    def schedule(self, outbox: Outbox) -> None:
        if not self._due:
            self._loop.call_soon(self._run)
        self._due.append(outbox)

    def _run(self) -> None:
        due, self._due = self._due, []
        for outbox in due:
            try:
                outbox._flush()
            except Exception:  # one broken transport must not starve the others
                log.exception("flushing an outbox failed")


class Outbox:
    def __init__(
        self,
        transport: WriteTarget,
        *,
        limit: int,
        closer: Callable[[int, str], None],
        flusher: Flusher | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        drain: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``drain`` waits while the transport's buffer is over its high-water mark
        (aiohttp's ``request.writer.drain``); without it :meth:`drained` only flushes."""
        self._transport = transport
        self._drain = drain
        self._limit = limit
        self._closer = closer
        self._loop = loop or asyncio.get_running_loop()
        self._flusher = flusher or Flusher(self._loop)
        self._pending: list[bytes] = []
        self._size = 0
        self._held = 0
        """The transport's buffer when the turn's first frame was queued."""
        self._scheduled = False
        self._closed = False
        self.on_overflow: Callable[[], None] | None = None
        """Called once when the bound is exceeded (the owner closes the connection)."""
        self.frames_written = 0
        self.writes = 0

    @property
    def pending_bytes(self) -> int:
        return self._size

    @property
    def buffered_bytes(self) -> int:
        """Offered bytes not sent yet: queued (each flush copies them into one write)
        and in the transport's buffer (that copy, until the kernel takes it)."""
        return self._size + self._transport.get_write_buffer_size()

    async def drained(self) -> None:
        """Write what is queued now, then return once the transport's buffer is below
        its low-water mark (at once if it is not over its high-water mark, or closed)."""
        self._flush()
        if self._drain is None or self._closed or self._transport.is_closing():
            return
        with contextlib.suppress(ConnectionError):  # gone: nothing more to wait for
            await self._drain()

    def offer(self, frame: bytes) -> None:
        self.offer_each(frame, (self,))

    @staticmethod
    def offer_each(frame: bytes, sinks: Sequence[Sink]) -> None:
        """Offer ``frame`` to each of ``sinks`` (a broadcast's plain recipients): the
        per-recipient step of a fan-out, an append and a flag for an outbox.  A sink
        that is not an outbox (a new connection's held sink) gets its own ``offer``."""
        size = len(frame)
        for sink in sinks:
            if sink.__class__ is not Outbox and not isinstance(sink, Outbox):
                sink.offer(frame)
                continue
            outbox: Outbox = sink
            if outbox._closed:
                continue
            # The bound applies to the backlog a frame joins, so that a single frame
            # larger than the bound still reaches a client that has nothing outstanding.
            # The transport's buffer is read at the turn's first frame: until the flush
            # only aiohttp's own control frames (a ping, a close: a few bytes) can add
            # to it, though it may shrink.
            if not outbox._scheduled:
                outbox._held = outbox._transport.get_write_buffer_size()
            backlog = outbox._size + outbox._held
            if backlog and backlog + size > outbox._limit:
                # The view taken at the turn's first frame can only be too high (uvloop
                # may have moved the buffer into the kernel since): look again first.
                outbox._held = outbox._transport.get_write_buffer_size()
                backlog = outbox._size + outbox._held
                if backlog and backlog + size > outbox._limit:
                    outbox._overflow(backlog + size)
                    continue
            outbox._pending.append(frame)
            outbox._size += size
            if not outbox._scheduled:
                outbox._scheduled = True
                outbox._flusher.schedule(outbox)

    def close(self, code: int, reason: str) -> None:
        """Flush what is queued, then close the WebSocket with ``code``."""
        if self._closed:
            return
        self._flush()
        self._closed = True
        self._closer(code, reason)

    def _flush(self) -> None:
        self._scheduled = False
        pending = self._pending
        if not pending:
            return
        # One write of the turn's frames; the list is kept (cleared, not replaced): no
        # allocation per connection per turn.
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        count = len(pending)
        pending.clear()
        self._size = 0
        if self._closed or self._transport.is_closing():
            return
        self._transport.write(data)
        self.frames_written += count
        self.writes += 1

    def _overflow(self, backlog: int) -> None:
        self._pending.clear()
        self._size = 0
        log.warning(
            "closing a slow client: %d bytes outstanding exceed the bound of %d",
            backlog,
            self._limit,
        )
        callback, self.on_overflow = self.on_overflow, None
        if callback is not None:
            callback()
        if not self._closed:
            self.close(1008, "SlowClient: the client did not read its messages fast enough.")
        # The close frame waits behind a full buffer: cut the socket if it never drains.
        self._loop.call_later(SLOW_CLIENT_GRACE_SECONDS, self._cut)

    def _cut(self) -> None:
        """Reset the connection, dropping what the kernel still holds for the client.

        A plain ``abort()`` frees our buffer but leaves the kernel's send buffer (megabytes
        on loopback) to an orphaned socket that keeps probing a client that never reads;
        with ``SO_LINGER`` zero the close is a reset and that memory is freed at once.
        A no-op once the connection is gone.
        """
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # already closed
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        self._transport.abort()
