"""The event handler through both adapters, driven by literal requests.

Every test runs twice (``adapter`` = asgi: Starlette on uvicorn, wsgi: Flask on
werkzeug). The requests are the ones Azure docs: CloudEvents shows, byte for byte where it
gives them: headers, bodies, the CloudEvents signature example and the express SDK's state
``eyJrZXkiOiJhIn0=`` (``{"key":"a"}``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from tests.sdk.conftest import UPLOAD_PATH, Serve
from tests.sdk.servers import WAIT_SECONDS, Recorder
from tests.sdk.spec_requests import (
    CONNECT_BODY,
    CONNECT_HEADERS,
    EXPRESS_STATE,
    OTHER_KEY,
    SPEC_KEY,
    SPEC_SIGNATURE,
    event_headers,
)
from webpubsub.sdk import (
    ConnectedRequest,
    ConnectRequest,
    ConnectResponse,
    DataType,
    DisconnectedRequest,
    EventHandlerError,
    UserEventRequest,
    UserEventResponse,
    WebPubSubEventHandler,
)


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Answer:
    async with session.request(method, url, headers=headers or {}, data=body) as resp:
        return Answer(resp.status, resp.headers, await resp.read())


async def send_partly(
    url: str, method: str, path: str, head: dict[str, str], body: bytes
) -> Answer:
    """Send the request line, ``head`` and ``body``, and never anything more; the answer.

    ``head`` announces more body than is sent (a ``Content-Length``, or chunks without
    the last one), so a server that waits for the whole body never answers: the
    wait is bounded, and the test fails with a timeout instead.
    """
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in head.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body)
    await writer.drain()

    async def answer() -> Answer:
        status = int((await reader.readline()).split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip()] = value.strip()
        length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
        proxy = CIMultiDictProxy(CIMultiDict(headers))
        return Answer(status, proxy, await reader.readexactly(length))

    try:
        return await asyncio.wait_for(answer(), WAIT_SECONDS)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def in_two_chunks(body: bytes) -> AsyncIterator[bytes]:
    """``body`` for aiohttp to send chunked."""
    yield body[: len(body) // 2]
    yield body[len(body) // 2 :]


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n"


def flavoured(flavour: str, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``func`` as a plain function or as an ``async def`` (both must work)."""
    if flavour == "sync":
        return func

    async def handler(request: Any) -> Any:
        return func(request)

    return handler


def handler_for(**options: Any) -> WebPubSubEventHandler:
    options.setdefault("keys", [SPEC_KEY])
    return WebPubSubEventHandler("chat", **options)


# -- abuse protection ---------------------------------------------------------------


@pytest.mark.parametrize("method", ["OPTIONS", "GET"])
async def test_probe_is_answered_for_any_origin_by_default(
    serve: Serve, session: aiohttp.ClientSession, method: str
) -> None:
    url = await serve(handler_for())
    answer = await send(
        session,
        method,
        f"{url}/eventhandler",
        {"WebHook-Request-Origin": "pubsub.example.com", "ce-awpsversion": "1.0"},
    )
    assert answer.status == 200
    assert answer.headers.getall("WebHook-Allowed-Origin") == ["*"]


@pytest.mark.parametrize(
    "headers",
    [
        # The seed tutorial's C# checked WebHook-Allowed-Origin (the response header) here.
        {"WebHook-Allowed-Origin": "*"},
        # A browser's CORS preflight for an app route.
        {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"},
        {},
    ],
    ids=["allowed-origin-instead", "cors-preflight", "bare"],
)
async def test_options_without_request_origin_is_not_a_probe_and_goes_to_the_app(
    serve: Serve, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    url = await serve(handler_for())
    for path in ("/eventhandler", "/other"):
        answer = await send(session, "OPTIONS", f"{url}{path}", headers)
        assert (answer.status, answer.body) == (200, f"app:OPTIONS {path}".encode())
        assert "WebHook-Allowed-Origin" not in answer.headers


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("pubsub.example.com", True),
        ("PubSub.Example.com:443", True),
        ("other.example.org", True),
        ("evil.example.com", False),
        ("pubsub.example.com.evil.net", False),
        ("example.com", False),
    ],
)
async def test_probe_is_answered_only_for_allowed_hosts(
    serve: Serve, session: aiohttp.ClientSession, origin: str, allowed: bool
) -> None:
    handler = handler_for(allowed_origins=["pubsub.example.com", "https://other.example.org:8443"])
    url = await serve(handler)
    answer = await send(
        session,
        "OPTIONS",
        f"{url}/eventhandler/chat/validate",
        {"WebHook-Request-Origin": origin, "ce-awpsversion": "1.0"},
    )
    if allowed:
        assert answer.status == 200
        assert answer.headers.getall("WebHook-Allowed-Origin") == [origin]
    else:
        assert answer.status == 403
        assert "WebHook-Allowed-Origin" not in answer.headers


