"""Arbitrary requests and state headers never crash the SDK's core."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sdk.spec_requests import SPEC_KEY
from webpubsub.protocol.cloudevents import EventContext, group_presence_request
from webpubsub.sdk import GroupJoinedRequest, GroupLeftRequest, WebPubSubEventHandler
from webpubsub.sdk.http import Headers, HttpRequest
from webpubsub.sdk.state import decode_state, encode_state

HEADER_NAMES = st.sampled_from(
    [
        "ce-type",
        "ce-hub",
        "ce-connectionId",
        "ce-userId",
        "ce-eventName",
        "ce-signature",
        "ce-connectionState",
        "Content-Type",
        "Content-Length",
        "WebHook-Request-Origin",
        "x-other",
    ]
)
HEADER_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "azure.webpubsub.sys.connect",
            "azure.webpubsub.sys.connected",
            "azure.webpubsub.sys.disconnected",
            "azure.webpubsub.user.message",
            "azure.webpubsub.group.joined",
            "azure.webpubsub.group.left",
            "joined",
            "left",
            "chat",
            "application/json",
            "text/plain",
            "application/octet-stream",
        ]
    ),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(
    method=st.sampled_from(["POST", "OPTIONS", "GET", "PUT"]),
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=10),
    body=st.binary(max_size=80),
    keys=st.sampled_from([(), (SPEC_KEY,)]),
)
def test_arbitrary_requests_get_an_answer_or_fall_through(
    method: str, headers: list[tuple[str, str]], body: bytes, keys: tuple[str, ...]
) -> None:
    handler = WebPubSubEventHandler("chat", keys=keys)
    response = handler.handle_sync(HttpRequest(method, "/eventhandler", Headers(headers), body))
    if response is not None:
        assert 200 <= response.status < 600
        assert b"Traceback" not in response.body


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_state_round_trips(values: dict[str, object]) -> None:
    assert decode_state(encode_state(values)) == values


@given(st.text(max_size=60))
def test_any_state_header_decodes_to_a_dict(header: str) -> None:
    assert isinstance(decode_state(header), dict)


@given(
    event=st.sampled_from(["joined", "left"]),
    group=st.text(min_size=1, max_size=40),
    user=st.none() | st.text(min_size=1, max_size=10),
)
def test_a_presence_event_the_service_builds_is_what_the_sdk_reads(
    event: str, group: str, user: str | None
) -> None:
    ctx = EventContext("chat", "conn1", user, None, "", "7", "pubsub.example.com")
    built = group_presence_request(ctx, "http://app/eventhandler", [SPEC_KEY], 0.0, event, group)
    seen: list[GroupJoinedRequest | GroupLeftRequest] = []
    handler = WebPubSubEventHandler(
        "chat", keys=[SPEC_KEY], on_group_joined=seen.append, on_group_left=seen.append
    )
    request = HttpRequest("POST", "/eventhandler", Headers(built.headers), built.body)
    assert handler.handle_sync(request) is not None
    (got,) = seen
    assert isinstance(got, GroupJoinedRequest if event == "joined" else GroupLeftRequest)
    assert (got.group, got.context.user_id, got.context.event_name) == (group, user, event)


def reference_from_raw(
    items: list[tuple[bytes, bytes]],
) -> tuple[tuple[tuple[str, str], ...], list[tuple[str, str]]]:
    """What ``Headers.from_raw`` promises, header by header: latin-1 names, UTF-8 values
    where they decode (ISO-8859-1 otherwise), the first of a repeated name wins."""
    pairs = []
    for name, value in items:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            text = value.decode("latin-1")
        pairs.append((name.decode("latin-1"), text))
    first: dict[str, str] = {}
    for name, text in pairs:
        first.setdefault(name.lower(), text)
    return tuple(pairs), list(first.items())


RAW_NAMES = st.sampled_from([b"ce-type", b"CE-Type", b"Ce-UserId", b"x-\xe9", b"a"]) | st.binary(
    max_size=6
)
RAW_VALUES = st.sampled_from([b"", b"v", "zo\u00eb \u2713".encode(), b"caf\xe9"]) | st.binary(
    max_size=8
)


@given(
    items=st.lists(st.tuples(RAW_NAMES, RAW_VALUES), max_size=8),
    as_generator=st.booleans(),
)
def test_headers_from_raw_decode_as_documented(
    items: list[tuple[bytes, bytes]], as_generator: bool
) -> None:
    # A generator is read once: the UTF-8 fallback must not read it again.
    headers = Headers.from_raw(iter(items) if as_generator else items)
    pairs, first = reference_from_raw(items)
    assert headers.items_all() == pairs
    assert list(headers.items()) == first
    for name, value in first:
        assert headers[name.upper() if name.isascii() else name] == value
