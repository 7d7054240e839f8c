"""Nodes joined through a real Redis act as one service: any node serves any client and
any REST call (the Redis backplane, docs/how-to/scale-out.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from tests.conftest import StartService
from tests.support.redis_server import RedisServer
from tests.support.service import json_client, next_data, sdk
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.server.app import ServiceRunner

WAIT = 5.0
JSON = "json.webpubsub.azure.v1"


@pytest.fixture
async def cluster(
    start_service: StartService, redis_server: RedisServer, redis_prefix: str
) -> list[ServiceRunner]:
    """Three nodes over the test's Redis."""
    return [
        await start_service(
            backplane=RedisBackplane(redis_server.url, node_id=f"n{i}", prefix=redis_prefix)
        )
        for i in range(3)
    ]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def connect(
    http: aiohttp.ClientSession, runner: ServiceRunner, **claims: object
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """A JSON-subprotocol client on ``runner``; its connection id."""
    async with sdk(runner) as service:
        url = (await service.get_client_access_token(**claims))["url"]
    return await json_client(http, url, WAIT)


async def test_rest_on_any_node_reaches_and_sees_clients_on_the_others(
    cluster: list[ServiceRunner], http: aiohttp.ClientSession
) -> None:
    a, b, c = cluster
    alice, alice_id = await connect(http, b, user_id="alice")
    bob, bob_id = await connect(http, c, user_id="bob", groups=["room"])
    async with sdk(a) as rest:
        # Presence: one Redis read, whichever node answers.
        assert await rest.connection_exists(alice_id) and await rest.user_exists("bob")
        assert await rest.group_exists("room") and not await rest.group_exists("nobody")
        await rest.send_to_all("to all", content_type="text/plain")
        assert await next_data(alice) == "to all" and await next_data(bob) == "to all"

        # Membership changes made through one node are seen at once through another.
        await rest.add_connection_to_group("room", alice_id)
        async with sdk(c) as other:
            listed = [m.connection_id async for m in other.list_connections(group="room")]
            assert sorted(listed) == sorted([alice_id, bob_id])
        await rest.send_to_group("room", "to room", content_type="text/plain", excluded=[bob_id])
        await rest.send_to_user("bob", "to bob", content_type="text/plain")
        assert await next_data(alice) == "to room"
        assert await next_data(bob) == "to bob"

        # Permissions: granted through one node, checked through another, used on a third.
        with pytest.raises(ResourceNotFoundError):
            await rest.grant_permission("sendToGroup", "nobody", target_name="room")
        await rest.grant_permission("sendToGroup", alice_id, target_name="room")
        async with sdk(b) as other:
            assert await other.has_permission("sendToGroup", alice_id, target_name="room")
            assert not await other.has_permission("sendToGroup", alice_id, target_name="x")
        await alice.send_str(
            json.dumps(
                {
                    "type": "sendToGroup",
                    "group": "room",
                    "dataType": "text",
                    "data": "from alice",
                    "ackId": 1,
                    "noEcho": True,
                }
            )
        )
        ack = json.loads((await alice.receive(timeout=WAIT)).data)
        assert ack == {"type": "ack", "ackId": 1, "success": True}
        assert await next_data(bob) == "from alice"
        await rest.revoke_permission("sendToGroup", alice_id, target_name="room")
        assert not await rest.has_permission("sendToGroup", alice_id, target_name="room")

        # A close through one node: gone everywhere at once.
        await rest.close_connection(bob_id, reason="bye")
        assert not await rest.connection_exists(bob_id)
        assert not await rest.user_exists("bob")
        await rest.remove_user_from_all_groups("alice")
        assert not await rest.group_exists("room")
        with pytest.raises(HttpResponseError) as raised:
            await rest.add_user_to_group("room", "bob")
        assert raised.value.status_code == 404
    await alice.close()
    await bob.close()


async def test_a_client_joining_on_one_node_is_seen_by_the_others(
    cluster: list[ServiceRunner], http: aiohttp.ClientSession
) -> None:
    a, b, _ = cluster
    carol, carol_id = await connect(http, a, user_id="carol", roles=["webpubsub.joinLeaveGroup"])
    await carol.send_str(json.dumps({"type": "joinGroup", "group": "g", "ackId": 1}))
    assert json.loads((await carol.receive(timeout=WAIT)).data)["success"] is True
    plane = a.backplane
    assert isinstance(plane, RedisBackplane)
    async with sdk(b) as rest, asyncio.timeout(WAIT):
        # The joining node writes presence right after its ack: wait for that write.
        await plane.flushed()
        assert await rest.group_exists("g")
        await carol.close()
        await a.node.wait_idle()  # type: ignore[union-attr]
        await plane.flushed()
        assert not await rest.connection_exists(carol_id)
        assert not await rest.group_exists("g")
    health = await (await http.get(f"{b.endpoint}/api/health")).json()
    assert health.pop("events")["queued"] == 0  # the queue of connected/disconnected events
    assert health == {"status": "ok", "nodeId": "n1", "backplane": "redis", "redis": "connected"}


async def test_one_senders_messages_arrive_in_order_on_every_node(
    cluster: list[ServiceRunner], http: aiohttp.ClientSession
) -> None:
    a, b, _ = cluster
    receivers = [
        await connect(http, node, user_id=f"r{i}", groups=["room"])
        for i, node in enumerate(cluster)
    ]
    publisher, _ = await connect(http, b, user_id="pub", roles=["webpubsub.sendToGroup"])
    for node in cluster:
        assert isinstance(node.backplane, RedisBackplane)
        await node.backplane.flushed()
    count = 100
    async with sdk(a) as rest:
        for i in range(count):  # one REST client, sequential sends through node a
            await rest.send_to_group("room", f"rest {i}", content_type="text/plain")
    for i in range(count):  # one connection publishing through node b, acks not awaited
        await publisher.send_str(
            json.dumps(
                {"type": "sendToGroup", "group": "room", "dataType": "text", "data": f"ws {i}"}
            )
        )
    for ws, _ in receivers:
        got = [await next_data(ws) for _ in range(2 * count)]
        assert got == [f"rest {i}" for i in range(count)] + [f"ws {i}" for i in range(count)]
    await publisher.close()
    for ws, _ in receivers:
        await ws.close()


async def test_filtered_and_hub_wide_operations_are_seen_at_once_through_another_node(
    cluster: list[ServiceRunner], http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The publishing node resolves filtered and hub-wide targets itself: a query right
    after sees the change even while the owning node's own presence writes lag (here:
    never come, a fault injected into the owner's writer)."""
    import time

    from tests.conftest import ACCESS_KEY
    from webpubsub.protocol.tokens import issue_rest_token

    a, b, c = cluster
    alice, alice_id = await connect(http, b, user_id="alice")
    bob, bob_id = await connect(http, c, user_id="bob", groups=["room"])
    for node in cluster:
        assert isinstance(node.backplane, RedisBackplane)
        await node.backplane.flushed()

    async def rest(target: str, body: bytes | None = None) -> int:
        url = f"{a.endpoint}/api/hubs/chat/{target}"
        token = issue_rest_token(ACCESS_KEY, audience=url, now=time.time())
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with http.post(url, headers=headers, data=body) as resp:
            return resp.status

    assert isinstance(c.backplane, RedisBackplane)
    monkeypatch.setattr(c.backplane, "_queue", lambda *args: None)  # bob's node writes nothing
    async with sdk(c) as other:
        body = b'{"groups": ["vip", "gold"], "filter": "userId eq \'bob\' and \'room\' in groups"}'
        assert await rest(":addToGroups", body) == 200
        assert await other.group_exists("vip")  # no wait: resolved by the publishing node
        assert [m.connection_id async for m in other.list_connections(group="gold")] == [bob_id]
        assert await rest(":removeFromGroups", b'{"groups": ["gold"], "filter": "true"}') == 200
        assert not await other.group_exists("gold")
        assert await rest(f":closeConnections?excluded={alice_id}") == 204
        assert not await other.connection_exists(bob_id)
        assert not await other.group_exists("vip")
        assert await other.connection_exists(alice_id)
    await alice.close()
    await bob.close()


async def test_nodes_join_over_rediss_with_a_password(
    start_service: StartService,
    secure_redis: RedisServer,
    redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    url = secure_redis.url
    assert url.startswith("rediss://:s3cret%2Fpa%20ss@127.0.0.1:")
    first, second = [
        await start_service(backplane=RedisBackplane(url, node_id=f"s{i}", prefix=redis_prefix))
        for i in range(2)
    ]
    ws, connection_id = await connect(http, second, user_id="ann")
    async with sdk(first) as service:
        assert await service.connection_exists(connection_id)
        await service.send_to_user("ann", "over TLS", content_type="text/plain")
    assert await next_data(ws) == "over TLS"
    await ws.close()


async def records_of(runner: ServiceRunner, kind: str) -> list[dict[str, object]]:
    """The trace records of type ``kind`` on ``runner``, waiting for the first."""
    trace = runner.trace
    assert trace is not None
    async with asyncio.timeout(WAIT):
        while True:
            found = [r for r in trace.after(0, trace.capacity) if r["type"] == kind]
            if found:
                return found
            await trace.wait(trace.last_seq, WAIT)


async def test_a_connection_that_moves_is_traced_and_counted_on_both_nodes(
    cluster: list[ServiceRunner], http: aiohttp.ClientSession
) -> None:
    """A reliable client reconnects through another node: the node it left records
    ``moved`` (no ``disconnected``), the node that took it ``adopted`` from that node
    (no second ``connected``), and their handover counters say so."""
    a, b, _ = cluster
    async with sdk(a) as service:
        url = (await service.get_client_access_token(user_id="mover"))["url"]
    ws = await http.ws_connect(url, protocols=("json.reliable.webpubsub.azure.v1",))
    connected = await ws.receive_json(timeout=WAIT)
    await ws.close(code=4000)  # not 1000: the connection waits for its client
    recover = (
        f"ws://127.0.0.1:{b.port}/client/hubs/chat?awps_connection_id="
        f"{connected['connectionId']}&awps_reconnection_token={connected['reconnectionToken']}"
    )
    again = await http.ws_connect(recover, protocols=("json.reliable.webpubsub.azure.v1",))
    (adopted,) = await records_of(b, "adopted")
    (moved,) = await records_of(a, "moved")
    assert moved["connectionId"] == adopted["connectionId"] == connected["connectionId"]
    assert moved["toNode"] == "n1" and adopted["fromNode"] == "n0"
    assert (await records_of(b, "recovered"))[0]["connectionId"] == connected["connectionId"]
    assert a.trace is not None and b.trace is not None
    assert not [r for r in a.trace.after(0, 1000) if r["type"] == "disconnected"]
    assert not [r for r in b.trace.after(0, 1000) if r["type"] == "connected"]
    assert a.metrics is not None and b.metrics is not None
    assert b'webpubsub_handovers_total{direction="out",hub="chat"} 1.0' in a.metrics.render()
    assert b'webpubsub_handovers_total{direction="in",hub="chat"} 1.0' in b.metrics.render()
    await again.close()
