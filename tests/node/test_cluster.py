"""Two nodes joined by the in-memory backplane act as one service.

Operations made over REST on node 1 must reach a client attached to node 2
(docs/architecture.md: nodes share work through the backplane interface).
"""

from __future__ import annotations

import aiohttp
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import StartService
from webpubsub.backplane.memory import MemoryBackplane, MemoryBus


async def test_rest_on_node1_reaches_client_on_node2(start_service: StartService) -> None:
    bus = MemoryBus()
    node1 = await start_service(backplane=MemoryBackplane(bus))
    node2 = await start_service(backplane=MemoryBackplane(bus))
    assert node1.port != node2.port

    on_node2 = WebPubSubServiceClient.from_connection_string(node2.connection_string, hub="hub")
    on_node1 = WebPubSubServiceClient.from_connection_string(node1.connection_string, hub="hub")
    token = await on_node2.get_client_access_token(user_id="bob")
    async with aiohttp.ClientSession() as http, on_node1, on_node2:
        ws = await http.ws_connect(token["url"])  # attached to node 2
        assert node2.node is not None and node2.node.connection_count() == 1
        assert node1.node is not None and node1.node.connection_count() == 0

        await on_node1.send_to_all("to all", content_type="text/plain")
        assert (await ws.receive(timeout=5)).data == "to all"

        assert await on_node1.user_exists("bob")
        conn_id = next(iter(node2.node.hub("hub").connections())).connection_id  # type: ignore[union-attr]
        assert await on_node1.connection_exists(conn_id)
        assert not await on_node1.connection_exists("nobody")

        await on_node1.add_connection_to_group("room", conn_id)
        assert await on_node1.group_exists("room")
        await on_node1.send_to_group("room", "to group", content_type="text/plain")
        assert (await ws.receive(timeout=5)).data == "to group"

        await on_node1.close_connection(conn_id, reason="moved")
        closed = await ws.receive(timeout=5)
        assert closed.type is aiohttp.WSMsgType.CLOSE and closed.extra == "moved"
