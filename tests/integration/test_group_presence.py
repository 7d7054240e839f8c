"""Group presence events seen by a real event-handler app: the service on port 0, a JSON
client, the official service SDK for REST. Each route that puts a connection in a group
or takes it out (the token's groups, a connect answer's groups, the client's
joinGroup/leaveGroup, REST add/remove connection and user, remove from all groups)
reaches the handler as a signed CloudEvent with ``ce-type``
``azure.webpubsub.group.joined``/``left`` and body ``{"group": ...}``, in order after
``connected``; a handler's group filter keeps the other groups out; with two nodes, a
REST change is told once, by the node that holds the connection."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import ACCESS_KEY, StartService
from tests.support.handler import EventHandlerApp, Recorded, default_responder
from tests.support.service import client_url, json_client, sdk
from webpubsub.backplane.memory import MemoryBackplane, MemoryBus
from webpubsub.core.settings import EventHandlerSettings, GroupPresenceEvents, HubSettings

WAIT = 5.0


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def presence_hub(url: str, filters: tuple[str, ...] = ()) -> HubSettings:
    handler = EventHandlerSettings(
        url_template=url + "/{hub}/{event}",
        system_events=frozenset({"connected", "disconnected"}),
        group_presence_events=GroupPresenceEvents(frozenset({"joined", "left"}), filters),
        timeout_seconds=WAIT,
    )
    return HubSettings(name="chat", event_handlers=(handler,))


async def next_presence(app: EventHandlerApp) -> Recorded:
    return await app.next_request(
        lambda r: r.method == "POST" and r.event_name in ("joined", "left"), WAIT
    )


def summary(rec: Recorded) -> tuple[str, str, object]:
    return (rec.ce_type, rec.path, orjson.loads(rec.body)["group"])


async def test_every_route_into_and_out_of_a_group_reaches_the_handler(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(presence_hub(handler_app.url))
    url = await client_url(
        runner, user_id="alice", groups=["from-token"], roles=["webpubsub.joinLeaveGroup"]
    )
    ws, cid = await json_client(http, url)
    async with ws, sdk(runner) as service:
        connected = await handler_app.next_event("sys.connected", WAIT)
        joined = await next_presence(handler_app)
        # The whole request: a signed CloudEvent like connected, with its own ce-id.
        assert joined.headers["ce-type"] == "azure.webpubsub.group.joined"
        assert joined.headers["ce-eventName"] == "joined"
        assert joined.headers["Content-Type"] == "application/json; charset=utf-8"
        assert joined.body == b'{"group":"from-token"}'
        assert joined.headers["ce-connectionId"] == cid
        assert joined.headers["ce-userId"] == "alice"
        assert joined.headers["ce-hub"] == "chat"
        assert joined.headers["ce-subprotocol"] == "json.webpubsub.azure.v1"
        assert joined.headers["ce-source"] == f"/hubs/chat/client/{cid}"
        assert joined.headers["ce-id"] != connected.headers["ce-id"]
        expected = hmac.new(ACCESS_KEY.encode(), cid.encode(), hashlib.sha256).hexdigest()
        assert f"sha256={expected}" in joined.headers["ce-signature"].split(",")
        assert joined.path == "/eventhandler/chat/joined"

        await ws.send_json({"type": "joinGroup", "group": "own", "ackId": 1})
        assert (await ws.receive_json(timeout=WAIT))["success"] is True
        assert summary(await next_presence(handler_app)) == (
            "azure.webpubsub.group.joined",
            "/eventhandler/chat/joined",
            "own",
        )
        await service.add_connection_to_group("by-connection", cid)
        await service.add_user_to_group("by-user", "alice")
        await ws.send_json({"type": "leaveGroup", "group": "own", "ackId": 2})
        assert (await ws.receive_json(timeout=WAIT))["success"] is True
        await service.remove_connection_from_group("by-connection", cid)
        await service.remove_user_from_group("by-user", "alice")
        await service.add_connection_to_group("last", cid)
        await service.remove_connection_from_all_groups(cid)
        seen = [summary(await next_presence(handler_app))[::2] for _ in range(8)]
        assert seen[:6] == [
            ("azure.webpubsub.group.joined", "by-connection"),
            ("azure.webpubsub.group.joined", "by-user"),
            ("azure.webpubsub.group.left", "own"),
            ("azure.webpubsub.group.left", "by-connection"),
            ("azure.webpubsub.group.left", "by-user"),
            ("azure.webpubsub.group.joined", "last"),
        ]
        # Removed from all groups: one left each, in no particular order.
        assert sorted(seen[6:]) == [
            ("azure.webpubsub.group.left", "from-token"),
            ("azure.webpubsub.group.left", "last"),
        ]


async def test_a_group_filter_keeps_other_groups_out(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(presence_hub(handler_app.url, ("room-*",)))
    url = await client_url(runner, user_id="bob", roles=["webpubsub.joinLeaveGroup"])
    ws, _cid = await json_client(http, url)
    async with ws:
        for ack_id, group in enumerate(["lobby", "room-1"], start=1):
            await ws.send_json({"type": "joinGroup", "group": group, "ackId": ack_id})
            assert (await ws.receive_json(timeout=WAIT))["success"] is True
        rec = await next_presence(handler_app)
        assert (rec.ce_type, rec.body) == ("azure.webpubsub.group.joined", b'{"group":"room-1"}')
    # The client closed: its disconnected comes after anything else of the connection,
    # and no "left" (nor the "lobby" join) came before it.
    await handler_app.next_event("sys.disconnected", WAIT)
    assert [r.body for r in posts_of(handler_app)] == [b'{"group":"room-1"}']


async def test_rest_on_one_node_is_told_once_by_the_connections_node(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    bus = MemoryBus()
    settings = presence_hub(handler_app.url)
    rest_node = await start_service(settings, backplane=MemoryBackplane(bus))
    client_node = await start_service(settings, backplane=MemoryBackplane(bus))
    ws, cid = await json_client(http, await client_url(client_node, user_id="carol"))
    async with ws, sdk(rest_node) as service:
        await service.add_user_to_group("team", "carol")
        await service.remove_connection_from_group("team", cid)
        rec = await next_presence(handler_app)
        assert (rec.ce_type, rec.body) == ("azure.webpubsub.group.joined", b'{"group":"team"}')
        rec = await next_presence(handler_app)
        assert (rec.ce_type, rec.body) == ("azure.webpubsub.group.left", b'{"group":"team"}')
    await handler_app.next_event("sys.disconnected", WAIT)  # after all of the connection's
    assert len(posts_of(handler_app)) == 2


async def test_the_groups_of_a_connect_answer_are_told_after_connected(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def respond(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connect":
            return web.json_response({"groups": ["from-connect", "room-2"]})
        return default_responder(req)

    handler_app.responder = respond
    base = presence_hub(handler_app.url)
    (handler,) = base.event_handlers
    with_connect = dataclasses.replace(handler, system_events=frozenset({"connect", "connected"}))
    runner = await start_service(dataclasses.replace(base, event_handlers=(with_connect,)))
    ws, cid = await json_client(http, await client_url(runner, user_id="dave"))
    async with ws:
        await handler_app.next_event("sys.connected", WAIT)
        told = [summary(await next_presence(handler_app))[::2] for _ in range(2)]
        assert told == [
            ("azure.webpubsub.group.joined", "from-connect"),
            ("azure.webpubsub.group.joined", "room-2"),
        ]
        assert all(r.headers["ce-connectionId"] == cid for r in posts_of(handler_app))


def posts_of(app: EventHandlerApp) -> list[Recorded]:
    return [r for r in app.requests if r.event_name in ("joined", "left")]
