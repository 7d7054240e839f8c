"""A client connection as the domain sees it: identity, groups, permissions, state.

The core never touches a socket: a connection writes through its :class:`Sink`
(the transport's outbox), which accepts pre-encoded frames and never blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from webpubsub.core.permissions import Permissions
from webpubsub.protocol.frames import ClientProtocol


class Sink(Protocol):
    """Where a connection's outgoing frames go (implemented by the transport)."""

    def offer(self, frame: bytes) -> None:
        """Queue one complete frame; never blocks; overflow closes the connection."""

    def close(self, code: int, reason: str) -> None:
        """Close the connection (asynchronously); later offers are dropped."""


@dataclass(eq=False, slots=True)
class Connection:
    connection_id: str
    hub: str
    """The hub key (lower-cased name)."""
    user_id: str | None
    protocol: ClientProtocol
    subprotocol: str | None
    sink: Sink
    permissions: Permissions
    state: str = ""
    """Opaque connection state set by the event handler (event-handler.md §6)."""
    groups: set[str] = field(default_factory=set)
    closing: bool = False
    close_reason: str = ""
    """Why the service closed this connection (reported in ``disconnected``)."""
    _event_counter: int = 0

    def next_event_id(self) -> str:
        """The ``ce-id`` of this connection's next event: ``0`` is ``connect``."""
        self._event_counter += 1
        return str(self._event_counter)

    def deliver(self, frame: bytes) -> None:
        if not self.closing:
            self.sink.offer(frame)

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.close_reason = reason
            self.sink.close(code, reason)