async def test_events_from_a_host_that_is_not_allowed_are_refused(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(allowed_origins="pubsub.example.com", on_event=seen))
    headers = event_headers("message", WebHook_Request_Origin="evil.example.com")
    answer = await send(session, "POST", f"{url}/eventhandler", headers, b"hi")
    assert answer.status == 403
    ok = await send(session, "POST", f"{url}/eventhandler", event_headers("message"), b"hi")
    assert ok.status == 204
    assert [e.text for e in seen.items] == ["hi"]


# -- connect ------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_connect_is_parsed_and_accepted_with_the_apps_choices(
    serve: Serve, session: aiohttp.ClientSession, flavour: str
) -> None:
    seen: Recorder[ConnectRequest] = Recorder()

    def connect(request: ConnectRequest) -> ConnectResponse:
        seen(request)
        request.context.states["key"] = "a"
        return ConnectResponse(
            user_id="alice2",
            groups=["r1"],
            roles=["webpubsub.sendToGroup.r1"],
            subprotocol="json.webpubsub.azure.v1",
        )

    url = await serve(handler_for(on_connect=flavoured(flavour, connect)))
    answer = await send(session, "POST", f"{url}/eventhandler", CONNECT_HEADERS, CONNECT_BODY)

    assert answer.status == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.body == (
        b'{"userId":"alice2","groups":["r1"],"roles":["webpubsub.sendToGroup.r1"],'
        b'"subprotocol":"json.webpubsub.azure.v1"}'
    )
    assert answer.headers.getall("ce-connectionState") == [EXPRESS_STATE]

    request = await seen.next()
    ctx = request.context
    assert (ctx.hub, ctx.connection_id, ctx.user_id, ctx.event_name) == (
        "chat",
        "conn1",
        "alice",
        "connect",
    )
    assert ctx.event_type == "azure.webpubsub.sys.connect"
    assert (ctx.subprotocol, ctx.origin, ctx.event_id) == (None, "pubsub.example.com", "0")
    assert ctx.signature == SPEC_SIGNATURE
    assert ctx.headers["CE-TIME"] == "2024-05-01T10:00:00Z"
    assert request.claims["sub"] == ("alice",)
    assert request.claims["custom"] == ("x",)
    assert request.query == {"id": ("alice",), "room": ("r1",)}
    assert request.headers["User-Agent"] == ("test-agent/1.0",)
    assert request.subprotocols == ("json.reliable.webpubsub.azure.v1", "json.webpubsub.azure.v1")
    (cert,) = request.client_certificates
    assert cert.thumbprint == "ABCDEF0123"
    assert cert.content.startswith("-----BEGIN CERTIFICATE-----\r\n")


@pytest.mark.parametrize("status", [400, 401, 403, 500])
@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_connect_can_be_rejected_with_a_status_and_message(
    serve: Serve, session: aiohttp.ClientSession, status: int, flavour: str
) -> None:
    def connect(request: ConnectRequest) -> None:
        raise EventHandlerError(status, f"no entry for {request.query['id'][0]}")

    url = await serve(handler_for(on_connect=flavoured(flavour, connect)))
    answer = await send(session, "POST", f"{url}/eventhandler", CONNECT_HEADERS, CONNECT_BODY)
    assert answer.status == status
    assert answer.body == b"no entry for alice"
    assert "ce-connectionState" not in answer.headers


