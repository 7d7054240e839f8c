"""The json.webpubsub.azure.v1 codec, against the frames the official SDKs send and
expect (the official SDKs' traffic, Azure docs: JSON subprotocol)."""

from __future__ import annotations

import base64
import contextlib
import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import (
    BadRequest,
    Duplicate,
    Forbidden,
    InvalidName,
    UpstreamError,
    WebPubSubError,
)
from webpubsub.protocol.json_protocol import (
    EMPTY_PAYLOAD,
    MAX_DATA_DEPTH,
    MAX_INVOCATION_ID,
    PONG,
    decode_client_message,
    encode_ack,
    encode_connected,
    encode_data_body,
    encode_disconnected,
    encode_invoke_error,
    encode_invoke_response,
    encode_stream_ack,
    encode_stream_closed,
    encode_stream_nack,
    with_sequence_id,
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
    StreamEndError,
    StreamError,
    StreamInfo,
    StreamProblem,
    StreamStart,
    Unsupported,
)
from webpubsub.protocol.payload import DataType, Payload

# Frames exactly as the Python client 1.1.0 sends them (observed, scenario A).
OBSERVED = [
    ('{"type": "joinGroup", "group": "g1", "ackId": 1}', JoinGroup("g1", 1)),
    ('{"type": "leaveGroup", "group": "g1", "ackId": 8}', LeaveGroup("g1", 8)),
    (
        '{"type": "sendToGroup", "group": "g1", "ackId": 2, "dataType": "text", '
        '"data": "hello text", "noEcho": false}',
        SendToGroup("g1", Payload.text("hello text"), False, 2),
    ),
    (
        '{"type": "sendToGroup", "group": "g1", "ackId": 3, "dataType": "json", '
        '"data": {"a": 1, "b": [1, 2]}, "noEcho": false}',
        SendToGroup("g1", Payload(DataType.JSON, b'{"a":1,"b":[1,2]}'), False, 3),
    ),
    (
        '{"type": "sendToGroup", "group": "g1", "ackId": 4, "dataType": "binary", '
        '"data": "AAH/", "noEcho": false}',
        SendToGroup("g1", Payload.binary(b"\x00\x01\xff"), False, 4),
    ),
    (
        '{"type": "sendToGroup", "group": "g1", "dataType": "text", "data": "no echo", '
        '"noEcho": true}',
        SendToGroup("g1", Payload.text("no echo"), True, None),
    ),
    (
        '{"type": "event", "event": "myEvent", "ackId": 6, "dataType": "text", "data": "evt text"}',
        SendEvent("myEvent", Payload.text("evt text"), 6),
    ),
    (
        '{"type": "event", "event": "myEvent", "dataType": "binary", "data": "AgM="}',
        SendEvent("myEvent", Payload.binary(b"\x02\x03"), None),
    ),
    ('{"type": "sequenceAck", "sequenceId": 10}', SequenceAck(10)),
    ('{"type":"ping"}', Ping()),
]


@pytest.mark.parametrize(("frame", "expected"), OBSERVED)
def test_decodes_the_frames_the_sdks_send(frame: str, expected: object) -> None:
    assert decode_client_message(frame) == expected
    assert decode_client_message(frame.encode()) == expected  # binary frames too


def test_data_type_defaults_to_json_and_type_is_case_insensitive() -> None:
    msg = decode_client_message('{"type": "SendToGroup", "group": "g", "data": [1]}')
    assert msg == SendToGroup("g", Payload(DataType.JSON, b"[1]"))


def test_unknown_types_are_unsupported_not_fatal() -> None:
    frame = '{"type": "futureRequest", "ackId": 3}'
    assert decode_client_message(frame) == Unsupported("futureRequest", 3)


