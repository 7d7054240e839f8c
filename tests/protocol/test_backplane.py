"""The backplane's wire codec: round trips, literal bytes, and garbage refused cleanly."""

from __future__ import annotations

import contextlib
import struct

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import CorruptEnvelope
from webpubsub.protocol.backplane import (
    MAX_SURVEY_ANSWER_BYTES,
    MAX_SURVEY_REQUEST_BYTES,
    MAX_SURVEY_TIMEOUT,
    WIRE_VERSION,
    Answer,
    ChangeGroup,
    ChangePermission,
    Close,
    Command,
    Exists,
    GroupAction,
    GroupMember,
    GroupRoom,
    HasPermission,
    ListGroup,
    Query,
    Scope,
    Send,
    SessionState,
    SurveyReply,
    SurveyRequest,
    Target,
    decode_answer,
    decode_command,
    decode_query,
    decode_session,
    decode_survey_reply,
    decode_survey_request,
    encode_answer,
    encode_command,
    encode_query,
    encode_session,
    encode_survey_reply,
    encode_survey_request,
)
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.messages import StreamError, StreamInfo
from webpubsub.protocol.payload import DataType, Payload

names = st.text(max_size=40)
opt_names = st.none() | names
targets = st.builds(Target, st.sampled_from(Scope), names)
payloads = st.builds(Payload, st.sampled_from(DataType), st.binary(max_size=300))
stream_errors = st.none() | st.builds(StreamError, names, names, opt_names)
streams = st.none() | st.builds(
    StreamInfo, names, st.integers(0, 2**64 - 1), st.booleans(), stream_errors
)
messages = st.builds(DataMessage, payloads, st.sampled_from(Origin), opt_names, opt_names, streams)
excluded = st.frozensets(names, max_size=5)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(Send, names, targets, messages, excluded, names),
    st.builds(Close, names, targets, names, excluded),
    st.builds(
        ChangeGroup,
        names,
        targets,
        st.sampled_from(GroupAction),
        st.lists(names, max_size=5).map(tuple),
        names,
    ),
    st.builds(ChangePermission, names, names, names, st.booleans(), opt_names),
)
queries: st.SearchStrategy[Query] = st.one_of(
    st.builds(Exists, names, targets),
    st.builds(HasPermission, names, names, names, opt_names),
    st.builds(ListGroup, names, names),
    st.builds(GroupRoom, names, names, names, st.integers(0, 2**53)),
)
answers: st.SearchStrategy[Answer] = st.one_of(
    st.none(),
    st.booleans(),
    st.lists(st.builds(GroupMember, names, opt_names), max_size=5).map(tuple),
)


@given(commands)
def test_commands_round_trip(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


@given(queries)
def test_queries_round_trip(query: Query) -> None:
    assert decode_query(encode_query(query)) == query


@given(answers)
def test_answers_round_trip(answer: Answer) -> None:
    assert decode_answer(encode_answer(answer)) == answer


def test_a_send_carries_its_payload_raw_after_the_header() -> None:
    message = DataMessage(Payload(DataType.BINARY, b"\x00\x01raw"))
    raw = encode_command(Send("hub", Target.all(), message))
    version, length = struct.unpack_from(">BI", raw)
    assert version == WIRE_VERSION == 1
    header = orjson.loads(raw[5 : 5 + length])
    assert header == {
        "k": "send",
        "h": "hub",
        "t": ["all", ""],
        "dt": "binary",
        "o": "server",
        "g": None,
        "u": None,
        "x": [],
        "f": "",
    }
    assert raw[5 + length :] == b"\x00\x01raw"  # not base64, not in the JSON


def envelope(header: object, data: bytes = b"", version: int = WIRE_VERSION) -> bytes:
    head = orjson.dumps(header)
    return struct.pack(">BI", version, len(head)) + head + data


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x01\x00",
        envelope({"k": "send"}, version=2),
        b"\x01\xff\xff\xff\xff{}",
        envelope([1, 2]),
        b"\x01\x00\x00\x00\x03{x}",
        envelope({"k": "nope"}),
        envelope({"k": "close", "h": "hub", "t": ["all", ""], "r": "x", "x": []}, b"data"),
        envelope({"k": "close", "h": "hub", "t": ["galaxy", ""], "r": "x", "x": []}),
        envelope({"k": "perm", "h": "hub", "c": "c", "p": "p", "y": "yes", "g": None}),
        envelope({"k": "group", "h": "hub", "t": ["all", ""], "a": "add", "gs": [1], "f": ""}),
    ],
)
def test_corrupt_envelopes_are_refused_with_our_error(raw: bytes) -> None:
    with pytest.raises(CorruptEnvelope):
        decode_command(raw)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_corrupt_envelope(raw: bytes) -> None:
    for decode in (decode_command, decode_query, decode_answer):
        with contextlib.suppress(CorruptEnvelope):
            decode(raw)