async def test_connect_without_a_handler_or_answer_accepts_the_token_as_is(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    for handler in (handler_for(), handler_for(on_connect=lambda request: None)):
        url = await serve(handler)
        answer = await send(session, "POST", f"{url}/eventhandler", CONNECT_HEADERS, CONNECT_BODY)
        assert (answer.status, answer.body) == (204, b"")
        assert "ce-connectionState" not in answer.headers


async def test_an_empty_connect_response_is_an_empty_object(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    url = await serve(handler_for(on_connect=lambda request: ConnectResponse()))
    answer = await send(session, "POST", f"{url}/eventhandler", CONNECT_HEADERS, CONNECT_BODY)
    assert (answer.status, answer.body) == (200, b"{}")


async def test_connect_fields_are_read_as_leniently_as_documented(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    seen: Recorder[ConnectRequest] = Recorder()
    url = await serve(handler_for(on_connect=seen))
    body = (
        b'{"claims":{"sub":"alice","exp":1714557600,"nbf":[1714550000.0],"admin":true,'
        b'"ratio":[0.5,null,"x",false],"nothing":null},'
        b'"query":{"room":"r1","n":[2]},"headers":{},"subprotocols":"json.webpubsub.azure.v1"}'
    )
    answer = await send(session, "POST", f"{url}/eventhandler", CONNECT_HEADERS, body)
    assert answer.status == 204
    request = await seen.next()
    assert request.claims == {
        "sub": ("alice",),
        "exp": ("1714557600",),
        "nbf": ("1714550000",),
        "admin": ("true",),
        "ratio": ("0.5", "x", "false"),
    }
    assert request.query == {"room": ("r1",), "n": ("2",)}
    assert request.subprotocols == ("json.webpubsub.azure.v1",)
    assert (request.headers, request.client_certificates) == ({}, ())


# -- connected and disconnected ------------------------------------------------


async def test_connected_sees_the_state_and_cannot_change_it(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    seen: Recorder[ConnectedRequest] = Recorder()

    def connected(request: ConnectedRequest) -> str:
        seen(request)
        request.context.states["ignored"] = True
        return "ignored"

    url = await serve(handler_for(on_connected=connected))
    headers = event_headers("connected", system=True, ce_connectionState=EXPRESS_STATE)
    answer = await send(session, "POST", f"{url}/eventhandler", headers, b"{}")
    assert (answer.status, answer.body) == (204, b"")
    assert "ce-connectionState" not in answer.headers

    request = await seen.next()
    assert request.context.event_name == "connected"
    assert request.context.subprotocol == "json.webpubsub.azure.v1"
    assert request.context.states.raw == EXPRESS_STATE
    assert dict(request.context.states) == {"key": "a", "ignored": True}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"reason":"The client closed the connection."}', "The client closed the connection."),
        (b'{"reason":""}', ""),
        (b"{}", ""),
    ],
)
async def test_disconnected_carries_its_reason(
    serve: Serve, session: aiohttp.ClientSession, body: bytes, reason: str
) -> None:
    seen: Recorder[DisconnectedRequest] = Recorder()
    url = await serve(handler_for(on_disconnected=seen))
    headers = event_headers("disconnected", system=True, ce_connectionState=EXPRESS_STATE)
    answer = await send(session, "POST", f"{url}/eventhandler", headers, body)
    assert (answer.status, answer.body) == (204, b"")
    request = await seen.next()
    assert request.reason == reason
    assert dict(request.context.states) == {"key": "a"}


async def test_unknown_system_events_are_acknowledged(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    url = await serve(handler_for())
    headers = event_headers("joined", system=True)
    answer = await send(session, "POST", f"{url}/eventhandler", headers, b'{"group":"g"}')
    assert answer.status == 204


# -- user events ----------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body", "data_type", "data"),
    [
        ("text/plain", "héllo ✓".encode(), DataType.TEXT, "héllo ✓"),
        ("text/plain; charset=utf-8", b"hi", DataType.TEXT, "hi"),
        ("application/json", b'{"a":[1,2],"b":null}', DataType.JSON, {"a": [1, 2], "b": None}),
        ("application/json", b'"just a string"', DataType.JSON, "just a string"),
        ("application/octet-stream", b"\x00\x01\xfe\xff", DataType.BINARY, b"\x00\x01\xfe\xff"),
        ("application/x-protobuf", b"\x0a\x02hi", DataType.PROTOBUF, b"\x0a\x02hi"),
    ],
)
async def test_user_event_data_is_typed_by_content_type(
    serve: Serve,
    session: aiohttp.ClientSession,
    content_type: str,
    body: bytes,
    data_type: DataType,
    data: object,
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(on_event=seen))
    headers = event_headers("chat", content_type=content_type)
    answer = await send(session, "POST", f"{url}/eventhandler", headers, body)
    assert answer.status == 204
    request = await seen.next()
    assert (request.context.event_name, request.context.event_type) == (
        "chat",
        "azure.webpubsub.user.chat",
    )
    assert request.data_type is data_type
    assert request.data == data
    assert request.body == body


@pytest.mark.parametrize(
    ("reply", "content_type", "body"),
    [
        ("hi ✓", "text/plain; charset=utf-8", "hi ✓".encode()),
        ({"a": 1}, "application/json", b'{"a":1}'),
        ([1, "x"], "application/json", b'[1,"x"]'),
        (UserEventResponse.json("s"), "application/json", b'"s"'),
        (b"\x00\xff", "application/octet-stream", b"\x00\xff"),
        (UserEventResponse.binary(bytearray(b"\x01")), "application/octet-stream", b"\x01"),
        (UserEventResponse.text("t"), "text/plain; charset=utf-8", b"t"),
    ],
)
@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_user_event_reply_goes_back_with_its_type(
    serve: Serve,
    session: aiohttp.ClientSession,
    reply: object,
    content_type: str,
    body: bytes,
    flavour: str,
) -> None:
    url = await serve(handler_for(on_event=flavoured(flavour, lambda request: reply)))
    answer = await send(session, "POST", f"{url}/eventhandler", event_headers("message"), b"x")
    assert answer.status == 200
    assert answer.headers["Content-Type"] == content_type
    assert answer.body == body
    assert "ce-connectionState" not in answer.headers


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_user_event_without_reply_is_no_content(
    serve: Serve, session: aiohttp.ClientSession, flavour: str
) -> None:
    for handler in (handler_for(), handler_for(on_event=flavoured(flavour, lambda r: None))):
        url = await serve(handler)
        answer = await send(session, "POST", f"{url}/eventhandler", event_headers("message"))
        assert (answer.status, answer.body) == (204, b"")


@pytest.mark.parametrize(
    ("change", "state"),
    [
        (lambda s: s.update(n=1), base64.b64encode(b'{"key":"a","n":1}').decode()),
        (lambda s: s.__setitem__("key", "ü"), base64.b64encode('{"key":"ü"}'.encode()).decode()),
        (lambda s: s.__delitem__("key"), "e30="),
        (lambda s: s.clear(), "e30="),
        (lambda s: None, None),
    ],
    ids=["add", "replace", "delete", "clear", "untouched"],
)
@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_user_event_reads_and_sets_the_connection_state(
    serve: Serve,
    session: aiohttp.ClientSession,
    change: Callable[[Any], None],
    state: str | None,
    flavour: str,
) -> None:
    def event(request: UserEventRequest) -> str:
        before = json.dumps(dict(request.context.states))
        change(request.context.states)
        return before

    url = await serve(handler_for(on_event=flavoured(flavour, event)))
    headers = event_headers("message", ce_connectionState=EXPRESS_STATE)
    answer = await send(session, "POST", f"{url}/eventhandler", headers, b"x")
    assert answer.status == 200
    assert answer.body == b'{"key": "a"}'
    assert answer.headers.getall("ce-connectionState", []) == ([state] if state else [])


async def test_a_state_that_is_not_json_reads_as_empty(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(on_event=seen))
    for raw in ("not base64!", base64.b64encode(b"[1]").decode(), "aGk="):
        headers = event_headers("message", ce_connectionState=raw)
        answer = await send(session, "POST", f"{url}/eventhandler", headers, b"x")
        assert answer.status == 204
        request = await seen.next()
        assert dict(request.context.states) == {}
        assert request.context.states.raw == raw


@pytest.mark.parametrize("status", [400, 401, 500, 503])
async def test_user_event_can_fail_with_a_status(
    serve: Serve, session: aiohttp.ClientSession, status: int
) -> None:
    def event(request: UserEventRequest) -> None:
        request.context.states["lost"] = 1
        raise EventHandlerError(status, "not now")

    url = await serve(handler_for(on_event=event))
    answer = await send(session, "POST", f"{url}/eventhandler", event_headers("message"))
    assert (answer.status, answer.body) == (status, b"not now")
    assert "ce-connectionState" not in answer.headers


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("event", ["connect", "message"])
async def test_a_crashing_handler_answers_500_without_details(
    serve: Serve, session: aiohttp.ClientSession, flavour: str, event: str
) -> None:
    def crash(request: Any) -> None:
        raise RuntimeError("secret internal detail")

    func = flavoured(flavour, crash)
    url = await serve(handler_for(on_connect=func, on_event=func))
    if event == "connect":
        headers, body = CONNECT_HEADERS, CONNECT_BODY
    else:
        headers, body = event_headers("message"), b"x"
    answer = await send(session, "POST", f"{url}/eventhandler", headers, body)
    assert answer.status == 500
    assert answer.body == b"the event handler failed"


@pytest.mark.parametrize(
    ("on_connect", "on_event"),
    [(lambda r: {"userId": "x"}, None), (None, lambda r: 42), (None, lambda r: {"o": object()})],
    ids=["connect-dict", "event-int", "event-unserialisable"],
)
async def test_a_handler_returning_the_wrong_type_answers_500(
    serve: Serve, session: aiohttp.ClientSession, on_connect: Any, on_event: Any
) -> None:
    url = await serve(handler_for(on_connect=on_connect, on_event=on_event))
    if on_connect is not None:
        headers, body = CONNECT_HEADERS, CONNECT_BODY
    else:
        headers, body = event_headers("message"), b"x"
    answer = await send(session, "POST", f"{url}/eventhandler", headers, body)
    assert answer.status == 500


# -- signature ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signature", "accepted"),
    [
        (SPEC_SIGNATURE, True),
        (SPEC_SIGNATURE.upper().replace("SHA256=", "sha256="), True),
        ("sha256=" + "0" * 64 + "," + SPEC_SIGNATURE, True),
        (" " + SPEC_SIGNATURE + " , sha256=00", True),
        (None, False),
        ("", False),
        ("sha256=" + "0" * 64, False),
        (SPEC_SIGNATURE[:-1] + "4", False),
        (SPEC_SIGNATURE.replace("sha256=", ""), False),
        (SPEC_SIGNATURE.replace("sha256=", "sha1="), False),
    ],
)
async def test_only_events_signed_with_a_key_are_handled(
    serve: Serve, session: aiohttp.ClientSession, signature: str | None, accepted: bool
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(on_event=seen))
    headers = event_headers("message")
    if signature is None:
        del headers["ce-signature"]
    else:
        headers["ce-signature"] = signature
    answer = await send(session, "POST", f"{url}/eventhandler", headers, b"x")
    assert answer.status == (204 if accepted else 401)
    assert len(seen.items) == (1 if accepted else 0)


