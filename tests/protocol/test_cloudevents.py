"""CloudEvents requests and handler answers (Azure docs: CloudEvents), byte for byte."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import ConnectRejected, UpstreamError
from webpubsub.protocol.cloudevents import (
    MAX_RETRY_AFTER,
    MAX_STATE_BYTES,
    AsyncOutcome,
    ConnectDecision,
    ConnectRequest,
    EventContext,
    EventReply,
    UpstreamResponse,
    async_outcome,
    connect_request,
    connected_request,
    disconnected_request,
    format_time,
    group_presence_request,
    parse_connect_response,
    parse_retry_after,
    parse_user_event_response,
    signature,
    user_event_request,
    validation_accepted,
    validation_request,
)
from webpubsub.protocol.payload import DataType, Payload

KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
SIG_CONN1 = "sha256=8de7281e588e23b0a30a7180ffa240257b8176e983004c240c9f3f7a7233c993"
NOW = 1714557600.75  # 2024-05-01T10:00:00.75Z
URL = "https://app.example.com/eventhandler/chat/connect"

CTX = EventContext(
    hub="chat",
    connection_id="conn1",
    user_id="alice",
    subprotocol="json.webpubsub.azure.v1",
    state="eyJrZXkiOiJhIn0=",
    event_id="3",
    origin="pubsub.example.com",
)
BARE = EventContext(
    hub="chat",
    connection_id="conn1",
    user_id=None,
    subprotocol=None,
    state="",
    event_id="0",
    origin="pubsub.example.com",
)


def common(ce_type: str, event: str, event_id: str) -> list[tuple[str, str]]:
    return [
        ("ce-specversion", "1.0"),
        ("ce-type", ce_type),
        ("ce-source", "/hubs/chat/client/conn1"),
        ("ce-id", event_id),
        ("ce-time", "2024-05-01T10:00:00Z"),
        ("ce-awpsversion", "1.0"),
        ("ce-hub", "chat"),
        ("ce-connectionId", "conn1"),
        ("ce-eventName", event),
    ]


# -- signature, ce-time ------------------------------------------------------


def test_signature_matches_the_spec_example() -> None:
    assert signature("conn1", [KEY]) == SIG_CONN1


def test_signature_lists_primary_then_secondary_without_spaces() -> None:
    sig = signature("conn1", [KEY, "secondary"])
    first, second = sig.split(",")
    assert first == SIG_CONN1
    assert second.startswith("sha256=") and len(second) == 7 + 64 and second != first


def test_signature_with_no_keys_is_empty() -> None:
    assert signature("conn1", []) == ""


def test_format_time_is_utc_whole_seconds() -> None:
    assert format_time(NOW) == "2024-05-01T10:00:00Z"
    assert format_time(0) == "1970-01-01T00:00:00Z"


# -- building ------------------------------------------------------------


def test_connect_request_headers_and_body() -> None:
    request = ConnectRequest(
        claims={"sub": ["alice"], "role": ["webpubsub.joinLeaveGroup"]},
        query={"id": ["alice"]},
        headers={"User-Agent": ["test"]},
        subprotocols=("json.reliable.webpubsub.azure.v1",),
        client_certificates=(("ab12", "-----BEGIN CERTIFICATE-----"),),
    )
    req = connect_request(CTX, URL, [KEY], NOW, request)
    assert req.method == "POST"
    assert req.url == URL
    assert list(req.headers) == [
        ("Content-Type", "application/json; charset=utf-8"),
        *common("azure.webpubsub.sys.connect", "connect", "3"),
        ("ce-userId", "alice"),
        ("ce-connectionState", "eyJrZXkiOiJhIn0="),  # no ce-subprotocol on connect
        ("ce-signature", SIG_CONN1),
        ("WebHook-Request-Origin", "pubsub.example.com"),
    ]
    assert orjson.loads(req.body) == {
        "claims": {"sub": ["alice"], "role": ["webpubsub.joinLeaveGroup"]},
        "query": {"id": ["alice"]},
        "headers": {"User-Agent": ["test"]},
        "subprotocols": ["json.reliable.webpubsub.azure.v1"],
        "clientCertificates": [{"thumbprint": "ab12", "content": "-----BEGIN CERTIFICATE-----"}],
    }


def test_connect_request_always_has_all_five_body_fields() -> None:
    req = connect_request(BARE, URL, [KEY], NOW, ConnectRequest())
    assert req.body == (
        b'{"claims":{},"query":{},"headers":{},"subprotocols":[],"clientCertificates":[]}'
    )
    names = [name for name, _ in req.headers]
    assert "ce-userId" not in names and "ce-connectionState" not in names


def test_connected_request() -> None:
    req = connected_request(CTX, URL, [KEY], NOW)
    assert req.body == b"{}"
    assert list(req.headers) == [
        ("Content-Type", "application/json; charset=utf-8"),
        *common("azure.webpubsub.sys.connected", "connected", "3"),
        ("ce-userId", "alice"),
        ("ce-subprotocol", "json.webpubsub.azure.v1"),
        ("ce-connectionState", "eyJrZXkiOiJhIn0="),
        ("ce-signature", SIG_CONN1),
        ("WebHook-Request-Origin", "pubsub.example.com"),
    ]


def test_disconnected_request_always_sends_reason() -> None:
    req = disconnected_request(BARE, URL, [KEY], NOW, "")
    assert req.body == b'{"reason":""}'
    assert list(req.headers) == [
        ("Content-Type", "application/json; charset=utf-8"),
        *common("azure.webpubsub.sys.disconnected", "disconnected", "0"),
        ("ce-signature", SIG_CONN1),
        ("WebHook-Request-Origin", "pubsub.example.com"),
    ]
    assert (
        disconnected_request(BARE, URL, [KEY], NOW, 'bye "x"').body == b'{"reason":"bye \\"x\\""}'
    )


@pytest.mark.parametrize("event", ["joined", "left"])
def test_group_presence_request(event: str) -> None:
    req = group_presence_request(CTX, URL, [KEY], NOW, event, 'room "1"')
    assert (req.method, req.url) == ("POST", URL)
    assert req.body == b'{"group":"room \\"1\\""}'
    # The headers of connected, with the type and event name of a presence event.
    expected = connected_request(CTX, URL, [KEY], NOW).headers
    assert req.headers == tuple(
        ("ce-type", f"azure.webpubsub.group.{event}")
        if k == "ce-type"
        else ("ce-eventName", event)
        if k == "ce-eventName"
        else (k, v)
        for k, v in expected
    )
    assert dict(req.headers)["ce-subprotocol"] == "json.webpubsub.azure.v1"


def test_group_presence_request_of_a_bare_connection() -> None:
    req = group_presence_request(BARE, URL, [], NOW, "left", "g")
    assert req.body == b'{"group":"g"}'
    assert list(req.headers) == [
        ("Content-Type", "application/json; charset=utf-8"),
        *common("azure.webpubsub.group.left", "left", "0"),
        ("WebHook-Request-Origin", "pubsub.example.com"),
    ]


@pytest.mark.parametrize(
    ("payload", "content_type"),
    [
        (Payload.text("hi"), "text/plain"),
        (Payload(DataType.JSON, b'{"a":1}'), "application/json"),
        (Payload.binary(b"\x00\x01"), "application/octet-stream"),
        (Payload(DataType.PROTOBUF, b"\x0a\x00"), "application/x-protobuf"),
    ],
)
def test_user_event_request(payload: Payload, content_type: str) -> None:
    req = user_event_request(CTX, URL, [KEY], NOW, "chat", payload)
    assert req.body == payload.data
    assert list(req.headers) == [
        ("Content-Type", content_type),
        *common("azure.webpubsub.user.chat", "chat", "3"),
        ("ce-userId", "alice"),
        ("ce-subprotocol", "json.webpubsub.azure.v1"),
        ("ce-connectionState", "eyJrZXkiOiJhIn0="),
        ("ce-signature", SIG_CONN1),
        ("WebHook-Request-Origin", "pubsub.example.com"),
    ]


def test_validation_request() -> None:
    req = validation_request("https://app.example.com/eventhandler/chat/validate", "h.example")
    assert req.method == "OPTIONS"
    assert req.body == b""
    assert req.headers == (("WebHook-Request-Origin", "h.example"), ("ce-awpsversion", "1.0"))


# -- validation answers --------------------------------------------------------


def answer(status: int, *headers: tuple[str, str], body: bytes = b"") -> UpstreamResponse:
    return UpstreamResponse(status, tuple(headers), body)


@pytest.mark.parametrize(
    "headers",
    [
        [("WebHook-Allowed-Origin", "*")],
        [("webhook-allowed-origin", "pubsub.example.com")],
        [("WebHook-Allowed-Origin", "PubSub.Example.COM:8080")],  # express: host with port
        [("WebHook-Allowed-Origin", "a.example"), ("WebHook-Allowed-Origin", "pubsub.example.com")],
        [("WebHook-Allowed-Origin", "a.example, pubsub.example.com:443")],
        [("WebHook-Allowed-Origin", "https://pubsub.example.com")],
    ],
)
def test_validation_accepted(headers: list[tuple[str, str]]) -> None:
    assert validation_accepted(answer(200, *headers), "pubsub.example.com")
    assert validation_accepted(answer(204, *headers), "pubsub.example.com")


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (200, []),
        (200, [("WebHook-Allowed-Origin", "other.example.com")]),
        (200, [("WebHook-Allowed-Origin", "pubsub.example.com.evil")]),
        (200, [("WebHook-Allowed-Origin", "")]),
        (200, [("WebHook-Request-Origin", "*")]),
        (404, [("WebHook-Allowed-Origin", "*")]),
        (301, [("WebHook-Allowed-Origin", "*")]),
        (500, [("WebHook-Allowed-Origin", "pubsub.example.com")]),
    ],
)
def test_validation_refused(status: int, headers: list[tuple[str, str]]) -> None:
    assert not validation_accepted(answer(status, *headers), "pubsub.example.com")


def test_validation_accepts_ipv6_origin_ignoring_port() -> None:
    assert validation_accepted(answer(200, ("WebHook-Allowed-Origin", "[::1]:5000")), "::1")


# -- connect answers -----------------------------------------------------------


def test_connect_204_and_empty_200_accept_with_defaults() -> None:
    assert parse_connect_response(answer(204)) == ConnectDecision()
    assert parse_connect_response(answer(200)) == ConnectDecision()
    empty = answer(200, ("Content-Type", "application/octet-stream"), body=b"  \n")
    assert parse_connect_response(empty) == ConnectDecision()


def test_connect_json_fields() -> None:
    body = (
        b'{"userId":"bob","groups":["g1","g2"],"roles":["webpubsub.sendToGroup.g1"],'
        b'"subprotocol":"json.webpubsub.azure.v1","mqtt":{"x":1},"unknown":true}'
    )
    decision = parse_connect_response(answer(200, ("Content-Type", "text/html"), body=body))
    assert decision == ConnectDecision(
        user_id="bob",
        user_id_set=True,
        groups=("g1", "g2"),
        roles=("webpubsub.sendToGroup.g1",),
        subprotocol="json.webpubsub.azure.v1",
        state=None,
        body_ignored=False,
    )


def test_connect_empty_user_id_is_set_and_null_is_absent() -> None:
    set_empty = parse_connect_response(answer(200, body=b'{"userId":""}'))
    assert set_empty.user_id == "" and set_empty.user_id_set
    null = parse_connect_response(answer(200, body=b'{"userId":null,"groups":null}'))
    assert null == ConnectDecision()
    absent = parse_connect_response(answer(200, body=b'{"groups":[]}'))
    assert absent.user_id_set is False and absent.groups == ()


@pytest.mark.parametrize(
    "body",
    [
        b'{"userId":5}',
        b'{"groups":"g1"}',
        b'{"groups":["g1",2]}',
        b'{"roles":{"a":1}}',
        b'{"subprotocol":["a"]}',
    ],
)
def test_connect_wrong_field_types_are_upstream_errors(body: bytes) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_connect_response(answer(200, body=body))
    assert info.value.status == 200


@pytest.mark.parametrize("body", [b"<html>ok</html>", b"[1,2]", b'"alice"', b"\xff\xfe"])
def test_connect_non_object_body_is_ignored_and_flagged(body: bytes) -> None:
    decision = parse_connect_response(answer(200, body=body))
    assert decision == ConnectDecision(body_ignored=True)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 499])
def test_connect_4xx_rejects_with_that_status(status: int) -> None:
    with pytest.raises(ConnectRejected) as info:
        parse_connect_response(answer(status, body=b'{"userId":"x"}'))
    assert info.value.http_status == status


@pytest.mark.parametrize("status", [500, 502, 503, 302, 101])
def test_connect_other_statuses_are_upstream_errors(status: int) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_connect_response(answer(status))
    assert info.value.status == status
    assert not isinstance(info.value, ConnectRejected)


def test_connection_state_header_last_value_wins_and_empty_clears() -> None:
    state = ("ce-connectionState", "first"), ("CE-CONNECTIONSTATE", "second")
    assert parse_connect_response(answer(204, *state)).state == "second"
    assert parse_connect_response(answer(200, ("ce-connectionState", ""))).state == ""
    assert parse_user_event_response(answer(200, *state)).state == "second"
    assert parse_user_event_response(answer(204)).state is None


def test_connection_state_over_8_kib_is_an_upstream_error() -> None:
    assert parse_connect_response(answer(204, ("ce-connectionState", "x" * 8192))).state
    big = ("ce-connectionState", "x" * 8193)
    with pytest.raises(UpstreamError):
        parse_connect_response(answer(204, big))
    with pytest.raises(UpstreamError):
        parse_user_event_response(answer(200, big))


def test_connection_state_that_is_not_utf_8_is_an_upstream_error() -> None:
    """The parser keeps a handler's non-UTF-8 header bytes as lone surrogates: such a
    state could never be sent back on the next event, so the answer is refused."""
    bad = ("ce-connectionState", b"\xff\xfe".decode("utf-8", "surrogateescape"))
    with pytest.raises(UpstreamError, match="not UTF-8") as info:
        parse_connect_response(answer(204, bad))
    assert info.value.status == 204
    with pytest.raises(UpstreamError, match="not UTF-8"):
        parse_user_event_response(answer(200, bad))
    assert parse_user_event_response(answer(200, ("ce-connectionState", "é€"))).state == "é€"


# -- user event answers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        ("text/plain; charset=utf-8", b"hi", Payload(DataType.TEXT, b"hi")),
        ("application/json", b'{"a":1}', Payload(DataType.JSON, b'{"a":1}')),
        ("application/json", b"{not json", Payload(DataType.TEXT, b"{not json")),
        ("application/octet-stream", b"\x00\xff", Payload(DataType.BINARY, b"\x00\xff")),
        (None, b"\x01", Payload(DataType.BINARY, b"\x01")),
    ],
)
def test_user_event_reply_payload(content_type: str | None, body: bytes, expected: Payload) -> None:
    headers = [("Content-Type", content_type)] if content_type else []
    reply = parse_user_event_response(answer(200, *headers, body=body))
    assert reply == EventReply(payload=expected, state=None)


def test_user_event_empty_replies() -> None:
    assert parse_user_event_response(answer(204)) == EventReply(None, None)
    no_data = answer(200, ("Content-Type", "application/octet-stream"))
    assert parse_user_event_response(no_data) == EventReply(None, None)


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503, 302])
def test_user_event_failure_statuses(status: int) -> None:
    with pytest.raises(UpstreamError) as info:
        parse_user_event_response(answer(status, body=b"details"))
    assert info.value.status == status


# -- arbitrary input raises only our errors ------------------------------------------------

header_names = st.sampled_from(
    ["ce-connectionState", "Content-Type", "WebHook-Allowed-Origin", "X-Other"]
) | st.text(max_size=20)
responses = st.builds(
    UpstreamResponse,
    status=st.integers(min_value=-1, max_value=1000),
    headers=st.lists(st.tuples(header_names, st.text(max_size=9000)), max_size=4).map(tuple),
    body=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=10),
            lambda kids: (
                st.lists(kids, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["userId", "groups", "roles", "subprotocol", "x"]), kids
                )
            ),
            max_leaves=8,
        ).map(orjson.dumps),
    ),
)


@given(responses)
def test_parse_connect_response_raises_only_our_errors(response: UpstreamResponse) -> None:
    try:
        decision = parse_connect_response(response)
    except (UpstreamError, ConnectRejected):
        return
    assert 200 <= response.status <= 299
    assert isinstance(decision, ConnectDecision)


@given(responses)
def test_parse_user_event_response_raises_only_our_errors(response: UpstreamResponse) -> None:
    try:
        reply = parse_user_event_response(response)
    except UpstreamError:
        return
    assert 200 <= response.status <= 299
    assert isinstance(reply, EventReply)


def _reply_as_read_before(response: UpstreamResponse) -> object:
    """A user event's answer the way it was read before the one-pass reading: each
    header looked up by its lower-cased name."""
    status = response.status
    if not 200 <= status <= 299:
        return "status"
    states = response.header_values("ce-connectionState")
    state = states[-1] if states else None
    if state is not None:
        try:
            if len(state.encode("utf-8")) > MAX_STATE_BYTES:
                return "too large"
        except UnicodeEncodeError:
            return "not utf-8"
    if status == 204 or not response.body:
        return EventReply(None, state)
    types = response.header_values("content-type")
    return EventReply(
        Payload.from_upstream_reply(types[0] if types else None, response.body), state
    )


@given(
    responses,
    st.lists(
        st.tuples(
            st.sampled_from(["Content-Type", "content-TYPE", "ce-connectionState", "CE-X"]),
            st.sampled_from(["text/plain", "application/json", "", "s\udcff", "x" * 9000]),
        ),
        max_size=5,
    ),
)
def test_a_user_event_answer_reads_as_header_by_header(
    response: UpstreamResponse, more: list[tuple[str, str]]
) -> None:
    response = UpstreamResponse(response.status, (*response.headers, *more), response.body)
    try:
        got: object = parse_user_event_response(response)
    except UpstreamError as exc:
        got = {"the event handler answered": "status", "over": "too large", "not UTF": "not utf-8"}
        got = next(v for k, v in got.items() if k in exc.message)
    assert got == _reply_as_read_before(response)


@given(responses, st.text(max_size=30))
def test_validation_accepted_never_raises(response: UpstreamResponse, origin: str) -> None:
    assert validation_accepted(response, origin) in (True, False)


# -- asynchronous events: outcome and Retry-After -----------------------------------------

NOW = 1_714_557_600.0  # 2024-05-01T10:00:00Z


@pytest.mark.parametrize(
    ("status", "headers", "outcome"),
    [
        (200, (), AsyncOutcome(delivered=True)),
        (204, (), AsyncOutcome(delivered=True)),
        (400, (), AsyncOutcome(delivered=False)),
        (404, (("Retry-After", "5"),), AsyncOutcome(delivered=False)),  # refused for good
        (408, (), AsyncOutcome(delivered=False, retry=True)),
        (429, (("retry-after", "120"),), AsyncOutcome(False, True, 120.0)),
        (503, (("Retry-After", "Wed, 01 May 2024 10:00:30 GMT"),), AsyncOutcome(False, True, 30.0)),
        (500, (("Retry-After", "soon"),), AsyncOutcome(delivered=False, retry=True)),
    ],
)
def test_async_outcome(
    status: int, headers: tuple[tuple[str, str], ...], outcome: AsyncOutcome
) -> None:
    assert async_outcome(UpstreamResponse(status, headers, b""), NOW) == outcome


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        (" 7 ", 7.0),
        ("99999999999999999999", MAX_RETRY_AFTER),
        ("Wed, 01 May 2024 09:00:00 GMT", 0.0),  # in the past: now
        ("Thu, 01 May 2025 10:00:00 GMT", MAX_RETRY_AFTER),
        ("-1", None),
        ("1.5", None),
        ("", None),
        ("Wed, 01 May 2024 10:00:30", None),  # no zone
        ("٣", None),  # a digit, not ASCII
    ],
)
def test_parse_retry_after(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


@given(st.text(max_size=40), st.floats(0, 4e9))
def test_parse_retry_after_is_none_or_within_bounds(value: str, now: float) -> None:
    seconds = parse_retry_after(value, now)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER


@given(st.integers(0, 10**30))
def test_parse_retry_after_reads_every_delay_seconds(delay: int) -> None:
    assert parse_retry_after(str(delay), NOW) == min(float(delay), MAX_RETRY_AFTER)
