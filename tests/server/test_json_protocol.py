"""The JSON subprotocols on the wire, with raw aiohttp WebSocket clients.

``json.webpubsub.azure.v1`` and ``json.reliable.webpubsub.azure.v1``
(Azure docs: client protocols; roles: Azure docs: JSON subprotocol, permissions): negotiation, the
requests and their acks, data and system messages, cross-protocol delivery,
malformed input, sequence ids, the unacknowledged buffer and recovery.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import ACCESS_KEY, StartService
from tests.support.handler import EventHandlerApp, Recorded, default_responder, posts
from tests.support.proxy import TcpProxy
from tests.support.service import chat_hub, sdk
from webpubsub.protocol.tokens import issue_client_token, issue_rest_token
from webpubsub.server.app import ServiceRunner

WAIT = 5.0
"""Upper bound for anything that should happen promptly."""

JSON = "json.webpubsub.azure.v1"
RELIABLE = "json.reliable.webpubsub.azure.v1"
PROTOCOLS = [JSON, RELIABLE]
ALL_ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")
SYSTEM = frozenset({"connect", "connected", "disconnected"})


# -- helpers -------------------------------------------------------------------------


def endpoint(runner: ServiceRunner, port: int | None = None) -> str:
    return f"ws://127.0.0.1:{port or runner.port}/client/hubs/chat"


def token(runner: ServiceRunner, *, now: float | None = None, **claims: Any) -> str:
    return issue_client_token(
        ACCESS_KEY,
        audience=f"{runner.endpoint}/client/hubs/chat",
        now=time.time() if now is None else now,
        **claims,
    )


def minted_url(runner: ServiceRunner, port: int | None = None, **claims: Any) -> str:
    return f"{endpoint(runner, port)}?access_token={token(runner, **claims)}"


def recovery_url(runner: ServiceRunner, connection_id: str, reconnection_token: str) -> str:
    """A recovery URL whose access token expired an hour ago: it must not be checked."""
    expired = token(runner, now=time.time() - 7200, user_id="ghost")
    return (
        f"{endpoint(runner)}?access_token={expired}"
        f"&awps_connection_id={connection_id}&awps_reconnection_token={reconnection_token}"
    )


async def recv(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.TEXT, msg
    obj = json.loads(msg.data)
    assert isinstance(obj, dict)
    return obj


async def reconnected(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The ``connected`` message a recovered connection gets again, first."""
    msg = await recv(ws)
    assert (msg["type"], msg["event"]) == ("system", "connected"), msg
    return msg


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.CLOSE, msg
    return msg.data, msg.extra or ""


async def disconnected_then_closed(ws: aiohttp.ClientWebSocketResponse) -> tuple[str, int | None]:
    """The ``disconnected`` system message's text and the close code that follows it."""
    msg = await recv(ws)
    assert msg["type"] == "system" and msg["event"] == "disconnected", msg
    assert isinstance(msg["message"], str) and msg["message"]
    code, reason = await closed_with(ws)
    assert reason == msg["message"][:123]
    return msg["message"], code


async def refused_recovery(ws: aiohttp.ClientWebSocketResponse) -> str:
    """A refused recovery: upgraded, then closed with 1008 at once; returns the reason.

    No ``disconnected`` message comes first: the SDKs would report it instead of
    the one that ended the connection.
    """
    code, reason = await closed_with(ws)
    assert code == 1008
    assert reason
    return reason


@dataclass
class Client:
    """A raw subprotocol client: an aiohttp WebSocket and its ``connected`` message."""

    ws: aiohttp.ClientWebSocketResponse
    connected: dict[str, Any]

    @property
    def id(self) -> str:
        connection_id: str = self.connected["connectionId"]
        return connection_id

    @property
    def reconnection_token(self) -> str:
        value: str = self.connected["reconnectionToken"]
        return value

    async def recv(self) -> dict[str, Any]:
        return await recv(self.ws)

    async def send(self, msg: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(msg))

    async def call(self, msg: dict[str, Any]) -> list[dict[str, Any]]:
        """Send a request with an ackId: what arrived up to and including its ack."""
        await self.send(msg)
        seen: list[dict[str, Any]] = []
        for _ in range(50):
            seen.append(await self.recv())
            if seen[-1].get("type") == "ack" and seen[-1].get("ackId") == msg["ackId"]:
                return seen
        raise AssertionError(f"no ack for {msg}: {seen}")

    async def ack(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The ack of ``msg``, which must be the next message."""
        (ack,) = await self.call(msg)
        return ack

    async def expect_pong(self) -> None:
        """A ping round trip: nothing else is pending, and the connection still works."""
        await self.send({"type": "ping"})
        assert await self.recv() == {"type": "pong"}


def failure(ack: dict[str, Any], name: str) -> str:
    """Assert a failure ack with ``name`` and a message; returns the message."""
    assert ack["type"] == "ack" and ack["success"] is False, ack
    assert set(ack["error"]) == {"name", "message"}
    assert ack["error"]["name"] == name
    message = ack["error"]["message"]
    assert isinstance(message, str) and message
    return message


def success(ack_id: int) -> dict[str, Any]:
    return {"type": "ack", "ackId": ack_id, "success": True}


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def connect(http: aiohttp.ClientSession) -> AsyncIterator[Connect]:
    """``await connect(url, protocol)``: a client that has read its ``connected`` message."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_client(
        url: str, protocol: str = RELIABLE, *, protocols: Sequence[str] | None = None
    ) -> Client:
        ws = await http.ws_connect(url, protocols=protocols or [protocol])
        opened.append(ws)
        connected = await recv(ws)
        assert (connected["type"], connected["event"]) == ("system", "connected"), connected
        return Client(ws, connected)

    yield open_client
    for ws in opened:
        await ws.close()


