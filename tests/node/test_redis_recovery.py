"""A reliable client recovers its connection on whichever node its reconnection reaches:
the official Python client SDK, through a proxy that sends every reconnection to the other
node, while messages flow — nothing lost, nothing twice, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from azure.messaging.webpubsubclient.aio import WebPubSubClient, WebPubSubClientCredential
from azure.messaging.webpubsubclient.models import (
    CallbackType,
    OnConnectedArgs,
    OnDisconnectedArgs,
    OnGroupDataMessageArgs,
    WebPubSubDataType,
)
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import StartService
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from tests.support.service import GroupInbox
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.server.app import ServiceRunner

pytestmark = pytest.mark.e2e

HOPS = 50
PER_HOP = 10
WAIT = 20.0


@pytest.fixture
async def two_nodes(
    start_service: StartService, redis_server: RedisServer, redis_prefix: str
) -> list[ServiceRunner]:
    first = await start_service(
        backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="a")
    )
    second = await start_service(
        backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="b"),
        public_endpoint=first.endpoint,
    )
    return [first, second]


@pytest.fixture
async def proxy(two_nodes: list[ServiceRunner]) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(two_nodes[0].port) as started:
        yield started


async def test_recovery_hops_between_nodes_without_loss(
    two_nodes: list[ServiceRunner], proxy: TcpProxy
) -> None:
    a, b = two_nodes
    received: list[tuple[str, int | None]] = []
    connects: list[OnConnectedArgs] = []
    disconnects: list[OnDisconnectedArgs] = []
    arrived = asyncio.Condition()

    async def on_group(args: OnGroupDataMessageArgs) -> None:
        async with arrived:
            received.append((args.data, args.sequence_id))
            arrived.notify_all()

    async def on_connected(args: OnConnectedArgs) -> None:
        connects.append(args)

    async def on_disconnected(args: OnDisconnectedArgs) -> None:
        disconnects.append(args)

    async def wait_received(count: int) -> None:
        async with asyncio.timeout(WAIT), arrived:
            await arrived.wait_for(lambda: len(received) >= count)

    rest = WebPubSubServiceClient.from_connection_string(a.connection_string, hub="chat")

    async def provide() -> str:
        token = await rest.get_client_access_token(
            user_id="hopper", roles=["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]
        )
        url: str = token["url"]
        return url.replace(f"//127.0.0.1:{a.port}/", f"//127.0.0.1:{proxy.port}/")

    client = WebPubSubClient(WebPubSubClientCredential(provide))
    await client.subscribe(CallbackType.GROUP_MESSAGE, on_group)
    await client.subscribe(CallbackType.CONNECTED, on_connected)
    await client.subscribe(CallbackType.DISCONNECTED, on_disconnected)
    async with rest:
        await client.open()
        try:
            await client.join_group("numbers")
            sent = 0
            nodes = [a, b]
            for hop in range(1, HOPS + 1):
                for _ in range(PER_HOP // 2):
                    await rest.send_to_group("numbers", str(sent), content_type="text/plain")
                    sent += 1
                await wait_received(sent - PER_HOP // 2 + 1)  # the current node delivers
                # The next reconnection goes to the other node; cut while messages flow.
                proxy.retarget(nodes[hop % 2].port)
                assert await proxy.cut() == 1
                for _ in range(PER_HOP - PER_HOP // 2):
                    await rest.send_to_group("numbers", str(sent), content_type="text/plain")
                    sent += 1
            await wait_received(sent)

            assert [int(data) for data, _ in received] == list(range(sent))  # once, in order
            assert [seq for _, seq in received] == list(range(1, sent + 1))
            assert proxy.accepted == 1 + HOPS  # every drop recovered: never a new connection
            assert len(connects) == 1 and disconnects == []
            # The connection lives on, on the node the last reconnection reached.
            assert await rest.connection_exists(connects[0].connection_id)
            owner = nodes[HOPS % 2]
            assert owner.node is not None and owner.node.connection_count() == 1
            # The client's own request, acknowledged by the node it now is on.
            await client.send_to_group("numbers", "after", WebPubSubDataType.TEXT)
            await wait_received(sent + 1)
            assert received[-1] == ("after", sent + 1)
        finally:
            await client.close()


async def test_recovery_fails_with_1008_when_the_owner_is_gone(
    start_service: StartService, redis_server: RedisServer, redis_prefix: str
) -> None:
    """The node that held the connection stopped: recovery elsewhere is refused, clearly."""
    import aiohttp

    first = await start_service(
        backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="gone")
    )
    second = await start_service(
        backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="left"),
        public_endpoint=first.endpoint,
    )
    async with (
        aiohttp.ClientSession() as http,
        WebPubSubServiceClient.from_connection_string(first.connection_string, hub="chat") as rest,
    ):
        url = (await rest.get_client_access_token(user_id="u"))["url"]
        ws = await http.ws_connect(url, protocols=("json.reliable.webpubsub.azure.v1",))
        connected = await ws.receive_json(timeout=WAIT)
        await ws.close()
        await first.stop()
        recover = (
            f"ws://127.0.0.1:{second.port}/client/hubs/chat?awps_connection_id="
            f"{connected['connectionId']}&awps_reconnection_token={connected['reconnectionToken']}"
        )
        again = await http.ws_connect(recover, protocols=("json.reliable.webpubsub.azure.v1",))
        closed = await again.receive(timeout=WAIT)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1008)
        assert closed.extra == "The connection does not exist or has ended."


async def test_a_10_mib_buffer_moves_to_the_other_node_and_is_replayed_in_full(
    two_nodes: list[ServiceRunner], proxy: TcpProxy
) -> None:
    """Sent while the client was away, more than twice the outbox bound: handed over
    with the session, then replayed at the client's pace on the node it reached."""
    a, b = two_nodes
    inbox = GroupInbox()
    rest = WebPubSubServiceClient.from_connection_string(a.connection_string, hub="chat")

    async def provide() -> str:
        token = await rest.get_client_access_token(
            user_id="away", roles=["webpubsub.joinLeaveGroup"]
        )
        url: str = token["url"]
        return url.replace(f"//127.0.0.1:{a.port}/", f"//127.0.0.1:{proxy.port}/")

    bodies = [f"{n:050000d}" for n in range(200)]

    async def send_all() -> None:
        for body in bodies:
            await rest.send_to_group("big", body, content_type="text/plain")

    client = WebPubSubClient(WebPubSubClientCredential(provide))
    await client.subscribe(CallbackType.GROUP_MESSAGE, inbox.on_group)
    async with rest:
        await client.open()
        try:
            await client.join_group("big")
            await proxy.cut_and_hold(send_all, then=b.port)
            await inbox.wait_for(len(bodies))
            assert inbox.received == [(body, n) for n, body in enumerate(bodies, start=1)]
            assert proxy.accepted == 2
            assert b.node is not None and b.node.connection_count() == 1
            assert a.node is not None and a.node.connection_count() == 0
        finally:
            await client.close()
