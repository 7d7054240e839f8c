"""The protobuf subprotocols on the wire, with the test client written from the schema.

``protobuf.webpubsub.azure.v1`` and ``protobuf.reliable.webpubsub.azure.v1`` (Azure docs:
protobuf subprotocol; our schema's choices: docs/compatibility.md) against the real
service on port 0: negotiation, requests and acks, the four data kinds, delivery across
protocols both ways, events reaching the handler, sequence ids and recovery, group
streams, and malformed frames closing only their own connection.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import StartService
from tests.server.test_json_protocol import (
    JSON,
    Client,
    closed_with,
    failure,
    minted_url,
    recovery_url,
    success,
)
from tests.server.test_json_protocol import recv as recv_json
from tests.support import protobuf_client as pc
from tests.support.handler import EventHandlerApp, Recorded, default_responder, posts
from tests.support.protobuf_client import PROTOBUF, PROTOBUF_RELIABLE, Data, ProtobufClient
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from tests.support.service import chat_hub, sdk
from webpubsub.backplane.redis import RedisBackplane

ALL_ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")
SYSTEM = frozenset({"connect", "connected", "disconnected"})
ANY = pc.any_message("type.googleapis.com/demo.Point", b"\x08\x01\x10\x02")

Connect = Callable[..., Awaitable[Any]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def connect(http: aiohttp.ClientSession) -> AsyncIterator[Connect]:
    """``await connect(url, protocol)``: a protobuf client that read its ``connected``."""
    opened: list[ProtobufClient] = []

    async def open_client(url: str, protocol: str = PROTOBUF, **kw: Any) -> ProtobufClient:
        client = await pc.connect(http, url, protocol, **kw)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        await client.ws.close()


@pytest.fixture
async def connect_json(http: aiohttp.ClientSession) -> AsyncIterator[Connect]:
    """``await connect_json(url)``: a JSON subprotocol client that read its ``connected``."""
    opened: list[aiohttp.ClientWebSocketResponse] = []

    async def open_client(url: str) -> Client:
        ws = await http.ws_connect(url, protocols=[JSON])
        opened.append(ws)
        connected = await recv_json(ws)
        assert connected["event"] == "connected", connected
        return Client(ws, connected)

    yield open_client
    for ws in opened:
        await ws.close()


# -- negotiation ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [PROTOBUF, PROTOBUF_RELIABLE])
async def test_the_protobuf_subprotocols_are_negotiated_and_echoed(
    start_service: StartService, connect: Connect, protocol: str
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, user_id="alice"), protocol)
    assert client.ws.protocol == protocol
    assert client.connected["userId"] == "alice" and client.id
    reliable = protocol == PROTOBUF_RELIABLE
    assert bool(client.reconnection_token) is reliable  # only the reliable variant has one
    async with sdk(runner) as service:
        assert await service.connection_exists(client.id)
        await service.send_to_all("hello", content_type="text/plain")
    msg = await client.recv()
    assert msg.pop("sequenceId", None) == (1 if reliable else None)
    assert msg == {"type": "message", "from": "server", "dataType": "text", "data": "hello"}


async def test_the_first_service_subprotocol_offered_wins(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub(anonymous=True))
    client = await connect(
        minted_url(runner), protocols=["chat.v1", PROTOBUF_RELIABLE, JSON, PROTOBUF]
    )
    assert client.ws.protocol == PROTOBUF_RELIABLE
    anonymous = await connect(f"ws://127.0.0.1:{runner.port}/client/hubs/chat", PROTOBUF)
    assert anonymous.connected["userId"] == ""  # proto3: no user is the empty string


# -- requests and acks -----------------------------------------------------------------


async def test_join_send_leave_with_acks_duplicates_and_no_echo(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner, roles=ALL_ROLES))
    assert await client.ack(pc.join_group("g1", 1), 1) == success(1)
    assert "has been processed" in failure(await client.ack(pc.join_group("g1", 1), 1), "Duplicate")
    echoed, ack = await client.call(pc.send_to_group("g1", Data("text", "hi"), 2), 2)
    assert echoed == {"type": "message", "from": "group", "group": "g1", "dataType": "text",
                      "data": "hi"}  # fmt: skip
    assert ack == success(2)
    quiet = pc.send_to_group("g1", Data("text", "quiet"), 3, no_echo=True)
    assert await client.ack(quiet, 3) == success(3)  # the ack is next: no echo
    assert await client.ack(pc.leave_group("g1", 4), 4) == success(4)
    assert await client.ack(pc.send_to_group("g1", Data("text", "gone"), 5), 5) == success(5)
    await client.send(pc.join_group("g2"))  # no ack id: no ack
    await client.expect_pong()
    async with sdk(runner) as service:
        assert await service.group_exists("g2")


async def test_forbidden_and_bad_requests_are_failed_acks(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner))  # no roles
    assert "g1" in failure(await client.ack(pc.join_group("g1", 1), 1), "Forbidden")
    send = pc.send_to_group("g1", Data("text", "x"), 2)
    assert "g1" in failure(await client.ack(send, 2), "Forbidden")
    assert "group" in failure(await client.ack(pc.join_group("  ", 3), 3), "BadRequest")
    not_json = pc.event("e", Data("json", "{nope"), 4)
    assert "JSON" in failure(await client.ack(not_json, 4), "BadRequest")
    assert "data" in failure(await client.ack(pc.event("e", None, 5), 5), "BadRequest")
    await client.expect_pong()  # none of it closed the connection


@pytest.mark.parametrize(
    ("data", "content_type", "body"),
    [
        (Data("text", "evt text"), "text/plain", b"evt text"),
        (Data("json", '{"k":[1,"x"]}'), "application/json", b'{"k":[1,"x"]}'),
        (Data("binary", b"\x00\xfe"), "application/octet-stream", b"\x00\xfe"),
        (Data("protobuf", ANY), "application/x-protobuf", ANY),
    ],
)
async def test_an_event_reaches_the_handler_with_its_data_and_its_reply_precedes_the_ack(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    data: Data,
    content_type: str,
    body: bytes,
) -> None:
    """protobuf_data reaches the handler as application/x-protobuf: the serialized Any."""

    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST":
            return web.Response(text="reply", content_type="text/plain")
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url))
    client = await connect(minted_url(runner, user_id="alice"), PROTOBUF_RELIABLE)
    reply, ack = await client.call(pc.event("myEvent", data, 5), 5)
    assert ack == success(5)
    assert reply == {"type": "message", "from": "server", "dataType": "text", "data": "reply",
                     "sequenceId": 1}  # fmt: skip
    (recorded,) = posts(handler_app, "myEvent")
    assert recorded.headers["Content-Type"].split(";")[0] == content_type
    assert recorded.body == body
    assert recorded.ce_type == "azure.webpubsub.user.myEvent"


@pytest.mark.parametrize(
    ("content_type", "body", "data_type", "data"),
    [
        ("text/plain", b"t", "text", "t"),
        ("application/json", b'{"j":1}', "json", '{"j":1}'),
        ("application/octet-stream", b"\x00", "binary", b"\x00"),
        ("application/x-protobuf", ANY, "binary", ANY),
    ],
)
async def test_a_handlers_reply_reaches_the_protobuf_client_by_its_media_type(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    content_type: str,
    body: bytes,
    data_type: str,
    data: object,
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST":
            return web.Response(body=body, headers={"Content-Type": content_type})
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url))
    client = await connect(minted_url(runner))
    reply, ack = await client.call(pc.event("ask", Data("text", "?"), 1), 1)
    assert ack == success(1)
    assert reply == {"type": "message", "from": "server", "dataType": data_type, "data": data}


async def test_an_event_without_a_handler_is_a_failed_ack(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner))
    ack = await client.ack(pc.event("myEvent", Data("text", "x"), 9), 9)
    assert ack["success"] is False and ack["ackId"] == 9


# -- data across protocols -------------------------------------------------------------

KINDS = [
    Data("text", "héllo"),
    Data("binary", b"\x00\x01\xff"),
    Data("protobuf", ANY),
    Data("json", '{"a":[1,2,{"b":null}]}'),
]


async def test_the_four_data_kinds_between_protobuf_clients(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    url = minted_url(runner, roles=ALL_ROLES)
    sender, receiver = await connect(url), await connect(url, PROTOBUF_RELIABLE)
    assert await receiver.ack(pc.join_group("room", 1), 1) == success(1)
    for n, data in enumerate(KINDS, start=1):
        send = pc.send_to_group("room", data, n, no_echo=True)
        assert await sender.ack(send, n) == success(n)
        got = await receiver.recv()
        assert got == {"type": "message", "from": "group", "group": "room",
                       "dataType": data.kind, "data": data.value, "sequenceId": n}  # fmt: skip


async def test_a_protobuf_clients_messages_reach_json_and_simple_clients(
    start_service: StartService,
    connect: Connect,
    connect_json: Connect,
    http: aiohttp.ClientSession,
) -> None:
    """The JSON side sees text as text, binary and protobuf as base64 (dataType
    ``protobuf``: the serialized Any), JSON as the JSON value, and a fromUserId; a simple
    client the payload itself (the Any's bytes in a binary frame)."""
    runner = await start_service(chat_hub())
    sender = await connect(minted_url(runner, user_id="pat", roles=ALL_ROLES))
    json_client = await connect_json(minted_url(runner, groups=["room"]))
    expected = ["héllo", base64.b64encode(b"\x00\x01\xff").decode(),
                base64.b64encode(ANY).decode(), {"a": [1, 2, {"b": None}]}]  # fmt: skip
    simple = await http.ws_connect(minted_url(runner, groups=["room"]))  # no subprotocol
    raw = [(WSMsgType.TEXT, "héllo"), (WSMsgType.BINARY, b"\x00\x01\xff"),
           (WSMsgType.BINARY, ANY), (WSMsgType.TEXT, '{"a":[1,2,{"b":null}]}')]  # fmt: skip
    for n, (data, value) in enumerate(zip(KINDS, expected, strict=True), start=1):
        assert await sender.ack(pc.send_to_group("room", data, n, no_echo=True), n) == success(n)
        got = await json_client.recv()
        assert got == {"type": "message", "from": "group", "group": "room", "fromUserId": "pat",
                       "dataType": data.kind, "data": value}  # fmt: skip
        frame = await simple.receive(timeout=pc.WAIT)  # a simple client gets the bare payload
        assert (frame.type, frame.data) == raw[n - 1]
    await simple.close()


async def test_json_clients_and_rest_reach_protobuf_clients(
    start_service: StartService, connect: Connect, connect_json: Connect
) -> None:
    """JSON data arrives in json_data (the current schema), text in text_data, binary and
    a JSON client's base64 protobuf data as the bytes (protobuf_data: the Any)."""
    runner = await start_service(chat_hub())
    receiver = await connect(minted_url(runner, groups=["room"]))
    json_client = await connect_json(minted_url(runner, roles=ALL_ROLES))
    frames = [
        ("text", "hi", "hi"),
        ("json", {"x": [1, True]}, '{"x":[1,true]}'),
        ("binary", base64.b64encode(b"\x00\xfe").decode(), b"\x00\xfe"),
        ("protobuf", base64.b64encode(ANY).decode(), ANY),
    ]
    for n, (kind, data, value) in enumerate(frames, start=1):
        request = {"type": "sendToGroup", "group": "room", "ackId": n, "dataType": kind,
                   "data": data, "noEcho": True}  # fmt: skip
        assert await json_client.ack(request) == success(n)
        assert await receiver.recv() == {"type": "message", "from": "group", "group": "room",
                                         "dataType": kind, "data": value}  # fmt: skip
    async with sdk(runner) as service:
        await service.send_to_all({"rest": 1})
        await service.send_to_group("room", "plain", content_type="text/plain")
        await service.send_to_connection(
            receiver.id, b"\x01\x02", content_type="application/octet-stream"
        )
    got = [await receiver.recv() for _ in range(3)]
    assert [(m["from"], m["dataType"]) for m in got] == [
        ("server", "json"),
        ("group", "text"),
        ("server", "binary"),
    ]
    assert json.loads(got[0]["data"]) == {"rest": 1}  # the JSON text as the REST body had it
    assert (got[1]["data"], got[2]["data"]) == ("plain", b"\x01\x02")


async def test_protobuf_data_that_is_no_any_reaches_protobuf_clients_as_binary(
    start_service: StartService, connect: Connect, connect_json: Connect
) -> None:
    """A JSON client's base64 "protobuf" data that does not parse as an Any would make
    the whole DownstreamMessage unreadable in protobuf_data: it goes as binary_data; the
    next message (a real Any) goes as protobuf_data."""
    runner = await start_service(chat_hub())
    receiver = await connect(minted_url(runner, groups=["room"]))
    json_client = await connect_json(minted_url(runner, roles=ALL_ROLES))
    not_any = b"\x00\x01\x02"  # field number 0: no protobuf message parses it
    bare = b"\x08\x01"  # a bare MyMessage{value: 1}, not wrapped: upb would take it
    for n, data in enumerate((not_any, bare, ANY), start=1):
        request = {"type": "sendToGroup", "group": "room", "ackId": n, "dataType": "protobuf",
                   "data": base64.b64encode(data).decode()}  # fmt: skip
        assert await json_client.ack(request) == success(n)
    assert [await receiver.recv() for _ in range(3)] == [
        {"type": "message", "from": "group", "group": "room", "dataType": "binary",
         "data": not_any},
        {"type": "message", "from": "group", "group": "room", "dataType": "binary",
         "data": bare},
        {"type": "message", "from": "group", "group": "room", "dataType": "protobuf",
         "data": ANY},
    ]  # fmt: skip


# -- reliable: sequence ids and recovery ---------------------------------------------


async def test_a_dropped_reliable_connection_is_recovered_with_its_unacked_messages(
    handler_app: EventHandlerApp,
    start_service: StartService,
    connect: Connect,
    http: aiohttp.ClientSession,
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    async with TcpProxy(runner.port) as proxy, sdk(runner) as service:
        url = minted_url(runner, proxy.port, user_id="alice", groups=["g1"])
        client = await connect(url, PROTOBUF_RELIABLE)
        for n in range(1, 4):
            await service.send_to_group("g1", f"m{n}", content_type="text/plain")
            assert (await client.recv())["sequenceId"] == n
        await client.send(pc.sequence_ack(1))
        await client.expect_pong()  # the sequence ack was handled
        assert await proxy.cut() == 1
        for n in range(4, 6):
            await service.send_to_group("g1", f"m{n}", content_type="text/plain")
        recovery = recovery_url(runner, client.id, client.reconnection_token)
        async with http.ws_connect(recovery, protocols=[PROTOBUF_RELIABLE]) as ws:
            assert ws.protocol == PROTOBUF_RELIABLE
            assert await pc.receive(ws) == client.connected  # connected again: same id, token
            replayed = [await pc.receive(ws) for _ in range(4)]
            assert [(m["sequenceId"], m["data"], m["group"]) for m in replayed] == [
                (n, f"m{n}", "g1") for n in range(2, 6)
            ]
            await service.send_to_group("g1", "m6", content_type="text/plain")
            assert (await pc.receive(ws))["sequenceId"] == 6
            await ws.send_bytes(pc.ping())
            assert await pc.receive(ws) == {"type": "pong"}
            assert len(posts(handler_app, "connect")) == 1  # no connect webhook on recovery
            assert not posts(handler_app, "disconnected")


async def test_a_reliable_protobuf_connection_recovers_on_another_node(
    start_service: StartService,
    redis_server: RedisServer,
    redis_prefix: str,
    connect: Connect,
    http: aiohttp.ClientSession,
) -> None:
    """The handover carries the protobuf frames as they were sequenced; the new node goes
    on in protobuf (its codec found from the session's subprotocol)."""
    a = await start_service(
        chat_hub(), backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="a")
    )
    b = await start_service(
        chat_hub(),
        backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="b"),
        public_endpoint=a.endpoint,
    )
    async with TcpProxy(a.port) as proxy, sdk(a) as service:
        url = minted_url(a, proxy.port, groups=["g1"], roles=ALL_ROLES)
        client = await connect(url, PROTOBUF_RELIABLE)
        await service.send_to_group("g1", b"\x01", content_type="application/octet-stream")
        assert (await client.recv())["sequenceId"] == 1
        assert await proxy.cut() == 1
        await service.send_to_group("g1", {"n": 2})
        recovery = recovery_url(a, client.id, client.reconnection_token)
        recovery = recovery.replace(f":{a.port}/", f":{b.port}/")
        async with http.ws_connect(recovery, protocols=[PROTOBUF_RELIABLE]) as ws:
            assert await pc.receive(ws) == client.connected  # from node b, in protobuf
            replayed = [await pc.receive(ws) for _ in range(2)]
            assert [(m["sequenceId"], m["dataType"], m["data"]) for m in replayed] == [
                (1, "binary", b"\x01"),
                (2, "json", '{"n": 2}'),
            ]
            await service.send_to_group("g1", "three", content_type="text/plain")
            assert (await pc.receive(ws))["sequenceId"] == 3
            await ws.send_bytes(pc.join_group("g2", 7))
            assert await pc.receive(ws) == success(7)  # acknowledged by node b, in protobuf
            assert b.node is not None and b.node.connection_count() == 1