async def test_a_signature_for_another_connection_is_refused(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    url = await serve(handler_for(on_connect=lambda r: ConnectResponse(user_id="x")))
    headers = {**CONNECT_HEADERS, "ce-connectionId": "conn2"}
    answer = await send(session, "POST", f"{url}/eventhandler", headers, CONNECT_BODY)
    assert answer.status == 401
    assert answer.body == b"invalid ce-signature"


async def test_any_of_several_keys_verifies(serve: Serve, session: aiohttp.ClientSession) -> None:
    url = await serve(handler_for(keys=[OTHER_KEY, SPEC_KEY]))
    answer = await send(session, "POST", f"{url}/eventhandler", CONNECT_HEADERS, CONNECT_BODY)
    assert answer.status == 204
    only_other = await serve(handler_for(keys=OTHER_KEY))
    answer = await send(
        session, "POST", f"{only_other}/eventhandler", CONNECT_HEADERS, CONNECT_BODY
    )
    assert answer.status == 401


async def test_signature_checks_can_be_off(serve: Serve, session: aiohttp.ClientSession) -> None:
    headers = {k: v for k, v in CONNECT_HEADERS.items() if k != "ce-signature"}
    for handler in (handler_for(keys=()), handler_for(verify_signature=False)):
        url = await serve(handler)
        answer = await send(session, "POST", f"{url}/eventhandler", headers, CONNECT_BODY)
        assert answer.status == 204


# -- malformed requests --------------------------------------------------------------------


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


MESSAGE = event_headers("message")
MALFORMED = [
    pytest.param(CONNECT_HEADERS, b"{not json", "not valid JSON", id="connect-not-json"),
    pytest.param(CONNECT_HEADERS, b"", "not valid JSON", id="connect-empty"),
    pytest.param(CONNECT_HEADERS, b"[1,2]", "must be a JSON object", id="connect-array"),
    pytest.param(CONNECT_HEADERS, b'{"claims":[]}', "'claims'", id="connect-claims-array"),
    pytest.param(CONNECT_HEADERS, b'{"query":{"id":[{}]}}', "'query.id'", id="connect-query-obj"),
    pytest.param(CONNECT_HEADERS, b'{"claims":{"a":[[1]]}}', "'claims.a'", id="connect-nested"),
    pytest.param(CONNECT_HEADERS, b'{"subprotocols":[1]}', "'subprotocols'", id="connect-sub"),
    pytest.param(CONNECT_HEADERS, b'{"clientCertificates":[1]}', "certificate", id="connect-cert"),
    pytest.param(
        event_headers("disconnected", system=True), b"nope", "not valid JSON", id="disc-json"
    ),
    pytest.param(
        event_headers("disconnected", system=True), b'{"reason":1}', "'reason'", id="disc-reason"
    ),
    pytest.param(MESSAGE, b"\xff\xfe", "UTF-8", id="text-not-utf8"),
    pytest.param(
        event_headers("message", content_type="application/json"), b"{", "JSON", id="json-bad"
    ),
    pytest.param(
        event_headers("message", content_type="image/png"), b"x", "content type", id="png"
    ),
    pytest.param(_without(MESSAGE, "ce-connectionId"), b"x", "ce-connectionId", id="no-conn"),
    pytest.param({**MESSAGE, "ce-type": "azure.webpubsub.x"}, b"x", "event type", id="bad-type"),
]


@pytest.mark.parametrize(("headers", "body", "message"), MALFORMED)
async def test_malformed_requests_are_answered_400_without_a_traceback(
    serve: Serve, session: aiohttp.ClientSession, headers: dict[str, str], body: bytes, message: str
) -> None:
    seen: Recorder[Any] = Recorder()
    handler = handler_for(on_connect=seen, on_event=seen, on_disconnected=seen)
    url = await serve(handler)
    answer = await send(session, "POST", f"{url}/eventhandler", headers, body)
    assert answer.status == 400
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert message in answer.body.decode()
    assert b"Traceback" not in answer.body
    assert seen.items == []


# -- routing: what is not for the handler goes to the app ----------------------------------


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/eventhandler", {**MESSAGE, "ce-hub": "otherhub"}),
        ("POST", "/eventhandler", _without(MESSAGE, "ce-hub")),
        ("POST", "/eventhandler", _without(MESSAGE, "ce-type")),
        ("POST", "/eventhandler", {**MESSAGE, "ce-type": "com.example.x"}),
        ("POST", "/eventhandler", {"Content-Type": "text/plain"}),
        ("POST", "/other", MESSAGE),
        ("POST", "/", MESSAGE),
        ("GET", "/eventhandler", {}),
        ("DELETE", "/eventhandler", MESSAGE),
        ("PUT", "/eventhandler", MESSAGE),
        ("GET", "/other", {"WebHook-Request-Origin": "pubsub.example.com"}),
    ],
)
async def test_requests_for_another_hub_or_path_fall_through_to_the_app(
    serve: Serve,
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    headers: dict[str, str],
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(on_event=seen))
    answer = await send(session, method, f"{url}{path}", headers, b"x")
    assert (answer.status, answer.body) == (200, f"app:{method} {path}".encode())
    assert seen.items == []


