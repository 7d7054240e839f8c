"""The official Python client, ``azure-messaging-webpubsubclient`` 1.1, against the service.

Both subprotocols through the aio client (and one flow with the blocking client):
groups, every data type, events and their replies, failure acks as the SDK
reports them, a REST close, and recovery through a proxy that cuts the
connection mid-stream (Azure docs: JSON subprotocol; the official SDKs' traffic).
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
from aiohttp import web
from azure.messaging.webpubsubclient import WebPubSubClient as SyncWebPubSubClient
from azure.messaging.webpubsubclient.aio import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import (
    CallbackType,
    OnConnectedArgs,
    OnDisconnectedArgs,
    OnGroupDataMessageArgs,
    OnServerDataMessageArgs,
    SendMessageError,
    WebPubSubDataType,
    WebPubSubProtocolType,
)

from tests.conftest import StartService
from tests.support.handler import EventHandlerApp, Recorded, default_responder, posts
from tests.support.proxy import TcpProxy
from tests.support.service import ALL_SYSTEM_EVENTS, GroupInbox, chat_hub, sdk
from webpubsub.server.app import ServiceRunner

WAIT = 5.0
"""Upper bound for anything that should happen promptly."""

ROLES = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]
SYSTEM = frozenset({"connect", "connected", "disconnected"})


def url_provider(
    runner: ServiceRunner, port: int | None = None, **claims: Any
) -> Callable[[], Coroutine[Any, Any, str]]:
    """What an app gives the client: a fresh URL per call, optionally via ``port``.

    The token's audience names the service; the service also accepts the origin
    the request came to, so the URL may point at the proxy.
    """

    async def provide() -> str:
        async with sdk(runner) as service:
            token = await service.get_client_access_token(**claims)
        url: str = token["url"]
        if port is not None:
            url = url.replace(f"//127.0.0.1:{runner.port}/", f"//127.0.0.1:{port}/")
        return url

    return provide


def replying(req: Recorded) -> web.StreamResponse:
    """Answers every user event with ``<event>:<content type>`` as text."""
    if req.method == "POST" and req.ce_type.startswith("azure.webpubsub.user."):
        if req.event_name == "fail":
            return web.Response(status=500, text="boom")
        text = f"{req.event_name}:{req.headers['Content-Type']}"
        return web.Response(text=text, content_type="text/plain")
    return default_responder(req)


Message = tuple[str, Any]
"""("group", OnGroupDataMessageArgs) or ("server", OnServerDataMessageArgs)."""


class Observer:
    """Records a client's callbacks in order, for bounded waits."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[Message] = asyncio.Queue()
        self.connected: asyncio.Queue[OnConnectedArgs] = asyncio.Queue()
        self.disconnected: asyncio.Queue[OnDisconnectedArgs] = asyncio.Queue()
        self.stopped = asyncio.Event()

    async def attach(self, client: WebPubSubClient) -> None:
        async def on_group(args: OnGroupDataMessageArgs) -> None:
            self.messages.put_nowait(("group", args))

        async def on_server(args: OnServerDataMessageArgs) -> None:
            self.messages.put_nowait(("server", args))

        async def on_connected(args: OnConnectedArgs) -> None:
            self.connected.put_nowait(args)

        async def on_disconnected(args: OnDisconnectedArgs) -> None:
            self.disconnected.put_nowait(args)

        async def on_stopped() -> None:
            self.stopped.set()

        await client.subscribe(CallbackType.GROUP_MESSAGE, on_group)
        await client.subscribe(CallbackType.SERVER_MESSAGE, on_server)
        await client.subscribe(CallbackType.CONNECTED, on_connected)
        await client.subscribe(CallbackType.DISCONNECTED, on_disconnected)
        await client.subscribe(CallbackType.STOPPED, on_stopped)

    async def next(self) -> Message:
        return await asyncio.wait_for(self.messages.get(), WAIT)

    async def next_data(self, origin: str) -> Any:
        kind, args = await self.next()
        assert kind == origin, (kind, vars(args))
        return args.data