@pytest.mark.parametrize(
    "frame",
    ["not json", "[1, 2]", '"text"', "{}", '{"type": 1}', '{"type": "ping", "ackId": -1}'],
)
def test_frames_that_are_not_requests_are_fatal(frame: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_client_message(frame)
    assert info.value.fatal


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ('{"type": "joinGroup", "ackId": 5}', "group"),
        ('{"type": "joinGroup", "group": "", "ackId": 5}', "group"),
        ('{"type": "joinGroup", "group": "   ", "ackId": 5}', "group"),
        (
            '{"type": "sendToGroup", "group": "g", "ackId": 5, "dataType": "binary", "data": "!"}',
            "base64",
        ),
        (
            '{"type": "sendToGroup", "group": "g", "ackId": 5, "dataType": "text", "data": 1}',
            "string",
        ),
        (
            '{"type": "sendToGroup", "group": "g", "ackId": 5, "dataType": "json", "data": null}',
            "null",
        ),
        (
            '{"type": "sendToGroup", "group": "g", "ackId": 5, "dataType": "xml", "data": "x"}',
            "dataType",
        ),
        ('{"type": "sendToGroup", "group": "g", "ackId": 5, "dataType": "text"}', "data"),
        ('{"type": "sendToGroup", "group": "g", "ackId": 5, "data": 1, "noEcho": "yes"}', "noEcho"),
        ('{"type": "event", "event": "1bad", "ackId": 5, "data": 1}', "event"),
        ('{"type": "event", "ackId": 5, "data": 1}', "event"),
    ],
)
def test_bad_requests_keep_their_ack_id(frame: str, message: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_client_message(frame)
    assert info.value.ack_id == 5
    assert not info.value.fatal
    assert message in info.value.message


def test_server_messages_match_the_observed_frames() -> None:
    assert orjson.loads(encode_connected("conn-1", "user1", "tok")) == {
        "type": "system",
        "event": "connected",
        "userId": "user1",
        "connectionId": "conn-1",
        "reconnectionToken": "tok",
    }
    assert "reconnectionToken" not in orjson.loads(encode_connected("c", None))
    assert orjson.loads(encode_disconnected("bye")) == {
        "type": "system",
        "event": "disconnected",
        "message": "bye",
    }
    assert orjson.loads(encode_ack(1)) == {"type": "ack", "ackId": 1, "success": True}
    assert orjson.loads(encode_ack(5, Duplicate(5))) == {
        "type": "ack",
        "ackId": 5,
        "success": False,
        "error": {"name": "Duplicate", "message": "Message with ack-id: 5 has been processed"},
    }
    # Every error type maps to its ack name in one place.
    for error, name in (
        (BadRequest("b"), "BadRequest"),
        (InvalidName("n"), "BadRequest"),
        (Forbidden("f"), "Forbidden"),
        (UpstreamError("u"), "InternalServerError"),
        (WebPubSubError("w"), "InternalServerError"),
    ):
        assert orjson.loads(encode_ack(2, error))["error"] == {
            "name": name,
            "message": error.message,
        }
    assert orjson.loads(PONG) == {"type": "pong"}


def test_data_envelopes() -> None:
    body = encode_data_body(Payload.text("hello text"), group="g1", from_user_id="user1")
    assert orjson.loads(body) == {
        "type": "message",
        "from": "group",
        "group": "g1",
        "fromUserId": "user1",
        "dataType": "text",
        "data": "hello text",
    }
    assert orjson.loads(with_sequence_id(body, 3))["sequenceId"] == 3
    assert orjson.loads(encode_data_body(Payload(DataType.JSON, b'{"push": 0}'))) == {
        "type": "message",
        "from": "server",
        "dataType": "json",
        "data": {"push": 0},
    }
    binary = orjson.loads(encode_data_body(Payload.binary(b"\x00\x01\xff")))
    assert binary["dataType"] == "binary" and binary["data"] == "AAH/"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


def wire_data(kind: str, value: object, raw: bytes) -> object:
    """The ``data`` member a client sends for ``kind`` (JSON data is never null)."""
    if kind == "json":
        return 0 if value is None else value
    return str(value) if kind == "text" else base64.b64encode(raw).decode()


@given(
    group=st.text(min_size=1, max_size=50).filter(lambda g: g.strip()),
    kind=st.sampled_from(["text", "json", "binary"]),
    value=json_values,
    raw=st.binary(max_size=64),
    ack=st.none() | st.integers(0, 2**64 - 1),
    no_echo=st.booleans(),
    user=st.none() | st.text(max_size=20),
)
def test_publish_round_trip(
    group: str,
    kind: str,
    value: object,
    raw: bytes,
    ack: int | None,
    no_echo: bool,
    user: str | None,
) -> None:
    """What a client publishes reaches others with the same data and data type."""
    data = wire_data(kind, value, raw)
    frame = {
        "type": "sendToGroup",
        "group": group,
        "dataType": kind,
        "data": data,
        "noEcho": no_echo,
    }
    if ack is not None:
        frame["ackId"] = ack
    msg = decode_client_message(orjson.dumps(frame))
    assert isinstance(msg, SendToGroup)
    assert (msg.group, msg.ack_id, msg.no_echo) == (group, ack, no_echo)
    out = orjson.loads(encode_data_body(msg.payload, group=group, from_user_id=user))
    assert out["group"] == group and out["fromUserId"] == user and out["dataType"] == kind
    assert out["data"] == data


@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_input_raises_only_protocol_violation(frame: bytes | str) -> None:
    with contextlib.suppress(ProtocolViolation):
        decode_client_message(frame)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "group",
                "ackId",
                "data",
                "dataType",
                "event",
                "noEcho",
                "sequenceId",
                "invocationId",
                "target",
                "stream",
                "streamId",
                "streamSequenceId",
                "error",
            ]
        ),
        json_values
        | st.sampled_from(
            [
                "joinGroup",
                "sendToGroup",
                "event",
                "sequenceAck",
                "ping",
                "invoke",
                "cancelInvocation",
                "streamData",
                "streamEnd",
            ]
        )
        | st.fixed_dictionaries({"streamId": json_values | st.text(max_size=5)}),
    )
)
def test_arbitrary_objects_raise_only_protocol_violation(obj: dict[str, object]) -> None:
    with contextlib.suppress(ProtocolViolation):
        decode_client_message(orjson.dumps(obj))


