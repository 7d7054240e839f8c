"""The framework-free core on its own: configuration, routing, direct calls."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.sdk.spec_requests import CONNECT_BODY, CONNECT_HEADERS, SPEC_KEY, event_headers
from webpubsub.sdk import (
    DEFAULT_MAX_BODY_BYTES,
    ConnectRequest,
    ConnectResponse,
    EventHandlerError,
    GroupJoinedRequest,
    GroupLeftRequest,
    Headers,
    HttpRequest,
    HttpResponse,
    UserEventRequest,
    UserEventResponse,
    WebPubSubEventHandler,
)


def connect_request(path: str = "/eventhandler") -> HttpRequest:
    return HttpRequest("POST", path, Headers(CONNECT_HEADERS), CONNECT_BODY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hub": ""}, "hub"),
        ({"path": "eventhandler"}, "path"),
        ({"verify_signature": True}, "access key"),
        ({"keys": ["k", ""]}, "empty"),
        ({"allowed_origins": []}, "allowed_origins"),
        ({"max_body_bytes": 0}, "max_body_bytes"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"hub": "chat", **kwargs}
    with pytest.raises(ValueError, match=message):
        WebPubSubEventHandler(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", ["1024", 1.5, True])
def test_the_body_limit_must_be_an_int(limit: object) -> None:
    with pytest.raises(TypeError, match="max_body_bytes"):
        WebPubSubEventHandler("chat", max_body_bytes=limit)  # type: ignore[arg-type]


def test_signatures_are_verified_by_default_only_with_keys() -> None:
    assert WebPubSubEventHandler("chat", keys="k").verify_signature is True
    assert (
        WebPubSubEventHandler("chat", keys=["k"], verify_signature=False).verify_signature is False
    )
    assert WebPubSubEventHandler("chat").verify_signature is False


@pytest.mark.parametrize("status", [200, 204, 302, 399, 600])
def test_event_handler_error_needs_an_error_status(status: int) -> None:
    with pytest.raises(ValueError, match="400-599"):
        EventHandlerError(status)
    assert EventHandlerError(401, "who?").status == 401


def test_from_connection_string_verifies_with_its_access_key() -> None:
    cs = f"Endpoint=http://pubsub.example.com:8080;AccessKey={SPEC_KEY};Version=1.0;"
    handler = WebPubSubEventHandler.from_connection_string(cs, "chat")
    assert handler.process_sync(connect_request()).status == 204
    other = WebPubSubEventHandler.from_connection_string(cs.replace("ABC", "XYZ"), "chat")
    assert other.process_sync(connect_request()).status == 401
    unchecked = WebPubSubEventHandler.from_connection_string(cs, "chat", verify_signature=False)
    assert unchecked.verify_signature is False


EVENT = {"ce-type": "azure.webpubsub.user.message", "ce-hub": "chat"}
ORIGIN = {"WebHook-Request-Origin": "pubsub.example.com"}


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("OPTIONS", "/eventhandler", ORIGIN, True),
        ("options", "/eventhandler/chat/validate", {"webhook-request-origin": "x"}, True),
        ("OPTIONS", "/eventhandler", {}, False),
        (
            "OPTIONS",
            "/eventhandler",
            {"Origin": "x", "Access-Control-Request-Method": "POST"},
            False,
        ),
        ("GET", "/eventhandler", ORIGIN, True),
        ("GET", "/eventhandler", {}, False),
        ("POST", "/eventhandler", EVENT, True),
        (
            "POST",
            "/eventhandler/chat/connect",
            {**EVENT, "ce-type": "azure.webpubsub.sys.connect"},
            True,
        ),
        ("POST", "/eventhandler", {"CE-TYPE": "azure.webpubsub.user.x", "CE-HUB": "CHAT"}, True),
        ("POST", "/eventhandler", {}, False),
        ("POST", "/eventhandler/upload", {"Content-Type": "application/octet-stream"}, False),
        ("POST", "/eventhandler", {"ce-type": "azure.webpubsub.user.message"}, False),
        ("POST", "/eventhandler", {"ce-hub": "chat"}, False),
        ("POST", "/eventhandler", {**EVENT, "ce-hub": ""}, False),
        ("POST", "/eventhandler", {**EVENT, "ce-hub": "chat2"}, False),
        ("POST", "/eventhandler", {**EVENT, "ce-type": "com.example.upload"}, False),
        ("POST", "/eventhandler", {**EVENT, "ce-type": "Azure.WebPubSub.user.x"}, False),
        ("POST", "/eventhandlers", EVENT, False),
        ("POST", "/", EVENT, False),
        ("HEAD", "/eventhandler", {**EVENT, **ORIGIN}, False),
        ("PUT", "/eventhandler", {**EVENT, **ORIGIN}, False),
    ],
)
def test_matches(method: str, path: str, headers: dict[str, str], expected: bool) -> None:
    handler = WebPubSubEventHandler("chat")
    assert handler.matches(method, path, Headers(headers)) is expected


def test_a_root_path_takes_the_services_requests_on_every_path_and_nothing_else() -> None:
    handler = WebPubSubEventHandler("chat", path="/")
    assert handler.matches("POST", "/anything/at/all", Headers(EVENT))
    assert handler.matches("OPTIONS", "/", Headers(ORIGIN))
    assert not handler.matches("POST", "/anything/at/all", Headers())
    assert not handler.matches("OPTIONS", "/", Headers())
    assert not handler.matches("GET", "/", Headers())


async def test_handle_is_none_for_other_requests_and_the_answer_otherwise() -> None:
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY])
    other = HttpRequest("POST", "/other", Headers(CONNECT_HEADERS), CONNECT_BODY)
    assert await handler.handle(other) is None
    assert handler.handle_sync(other) is None
    assert await handler.handle(connect_request()) == HttpResponse(204)
    assert handler.handle_sync(connect_request()) == HttpResponse(204)


async def test_decorators_register_and_return_the_function() -> None:
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY])

    @handler.on_connect
    async def connect(request: ConnectRequest) -> ConnectResponse:
        request.context.states["room"] = request.query["room"][0]
        return ConnectResponse(groups=[request.query["room"][0]])

    @handler.on_event
    def event(request: UserEventRequest) -> UserEventResponse:
        return UserEventResponse.json({"room": request.context.states["room"]})

    assert callable(connect) and callable(event)
    answer = await handler.process(connect_request())
    assert (answer.status, answer.body) == (200, b'{"groups":["r1"]}')
    state = answer.header("CE-CONNECTIONSTATE")
    assert state == "eyJyb29tIjoicjEifQ=="

    message = HttpRequest(
        "POST", "/eventhandler", Headers(event_headers("message", ce_connectionState=state)), b"x"
    )
    # The sync path runs an async handler to completion, the async one a sync handler.
    reply = handler.process_sync(message)
    assert (reply.status, reply.body, reply.header("ce-connectionState")) == (
        200,
        b'{"room":"r1"}',
        None,
    )


async def test_a_handler_registered_again_is_called_the_way_the_new_one_needs() -> None:
    """Plain functions run in a worker thread, ``async def`` ones on the loop: decided
    per registration, so replacing one kind with the other switches how it is called."""
    threads: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    def plain(request: UserEventRequest) -> None:
        threads.append(("plain", threading.get_ident() == loop_thread))

    async def coroutine(request: UserEventRequest) -> None:
        threads.append(("async", threading.get_ident() == loop_thread))

    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY], on_event=coroutine)
    message = HttpRequest("POST", "/eventhandler", Headers(event_headers("message")), b"x")
    for func in (plain, coroutine, plain):
        assert (await handler.process(message)).status == 204
        handler.on_event(func)
    assert (await handler.process(message)).status == 204
    assert threads == [("async", True), ("plain", False), ("async", True), ("plain", False)]


async def test_a_probe_passed_to_process_directly_needs_an_origin() -> None:
    handler = WebPubSubEventHandler("chat")
    answer = await handler.process(HttpRequest("GET", "/eventhandler"))
    assert answer.status == 400
    probe = HttpRequest("GET", "/eventhandler", Headers({"WebHook-Request-Origin": "h"}))
    assert (await handler.process(probe)).header("WebHook-Allowed-Origin") == "*"


def test_headers_are_case_insensitive_and_keep_repetitions() -> None:
    headers = Headers([("A-B", "1"), ("a-b", "2"), ("C", "3")])
    assert headers["a-B"] == "1"
    assert headers.get_all("A-b") == ["1", "2"]
    assert list(headers) == ["a-b", "c"]
    assert len(headers) == 2
    assert "c" in headers and 3 not in headers
    assert headers.items_all() == (("A-B", "1"), ("a-b", "2"), ("C", "3"))
    assert Headers({"X": "y"})["x"] == "y"


def test_raw_header_values_are_utf8_when_they_can_be() -> None:
    headers = Headers.from_raw([(b"CE-UserId", "zoë ✓".encode()), (b"x-latin", b"caf\xe9")])
    assert headers["ce-userid"] == "zoë ✓"
    assert headers["X-Latin"] == "café"


def test_connect_response_refuses_a_single_name_for_a_list() -> None:
    with pytest.raises(TypeError, match=r"groups=\['room'\]"):
        ConnectResponse(groups="room")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="roles"):
        ConnectResponse(roles="webpubsub.joinLeaveGroup")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="groups"):
        ConnectResponse(groups=b"room")  # type: ignore[arg-type]
    both = ConnectResponse(groups=("room",), roles=[])
    assert both.to_json() == b'{"groups":["room"],"roles":[]}'


def test_the_default_body_limit_takes_a_full_service_message() -> None:
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY], on_event=lambda r: "ok")
    assert handler.max_body_bytes == DEFAULT_MAX_BODY_BYTES > 1024 * 1024
    headers = Headers(event_headers("message", content_type="application/octet-stream"))
    message = HttpRequest("POST", "/eventhandler", headers, b"x" * 1024 * 1024)
    assert handler.process_sync(message).status == 200
    too_large = HttpRequest("POST", "/eventhandler", headers, b"x" * (DEFAULT_MAX_BODY_BYTES + 1))
    answer = handler.process_sync(too_large)
    assert (answer.status, answer.body) == (
        413,
        f"the request body exceeds {DEFAULT_MAX_BODY_BYTES} bytes".encode(),
    )


async def test_a_body_already_read_is_held_to_the_limit_too() -> None:
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY], max_body_bytes=10)
    headers = Headers(event_headers("message"))
    for body, status in ((b"x" * 10, 204), (b"x" * 11, 413)):
        request = HttpRequest("POST", "/eventhandler", headers, body)
        assert (await handler.process(request)).status == status
        assert handler.process_sync(request).status == status
        assert (await handler.handle(request) or HttpResponse(0)).status == status


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({}, 204),
        ({"ce-signature": ""}, 401),
        ({"WebHook-Request-Origin": "evil.example.com"}, 403),
        ({"ce-type": ""}, 400),
        ({"ce-connectionId": ""}, 400),
        ({"ce-hub": ""}, 400),
        ({"Content-Length": "11"}, 413),
    ],
)
async def test_the_body_is_read_only_once_the_headers_pass(
    change: dict[str, str], status: int
) -> None:
    handler = WebPubSubEventHandler(
        "chat", keys=[SPEC_KEY], allowed_origins="pubsub.example.com", max_body_bytes=10
    )
    headers = Headers({**event_headers("message"), "Content-Length": "2", **change})
    reads: list[int] = []

    async def read_body(limit: int) -> bytes:
        reads.append(limit)
        return b"hi"

    def read_body_sync(limit: int) -> bytes:
        reads.append(limit)
        return b"hi"

    answer = await handler.process_stream("POST", "/eventhandler", headers, read_body)
    assert answer is not None and answer.status == status
    answer = handler.process_stream_sync("POST", "/eventhandler", headers, read_body_sync)
    assert answer.status == status
    assert reads == ([11, 11] if status == 204 else [])


async def test_a_client_gone_while_its_body_is_read_gets_no_answer() -> None:
    async def gone(limit: int) -> None:
        return None

    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY])
    headers = Headers(event_headers("message"))
    assert await handler.process_stream("POST", "/eventhandler", headers, gone) is None
    probe = Headers({"WebHook-Request-Origin": "h"})
    answer = await handler.process_stream("OPTIONS", "/eventhandler", probe, gone)
    assert answer is not None and answer.status == 200


def presence_request(ce_type: str, event: str, body: bytes) -> HttpRequest:
    """A group presence event as webpubsub sends it (the connected event's headers, its
    own type and name)."""
    headers = event_headers(event, system=True) | {"ce-type": ce_type}
    return HttpRequest("POST", "/eventhandler", Headers(headers), body)


async def test_group_presence_events_reach_their_handlers() -> None:
    seen: list[object] = []
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY], on_group_joined=seen.append)

    @handler.on_group_left
    async def left(request: GroupLeftRequest) -> str:
        seen.append(request)
        return "ignored"

    joined = presence_request("azure.webpubsub.group.joined", "joined", b'{"group":"g 1"}')
    assert await handler.process(joined) == HttpResponse(204)
    gone = presence_request("azure.webpubsub.group.left", "left", b'{"group":"g 1"}')
    # The sync path runs the async handler to completion (outside this loop).
    assert await asyncio.to_thread(handler.process_sync, gone) == HttpResponse(204)
    first, second = seen
    assert isinstance(first, GroupJoinedRequest) and isinstance(second, GroupLeftRequest)
    assert (first.group, second.group) == ("g 1", "g 1")
    assert first.context.event_name == "joined"
    assert first.context.event_type == "azure.webpubsub.group.joined"
    assert (first.context.connection_id, first.context.user_id) == ("conn1", "alice")


async def test_a_presence_event_under_another_type_prefix_is_one_too() -> None:
    # The name Azure gives the type is not public: any azure.webpubsub. type that is no
    # system or user event and is named joined/left is taken as a presence event.
    seen: list[GroupJoinedRequest] = []
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY], on_group_joined=seen.append)
    request = presence_request("azure.webpubsub.presence.joined", "joined", b'{"group":"g"}')
    assert await handler.process(request) == HttpResponse(204)
    assert [r.group for r in seen] == ["g"]
    # A system event named joined stays a system event (unknown here: 204, no call).
    system = presence_request("azure.webpubsub.sys.joined", "joined", b'{"group":"g"}')
    assert await handler.process(system) == HttpResponse(204)
    other = presence_request("azure.webpubsub.presence.moved", "moved", b"{}")
    assert (await handler.process(other)).status == 400
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [(b"[]", b"JSON object"), (b'{"group":1}', b"'group'"), (b"{}", b"'group'"), (b"{", b"JSON")],
)
async def test_a_malformed_presence_event_is_answered_400(body: bytes, problem: bytes) -> None:
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY], on_group_joined=lambda r: None)
    answer = await handler.process(presence_request("azure.webpubsub.group.joined", "joined", body))
    assert answer.status == 400 and problem in answer.body


async def test_a_presence_event_without_its_handler_is_answered_204() -> None:
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY])
    request = presence_request("azure.webpubsub.group.left", "left", b'{"group":"g"}')
    assert await handler.process(request) == HttpResponse(204)


def _message(connection_id: str, signature: str) -> HttpRequest:
    headers = event_headers("message", ce_connectionId=connection_id, ce_signature=signature)
    return HttpRequest("POST", "/eventhandler", Headers(headers), b"hi")


async def test_only_a_connection_whose_signature_matched_is_remembered() -> None:
    """A forged event's connection id (chosen by whoever sent it, of any size) must not
    stay in memory; a signed one is kept, and the kept ones stay bounded."""
    from webpubsub.protocol.cloudevents import signature
    from webpubsub.sdk import handler as handler_module

    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY], on_event=lambda r: None)
    forged = "x" * 100_000
    answer = await handler.process(_message(forged, "sha256=" + "0" * 64))
    assert answer.status == 401
    assert all(cid != forged for cid, _ in handler_module._signed)

    signed = f"conn-{id(handler)}"
    answer = await handler.process(_message(signed, signature(signed, [SPEC_KEY])))
    assert answer.status == 204  # handled: the handler returned nothing
    assert (signed, (SPEC_KEY,)) in handler_module._signed
    # Kept, it still refuses what another key or connection signed.
    assert (await handler.process(_message(signed, signature(signed, ["other"])))).status == 401

    for i in range(handler_module.SIGNED_KEPT + 5):  # bounded: a few past the bound
        cid = f"c{i}"
        assert (await handler.process(_message(cid, signature(cid, [SPEC_KEY])))).status == 204
    assert len(handler_module._signed) <= handler_module.SIGNED_KEPT


def test_headers_given_as_an_http_message_still_route() -> None:
    """``http.server`` hands its handler an ``HTTPMessage`` (not a Mapping)."""
    import email.parser
    import http.client

    raw = "".join(f"{k}: {v}\r\n" for k, v in event_headers("message").items()) + "\r\n"
    message = email.parser.Parser(_class=http.client.HTTPMessage).parsestr(raw)
    handler = WebPubSubEventHandler("chat", keys=[SPEC_KEY])
    assert handler.matches("POST", "/eventhandler", message)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Headers"):
        handler.matches("POST", "/eventhandler", 42)  # type: ignore[arg-type]


def test_hub_and_path_are_read_only() -> None:
    """What routing is decided on is derived once from them: they cannot go stale."""
    handler = WebPubSubEventHandler("chat", path="/events/")
    assert (handler.hub, handler.path) == ("chat", "/events")
    with pytest.raises(AttributeError):
        handler.hub = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        handler.path = "/elsewhere"  # type: ignore[misc]