@pytest.fixture
async def observed() -> AsyncIterator[Callable[..., Awaitable[tuple[WebPubSubClient, Observer]]]]:
    """``await observed(credential, **options)``: an open aio client and its observer."""
    clients: list[WebPubSubClient] = []

    async def open_client(
        credential: WebPubSubClientCredential, **options: Any
    ) -> tuple[WebPubSubClient, Observer]:
        client = WebPubSubClient(credential, **options)
        observer = Observer()
        await observer.attach(client)
        await client.open()
        clients.append(client)
        return client, observer

    yield open_client
    for client in clients:
        await client.close()


Observed = Callable[..., Awaitable[tuple[WebPubSubClient, Observer]]]


# -- the aio client ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", list(WebPubSubProtocolType))
async def test_the_aio_client_uses_groups_events_and_rest_messages(
    handler_app: EventHandlerApp,
    start_service: StartService,
    observed: Observed,
    protocol: WebPubSubProtocolType,
) -> None:
    handler_app.responder = replying
    runner = await start_service(chat_hub(handler_app.url, system=ALL_SYSTEM_EVENTS))
    credential = WebPubSubClientCredential(url_provider(runner, user_id="alice", roles=ROLES))
    client, seen = await observed(credential, protocol_type=protocol, message_retry_total=0)
    connected = await asyncio.wait_for(seen.connected.get(), WAIT)
    assert connected.user_id == "alice"
    reliable = protocol is WebPubSubProtocolType.JSON_RELIABLE
    connect = (await handler_app.next_event("sys.connect")).body
    assert json.loads(connect)["subprotocols"] == [protocol.value]

    await client.join_group("g1")
    await client.send_to_group("g1", "hello", WebPubSubDataType.TEXT)
    await client.send_to_group("g1", {"a": [1, 2]}, WebPubSubDataType.JSON)
    await client.send_to_group("g1", memoryview(b"\x00\x01\xff"), WebPubSubDataType.BINARY)
    await client.send_to_group("g1", "not echoed", WebPubSubDataType.TEXT, no_echo=True)
    await client.send_to_group("g1", "no ack", WebPubSubDataType.TEXT, ack=False)
    received = [await seen.next() for _ in range(4)]
    assert [(kind, args.data_type, args.group, args.from_user_id) for kind, args in received] == [
        ("group", "text", "g1", "alice"),
        ("group", "json", "g1", "alice"),
        ("group", "binary", "g1", "alice"),
        ("group", "text", "g1", "alice"),
    ]
    data = [args.data for _, args in received]
    assert data[:2] == ["hello", {"a": [1, 2]}]
    assert bytes(data[2]) == b"\x00\x01\xff"
    assert data[3] == "no ack"  # "not echoed" never came back
    sequence_ids = [args.sequence_id for _, args in received]
    assert sequence_ids == ([1, 2, 3, 4] if reliable else [None] * 4)

    await client.send_event("myEvent", "evt", WebPubSubDataType.TEXT)
    assert await seen.next_data("server") == "myEvent:text/plain"
    await client.send_event("myEvent", {"k": 1}, WebPubSubDataType.JSON)
    assert await seen.next_data("server") == "myEvent:application/json"
    await client.send_event("myEvent", memoryview(b"\x02"), WebPubSubDataType.BINARY)
    assert await seen.next_data("server") == "myEvent:application/octet-stream"
    bodies = [(r.ce_type, r.body) for r in posts(handler_app, "myEvent")]
    assert bodies == [
        ("azure.webpubsub.user.myEvent", b"evt"),
        ("azure.webpubsub.user.myEvent", b'{"k":1}'),
        ("azure.webpubsub.user.myEvent", b"\x02"),
    ]

    async with sdk(runner) as service:
        await service.send_to_all("to all", content_type="text/plain")
        await service.send_to_user("alice", {"to": "alice"})
        await service.send_to_group("g1", "to g1", content_type="text/plain")
        assert await seen.next_data("server") == "to all"
        assert await seen.next_data("server") == {"to": "alice"}
        assert await seen.next_data("group") == "to g1"
        await client.leave_group("g1")
        await service.send_to_group("g1", "after leave", content_type="text/plain")
        await service.send_to_all("marker", content_type="text/plain")
        assert await seen.next_data("server") == "marker"

    await client.close()
    await asyncio.wait_for(seen.stopped.wait(), WAIT)
    event = await handler_app.next_event("sys.disconnected")
    assert event.headers["ce-connectionId"] == connected.connection_id


