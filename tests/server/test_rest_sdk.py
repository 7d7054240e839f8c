"""The REST API driven by the official Python service SDK against the real service.

Every call is checked by what real WebSocket clients observe: a frame arrives, a
close frame arrives, or (for "must not arrive") a later marker arrives first.
Each test runs once with the blocking client (in a thread) and once with the aio
client.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import ResourceNotFoundError

from tests.conftest import ACCESS_KEY, SECOND_KEY, StartService
from tests.support.cluster import TOPOLOGIES, on_node, presence_written, start_nodes
from tests.support.service import Sdk
from webpubsub.node.operations import DEFAULT_CLOSE_REASON
from webpubsub.protocol.connection_string import format_connection_string
from webpubsub.server.app import ServiceRunner

WEIRD_USER = "user@example.com/x y"
WEIRD_GROUP = "my group/ä?#"


MakeSdk = Callable[..., Sdk]


@pytest.fixture(params=["sync", "aio"])
async def make_sdk(request: pytest.FixtureRequest) -> AsyncIterator[MakeSdk]:
    """``make_sdk(runner_or_connection_string, hub="chat", **client_kwargs)``."""
    made: list[Sdk] = []

    def make(target: ServiceRunner | str, hub: str = "chat", **kwargs: Any) -> Sdk:
        cs = target.connection_string if isinstance(target, ServiceRunner) else target
        sdk = Sdk(request.param, cs, hub, **kwargs)
        made.append(sdk)
        return sdk

    yield make
    for sdk in made:
        await sdk.aclose()


@pytest.fixture(params=TOPOLOGIES)
async def nodes(request: pytest.FixtureRequest, start_service: StartService) -> list[ServiceRunner]:
    """One node, or three over Redis: REST goes to the first, clients to the others."""
    return await start_nodes(request, start_service, keys=(ACCESS_KEY, SECOND_KEY))


@pytest.fixture
async def runner(nodes: list[ServiceRunner]) -> ServiceRunner:
    return nodes[0]


@pytest.fixture
async def http(runner: ServiceRunner) -> AsyncIterator[aiohttp.ClientSession]:
    """Closed (with its WebSockets) before the service stops."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def sdk(runner: ServiceRunner, make_sdk: MakeSdk) -> Sdk:
    return make_sdk(runner)


class Clients:
    """Connects raw WebSocket clients and learns their connection ids."""

    def __init__(
        self,
        runner: ServiceRunner,
        http: aiohttp.ClientSession,
        sdk: Sdk,
        nodes: Sequence[ServiceRunner] = (),
    ) -> None:
        self.runner, self.http, self.sdk = runner, http, sdk
        self._client_nodes = itertools.cycle(list(nodes[1:]) or [runner])

    async def connect(
        self, user: str, groups: Sequence[str] = (), *, sdk: Sdk | None = None
    ) -> tuple[aiohttp.ClientWebSocketResponse, str]:
        issuer = sdk or self.sdk
        node = next(self._client_nodes)
        before = self._ids(node, user)
        token = await issuer.get_client_access_token(user_id=user, groups=list(groups))
        ws = await self.http.ws_connect(on_node(token["url"], self.runner, node))
        (new_id,) = self._ids(node, user) - before
        await presence_written(node)  # another node's query sees the new client
        return ws, new_id

    @staticmethod
    def _ids(node: ServiceRunner, user: str) -> set[str]:
        assert node.node is not None
        hub = node.node.hub("chat")
        return {c.connection_id for c in hub.user_connections(user)} if hub else set()


@pytest.fixture
def clients(
    runner: ServiceRunner, http: aiohttp.ClientSession, sdk: Sdk, nodes: list[ServiceRunner]
) -> Clients:
    return Clients(runner, http, sdk, nodes)


async def received(ws: aiohttp.ClientWebSocketResponse, data: str | bytes) -> None:
    msg = await ws.receive(timeout=5)
    if isinstance(data, bytes):
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, data)
    else:
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, data)


