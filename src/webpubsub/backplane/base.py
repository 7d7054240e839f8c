"""How nodes share work: every command reaches every node, every query is gathered.

A node registers itself with its backplane; REST operations go through
:meth:`Backplane.publish` / :meth:`Backplane.gather` whatever node received them,
so a client connected to any node is reachable from any other.

:meth:`Backplane.survey` asks every live node an opaque question and gathers the
answers, for observation only (the operator portal's view of every node): no
operation of the data plane depends on a survey, whose answers may be missing.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from webpubsub.errors import BadRequest, PayloadTooLarge, ServiceUnavailable
from webpubsub.node.ports import EventMirrorPort, HandoverPort, PresencePort, ReapedConnection
from webpubsub.protocol.backplane import (
    MAX_SURVEY_ANSWER_BYTES,
    MAX_SURVEY_REQUEST_BYTES,
    MAX_SURVEY_TIMEOUT,
    Answer,
    Command,
    Query,
)

log = logging.getLogger("webpubsub.backplane")

Surveyor = Callable[[bytes], Awaitable[bytes]]
"""A node's answerer to surveys: the request's body in, this node's answer out."""
MAX_SURVEYS_IN_FLIGHT = 16
"""Surveys one node may be waiting on at once; one more raises ServiceUnavailable."""
MAX_SURVEYS_ANSWERING = 16
"""Surveys one node answers at once; it does not answer one more (the asker sees None)."""


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

    _surveyor: Surveyor | None = None

    def answer_surveys(self, handler: Surveyor) -> None:
        """Install this node's answerer (called by the composition root once, before or
        after :meth:`start`); without one the node answers every survey with None."""
        self._surveyor = handler

    @abc.abstractmethod
    async def survey(
        self,
        request: bytes,
        *,
        timeout: float = 1.0,  # noqa: ASYNC109 (the answerers' time too; a partial result after)
    ) -> list[tuple[str, bytes | None]]:
        """Ask every live node (this one included) ``request``: one (node id, answer) per
        node, by node id, the answer None for a node that did not answer within
        ``timeout`` seconds, has no answerer, whose answerer failed, or whose answer
        exceeds ``MAX_SURVEY_ANSWER_BYTES`` (or the lower limit a backplane sets to
        bound the answers in flight to one node). Returns within about ``timeout``.

        Raises :class:`PayloadTooLarge` for a request over ``MAX_SURVEY_REQUEST_BYTES``,
        :class:`BadRequest` for a timeout outside (0, ``MAX_SURVEY_TIMEOUT``], and
        :class:`ServiceUnavailable` when the backplane cannot publish (Redis down) or
        ``MAX_SURVEYS_IN_FLIGHT`` surveys of this node are waiting already."""

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


def check_survey(request: bytes, timeout: float, waiting: int) -> None:
    """Refuse a survey over the limits before anything is sent; ``waiting`` is how many
    surveys of this node are waiting already."""
    if len(request) > MAX_SURVEY_REQUEST_BYTES:
        raise PayloadTooLarge(
            f"A survey request is at most {MAX_SURVEY_REQUEST_BYTES} bytes, not {len(request)}."
        )
    if not 0 < timeout <= MAX_SURVEY_TIMEOUT:
        raise BadRequest(f"A survey's timeout is in (0, {MAX_SURVEY_TIMEOUT}] seconds.")
    if waiting >= MAX_SURVEYS_IN_FLIGHT:
        raise ServiceUnavailable(
            f"This node is waiting on {MAX_SURVEYS_IN_FLIGHT} surveys already."
        )


async def run_surveyor(
    handler: Surveyor | None,
    request: bytes,
    within: float,
    node_id: str,
    limit: int = MAX_SURVEY_ANSWER_BYTES,
) -> bytes | None:
    """Node ``node_id``'s answer to ``request`` from ``handler``; None (logged) when it
    has none, raises, takes longer than ``within`` seconds (it is cancelled) or answers
    more than ``limit`` bytes (the request's, at most ``MAX_SURVEY_ANSWER_BYTES``)."""
    if handler is None:
        return None
    try:
        async with asyncio.timeout(within):
            answer = await handler(request)
    except TimeoutError:
        log.warning("node %s did not answer a survey within %.3g s", node_id, within)
        return None
    except Exception:
        log.exception("the survey answerer of node %s failed", node_id)
        return None
    if not isinstance(answer, bytes):
        log.warning("the survey answerer of node %s did not answer bytes", node_id)
        return None
    if len(answer) > min(limit, MAX_SURVEY_ANSWER_BYTES):
        log.warning(
            "node %s dropped its survey answer of %d bytes (at most %d)",
            node_id,
            len(answer),
            min(limit, MAX_SURVEY_ANSWER_BYTES),
        )
        return None
    return answer
