"""What a JSON-subprotocol client may ask of the service, as effects (no I/O).

:func:`route` takes one frame of a ``json.webpubsub.azure.v1`` (or reliable)
connection and its hub, does what needs no I/O at once (join and leave groups,
acknowledge sequence ids, check permissions and ackIds) and returns what is left
for the node to carry out: a frame to send back, a close, a command to publish,
an event to call — each saying which ack follows it. The asyncio side only
executes effects; every decision is here, testable without a socket.

Group streams (``sendToGroup`` with ``stream``, ``streamData``, ``streamEnd``) are
checked and sequenced here too (:mod:`webpubsub.core.streams`): each becomes a
:class:`StreamStep`, a fragment to publish and the stream answers that follow it.

Every frame the router makes is encoded by the connection's codec
(:attr:`~webpubsub.protocol.frames.ClientProtocol.codec`), so the JSON and protobuf
subprotocols share this one path.

Requests with an ``ackId`` are answered with an ``ack`` and are idempotent: a
repeated ackId that succeeded is answered ``Duplicate`` without running again.
Failures are raised as the error types of :mod:`webpubsub.errors` and mapped to
an ack in one place (the codec's ``encode_ack``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from webpubsub.core.connection import Connection
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permission
from webpubsub.core.streams import DEFAULT_IDLE_TIMEOUT_MS, GroupStream
from webpubsub.errors import BadRequest, Duplicate, Forbidden, WebPubSubError
from webpubsub.protocol.backplane import Command, Send, Target
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.json_protocol import encode_invoke_error
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
    StreamError,
    StreamInfo,
    StreamProblem,
    StreamStart,
    Unsupported,
)
from webpubsub.protocol.payload import DataType, Payload
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


@dataclass(frozen=True, slots=True)
class StreamStep:
    """A stream message carried out: publish ``command`` when given (a fragment, or a
    stream's terminal message), then send ``frames`` (``streamAck``, ``streamNack``,
    ``streamClosed``, an ``ack``). ``fragment``: the stream a published fragment advanced
    (the fragment is its ``in_flight`` until published); if the publish fails, the node
    ends the stream ``InternalServerError`` instead of sending ``frames``."""

    command: Send | None
    frames: tuple[bytes, ...]
    fragment: GroupStream | None = None


Effect = (
    Reply | CloseClient | Publish | CallEvent | CallInvoke | CancelCall | GroupChanged | StreamStep
)

STREAM_END_PAYLOAD = Payload(DataType.BINARY, b"")
"""What a stream's terminal group message carries (JSON clients: binary ``""``)."""


def route(conn: Connection, hub: Hub, frame: str | bytes, *, now: float = 0.0) -> Effect | None:
    """The effect of one client ``frame`` on ``conn`` of ``hub`` (None: nothing to do);
    ``now`` (seconds, the node's clock) is when a stream was last active."""
    codec = conn.protocol.codec
    try:
        msg = codec.decode_client_message(frame)
    except ProtocolViolation as exc:
        if exc.invocation_id is not None:
            return Reply(encode_invoke_error(exc.invocation_id, exc))
        if exc.fatal or exc.ack_id is None:
            return CloseClient(CloseCode.POLICY_VIOLATION, f"Invalid message: {exc.message}")
        return Reply(codec.encode_ack(exc.ack_id, exc))
    match msg:
        case SequenceAck():
            if conn.reliable is not None:
                conn.reliable.ack(msg.sequence_id)
            return None
        case Ping():
            return Reply(codec.PONG)
        case Invoke():
            return CallInvoke(msg.invocation_id, msg.event, msg.payload)
        case CancelInvocation():
            return CancelCall(msg.invocation_id)
        case StreamStart():
            return _start_stream(conn, msg, now)
        case StreamData():
            return _stream_data(conn, msg, now)
        case StreamEnd() | StreamProblem():
            return _end_stream(conn, msg)
        case Unsupported():
            if msg.ack_id is None:
                return None
            error = BadRequest(f"Message type '{msg.type}' is not supported.")
            return Reply(codec.encode_ack(msg.ack_id, error))
        case JoinGroup() | LeaveGroup() | SendToGroup() | SendEvent():
            ack_id = msg.ack_id
            try:
                if ack_id is not None and ack_id in conn.ack_ids:
                    raise Duplicate(ack_id)
                effect = _request(conn, hub, msg)
            except WebPubSubError as exc:
                return Reply(codec.encode_ack(ack_id, exc)) if ack_id is not None else None
            if isinstance(effect, GroupChanged):  # a join or leave, done
                if ack_id is None:
                    return effect
                conn.ack_ids.add(ack_id)
                return Reply(
                    codec.encode_ack(ack_id), after_presence=True, presence=effect.presence
                )
            return effect
        case _:
            assert_never(msg)


def succeeded(conn: Connection, ack_id: int | None) -> bytes | None:
    """The ack of a request whose effect was carried out (recorded against duplicates)."""
    if ack_id is None:
        return None
    conn.ack_ids.add(ack_id)
    return conn.protocol.codec.encode_ack(ack_id)


def failed(conn: Connection, ack_id: int | None, error: WebPubSubError) -> bytes | None:
    """The ack of a request whose effect failed (its ackId may be tried again)."""
    return conn.protocol.codec.encode_ack(ack_id, error) if ack_id is not None else None


# -- group streams ---------------------------------------------------------------------


def end_message(conn: Connection, stream: GroupStream, error: StreamError | None) -> Send:
    """The terminal group message of ``stream`` (``endOfStream``, with ``error``)."""
    info = StreamInfo(stream.stream_id, stream.expected, end=True, error=error)
    return _stream_send(conn, stream, STREAM_END_PAYLOAD, info)