async def got_marker(sdk: Sdk, ws: aiohttp.ClientWebSocketResponse, conn_id: str) -> None:
    """The next frame of ``ws`` is a fresh marker: nothing else was queued before it."""
    await sdk.send_to_connection(conn_id, f"marker {conn_id}", content_type="text/plain")
    await received(ws, f"marker {conn_id}")


async def closed(ws: aiohttp.ClientWebSocketResponse, reason: str) -> None:
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1000, reason)


# -- sends --------------------------------------------------------------------------


async def test_send_to_all_text_json_binary_and_excluded(sdk: Sdk, clients: Clients) -> None:
    alice, _ = await clients.connect("alice")
    bob, bob_id = await clients.connect("bob")

    await sdk.send_to_all("plain text", content_type="text/plain")
    await sdk.send_to_all({"kind": "json", "n": 1})
    await sdk.send_to_all("a json string")  # a str without content_type goes as JSON
    await sdk.send_to_all(b"\x00\x01\xff", content_type="application/octet-stream")
    for ws in (alice, bob):
        await received(ws, "plain text")
        assert json.loads((await ws.receive(timeout=5)).data) == {"kind": "json", "n": 1}
        await received(ws, '"a json string"')
        await received(ws, b"\x00\x01\xff")

    await sdk.send_to_all("not to bob", content_type="text/plain", excluded=[bob_id])
    await received(alice, "not to bob")
    await got_marker(sdk, bob, bob_id)


async def test_send_to_user_group_and_connection(sdk: Sdk, clients: Clients) -> None:
    alice1, alice1_id = await clients.connect("alice", ["room"])
    alice2, alice2_id = await clients.connect("alice")
    bob, bob_id = await clients.connect("bob", ["room"])

    await sdk.send_to_user("alice", "to alice", content_type="text/plain")
    await received(alice1, "to alice")
    await received(alice2, "to alice")
    await got_marker(sdk, bob, bob_id)

    await sdk.send_to_group("room", {"to": "room"})
    assert json.loads((await alice1.receive(timeout=5)).data) == {"to": "room"}
    assert json.loads((await bob.receive(timeout=5)).data) == {"to": "room"}
    await got_marker(sdk, alice2, alice2_id)

    binary = "application/octet-stream"
    await sdk.send_to_group("room", b"\x02", content_type=binary, excluded=[alice1_id])
    await received(bob, b"\x02")
    await got_marker(sdk, alice1, alice1_id)

    await sdk.send_to_connection(alice2_id, "only you", content_type="text/plain")
    await sdk.send_to_connection(alice2_id, {"n": 2})
    await received(alice2, "only you")
    await received(alice2, '{"n": 2}')
    await got_marker(sdk, alice1, alice1_id)
    await got_marker(sdk, bob, bob_id)

    # Sends to nobody are accepted (202) all the same.
    await sdk.send_to_user("ghost", "x", content_type="text/plain")
    await sdk.send_to_group("empty", "x", content_type="text/plain")
    await sdk.send_to_connection("no-such-connection", "x", content_type="text/plain")


# -- groups -------------------------------------------------------------------------


