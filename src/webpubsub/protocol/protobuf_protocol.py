"""The ``protobuf.webpubsub.azure.v1`` subprotocol and its reliable variant (sans-I/O).

The protobuf twin of :mod:`webpubsub.protocol.json_protocol`, name for name: client
frames (binary ``UpstreamMessage``) are decoded into the same dataclasses
(:mod:`webpubsub.protocol.messages`), server messages are encoded as
``DownstreamMessage`` (Azure docs: protobuf subprotocol; the schema and every choice:
:mod:`webpubsub.protocol.protobuf_schema`, docs/compatibility.md).

Parsing is the ``protobuf`` package's (upb, in C: it checks the wire format and
UTF-8); a data message is encoded once per send as a complete ``DownstreamMessage``
whose payload bytes are spliced in as they are, and the reliable variant stamps each
recipient's ``sequence_id`` into it at byte level (:func:`with_sequence_id`), as the
JSON path does with its envelope.  There is no protobuf ``invoke``: the decoder never
yields :class:`~webpubsub.protocol.messages.Invoke`.
"""

from __future__ import annotations

import struct
from typing import Any

import orjson

from webpubsub.errors import InvalidName, WebPubSubError
from webpubsub.protocol.json_protocol import (
    MAX_DATA_DEPTH,
    too_deep,
)
from webpubsub.protocol.messages import (
    MAX_IDLE_TIMEOUT_MS,
    ClientMessage,
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
    ack_id_in,
    checked_stream_id,
    stream_end,
)
from webpubsub.protocol.names import validate_event_name, validate_group
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.protocol.protobuf_schema import DecodeError, message_class
from webpubsub.protocol.wsframe import Opcode

PROTOBUF_SUBPROTOCOL = "protobuf.webpubsub.azure.v1"
PROTOBUF_RELIABLE_SUBPROTOCOL = "protobuf.reliable.webpubsub.azure.v1"
OPCODE = Opcode.BINARY
"""Every message of these subprotocols is a binary WebSocket frame."""

# Wire facts of the hot path (tag = field number << 3 | wire type; 2 is length-delimited,
# 0 a varint): DownstreamMessage.data_message = 2, DataMessage.data = 3,
# DataMessage.sequence_id = 4, and the MessageData member of each data type.
_DATA_MESSAGE_TAG = bytes([2 << 3 | 2])
_FROM_SERVER = bytes([1 << 3 | 2, 6]) + b"server"  # DataMessage.from = 1
_FROM_GROUP = bytes([1 << 3 | 2, 5]) + b"group"
_GROUP_TAG = bytes([2 << 3 | 2])  # DataMessage.group = 2
_DATA_TAG = bytes([3 << 3 | 2])
_SEQUENCE_ID_TAG = bytes([4 << 3 | 0])
_DATA_KIND_TAGS = {
    DataType.TEXT: bytes([1 << 3 | 2]),
    DataType.BINARY: bytes([2 << 3 | 2]),
    DataType.PROTOBUF: bytes([3 << 3 | 2]),
    DataType.JSON: bytes([4 << 3 | 2]),
}
_UPSTREAM = message_class("UpstreamMessage")
_DATA_MESSAGE = message_class("DataMessage")
_DATA_KINDS = {
    "text_data": DataType.TEXT,
    "binary_data": DataType.BINARY,
    "protobuf_data": DataType.PROTOBUF,
    "json_data": DataType.JSON,
}


def decode_client_message(frame: str | bytes) -> ClientMessage:
    """Decode one client frame: a serialized ``UpstreamMessage`` in a binary frame."""
    if isinstance(frame, str):
        raise ProtocolViolation("A protobuf client sends binary frames, not text.", fatal=True)
    try:
        upstream = _UPSTREAM.FromString(frame)
    except (DecodeError, UnicodeDecodeError, RecursionError):  # the latter two: pure Python
        raise ProtocolViolation(
            "The message is not a protobuf UpstreamMessage.", fatal=True
        ) from None
    kind = upstream.WhichOneof("message")
    if kind is None:
        if not frame:
            raise ProtocolViolation("The message holds no request.", fatal=True)
        # Only fields this schema lacks: a newer client's request (its ack id, if any,
        # cannot be read), ignored as the JSON codec ignores an unknown type.
        tag, _ = _read_varint(frame, 0)
        return Unsupported(f"field {tag >> 3}")
    msg = getattr(upstream, kind)
    ack_id = _ack_id(msg) if kind not in _NO_ACK_ID else None
    try:
        if kind == "join_group_message":
            return JoinGroup(_group(msg), ack_id)
        if kind == "leave_group_message":
            return LeaveGroup(_group(msg), ack_id)
        if kind == "send_to_group_message":
            no_echo = bool(msg.no_echo)
            if msg.HasField("stream"):
                return _stream_start(msg, no_echo, ack_id)
            return SendToGroup(_group(msg), _payload(msg, ack_id), no_echo, ack_id)
        if kind == "event_message":
            name = validate_event_name(str(msg.event))
            return SendEvent(name, _payload(msg, ack_id), ack_id)
        if kind == "sequence_ack_message":
            return SequenceAck(int(msg.sequence_id))
        if kind == "ping_message":
            return Ping()
        if kind == "stream_data_message":
            return _stream_data(msg)
        if kind == "stream_end_message":
            return _stream_end(msg)
    except InvalidName as exc:
        raise ProtocolViolation(exc.message, ack_id=ack_id) from None
    raise AssertionError(f"a oneof member without a decoder: {kind}")  # pragma: no cover