WatchDetach = Callable[[ServiceRunner], "asyncio.Queue[str]"]


@pytest.fixture
def watch_detach(monkeypatch: pytest.MonkeyPatch) -> WatchDetach:
    """``watch_detach(runner)``: a queue of the ids of connections that lost their transport."""

    def watch(runner: ServiceRunner) -> asyncio.Queue[str]:
        node = runner.node
        assert node is not None
        detached: asyncio.Queue[str] = asyncio.Queue()
        detach = node.detach

        def observed(conn: Any, *args: Any, **kwargs: Any) -> None:
            detach(conn, *args, **kwargs)
            detached.put_nowait(conn.connection_id)

        monkeypatch.setattr(node, "detach", observed)
        return detached

    return watch


async def marker(service: WebPubSubServiceClient, client: Client, text: str = "marker") -> None:
    """Prove nothing else is pending for ``client``: a REST message is the next thing."""
    await service.send_to_connection(client.id, text, content_type="text/plain")
    msg = await client.recv()
    assert (msg["type"], msg["from"], msg["data"]) == ("message", "server", text), msg


# -- negotiation --------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_offered_subprotocol_selects_the_codec_and_is_echoed(
    start_service: StartService, connect: Connect, protocol: str
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, user_id="alice"), protocol)
    assert client.ws.protocol == protocol
    expected = {"type", "event", "connectionId", "userId"}
    if protocol == RELIABLE:
        expected.add("reconnectionToken")
        assert isinstance(client.connected["reconnectionToken"], str)
    assert set(client.connected) == expected
    assert client.connected["userId"] == "alice"
    async with sdk(runner) as service:
        assert await service.connection_exists(client.id)
        await service.send_to_all("hello", content_type="text/plain")
    msg = await client.recv()
    assert msg.pop("sequenceId", None) == (1 if protocol == RELIABLE else None)
    assert msg == {"type": "message", "from": "server", "dataType": "text", "data": "hello"}


async def test_an_anonymous_client_has_a_null_user_id(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub(anonymous=True))
    client = await connect(endpoint(runner), JSON)
    assert client.connected["userId"] is None


async def test_the_first_service_subprotocol_offered_wins(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner), protocols=["chat.v1", JSON, RELIABLE])
    assert client.ws.protocol == JSON
    assert "reconnectionToken" not in client.connected


@pytest.mark.parametrize("pick", [RELIABLE, JSON])
async def test_a_connect_handler_picks_among_the_offered_subprotocols(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect, pick: str
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.json_response({"subprotocol": pick})
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url, system=frozenset({"connect"})))
    client = await connect(minted_url(runner), protocols=[JSON, RELIABLE])
    assert client.ws.protocol == pick
    assert ("reconnectionToken" in client.connected) is (pick == RELIABLE)
    (event,) = posts(handler_app, "connect")
    assert json.loads(event.body)["subprotocols"] == [JSON, RELIABLE]


async def test_a_connect_handler_may_make_a_plain_client_of_a_json_offer(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.json_response({"subprotocol": "chat.v1"})
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url, system=frozenset({"connect"})))
    async with (
        await http.ws_connect(minted_url(runner), protocols=[JSON, "chat.v1"]) as ws,
        sdk(runner) as service,
    ):
        assert ws.protocol == "chat.v1"
        await service.send_to_all("raw", content_type="text/plain")
        msg = await ws.receive(timeout=WAIT)  # no "connected" first, no envelope
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "raw")


async def test_recovery_with_another_subprotocol_is_closed_with_1008(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, user_id="alice"))
    await client.ws.close(code=4000)  # not 1000: the connection waits for recovery
    url = recovery_url(runner, client.id, client.reconnection_token)
    async with await http.ws_connect(url, protocols=[JSON]) as wrong:
        assert wrong.protocol == JSON  # the upgrade completes
        assert "subprotocol" in await refused_recovery(wrong)
    # the failed attempt did not end the connection: it recovers with its own subprotocol
    async with await http.ws_connect(url, protocols=[RELIABLE]) as right, sdk(runner) as service:
        await reconnected(right)
        assert right.protocol == RELIABLE
        await service.send_to_connection(client.id, "back", content_type="text/plain")
        assert (await recv(right))["data"] == "back"


async def test_recovery_echoes_the_connection_subprotocol_among_those_offered(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner))
    await client.ws.close(code=4000)
    url = recovery_url(runner, client.id, client.reconnection_token)
    async with await http.ws_connect(url, protocols=[JSON, RELIABLE]) as ws, sdk(runner) as service:
        await reconnected(ws)
        assert ws.protocol == RELIABLE
        await service.send_to_connection(client.id, "still reliable", content_type="text/plain")
        assert (await recv(ws))["sequenceId"] == 1


# -- requests, acks and data messages -------------------------------------------


