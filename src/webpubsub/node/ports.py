"""The ports the node consumes, declared by the node; the layers above implement them.

``backplane/`` implements :class:`BackplanePort` (how nodes share work) and
``upstream/`` implements :class:`EventHandlerPort` (the webhook dispatcher). The node
and the operations depend on these protocols only, never on an implementation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from webpubsub.core.hub import HubListener
from webpubsub.core.settings import HubSettings
from webpubsub.protocol.backplane import Answer, Command, Query, SessionState
from webpubsub.protocol.cloudevents import (
    ConnectDecision,
    ConnectRequest,
    EventContext,
    EventReply,
)
from webpubsub.protocol.payload import Payload

Publish = Callable[[Command], Awaitable[None]]
"""Deliver a command to every node, this one included, in publish order."""


class BackplanePort(Protocol):
    """What the operations need from the backplane (implemented in backplane/)."""

    async def publish(self, command: Command) -> None:
        """Deliver ``command`` to every node (this one included), in publish order."""

    async def gather(self, query: Query) -> list[Answer]:
        """Ask every node (this one included); one answer per node."""


class PresencePort(HubListener, Protocol):
    """Where a networked backplane keeps the presence other nodes query: told of every
    hub change (synchronously), written in the background, in order."""

    async def flushed(self) -> None:
        """Return once every change reported so far is written (or will be rewritten)."""


class EventHandlerPort(Protocol):
    """What the node needs from the upstream dispatcher (implemented in upstream/)."""

    async def connect(
        self,
        hub: HubSettings,
        ctx: EventContext,
        request: ConnectRequest,
    ) -> ConnectDecision | None: ...

    async def user_event(
        self, hub: HubSettings, ctx: EventContext, name: str, payload: Payload
    ) -> EventReply: ...

    def connected(self, hub: HubSettings, ctx: EventContext) -> None: ...

    def disconnected(self, hub: HubSettings, ctx: EventContext, reason: str) -> None: ...


class HandoverPort(Protocol):
    """How a reliable connection moves to the node its client reconnected to."""

    async def take_over(
        self,
        hub: str,
        connection_id: str,
        token: str,
        subprotocols: tuple[str, ...],
        adopt: Callable[[SessionState], None],
    ) -> str | None:
        """Get a connection this node does not hold from the node that does. ``adopt``
        is called with its state, before any command published later is applied here.
        Returns None when done (or when no node holds it), else why it cannot be had."""

    def hand_over(
        self,
        to_node: str,
        request_id: str,
        session: SessionState | str,
        undelivered: Callable[[], None] | None = None,
    ) -> None:
        """Send a connection's state (or the reason it cannot move) to ``to_node``;
        ``undelivered`` is called when no node took it (the connection then stays)."""


@dataclass(frozen=True, slots=True)
class ReapedConnection:
    """A connection whose node died, as a networked backplane recorded it: what its
    ``disconnected`` event needs, sent by a surviving node (:meth:`Node.reaped`)."""

    hub: str
    connection_id: str
    user_id: str | None
    subprotocol: str | None
    state: str
    node_id: str