_NO_ACK_ID = frozenset(
    {"sequence_ack_message", "ping_message", "stream_data_message", "stream_end_message"}
)


def ack_id_of(frame: str | bytes) -> int | None:
    """The ack_id of a client frame, if it has a valid one (whatever else is wrong)."""
    return ack_id_in(decode_client_message, frame)


def _ack_id(msg: Any) -> int | None:
    return int(msg.ack_id) if msg.HasField("ack_id") else None


def _group(msg: Any) -> str:
    return validate_group(str(msg.group))


def _stream_id(value: str) -> str:
    return checked_stream_id(value, "stream_id")


def _stream_start(msg: Any, no_echo: bool, ack_id: int | None) -> StreamStart | StreamProblem:
    """A ``send_to_group_message`` with ``stream``: the start of a stream (no data)."""
    try:
        stream_id = _stream_id(str(msg.stream.stream_id))
    except ProtocolViolation as exc:
        raise ProtocolViolation(exc.message, ack_id=ack_id) from None
    try:
        group = _group(msg)
    except InvalidName as exc:  # the stream is refused, the connection stays
        return StreamProblem(stream_id, exc.message, start=True)
    timeout: int | None = None
    if msg.stream.HasField("idle_timeout_ms"):
        timeout = int(msg.stream.idle_timeout_ms)
        if timeout == 0:  # a uint32: never above MAX_IDLE_TIMEOUT_MS
            return StreamProblem(
                stream_id,
                f"'idle_timeout_ms' must be an integer from 1 to {MAX_IDLE_TIMEOUT_MS}.",
                start=True,
            )
    if msg.HasField("data"):
        return StreamProblem(stream_id, "A stream start carries no 'data'.", start=True)
    return StreamStart(group, stream_id, timeout, no_echo, ack_id)


def _stream_data(msg: Any) -> StreamData | StreamProblem:
    """A ``stream_data_message``: a fragment (sequence id and data) or a keep-alive."""
    stream_id = _stream_id(str(msg.stream_id))
    has_sequence_id, has_data = msg.HasField("stream_sequence_id"), msg.HasField("data")
    if not has_sequence_id and not has_data:
        return StreamData(stream_id)
    if not (has_sequence_id and has_data):
        return StreamProblem(
            stream_id, "A stream fragment carries 'stream_sequence_id' and 'data'."
        )
    sequence_id = int(msg.stream_sequence_id)
    if sequence_id == 0:
        return StreamProblem(stream_id, "'stream_sequence_id' must be a positive integer.")
    try:
        payload = _payload(msg, None)
    except ProtocolViolation as exc:
        return StreamProblem(stream_id, exc.message)
    return StreamData(stream_id, sequence_id, payload)


def _stream_end(msg: Any) -> StreamEnd | StreamProblem:
    """A ``stream_end_message``, with the publisher's optional error {message, code}."""
    stream_id = _stream_id(str(msg.stream_id))
    if not msg.HasField("error"):
        return StreamEnd(stream_id)
    error = msg.error
    message = str(error.message) if error.HasField("message") else None
    code = str(error.user_error_code) if error.HasField("user_error_code") else None
    return stream_end(stream_id, message, code)