async def test_join_send_to_and_leave_a_group_with_every_data_type(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    alice = await connect(minted_url(runner, user_id="alice", roles=ALL_ROLES), JSON)
    bob = await connect(minted_url(runner, user_id="bob", roles=ALL_ROLES), RELIABLE)
    assert await alice.ack({"type": "joinGroup", "group": "g1", "ackId": 1}) == success(1)
    assert await alice.ack({"type": "joinGroup", "group": "g1", "ackId": 2}) == success(2)
    assert await bob.ack({"type": "joinGroup", "group": "g1", "ackId": 1}) == success(1)

    sent = [
        ("text", "héllo"),
        ("json", {"a": [1, 2], "b": None}),
        ("json", "a JSON string"),
        ("json", 42),
        ("binary", base64.b64encode(b"\x00\x01\xff").decode()),
    ]
    for ack_id, (data_type, data) in enumerate(sent, start=10):
        request = {"type": "sendToGroup", "group": "g1", "ackId": ack_id, "noEcho": False}
        echoed, ack = await alice.call({**request, "dataType": data_type, "data": data})
        assert ack == success(ack_id)
        expected = {
            "type": "message",
            "from": "group",
            "group": "g1",
            "fromUserId": "alice",
            "dataType": data_type,
            "data": data,
        }
        assert echoed == expected
        assert await bob.recv() == {"sequenceId": ack_id - 9, **expected}

    # noEcho: the sender does not get its own message, the others do
    quiet = {"type": "sendToGroup", "group": "g1", "dataType": "text", "data": "quiet"}
    assert await alice.ack({**quiet, "ackId": 20, "noEcho": True}) == success(20)
    assert (await bob.recv())["data"] == "quiet"
    # dataType defaults to json; without an ackId there is no ack
    await alice.send({"type": "sendToGroup", "group": "g1", "data": {"n": 1}})
    assert (await alice.recv())["dataType"] == "json"
    assert (await bob.recv())["data"] == {"n": 1}

    assert await bob.ack({"type": "leaveGroup", "group": "g1", "ackId": 2}) == success(2)
    assert await bob.ack({"type": "leaveGroup", "group": "g1", "ackId": 3}) == success(3)
    after = {**quiet, "ackId": 21, "noEcho": True, "data": "after leave"}
    assert await alice.ack(after) == success(21)
    async with sdk(runner) as service:
        await marker(service, bob)  # "after leave" never reached bob (nor "quiet" alice)


@pytest.mark.parametrize(
    ("data_type", "data", "content_type", "body"),
    [
        ("text", "evt text", "text/plain", b"evt text"),
        ("json", {"k": [1, "x"]}, "application/json", b'{"k":[1,"x"]}'),
        ("binary", base64.b64encode(b"\x00\xfe").decode(), "application/octet-stream", b"\x00\xfe"),
    ],
)
async def test_an_event_reaches_the_handler_and_its_reply_precedes_the_ack(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    data_type: str,
    data: Any,
    content_type: str,
    body: bytes,
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST":
            # answer with what was received: each content type maps back to a dataType
            return web.Response(body=req.body, headers={"Content-Type": content_type})
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url))
    client = await connect(minted_url(runner, user_id="alice"), RELIABLE)  # no role needed
    event = {"type": "event", "event": "myEvent", "ackId": 5, "dataType": data_type, "data": data}
    reply, ack = await client.call(event)
    assert ack == success(5)
    assert reply == {
        "sequenceId": 1,
        "type": "message",
        "from": "server",
        "dataType": data_type,
        "data": data,
    }
    (recorded,) = posts(handler_app, "myEvent")
    assert recorded.ce_type == "azure.webpubsub.user.myEvent"
    assert recorded.headers["Content-Type"] == content_type
    if data_type == "json":
        assert json.loads(recorded.body) == json.loads(body)
    else:
        assert recorded.body == body


async def test_an_event_without_a_reply_body_is_only_acked(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub(handler_app.url))  # the default answer is 204
    client = await connect(minted_url(runner), JSON)
    event = {"type": "event", "event": "quiet", "dataType": "text", "data": "x"}
    assert await client.ack({**event, "ackId": 1}) == success(1)
    await client.send(event)  # no ackId: no ack
    # Handled in order: the next thing the client gets is the ack of the request after
    # it (nothing for the one without an ackId). A ping would not do: it is answered at
    # once, even while an event is at the handler.
    assert await client.ack({**event, "ackId": 2}) == success(2)
    assert len(posts(handler_app, "quiet")) == 3


@pytest.mark.parametrize("failure_kind", ["500", "no handler"])
async def test_a_failed_event_is_acked_internal_server_error_and_may_be_retried(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect, failure_kind: str
) -> None:
    healthy = asyncio.Event()

    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST" and not healthy.is_set():
            return web.Response(status=500, text="boom")
        if req.method == "POST":
            return web.Response(text="ok", content_type="text/plain")
        return default_responder(req)

    handler_app.responder = responder
    pattern = "*" if failure_kind == "500" else "other"
    runner = await start_service(chat_hub(handler_app.url, pattern=pattern))
    client = await connect(minted_url(runner), JSON)
    event = {"type": "event", "event": "chat", "ackId": 3, "dataType": "text", "data": "hi"}
    message = failure(await client.ack(event), "InternalServerError")
    assert "http" not in message  # no handler URL leaks to the client
    await client.expect_pong()
    if failure_kind == "500":
        healthy.set()
        reply, ack = await client.call(event)  # the failed ackId is not remembered
        assert (reply["data"], ack) == ("ok", success(3))
    else:
        assert not posts(handler_app, "chat")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_ping_is_answered_with_pong(
    start_service: StartService, connect: Connect, protocol: str
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner), protocol)
    await client.expect_pong()
    await client.ws.send_bytes(b'{"type":"ping"}')  # UTF-8 JSON in a binary frame is accepted
    assert await client.recv() == {"type": "pong"}


