"""Payloads from REST bodies and handler replies (Azure REST API reference; CloudEvents)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import BadRequest
from webpubsub.protocol.payload import DataType, Payload, media_type

CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "text/plain",
            "Text/Plain; charset=utf-8",
            "application/json",
            "application/octet-stream",
            "application/x-protobuf",
            "text/html",
            "",
        ]
    ),
    st.text(max_size=40),
)


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/plain", b"hello", DataType.TEXT),
        ("text/plain; charset=utf-8", "héllo".encode(), DataType.TEXT),
        ("application/json", b'"hello world"', DataType.JSON),
        ("application/json", b'{"kind": "json", "n": 1}', DataType.JSON),
        ("application/octet-stream", b"\x00\x01\xfe\xff", DataType.BINARY),
    ],
)
def test_rest_bodies_the_sdks_send(content_type: str, body: bytes, expected: DataType) -> None:
    payload = Payload.from_rest_body(content_type, body)
    assert payload == Payload(expected, body)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", b"x"),
        (None, b"x"),
        ("application/x-protobuf", b"x"),
        ("application/json", b"not json"),
        ("text/plain", b"\xff\xfe"),
    ],
)
def test_rest_bodies_refused_with_400(content_type: str | None, body: bytes) -> None:
    with pytest.raises(BadRequest):
        Payload.from_rest_body(content_type, body)


@given(content_type=CONTENT_TYPES, body=st.binary(max_size=64))
def test_rest_bodies_become_payloads_or_bad_requests(content_type: str | None, body: bytes) -> None:
    try:
        payload = Payload.from_rest_body(content_type, body)
    except BadRequest:
        return
    assert payload.data == body
    assert payload.content_type == media_type(content_type)
    if payload.data_type is DataType.JSON:
        orjson.loads(payload.data)


@given(content_type=CONTENT_TYPES, body=st.binary(max_size=64))
def test_handler_replies_always_become_payloads(content_type: str | None, body: bytes) -> None:
    payload = Payload.from_upstream_reply(content_type, body)
    assert payload.data == body
    mt = media_type(content_type)
    if mt == "text/plain":
        assert payload.data_type is DataType.TEXT
    elif mt == "application/json":
        assert payload.data_type in (DataType.JSON, DataType.TEXT)
    else:
        assert payload.data_type is DataType.BINARY


def test_an_unparsable_json_reply_falls_back_to_text() -> None:
    assert Payload.from_upstream_reply("application/json", b"{oops").data_type is DataType.TEXT
