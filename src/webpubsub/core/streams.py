"""The group streams one connection publishes (Azure docs: client protocols, streaming).

A stream is opened by a ``sendToGroup`` carrying ``stream`` metadata, fed with
``streamData`` fragments numbered from 1, and ended by ``streamEnd`` (or by the
service: idle, forbidden, a bad message, the publisher gone). The service holds no
fragment: the one it expects next is published at once, an older one is a duplicate
(dropped), a later one is refused with a nack naming the one expected, so a stream
is a small fixed record whatever it carries. What one connection may hold is
bounded: :data:`DEFAULT_MAX_STREAMS` open at a time, :data:`DEFAULT_MAX_STREAM_BYTES`
of data per stream over its life. No I/O and no clock of its own: times are given.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from webpubsub.protocol.messages import StreamError

DEFAULT_MAX_STREAMS = 16
"""Streams one connection may have open at a time (the next start is refused)."""
DEFAULT_MAX_STREAM_BYTES = 64 * 1024 * 1024
"""Data one stream may carry over its life (bytes of its fragments' payloads)."""
DEFAULT_IDLE_TIMEOUT_MS = 300_000
"""A stream's idle timeout when its start names none (the protocol's default)."""
RECENTLY_CLOSED = 16
"""Closed streams a connection remembers, so that a fragment its client sends again
after a recovery (it missed the ``streamClosed``) is answered with the real reason."""


@dataclass(slots=True, eq=False)
class GroupStream:
    stream_id: str
    group: str
    no_echo: bool
    idle_timeout: float
    """Seconds without accepted activity (a fragment or a keep-alive) before the
    service ends the stream with ``IdleTimeout``."""
    last_active: float
    """When the last accepted activity arrived (the caller's clock, in seconds)."""
    expected: int = 1
    """The sequence id of the next fragment (every one before it is accepted)."""
    carried: int = 0
    """Bytes of payload published so far."""
    in_flight: int | None = None
    """The sequence id of the fragment being published (``expected`` is past it): not
    yet delivered, so a handover moves the stream from it, not after it."""

    @property
    def deadline(self) -> float:
        return self.last_active + self.idle_timeout


class Streams:
    """A connection's open streams by id, at most ``limit`` at a time."""

    __slots__ = ("_closed", "_open", "limit", "max_bytes")

    def __init__(
        self, limit: int = DEFAULT_MAX_STREAMS, max_bytes: int = DEFAULT_MAX_STREAM_BYTES
    ) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self._open: dict[str, GroupStream] = {}
        self._closed: OrderedDict[str, StreamError | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[GroupStream]:
        return iter(list(self._open.values()))

    def get(self, stream_id: str) -> GroupStream | None:
        return self._open.get(stream_id)

    def open(self, stream: GroupStream) -> str | None:
        """Open ``stream``; or why not (its id is open already, or too many are)."""
        if stream.stream_id in self._open:
            return f"Stream '{stream.stream_id}' is open already."
        if len(self._open) >= self.limit:
            return (
                f"The connection has {self.limit} streams open, the most it may have;"
                " end one first."
            )
        self._open[stream.stream_id] = stream
        return None

    def remove(self, stream_id: str, error: StreamError | None = None) -> GroupStream | None:
        """Close ``stream_id`` (``error``: why, as its ``streamClosed`` said)."""
        stream = self._open.pop(stream_id, None)
        if stream is not None:
            self._closed[stream_id] = error
            self._closed.move_to_end(stream_id)
            if len(self._closed) > RECENTLY_CLOSED:
                self._closed.popitem(last=False)
        return stream

    def closed_as(self, stream_id: str) -> tuple[bool, StreamError | None]:
        """Whether ``stream_id`` closed recently, and with what error (None: normally)."""
        if stream_id not in self._closed:
            return False, None
        return True, self._closed[stream_id]

    def expired(self, now: float) -> list[GroupStream]:
        """The streams idle past their timeout at ``now`` (still open: the caller closes
        each with its reason)."""
        return [s for s in self._open.values() if s.deadline <= now]

    def next_deadline(self) -> float | None:
        return min((s.deadline for s in self._open.values()), default=None)

    def clear(self) -> list[GroupStream]:
        """Every open stream, removed (the connection ends, or moves to another node)."""
        streams = list(self._open.values())
        self._open.clear()
        self._closed.clear()
        return streams