async def test_a_reused_ack_id_is_a_duplicate_and_is_not_executed_again(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, roles=ALL_ROLES), RELIABLE)
    assert await client.ack({"type": "joinGroup", "group": "g1", "ackId": 7}) == success(7)
    send = {"type": "sendToGroup", "group": "g1", "ackId": 8, "dataType": "text", "data": "once"}
    echoed, ack = await client.call(send)
    assert (echoed["data"], ack) == ("once", success(8))
    for ack_id, request in [(8, send), (7, {"type": "leaveGroup", "group": "g1", "ackId": 7})]:
        ack = await client.ack(request)  # no second "once"; the leave is not executed
        assert ack["ackId"] == ack_id
        assert failure(ack, "Duplicate") == f"Message with ack-id: {ack_id} has been processed"
    async with sdk(runner) as service:
        await service.send_to_group("g1", "still a member", content_type="text/plain")
        assert (await client.recv())["data"] == "still a member"


# -- permissions (Azure docs: JSON subprotocol, permissions) ---------------------------------------

SCOPED_ROLES = [
    "webpubsub.joinLeaveGroup.g1",
    "webpubsub.sendToGroup.g1",
    "webpubsub.sendToGroups.chat-*",
]


@pytest.mark.parametrize("source", ["token", "connect response"])
async def test_group_permissions_come_from_the_roles(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect, source: str
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.json_response({"roles": SCOPED_ROLES})  # replaces the token's roles
        return default_responder(req)

    handler_app.responder = responder
    if source == "token":
        runner = await start_service(chat_hub())
        url = minted_url(runner, roles=SCOPED_ROLES)
    else:
        runner = await start_service(chat_hub(handler_app.url, system=frozenset({"connect"})))
        url = minted_url(runner, roles=ALL_ROLES)
    client = await connect(url, JSON)
    allowed = [
        {"type": "joinGroup", "group": "g1"},
        {"type": "leaveGroup", "group": "g1"},
        {"type": "sendToGroup", "group": "g1", "dataType": "text", "data": "x"},
        {"type": "sendToGroup", "group": "chat-1", "dataType": "text", "data": "x"},
        {"type": "sendToGroup", "group": "chat-", "dataType": "text", "data": "x"},
    ]
    forbidden = [
        {"type": "joinGroup", "group": "g2"},
        {"type": "leaveGroup", "group": "g2"},
        {"type": "joinGroup", "group": "chat-1"},
        {"type": "sendToGroup", "group": "g2", "dataType": "text", "data": "x"},
        {"type": "sendToGroup", "group": "chat.1", "dataType": "text", "data": "x"},
        {"type": "sendToGroup", "group": "chat-1.x", "dataType": "text", "data": "x"},
    ]
    for ack_id, request in enumerate(allowed, start=1):
        assert await client.ack({**request, "ackId": ack_id}) == success(ack_id), request
    for ack_id, request in enumerate(forbidden, start=100):
        message = failure(await client.ack({**request, "ackId": ack_id}), "Forbidden")
        assert request["group"] in message


async def test_a_client_without_roles_may_only_send_events(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub(handler_app.url))
    client = await connect(minted_url(runner, user_id="nobody"), RELIABLE)
    join = {"type": "joinGroup", "group": "g1", "ackId": 1}
    failure(await client.ack(join), "Forbidden")
    send = {"type": "sendToGroup", "group": "g1", "ackId": 2, "dataType": "text", "data": "x"}
    failure(await client.ack(send), "Forbidden")
    event = {"type": "event", "event": "e", "ackId": 3, "dataType": "text", "data": "x"}
    assert await client.ack(event) == success(3)


async def test_rest_permission_changes_apply_to_the_next_request(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner), JSON)
    join = {"type": "joinGroup", "group": "g1", "ackId": 1}
    send = {"type": "sendToGroup", "group": "g1", "ackId": 2, "dataType": "text", "data": "hi"}
    leave = {"type": "leaveGroup", "group": "g1", "ackId": 3}
    failure(await client.ack(join), "Forbidden")
    async with sdk(runner) as service:
        await service.grant_permission("joinLeaveGroup", client.id, target_name="g1")
        assert await client.ack(join) == success(1)  # a failed ackId may be retried
        failure(await client.ack({**join, "group": "g2", "ackId": 4}), "Forbidden")
        failure(await client.ack(send), "Forbidden")
        await service.grant_permission("sendToGroup", client.id, target_name="g1")
        echoed, ack = await client.call(send)
        assert (echoed["group"], ack) == ("g1", success(2))
        await service.revoke_permission("joinLeaveGroup", client.id, target_name="g1")
        failure(await client.ack(leave), "Forbidden")


# -- system messages and cross-protocol delivery -------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_rest_close_sends_disconnected_then_closes_with_1000(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect, protocol: str
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    client = await connect(minted_url(runner), protocol)
    async with sdk(runner) as service:
        await service.close_connection(client.id, reason="Closed by the moderator.")
        assert await client.recv() == {
            "type": "system",
            "event": "disconnected",
            "message": "Closed by the moderator.",
        }
        assert await closed_with(client.ws) == (1000, "Closed by the moderator.")
        event = await handler_app.next_event("sys.disconnected")
        assert json.loads(event.body)["reason"] == "Closed by the moderator."
        assert not await service.connection_exists(client.id)


