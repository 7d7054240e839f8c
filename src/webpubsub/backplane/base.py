"""How nodes share work: every command reaches every node, every query is gathered.

A node registers itself with its backplane; REST operations go through
:meth:`Backplane.publish` / :meth:`Backplane.gather` whatever node received them,
so a client connected to any node is reachable from any other.
"""

from __future__ import annotations

import abc
from typing import Protocol

from webpubsub.node.ports import EventMirrorPort, HandoverPort, PresencePort, ReapedConnection
from webpubsub.protocol.backplane import Answer, Command, Query


class NodeEndpoint(Protocol):
    """What a backplane needs from a node."""

    node_id: str

    def apply(self, command: Command) -> None:
        """Apply a command to this node's own connections (synchronous, never raises)."""

    def answer(self, query: Query) -> Answer:
        """Answer a query from this node's own connections."""

    def reaped(self, connection: ReapedConnection) -> None:
        """A connection of a dead node is gone: send its ``disconnected`` event."""

    def abandon(self, hub: str, connection_id: str) -> None:
        """This node was taken for dead and another sent the ``disconnected`` event of
        this connection of its own: close it without sending the event again."""


class Backplane(abc.ABC):
    @abc.abstractmethod
    async def start(self, node: NodeEndpoint) -> None:
        """Register ``node``: from now on it receives every command and query."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Unregister the node and release resources."""

    @abc.abstractmethod
    async def publish(self, command: Command) -> None:
        """Deliver ``command`` to every node (this one included), in publish order."""

    @abc.abstractmethod
    async def gather(self, query: Query) -> list[Answer]:
        """The answers to ``query``: one per node, or one from shared presence."""

    def presence(self) -> PresencePort | None:
        """The listener that shares the node's hub changes, if this backplane keeps
        presence outside the nodes (the memory backplane asks the nodes instead)."""
        return None

    def handover(self) -> HandoverPort | None:
        """How reliable connections move between nodes, if they can (not in one process)."""
        return None

    def event_mirror(self) -> EventMirrorPort | None:
        """Where the node's queued events are copied for the others to take over should
        it die, if this backplane spans processes (one process has nobody to take them)."""
        return None

    def health(self) -> dict[str, object]:
        """What ``/api/health`` reports about the backplane."""
        return {"backplane": "memory"}