# -- nesting depth and big integers (issue 10) ------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [MAX_DATA_DEPTH + 1, 255, 300, 1023])
def test_data_nested_too_deeply_is_a_bad_request(depth: int) -> None:
    frame = '{"type":"sendToGroup","group":"g","ackId":5,"data":' + _nested(depth) + "}"
    with pytest.raises(ProtocolViolation) as caught:
        decode_client_message(frame)
    assert caught.value.ack_id == 5 and not caught.value.fatal
    assert "nested" in caught.value.message


def test_data_nested_to_the_limit_passes_through() -> None:
    frame = '{"type":"event","event":"e","data":' + _nested(MAX_DATA_DEPTH) + "}"
    msg = decode_client_message(frame)
    assert isinstance(msg, SendEvent)
    assert msg.payload.data == _nested(MAX_DATA_DEPTH).encode()


def test_a_frame_past_the_parser_depth_is_fatal() -> None:
    with pytest.raises(ProtocolViolation) as caught:
        decode_client_message('{"type":"ping","x":' + _nested(2000) + "}")
    assert caught.value.fatal and caught.value.message == "The message nests too deeply."


@pytest.mark.parametrize(
    "number",
    [
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
        "18446744073709551616",
        "-9223372036854775809",
        "18446744073709551615",
    ],
)
def test_big_integers_in_json_data_pass_through_exactly(number: str) -> None:
    frame = '{"type":"sendToGroup","group":"g","data":{"n":' + number + ',"s":"x"}}'
    msg = decode_client_message(frame)
    assert isinstance(msg, SendToGroup)
    assert msg.payload.data == b'{"n":' + number.encode() + b',"s":"x"}'


@given(
    st.recursive(
        st.integers()
        | st.integers(min_value=2**64)
        | st.text(max_size=10)
        | st.booleans()
        | st.floats(allow_nan=False, allow_infinity=False),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=20,
    )
)
def test_json_data_values_pass_through_exactly(value: object) -> None:
    """Any JSON value (integers of any size included) arrives as the value sent."""
    text = json.dumps(value)
    frame = '{"type":"event","event":"e","dataType":"json","data":' + text + "}"
    msg = decode_client_message(frame)
    assert isinstance(msg, SendEvent)
    assert json.loads(msg.payload.data) == value


