"""The ``json.webpubsub.azure.v1`` subprotocol and its reliable variant (sans-I/O).

Client messages are decoded into frozen dataclasses (Azure docs: JSON subprotocol);
server messages are encoded to JSON text.  A data message is encoded
once per send as an *envelope body*; the reliable variant splices each
recipient's ``sequenceId`` in front of that body without re-encoding it.
"""

from __future__ import annotations

import base64
import binascii
import json

import orjson

from webpubsub.errors import InvalidName, UpstreamError, WebPubSubError
from webpubsub.protocol.messages import (
    MAX_IDLE_TIMEOUT_MS,
    CancelInvocation,
    ClientMessage,
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
    ack_id_in,
    checked_stream_id,
    stream_end,
)
from webpubsub.protocol.names import validate_event_name, validate_group
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.protocol.wsframe import Opcode

JSON_SUBPROTOCOL = "json.webpubsub.azure.v1"
JSON_RELIABLE_SUBPROTOCOL = "json.reliable.webpubsub.azure.v1"

OPCODE = Opcode.TEXT
"""JSON messages travel in text frames (a binary frame of UTF-8 JSON is read too)."""

MAX_ACK_ID = 2**64 - 1
MAX_DATA_DEPTH = 128
"""How deeply JSON ``data`` may nest (arrays and objects); deeper is a ``BadRequest``."""
MAX_INVOCATION_ID = 128
"""The longest ``invocationId`` accepted (characters); longer is a ``BadRequest``."""

#: Digits as ``0``, everything else as itself: a frame so translated holds
#: :data:`_LONG_DIGITS` where the frame holds 19 digits in a row, which a number orjson
#: may not hold exactly needs (it reads an integer outside 64 bits as a float).  Two
#: C-speed passes; a regular expression costs three times as much.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19


EMPTY_PAYLOAD = Payload(DataType.BINARY, b"")
"""An ``invoke`` without ``data``: what its handler receives."""


def decode_client_message(frame: str | bytes) -> ClientMessage:
    """Decode one client frame (JSON text; UTF-8 JSON in a binary frame is accepted)."""
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):  # orjson parses 1024 levels at most
            raise ProtocolViolation("The message nests too deeply.", fatal=True) from None
        raise ProtocolViolation("The message is not valid JSON.", fatal=True) from None
    if not isinstance(obj, dict):
        raise ProtocolViolation("The message is not a JSON object.", fatal=True)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolViolation("The message has no string 'type'.", fatal=True)
    ack_id = _ack_id(obj)
    kind_lower = kind.lower()
    try:
        if kind_lower == "joingroup":
            return JoinGroup(_group(obj), ack_id)
        if kind_lower == "leavegroup":
            return LeaveGroup(_group(obj), ack_id)
        if kind_lower == "sendtogroup":
            no_echo = obj.get("noEcho", False)
            if not isinstance(no_echo, bool):
                raise ProtocolViolation("'noEcho' must be a boolean.", ack_id=ack_id)
            if obj.get("stream") is not None:
                return _stream_start(obj, no_echo, ack_id)
            return SendToGroup(_group(obj), _payload(obj, ack_id, frame), no_echo, ack_id)
        if kind_lower == "event":
            name = obj.get("event")
            if not isinstance(name, str):
                raise ProtocolViolation("'event' must be a string.", ack_id=ack_id)
            return SendEvent(validate_event_name(name), _payload(obj, ack_id, frame), ack_id)
        if kind_lower == "invoke":
            return _invoke(obj, frame)
        if kind_lower == "cancelinvocation":
            return CancelInvocation(_invocation_id(obj))
        if kind_lower == "sequenceack":
            seq = obj.get("sequenceId")
            if not _is_uint64(seq):
                raise ProtocolViolation("'sequenceId' must be an unsigned integer.")
            return SequenceAck(seq)  # type: ignore[arg-type]
        if kind_lower == "ping":
            return Ping()
        if kind_lower == "streamdata":
            return _stream_data(obj, frame)
        if kind_lower == "streamend":
            return _stream_end(obj)
    except InvalidName as exc:
        raise ProtocolViolation(exc.message, ack_id=ack_id) from None
    return Unsupported(kind, ack_id)


