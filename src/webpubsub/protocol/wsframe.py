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