async def test_one_group_message_reaches_each_protocol_in_its_own_form(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    sender = await connect(minted_url(runner, user_id="alice", roles=ALL_ROLES), JSON)
    receiver = await connect(minted_url(runner, groups=["g1"]), RELIABLE)
    async with await http.ws_connect(minted_url(runner, groups=["g1"])) as plain:
        sent = [
            ("text", "plain text", WSMsgType.TEXT, "plain text"),
            ("json", {"x": [1]}, WSMsgType.TEXT, '{"x":[1]}'),
            ("json", "Hello", WSMsgType.TEXT, '"Hello"'),
            ("binary", base64.b64encode(b"\x00\xff").decode(), WSMsgType.BINARY, b"\x00\xff"),
        ]
        for ack_id, (data_type, data, frame, raw) in enumerate(sent, start=1):
            request = {"type": "sendToGroup", "group": "g1", "dataType": data_type, "data": data}
            assert await sender.ack({**request, "ackId": ack_id}) == success(ack_id)
            msg = await plain.receive(timeout=WAIT)
            assert (msg.type, msg.data) == (frame, raw)
            envelope = await receiver.recv()
            assert (envelope["dataType"], envelope["data"]) == (data_type, data)
            assert (envelope["from"], envelope["fromUserId"]) == ("group", "alice")


async def test_rest_messages_map_content_types_to_data_types(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, groups=["g1"]), JSON)
    async with sdk(runner) as service:
        await service.send_to_group("g1", "text", content_type="text/plain")
        await service.send_to_group("g1", {"j": 1})
        await service.send_to_all(io.BytesIO(b"\x01\x02"), content_type="application/octet-stream")
    assert await client.recv() == {
        "type": "message",
        "from": "group",
        "group": "g1",
        "fromUserId": None,
        "dataType": "text",
        "data": "text",
    }
    assert (await client.recv())["data"] == {"j": 1}
    binary = await client.recv()
    assert (binary["from"], binary["dataType"], binary["data"]) == ("server", "binary", "AQI=")


# -- malformed input ----------------------------------------------------------

BAD_REQUESTS: dict[str, dict[str, Any]] = {
    "join without group": {"type": "joinGroup"},
    "join with a number group": {"type": "joinGroup", "group": 5},
    "join of a blank group": {"type": "joinGroup", "group": "   "},
    "leave of an empty group": {"type": "leaveGroup", "group": ""},
    "send without data": {"type": "sendToGroup", "group": "g1", "dataType": "text"},
    "send of an unknown dataType": {
        "type": "sendToGroup",
        "group": "g1",
        "dataType": "xml",
        "data": "x",
    },
    "send of bad base64": {
        "type": "sendToGroup",
        "group": "g1",
        "dataType": "binary",
        "data": "!!",
    },
    "send of null json": {"type": "sendToGroup", "group": "g1", "dataType": "json", "data": None},
    "send of a number as text": {
        "type": "sendToGroup",
        "group": "g1",
        "dataType": "text",
        "data": 5,
    },
    "send with a string noEcho": {"type": "sendToGroup", "group": "g1", "data": 1, "noEcho": "yes"},
    "event without a name": {"type": "event", "dataType": "text", "data": "x"},
    "event with a bad name": {"type": "event", "event": "1bad", "dataType": "text", "data": "x"},
    "unknown type": {"type": "futureRequest", "group": "g1"},
}


@pytest.mark.parametrize("kind", list(BAD_REQUESTS))
async def test_a_malformed_request_with_an_ack_id_gets_a_bad_request_ack(
    start_service: StartService, connect: Connect, kind: str
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, roles=ALL_ROLES), RELIABLE)
    other = await connect(minted_url(runner, roles=ALL_ROLES), JSON)
    failure(await client.ack({**BAD_REQUESTS[kind], "ackId": 9}), "BadRequest")
    await client.expect_pong()
    await other.expect_pong()
    # nothing was executed: a valid request with the same ackId runs
    join = {"type": "joinGroup", "group": "g1", "ackId": 9}
    assert await client.ack(join) == success(9)


NOT_REQUESTS: dict[str, str | bytes] = {
    "not JSON": "hello",
    "truncated JSON": '{"type":"ping"',
    "an array": '[{"type":"ping"}]',
    "a string": '"ping"',
    "no type": '{"group":"g1","ackId":1}',
    "a number type": '{"type":5,"ackId":1}',
    "a negative ackId": '{"type":"joinGroup","group":"g1","ackId":-1}',
    "a string ackId": '{"type":"joinGroup","group":"g1","ackId":"1"}',
    "a missing field without ackId": '{"type":"joinGroup"}',
    "bad base64 without ackId": (
        '{"type":"sendToGroup","group":"g1","dataType":"binary","data":"!"}'
    ),
    "a bad sequenceAck": '{"type":"sequenceAck","sequenceId":"x"}',
    "an invoke without an invocationId": '{"type":"invoke","target":"event","event":"e"}',
    "binary garbage": b"\xff\x00\xfe",
}


@pytest.mark.parametrize("kind", list(NOT_REQUESTS))
async def test_a_frame_that_is_not_a_request_closes_with_1008(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect, kind: str
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    client = await connect(minted_url(runner), RELIABLE)
    other = await connect(minted_url(runner), RELIABLE)
    frame = NOT_REQUESTS[kind]
    if isinstance(frame, bytes):
        await client.ws.send_bytes(frame)
    else:
        await client.ws.send_str(frame)
    reason, code = await disconnected_then_closed(client.ws)
    assert code == 1008
    assert reason.startswith("Invalid message")
    event = await handler_app.next_event("sys.disconnected")  # not recoverable: ended now
    assert event.headers["ce-connectionId"] == client.id
    await other.expect_pong()


async def test_an_unknown_type_without_an_ack_id_is_ignored(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner), JSON)
    other = await connect(minted_url(runner), RELIABLE)
    await client.send({"type": "futureRequest", "group": "g1"})
    await client.send({"type": "setGroupState", "group": "g1"})  # a type this service lacks
    await client.expect_pong()
    await other.expect_pong()


