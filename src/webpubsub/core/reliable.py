"""The reliable subprotocol's per-connection state (Azure docs: reliable JSON subprotocol).

Every data message sent to a reliable connection gets the next ``sequenceId``
and stays in the unacknowledged buffer until a cumulative ``sequenceAck``
releases it; on recovery the buffer is replayed with the original ids, a chunk
at a time (:meth:`ReliableBuffer.frames_after`).  The buffer is bounded (1,000
messages or 16 MiB by default): overflowing it ends the logical connection, as
the protocol prescribes.  The byte bound is the connection's whole budget: what
its transport still holds of the frames counts against it too (``held``).
"""

from __future__ import annotations

from collections import deque
from itertools import islice

from webpubsub.protocol import json_protocol
from webpubsub.protocol.frames import Codec
from webpubsub.protocol.wsframe import encode_frame

DEFAULT_MAX_MESSAGES = 1000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


class BufferOverflow(Exception):
    """More unacknowledged data than the buffer may hold."""


class ReliableBuffer:
    def __init__(
        self,
        *,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        codec: Codec = json_protocol,
    ) -> None:
        self._codec = codec
        """Splices each message's ``sequenceId`` into its encoded body."""
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._next = 1
        self._frames: deque[tuple[int, bytes]] = deque()
        self._bytes = 0

    @property
    def last_sequence_id(self) -> int:
        return self._next - 1

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def stamp(self, body: bytes, *, held: int = 0) -> bytes:
        """The frame for the next data message, kept until acknowledged.

        ``held`` is what the connection's transport holds besides (copies of frames
        written but not yet sent): it shares the byte bound.  Raises
        :class:`BufferOverflow` when the buffer would exceed its bounds.
        """
        sequence_id = self._next
        codec = self._codec
        frame = encode_frame(codec.OPCODE, codec.with_sequence_id(body, sequence_id))
        if (
            len(self._frames) + 1 > self._max_messages
            or self._bytes + held + len(frame) > self._max_bytes
        ):
            waiting = f", {held} more waiting to be sent" if held else ""
            raise BufferOverflow(
                f"{len(self._frames)} messages ({self._bytes} bytes{waiting}) are not "
                f"acknowledged; a connection may hold {self._max_messages} messages or "
                f"{self._max_bytes} bytes"
            )
        self._next += 1
        self._frames.append((sequence_id, frame))
        self._bytes += len(frame)
        return frame

    def ack(self, sequence_id: int) -> None:
        """Release every message up to ``sequence_id`` (cumulative).

        Acks for older ids are no-ops; so are acks for ids never sent, which would
        otherwise release messages the client cannot have received.
        """
        if sequence_id > self.last_sequence_id:
            return
        frames = self._frames
        while frames and frames[0][0] <= sequence_id:
            self._bytes -= len(frames.popleft()[1])

    def frames_after(self, sequence_id: int, max_bytes: int) -> list[tuple[int, bytes]]:
        """The next frames to replay after ``sequence_id``, in order: at least one (if
        any is left), and no more once they reach ``max_bytes`` together."""
        frames = self._frames
        start = sequence_id + 1 - frames[0][0] if frames else 0
        chunk: list[tuple[int, bytes]] = []
        size = 0
        for item in islice(frames, max(start, 0), None):
            if chunk and size >= max_bytes:
                break
            chunk.append(item)
            size += len(item[1])
        return chunk

    def clear(self) -> None:
        """Drop every frame (the connection has ended: free its memory at once)."""
        self._frames.clear()
        self._bytes = 0

    def snapshot(self) -> tuple[int, list[tuple[int, bytes]]]:
        """(next sequence id, the unacknowledged (sequence id, frame) pairs): what another
        node needs to continue this buffer (:meth:`restore`)."""
        return self._next, list(self._frames)

    @classmethod
    def restore(
        cls,
        next_sequence_id: int,
        frames: list[tuple[int, bytes]],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        codec: Codec = json_protocol,
    ) -> ReliableBuffer:
        buffer = cls(max_bytes=max_bytes, codec=codec)
        buffer._next = next_sequence_id
        buffer._frames = deque(frames)
        buffer._bytes = sum(len(frame) for _, frame in frames)
        return buffer
