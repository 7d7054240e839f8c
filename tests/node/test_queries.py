"""The node's answers to queries: a connection the service is closing is gone already.

Azure answers 404 for a connection, its user and its groups right after a REST close,
while the client may still be finishing its close handshake; the node's answers must
not wait for that handshake either.
"""

from __future__ import annotations

import aiohttp
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import StartService
from webpubsub.protocol.backplane import Exists, GroupMember, HasPermission, ListGroup, Target


async def test_a_closing_connection_no_longer_exists(start_service: StartService) -> None:
    runner = await start_service()
    assert runner.node is not None
    async with (
        aiohttp.ClientSession() as http,
        WebPubSubServiceClient.from_connection_string(runner.connection_string, hub="h") as sdk,
    ):
        token = await sdk.get_client_access_token(
            user_id="u", groups=["g"], roles=["webpubsub.sendToGroup"]
        )
        ws = await http.ws_connect(token["url"])
        hub = runner.node.hub("h")
        assert hub is not None
        [conn] = hub.connections()
        queries = [
            Exists("h", Target.connection(conn.connection_id)),
            Exists("h", Target.user("u")),
            Exists("h", Target.group("g")),
        ]
        permission = HasPermission("h", conn.connection_id, "sendToGroup", "g")
        listed = ListGroup("h", "g")
        assert [runner.node.answer(q) for q in queries] == [True, True, True]
        assert runner.node.answer(permission) is True
        assert runner.node.answer(listed) == (GroupMember(conn.connection_id, "u"),)

        conn.close(1000, "closed by the test")  # no await: the client has not left yet
        assert hub.get(conn.connection_id) is conn
        assert [runner.node.answer(q) for q in queries] == [False, False, False]
        assert runner.node.answer(permission) is None
        assert runner.node.answer(listed) == ()
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