async def test_an_oversize_frame_closes_with_1009_and_spares_the_others(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub(), max_message_bytes=4096)
    big = await connect(minted_url(runner, roles=ALL_ROLES), RELIABLE)
    other = await connect(minted_url(runner, roles=ALL_ROLES), JSON)
    fits = {"type": "sendToGroup", "group": "g", "ackId": 1, "dataType": "text", "data": "x" * 3900}
    assert await big.ack(fits) == success(1)
    await big.send({**fits, "ackId": 2, "data": "x" * 5000})
    reason, code = await disconnected_then_closed(big.ws)
    assert code == 1009 and "larger than the service accepts" in reason
    await other.expect_pong()


async def test_an_oversize_frame_ends_a_reliable_connection_at_once(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect
) -> None:
    """The service refused the message: no recovery window, ``disconnected`` now."""
    runner = await start_service(
        chat_hub(handler_app.url, system=SYSTEM),
        max_message_bytes=4096,
        recovery_window_seconds=600.0,
    )
    big = await connect(minted_url(runner), RELIABLE)
    connection_id = big.connected["connectionId"]
    await big.send({"type": "event", "event": "e", "dataType": "text", "data": "x" * 5000})
    _, code = await disconnected_then_closed(big.ws)
    assert code == 1009
    event = await handler_app.next_event("sys.disconnected")
    assert event.headers["ce-connectionId"] == connection_id
    assert "larger than the service accepts" in event.body.decode()
    assert not await sdk(runner).connection_exists(connection_id)


# -- reliable: sequence ids, acks and the buffer ------------------------


async def test_only_data_messages_carry_sequence_ids(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST":
            return web.Response(text="reply", content_type="text/plain")
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url))
    client = await connect(minted_url(runner, roles=ALL_ROLES), RELIABLE)
    assert "sequenceId" not in client.connected
    assert await client.ack({"type": "joinGroup", "group": "g1", "ackId": 1}) == success(1)
    await client.expect_pong()
    send = {"type": "sendToGroup", "group": "g1", "ackId": 2, "dataType": "text", "data": "a"}
    echoed, ack = await client.call(send)
    assert (echoed["sequenceId"], ack) == (1, success(2))
    event = {"type": "event", "event": "e", "ackId": 3, "dataType": "text", "data": "b"}
    reply, ack = await client.call(event)
    assert (reply["sequenceId"], reply["data"], ack) == (2, "reply", success(3))
    async with sdk(runner) as service:
        await service.send_to_all("c", content_type="text/plain")
        assert (await client.recv())["sequenceId"] == 3
        failure(await client.ack({**send, "group": "g1", "ackId": 2}), "Duplicate")
        await service.close_connection(client.id, reason="bye")
    assert "sequenceId" not in await client.recv()  # disconnected


async def test_sequence_acks_are_cumulative_and_release_only_what_they_cover(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner))
    async with sdk(runner) as service:
        for n in range(1, 6):
            await service.send_to_connection(client.id, f"m{n}", content_type="text/plain")
            assert (await client.recv())["sequenceId"] == n
        await client.send({"type": "sequenceAck", "sequenceId": 3})  # releases 1..3
        await client.send({"type": "sequenceAck", "sequenceId": 1})  # older: ignored
        await client.ws.close(code=4001)  # frames are handled in order: the acks came first
        url = recovery_url(runner, client.id, client.reconnection_token)
        async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
            await reconnected(ws)
            replayed = [await recv(ws) for _ in range(2)]
            assert [(m["sequenceId"], m["data"]) for m in replayed] == [(4, "m4"), (5, "m5")]
            await service.send_to_connection(client.id, "m6", content_type="text/plain")
            assert (await recv(ws))["sequenceId"] == 6


async def _read_all(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[dict[str, Any]], int | None]:
    """Read (never acknowledging) until the service closes: the messages and the code."""
    messages: list[dict[str, Any]] = []
    for _ in range(2000):
        msg = await ws.receive(timeout=WAIT)
        if msg.type is not WSMsgType.TEXT:
            assert msg.type is WSMsgType.CLOSE, msg
            return messages, msg.data
        messages.append(json.loads(msg.data))
    raise AssertionError("the service never closed the connection")


async def rest_sends(
    http: aiohttp.ClientSession, runner: ServiceRunner, connection_id: str, bodies: list[str]
) -> None:
    """REST sends to one connection as plain calls sharing one token (the SDK's
    per-call overhead would dominate a thousand of them)."""
    path = f"/api/hubs/chat/connections/{connection_id}/:send?api-version=2024-12-01"
    url = runner.endpoint + path
    bearer = issue_rest_token(ACCESS_KEY, audience=url, now=time.time())
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "text/plain"}
    for body in bodies:
        async with http.post(url, data=body, headers=headers) as resp:
            assert resp.status == 202


