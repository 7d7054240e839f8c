"""The protobuf.webpubsub.azure.v1 codec, against bytes computed by hand from the wire
format (tag = field number << 3 | wire type; 0 varint, 2 length-delimited) and against
the independent test client of tests/support/protobuf_client.py (Azure docs: protobuf
subprotocol; the schema's choices: docs/compatibility.md)."""

from __future__ import annotations

import contextlib
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support import protobuf_client as pc
from tests.support.fuzz import at_least
from webpubsub.errors import (
    BadRequest,
    Duplicate,
    Forbidden,
    InvalidName,
    UpstreamError,
    WebPubSubError,
)
from webpubsub.protocol import protobuf_protocol as pb
from webpubsub.protocol.json_protocol import MAX_DATA_DEPTH
from webpubsub.protocol.messages import (
    MAX_STREAM_ERROR,
    MAX_STREAM_ID,
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
    StreamEndError,
    StreamError,
    StreamInfo,
    StreamProblem,
    StreamStart,
    Unsupported,
)
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.protocol.wsframe import Opcode

ANY = bytes.fromhex("0a0174 12020102")  # google.protobuf.Any{type_url "t", value 01 02}

# (hand-computed frame, what the test client writes for it, what the codec decodes)
UPSTREAM = {
    "join_group": ("32 06 0a02 6731 1001", pc.join_group("g1", 1), JoinGroup("g1", 1)),
    "join_group without ack_id": ("32 04 0a02 6731", pc.join_group("g1"), JoinGroup("g1")),
    "leave_group": ("3a 06 0a02 6731 1008", pc.leave_group("g1", 8), LeaveGroup("g1", 8)),
    "send_to_group text, no_echo": (
        "0a 0e 0a02 6731 1002 1a04 0a02 6869 2001",
        pc.send_to_group("g1", pc.Data("text", "hi"), 2, True),
        SendToGroup("g1", Payload.text("hi"), True, 2),
    ),
    "send_to_group binary": (
        "0a 0b 0a02 6731 1a05 1203 0001ff",
        pc.send_to_group("g1", pc.Data("binary", b"\x00\x01\xff")),
        SendToGroup("g1", Payload.binary(b"\x00\x01\xff")),
    ),
    "send_to_group json": (
        "0a 11 0a02 6731 1003 1a09 2207 7b2261223a317d",
        pc.send_to_group("g1", pc.Data("json", '{"a":1}'), 3),
        SendToGroup("g1", Payload(DataType.JSON, b'{"a":1}'), ack_id=3),
    ),
    "send_to_group protobuf": (
        "0a 0f 0a02 6731 1a09 1a07 0a0174 12020102",
        pc.send_to_group("g1", pc.Data("protobuf", pc.any_message("t", b"\x01\x02"))),
        SendToGroup("g1", Payload(DataType.PROTOBUF, ANY)),
    ),
    "send_to_group no_echo false": (
        "0a 0c 0a02 6731 1a04 0a02 6869 2000",
        pc.send_to_group("g1", pc.Data("text", "hi"), no_echo=False),
        SendToGroup("g1", Payload.text("hi")),
    ),
    "event": (
        "2a 0b 0a02 6531 1203 0a0178 1806",
        pc.event("e1", pc.Data("text", "x"), 6),
        SendEvent("e1", Payload.text("x"), 6),
    ),
    "sequence_ack": ("42 03 08ac02", pc.sequence_ack(300), SequenceAck(300)),
    "sequence_ack 0": ("42 00", pc.sequence_ack(0), SequenceAck(0)),
    "ping": ("4a 00", pc.ping(), Ping()),
    "stream start": (
        "0a 0f 0a02 6731 1001 3a07 0a02 7331 108827",
        pc.send_to_group("g1", None, 1, stream=("s1", 5000)),
        StreamStart("g1", "s1", 5000, False, 1),
    ),
    "stream start, default timeout": (
        "0a 0c 0a02 6731 2001 3a04 0a02 7331",
        pc.send_to_group("g1", None, no_echo=True, stream=("s1", None)),
        StreamStart("g1", "s1", None, True),
    ),
    "stream data": (
        "6a 0b 0a02 7331 1001 1a03 0a0161",
        pc.stream_data("s1", 1, pc.Data("text", "a")),
        StreamData("s1", 1, Payload.text("a")),
    ),
    "stream keep-alive": ("6a 04 0a02 7331", pc.stream_data("s1"), StreamData("s1")),
    "stream end": ("72 04 0a02 7331", pc.stream_end("s1"), StreamEnd("s1")),
    "stream end with error": (
        "72 0c 0a02 7331 1206 0a016d 120163",
        pc.stream_end("s1", ("m", "c")),
        StreamEnd("s1", StreamEndError("m", "c")),
    ),
    "stream end with an empty error": (
        "72 06 0a02 7331 1200",
        pc.stream_end("s1", (None, None)),
        StreamEnd("s1", StreamEndError()),
    ),
}