async def test_recovery_with_the_json_subprotocol_is_refused(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    client = await connect(minted_url(runner), PROTOBUF_RELIABLE)
    recovery = recovery_url(runner, client.id, client.reconnection_token)
    async with http.ws_connect(recovery, protocols=["json.reliable.webpubsub.azure.v1"]) as ws:
        code, reason = await closed_with(ws)
    assert code == 1008 and "subprotocol" in reason


# -- malformed frames ------------------------------------------------------------------

MALFORMED = {
    "not protobuf": b"\xff\xff\xff",
    "truncated": pc.join_group("g1", 1)[:-2],
    "no request": b"",
}


@pytest.mark.parametrize("kind", [*MALFORMED, "a text frame"])
async def test_a_malformed_frame_closes_that_connection_with_1008_and_a_reason(
    handler_app: EventHandlerApp, start_service: StartService, connect: Connect, kind: str
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=SYSTEM))
    client = await connect(minted_url(runner), PROTOBUF_RELIABLE)
    other = await connect(minted_url(runner), PROTOBUF)
    if kind == "a text frame":
        await client.ws.send_str('{"type":"ping"}')
    else:
        await client.send(MALFORMED[kind])
    disconnected = await client.recv()
    assert (disconnected["type"], disconnected["event"]) == ("system", "disconnected")
    reason = disconnected["message"]
    assert reason.startswith("Invalid message")
    msg = await client.ws.receive(timeout=pc.WAIT)
    assert msg.type is WSMsgType.CLOSE and msg.data == 1008
    assert msg.extra == reason[:123]
    event = await handler_app.next_event("sys.disconnected")
    assert event.headers["ce-connectionId"] == client.id
    await other.expect_pong()  # the service and the other connection carry on


