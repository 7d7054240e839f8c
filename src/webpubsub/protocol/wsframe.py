"""Server-to-client WebSocket frames (RFC 6455 §5.2), built once and written raw.

The fan-out path builds a frame's bytes once per message and writes the same
bytes to every recipient's transport; these functions are the only place that
knows the frame layout.  Server frames are never masked (RFC 6455 §5.1).
"""

from __future__ import annotations

import enum
import struct


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


_LEN16 = struct.Struct("!BBH")
_LEN64 = struct.Struct("!BBQ")


def frame_header(opcode: Opcode, length: int) -> bytes:
    """The header of one final, unmasked, uncompressed frame of ``length`` bytes."""
    first = 0x80 | int(opcode)
    if length < 126:
        return bytes((first, length))
    if length < 1 << 16:
        return _LEN16.pack(first, 126, length)
    return _LEN64.pack(first, 127, length)


def encode_frame(opcode: Opcode, payload: bytes) -> bytes:
    """A complete server frame: header followed by the payload."""
    return frame_header(opcode, len(payload)) + payload


class CloseCode(enum.IntEnum):
    """The close codes the service uses (Azure docs: client protocols)."""

    NORMAL = 1000
    """REST close or normal end; the reason is the REST ``reason``."""
    GOING_AWAY = 1001
    """The service is shutting down."""
    PROTOCOL_ERROR = 1002
    """The client broke RFC 6455 (an unmasked or malformed frame)."""
    INVALID_DATA = 1007
    """A text message that is not UTF-8."""
    POLICY_VIOLATION = 1008
    """Unrecoverable: protocol violation, failed recovery, slow client."""
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    """The event handler failed for a simple client's message."""


class MaskCheck:
    """Follows the frame boundaries of a client's byte stream to see each frame's MASK bit.

    RFC 6455 §5.1: a client masks every frame, and a server closes the connection
    when it gets an unmasked one.  :meth:`feed` takes the stream in chunks of any size
    and returns False from the first unmasked frame on; payloads are skipped, not read.
    """

    __slots__ = ("_head", "_refused", "_skip")

    def __init__(self) -> None:
        self._head = b""
        """The start of a frame header cut by the end of the last chunk."""
        self._skip = 0
        """Payload bytes of the current frame still to come."""
        self._refused = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> bool:
        if self._refused:
            return False
        data = self._head + bytes(chunk) if self._head else chunk
        self._head = b""
        pos, end = 0, len(data)
        while True:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
            if pos >= end:
                return True
            if end - pos < 2:
                self._head = bytes(data[pos:])
                return True
            second = data[pos + 1]
            if not second & 0x80:
                self._refused = True
                return False
            length = second & 0x7F
            extended = 2 if length == 126 else 8 if length == 127 else 0
            size = 2 + extended + 4
            if end - pos < size:
                self._head = bytes(data[pos:])
                return True
            if extended:
                length = int.from_bytes(data[pos + 2 : pos + 2 + extended], "big")
            pos += size
            self._skip = length