@pytest.mark.parametrize(
    ("sends", "size", "attached"),
    [(1001, 10, True), (17, 1_000_000, True), (1001, 10, False)],  # 1,000 messages or 16 MB
    ids=["messages", "bytes", "messages while detached"],
)
async def test_a_full_buffer_ends_the_connection_and_fires_disconnected_once(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
    watch_detach: WatchDetach,
    sends: int,
    size: int,
    attached: bool,
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    detached = watch_detach(runner)
    client = await connect(minted_url(runner))
    reader = asyncio.create_task(_read_all(client.ws)) if attached else None
    if reader is None:
        await client.ws.close(code=4000)
        assert await asyncio.wait_for(detached.get(), WAIT) == client.id
    await rest_sends(http, runner, client.id, [f"{n:0{size}d}" for n in range(sends)])
    async with sdk(runner) as service:
        if reader is not None:
            messages, code = await reader
            assert code == 1008
            *data, disconnected = messages
            assert [m["sequenceId"] for m in data] == list(range(1, sends))
            assert disconnected["event"] == "disconnected"
            assert "unacknowledged" in disconnected["message"]
        event = await handler_app.next_event("sys.disconnected")
        assert "unacknowledged" in json.loads(event.body)["reason"]
        assert event.headers["ce-connectionId"] == client.id
        assert not await service.connection_exists(client.id)
        # exactly once: another connection's disconnected event comes next
        other = await connect(minted_url(runner))
        await other.ws.close()
        event = await handler_app.next_event("sys.disconnected")
        assert event.headers["ce-connectionId"] == other.id
        assert len(posts(handler_app, "disconnected", client.id)) == 1


# -- reliable: drops and recovery ---------------------------------------


async def test_a_dropped_connection_is_kept_buffered_and_recovered_in_order(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
    watch_detach: WatchDetach,
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    detached = watch_detach(runner)
    async with TcpProxy(runner.port) as proxy, sdk(runner) as service:
        client = await connect(minted_url(runner, proxy.port, user_id="alice", groups=["g1"]))
        for n in range(1, 4):
            await service.send_to_group("g1", f"m{n}", content_type="text/plain")
            assert (await client.recv())["sequenceId"] == n
        await client.send({"type": "sequenceAck", "sequenceId": 1})
        await client.expect_pong()  # the ack was handled
        assert await proxy.cut() == 1
        assert await asyncio.wait_for(detached.get(), WAIT) == client.id
        assert await service.connection_exists(client.id)  # kept for the window
        assert await service.user_exists("alice")
        for n in range(4, 7):  # buffered while nobody is attached
            await service.send_to_group("g1", f"m{n}", content_type="text/plain")

        url = recovery_url(runner, client.id, client.reconnection_token)
        async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
            await reconnected(ws)
            assert ws.protocol == RELIABLE
            replayed = [await recv(ws) for _ in range(5)]
            assert [(m["sequenceId"], m["data"]) for m in replayed] == [
                (n, f"m{n}") for n in range(2, 7)
            ]
            assert all(m["group"] == "g1" for m in replayed)  # still a member
            await service.send_to_group("g1", "m7", content_type="text/plain")
            assert (await recv(ws))["sequenceId"] == 7
            assert len(posts(handler_app, "connect")) == 1  # no connect webhook on recovery
            assert not posts(handler_app, "disconnected")
            await ws.close()  # 1000: the connection ends at once
            event = await handler_app.next_event("sys.disconnected")
            assert event.headers["ce-connectionId"] == client.id
            assert not await service.connection_exists(client.id)


async def test_a_recovery_replays_10_mib_in_full_and_later_messages_queue_behind_it(
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
    watch_detach: WatchDetach,
) -> None:
    """The whole buffer comes back, paced by the transport, not offered at once to an
    outbox less than half its size; messages sent meanwhile follow it in order."""
    runner = await start_service(chat_hub())
    detached = watch_detach(runner)
    client = await connect(minted_url(runner))
    await client.ws.close(code=4000)
    assert await asyncio.wait_for(detached.get(), WAIT) == client.id
    bodies = [f"{n:050000d}" for n in range(200)]  # 10 MB, 2.5 times the outbox bound
    await rest_sends(http, runner, client.id, bodies)
    url = recovery_url(runner, client.id, client.reconnection_token)
    async with await http.ws_connect(url, protocols=[RELIABLE], max_msg_size=0) as ws:
        await reconnected(ws)
        later = [f"later {n}" for n in range(20)]
        await rest_sends(http, runner, client.id, later)  # the replay has not been read yet
        received = [await recv(ws) for _ in range(len(bodies) + len(later))]
        assert [m["sequenceId"] for m in received] == list(range(1, len(bodies) + len(later) + 1))
        assert [m["data"] for m in received] == bodies + later


async def test_one_users_abandoned_connections_hold_at_most_its_cap_oldest_ended_first(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
    watch_detach: WatchDetach,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = 1_000_000
    runner = await start_service(
        chat_hub(handler_app.url, system=SYSTEM), detached_user_max_bytes=cap
    )
    detached = watch_detach(runner)
    abandoned: list[Client] = []
    for _ in range(5):
        client = await connect(minted_url(runner, user_id="mallory"))
        await client.ws.close(code=4000)
        assert await asyncio.wait_for(detached.get(), WAIT) == client.id
        abandoned.append(client)
    live = await connect(minted_url(runner, user_id="bob"))  # attached: not counted
    async with sdk(runner) as service:
        for n in range(8):  # 100 kB to each: 4 MB for mallory's connections without a cap
            await service.send_to_all(f"{n:0100000d}", content_type="text/plain")
            assert (await live.recv())["sequenceId"] == n + 1
        ended = [await handler_app.next_event("sys.disconnected") for _ in range(4)]
        assert [e.headers["ce-connectionId"] for e in ended] == [c.id for c in abandoned[:4]]
        for event in ended:
            reason = json.loads(event.body)["reason"]
            assert "one user" in reason and f"{cap} bytes" in reason
        assert caplog.text.count("ending detached connection") == 4
        assert await service.connection_exists(abandoned[4].id)
    survivor = abandoned[4]
    url = recovery_url(runner, survivor.id, survivor.reconnection_token)
    async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
        await reconnected(ws)
        assert [(await recv(ws))["sequenceId"] for _ in range(8)] == list(range(1, 9))
    url = recovery_url(runner, abandoned[0].id, abandoned[0].reconnection_token)
    async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
        await refused_recovery(ws)


async def test_recovery_keeps_ack_ids_and_groups(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, roles=ALL_ROLES))
    assert await client.ack({"type": "joinGroup", "group": "g1", "ackId": 1}) == success(1)
    await client.ws.close(code=4002)
    url = recovery_url(runner, client.id, client.reconnection_token)
    async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
        await reconnected(ws)
        recovered = Client(ws, client.connected)
        failure(await recovered.ack({"type": "leaveGroup", "group": "g1", "ackId": 1}), "Duplicate")
        send = {"type": "sendToGroup", "group": "g1", "ackId": 2, "dataType": "text", "data": "x"}
        echoed, ack = await recovered.call(send)
        assert (echoed["sequenceId"], ack) == (1, success(2))


async def test_recovering_an_attached_connection_takes_it_over(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner))
    async with sdk(runner) as service:
        await service.send_to_connection(client.id, "first", content_type="text/plain")
        assert (await client.recv())["sequenceId"] == 1
        url = recovery_url(runner, client.id, client.reconnection_token)
        async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
            await reconnected(ws)
            assert (await recv(ws))["data"] == "first"  # not acknowledged: replayed
            code, _ = await closed_with(client.ws)
            assert code == 1008  # the old transport must not try to recover
            await service.send_to_connection(client.id, "second", content_type="text/plain")
            assert (await recv(ws))["sequenceId"] == 2
            assert await service.connection_exists(client.id)


@pytest.mark.parametrize("case", ["bad token", "unknown id", "ended", "not reliable"])
async def test_a_failed_recovery_upgrades_then_closes_with_1008(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
    case: str,
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    protocol = JSON if case == "not reliable" else RELIABLE
    client = await connect(minted_url(runner), protocol)
    reconnection_token = client.connected.get("reconnectionToken", "whatever")
    connection_id = client.id
    if case == "bad token":
        reconnection_token += "x"
    elif case == "unknown id":
        connection_id = "0" * 32
    elif case == "ended":
        await client.ws.close()
        await handler_app.next_event("sys.disconnected")
    else:
        await client.ws.close(code=4000)
        await handler_app.next_event("sys.disconnected")  # a JSON connection ends at once
    url = recovery_url(runner, connection_id, reconnection_token)
    async with await http.ws_connect(url, protocols=[protocol]) as ws:
        assert ws.protocol == protocol
        await refused_recovery(ws)
    assert len(posts(handler_app, "connect")) == 1
    if case == "bad token":
        async with sdk(runner) as service:  # a wrong guess does not harm the connection
            await marker(service, client)


async def test_a_rest_close_ends_a_detached_connection_at_once(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
    watch_detach: WatchDetach,
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    detached = watch_detach(runner)
    client = await connect(minted_url(runner))
    await client.ws.close(code=4000)
    assert await asyncio.wait_for(detached.get(), WAIT) == client.id
    async with sdk(runner) as service:
        assert await service.connection_exists(client.id)
        await service.close_connection(client.id, reason="Gone for good.")
        event = await handler_app.next_event("sys.disconnected")
        assert event.headers["ce-connectionId"] == client.id
        assert json.loads(event.body)["reason"] == "Gone for good."
        assert not await service.connection_exists(client.id)
    url = recovery_url(runner, client.id, client.reconnection_token)
    async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
        await refused_recovery(ws)


async def test_a_normal_close_ends_a_reliable_connection_at_once(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    client = await connect(minted_url(runner))
    await client.ws.close()  # 1000
    event = await handler_app.next_event("sys.disconnected")
    assert event.headers["ce-connectionId"] == client.id
    async with sdk(runner) as service:
        assert not await service.connection_exists(client.id)


async def test_the_recovery_window_expiry_ends_the_connection_once(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
) -> None:
    runner = await start_service(
        chat_hub(handler_app.url, system=SYSTEM), recovery_window_seconds=1.0
    )
    async with TcpProxy(runner.port) as proxy, sdk(runner) as service:
        client = await connect(minted_url(runner, proxy.port))
        started = time.monotonic()
        await proxy.cut()
        event = await handler_app.next_event("sys.disconnected")
        assert time.monotonic() - started >= 1.0  # not before the window ends
        assert event.headers["ce-connectionId"] == client.id
        assert not await service.connection_exists(client.id)
        url = recovery_url(runner, client.id, client.reconnection_token)
        async with await http.ws_connect(url, protocols=[RELIABLE]) as ws:
            await refused_recovery(ws)
        other = await connect(minted_url(runner))
        await other.ws.close()
        event = await handler_app.next_event("sys.disconnected")
        assert event.headers["ce-connectionId"] == other.id
        assert len(posts(handler_app, "disconnected", client.id)) == 1


async def test_a_malformed_invoke_is_answered_by_its_invocation_id_and_the_client_stays(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner), RELIABLE)
    await client.send({"type": "invoke", "invocationId": "7", "target": "group", "event": "e"})
    assert await client.recv() == {
        "type": "invokeResponse",
        "invocationId": "7",
        "success": False,
        "error": {"name": "BadRequest", "message": "'target' must be \"event\"."},
    }
    # No handler for the event: a failed response, not a close.
    await client.send({"type": "invoke", "invocationId": "8", "target": "event", "event": "e"})
    answer = await client.recv()
    assert (answer["invocationId"], answer["success"]) == ("8", False)
    assert answer["error"]["name"] == "InternalServerError"
    await client.expect_pong()