@given(st.dictionaries(st.sampled_from("khtrxagsfcpyudo"), st.none() | st.text() | st.booleans()))
def test_arbitrary_headers_raise_only_corrupt_envelope(header: dict[str, object]) -> None:
    for decode in (decode_command, decode_query, decode_answer):
        with contextlib.suppress(CorruptEnvelope):
            decode(envelope(header))


# -- surveys ---------------------------------------------------------------------------

survey_requests = st.builds(
    SurveyRequest,
    names,
    names,
    st.floats(min_value=0.001, max_value=MAX_SURVEY_TIMEOUT, allow_nan=False),
    st.binary(max_size=300),
    st.integers(min_value=1, max_value=MAX_SURVEY_ANSWER_BYTES),
)
survey_replies = st.builds(SurveyReply, names, names, st.none() | st.binary(max_size=300))


@given(survey_requests)
def test_survey_requests_round_trip(request: SurveyRequest) -> None:
    assert decode_survey_request(encode_survey_request(request)) == request


@given(survey_replies)
def test_survey_replies_round_trip(reply: SurveyReply) -> None:
    assert decode_survey_reply(encode_survey_reply(reply)) == reply


def test_a_survey_request_carries_its_body_raw_after_the_header() -> None:
    raw = encode_survey_request(SurveyRequest("r1", "n1", 0.5, b'{"op":"trace"}', 4096))
    assert raw == (
        b'\x01\x00\x00\x005{"k":"survey","rq":"r1","fr":"n1","tm":0.5,"lm":4096}{"op":"trace"}'
    )
    assert decode_survey_request(raw) == SurveyRequest("r1", "n1", 0.5, b'{"op":"trace"}', 4096)


def test_a_survey_request_without_a_limit_allows_the_largest_answer() -> None:
    """A node of an earlier version sends no ``lm``."""
    raw = envelope({"k": "survey", "rq": "r", "fr": "n", "tm": 1}, b"q")
    assert decode_survey_request(raw).limit == MAX_SURVEY_ANSWER_BYTES


def test_a_survey_reply_says_whether_it_has_an_answer() -> None:
    answered = encode_survey_reply(SurveyReply("r1", "n2", b"[]"))
    assert answered == b'\x01\x00\x00\x00,{"k":"surveyed","rq":"r1","n":"n2","a":true}[]'
    empty = encode_survey_reply(SurveyReply("r1", "n2", b""))
    assert decode_survey_reply(empty) == SurveyReply("r1", "n2", b"")  # empty is not None
    none = encode_survey_reply(SurveyReply("r1", "n2", None))
    assert none == b'\x01\x00\x00\x00-{"k":"surveyed","rq":"r1","n":"n2","a":false}'
    assert decode_survey_reply(none) == SurveyReply("r1", "n2", None)


sessions = st.builds(
    SessionState,
    names,
    names,
    opt_names,
    st.text(max_size=40),
    st.text(max_size=40),
    st.lists(names, max_size=3).map(tuple),
    st.just({}),
    st.text(max_size=20),
    st.lists(st.integers(0, 2**53), max_size=3).map(tuple),
    st.integers(0, 2**53),
    st.lists(st.tuples(st.integers(0, 2**53), st.binary(max_size=50)), max_size=3).map(tuple),
    st.integers(0, 2**31),
    opt_names,
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.integers(0, 2**53),
    st.integers(0, 2**53),
)


@given(names, sessions)
def test_handover_states_round_trip_with_the_node_they_come_from(
    request_id: str, state: SessionState
) -> None:
    assert decode_session(encode_session(request_id, state)) == (request_id, state)


def test_a_handover_state_without_its_node_or_with_a_bad_one() -> None:
    state = SessionState("hub", "c", None, "sp", "", (), {}, "tk", (), 1, ())
    assert b'"fn"' not in encode_session("rq", state)  # as older nodes send it
    raw = encode_session(
        "rq", SessionState("hub", "c", None, "sp", "", (), {}, "tk", (), 1, (), 0, "a")
    )
    assert decode_session(raw)[1].from_node == "a"  # type: ignore[union-attr]
    with pytest.raises(CorruptEnvelope):
        decode_session(raw.replace(b'"fn":"a"', b'"fn":1  '))
    assert b'"ca"' not in raw and b'"mi"' not in raw and b'"mo"' not in raw  # defaults: unsent


