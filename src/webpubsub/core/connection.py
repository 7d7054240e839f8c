"""A client connection as the domain sees it: identity, groups, permissions, state.

The core never touches a socket: a connection writes through its :class:`Sink`
(the transport's outbox), which accepts pre-encoded frames and never blocks.  A
reliable connection may be *detached* (no sink) while its client recovers; data
sent meanwhile waits in its :class:`ReliableBuffer`, and so does data sent while
a recovered connection's buffer is *replaying* (it follows the replay, in order).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from webpubsub.core.permissions import Permissions
from webpubsub.core.reliable import BufferOverflow, ReliableBuffer
from webpubsub.core.streams import Streams
from webpubsub.protocol.frames import ClientProtocol
from webpubsub.protocol.wsframe import CloseCode, encode_frame


class Sink(Protocol):
    """Where a connection's outgoing frames go (implemented by the transport).

    A sink may also have ``offer_each(frame, sinks)``, the batch form of ``offer``: the
    fan-out gives it a whole batch of plain recipients' sinks, itself first and sinks of
    any kind among them (``core/hub.offer_each``).
    """

    def offer(self, frame: bytes) -> None:
        """Queue one complete frame; never blocks; overflow closes the connection."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection (asynchronously); later offers are dropped."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes offered and not yet sent: what the transport holds (or is about to
        hold) as copies of the offered frames."""

    async def drained(self) -> None:
        """Return once the frames offered so far are written and the transport's buffer
        has drained (at once if the connection is closed): the pace of a replay."""


class AckIds:
    """The ackIds a connection has processed successfully, bounded (oldest forgotten).

    The ordered dict is made with the first ackId: most connections never send one.
    """

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._seen: OrderedDict[int, None] | None = None

    def __contains__(self, ack_id: int) -> bool:
        return self._seen is not None and ack_id in self._seen

    def __len__(self) -> int:
        return 0 if self._seen is None else len(self._seen)

    def __iter__(self) -> Iterator[int]:
        """Oldest first."""
        return iter(() if self._seen is None else self._seen)

    def add(self, ack_id: int) -> None:
        seen = self._seen
        if seen is None:
            seen = self._seen = OrderedDict()
        seen[ack_id] = None
        seen.move_to_end(ack_id)
        if len(seen) > self._limit:
            seen.popitem(last=False)


@dataclass(eq=False, slots=True)
class Connection:
    connection_id: str
    hub: str
    """The hub key (lower-cased name)."""
    user_id: str | None
    protocol: ClientProtocol
    subprotocol: str | None
    sink: Sink | None
    """``None`` while a reliable connection is detached, waiting for recovery."""
    permissions: Permissions
    state: str = ""
    """Opaque connection state set by the event handler (Azure docs: CloudEvents)."""
    groups: set[str] = field(default_factory=set)
    max_groups: int | None = None
    """How many groups the connection may be in at once (None: no limit)."""
    closing: bool = False
    moved_to: str | None = None
    """The node this connection was handed over to (it left this node, but did not end)."""
    close_reason: str = ""
    """Why the service closed this connection (reported in ``disconnected``)."""
    reliable: ReliableBuffer | None = None
    reconnection_token: str | None = None
    ack_ids: AckIds = field(default_factory=AckIds)
    on_detached_close: Callable[[Connection], None] | None = None
    """Ends a detached connection the service closes (set by the node)."""
    events_sent: int = 0
    """Events sent for this connection so far (``connect`` is ``0``, not counted)."""
    replaying: bool = False
    """The unacknowledged buffer is being replayed to a new sink: data waits behind it."""
    on_buffered: Callable[[Connection, int], None] | None = None
    """Told of the size of each data frame buffered while detached (set by the node)."""
    close_code: int | None = None
    """The WebSocket close code that ended the connection (the service's or the
    client's), once known."""
    connected_at: float = 0.0
    """When the connection was attached (seconds since the epoch)."""
    messages_in: int = 0
    """Frames read from the client."""
    messages_out: int = 0
    """Data messages sent to the client (acks and system messages not counted)."""
    _streams: Streams | None = None

    @property
    def streams(self) -> Streams:
        """The group streams this connection publishes (made on first use: most
        connections never open one)."""
        if self._streams is None:
            self._streams = Streams()
        return self._streams

    @property
    def has_streams(self) -> bool:
        return self._streams is not None and len(self._streams) > 0

    def next_event_id(self) -> str:
        """The ``ce-id`` of this connection's next event: ``0`` is ``connect``."""
        self.events_sent += 1
        return str(self.events_sent)

    def send_data(self, encoded: bytes) -> None:
        """Deliver a data message encoded by ``frames.encode_for`` for this protocol."""
        if self.closing:
            return
        self.messages_out += 1
        sink = self.sink
        if self.reliable is not None:
            held = sink.buffered_bytes if sink is not None else 0
            try:
                encoded = self.reliable.stamp(encoded, held=held)
            except BufferOverflow as exc:
                self.close(CloseCode.POLICY_VIOLATION, f"Too many unacknowledged messages: {exc}.")
                return
            if sink is None:
                if self.on_buffered is not None:
                    self.on_buffered(self, len(encoded))
                return
            if self.replaying:
                return
        if sink is not None:
            sink.offer(encoded)

    def send_control(self, message: bytes) -> None:
        """Send a system message, ack or pong encoded by this protocol's codec (never
        sequenced, never buffered)."""
        if not self.closing and self.sink is not None:
            self.sink.offer(encode_frame(self.protocol.codec.OPCODE, message))

    def close(self, code: int, reason: str) -> None:
        """Close for good: subprotocol clients first get ``disconnected`` with the reason."""
        if self.closing:
            return
        if self.protocol.is_pubsub:
            self.send_control(self.protocol.codec.encode_disconnected(reason))
        self.closing = True
        self.close_reason = reason
        self.close_code = code
        if self.sink is not None:
            self.sink.close(code, reason)
        elif self.on_detached_close is not None:
            self.on_detached_close(self)