def _stream_send(conn: Connection, stream: GroupStream, payload: Payload, info: StreamInfo) -> Send:
    message = DataMessage(payload, Origin.GROUP, stream.group, conn.user_id, info)
    excluded = frozenset({conn.connection_id}) if stream.no_echo else frozenset()
    return Send(conn.hub, Target.group(stream.group), message, excluded)


def _closed(conn: Connection, stream_id: str, name: str, message: str) -> StreamStep:
    """Refuse a stream message: ``streamClosed`` with ``name``, nothing published."""
    codec = conn.protocol.codec
    return StreamStep(None, (codec.encode_stream_closed(stream_id, StreamError(name, message)),))


def _unknown(conn: Connection, stream_id: str) -> StreamStep:
    """A message for a stream that is not open: ``StreamNotFound``, or the reason it
    closed when it did so recently (a client recovering after it missed the
    ``streamClosed``: it ended while the client was away)."""
    known, error = conn.streams.closed_as(stream_id)
    if not known:
        return _closed(conn, stream_id, "StreamNotFound", _not_found(stream_id))
    return StreamStep(None, (conn.protocol.codec.encode_stream_closed(stream_id, error),))


def stream_ended(conn: Connection, stream: GroupStream, error: StreamError) -> StreamStep:
    """The service ends ``stream``: subscribers get its terminal message with
    ``error``, the publisher ``streamClosed`` with it."""
    conn.streams.remove(stream.stream_id, error)
    closed = conn.protocol.codec.encode_stream_closed(stream.stream_id, error)
    return StreamStep(end_message(conn, stream, error), (closed,))


def _start_stream(conn: Connection, msg: StreamStart, now: float) -> StreamStep:
    codec = conn.protocol.codec
    if msg.ack_id is not None and msg.ack_id in conn.ack_ids:
        return StreamStep(None, (codec.encode_ack(msg.ack_id, Duplicate(msg.ack_id)),))
    after = (codec.encode_ack(msg.ack_id),) if msg.ack_id is not None else ()
    if not conn.permissions.allows(Permission.SEND_TO_GROUP, msg.group):
        forbidden = f"The connection has no permission to send to group '{msg.group}'."
        step = _closed(conn, msg.stream_id, "Forbidden", forbidden)
        if msg.ack_id is None:
            return step
        return StreamStep(None, (*step.frames, codec.encode_ack(msg.ack_id, Forbidden(forbidden))))
    timeout = msg.idle_timeout_ms if msg.idle_timeout_ms is not None else DEFAULT_IDLE_TIMEOUT_MS
    stream = GroupStream(msg.stream_id, msg.group, msg.no_echo, timeout / 1000, now)
    refused = conn.streams.open(stream)
    if refused is not None:
        step = _closed(conn, msg.stream_id, "BadRequest", refused)
        if msg.ack_id is None:
            return step
        return StreamStep(None, (*step.frames, codec.encode_ack(msg.ack_id, BadRequest(refused))))
    if msg.ack_id is not None:
        conn.ack_ids.add(msg.ack_id)
    return StreamStep(None, (codec.encode_stream_ack(msg.stream_id, 1), *after))


def _stream_data(conn: Connection, msg: StreamData, now: float) -> StreamStep | None:
    codec = conn.protocol.codec
    stream = conn.streams.get(msg.stream_id)
    if stream is None:
        return _unknown(conn, msg.stream_id)
    if not conn.permissions.allows(Permission.SEND_TO_GROUP, stream.group):
        forbidden = f"The connection has no permission to send to group '{stream.group}'."
        return stream_ended(conn, stream, StreamError("Forbidden", forbidden))
    if msg.sequence_id is None or msg.payload is None:  # a keep-alive
        stream.last_active = now
        return None
    expected = stream.expected
    if msg.sequence_id < expected:  # a duplicate (a replay after recovery): not again
        return StreamStep(None, (codec.encode_stream_ack(stream.stream_id, expected),))
    if msg.sequence_id > expected:
        message = f"Expected fragment {expected}, got {msg.sequence_id}."
        nack = codec.encode_stream_nack(stream.stream_id, expected, "InvalidSequenceId", message)
        return StreamStep(None, (nack,))
    size = len(msg.payload.data)
    limit = conn.streams.max_bytes
    if stream.carried + size > limit:
        too_much = f"The stream carried {stream.carried} bytes; a stream may carry {limit}."
        return stream_ended(conn, stream, StreamError("BadRequest", too_much))
    stream.expected = expected + 1
    stream.carried += size
    stream.last_active = now
    stream.in_flight = expected  # until the node has published it
    info = StreamInfo(stream.stream_id, expected)
    send = _stream_send(conn, stream, msg.payload, info)
    ack = codec.encode_stream_ack(stream.stream_id, expected + 1)
    return StreamStep(send, (ack,), stream)


def _end_stream(conn: Connection, msg: StreamEnd | StreamProblem) -> StreamStep:
    stream = conn.streams.get(msg.stream_id)
    if isinstance(msg, StreamProblem):
        if stream is None or msg.start:  # a bad start leaves an open stream of its id be
            return _closed(conn, msg.stream_id, "BadRequest", msg.message)
        return stream_ended(conn, stream, StreamError("BadRequest", msg.message))
    if stream is None:
        return _unknown(conn, msg.stream_id)
    conn.streams.remove(stream.stream_id)
    error = None
    if msg.error is not None:
        error = StreamError("UserError", msg.error.message or "", msg.error.user_error_code)
    closed = conn.protocol.codec.encode_stream_closed(stream.stream_id)
    return StreamStep(end_message(conn, stream, error), (closed,))


def _not_found(stream_id: str) -> str:
    return f"Stream '{stream_id}' is not open on this connection."


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