@given(st.integers(1, 1100), st.sampled_from(["[", '{"a":']))
def test_any_depth_raises_only_protocol_violation(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    data = opener * depth + "1" + closer * depth
    frame = '{"type":"event","event":"e","ackId":1,"data":' + data + "}"
    try:
        msg = decode_client_message(frame)
    except ProtocolViolation as exc:  # past orjson's 1024 levels the frame is not read
        assert depth > MAX_DATA_DEPTH
        assert exc.ack_id == 1 or (exc.fatal and depth >= 1024 and "deep" in exc.message)
    else:
        assert depth <= MAX_DATA_DEPTH
        assert isinstance(msg, SendEvent) and msg.payload.data == data.encode()


# -- invoke -------------------------------------------------------------------------
# Frames as @azure/web-pubsub-client 1.1.0 writes them (dist/esm/protocols/jsonProtocolBase.js,
# ``writeMessage``: ``dataType``/``data`` only when the data is not null).
INVOKE_FRAMES = [
    (
        '{"type":"invoke","invocationId":"1","target":"event","event":"add",'
        '"dataType":"json","data":{"a":1}}',
        Invoke("1", "add", Payload(DataType.JSON, b'{"a":1}')),
    ),
    (
        '{"type":"invoke","invocationId":"2","target":"event","event":"echo",'
        '"dataType":"text","data":"hi"}',
        Invoke("2", "echo", Payload.text("hi")),
    ),
    (
        '{"type":"invoke","invocationId":"x","target":"event","event":"raw",'
        '"dataType":"binary","data":"AAH/"}',
        Invoke("x", "raw", Payload.binary(b"\x00\x01\xff")),
    ),
    (
        '{"type":"invoke","invocationId":"3","target":"event","event":"nothing"}',
        Invoke("3", "nothing", EMPTY_PAYLOAD),
    ),
    ('{"type":"cancelInvocation","invocationId":"1"}', CancelInvocation("1")),
]


@pytest.mark.parametrize(("frame", "expected"), INVOKE_FRAMES)
def test_decodes_the_invocations_the_js_client_sends(frame: str, expected: object) -> None:
    assert decode_client_message(frame) == expected


@pytest.mark.parametrize(
    ("frame", "invocation_id", "message"),
    [
        ('{"type":"invoke","invocationId":"1","target":"group","event":"e"}', "1", "target"),
        ('{"type":"invoke","invocationId":"1","target":"event"}', "1", "'event'"),
        ('{"type":"invoke","invocationId":"1","event":"9bad"}', "1", "event name"),
        (
            '{"type":"invoke","invocationId":"1","event":"e","dataType":"xml","data":"a"}',
            "1",
            "dataType",
        ),
        ('{"type":"invoke","event":"e"}', None, "invocationId"),
        ('{"type":"invoke","invocationId":"","event":"e"}', None, "invocationId"),
        ('{"type":"invoke","invocationId":7,"event":"e"}', None, "invocationId"),
        ('{"type":"cancelInvocation"}', None, "invocationId"),
        (
            '{"type":"invoke","invocationId":"' + "i" * (MAX_INVOCATION_ID + 1) + '","event":"e"}',
            None,
            "longer",
        ),
    ],
)
def test_bad_invocations_keep_their_id_when_readable(
    frame: str, invocation_id: str | None, message: str
) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_client_message(frame)
    assert info.value.invocation_id == invocation_id
    assert message in info.value.message
    assert not info.value.fatal and info.value.ack_id is None


def test_invoke_responses_are_what_the_js_client_parses() -> None:
    """``parseMessages`` in jsonProtocolBase.js reads type, invocationId, success,
    dataType/data (parsed by dataType) and error."""
    assert (
        encode_invoke_response("1", Payload(DataType.JSON, b'{"sum":3}'))
        == b'{"type":"invokeResponse","invocationId":"1","success":true,'
        b'"dataType":"json","data":{"sum":3}}'
    )
    assert (
        encode_invoke_response("2", Payload.text("hi"))
        == b'{"type":"invokeResponse","invocationId":"2","success":true,'
        b'"dataType":"text","data":"hi"}'
    )
    assert (
        encode_invoke_response("3", Payload.binary(b"\x00\x01\xff"))
        == b'{"type":"invokeResponse","invocationId":"3","success":true,'
        b'"dataType":"binary","data":"AAH/"}'
    )
    assert (
        encode_invoke_response("4", None)
        == b'{"type":"invokeResponse","invocationId":"4","success":true}'
    )
    assert (
        encode_invoke_error("5", UpstreamError("http://secret/ refused", status=500))
        == b'{"type":"invokeResponse","invocationId":"5","success":false,'
        b'"error":{"name":"InternalServerError",'
        b'"message":"The event handler failed (status 500)."}}'
    )
    assert json.loads(encode_invoke_error("6", BadRequest("no"))) == {
        "type": "invokeResponse",
        "invocationId": "6",
        "success": False,
        "error": {"name": "BadRequest", "message": "no"},
    }


@given(
    invocation_id=st.text(min_size=1, max_size=MAX_INVOCATION_ID),
    event=st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,20}", fullmatch=True),
    kind=st.sampled_from(["text", "json", "binary"]),
    value=json_values,
    raw=st.binary(max_size=64),
)
def test_invoke_round_trip(
    invocation_id: str, event: str, kind: str, value: object, raw: bytes
) -> None:
    """An invoke's data reaches the handler as sent, and the same payload as a response
    reads back as that data with its data type."""
    data = wire_data(kind, value, raw)
    frame = {
        "type": "invoke",
        "invocationId": invocation_id,
        "target": "event",
        "event": event,
        "dataType": kind,
        "data": data,
    }
    msg = decode_client_message(orjson.dumps(frame))
    assert isinstance(msg, Invoke)
    assert (msg.invocation_id, msg.event, msg.payload.data_type.value) == (
        invocation_id,
        event,
        kind,
    )
    out = orjson.loads(encode_invoke_response(invocation_id, msg.payload))
    assert out == {
        "type": "invokeResponse",
        "invocationId": invocation_id,
        "success": True,
        "dataType": kind,
        "data": data,
    }
    cancel = decode_client_message(
        orjson.dumps({"type": "cancelInvocation", "invocationId": invocation_id})
    )
    assert cancel == CancelInvocation(invocation_id)


