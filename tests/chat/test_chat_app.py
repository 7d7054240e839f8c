"""The chat app on its own: negotiate, the page, and the webhook endpoint.

The service's REST API is played by ``fake_service`` (a real HTTP server that
records sends), so these tests need no running Web PubSub service.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from webpubsub.chat.app import create_chat_app

Client = TestClient[web.Request, web.Application]

ACCESS_KEY = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"

CONNECTED = "azure.webpubsub.sys.connected"
MESSAGE = "azure.webpubsub.user.message"


@dataclass(frozen=True)
class RecordedSend:
    """One ``POST /api/hubs/{hub}/:send`` call as the fake service saw it."""

    hub: str
    content_type: str
    body: bytes
    authorization: str


@dataclass
class FakeService:
    """Plays the service's REST API for sends; answers them with ``send_status``."""

    port: int = 0
    sends: list[RecordedSend] = field(default_factory=list)
    send_status: int = 202

    @property
    def connection_string(self) -> str:
        return f"Endpoint=http://127.0.0.1:{self.port};AccessKey={ACCESS_KEY};Version=1.0;"

    def app(self) -> web.Application:
        async def send_to_all(request: web.Request) -> web.Response:
            self.sends.append(
                RecordedSend(
                    hub=request.match_info["hub"],
                    content_type=request.headers.get("Content-Type", ""),
                    body=await request.read(),
                    authorization=request.headers.get("Authorization", ""),
                )
            )
            return web.Response(status=self.send_status)

        app = web.Application()
        app.router.add_post("/api/hubs/{hub}/:send", send_to_all)
        return app


@pytest.fixture
async def fake_service() -> AsyncIterator[FakeService]:
    service = FakeService()
    server = TestServer(service.app(), host="127.0.0.1", port=0)
    await server.start_server()
    assert server.port is not None
    service.port = server.port
    try:
        yield service
    finally:
        await server.close()


@pytest.fixture
async def chat_client(fake_service: FakeService) -> AsyncIterator[Client]:
    app = create_chat_app(fake_service.connection_string, hub="chat")
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def _signature(connection_id: str, key: str = ACCESS_KEY) -> str:
    digest = hmac.new(key.encode(), connection_id.encode(), hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _event_headers(ce_type: str, user_id: str = "alice", **extra: str) -> dict[str, str]:
    headers = {
        "ce-specversion": "1.0",
        "ce-type": ce_type,
        "ce-source": "/hubs/chat/client/conn1",
        "ce-id": "1",
        "ce-awpsversion": "1.0",
        "ce-hub": "chat",
        "ce-connectionId": "conn1",
        "ce-eventName": ce_type.rsplit(".", 1)[1],
        "ce-userId": user_id,
        "ce-signature": _signature("conn1"),
        "WebHook-Request-Origin": "127.0.0.1",
    }
    headers.update(extra)
    return headers


# --- negotiate ----------------------------------------------------------------------------


@pytest.mark.parametrize("user_id", ["alice", "Zoë & co/1?"])
async def test_negotiate_returns_a_client_url_with_a_token_for_the_user(
    chat_client: Client, fake_service: FakeService, user_id: str
) -> None:
    resp = await chat_client.get("/negotiate", params={"id": user_id})
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    url = urlsplit(await resp.text())

    assert (url.scheme, url.netloc, url.path) == (
        "ws",
        f"127.0.0.1:{fake_service.port}",
        "/client/hubs/chat",
    )
    (token,) = parse_qs(url.query)["access_token"]
    audience = f"http://127.0.0.1:{fake_service.port}/client/hubs/chat"
    claims = jwt.decode(token, ACCESS_KEY, algorithms=["HS256"], audience=audience)
    assert claims["sub"] == user_id
    assert claims["aud"] == audience
    assert claims["exp"] > claims["iat"]


@pytest.mark.parametrize("query", ["", "?id=", "?id=alice&id=bob", "?name=alice"])
async def test_negotiate_needs_exactly_one_non_empty_id(chat_client: Client, query: str) -> None:
    resp = await chat_client.get(f"/negotiate{query}")
    assert resp.status == 400
    assert await resp.text() == "missing user id"


# --- the page -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/index.html"])
async def test_the_chat_page_is_served(chat_client: Client, path: str) -> None:
    resp = await chat_client.get(path)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    page = await resp.text()
    assert "<h1>Web PubSub Chat</h1>" in page
    assert 'id="message"' in page
    assert 'id="messages"' in page
    assert 'id="status"' in page
    assert "/negotiate?id=${encodeURIComponent(name)}" in page
    # Received text is shown as text, and the page loads nothing from elsewhere.
    assert "innerHTML" not in page
    assert "textContent" in page
    references = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page)
    assert all(ref.startswith("data:") for ref in references), references


# --- abuse protection ---------------------------------------------------------------------


