"""Apps built with the SDK, called by the real service.

Each test runs through both adapters (``serve``): the service on port 0 delivers
its webhooks to a Starlette or Flask app whose ``/eventhandler`` is the SDK's
middleware, and raw aiohttp WebSocket clients play the users.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import ACCESS_KEY, SECOND_KEY, StartService
from tests.sdk.conftest import Serve
from tests.sdk.servers import Recorder
from tests.support.service import client_url
from webpubsub.core.settings import EventHandlerSettings, GroupPresenceEvents, HubSettings
from webpubsub.sdk import (
    ConnectedRequest,
    ConnectRequest,
    ConnectResponse,
    DataType,
    DisconnectedRequest,
    EventHandlerError,
    GroupJoinedRequest,
    GroupLeftRequest,
    UserEventRequest,
    UserEventResponse,
    WebPubSubEventHandler,
)

HUB = "sdkhub"
JSON_PROTOCOL = "json.webpubsub.azure.v1"
WAIT = 10.0


def hub_settings(url_template: str) -> HubSettings:
    handler = EventHandlerSettings(
        url_template=url_template,
        user_event_pattern="*",
        system_events=frozenset({"connect", "connected", "disconnected"}),
        timeout_seconds=WAIT,
    )
    return HubSettings(name=HUB, event_handlers=(handler,))


def flavoured(flavour: str, func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    if flavour == "sync":
        return func

    async def handler(request: Any) -> Any:
        await asyncio.sleep(0)  # really asynchronous
        return func(request)

    return handler


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), WAIT)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    data: dict[str, Any] = msg.json()
    return data


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_every_event_reaches_the_app_and_state_round_trips(
    serve: Serve,
    start_service: StartService,
    http: aiohttp.ClientSession,
    flavour: str,
) -> None:
    connects: Recorder[ConnectRequest] = Recorder()
    connecteds: Recorder[ConnectedRequest] = Recorder()
    events: Recorder[UserEventRequest] = Recorder()
    disconnecteds: Recorder[DisconnectedRequest] = Recorder()

    def connect(request: ConnectRequest) -> ConnectResponse:
        connects(request)
        room = request.query["room"][0]
        request.context.states.update(room=room, count=0)
        return ConnectResponse(
            user_id="u-" + request.query["id"][0], groups=[room], subprotocol=JSON_PROTOCOL
        )

    def event(request: UserEventRequest) -> UserEventResponse:
        events(request)
        states = request.context.states
        states["count"] += 1
        data = request.data
        if isinstance(data, bytes):
            data = base64.b64encode(data).decode()
        return UserEventResponse.json(
            {
                "room": states["room"],
                "count": states["count"],
                "type": request.data_type,
                "data": data,
            }
        )

    handler = WebPubSubEventHandler(
        HUB,
        keys=[ACCESS_KEY],
        on_connect=flavoured(flavour, connect),
        on_connected=flavoured(flavour, connecteds),
        on_event=flavoured(flavour, event),
        on_disconnected=flavoured(flavour, disconnecteds),
    )
    base = await serve(handler)
    runner = await start_service(hub_settings(f"{base}/eventhandler/{{hub}}/{{event}}"))
    url = await client_url(runner, HUB, roles=["webpubsub.joinLeaveGroup"])

    async with http.ws_connect(f"{url}&id=bob&room=r1", protocols=[JSON_PROTOCOL, "other"]) as ws:
        assert ws.protocol == JSON_PROTOCOL
        welcome = await receive_json(ws)
        assert (welcome["type"], welcome["event"], welcome["userId"]) == (
            "system",
            "connected",
            "u-bob",
        )
        connection_id = welcome["connectionId"]

        connect_request = await connects.next()
        assert connect_request.context.hub == HUB
        assert connect_request.context.connection_id == connection_id
        assert connect_request.context.user_id is None  # the token had no subject
        assert connect_request.context.origin == "127.0.0.1"
        assert connect_request.subprotocols == (JSON_PROTOCOL, "other")
        assert connect_request.query["room"] == ("r1",)
        assert "access_token" not in connect_request.query
        assert connect_request.claims["role"] == ("webpubsub.joinLeaveGroup",)

        connected = await connecteds.next()
        assert connected.context.user_id == "u-bob"
        assert connected.context.subprotocol == JSON_PROTOCOL
        assert dict(connected.context.states) == {"room": "r1", "count": 0}

        frames: list[dict[str, Any]] = [
            {"dataType": "text", "data": "hé ✓"},
            {"dataType": "json", "data": {"a": [1, None]}},
            {"dataType": "binary", "data": "AAH+/w=="},
        ]
        expected_types = [DataType.TEXT, DataType.JSON, DataType.BINARY]
        for ack_id, frame in enumerate(frames, start=1):
            await ws.send_json({"type": "event", "event": "echo", "ackId": ack_id, **frame})
            reply = await receive_json(ws)
            assert reply == {
                "type": "message",
                "from": "server",
                "dataType": "json",
                "data": {
                    "room": "r1",
                    "count": ack_id,  # the state came back with every event
                    "type": expected_types[ack_id - 1].value,
                    "data": frame["data"],
                },
            }
            ack = await receive_json(ws)
            assert (ack["type"], ack["ackId"], ack["success"]) == ("ack", ack_id, True)
            seen = await events.next()
            assert (seen.context.event_name, seen.context.user_id) == ("echo", "u-bob")

        # The connect response's groups were joined.
        async with WebPubSubServiceClient.from_connection_string(
            runner.connection_string, hub=HUB
        ) as service:
            await service.send_to_group("r1", "to the room", content_type="text/plain")
        group_message = await receive_json(ws)
        assert (group_message["group"], group_message["data"]) == ("r1", "to the room")

    disconnected = await disconnecteds.next()
    assert disconnected.context.connection_id == connection_id
    assert isinstance(disconnected.reason, str)
    assert dict(disconnected.context.states) == {"room": "r1", "count": 3}


@pytest.mark.parametrize(
    ("reply", "frame_type", "data"),
    [
        (lambda text: f"echo: {text}", aiohttp.WSMsgType.TEXT, "echo: hi ✓"),
        (lambda text: text.encode()[::-1], aiohttp.WSMsgType.BINARY, "hi ✓".encode()[::-1]),
        (lambda text: {"echo": text}, aiohttp.WSMsgType.TEXT, '{"echo":"hi ✓"}'),
    ],
    ids=["text", "binary", "json"],
)
async def test_a_reply_to_a_simple_client_message_goes_back_to_the_sender(
    serve: Serve,
    start_service: StartService,
    http: aiohttp.ClientSession,
    reply: Callable[[str], object],
    frame_type: aiohttp.WSMsgType,
    data: object,
) -> None:
    events: Recorder[UserEventRequest] = Recorder()

    async def event(request: UserEventRequest) -> object:
        events(request)
        return reply(request.text)

    base = await serve(WebPubSubEventHandler(HUB, keys=[ACCESS_KEY], on_event=event))
    runner = await start_service(hub_settings(f"{base}/eventhandler"))
    async with http.ws_connect(await client_url(runner, HUB, user_id="zoë")) as ws:
        await ws.send_str("hi ✓")
        msg = await asyncio.wait_for(ws.receive(), WAIT)
        assert (msg.type, msg.data) == (frame_type, data)
    seen = await events.next()
    assert (seen.context.event_name, seen.context.user_id) == ("message", "zoë")


@pytest.mark.parametrize("status", [401, 403])
async def test_a_rejected_connect_refuses_the_client(
    serve: Serve, start_service: StartService, http: aiohttp.ClientSession, status: int
) -> None:
    connecteds: Recorder[ConnectedRequest] = Recorder()

    def connect(request: ConnectRequest) -> None:
        if request.context.user_id == "mallory":
            raise EventHandlerError(status, "go away")

    handler = WebPubSubEventHandler(
        HUB, keys=[ACCESS_KEY], on_connect=connect, on_connected=connecteds
    )
    base = await serve(handler)
    runner = await start_service(hub_settings(f"{base}/eventhandler"))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(await client_url(runner, HUB, user_id="mallory"))
    assert refused.value.status == status
    async with http.ws_connect(await client_url(runner, HUB, user_id="alice")):
        # Only the accepted client is ever reported connected.
        assert (await connecteds.next()).context.user_id == "alice"
    assert [c.context.user_id for c in connecteds.items] == ["alice"]


async def test_a_failed_user_event_is_an_error_ack(
    serve: Serve, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def event(request: UserEventRequest) -> str:
        if request.data == "bad":
            raise EventHandlerError(400, "bad data")
        return "fine"

    base = await serve(WebPubSubEventHandler(HUB, keys=[ACCESS_KEY], on_event=event))
    runner = await start_service(hub_settings(f"{base}/eventhandler"))
    url = await client_url(runner, HUB, user_id="alice")
    async with http.ws_connect(url, protocols=[JSON_PROTOCOL]) as ws:
        assert (await receive_json(ws))["event"] == "connected"
        await ws.send_json(
            {"type": "event", "event": "e", "dataType": "text", "data": "bad", "ackId": 1}
        )
        ack = await receive_json(ws)
        assert (ack["type"], ack["ackId"], ack["success"]) == ("ack", 1, False)
        await ws.send_json(
            {"type": "event", "event": "e", "dataType": "text", "data": "ok", "ackId": 2}
        )
        assert (await receive_json(ws))["data"] == "fine"


async def test_an_app_answers_an_invoke_as_it_answers_a_user_event(
    serve: Serve, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """An ``invoke`` reaches ``on_event`` as the user event it names; what the app returns
    is the ``invokeResponse`` data, an :class:`EventHandlerError` its failure."""
    events: Recorder[UserEventRequest] = Recorder()

    def event(request: UserEventRequest) -> object:
        events(request)
        if request.context.event_name == "fail":
            raise EventHandlerError(400, "cannot add that")
        body = request.data
        return {"sum": body["a"] + body["b"]}

    base = await serve(WebPubSubEventHandler(HUB, keys=[ACCESS_KEY], on_event=event))
    runner = await start_service(hub_settings(f"{base}/eventhandler"))
    url = await client_url(runner, HUB, user_id="alice")
    async with http.ws_connect(url, protocols=[JSON_PROTOCOL]) as ws:
        assert (await receive_json(ws))["event"] == "connected"
        invoke = {"type": "invoke", "invocationId": "1", "target": "event"}
        await ws.send_json({**invoke, "event": "add", "dataType": "json", "data": {"a": 1, "b": 2}})
        assert await receive_json(ws) == {
            "type": "invokeResponse",
            "invocationId": "1",
            "success": True,
            "dataType": "json",
            "data": {"sum": 3},
        }
        await ws.send_json({**invoke, "event": "fail", "dataType": "text", "data": "x"})
        failed = await receive_json(ws)
        assert (failed["invocationId"], failed["success"]) == ("1", False)
        assert failed["error"]["name"] == "InternalServerError"
    seen = await events.next()
    assert (seen.context.event_name, seen.context.user_id) == ("add", "alice")


@pytest.mark.parametrize(
    ("service_keys", "handler_keys", "accepted"),
    [
        ((ACCESS_KEY,), [SECOND_KEY], False),
        ((ACCESS_KEY, SECOND_KEY), [SECOND_KEY], True),  # key rotation: any entry verifies
        ((ACCESS_KEY,), [SECOND_KEY, ACCESS_KEY], True),
    ],
)
async def test_events_signed_with_another_key_are_refused(
    serve: Serve,
    start_service: StartService,
    http: aiohttp.ClientSession,
    service_keys: tuple[str, ...],
    handler_keys: list[str],
    accepted: bool,
) -> None:
    connects: Recorder[ConnectRequest] = Recorder()
    base = await serve(WebPubSubEventHandler(HUB, keys=handler_keys, on_connect=connects))
    runner = await start_service(hub_settings(f"{base}/eventhandler"), keys=service_keys)
    url = await client_url(runner, HUB, user_id="alice")
    if accepted:
        async with http.ws_connect(url):
            assert (await connects.next()).context.user_id == "alice"
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 401
        assert connects.items == []


@pytest.mark.parametrize(
    ("allowed", "accepted"),
    [(["pubsub.example.com"], False), (["pubsub.example.com", "127.0.0.1"], True)],
)
async def test_a_service_from_an_origin_that_is_not_allowed_is_never_validated(
    serve: Serve,
    start_service: StartService,
    http: aiohttp.ClientSession,
    allowed: list[str],
    accepted: bool,
) -> None:
    connects: Recorder[ConnectRequest] = Recorder()
    handler = WebPubSubEventHandler(
        HUB, keys=[ACCESS_KEY], allowed_origins=allowed, on_connect=connects
    )
    base = await serve(handler)
    runner = await start_service(hub_settings(f"{base}/eventhandler"))
    url = await client_url(runner, HUB, user_id="alice")
    if accepted:
        async with http.ws_connect(url):
            assert (await connects.next()).context.origin == "127.0.0.1"
    else:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 500  # validation failed: no event was delivered
        assert connects.items == []


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_group_presence_handlers_see_joins_and_leaves(
    serve: Serve, start_service: StartService, http: aiohttp.ClientSession, flavour: str
) -> None:
    joined: Recorder[GroupJoinedRequest] = Recorder()
    left: Recorder[GroupLeftRequest] = Recorder()
    handler = WebPubSubEventHandler(HUB, keys=[ACCESS_KEY], on_group_left=flavoured(flavour, left))
    handler.on_group_joined(flavoured(flavour, joined))
    base = await serve(handler)
    settings = HubSettings(
        name=HUB,
        event_handlers=(
            EventHandlerSettings(
                url_template=f"{base}/eventhandler/{{event}}",
                group_presence_events=GroupPresenceEvents(frozenset({"joined", "left"})),
                timeout_seconds=WAIT,
            ),
        ),
    )
    runner = await start_service(settings)
    url = await client_url(runner, HUB, user_id="ann", roles=["webpubsub.joinLeaveGroup"])
    async with http.ws_connect(url, protocols=[JSON_PROTOCOL]) as ws:
        connection_id = (await receive_json(ws))["connectionId"]
        await ws.send_json({"type": "joinGroup", "group": "room 1", "ackId": 1})
        first = await joined.next()
        assert (first.group, first.context.connection_id) == ("room 1", connection_id)
        assert (first.context.user_id, first.context.event_name) == ("ann", "joined")
        assert first.context.event_type == "azure.webpubsub.group.joined"
        async with WebPubSubServiceClient.from_connection_string(
            runner.connection_string, hub=HUB
        ) as service:
            await service.remove_user_from_group("room 1", "ann")
        gone = await left.next()
        assert (gone.group, gone.context.event_name) == ("room 1", "left")