async def test_connection_group_membership(sdk: Sdk, clients: Clients) -> None:
    ws, conn_id = await clients.connect("alice")
    assert not await sdk.group_exists("g1")

    await sdk.add_connection_to_group("g1", conn_id)
    await sdk.add_connection_to_group("g1", conn_id)  # idempotent
    await sdk.add_connection_to_group("g2", conn_id)
    assert await sdk.group_exists("g1") and await sdk.group_exists("g2")
    await sdk.send_to_group("g1", "in g1", content_type="text/plain")
    await received(ws, "in g1")

    await sdk.remove_connection_from_group("g1", conn_id)
    assert not await sdk.group_exists("g1")
    assert await sdk.group_exists("g2")
    await sdk.send_to_group("g1", "left g1", content_type="text/plain")
    await got_marker(sdk, ws, conn_id)

    await sdk.remove_connection_from_all_groups(conn_id)
    assert not await sdk.group_exists("g2")
    await sdk.send_to_group("g2", "left g2", content_type="text/plain")
    await got_marker(sdk, ws, conn_id)

    with pytest.raises(ResourceNotFoundError):
        await sdk.add_connection_to_group("g1", "no-such-connection")
    assert not await sdk.group_exists("g1")
    # Removing what is not there is fine.
    await sdk.remove_connection_from_group("g1", "no-such-connection")
    await sdk.remove_connection_from_all_groups("no-such-connection")


async def test_user_group_membership(sdk: Sdk, clients: Clients) -> None:
    a1, a1_id = await clients.connect("alice")
    a2, a2_id = await clients.connect("alice")
    bob, bob_id = await clients.connect("bob")

    await sdk.add_user_to_group("g1", "alice")
    await sdk.add_user_to_group("g2", "alice")
    await sdk.send_to_group("g1", "to g1", content_type="text/plain")
    await received(a1, "to g1")
    await received(a2, "to g1")
    await got_marker(sdk, bob, bob_id)

    await sdk.remove_user_from_group("g1", "alice")
    assert not await sdk.group_exists("g1")
    assert await sdk.group_exists("g2")
    await sdk.send_to_group("g1", "left g1", content_type="text/plain")
    await got_marker(sdk, a1, a1_id)

    await sdk.remove_user_from_all_groups("alice")
    assert not await sdk.group_exists("g2")
    await sdk.send_to_group("g2", "left g2", content_type="text/plain")
    await got_marker(sdk, a2, a2_id)

    await sdk.remove_user_from_group("g1", "ghost")
    await sdk.remove_user_from_all_groups("ghost")


# -- existence and closing ----------------------------------------------------------


async def test_exists_checks(sdk: Sdk, clients: Clients) -> None:
    ws, conn_id = await clients.connect("alice", ["room"])
    assert await sdk.connection_exists(conn_id)
    assert await sdk.user_exists("alice")
    assert await sdk.group_exists("room")
    assert not await sdk.connection_exists("no-such-connection")
    assert not await sdk.user_exists("bob")
    assert not await sdk.group_exists("other")

    await sdk.close_connection(conn_id)
    await closed(ws, DEFAULT_CLOSE_REASON)
    assert not await sdk.connection_exists(conn_id)
    assert not await sdk.user_exists("alice")
    assert not await sdk.group_exists("room")


async def test_close_connection_with_reason(sdk: Sdk, clients: Clients) -> None:
    ws, conn_id = await clients.connect("alice")
    other, other_id = await clients.connect("alice")
    await sdk.close_connection(conn_id, reason="bye now")
    await closed(ws, "bye now")
    await got_marker(sdk, other, other_id)
    await sdk.close_connection("no-such-connection", reason="x")  # 204 all the same


async def test_close_user_group_and_all_with_excluded(sdk: Sdk, clients: Clients) -> None:
    a1, a1_id = await clients.connect("alice", ["room"])
    a2, _ = await clients.connect("alice")
    b1, b1_id = await clients.connect("bob", ["room"])
    b2, _ = await clients.connect("bob", ["room"])
    c1, c1_id = await clients.connect("carol", ["room"])
    c2, c2_id = await clients.connect("carol")

    await sdk.close_user_connections("alice", excluded=[a1_id], reason="user closed")
    await closed(a2, "user closed")
    await got_marker(sdk, a1, a1_id)

    await sdk.close_group_connections("room", excluded=[a1_id, b1_id, c1_id])
    await closed(b2, DEFAULT_CLOSE_REASON)
    for ws, conn_id in ((a1, a1_id), (b1, b1_id), (c1, c1_id), (c2, c2_id)):
        await got_marker(sdk, ws, conn_id)

    await sdk.close_all_connections(excluded=[c2_id], reason="all closed")
    for ws in (a1, b1, c1):
        await closed(ws, "all closed")
    await got_marker(sdk, c2, c2_id)

    await sdk.close_all_connections()
    await closed(c2, DEFAULT_CLOSE_REASON)
    await sdk.close_user_connections("ghost")
    await sdk.close_group_connections("empty")


