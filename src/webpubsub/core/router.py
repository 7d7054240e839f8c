"""What a JSON-subprotocol client may ask of the service, as effects (no I/O).

:func:`route` takes one frame of a ``json.webpubsub.azure.v1`` (or reliable)
connection and its hub, does what needs no I/O at once (join and leave groups,
acknowledge sequence ids, check permissions and ackIds) and returns what is left
for the node to carry out: a frame to send back, a close, a command to publish,
an event to call — each saying which ack follows it. The asyncio side only
executes effects; every decision is here, testable without a socket.

Requests with an ``ackId`` are answered with an ``ack`` and are idempotent: a
repeated ackId that succeeded is answered ``Duplicate`` without running again.
Failures are raised as the error types of :mod:`webpubsub.errors` and mapped to
an ack in one place (:func:`webpubsub.protocol.json_protocol.encode_ack`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from webpubsub.core.connection import Connection
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permission
from webpubsub.errors import BadRequest, Duplicate, Forbidden, WebPubSubError
from webpubsub.protocol.backplane import Command, Send, Target
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.json_protocol import (
    PONG,
    decode_client_message,
    encode_ack,
    encode_invoke_error,
)
from webpubsub.protocol.messages import (
    CancelInvocation,
    Invoke,
    JoinGroup,
    LeaveGroup,
    Ping,
    ProtocolViolation,
    SendEvent,
    SendToGroup,
    SequenceAck,
    StreamData,
    StreamEnd,
    StreamProblem,
    StreamStart,
    Unsupported,
)
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.wsframe import CloseCode


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``frame`` (an ack or a pong) to the client now; ``after_presence``: once the
    node's presence is written where other nodes read it (the ack of a join or leave,
    so that a query the client's app server makes next sees the change)."""

    frame: bytes
    after_presence: bool = False
    presence: tuple[str, str] | None = None
    """(``"joined"``/``"left"``, group) when the request changed the connection's groups."""


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the connection: the frame was not a request at all."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish ``command``, then acknowledge ``ack_id`` (when given) as a success."""

    command: Command
    ack_id: int | None


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Call the event handler with user event ``event``; deliver its reply, then ack."""

    event: str
    payload: Payload
    ack_id: int | None


@dataclass(frozen=True, slots=True)
class CallInvoke:
    """Call the event handler with user event ``event`` for invocation
    ``invocation_id``; its reply becomes the ``invokeResponse`` (no data message, no
    ack). The node opened the invocation when its frame arrived (duplicates and the
    per-connection limit are refused there)."""

    invocation_id: str
    event: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class CancelCall:
    """Stop waiting for invocation ``invocation_id``: its handler call is cancelled and
    no ``invokeResponse`` is sent."""

    invocation_id: str


@dataclass(frozen=True, slots=True)
class GroupChanged:
    """A join or leave without an ``ackId``, done: nothing to send. ``presence``:
    (``"joined"``/``"left"``, group) when it changed the connection's groups."""

    presence: tuple[str, str] | None = None


GROUP_CHANGED = GroupChanged()
"""A join or leave that changed nothing (already in the group, or not in it)."""

Effect = Reply | CloseClient | Publish | CallEvent | CallInvoke | CancelCall | GroupChanged


def route(conn: Connection, hub: Hub, frame: str | bytes) -> Effect | None:
    """The effect of one client ``frame`` on ``conn`` of ``hub`` (None: nothing to do)."""
    try:
        msg = decode_client_message(frame)
    except ProtocolViolation as exc:
        if exc.invocation_id is not None:
            return Reply(encode_invoke_error(exc.invocation_id, exc))
        if exc.fatal or exc.ack_id is None:
            return CloseClient(CloseCode.POLICY_VIOLATION, f"Invalid message: {exc.message}")
        return Reply(encode_ack(exc.ack_id, exc))
    match msg:
        case SequenceAck():
            if conn.reliable is not None:
                conn.reliable.ack(msg.sequence_id)
            return None
        case Ping():
            return Reply(PONG)
        case Invoke():
            return CallInvoke(msg.invocation_id, msg.event, msg.payload)
        case CancelInvocation():
            return CancelCall(msg.invocation_id)
        case StreamStart() | StreamData() | StreamEnd() | StreamProblem():
            return None  # group streams: not yet routed
        case Unsupported():
            if msg.ack_id is None:
                return None
            error = BadRequest(f"Message type '{msg.type}' is not supported.")
            return Reply(encode_ack(msg.ack_id, error))
        case JoinGroup() | LeaveGroup() | SendToGroup() | SendEvent():
            ack_id = msg.ack_id
            try:
                if ack_id is not None and ack_id in conn.ack_ids:
                    raise Duplicate(ack_id)
                effect = _request(conn, hub, msg)
            except WebPubSubError as exc:
                return Reply(encode_ack(ack_id, exc)) if ack_id is not None else None
            if isinstance(effect, GroupChanged):  # a join or leave, done
                if ack_id is None:
                    return effect
                conn.ack_ids.add(ack_id)
                return Reply(encode_ack(ack_id), after_presence=True, presence=effect.presence)
            return effect
        case _:
            assert_never(msg)


def succeeded(conn: Connection, ack_id: int | None) -> bytes | None:
    """The ack of a request whose effect was carried out (recorded against duplicates)."""
    if ack_id is None:
        return None
    conn.ack_ids.add(ack_id)
    return encode_ack(ack_id)


def failed(ack_id: int | None, error: WebPubSubError) -> bytes | None:
    """The ack of a request whose effect failed (its ackId may be tried again)."""
    return encode_ack(ack_id, error) if ack_id is not None else None


def _request(
    conn: Connection, hub: Hub, msg: JoinGroup | LeaveGroup | SendToGroup | SendEvent
) -> Publish | CallEvent | GroupChanged:
    """Check and do ``msg``; a :class:`GroupChanged` when it is done already (join, leave)."""
    match msg:
        case JoinGroup() | LeaveGroup():
            if not conn.permissions.allows(Permission.JOIN_LEAVE_GROUP, msg.group):
                raise Forbidden(
                    f"The connection has no permission to join or leave group '{msg.group}'."
                )
            member = msg.group in conn.groups
            if isinstance(msg, JoinGroup):
                if not hub.join(conn, msg.group):
                    raise BadRequest(
                        f"The connection is in {conn.max_groups} groups, the most a connection"
                        " may join; leave one first."
                    )
                return GroupChanged(("joined", msg.group)) if not member else GROUP_CHANGED
            hub.leave(conn, msg.group)
            return GroupChanged(("left", msg.group)) if member else GROUP_CHANGED
        case SendToGroup():
            if not conn.permissions.allows(Permission.SEND_TO_GROUP, msg.group):
                raise Forbidden(f"The connection has no permission to send to group '{msg.group}'.")
            message = DataMessage(msg.payload, Origin.GROUP, msg.group, conn.user_id)
            excluded = frozenset({conn.connection_id}) if msg.no_echo else frozenset()
            return Publish(Send(conn.hub, Target.group(msg.group), message, excluded), msg.ack_id)
        case SendEvent():
            return CallEvent(msg.event, msg.payload, msg.ack_id)
        case _:
            assert_never(msg)