@pytest.mark.parametrize("path", ["/eventhandler", "/"])
async def test_app_routes_under_the_handlers_path_get_their_request_untouched(
    serve: Serve, session: aiohttp.ClientSession, path: str
) -> None:
    seen: Recorder[Any] = Recorder()
    url = await serve(handler_for(path=path, on_event=seen, on_connect=seen))
    body = b"a file" * 1000
    for headers in ({"Content-Type": "application/octet-stream"}, {"ce-type": "upload"}):
        answer = await send(session, "POST", f"{url}{UPLOAD_PATH}", headers, body)
        assert (answer.status, answer.body) == (200, b"upload:" + body)
    answer = await send(session, "POST", f"{url}/", {}, b"x")
    assert answer.body == b"app:POST /"
    # The service's own requests there are still the handler's.
    answer = await send(session, "POST", f"{url}{UPLOAD_PATH}", MESSAGE, b"x")
    assert answer.status == 204
    assert len(seen.items) == 1


@pytest.mark.parametrize(
    "path", ["/eventhandler", "/eventhandler/", "/eventhandler/chat/message", "/eventhandler/x"]
)
async def test_the_path_and_its_sub_paths_are_handled(
    serve: Serve, session: aiohttp.ClientSession, path: str
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(on_event=seen))
    answer = await send(session, "POST", f"{url}{path}", MESSAGE, b"x")
    assert answer.status == 204
    assert len(seen.items) == 1


