"""The framework-free core on its own: configuration, routing, direct calls."""

from __future__ import annotations

import pytest

from tests.sdk.spec_requests import CONNECT_BODY, CONNECT_HEADERS, SPEC_KEY, event_headers
from webpubsub.sdk import (
    ConnectRequest,
    ConnectResponse,
    EventHandlerError,
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
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"hub": "chat", **kwargs}
    with pytest.raises(ValueError, match=message):
        WebPubSubEventHandler(**options)  # type: ignore[arg-type]


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


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("OPTIONS", "/eventhandler", {}, True),
        ("options", "/eventhandler/chat/validate", {}, True),
        ("GET", "/eventhandler", {"webhook-request-origin": "x"}, True),
        ("GET", "/eventhandler", {}, False),
        ("POST", "/eventhandler", {}, True),
        ("POST", "/eventhandler", {"CE-HUB": "CHAT"}, True),
        ("POST", "/eventhandler", {"ce-hub": "chat2"}, False),
        ("POST", "/eventhandlers", {}, False),
        ("POST", "/", {}, False),
        ("HEAD", "/eventhandler", {}, False),
    ],
)
def test_matches(method: str, path: str, headers: dict[str, str], expected: bool) -> None:
    handler = WebPubSubEventHandler("chat")
    assert handler.matches(method, path, Headers(headers)) is expected


def test_a_root_path_takes_every_path() -> None:
    handler = WebPubSubEventHandler("chat", path="/")
    assert handler.matches("POST", "/anything/at/all", Headers())


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