def _payload(msg: Any, ack_id: int | None) -> Payload:
    """The payload of ``msg.data`` (a ``MessageData``): its one data member."""
    data = msg.data  # absent: an empty MessageData
    member = data.WhichOneof("data")
    if member is None:
        raise ProtocolViolation("The message has no 'data'.", ack_id=ack_id)
    kind = _DATA_KINDS[member]
    if kind is DataType.BINARY:
        return Payload(kind, bytes(data.binary_data))
    if kind is DataType.PROTOBUF:  # the serialized google.protobuf.Any, unknown fields kept
        raw = bytes(data.protobuf_data.SerializeToString())
        if not _is_any(raw):
            raise ProtocolViolation(
                "'protobuf_data' is not a google.protobuf.Any: 'type_url' (1) and 'value' (2)"
                " must be length-delimited.",
                ack_id=ack_id,
            )
        return Payload(kind, raw)
    text = str(getattr(data, member))
    if kind is DataType.JSON:
        _check_json(text, ack_id)
    return Payload(kind, text.encode("utf-8"))


def _check_json(text: str, ack_id: int | None) -> None:
    """``json_data`` must be JSON text, nested at most :data:`MAX_DATA_DEPTH` deep."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolViolation("'json_data' is not valid JSON.", ack_id=ack_id) from None
    if too_deep(value, text):
        raise ProtocolViolation(
            f"JSON 'data' is nested more than {MAX_DATA_DEPTH} levels deep.", ack_id=ack_id
        )


# -- service → client ------------------------------------------------------------------


def _downstream(**member: Any) -> bytes:
    """A serialized ``DownstreamMessage`` with one member set (keyword: name=message)."""
    return bytes(message_class("DownstreamMessage")(**member).SerializeToString())


def encode_connected(
    connection_id: str, user_id: str | None, reconnection_token: str | None = None
) -> bytes:
    """``system_message.connected_message``; no user or token: the field is left out."""
    connected = message_class("ConnectedMessage")(connection_id=connection_id)
    if user_id is not None:
        connected.user_id = user_id
    if reconnection_token is not None:
        connected.reconnection_token = reconnection_token
    return _downstream(system_message=message_class("SystemMessage")(connected_message=connected))


def encode_disconnected(reason: str) -> bytes:
    disconnected = message_class("DisconnectedMessage")(reason=reason)
    return _downstream(
        system_message=message_class("SystemMessage")(disconnected_message=disconnected)
    )


def encode_ack(ack_id: int, error: WebPubSubError | None = None) -> bytes:
    """The ``ack_message`` of request ``ack_id``: success, or ``error`` by its
    ``ack_name`` (Forbidden, InternalServerError, Duplicate, BadRequest) and message."""
    ack = message_class("AckMessage")(ack_id=ack_id, success=error is None)
    if error is not None:
        ack.error.name = error.ack_name
        ack.error.message = error.message
    return _downstream(ack_message=ack)


PONG = b"\x22\x00"
"""``DownstreamMessage{pong_message: {}}``: field 4, length-delimited, empty."""


def encode_stream_ack(stream_id: str, expected_sequence_id: int) -> bytes:
    """``stream_ack_message``: every fragment before ``expected_sequence_id`` is accepted."""
    ack = message_class("StreamAckMessage")(
        stream_id=stream_id, expected_sequence_id=expected_sequence_id
    )
    return _downstream(stream_ack_message=ack)


def encode_stream_nack(stream_id: str, expected_sequence_id: int, name: str, message: str) -> bytes:
    """``stream_nack_message`` (``InvalidSequenceId`` or ``TransientError``): the stream
    lives on."""
    nack = message_class("StreamNackMessage")(
        stream_id=stream_id, name=name, message=message, expected_sequence_id=expected_sequence_id
    )
    return _downstream(stream_nack_message=nack)


def encode_stream_closed(stream_id: str, error: StreamError | None = None) -> bytes:
    """``stream_closed_message``: the publisher's stream is over (no ``error``: normally)."""
    closed = message_class("StreamClosedMessage")(stream_id=stream_id)
    if error is not None:
        closed.error.name = error.name
        closed.error.message = error.message
    return _downstream(stream_closed_message=closed)


def _stream_info(info: StreamInfo, into: Any) -> None:
    into.stream_id = info.stream_id
    into.stream_sequence_id = info.sequence_id
    if info.end:
        into.end_of_stream = True
    if info.error is not None:
        into.error.name = info.error.name
        into.error.message = info.error.message
        if info.error.user_error_code is not None:
            into.error.user_error_code = info.error.user_error_code


_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))
_PACK_2, _PACK_3 = struct.Struct("BB").pack, struct.Struct("BBB").pack