async def test_a_custom_path_and_a_hub_in_another_case(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    handler = WebPubSubEventHandler(
        "Chat", path="/api/webpubsub/hubs/chat/", keys=[SPEC_KEY], on_event=seen
    )
    url = await serve(handler)
    answer = await send(session, "POST", f"{url}/api/webpubsub/hubs/chat/", MESSAGE, b"x")
    assert answer.status == 204
    assert seen.items[0].context.hub == "chat"
    other = await send(session, "POST", f"{url}/eventhandler", MESSAGE, b"x")
    assert other.body == b"app:POST /eventhandler"
    prefix = await send(session, "POST", f"{url}/api/webpubsub/hubs/chatroom", MESSAGE, b"x")
    assert prefix.status == 404
    assert len(seen.items) == 1


async def test_a_non_ascii_user_id_arrives_as_sent(
    serve: Serve, session: aiohttp.ClientSession
) -> None:
    # The service writes header values as UTF-8, as aiohttp (this client) does.
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(on_event=seen))
    headers = event_headers("message", ce_userId="zoë ✓")
    answer = await send(session, "POST", f"{url}/eventhandler", headers, b"x")
    assert answer.status == 204
    assert (await seen.next()).context.user_id == "zoë ✓"


# -- request bodies: bounded, and read only once the headers pass --------------------------

