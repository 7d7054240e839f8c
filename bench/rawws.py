"""A minimal WebSocket client for the load generator: as little work per received frame
as a Python client can do, so that the generator is not what saturates first.

Frames are parsed in place in ``data_received`` (no queue, no future, no task per
message); a data frame's stamp is read from the buffer without copying or decoding the
payload, and handed to ``on_stamp``. Outgoing frames are masked with the all-zero key (a
key is required, its value is not checked by servers, and zero makes masking a copy).
Pings are answered, a close frame is answered and ends the connection. Frames before
:meth:`RawWebSocket.ready` (a JSON client's ``connected``, socket.io's handshake) are kept
(bounded) for :meth:`RawWebSocket.next_message`. Only for our own servers on loopback:
``Sec-WebSocket-Accept`` is not checked, fragmented messages are read fragment by fragment.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from harness import STAMP_MARK, STAMP_SIZE

OnStamp = Callable[[int, int], None]
"""``on_stamp(sent_ns, received_ns)``."""
_MARK = STAMP_MARK.encode()
_EARLY_FRAMES = 8
"""Frames kept for :meth:`RawWebSocket.next_message` before :meth:`RawWebSocket.ready`."""


def frame(opcode: int, data: bytes) -> bytes:
    """A client frame (FIN set), masked with the zero key."""
    n = len(data)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + data


class RawWebSocket(asyncio.Protocol):
    def __init__(self, on_stamp: OnStamp, on_close: Callable[[], None], sio: bool) -> None:
        self.on_stamp = on_stamp
        self.on_close = on_close
        self.sio = sio
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.early: deque[bytes] = deque(maxlen=_EARLY_FRAMES)
        self.waiter: asyncio.Future[bytes] | None = None
        self.is_ready = False

    @classmethod
    async def connect(
        cls,
        url: str,
        subprotocol: str | None,
        on_stamp: OnStamp,
        on_close: Callable[[], None],
        sio: bool = False,
        within: float = 30.0,
    ) -> RawWebSocket:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            + (f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else "")
            + "\r\n"
        )
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within):
            _, ws = await loop.create_connection(
                lambda: cls(on_stamp, on_close, sio), parts.hostname, parts.port
            )
            assert ws.transport is not None
            ws.transport.write(request.encode())
            await ws.upgraded
        return ws

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for future in (self.upgraded, self.waiter):
            if future is not None and not future.done():
                future.set_exception(ConnectionError("the server closed the connection"))
        self.on_close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(f"not upgraded: {head[:200]!r}"))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        n = len(buf)
        pos = 0
        now = time.monotonic_ns()
        while n - pos >= 2:  # bounded: the buffer
            length = buf[pos + 1] & 0x7F
            at = pos + 2
            if length == 126:
                if n - at < 2:
                    break
                length = int.from_bytes(buf[at : at + 2], "big")
                at += 2
            elif length == 127:
                if n - at < 8:
                    break
                length = int.from_bytes(buf[at : at + 8], "big")
                at += 8
            end = at + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            pos = end
            if opcode <= 2:  # continuation, text, binary
                if self.is_ready:
                    i = buf.find(_MARK, at, end)
                    if 0 <= i <= end - STAMP_SIZE:
                        try:
                            sent = int(buf[i + 10 : i + STAMP_SIZE], 16)
                        except ValueError:
                            continue
                        self.on_stamp(sent, now)
                    elif self.sio and length == 1 and buf[at] == 0x32:  # Engine.IO ping
                        self.send(b"3")
                else:
                    self._early(bytes(buf[at:end]))
            elif opcode == 9:
                self._write(frame(0xA, bytes(buf[at:end])))
            elif opcode == 8:
                self._write(frame(0x8, bytes(buf[at : min(end, at + 2)])))
                if self.transport is not None:
                    self.transport.close()
                break
        del buf[:pos]

    def _early(self, payload: bytes) -> None:
        if self.sio and payload == b"2":
            self.send(b"3")
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(payload)
        else:
            self.early.append(payload)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- for the generator -----------------------------------------------------------

    async def next_message(self, within: float = 30.0) -> bytes:
        """The next data frame before :meth:`ready` (bounded)."""
        if self.early:
            return self.early.popleft()
        self.waiter = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self.waiter, within)

    def ready(self) -> None:
        """From now on data frames are read for their stamps only."""
        self.is_ready = True

    def send(self, data: bytes) -> None:
        """A text frame; raises :class:`ConnectionError` once the connection is gone."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionError("the connection is closed")
        self.transport.write(frame(0x1, data))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(0x8, (1000).to_bytes(2, "big")))
            self.transport.close()