@pytest.mark.parametrize("name", list(UPSTREAM))
def test_upstream_messages_byte_exact(name: str) -> None:
    frame, written, expected = UPSTREAM[name]
    raw = bytes.fromhex(frame)
    assert written == raw  # the test client writes what was computed by hand
    assert pb.decode_client_message(raw) == expected
    assert pb.ack_id_of(raw) == getattr(expected, "ack_id", None)


FORBIDDEN = "0a 13 0805 1a0f 0a09 466f7262696464656e 1202 6e6f"  # ack 5, Forbidden "no"
INVALID_SEQUENCE_ID = "496e76616c696453657175656e63654964"  # "InvalidSequenceId"
IDLE_TIMEOUT = "49646c6554696d656f7574"  # "IdleTimeout"
USER_ERROR = "557365724572726f72"  # "UserError"

# (hand-computed frame, what the codec encodes, what the test client reads)
DOWNSTREAM = {
    "ack": ("0a 04 0801 1001", pb.encode_ack(1), {"type": "ack", "ackId": 1, "success": True}),
    "ack 0": ("0a 02 1001", pb.encode_ack(0), {"type": "ack", "ackId": 0, "success": True}),
    "failed ack": (
        FORBIDDEN,
        pb.encode_ack(5, Forbidden("no")),
        {
            "type": "ack",
            "ackId": 5,
            "success": False,
            "error": {"name": "Forbidden", "message": "no"},
        },
    ),
    "data from a group": (
        "12 10 0a05 67726f7570 120167 1a04 0a02 6869",
        pb.encode_data_body(Payload.text("hi"), group="g", from_user_id="u"),
        {"type": "message", "from": "group", "group": "g", "dataType": "text", "data": "hi"},
    ),
    "data from the server, binary": (
        "12 0f 0a06 736572766572 1a05 1203 0001ff",
        pb.encode_data_body(Payload.binary(b"\x00\x01\xff")),
        {"type": "message", "from": "server", "dataType": "binary", "data": b"\x00\x01\xff"},
    ),
    "data json": (
        "12 0f 0a06 736572766572 1a05 2203 5b315d",
        pb.encode_data_body(Payload(DataType.JSON, b"[1]")),
        {"type": "message", "from": "server", "dataType": "json", "data": "[1]"},
    ),
    "data protobuf": (
        "12 13 0a06 736572766572 1a09 1a07 0a0174 12020102",
        pb.encode_data_body(Payload(DataType.PROTOBUF, ANY)),
        {"type": "message", "from": "server", "dataType": "protobuf", "data": ANY},
    ),
    "data with a sequence id": (
        "12 13 0a05 67726f7570 120167 1a04 0a02 6869 20ac02",
        pb.with_sequence_id(pb.encode_data_body(Payload.text("hi"), group="g"), 300),
        {
            "type": "message",
            "from": "group",
            "group": "g",
            "dataType": "text",
            "data": "hi",
            "sequenceId": 300,
        },
    ),
    "data of a stream": (
        "12 2b 0a05 67726f7570 120167 1a03 0a0161"
        f" 321a 0a0173 1003 1801 2211 0a09 {USER_ERROR} 12016d 1a0163",
        pb.encode_data_body(
            Payload.text("a"),
            group="g",
            stream=StreamInfo("s", 3, True, StreamError("UserError", "m", "c")),
        ),
        {
            "type": "message",
            "from": "group",
            "group": "g",
            "dataType": "text",
            "data": "a",
            "stream": {
                "streamId": "s",
                "streamSequenceId": 3,
                "endOfStream": True,
                "error": {"name": "UserError", "message": "m", "user_error_code": "c"},
            },
        },
    ),
    "connected": (
        "1a 0b 0a09 0a0163 120175 1a0174",
        pb.encode_connected("c", "u", "t"),
        {
            "type": "system",
            "event": "connected",
            "connectionId": "c",
            "userId": "u",
            "reconnectionToken": "t",
        },
    ),
    "connected anonymously": (
        "1a 05 0a03 0a0163",
        pb.encode_connected("c", None),
        {
            "type": "system",
            "event": "connected",
            "connectionId": "c",
            "userId": "",
            "reconnectionToken": "",
        },
    ),
    "disconnected": (
        "1a 07 1205 1203 627965",
        pb.encode_disconnected("bye"),
        {"type": "system", "event": "disconnected", "message": "bye"},
    ),
    "pong": ("22 00", pb.PONG, {"type": "pong"}),
    "stream ack": (
        "32 06 0a02 7331 1004",
        pb.encode_stream_ack("s1", 4),
        {"type": "streamAck", "streamId": "s1", "expectedSequenceId": 4},
    ),
    "stream nack": (
        f"3a 1c 0a02 7331 1211 {INVALID_SEQUENCE_ID} 1a0178 2002",
        pb.encode_stream_nack("s1", 2, "InvalidSequenceId", "x"),
        {
            "type": "streamNack",
            "streamId": "s1",
            "expectedSequenceId": 2,
            "name": "InvalidSequenceId",
            "message": "x",
        },
    ),
    "stream closed": (
        "42 04 0a02 7331",
        pb.encode_stream_closed("s1"),
        {"type": "streamClosed", "streamId": "s1"},
    ),
    "stream closed with an error": (
        f"42 16 0a02 7331 1210 0a0b {IDLE_TIMEOUT} 120174",
        pb.encode_stream_closed("s1", StreamError("IdleTimeout", "t")),
        {
            "type": "streamClosed",
            "streamId": "s1",
            "error": {"name": "IdleTimeout", "message": "t"},
        },
    ),
}