# -- names, keys, endpoints ---------------------------------------------------------


async def test_ids_needing_percent_encoding(sdk: Sdk, clients: Clients) -> None:
    ws, conn_id = await clients.connect(WEIRD_USER)
    bob, bob_id = await clients.connect("bob")
    assert await sdk.user_exists(WEIRD_USER)
    assert not await sdk.user_exists("user@example.com")

    await sdk.send_to_user(WEIRD_USER, "to weird user", content_type="text/plain")
    await received(ws, "to weird user")

    await sdk.add_user_to_group(WEIRD_GROUP, WEIRD_USER)
    assert await sdk.group_exists(WEIRD_GROUP)
    assert not await sdk.group_exists("my group")
    await sdk.add_connection_to_group(WEIRD_GROUP, bob_id)
    await sdk.send_to_group(
        WEIRD_GROUP, "to weird group", content_type="text/plain", excluded=[bob_id]
    )
    await received(ws, "to weird group")
    await got_marker(sdk, bob, bob_id)

    await sdk.remove_connection_from_group(WEIRD_GROUP, bob_id)
    await sdk.remove_user_from_group(WEIRD_GROUP, WEIRD_USER)
    assert not await sdk.group_exists(WEIRD_GROUP)

    await sdk.close_user_connections(WEIRD_USER, reason="weird")
    await closed(ws, "weird")
    assert not await sdk.user_exists(WEIRD_USER)
    assert not await sdk.connection_exists(conn_id)


async def test_hub_names_are_case_insensitive(
    runner: ServiceRunner, make_sdk: MakeSdk, clients: Clients
) -> None:
    upper = make_sdk(runner, hub="Chat")
    lower = make_sdk(runner, hub="chat")
    ws, conn_id = await clients.connect("alice", ["room"], sdk=upper)  # on hub "Chat"

    assert await lower.connection_exists(conn_id)
    assert await make_sdk(runner, hub="CHAT").user_exists("alice")
    await lower.send_to_all("from chat", content_type="text/plain")
    await upper.send_to_group("room", "from Chat", content_type="text/plain")
    await received(ws, "from chat")
    await received(ws, "from Chat")
    other = make_sdk(runner, hub="chat2")
    assert not await other.user_exists("alice")
    await other.send_to_all("to a hub nobody joined", content_type="text/plain")
    await got_marker(lower, ws, conn_id)


async def test_second_key_host_case_and_any_api_version(
    runner: ServiceRunner, make_sdk: MakeSdk, clients: Clients, sdk: Sdk
) -> None:
    ws, conn_id = await clients.connect("alice")

    second = make_sdk(format_connection_string(runner.endpoint, SECOND_KEY))
    await second.send_to_connection(conn_id, "second key", content_type="text/plain")
    await received(ws, "second key")

    # The Python SDK keeps the Endpoint's host case in ``aud``.
    shouting = make_sdk(runner.connection_string.replace("127.0.0.1", "LOCALHOST"))
    await shouting.send_to_connection(conn_id, "LOCALHOST", content_type="text/plain")
    await received(ws, "LOCALHOST")
    assert await shouting.user_exists("alice")

    for version in ("2021-10-01", "1999-01-01-preview", "anything"):
        old = make_sdk(runner, api_version=version)
        await old.send_to_connection(conn_id, version, content_type="text/plain")
        await received(ws, version)
        assert await old.connection_exists(conn_id)
