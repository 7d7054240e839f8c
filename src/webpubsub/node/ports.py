"""The ports the node consumes, declared by the node; the layers above implement them.

``backplane/`` implements :class:`BackplanePort` (how nodes share work) and
``upstream/`` implements :class:`EventHandlerPort` (the webhook dispatcher). The node
and the operations depend on these protocols only, never on an implementation.
:class:`EventMirrorPort` (backplane) and :class:`EventStore` (upstream) are where those
two meet, declared here because neither may import the other; the composition root
joins them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
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

    def group_presence(self, hub: HubSettings, ctx: EventContext, event: str, group: str) -> None:
        """``ctx``'s connection joined (``event == "joined"``) or left ``group``; called
        only when ``hub.handler_for_group_presence(event, group)`` has a handler."""


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


class EventStore(Protocol):
    """A node's own queue of ``connected``/``disconnected`` events as an event mirror
    sees it (implemented in upstream/): events are opaque records keyed by ``seq``."""

    def pending_seqs(self) -> list[int]:
        """The ``seq`` of every event waiting here, in order."""

    def epoch(self) -> str:
        """The queue file's own name (made with the file): the copy keys an event by it
        and its ``seq``, so a new file's events never pass for those of an old one."""

    def records(self, seqs: Sequence[int]) -> list[tuple[int, bytes]]:
        """The records of those of ``seqs`` still waiting, in order."""

    def adopt(self, records: Sequence[bytes], *, hold: bool = False) -> list[int]:
        """Queue events another node left, in the order given, durably on return (each
        mirrored as one of this node's own); for each record its ``seq`` here (0: not
        queued, unreadable or dead-lettered). Stops at the first the store cannot write
        now (the list is then shorter: the rest are not queued, and must stay where they
        are for a later try). Raises if this queue is closed."""

    def release(self, seqs: Collection[int]) -> None:
        """Deliver these events adopted with ``hold`` (not delivered until then: the
        copy's owner may still refuse to let them go)."""

    def drop_ended(self, connections: Collection[tuple[str, str]]) -> int:
        """Another node reported the end of these (hub, connection id) while this one
        was taken for dead: their ``disconnected`` still waiting here is never sent
        (nor what follows it); how many went."""

    def drop(self, seqs: Collection[int], *, handed_back: bool = False) -> int:
        """Another node took these events over (``handed_back``: their node took them
        back before this one could claim them): never deliver them here; how many went."""


class EventMirrorPort(Protocol):
    """Where a networked backplane keeps a copy of each node's queued events, so that a
    survivor can take over those of a node that died (implemented in backplane/).

    The local queue stays the write-ahead: :meth:`queued` and :meth:`settled` are told
    after the local write, never block and never fail (written in the background,
    bounded; after a fault the copy is made to match the store again)."""

    async def attach(self, store: EventStore) -> None:
        """Before the store delivers anything: drop from it what other nodes took over
        while this node was taken for dead, then keep the copy in step with it."""

    def queued(self, seq: int, record: bytes) -> None: ...

    def settled(self, seq: int) -> None:
        """Delivered, buried or purged."""

    async def closing(self) -> None:
        """The store's deliveries have ended and it changes no more (its file still
        open): bring the copy in step with it once, bounded, before the node leaves."""


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