# -- group streams -----------------------------------------------------------------------


def test_stream_messages_decode_as_the_js_client_sends_them() -> None:
    start = {"type": "sendToGroup", "group": "g", "noEcho": True}
    start["stream"] = {"streamId": "s", "idleTimeoutMs": 5000}
    assert decode_client_message(orjson.dumps(start)) == StreamStart("g", "s", 5000, True)
    fragment = {"type": "streamData", "streamId": "s", "streamSequenceId": 3}
    fragment |= {"dataType": "json", "data": {"x": 1}}
    assert decode_client_message(orjson.dumps(fragment)) == StreamData(
        "s", 3, Payload(DataType.JSON, b'{"x":1}')
    )
    keep_alive = {"type": "streamData", "streamId": "s"}
    assert decode_client_message(orjson.dumps(keep_alive)) == StreamData("s")
    end = {"type": "streamEnd", "streamId": "s", "error": {"message": "m", "userErrorCode": "E"}}
    assert decode_client_message(orjson.dumps(end)) == StreamEnd("s", StreamEndError("m", "E"))
    assert decode_client_message(orjson.dumps({"type": "streamEnd", "streamId": "s"})) == (
        StreamEnd("s")
    )


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ({"type": "streamData", "streamId": "s", "streamSequenceId": 1}, "carries"),
        ({"type": "streamData", "streamId": "s", "dataType": "text", "data": "x"}, "carries"),
        (
            {"type": "streamData", "streamId": "s", "streamSequenceId": 0}
            | {"dataType": "text", "data": "x"},
            "positive",
        ),
        (
            {"type": "streamData", "streamId": "s", "streamSequenceId": 1}
            | {"dataType": "binary", "data": "!"},
            "base64",
        ),
        ({"type": "streamEnd", "streamId": "s", "error": "no"}, "object"),
        ({"type": "streamEnd", "streamId": "s", "error": {"message": 1}}, "strings"),
        (
            {"type": "streamEnd", "streamId": "s", "error": {"message": "x" * 5000}},
            "longer",
        ),
        (
            {"type": "sendToGroup", "group": "g", "stream": {"streamId": "s", "idleTimeoutMs": 0}},
            "idleTimeoutMs",
        ),
        (
            {"type": "sendToGroup", "group": "g", "stream": {"streamId": "s"}, "data": "x"},
            "no 'data'",
        ),
    ],
)
def test_a_bad_stream_message_is_a_problem_of_its_stream(obj: dict[str, object], why: str) -> None:
    problem = decode_client_message(orjson.dumps(obj))
    assert isinstance(problem, StreamProblem) and problem.stream_id == "s"
    assert why in problem.message