async def test_failure_acks_reach_the_aio_client_as_errors(
    handler_app: EventHandlerApp, start_service: StartService, observed: Observed
) -> None:
    handler_app.responder = replying
    runner = await start_service(chat_hub(handler_app.url, system=ALL_SYSTEM_EVENTS))
    roles = ["webpubsub.joinLeaveGroup.g1", "webpubsub.sendToGroup.g1"]
    credential = WebPubSubClientCredential(url_provider(runner, roles=roles))
    client, seen = await observed(credential, message_retry_total=0)

    with pytest.raises(SendMessageError) as forbidden:
        await client.join_group("g2")
    assert forbidden.value.error_detail is not None
    assert forbidden.value.error_detail.name == "Forbidden"
    assert "g2" in forbidden.value.error_detail.message
    with pytest.raises(SendMessageError) as upstream:
        await client.send_event("fail", "x", WebPubSubDataType.TEXT)
    assert upstream.value.error_detail is not None
    assert upstream.value.error_detail.name == "InternalServerError"

    # Duplicate counts as success for the client, and the request is not run again.
    await client.join_group("g1", ack_id=100)
    await client.send_to_group("g1", "dropped", WebPubSubDataType.TEXT, ack_id=100)
    await client.send_to_group("g1", "sent", WebPubSubDataType.TEXT, ack_id=101)
    assert await seen.next_data("group") == "sent"


async def test_a_rest_close_reaches_the_aio_client_which_then_reconnects(
    handler_app: EventHandlerApp, start_service: StartService, observed: Observed
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=ALL_SYSTEM_EVENTS))
    credential = WebPubSubClientCredential(url_provider(runner, user_id="bob", roles=ROLES))
    client, seen = await observed(credential)
    first = await asyncio.wait_for(seen.connected.get(), WAIT)
    await client.join_group("g1")
    async with sdk(runner) as service:
        await service.close_connection(first.connection_id, reason="Kicked by the moderator.")
        disconnected = await asyncio.wait_for(seen.disconnected.get(), WAIT)
        assert disconnected.connection_id == first.connection_id
        assert disconnected.message == "Kicked by the moderator."
        # recovery of a closed connection is refused with 1008: the client starts afresh
        second = await asyncio.wait_for(seen.connected.get(), WAIT)
        assert second.connection_id != first.connection_id
        assert await service.connection_exists(second.connection_id)
        assert len(posts(handler_app, "connect")) == 2
        # ... and rejoins its groups (the rejoin request precedes ours on the socket)
        await client.send_to_group("g1", "rejoined?", WebPubSubDataType.TEXT)
        assert await seen.next_data("group") == "rejoined?"


# -- recovery through a failing network ---------------------------------------------

TOTAL = 600
CUTS = (150, 300, 450)


async def test_the_aio_client_recovers_every_cut_and_misses_nothing(
    handler_app: EventHandlerApp, start_service: StartService, observed: Observed
) -> None:
    runner = await start_service(chat_hub(handler_app.url, system=ALL_SYSTEM_EVENTS))
    received: list[tuple[str, int | None]] = []
    arrived = asyncio.Condition()

    async def on_group(args: OnGroupDataMessageArgs) -> None:
        async with arrived:
            received.append((args.data, args.sequence_id))
            arrived.notify_all()

    async def wait_received(count: int) -> None:
        async with asyncio.timeout(20), arrived:
            await arrived.wait_for(lambda: len(received) >= count)

    async with TcpProxy(runner.port) as proxy, sdk(runner) as service:
        provider = url_provider(runner, proxy.port, user_id="receiver", roles=ROLES)
        client, seen = await observed(WebPubSubClientCredential(provider))
        await client.subscribe(CallbackType.GROUP_MESSAGE, on_group)
        connected = await asyncio.wait_for(seen.connected.get(), WAIT)
        await client.join_group("numbers")
        previous_cut = 0
        for n in range(TOTAL):
            if n in CUTS:
                # cut while messages flow over the current (recovered) connection
                await wait_received(previous_cut + 1)
                assert await proxy.cut() == 1
                previous_cut = n
            await service.send_to_group("numbers", str(n), content_type="text/plain")
        await wait_received(TOTAL)

        assert [int(data) for data, _ in received] == list(range(TOTAL))  # once each, in order
        assert [seq for _, seq in received] == list(range(1, TOTAL + 1))
        assert proxy.accepted == 1 + len(CUTS)  # every cut was recovered: no new connection
        assert seen.connected.empty() and seen.disconnected.empty()
        assert await service.connection_exists(connected.connection_id)
        assert len(posts(handler_app, "connect")) == 1
        assert not posts(handler_app, "disconnected")
        await client.send_to_group("numbers", "after", WebPubSubDataType.TEXT)
        await wait_received(TOTAL + 1)
        assert received[-1] == ("after", TOTAL + 1)