@pytest.mark.parametrize("name", list(DOWNSTREAM))
def test_downstream_messages_byte_exact(name: str) -> None:
    frame, encoded, expected = DOWNSTREAM[name]
    raw = bytes.fromhex(frame)
    assert encoded == raw
    assert pc.decode(raw) == expected


def test_names_mirror_the_json_codec() -> None:
    from webpubsub.protocol import json_protocol

    for name in (
        "decode_client_message",
        "ack_id_of",
        "encode_connected",
        "encode_disconnected",
        "encode_ack",
        "PONG",
        "encode_stream_ack",
        "encode_stream_nack",
        "encode_stream_closed",
        "encode_data_body",
        "with_sequence_id",
    ):
        assert hasattr(json_protocol, name) and hasattr(pb, name), name
    assert pb.OPCODE is Opcode.BINARY
    assert pb.PROTOBUF_SUBPROTOCOL == "protobuf.webpubsub.azure.v1"
    assert pb.PROTOBUF_RELIABLE_SUBPROTOCOL == "protobuf.reliable.webpubsub.azure.v1"


def test_every_error_maps_to_its_ack_name() -> None:
    for error, name in (
        (BadRequest("b"), "BadRequest"),
        (InvalidName("n"), "BadRequest"),
        (Forbidden("f"), "Forbidden"),
        (Duplicate(7), "Duplicate"),
        (UpstreamError("u"), "InternalServerError"),
        (WebPubSubError("w"), "InternalServerError"),
    ):
        ack = pc.decode(pb.encode_ack(2, error))
        assert ack == {
            "type": "ack",
            "ackId": 2,
            "success": False,
            "error": {"name": name, "message": error.message},
        }


# -- what is not a request, and bad requests -----------------------------------------


def test_a_request_of_a_newer_schema_is_ignored_not_fatal() -> None:
    """Only fields this schema lacks (a newer client's request, e.g. a group-state one):
    ignored, as the JSON codec ignores an unknown type, not a reason to close."""
    assert pb.decode_client_message(bytes.fromhex("5001")) == Unsupported("field 10")
    assert pb.decode_client_message(pc.upstream(15, b"\x0a\x01g")) == Unsupported("field 15")


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # no oneof member set
        bytes.fromhex("0a0b0a0167"),  # truncated
        bytes.fromhex("3a0a"),  # a length past the end
        bytes.fromhex("3204 0a02ff31"),  # a group that is not UTF-8
        bytes.fromhex("0f"),  # wire type 7
        bytes.fromhex("ffffffffffffffffffff01"),  # a varint over 64 bits
    ],
)
def test_frames_that_are_not_requests_are_fatal(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation) as info:
        pb.decode_client_message(frame)
    assert info.value.fatal and info.value.ack_id is None