@pytest.mark.parametrize(
    "obj",
    [
        {"type": "streamData"},
        {"type": "streamData", "streamId": ""},
        {"type": "streamEnd", "streamId": "x" * 129},
        {"type": "sendToGroup", "group": "g", "stream": {"streamId": 5}, "ackId": 2},
        {"type": "sendToGroup", "group": "g", "stream": "s", "ackId": 2},
    ],
)
def test_a_stream_message_without_a_usable_stream_id_is_a_violation(obj: dict[str, object]) -> None:
    with pytest.raises(ProtocolViolation) as info:
        decode_client_message(orjson.dumps(obj))
    assert info.value.ack_id == obj.get("ackId")


@given(
    stream_id=st.text(min_size=1, max_size=128),
    seq=st.integers(1, 2**64 - 1),
    text=st.text(max_size=50),
    end=st.booleans(),
    error=st.none()
    | st.tuples(st.text(max_size=20), st.text(max_size=20), st.none() | st.text(max_size=10)),
)
def test_stream_fragments_and_metadata_round_trip(
    stream_id: str,
    seq: int,
    text: str,
    end: bool,
    error: tuple[str, str, str | None] | None,
) -> None:
    raw = {"type": "streamData", "streamId": stream_id, "streamSequenceId": seq}
    raw |= {"dataType": "text", "data": text}
    assert decode_client_message(orjson.dumps(raw)) == StreamData(
        stream_id, seq, Payload.text(text)
    )
    info = StreamInfo(stream_id, seq, end, StreamError(*error) if error else None)
    body = orjson.loads(encode_data_body(Payload.text(text), group="g", stream=info))
    expected: dict[str, object] = {"streamId": stream_id, "streamSequenceId": seq}
    if end:
        expected["endOfStream"] = True
    if error:
        expected["error"] = {"name": error[0], "message": error[1]}
        if error[2] is not None:
            expected["error"]["userErrorCode"] = error[2]  # type: ignore[index]
    assert body["stream"] == expected and body["data"] == text


def test_stream_answers_are_encoded_as_the_reference_shows() -> None:
    assert orjson.loads(encode_stream_ack("s", 2)) == {
        "type": "streamAck",
        "streamId": "s",
        "expectedSequenceId": 2,
    }
    assert orjson.loads(encode_stream_nack("s", 2, "InvalidSequenceId", "m")) == {
        "type": "streamNack",
        "streamId": "s",
        "expectedSequenceId": 2,
        "name": "InvalidSequenceId",
        "message": "m",
    }
    assert orjson.loads(encode_stream_closed("s")) == {"type": "streamClosed", "streamId": "s"}
    assert orjson.loads(encode_stream_closed("s", StreamError("IdleTimeout", "m", "x"))) == {
        "type": "streamClosed",
        "streamId": "s",
        "error": {"name": "IdleTimeout", "message": "m"},
    }