def test_a_handover_state_with_a_bad_start_time_or_counts_is_corrupt() -> None:
    state = SessionState("hub", "c", None, "sp", "", (), {}, "tk", (), 1, (), 0, "a", 1.5, 20, 3000)
    raw = encode_session("rq", state)
    assert decode_session(raw) == ("rq", state)
    for good, bad in (
        (b'"ca":1.5', b'"ca":"x"'),
        (b'"mi":20', b'"mi":-2'),
        (b'"mo":3000', b'"mo":true'),
    ):
        assert good in raw and len(good) == len(bad)
        with pytest.raises(CorruptEnvelope):
            decode_session(raw.replace(good, bad))


def test_survey_replies_and_handover_states_are_never_taken_for_each_other() -> None:
    state = SessionState("hub", "c", None, "sp", "", ("g",), {}, "tk", (1,), 3, ((1, b"f"),))
    assert decode_session(encode_session("rq", state)) == ("rq", state)
    for session in (state, "no"):
        with pytest.raises(CorruptEnvelope):
            decode_survey_reply(encode_session("rq", session))
    with pytest.raises(CorruptEnvelope):
        decode_session(encode_survey_reply(SurveyReply("r1", "n2", b"[]")))


@pytest.mark.parametrize(
    "raw",
    [
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": 0}),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": -1.0}),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": MAX_SURVEY_TIMEOUT + 1}),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": True}),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": "1"}),
        envelope({"k": "survey", "rq": 1, "fr": "n", "tm": 1}),
        envelope({"k": "survey", "rq": "r", "tm": 1}),
        envelope({"k": "surveyed", "rq": "r", "n": "n", "a": False}),
        envelope(
            {"k": "survey", "rq": "r", "fr": "n", "tm": 1}, b"x" * (MAX_SURVEY_REQUEST_BYTES + 1)
        ),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": 1, "lm": 0}),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": 1, "lm": MAX_SURVEY_ANSWER_BYTES + 1}),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": 1, "lm": 1.5}),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": 1, "lm": True}),
    ],
)
def test_corrupt_survey_requests_are_refused_with_our_error(raw: bytes) -> None:
    with pytest.raises(CorruptEnvelope):
        decode_survey_request(raw)


@pytest.mark.parametrize(
    "raw",
    [
        envelope({"k": "surveyed", "rq": "r", "n": "n", "a": False}, b"data"),
        envelope({"k": "surveyed", "rq": "r", "n": "n", "a": "yes"}),
        envelope({"k": "surveyed", "rq": "r", "a": True}),
        envelope({"k": "surveyed", "rq": "r", "n": 7, "a": True}),
        envelope(
            {"k": "surveyed", "rq": "r", "n": "n", "a": True}, b"x" * (MAX_SURVEY_ANSWER_BYTES + 1)
        ),
        envelope({"k": "survey", "rq": "r", "fr": "n", "tm": 1}),
        envelope({"k": "session", "rq": "r"}),
    ],
)
def test_corrupt_survey_replies_are_refused_with_our_error(raw: bytes) -> None:
    with pytest.raises(CorruptEnvelope):
        decode_survey_reply(raw)


def test_a_survey_body_at_the_limits_is_accepted() -> None:
    request = SurveyRequest("r", "n", MAX_SURVEY_TIMEOUT, b"x" * MAX_SURVEY_REQUEST_BYTES)
    assert decode_survey_request(encode_survey_request(request)) == request
    reply = SurveyReply("r", "n", b"x" * MAX_SURVEY_ANSWER_BYTES)
    assert decode_survey_reply(encode_survey_reply(reply)) == reply


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_corrupt_envelope_from_the_survey_codec(raw: bytes) -> None:
    for decode in (decode_survey_request, decode_survey_reply):
        with contextlib.suppress(CorruptEnvelope):
            decode(raw)


@given(
    st.dictionaries(
        st.sampled_from(["k", "rq", "fr", "tm", "lm", "n", "a"]),
        st.none() | st.text() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(),
    ),
    st.binary(max_size=20),
)
def test_arbitrary_survey_headers_raise_only_corrupt_envelope(
    header: dict[str, object], data: bytes
) -> None:
    header.setdefault("k", "survey")
    for kind in ("survey", "surveyed", header["k"]):
        raw = envelope({**header, "k": kind}, data)
        for decode in (decode_survey_request, decode_survey_reply):
            with contextlib.suppress(CorruptEnvelope):
                decode(raw)