def test_a_text_frame_is_fatal() -> None:
    valid = bytes.fromhex(UPSTREAM["ping"][0])
    with pytest.raises(ProtocolViolation) as info:
        pb.decode_client_message(valid.decode("latin-1"))
    assert info.value.fatal and "binary" in info.value.message


def test_unknown_fields_in_a_known_message_are_ignored() -> None:
    """A newer client's extra field does not break the request (proto3 semantics)."""
    frame = pc.upstream(6, pc.bytes_field(1, "g1") + pc.int_field(2, 4) + pc.int_field(15, 9))
    assert pb.decode_client_message(frame) == JoinGroup("g1", 4)
    # a known field of the wrong wire type is an unknown field too: group missing
    wrong = pc.upstream(6, pc.int_field(1, 1) + pc.int_field(2, 4))
    with pytest.raises(ProtocolViolation) as info:
        pb.decode_client_message(wrong)
    assert info.value.ack_id == 4 and not info.value.fatal


BAD_REQUESTS = {
    "an empty group": (pc.join_group("", 5), "group"),
    "a blank group": (pc.leave_group("   ", 5), "group"),
    "a group too long": (pc.join_group("g" * 1025, 5), "group"),
    "send_to_group with a bad group": (pc.send_to_group(" ", pc.Data("text", "x"), 5), "group"),
    "send_to_group without data": (pc.send_to_group("g", None, 5), "no 'data'"),
    "send_to_group with empty data": (
        pc.upstream(1, pc.bytes_field(1, "g") + pc.int_field(2, 5) + pc.bytes_field(3, b"")),
        "no 'data'",
    ),
    "json_data that is not JSON": (pc.send_to_group("g", pc.Data("json", "{no"), 5), "JSON"),
    "json_data that is empty": (pc.event("e", pc.Data("json", ""), 5), "JSON"),
    "json_data nested too deep": (
        pc.event("e", pc.Data("json", "[" * (MAX_DATA_DEPTH + 1) + "]" * (MAX_DATA_DEPTH + 1)), 5),
        "nested",
    ),
    "a bad event name": (pc.event("1bad", pc.Data("text", "x"), 5), "event"),
    "no event name": (pc.event("", pc.Data("text", "x"), 5), "event"),
    "an event without data": (pc.event("e", None, 5), "no 'data'"),
    "a stream start without a stream id": (
        pc.send_to_group("g", None, 5, stream=("", None)),
        "stream_id",
    ),
    "a stream start with a long stream id": (
        pc.send_to_group("g", None, 5, stream=("s" * (MAX_STREAM_ID + 1), None)),
        "longer",
    ),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_keep_their_ack_id(name: str) -> None:
    frame, message = BAD_REQUESTS[name]
    with pytest.raises(ProtocolViolation) as info:
        pb.decode_client_message(frame)
    assert info.value.ack_id == 5 and not info.value.fatal
    assert message in info.value.message
    assert pb.ack_id_of(frame) == 5


def test_json_data_is_passed_as_the_client_wrote_it() -> None:
    text = '{ "n": 123456789012345678901234567890, "s": "\\u00e9" }'
    msg = pb.decode_client_message(pc.event("e", pc.Data("json", text)))
    assert msg == SendEvent("e", Payload(DataType.JSON, text.encode()))
    nested = "[" * MAX_DATA_DEPTH + "]" * MAX_DATA_DEPTH
    msg = pb.decode_client_message(pc.event("e", pc.Data("json", nested)))
    assert isinstance(msg, SendEvent) and msg.payload.data == nested.encode()


def test_protobuf_any_bytes_are_kept_with_unknown_fields() -> None:
    """The payload is the serialized Any as sent, a field the Any does not know included."""
    raw = pc.any_message("type.googleapis.com/x.Y", b"\x08\x96\x01") + pc.int_field(9, 1)
    msg = pb.decode_client_message(pc.send_to_group("g", pc.Data("protobuf", raw)))
    assert isinstance(msg, SendToGroup) and msg.payload == Payload(DataType.PROTOBUF, raw)
    out = pc.decode(pb.encode_data_body(msg.payload, group="g"))
    assert out["dataType"] == "protobuf" and out["data"] == raw
    empty = pb.decode_client_message(pc.send_to_group("g", pc.Data("protobuf", b"")))
    assert isinstance(empty, SendToGroup) and empty.payload == Payload(DataType.PROTOBUF, b"")


def test_json_payloads_go_out_as_json_data() -> None:
    """JSON data (from a JSON client or REST) reaches a protobuf client in json_data, the
    current schema's member (the 2021 Learn page said text_data: docs/compatibility.md)."""
    raw = pb.encode_data_body(Payload(DataType.JSON, b'{"a":[1,2]}'), group="g")
    message = pc.decode(raw)
    assert message["dataType"] == "json" and json.loads(message["data"]) == {"a": [1, 2]}
    assert "fromUserId" not in message  # the protobuf DataMessage has no sender's user id


def test_text_that_is_not_utf8_is_made_so() -> None:
    """An event handler's text/plain reply may be any bytes; a protobuf string may not."""
    out = pc.decode(pb.encode_data_body(Payload(DataType.TEXT, b"a\xffb")))
    assert out["data"] == "a\ufffdb"


# -- streams --------------------------------------------------------------------------

STREAM_PROBLEMS = {
    "an idle timeout of 0": (pc.send_to_group("g", None, 1, stream=("s", 0)), "idle_timeout_ms"),
    "a stream start with data": (
        pc.send_to_group("g", pc.Data("text", "x"), 1, stream=("s", None)),
        "no 'data'",
    ),
    "a fragment without a sequence id": (
        pc.stream_data("s", None, pc.Data("text", "x")),
        "carries",
    ),
    "a fragment without data": (pc.stream_data("s", 1), "carries"),
    "a sequence id of 0": (
        pc.upstream(13, pc.bytes_field(1, "s") + b"\x10\x00" + pc.bytes_field(3, b"\x0a\x00")),
        "positive",
    ),
    "a fragment with empty data": (
        pc.upstream(13, pc.bytes_field(1, "s") + pc.int_field(2, 1) + pc.bytes_field(3, b"")),
        "no 'data'",
    ),
    "a fragment with bad JSON": (pc.stream_data("s", 1, pc.Data("json", "{")), "JSON"),
    "a stream start with a bad group": (pc.send_to_group("", None, 5, stream=("s", 1)), "group"),
    "an end error too long": (
        pc.stream_end("s", ("m" * MAX_STREAM_ERROR, "c")),
        "longer",
    ),
}


@pytest.mark.parametrize("name", list(STREAM_PROBLEMS))
def test_stream_problems_close_only_the_stream(name: str) -> None:
    frame, message = STREAM_PROBLEMS[name]
    problem = pb.decode_client_message(frame)
    assert isinstance(problem, StreamProblem) and problem.stream_id == "s"
    assert message in problem.message
    # A refused start leaves an open stream of its id alone; other problems end it.
    assert problem.start == name.startswith(("a stream start", "an idle timeout"))


def test_an_end_error_at_the_limit_is_accepted() -> None:
    msg = pb.decode_client_message(pc.stream_end("s", ("m" * (MAX_STREAM_ERROR - 1), "c")))
    assert msg == StreamEnd("s", StreamEndError("m" * (MAX_STREAM_ERROR - 1), "c"))
    only_code = pb.decode_client_message(pc.stream_end("s", (None, "E1")))
    assert only_code == StreamEnd("s", StreamEndError(None, "E1"))


@pytest.mark.parametrize(
    "frame",
    [
        pc.stream_data(""),
        pc.stream_data("s" * (MAX_STREAM_ID + 1), 1, pc.Data("text", "x")),
        pc.stream_end(""),
    ],
)
def test_a_stream_message_without_a_usable_id_is_a_bad_request(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation) as info:
        pb.decode_client_message(frame)
    assert not info.value.fatal and info.value.ack_id is None
    assert "stream_id" in info.value.message


# -- round trips ---------------------------------------------------------------------

groups = st.text(min_size=1, max_size=40).filter(lambda g: not g.isspace())
ack_ids = st.none() | st.integers(0, 2**64 - 1)
event_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
stream_ids = st.text(min_size=1, max_size=MAX_STREAM_ID)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
datas = st.one_of(
    st.builds(pc.Data, st.just("text"), st.text(max_size=100)),
    st.builds(pc.Data, st.just("binary"), st.binary(max_size=100)),
    st.builds(
        pc.Data,
        st.just("protobuf"),
        st.builds(pc.any_message, st.text(max_size=40), st.binary(max_size=60)),
    ),
    st.builds(pc.Data, st.just("json"), json_values.map(json.dumps)),
)


def payload_of(data: pc.Data) -> Payload:
    """What the codec must make of ``data``."""
    raw = data.value.encode() if isinstance(data.value, str) else data.value
    return Payload(DataType(data.kind), raw)


@given(group=groups, ack_id=ack_ids, leave=st.booleans())
def test_join_and_leave_round_trip(group: str, ack_id: int | None, leave: bool) -> None:
    if leave:
        assert pb.decode_client_message(pc.leave_group(group, ack_id)) == LeaveGroup(group, ack_id)
    else:
        assert pb.decode_client_message(pc.join_group(group, ack_id)) == JoinGroup(group, ack_id)


@given(group=groups, data=datas, ack_id=ack_ids, no_echo=st.none() | st.booleans(), user=st.text())
def test_send_to_group_round_trip(
    group: str, data: pc.Data, ack_id: int | None, no_echo: bool | None, user: str
) -> None:
    """What a protobuf client publishes reaches protobuf subscribers as it was sent."""
    msg = pb.decode_client_message(pc.send_to_group(group, data, ack_id, no_echo))
    assert msg == SendToGroup(group, payload_of(data), bool(no_echo), ack_id)
    out = pc.decode(pb.encode_data_body(msg.payload, group=group, from_user_id=user))
    assert out == {
        "type": "message",
        "from": "group",
        "group": group,
        "dataType": data.kind,
        "data": data.value,
    }


@given(name=event_names, data=datas, ack_id=ack_ids)
def test_event_round_trip(name: str, data: pc.Data, ack_id: int | None) -> None:
    msg = pb.decode_client_message(pc.event(name, data, ack_id))
    assert msg == SendEvent(name, payload_of(data), ack_id)


@given(st.integers(0, 2**64 - 1))
def test_sequence_ack_round_trip(sequence_id: int) -> None:
    assert pb.decode_client_message(pc.sequence_ack(sequence_id)) == SequenceAck(sequence_id)


@given(
    group=groups,
    stream_id=stream_ids,
    timeout=st.none() | st.integers(1, 2**32 - 1),
    ack_id=ack_ids,
    no_echo=st.booleans(),
)
def test_stream_start_round_trip(
    group: str, stream_id: str, timeout: int | None, ack_id: int | None, no_echo: bool
) -> None:
    frame = pc.send_to_group(group, None, ack_id, no_echo, stream=(stream_id, timeout))
    assert pb.decode_client_message(frame) == StreamStart(
        group, stream_id, timeout, no_echo, ack_id
    )


@given(
    stream_id=stream_ids,
    sequence_id=st.integers(1, 2**64 - 1),
    data=datas,
    error=st.none() | st.tuples(st.none() | st.text(max_size=50), st.none() | st.text(max_size=50)),
)
def test_stream_data_and_end_round_trip(
    stream_id: str,
    sequence_id: int,
    data: pc.Data,
    error: tuple[str | None, str | None] | None,
) -> None:
    fragment = pb.decode_client_message(pc.stream_data(stream_id, sequence_id, data))
    assert fragment == StreamData(stream_id, sequence_id, payload_of(data))
    end = pb.decode_client_message(pc.stream_end(stream_id, error))
    assert end == StreamEnd(stream_id, None if error is None else StreamEndError(*error))


payloads = datas.map(payload_of)
stream_infos = st.builds(
    StreamInfo,
    stream_ids,
    st.integers(0, 2**64 - 1),
    st.booleans(),
    st.none()
    | st.builds(StreamError, st.text(max_size=20), st.text(max_size=20), st.none() | st.text()),
)


@given(
    payload=payloads,
    group=st.none() | groups,
    stream=st.none() | stream_infos,
    sequence_id=st.none() | st.integers(0, 2**64 - 1),
)
def test_data_messages_round_trip(
    payload: Payload, group: str | None, stream: StreamInfo | None, sequence_id: int | None
) -> None:
    """Every data kind, from the server or a group, with stream metadata and sequence id,
    reads back from the bytes as it was given (with_sequence_id re-frames any length)."""
    body = pb.encode_data_body(payload, group=group, stream=stream)
    frame = body if sequence_id is None else pb.with_sequence_id(body, sequence_id)
    out = pc.decode(frame)
    expected: dict[str, object] = {
        "type": "message",
        "from": "server" if group is None else "group",
    }
    if group is not None:
        expected["group"] = group
    expected["dataType"] = payload.data_type.value
    expected["data"] = (
        payload.data.decode()
        if payload.data_type in (DataType.TEXT, DataType.JSON)
        else payload.data
    )
    if sequence_id is not None:
        expected["sequenceId"] = sequence_id
    if stream is not None:
        info: dict[str, object] = {
            "streamId": stream.stream_id,
            "streamSequenceId": stream.sequence_id,
        }
        if stream.end:
            info["endOfStream"] = True
        if stream.error is not None:
            info["error"] = {
                "name": stream.error.name,
                "message": stream.error.message,
                "user_error_code": stream.error.user_error_code or "",
            }
        expected["stream"] = info
    assert out == expected


@given(st.integers(0, 2**64 - 1), st.integers(100, 20_000))
def test_with_sequence_id_across_length_boundaries(sequence_id: int, size: int) -> None:
    body = pb.encode_data_body(Payload.binary(b"\x07" * size), group="g")
    out = pc.decode(pb.with_sequence_id(body, sequence_id))
    assert out["sequenceId"] == sequence_id and out["data"] == b"\x07" * size


@given(
    connection_id=st.text(min_size=1, max_size=60),
    user_id=st.none() | st.text(min_size=1, max_size=60),
    token=st.none() | st.text(min_size=1, max_size=200),
    reason=st.text(max_size=100),
)
def test_system_messages_round_trip(
    connection_id: str, user_id: str | None, token: str | None, reason: str
) -> None:
    assert pc.decode(pb.encode_connected(connection_id, user_id, token)) == {
        "type": "system",
        "event": "connected",
        "connectionId": connection_id,
        "userId": user_id or "",
        "reconnectionToken": token or "",
    }
    assert pc.decode(pb.encode_disconnected(reason)) == {
        "type": "system",
        "event": "disconnected",
        "message": reason,
    }


@given(
    ack_id=st.integers(0, 2**64 - 1),
    error=st.none()
    | st.sampled_from([BadRequest("b"), Forbidden("nope"), Duplicate(3), UpstreamError("x")]),
)
def test_ack_round_trip(ack_id: int, error: WebPubSubError | None) -> None:
    expected: dict[str, object] = {"type": "ack", "ackId": ack_id, "success": error is None}
    if error is not None:
        expected["error"] = {"name": error.ack_name, "message": error.message}
    assert pc.decode(pb.encode_ack(ack_id, error)) == expected


@given(
    stream_id=stream_ids,
    expected=st.integers(0, 2**64 - 1),
    name=st.text(max_size=20),
    message=st.text(max_size=50),
    closed_error=st.none() | st.builds(StreamError, st.text(max_size=20), st.text(max_size=20)),
)
def test_stream_answers_round_trip(
    stream_id: str, expected: int, name: str, message: str, closed_error: StreamError | None
) -> None:
    assert pc.decode(pb.encode_stream_ack(stream_id, expected)) == {
        "type": "streamAck",
        "streamId": stream_id,
        "expectedSequenceId": expected,
    }
    assert pc.decode(pb.encode_stream_nack(stream_id, expected, name, message)) == {
        "type": "streamNack",
        "streamId": stream_id,
        "expectedSequenceId": expected,
        "name": name,
        "message": message,
    }
    closed: dict[str, object] = {"type": "streamClosed", "streamId": stream_id}
    if closed_error is not None:
        closed["error"] = {"name": closed_error.name, "message": closed_error.message}
    assert pc.decode(pb.encode_stream_closed(stream_id, closed_error)) == closed


# -- fuzzing ------------------------------------------------------------------------

VALID_FRAMES = [bytes.fromhex(frame) for frame, _, _ in UPSTREAM.values()]


def decoded_or_violation(frame: bytes) -> ClientMessage | None:
    """Decode ``frame``: only a ProtocolViolation may escape (and ack_id_of never raises)."""
    pb.ack_id_of(frame)
    with contextlib.suppress(ProtocolViolation):
        return pb.decode_client_message(frame)
    return None


@settings(max_examples=at_least(500))
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_violation(frame: bytes) -> None:
    decoded_or_violation(frame)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A valid frame with bytes flipped, cut, inserted or duplicated."""
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(frame)))
        how = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        if how == "flip" and where < len(frame):
            frame[where] = draw(st.integers(0, 255))
        elif how == "cut":
            del frame[where : where + draw(st.integers(1, 4))]
        elif how == "insert":
            frame[where:where] = draw(st.binary(min_size=1, max_size=4))
        else:
            frame += frame[:where]
    return bytes(frame)


@settings(max_examples=at_least(500))
@given(mutated_frames())
def test_mutated_frames_raise_only_protocol_violation(frame: bytes) -> None:
    decoded_or_violation(frame)


@given(st.lists(st.tuples(st.integers(1, 20), st.sampled_from([0, 2]), st.binary(max_size=8))))
def test_arbitrary_fields_in_every_request_raise_only_protocol_violation(
    parts: list[tuple[int, int, bytes]],
) -> None:
    """Well-formed wire data of any field numbers inside each known request."""
    body = b"".join(
        pc.int_field(n, int.from_bytes(v[:8], "little")) if t == 0 else pc.bytes_field(n, v)
        for n, t, v in parts
    )
    for member in (1, 5, 6, 7, 8, 9, 13, 14):
        decoded_or_violation(pc.upstream(member, body))


def test_json_values_survive_as_text() -> None:
    value = {"big": 2**70, "list": [1, "two", None]}
    text = json.dumps(value)
    msg = pb.decode_client_message(pc.send_to_group("g", pc.Data("json", text)))
    assert isinstance(msg, SendToGroup) and json.loads(msg.payload.data) == value
    assert orjson.loads(msg.payload.data)["list"] == [1, "two", None]


def test_an_idle_timeout_is_a_uint32_on_the_wire() -> None:
    """The schema's uint32 reads the low 32 bits of a longer varint, as protobuf does."""
    frame = pc.send_to_group("g", None, stream=("s", 2**32 + 5))
    assert pb.decode_client_message(frame) == StreamStart("g", "s", 5)


# -- what counts as a google.protobuf.Any (protobufjs reads fields 1 and 2 by number) ----


@pytest.mark.parametrize(
    ("raw", "ok"),
    [
        (ANY, True),
        (b"", True),  # an empty Any
        (bytes.fromhex("0a01781801"), True),  # an unknown varint field: skipped
        (bytes.fromhex("0a01781d0000803f"), True),  # an unknown fixed32 field (3)
        (b"\x08\x01", False),  # field 1 as a varint: a bare message, not an Any
        (bytes.fromhex("0d00000000"), False),  # field 1 as fixed32
        (bytes.fromhex("1001"), False),  # field 2 as a varint
        (bytes.fromhex("0a05ff"), False),  # a length past the end
        (bytes.fromhex("0a01ff"), False),  # a type_url that is not UTF-8
        (bytes.fromhex("1b1c"), False),  # a group
        (b"\x00\x01", False),  # field number 0
    ],
)
def test_an_any_is_what_every_client_can_read(raw: bytes, ok: bool) -> None:
    assert pb._is_any(raw) is ok
    body = pb.encode_data_body(Payload(DataType.PROTOBUF, raw), group="g")
    assert pc.decode(body)["dataType"] == ("protobuf" if ok else "binary")


def test_a_protobuf_clients_any_of_the_wrong_shape_is_refused_with_its_ack_id() -> None:
    frame = pc.send_to_group("g", pc.Data("protobuf", b"\x08\x01"), 7)
    with pytest.raises(ProtocolViolation) as info:
        pb.decode_client_message(frame)
    assert info.value.ack_id == 7 and "google.protobuf.Any" in info.value.message


@given(st.text(max_size=40), st.binary(max_size=64))
def test_every_serialized_any_is_an_any(type_url: str, value: bytes) -> None:
    assert pb._is_any(pc.any_message(type_url, value))


@given(st.binary(max_size=64))
def test_the_any_check_never_raises(raw: bytes) -> None:
    pb._is_any(raw)
