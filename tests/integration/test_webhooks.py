"""The webhooks to the app server, seen by a real event-handler app (Azure docs: CloudEvents).

Abuse protection, the common CloudEvents headers and signature,
the ``connect``/``connected``/``disconnected`` and ``message`` events, the
connection state and the URL template.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ACCESS_KEY, SECOND_KEY, StartService, make_config
from tests.support.handler import EventHandlerApp, Recorded, default_responder, posts
from tests.support.proxy import TcpProxy
from tests.support.service import client_url, json_client, sdk
from webpubsub.core.settings import EventHandlerSettings, HubSettings
from webpubsub.protocol.cloudevents import MAX_STATE_BYTES

WAIT = 5.0
"""Upper bound for anything that should happen promptly."""

ALL_SYSTEM = frozenset({"connect", "connected", "disconnected"})


def hub_settings(
    url: str,
    *,
    name: str = "chat",
    system: frozenset[str] = ALL_SYSTEM,
    timeout: float = 5.0,
) -> HubSettings:
    handler = EventHandlerSettings(
        url_template=url, user_event_pattern="*", system_events=system, timeout_seconds=timeout
    )
    return HubSettings(name=name, event_handlers=(handler,))


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sign(connection_id: str, key: str) -> str:
    return "sha256=" + hmac.new(key.encode(), connection_id.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def never() -> AsyncIterator[asyncio.Event]:
    """An event a hanging handler waits on; set at teardown to release it."""
    event = asyncio.Event()
    yield event
    event.set()


# -- abuse protection -----------------------------------------------------------


async def test_the_handler_url_is_validated_once_before_the_first_event(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(hub_settings(f"{handler_app.url}/{{hub}}/{{event}}"))
    url = await client_url(runner)
    async with await http.ws_connect(url), await http.ws_connect(url):
        await handler_app.next_event("sys.connect")
        await handler_app.next_event("sys.connect")
    first = handler_app.requests[0]
    assert first.method == "OPTIONS"
    assert first.path == "/eventhandler/chat/validate"
    assert first.headers["WebHook-Request-Origin"] == "127.0.0.1"
    assert first.headers["ce-awpsversion"] == "1.0"
    assert [r.method for r in handler_app.requests].count("OPTIONS") == 1  # success is cached


async def test_a_handler_that_does_not_allow_our_origin_gets_no_events(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "OPTIONS":
            return web.Response(headers={"WebHook-Allowed-Origin": "other.example.com"})
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(hub_settings(handler_app.url))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(await client_url(runner))
    assert info.value.status == 500
    assert [r.method for r in handler_app.requests] == ["OPTIONS"]


# -- connect ------------------------------------------------------------------


async def test_the_connect_body_carries_claims_query_headers_and_subprotocols(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(hub_settings(handler_app.url))
    now = int(time.time())
    aud = f"{runner.endpoint}/client/hubs/chat"
    token = jwt.encode(
        {
            "aud": aud,
            "iat": now,
            "exp": now + 600,
            "sub": "alice",
            "role": ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"],
            "custom": "x",
            "level": 3,
            "tags": ["a", "b"],
        },
        ACCESS_KEY.encode(),
        algorithm="HS256",
    )
    url = f"ws://127.0.0.1:{runner.port}/client/hubs/chat?id=alice&room=r1&room=r2"
    async with await http.ws_connect(
        f"{url}&access_token={token}",
        headers={"Authorization": f"Bearer {token}", "X-Custom": "yes"},
        protocols=["chat.v1", "chat.v2"],
    ):
        connect = await handler_app.next_event("sys.connect")
    body = json.loads(connect.body)
    assert body["claims"] == {
        "aud": [aud],
        "iat": [str(now)],
        "exp": [str(now + 600)],
        "sub": ["alice"],
        "role": ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"],
        "custom": ["x"],
        "level": ["3"],
        "tags": ["a", "b"],
    }
    assert body["query"] == {"id": ["alice"], "room": ["r1", "r2"]}
    headers = {k.lower(): v for k, v in body["headers"].items()}
    assert "authorization" not in headers
    assert headers["x-custom"] == ["yes"]
    assert all(isinstance(v, list) for v in headers.values())
    assert body["subprotocols"] == ["chat.v1", "chat.v2"]
    assert body["clientCertificates"] == []
    assert connect.headers["ce-userId"] == "alice"
    assert "ce-subprotocol" not in connect.headers


async def test_an_anonymous_connect_has_empty_claims_and_204_keeps_the_defaults(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    settings = hub_settings(handler_app.url)
    runner = await start_service(HubSettings(**{**_fields(settings), "anonymous_connect": True}))
    async with await http.ws_connect(f"ws://127.0.0.1:{runner.port}/client/hubs/chat"):
        connect = await handler_app.next_event("sys.connect")
        connected = await handler_app.next_event("sys.connected")
    assert json.loads(connect.body)["claims"] == {}
    assert "ce-userId" not in connect.headers
    assert "ce-userId" not in connected.headers


def _fields(settings: HubSettings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__slots__}


async def test_the_connect_response_sets_user_groups_and_roles(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.json_response(
                {"userId": "bob", "groups": ["g1"], "roles": ["webpubsub.sendToGroup.g1"]}
            )
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(hub_settings(handler_app.url))
    url = await client_url(runner, user_id="alice", groups=["g0"])
    async with await http.ws_connect(url) as ws, sdk(runner) as service:
        connected = await handler_app.next_event("sys.connected")
        await ws.send_str("hi")
        message = await handler_app.next_event("user.message")
        cid = connected.headers["ce-connectionId"]
        assert await service.user_exists("bob")
        assert not await service.user_exists("alice")
        assert await service.group_exists("g1")
        assert await service.group_exists("g0")  # the token's groups are kept
        assert await service.has_permission("sendToGroup", cid, target_name="g1")
        assert not await service.has_permission("sendToGroup", cid, target_name="g2")
    assert connected.headers["ce-userId"] == "bob"
    assert message.headers["ce-userId"] == "bob"
    disconnected = await handler_app.next_event("sys.disconnected")
    assert disconnected.headers["ce-userId"] == "bob"


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_a_connect_4xx_refuses_the_handshake_with_that_status(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    status: int,
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.Response(status=status, text="go away")
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(hub_settings(handler_app.url))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(await client_url(runner))
    assert info.value.status == status


@pytest.mark.parametrize(
    "failure", ["500", "timeout", "down", "bad group", "bad subprotocol", "bad userId"]
)
async def test_a_failed_connect_refuses_the_handshake_with_500_promptly(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    never: asyncio.Event,
    failure: str,
) -> None:
    async def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            if failure == "timeout":
                await never.wait()
            if failure == "bad group":
                return web.json_response({"groups": ["ok", ""]})
            if failure == "bad subprotocol":
                return web.json_response({"subprotocol": "not.offered"})
            if failure == "bad userId":
                return web.json_response({"userId": "u" * 1025})
            return web.Response(status=500, text="boom")
        return default_responder(req)

    handler_app.responder = responder
    url = handler_app.url if failure != "down" else f"http://127.0.0.1:{free_port()}/eh"
    runner = await start_service(hub_settings(url, timeout=0.5))
    token_url = await client_url(runner)
    started = time.monotonic()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(token_url)
    assert info.value.status == 500
    assert time.monotonic() - started < 3.0
    # The refusal tells the client the handler failed, never where the handler is.
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    async with http.get(token_url.replace("ws://", "http://"), headers=upgrade) as resp:
        assert resp.status == 500
        body = await resp.json()
    assert body["message"].startswith("The event handler failed")
    assert "127.0.0.1" not in body["message"] and "/eh" not in body["message"]


async def test_the_connect_handler_picks_the_subprotocol(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.json_response({"subprotocol": "chat.v2"})
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(hub_settings(handler_app.url))
    url = await client_url(runner)
    async with await http.ws_connect(url, protocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.protocol == "chat.v2"


# -- common headers ---------------------------------------------------------

TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


async def test_every_event_carries_the_cloudevents_headers(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(
        hub_settings(handler_app.url, name="Chat"), keys=(ACCESS_KEY, SECOND_KEY)
    )
    async with await http.ws_connect(await client_url(runner, "Chat", user_id="alice")) as ws:
        await ws.send_str("hi")
        events = {"connect": await handler_app.next_event("sys.connect")}
        for _ in range(2):  # connected (queued) and the message (blocking): in either order
            req = await handler_app.next_request(
                lambda r: (
                    r.method == "POST" and r.ce_type.endswith((".sys.connected", ".user.message"))
                )
            )
            events[req.ce_type.rsplit(".", 1)[1]] = req
    events["disconnected"] = await handler_app.next_event("sys.disconnected")

    cid = events["connect"].headers["ce-connectionId"]
    assert cid
    for name, req in events.items():
        h = req.headers
        system = name != "message"
        assert h["ce-specversion"] == "1.0"
        assert (
            h["ce-type"] == ("azure.webpubsub.sys." if system else "azure.webpubsub.user.") + name
        )
        assert h["ce-source"] == f"/hubs/chat/client/{cid}"
        assert TIME.match(h["ce-time"]), h["ce-time"]
        assert h["ce-awpsversion"] == "1.0"
        assert h["ce-hub"] == "chat"
        assert h["ce-connectionId"] == cid
        assert h["ce-eventName"] == name
        assert h["ce-userId"] == "alice"
        assert h["ce-signature"] == f"{sign(cid, ACCESS_KEY)},{sign(cid, SECOND_KEY)}"
        assert h["WebHook-Request-Origin"] == "127.0.0.1"
        assert h["Content-Type"] == ("application/json; charset=utf-8" if system else "text/plain")
        assert "ce-subprotocol" not in h  # a simple client has none
        assert "ce-connectionState" not in h  # no state was set
        # emitted with the documented casing (the .NET SDK does not care, people do)
        assert {"ce-connectionId", "ce-eventName", "ce-userId", "WebHook-Request-Origin"} <= set(
            h.keys()
        )
    assert events["connect"].headers["ce-id"] == "0"
    assert len({req.headers["ce-id"] for req in events.values()}) == 4
    assert json.loads(events["connected"].body) == {}


async def test_the_url_template_gets_hub_and_event(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    template = f"{handler_app.url}/{{hub}}/api/{{event}}?code=s3cret"
    runner = await start_service(hub_settings(template, name="Chat"))
    async with await http.ws_connect(await client_url(runner, "Chat")) as ws:
        await ws.send_str("hi")
        await handler_app.next_event("user.message")
    await handler_app.next_event("sys.disconnected")
    seen = {(r.method, r.path, r.query) for r in handler_app.requests}
    assert seen == {
        ("OPTIONS", "/eventhandler/chat/api/validate", "code=s3cret"),
        ("POST", "/eventhandler/chat/api/connect", "code=s3cret"),
        ("POST", "/eventhandler/chat/api/connected", "code=s3cret"),
        ("POST", "/eventhandler/chat/api/message", "code=s3cret"),
        ("POST", "/eventhandler/chat/api/disconnected", "code=s3cret"),
    }


# -- connection state -----------------------------------------------------------


def _stateful(req: Recorded) -> web.StreamResponse:
    """connect sets ``s1``; message ``set`` sets ``s2``, ``clear`` clears, others keep."""
    if req.event_name == "connect":
        return web.Response(status=204, headers={"ce-connectionState": "s1"})
    if req.event_name == "message" and req.body == b"set":
        return web.Response(status=204, headers={"ce-connectionState": "s2"})
    if req.event_name == "message" and req.body == b"clear":
        return web.Response(status=204, headers={"ce-connectionState": ""})
    if req.event_name == "connected":  # ignored on non-blocking events
        return web.Response(status=204, headers={"ce-connectionState": "ignored"})
    return default_responder(req)


async def test_the_connection_state_round_trips_and_is_replaced(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    handler_app.responder = _stateful
    runner = await start_service(hub_settings(handler_app.url))
    async with await http.ws_connect(await client_url(runner)) as ws:
        connected = await handler_app.next_event("sys.connected")
        await ws.send_str("keep")
        keep = await handler_app.next_event("user.message")
        await ws.send_str("set")
        set_ = await handler_app.next_event("user.message")
        await ws.send_str("after")
        after = await handler_app.next_event("user.message")
    disconnected = await handler_app.next_event("sys.disconnected")
    assert connected.headers["ce-connectionState"] == "s1"
    assert keep.headers["ce-connectionState"] == "s1"
    assert set_.headers["ce-connectionState"] == "s1"
    assert after.headers["ce-connectionState"] == "s2"
    assert disconnected.headers["ce-connectionState"] == "s2"


async def test_an_empty_state_header_clears_the_state(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    handler_app.responder = _stateful
    runner = await start_service(hub_settings(handler_app.url))
    async with await http.ws_connect(await client_url(runner)) as ws:
        await ws.send_str("clear")
        clear = await handler_app.next_event("user.message")
        await ws.send_str("after")
        after = await handler_app.next_event("user.message")
    disconnected = await handler_app.next_event("sys.disconnected")
    assert clear.headers["ce-connectionState"] == "s1"
    assert "ce-connectionState" not in after.headers
    assert "ce-connectionState" not in disconnected.headers


def _sized_state(size: int) -> Callable[[Recorded], web.StreamResponse]:
    """connect sets a state of ``size`` bytes."""

    def respond(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.Response(status=204, headers={"ce-connectionState": "s" * size})
        return default_responder(req)

    return respond


async def test_a_state_of_exactly_8_kib_round_trips(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    handler_app.responder = _sized_state(MAX_STATE_BYTES)
    runner = await start_service(hub_settings(handler_app.url))
    async with await http.ws_connect(await client_url(runner)) as ws:
        await ws.send_str("hi")
        message = await handler_app.next_event("user.message")
    assert message.headers["ce-connectionState"] == "s" * MAX_STATE_BYTES


@pytest.mark.parametrize("size", [MAX_STATE_BYTES + 1, 8 * MAX_STATE_BYTES])
async def test_a_larger_state_is_refused_with_an_error_naming_the_limit(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    size: int,
) -> None:
    handler_app.responder = _sized_state(size)
    runner = await start_service(hub_settings(handler_app.url))
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(await client_url(runner))
    assert refused.value.status >= 500
    assert f"connection state over {MAX_STATE_BYTES} bytes" in caplog.text


# -- connected / disconnected -------------------------------------------


async def test_connected_arrives_after_the_upgrade(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(hub_settings(handler_app.url))
    existed: list[bool] = []
    answered = asyncio.Event()

    async with sdk(runner) as service:

        async def responder(req: Recorded) -> web.StreamResponse:
            if req.event_name in ("connect", "connected"):
                cid = req.headers["ce-connectionId"]
                existed.append(await service.connection_exists(cid))
            if req.event_name == "connected":
                answered.set()
            return default_responder(req)

        handler_app.responder = responder
        async with await http.ws_connect(await client_url(runner)), asyncio.timeout(WAIT):
            await answered.wait()
    assert existed == [False, True]  # not attached during connect, attached by connected


async def test_disconnected_is_sent_once_with_the_reason(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(hub_settings(handler_app.url))
    url = await client_url(runner)
    ws = await http.ws_connect(url)
    cid = (await handler_app.next_event("sys.connected")).headers["ce-connectionId"]
    assert not posts(handler_app, "disconnected")
    await ws.close()
    first = await handler_app.next_event("sys.disconnected")
    assert first.headers["ce-connectionId"] == cid
    assert json.loads(first.body) == {"reason": "The client closed the connection."}

    # a marker: a later connection's whole life, then count
    async with await http.ws_connect(url):
        await handler_app.next_event("sys.connected")
    await handler_app.next_event("sys.disconnected")
    mine = [r for r in posts(handler_app, "disconnected") if r.headers["ce-connectionId"] == cid]
    assert len(mine) == 1


async def test_a_connection_closed_by_a_failed_message_reports_why(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "message":
            return web.Response(status=500)
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(hub_settings(handler_app.url))
    async with await http.ws_connect(await client_url(runner)) as ws:
        await ws.send_str("hi")
        closed = await ws.receive(timeout=WAIT)
        assert (closed.type, closed.data) == (WSMsgType.CLOSE, 1011)
    disconnected = await handler_app.next_event("sys.disconnected")
    reason = json.loads(disconnected.body)["reason"]
    assert reason.startswith("The event handler failed")
    assert "500" in reason
    assert len(posts(handler_app, "disconnected")) == 1


async def test_connected_and_disconnected_do_not_block_the_client(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    never: asyncio.Event,
) -> None:
    async def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name in ("connected", "disconnected"):
            await never.wait()  # never answers
        if req.event_name == "message":
            return web.Response(text="reply:" + req.body.decode(), content_type="text/plain")
        return default_responder(req)

    handler_app.responder = responder
    runner = await start_service(hub_settings(handler_app.url))
    url = await client_url(runner)
    async with await http.ws_connect(url) as ws:
        await handler_app.next_event("sys.connected")
        for text in ("one", "two"):
            await ws.send_str(text)
            msg = await ws.receive(timeout=WAIT)
            assert (msg.type, msg.data) == (WSMsgType.TEXT, "reply:" + text)
    # a new client is not held up by the pending disconnected either
    async with await http.ws_connect(url) as ws:
        await ws.send_str("three")
        assert (await ws.receive(timeout=WAIT)).data == "reply:three"


async def test_user_events_hanging_on_a_handler_do_not_delay_handshakes(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    never: asyncio.Event,
) -> None:
    # Issue 10.5: every pooled connection to the handler held by a hanging user event
    # made a new client's connect wait for a free one.
    hanging = 0
    held = asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        nonlocal hanging
        if req.event_name == "slow":
            hanging += 1
            held.set()
            await never.wait()
        return default_responder(req)

    handler_app.responder = responder
    config = make_config(hub_settings(handler_app.url, system=frozenset({"connect"})))
    upstream = dataclasses.replace(config.upstream, max_connections_per_origin=4)
    runner = await start_service(config=dataclasses.replace(config, upstream=upstream))
    for i in range(4):  # the whole events pool of that handler
        ws, _ = await json_client(http, await client_url(runner))
        event = {"type": "event", "event": "slow", "dataType": "text", "data": "x", "ackId": i}
        await ws.send_json(event)
    async with asyncio.timeout(WAIT):
        while hanging < 4:
            held.clear()
            await held.wait()
    started = time.monotonic()
    ws, _ = await json_client(http, await client_url(runner))  # connect: its own budget
    assert time.monotonic() - started < 2.0
    await ws.close()


async def test_events_to_a_handler_reuse_one_keep_alive_connection(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """No per-event connection set-up (issue 13): a client's events, one after the other,
    reach the handler over one kept-alive connection of the handler origin's pool."""
    async with TcpProxy(handler_app.port) as proxy:
        url = handler_app.url.replace(f":{handler_app.port}/", f":{proxy.port}/")
        runner = await start_service(hub_settings(url, system=frozenset()))
        ws, _ = await json_client(http, await client_url(runner))
        for i in range(20):  # one at a time: each waits for its ack
            await ws.send_json(
                {"type": "event", "event": "e", "dataType": "text", "data": "x", "ackId": i}
            )
            ack = await ws.receive_json(timeout=5)
            assert ack == {"type": "ack", "ackId": i, "success": True}
        assert len(posts(handler_app, "e")) == 20
        # One connection for the events, one of the separate pool of probes and connect
        # calls (the abuse-protection OPTIONS came first): never one per event.
        assert [r.method for r in handler_app.requests].count("OPTIONS") == 1
        assert proxy.accepted == 2
