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
    Target,
    decode_answer,
    decode_command,
    decode_query,
    encode_answer,
    encode_command,
    encode_query,
)
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.payload import DataType, Payload

names = st.text(max_size=40)
opt_names = st.none() | names
targets = st.builds(Target, st.sampled_from(Scope), names)
payloads = st.builds(Payload, st.sampled_from(DataType), st.binary(max_size=300))
messages = st.builds(DataMessage, payloads, st.sampled_from(Origin), opt_names, opt_names)
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