def ack_id_of(frame: str | bytes) -> int | None:
    """The ackId of a client frame, if it has a valid one (whatever else is wrong)."""
    return ack_id_in(decode_client_message, frame)


def _ack_id(obj: dict[str, object]) -> int | None:
    if "ackId" not in obj or obj["ackId"] is None:
        return None
    value = obj["ackId"]
    if not _is_uint64(value):
        raise ProtocolViolation("'ackId' must be an unsigned 64-bit integer.", fatal=True)
    return value  # type: ignore[return-value]


def _invocation_id(obj: dict[str, object]) -> str:
    value = obj.get("invocationId")
    if not isinstance(value, str) or not value:
        raise ProtocolViolation("'invocationId' must be a non-empty string.")
    if len(value) > MAX_INVOCATION_ID:
        raise ProtocolViolation(f"'invocationId' is longer than {MAX_INVOCATION_ID} characters.")
    return value


def _invoke(obj: dict[str, object], frame: str | bytes) -> Invoke:
    invocation_id = _invocation_id(obj)
    try:
        if obj.get("target", "event") != "event":
            raise ProtocolViolation("'target' must be \"event\".")
        name = obj.get("event")
        if not isinstance(name, str):
            raise ProtocolViolation("'event' must be a string.")
        event = validate_event_name(name)
        payload = _payload(obj, None, frame) if obj.get("data") is not None else EMPTY_PAYLOAD
    except (ProtocolViolation, InvalidName) as exc:
        raise ProtocolViolation(exc.message, invocation_id=invocation_id) from None
    return Invoke(invocation_id, event, payload)


def _stream_id(value: object) -> str:
    return checked_stream_id(value, "streamId")


def _stream_start(
    obj: dict[str, object], no_echo: bool, ack_id: int | None
) -> StreamStart | StreamProblem:
    """A ``sendToGroup`` with ``stream``: the start of a stream (no data allowed)."""
    stream = obj["stream"]
    if not isinstance(stream, dict):
        raise ProtocolViolation("'stream' must be an object.", ack_id=ack_id)
    try:
        stream_id = _stream_id(stream.get("streamId"))
    except ProtocolViolation as exc:
        raise ProtocolViolation(exc.message, ack_id=ack_id) from None
    try:
        group = _group(obj)
    except InvalidName as exc:  # the stream is refused, the connection stays
        return StreamProblem(stream_id, exc.message, start=True)
    timeout = stream.get("idleTimeoutMs")
    if timeout is not None and not (
        isinstance(timeout, int) and _is_uint64(timeout) and 0 < timeout <= MAX_IDLE_TIMEOUT_MS
    ):
        return StreamProblem(
            stream_id,
            f"'idleTimeoutMs' must be an integer from 1 to {MAX_IDLE_TIMEOUT_MS}.",
            start=True,
        )
    if "data" in obj or "dataType" in obj:
        return StreamProblem(
            stream_id, "A stream start carries no 'data' or 'dataType'.", start=True
        )
    return StreamStart(group, stream_id, timeout, no_echo, ack_id)


def _stream_data(obj: dict[str, object], frame: str | bytes) -> StreamData | StreamProblem:
    """A ``streamData``: a fragment (sequence id, data type and data) or a keep-alive."""
    stream_id = _stream_id(obj.get("streamId"))
    present = [key in obj for key in ("streamSequenceId", "dataType", "data")]
    if not any(present):
        return StreamData(stream_id)
    if not all(present):
        return StreamProblem(
            stream_id, "A stream fragment carries 'streamSequenceId', 'dataType' and 'data'."
        )
    sequence_id = obj["streamSequenceId"]
    if not isinstance(sequence_id, int) or not _is_uint64(sequence_id) or sequence_id == 0:
        return StreamProblem(stream_id, "'streamSequenceId' must be a positive integer.")
    try:
        payload = _payload(obj, None, frame)
    except ProtocolViolation as exc:
        return StreamProblem(stream_id, exc.message)
    return StreamData(stream_id, sequence_id, payload)