LIMIT = 100


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"ce-signature": None}, 401),
        ({"ce-signature": "sha256=" + "0" * 64}, 401),
        ({"WebHook-Request-Origin": "evil.example.com"}, 403),
        ({"ce-connectionId": None}, 400),
        ({"Content-Length": str(LIMIT + 1)}, 413),
        ({"Content-Length": str(10**12)}, 413),
    ],
    ids=["unsigned", "forged", "origin", "no-connection-id", "over-limit", "huge"],
)
async def test_a_refused_event_is_answered_without_waiting_for_its_body(
    serve: Serve, change: dict[str, str | None], status: int
) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(
        handler_for(allowed_origins="pubsub.example.com", max_body_bytes=LIMIT, on_event=seen)
    )
    head: dict[str, str | None] = {**event_headers("message"), "Content-Length": "50", **change}
    headers = {k: v for k, v in head.items() if v is not None}
    # Part of the body is sent, never all of it: reading it would never end.
    answer = await send_partly(url, "POST", "/eventhandler", headers, b"x" * 10)
    assert answer.status == status
    assert seen.items == []


async def test_a_chunked_body_is_read_no_further_than_the_limit(serve: Serve) -> None:
    seen: Recorder[UserEventRequest] = Recorder()
    url = await serve(handler_for(max_body_bytes=LIMIT, on_event=seen))
    headers = {**event_headers("message"), "Transfer-Encoding": "chunked"}
    # Over the limit in a few chunks, and the last chunk never comes.
    body = chunk(b"a" * 40) + chunk(b"b" * 40) + chunk(b"c" * 40)
    answer = await send_partly(url, "POST", "/eventhandler", headers, body)
    assert (answer.status, answer.body) == (413, b"the request body exceeds 100 bytes")
    assert seen.items == []


@pytest.mark.parametrize("chunked", [False, True])
async def test_bodies_up_to_the_limit_are_handled_and_larger_ones_refused(
    serve: Serve, session: aiohttp.ClientSession, chunked: bool
) -> None:
    url = await serve(handler_for(max_body_bytes=LIMIT, on_event=lambda r: {"size": len(r.body)}))
    for size, status in ((LIMIT, 200), (LIMIT + 1, 413), (5 * LIMIT, 413), (0, 200)):
        body = b"x" * size
        data: Any = in_two_chunks(body) if chunked else body
        headers = event_headers("message", content_type="application/octet-stream")
        async with session.post(f"{url}/eventhandler", headers=headers, data=data) as resp:
            assert resp.status == status
            if status == 200:
                assert await resp.json() == {"size": size}
    # The refusals left the server able to serve the next request.
    answer = await send(session, "POST", f"{url}/eventhandler", MESSAGE, b"x")
    assert answer.status == 200