async def test_validation_request_is_answered_with_allowed_origin(chat_client: Client) -> None:
    resp = await chat_client.options(
        "/eventhandler",
        headers={"WebHook-Request-Origin": "webpubsub.example.com", "ce-awpsversion": "1.0"},
    )
    assert resp.status == 200
    assert resp.headers.getall("WebHook-Allowed-Origin") == ["*"]


@pytest.mark.parametrize(
    "headers",
    [{}, {"WebHook-Allowed-Origin": "*"}],  # the tutorial's code checked this (wrong) header
    ids=["no-origin", "allowed-origin-instead"],
)
async def test_options_without_request_origin_is_not_a_validation(
    chat_client: Client, headers: dict[str, str]
) -> None:
    resp = await chat_client.options("/eventhandler", headers=headers)
    assert resp.status == 400
    assert "WebHook-Allowed-Origin" not in resp.headers


# --- events -------------------------------------------------------------------------------


async def test_connected_event_announces_the_user_to_everyone(
    chat_client: Client, fake_service: FakeService
) -> None:
    resp = await chat_client.post(
        "/eventhandler",
        headers=_event_headers(CONNECTED, "bob", **{"Content-Type": "application/json"}),
        data=b"{}",
    )
    assert resp.status == 204
    assert await resp.read() == b""
    assert [(s.hub, s.content_type, s.body) for s in fake_service.sends] == [
        ("chat", "text/plain", b"[SYSTEM] bob joined.")
    ]
    assert fake_service.sends[0].authorization.startswith("Bearer ")


async def test_message_event_is_broadcast_with_the_sender_name(
    chat_client: Client, fake_service: FakeService
) -> None:
    resp = await chat_client.post(
        "/eventhandler",
        headers=_event_headers(MESSAGE, "alice", **{"Content-Type": "text/plain"}),
        data="hi, ünïcode ✓".encode(),
    )
    assert resp.status == 204
    # Nothing goes back to the sender directly: it gets the broadcast like everyone.
    assert await resp.read() == b""
    assert [(s.hub, s.content_type, s.body) for s in fake_service.sends] == [
        ("chat", "text/plain", "[alice] hi, ünïcode ✓".encode())
    ]


@pytest.mark.parametrize(
    "ce_type",
    ["azure.webpubsub.sys.disconnected", "azure.webpubsub.sys.connect", "azure.webpubsub.user.x"],
)
async def test_other_events_are_acknowledged_and_ignored(
    chat_client: Client, fake_service: FakeService, ce_type: str
) -> None:
    resp = await chat_client.post(
        "/eventhandler", headers=_event_headers(ce_type), data=b'{"reason": ""}'
    )
    assert resp.status == 204
    assert await resp.read() == b""
    assert fake_service.sends == []


async def test_post_without_ce_type_is_rejected(
    chat_client: Client, fake_service: FakeService
) -> None:
    headers = _event_headers(MESSAGE)
    del headers["ce-type"]
    resp = await chat_client.post("/eventhandler", headers=headers, data=b"hi")
    assert resp.status == 400
    assert fake_service.sends == []


async def test_a_failed_broadcast_fails_the_event(
    chat_client: Client, fake_service: FakeService
) -> None:
    fake_service.send_status = 403
    resp = await chat_client.post("/eventhandler", headers=_event_headers(MESSAGE), data=b"hi")
    assert resp.status == 502
    assert len(fake_service.sends) == 1


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, _signature("conn1", "another-key-0123456789abcdefghijk")],
    ids=["missing", "empty", "zeros", "other-key"],
)
async def test_unsigned_or_forged_events_are_refused(
    chat_client: Client, fake_service: FakeService, signature: str | None
) -> None:
    headers = _event_headers(MESSAGE, **{"Content-Type": "text/plain"})
    if signature is None:
        del headers["ce-signature"]
    else:
        headers["ce-signature"] = signature
    resp = await chat_client.post("/eventhandler", headers=headers, data=b"hi")
    assert resp.status == 401
    assert fake_service.sends == []


async def test_events_to_a_sub_path_are_handled(
    chat_client: Client, fake_service: FakeService
) -> None:
    # For a url_template such as http://app/eventhandler/{hub}/{event}.
    resp = await chat_client.post(
        "/eventhandler/chat/message",
        headers=_event_headers(MESSAGE, "carol", **{"Content-Type": "text/plain"}),
        data=b"hey",
    )
    assert resp.status == 204
    assert [s.body for s in fake_service.sends] == [b"[carol] hey"]


async def test_events_for_another_hub_are_not_handled(
    chat_client: Client, fake_service: FakeService
) -> None:
    headers = _event_headers(MESSAGE, **{"Content-Type": "text/plain", "ce-hub": "other"})
    resp = await chat_client.post("/eventhandler", headers=headers, data=b"hi")
    assert resp.status == 400
    assert fake_service.sends == []