def _stream_end(obj: dict[str, object]) -> StreamEnd | StreamProblem:
    """A ``streamEnd``, with the publisher's optional ``error`` {message, userErrorCode}."""
    stream_id = _stream_id(obj.get("streamId"))
    error = obj.get("error")
    if error is None:
        return StreamEnd(stream_id)
    if not isinstance(error, dict):
        return StreamProblem(stream_id, "'error' must be an object.")
    message, code = error.get("message"), error.get("userErrorCode")
    if not isinstance(message, str | None) or not isinstance(code, str | None):
        return StreamProblem(stream_id, "'error.message' and 'error.userErrorCode' are strings.")
    return stream_end(stream_id, message, code)


def _is_uint64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_ACK_ID


def _group(obj: dict[str, object]) -> str:
    group = obj.get("group")
    if not isinstance(group, str):
        raise InvalidName("'group' must be a string.")
    return validate_group(group)


def _payload(obj: dict[str, object], ack_id: int | None, frame: str | bytes) -> Payload:
    raw_type = obj.get("dataType", "json")
    try:
        data_type = DataType(raw_type.lower() if isinstance(raw_type, str) else "")
    except ValueError:
        raise ProtocolViolation(
            "'dataType' must be one of json, text, binary, protobuf.", ack_id=ack_id
        ) from None
    if "data" not in obj:
        raise ProtocolViolation("The message has no 'data'.", ack_id=ack_id)
    data = obj["data"]
    if data_type is DataType.JSON:
        if data is None:
            raise ProtocolViolation("JSON 'data' must not be null.", ack_id=ack_id)
        return Payload(DataType.JSON, _json_text(data, frame, ack_id))
    if not isinstance(data, str):
        raise ProtocolViolation(f"'{data_type}' data must be a string.", ack_id=ack_id)
    if data_type is DataType.TEXT:
        return Payload(DataType.TEXT, data.encode("utf-8"))
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolViolation(f"'{data_type}' data must be base64.", ack_id=ack_id) from None
    return Payload(data_type, raw)