def _varint(value: int) -> bytes:
    """``value`` (0 ≤ value < 2**64) as a protobuf base-128 varint; up to three bytes
    (lengths and sequence ids under 2**21) unrolled, the fastest way in CPython."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return _PACK_2(value & 0x7F | 0x80, value >> 7)
    if value < 0x200000:
        return _PACK_3(value & 0x7F | 0x80, value >> 7 & 0x7F | 0x80, value >> 14)
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _utf8(payload: Payload) -> bytes:
    """A text payload's bytes, made UTF-8 if they are not (an event handler's text/plain
    reply may be any bytes; a protobuf string may not)."""
    try:
        payload.data.decode("utf-8")
    except UnicodeDecodeError:
        return payload.data.decode("utf-8", errors="replace").encode("utf-8")
    return payload.data


def encode_data_body(
    payload: Payload,
    *,
    group: str | None = None,
    from_user_id: str | None = None,
    stream: StreamInfo | None = None,
) -> bytes:
    """A complete ``DownstreamMessage{data_message}`` without ``sequence_id``: ``from``
    ``group`` (and ``group``) when ``group`` is given, else ``server``; ``stream``
    metadata when it belongs to a group stream.

    The protobuf ``DataMessage`` has no sender's user id: ``from_user_id`` is not sent.
    The fields are written in field-number order by hand (the payload's bytes copied
    once; a protobuf payload is the serialized ``Any`` as it came, once checked to be
    one: see :func:`_is_any`); the rare stream metadata is serialized by the
    ``protobuf`` package.
    """
    data = _utf8(payload) if payload.data_type is DataType.TEXT else payload.data
    kind = payload.data_type
    if kind is DataType.PROTOBUF and not _is_any(data):
        kind = DataType.BINARY  # a JSON client's "protobuf" bytes that are not an Any
    member = _DATA_KIND_TAGS[kind]
    parts = [_FROM_SERVER if group is None else _FROM_GROUP]
    if group is not None:
        name = group.encode("utf-8", "replace")
        parts += (_GROUP_TAG, _varint(len(name)), name)
    parts += (_DATA_TAG, _varint(len(data) + 1 + len(_varint(len(data)))), member)
    parts += (_varint(len(data)), data)
    if stream is not None:
        tail = _DATA_MESSAGE()
        _stream_info(stream, tail.stream)
        parts.append(tail.SerializeToString())
    inner = b"".join(parts)
    return b"".join((_DATA_MESSAGE_TAG, _varint(len(inner)), inner))


def _is_any(data: bytes) -> bool:
    """Whether ``data`` is a ``google.protobuf.Any`` every protobuf client can read.

    A parser such as upb keeps a ``type_url`` (1) or ``value`` (2) of the wrong wire type
    as an unknown field, but generated clients (protobufjs) read those two by number
    alone and fail on the whole message. So the fields are walked here: 1 and 2 must be
    length-delimited, any other field well formed (groups are refused). A JSON client's
    base64 ``protobuf`` data that fails goes to protobuf clients as ``binary_data``; a
    protobuf client's ``protobuf_data`` that fails is refused (``BadRequest``).
    """
    at, end = 0, len(data)
    while at < end:
        tag, at = _read_varint(data, at)
        field, wire = tag >> 3, tag & 7
        if at < 0 or field == 0 or (field in (1, 2) and wire != 2):
            return False
        if wire == 0:
            _, at = _read_varint(data, at)
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length, at = _read_varint(data, at)
            if at < 0:
                return False
            if field == 1:
                try:
                    data[at : at + length].decode("utf-8")
                except UnicodeDecodeError:
                    return False
            at += length
        else:  # 3, 4 (groups), 6, 7
            return False
        if at < 0 or at > end:
            return False
    return True


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset) of the varint at ``at``; the offset is -1 when it is
    truncated or longer than ten bytes."""
    value = shift = 0
    for _ in range(10):
        if at >= len(data):
            return 0, -1
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    return 0, -1


def with_sequence_id(body: bytes, sequence_id: int) -> bytes:
    """``body`` (from :func:`encode_data_body`) with ``data_message.sequence_id`` set.

    The varint field is appended to the inner message (a parser takes fields in any
    order) and the outer length re-framed; the payload is not re-encoded.
    """
    length, start, shift = 0, 1, 0
    if body[1] < 0x80:  # the outer length, a varint after the one-byte tag: short, or
        length, start = body[1], 2
    elif body[2] < 0x80:  # under 16 KiB, or
        length, start = body[1] & 0x7F | body[2] << 7, 3
    else:  # read byte by byte
        while True:
            byte = body[start]
            start += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
    field = _SEQUENCE_ID_TAG + _varint(sequence_id)
    return _DATA_MESSAGE_TAG + _varint(length + len(field)) + body[start:] + field