# -- group streams ---------------------------------------------------------------------


async def test_a_group_stream_from_a_protobuf_publisher_to_both_protocols(
    start_service: StartService, connect: Connect, connect_json: Connect
) -> None:
    runner = await start_service(chat_hub())
    publisher = await connect(minted_url(runner, user_id="pub", roles=ALL_ROLES))
    subscriber = await connect(minted_url(runner, groups=["room"]), PROTOBUF_RELIABLE)
    json_subscriber = await connect_json(minted_url(runner, groups=["room"]))
    await publisher.send(pc.send_to_group("room", None, 1, stream=("s1", 60_000)))
    assert [await publisher.recv() for _ in range(2)] == [
        {"type": "streamAck", "streamId": "s1", "expectedSequenceId": 1},
        success(1),
    ]
    await publisher.send(pc.stream_data("s1"))  # a keep-alive: nothing delivered
    await publisher.send(pc.stream_data("s1", 1, Data("text", "chunk-1")))
    assert await publisher.recv() == {"type": "streamAck", "streamId": "s1",
                                      "expectedSequenceId": 2}  # fmt: skip
    await publisher.send(pc.stream_data("s1", 1, Data("text", "chunk-1")))  # a duplicate
    assert (await publisher.recv())["expectedSequenceId"] == 2
    await publisher.send(pc.stream_data("s1", 3, Data("binary", b"\x03")))  # a gap
    nack = await publisher.recv()
    assert (nack["type"], nack["name"], nack["expectedSequenceId"]) == (
        "streamNack", "InvalidSequenceId", 2)  # fmt: skip
    await publisher.send(pc.stream_data("s1", 2, Data("binary", b"\x02")))
    assert (await publisher.recv())["expectedSequenceId"] == 3
    await publisher.send(pc.stream_end("s1", ("boom", "E42")))
    assert await publisher.recv() == {"type": "streamClosed", "streamId": "s1"}

    got = [await subscriber.recv() for _ in range(3)]
    assert [(m["dataType"], m["data"], m["stream"]) for m in got] == [
        ("text", "chunk-1", {"streamId": "s1", "streamSequenceId": 1}),
        ("binary", b"\x02", {"streamId": "s1", "streamSequenceId": 2}),
        ("binary", b"", {"streamId": "s1", "streamSequenceId": 3, "endOfStream": True,
                         "error": {"name": "UserError", "message": "boom",
                                   "user_error_code": "E42"}}),
    ]  # fmt: skip
    assert [m["sequenceId"] for m in got] == [1, 2, 3]
    seen = [await json_subscriber.recv() for _ in range(3)]
    assert [m["stream"]["streamSequenceId"] for m in seen] == [1, 2, 3]
    assert seen[0]["data"] == "chunk-1" and seen[2]["stream"]["endOfStream"] is True
    await publisher.send(pc.stream_data("s1", 3, Data("text", "late")))
    again = await publisher.recv()  # ended recently: its streamClosed again, as it was
    assert again["type"] == "streamClosed" and "error" not in again
    await publisher.send(pc.stream_data("never", 1, Data("text", "x")))
    closed = await publisher.recv()
    assert (closed["type"], closed["error"]["name"]) == ("streamClosed", "StreamNotFound")
    await publisher.send(pc.send_to_group("room", None, 2, stream=("s2", 0)))
    closed = await publisher.recv()
    assert (closed["streamId"], closed["error"]["name"]) == ("s2", "BadRequest")
    await publisher.expect_pong()