def _json_text(data: object, frame: str | bytes, ack_id: int | None) -> bytes:
    """The JSON text of ``data`` (parsed from ``frame``), with every number exact.

    The common path re-encodes orjson's value.  A frame holding a run of 19 or more
    digits may hold an integer outside 64 bits, which orjson reads as a float: that
    frame is parsed again by the standard library, whose integers are exact.
    """
    if too_deep(data, frame):
        raise ProtocolViolation(
            f"JSON 'data' is nested more than {MAX_DATA_DEPTH} levels deep.", ack_id=ack_id
        )
    raw = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
    if _LONG_DIGITS not in raw.translate(_DIGITS_AS_ZERO):
        return orjson.dumps(data)
    try:
        exact = json.loads(frame)["data"]
    except RecursionError:  # another member nests deeper than the stdlib parser goes
        raise ProtocolViolation("The message is nested too deeply.", ack_id=ack_id) from None
    return json.dumps(exact, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def too_deep(data: object, frame: str | bytes) -> bool:
    """Whether ``data`` nests deeper than :data:`MAX_DATA_DEPTH` (``[1]`` is 1 deep)."""
    if isinstance(frame, str):
        brackets = frame.count("[") + frame.count("{")
    else:
        brackets = frame.count(b"[") + frame.count(b"{")
    if brackets <= MAX_DATA_DEPTH:  # cannot be deeper than it has brackets: no walk
        return False
    stack: list[tuple[object, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > MAX_DATA_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in value)
    return False


# -- service → client ------------------------------------------------------------------


def encode_connected(
    connection_id: str, user_id: str | None, reconnection_token: str | None = None
) -> bytes:
    msg: dict[str, object] = {
        "type": "system",
        "event": "connected",
        "userId": user_id,
        "connectionId": connection_id,
    }
    if reconnection_token is not None:
        msg["reconnectionToken"] = reconnection_token
    return orjson.dumps(msg)


def encode_disconnected(reason: str) -> bytes:
    return orjson.dumps({"type": "system", "event": "disconnected", "message": reason})


def encode_ack(ack_id: int, error: WebPubSubError | None = None) -> bytes:
    """The ``ack`` of request ``ack_id``: success, or ``error`` by its ``ack_name``
    (Forbidden, InternalServerError, Duplicate, BadRequest) and message."""
    if error is None:
        return orjson.dumps({"type": "ack", "ackId": ack_id, "success": True})
    return orjson.dumps(
        {
            "type": "ack",
            "ackId": ack_id,
            "success": False,
            "error": {"name": error.ack_name, "message": error.message},
        }
    )


PONG = b'{"type":"pong"}'


def encode_invoke_response(invocation_id: str, payload: Payload | None) -> bytes:
    """The successful ``invokeResponse`` of ``invocation_id``: the handler's body as
    ``dataType``/``data`` (as a data message carries it), none when it had none."""
    head = b'{"type":"invokeResponse","invocationId":' + orjson.dumps(invocation_id)
    head += b',"success":true'
    if payload is None:
        return head + b"}"
    return (
        head
        + b',"dataType":"'
        + payload.data_type.value.encode()
        + b'","data":'
        + _data(payload)
        + b"}"
    )


def encode_invoke_error(invocation_id: str, error: WebPubSubError) -> bytes:
    """The failed ``invokeResponse`` of ``invocation_id``: ``error`` by its ``ack_name``
    and message (an upstream failure by its :attr:`~UpstreamError.client_message`)."""
    message = error.client_message if isinstance(error, UpstreamError) else error.message
    return orjson.dumps(
        {
            "type": "invokeResponse",
            "invocationId": invocation_id,
            "success": False,
            "error": {"name": error.ack_name, "message": message},
        }
    )


def encode_stream_ack(stream_id: str, expected_sequence_id: int) -> bytes:
    """``streamAck``: every fragment before ``expected_sequence_id`` is accepted."""
    return orjson.dumps(
        {"type": "streamAck", "streamId": stream_id, "expectedSequenceId": expected_sequence_id}
    )


def encode_stream_nack(stream_id: str, expected_sequence_id: int, name: str, message: str) -> bytes:
    """``streamNack`` (``InvalidSequenceId`` or ``TransientError``): the stream lives on."""
    return orjson.dumps(
        {
            "type": "streamNack",
            "streamId": stream_id,
            "expectedSequenceId": expected_sequence_id,
            "name": name,
            "message": message,
        }
    )


def encode_stream_closed(stream_id: str, error: StreamError | None = None) -> bytes:
    """``streamClosed``: the publisher's stream is over (``error`` absent: normally)."""
    msg: dict[str, object] = {"type": "streamClosed", "streamId": stream_id}
    if error is not None:
        msg["error"] = {"name": error.name, "message": error.message}
    return orjson.dumps(msg)


def _stream(info: StreamInfo) -> bytes:
    """``info`` as the JSON value of a group message's ``stream`` member."""
    member: dict[str, object] = {"streamId": info.stream_id, "streamSequenceId": info.sequence_id}
    if info.end:
        member["endOfStream"] = True
    if info.error is not None:
        error: dict[str, object] = {"name": info.error.name, "message": info.error.message}
        if info.error.user_error_code is not None:
            error["userErrorCode"] = info.error.user_error_code
        member["error"] = error
    return orjson.dumps(member)


def _data(payload: Payload) -> bytes:
    """``payload`` as the JSON value of a ``data`` member."""
    if payload.data_type is DataType.JSON:
        return payload.data
    if payload.data_type is DataType.TEXT:
        return orjson.dumps(payload.data.decode("utf-8", errors="replace"))
    return b'"' + base64.b64encode(payload.data) + b'"'


def encode_data_body(
    payload: Payload,
    *,
    group: str | None = None,
    from_user_id: str | None = None,
    stream: StreamInfo | None = None,
) -> bytes:
    """The envelope of a data message, ``from: group`` when ``group`` is given, with
    ``stream`` metadata when it belongs to a group stream.

    JSON data is spliced in as the JSON text it already is; binary and protobuf
    data are base64 strings.
    """
    data = _data(payload)
    if group is None:
        head = b'{"type":"message","from":"server"'
    else:
        head = b'{"type":"message","from":"group","group":' + orjson.dumps(group)
        head += b',"fromUserId":' + orjson.dumps(from_user_id)
    tail = b"}" if stream is None else b',"stream":' + _stream(stream) + b"}"
    return head + b',"dataType":"' + payload.data_type.value.encode() + b'","data":' + data + tail


def with_sequence_id(body: bytes, sequence_id: int) -> bytes:
    """The reliable form of an envelope body: ``sequenceId`` spliced in first."""
    return b'{"sequenceId":' + str(sequence_id).encode() + b"," + body[1:]