async def test_the_aio_client_recovers_10_mib_sent_while_it_was_away(
    start_service: StartService, observed: Observed
) -> None:
    """More than twice the outbox bound, unacknowledged: the replay brings all of it."""
    runner = await start_service(chat_hub())
    inbox = GroupInbox()
    bodies = [f"{n:050000d}" for n in range(200)]
    async with TcpProxy(runner.port) as proxy, sdk(runner) as service:
        provider = url_provider(runner, proxy.port, user_id="receiver", roles=ROLES)
        client, seen = await observed(WebPubSubClientCredential(provider))
        await client.subscribe(CallbackType.GROUP_MESSAGE, inbox.on_group)
        connected = await asyncio.wait_for(seen.connected.get(), WAIT)
        await client.join_group("big")

        async def send_all() -> None:
            for body in bodies:
                await service.send_to_group("big", body, content_type="text/plain")

        await proxy.cut_and_hold(send_all, then=runner.port)
        await inbox.wait_for(len(bodies))
        assert inbox.received == [(body, n) for n, body in enumerate(bodies, start=1)]
        assert proxy.accepted == 2  # recovered, not a new connection
        assert seen.connected.empty()
        assert await service.connection_exists(connected.connection_id)


# -- the blocking client -------------------------------------------------------------


async def test_the_sync_client_recovers_and_talks_to_the_service(
    handler_app: EventHandlerApp, start_service: StartService
) -> None:
    handler_app.responder = replying
    runner = await start_service(chat_hub(handler_app.url, system=ALL_SYSTEM_EVENTS))
    async with TcpProxy(runner.port) as proxy, sdk(runner) as service:
        url = await url_provider(runner, proxy.port, user_id="carol", roles=ROLES)()
        # The blocking client signals "opened" and "acked" on condition variables it
        # only waits on after sending, so a fast answer is missed and waited out (then
        # counted): keep those waits short.
        client = SyncWebPubSubClient(url, message_retry_total=0, start_timeout=1.0, ack_timeout=1.0)
        inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        client.subscribe(CallbackType.CONNECTED, lambda a: inbox.put(("connected", a)))
        client.subscribe(CallbackType.GROUP_MESSAGE, lambda a: inbox.put(("group", a.data)))
        client.subscribe(CallbackType.SERVER_MESSAGE, lambda a: inbox.put(("server", a.data)))

        async def next_item() -> tuple[str, Any]:
            return await asyncio.to_thread(inbox.get, timeout=WAIT)

        await asyncio.to_thread(client.open)
        try:
            kind, connected = await next_item()
            assert (kind, connected.user_id) == ("connected", "carol")
            await asyncio.to_thread(client.join_group, "g1")
            await asyncio.to_thread(client.send_to_group, "g1", "sync", WebPubSubDataType.TEXT)
            assert await next_item() == ("group", "sync")
            await asyncio.to_thread(client.send_event, "ping", "p", WebPubSubDataType.TEXT)
            assert await next_item() == ("server", "ping:text/plain")

            await proxy.cut()
            await service.send_to_group("g1", "while away", content_type="text/plain")
            assert await next_item() == ("group", "while away")  # replayed after recovery
            assert proxy.accepted == 2
            assert await service.connection_exists(connected.connection_id)
            await asyncio.to_thread(client.send_to_group, "g1", "back", WebPubSubDataType.TEXT)
            assert await next_item() == ("group", "back")
        finally:
            await asyncio.to_thread(client.close)
        event = await handler_app.next_event("sys.disconnected")
        assert event.headers["ce-connectionId"] == connected.connection_id
