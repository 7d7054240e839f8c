"""Every public method of the Python ``WebPubSubServiceClient`` (sync and aio), proven on
JSON-subprotocol clients (Azure REST API reference, Azure docs: JSON subprotocol).

tests/server/test_rest_sdk.py proves the operations on simple WebSocket clients; this
module adds what only a ``json.webpubsub.azure.v1`` client can show: the message
envelopes per content type, the ``disconnected`` system message before a REST close,
permissions that turn a client's ``joinGroup`` / ``sendToGroup`` ack from Forbidden to
success and back, plus filters passed by the SDK, user-group semantics, paging of
``list_connections`` (following ``nextLink``) and client tokens, from the SDK and from
the ``:generateToken`` operation.

"Must not arrive" is proven by a marker sent afterwards arriving first.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp
import jwt
import orjson
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest

from tests.conftest import ACCESS_KEY, StartService
from tests.support.cluster import TOPOLOGIES, on_node, presence_written, start_nodes
from tests.support.service import Sdk
from webpubsub.node.operations import DEFAULT_CLOSE_REASON
from webpubsub.protocol.tokens import issue_client_token, issue_rest_token
from webpubsub.server.app import ServiceRunner

JSON_PROTOCOL = "json.webpubsub.azure.v1"
WEIRD_GROUP = "page group/ä?#"


class Client:
    """A raw ``json.webpubsub.azure.v1`` WebSocket client."""

    _ack_ids = itertools.count(1)

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, connected: dict[str, Any]) -> None:
        self.ws = ws
        self.id: str = connected["connectionId"]
        self.user: str | None = connected.get("userId")
        self.early: list[dict[str, Any]] = []

    async def recv(self) -> dict[str, Any]:
        """The next frame (frames that arrived while waiting for an ack come first)."""
        if self.early:
            return self.early.pop(0)
        return await self._receive()

    async def _receive(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send ``frame`` with a new ackId; its ack.

        A group message the request caused may come before or after the ack: frames
        arriving first are kept for :meth:`recv`.
        """
        ack_id = next(self._ack_ids)
        await self.ws.send_str(json.dumps({**frame, "ackId": ack_id}))
        while (ack := await self._receive())["type"] != "ack":
            self.early.append(ack)
        assert ack["ackId"] == ack_id, ack
        return ack

    async def allowed(self, frame: dict[str, Any]) -> bool:
        """Whether the request succeeded (True) or was Forbidden (False)."""
        ack = await self.request(frame)
        if ack["success"]:
            assert "error" not in ack
            return True
        assert ack["error"]["name"] == "Forbidden", ack
        assert isinstance(ack["error"]["message"], str)
        return False

    async def closed_by_service(self, reason: str) -> None:
        """The ``disconnected`` system message, then close 1000 with the same reason."""
        assert await self.recv() == {"type": "system", "event": "disconnected", "message": reason}
        msg = await self.ws.receive(timeout=5)
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1000, reason)


def server_message(data_type: str, data: Any) -> dict[str, Any]:
    return {"type": "message", "from": "server", "dataType": data_type, "data": data}


def group_message(group: str, data_type: str, data: Any) -> dict[str, Any]:
    return {"type": "message", "from": "group", "group": group, "dataType": data_type, "data": data}


async def got(client: Client, expected: dict[str, Any]) -> None:
    """The next frame is ``expected`` (a REST message: ``fromUserId`` absent or null)."""
    frame = await client.recv()
    assert frame.pop("fromUserId", None) is None, frame
    assert frame == expected


class Clients:
    """Connects JSON clients with tokens from the SDK under test (or signed locally).

    In a cluster the REST calls go to the first node and the clients are spread over
    the others, so that every operation crosses nodes.
    """

    def __init__(
        self,
        runner: ServiceRunner,
        http: aiohttp.ClientSession,
        sdk: Sdk | None,
        nodes: Sequence[ServiceRunner] = (),
    ):
        self.runner, self.http, self.sdk = runner, http, sdk
        self.markers = itertools.count()
        self._client_nodes = itertools.cycle(list(nodes[1:]) or [runner])

    async def connect(
        self, user: str | None, groups: Sequence[str] = (), roles: Sequence[str] = ()
    ) -> Client:
        if self.sdk is not None:
            token = await self.sdk.get_client_access_token(
                user_id=user, groups=list(groups), roles=list(roles)
            )
            url = token["url"]
        else:
            base = f"{self.runner.endpoint}/client/hubs/chat"
            jwt_ = issue_client_token(
                ACCESS_KEY, audience=base, now=time.time(), user_id=user, roles=roles, groups=groups
            )
            url = f"ws{base.removeprefix('http')}?access_token={jwt_}"
        return await self.open(url)

    async def open(self, url: str) -> Client:
        node = next(self._client_nodes)
        url = on_node(url, self.runner, node)
        ws = await self.http.ws_connect(url, protocols=[JSON_PROTOCOL])
        assert ws.protocol == JSON_PROTOCOL
        msg = await ws.receive(timeout=5)
        connected = json.loads(msg.data)
        assert connected["type"] == "system" and connected["event"] == "connected", connected
        await presence_written(node)  # another node's query sees the new client
        return Client(ws, connected)

    async def quiet(self, *clients: Client) -> None:
        """Nothing is queued for ``clients``: a marker sent now is the next frame of each."""
        assert self.sdk is not None
        for client in clients:
            marker = f"marker {next(self.markers)}"
            await self.sdk.send_to_connection(client.id, marker, content_type="text/plain")
            assert await client.recv() == server_message("text", marker)


@pytest.fixture(params=TOPOLOGIES)
async def nodes(request: pytest.FixtureRequest, start_service: StartService) -> list[ServiceRunner]:
    """The service: one node, or three joined through Redis (REST goes to the first)."""
    return await start_nodes(request, start_service)


@pytest.fixture
async def runner(nodes: list[ServiceRunner]) -> ServiceRunner:
    """The node every REST call of these tests goes to."""
    return nodes[0]


@pytest.fixture
async def http(runner: ServiceRunner) -> AsyncIterator[aiohttp.ClientSession]:
    """Closed (with its WebSockets) before the service stops."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=["sync", "aio"])
async def sdk(request: pytest.FixtureRequest, runner: ServiceRunner) -> AsyncIterator[Sdk]:
    client = Sdk(request.param, runner.connection_string)
    yield client
    await client.aclose()


@pytest.fixture
def clients(
    runner: ServiceRunner, http: aiohttp.ClientSession, sdk: Sdk, nodes: list[ServiceRunner]
) -> Clients:
    return Clients(runner, http, sdk, nodes)


# -- sends ----------------------------------------------------------------------------


async def test_sends_arrive_as_json_envelopes_per_content_type(sdk: Sdk, clients: Clients) -> None:
    a1 = await clients.connect("alice", ["room"])
    a2 = await clients.connect("alice")
    bob = await clients.connect("bob", ["room"])

    await sdk.send_to_all("plain", content_type="text/plain")
    await sdk.send_to_all({"n": [1, "two"]})
    await sdk.send_to_all("a json string")
    await sdk.send_to_all(b"\x00\x01\xff", content_type="application/octet-stream")
    for client in (a1, a2, bob):
        await got(client, server_message("text", "plain"))
        await got(client, server_message("json", {"n": [1, "two"]}))
        await got(client, server_message("json", "a json string"))
        await got(client, server_message("binary", base64.b64encode(b"\x00\x01\xff").decode()))

    await sdk.send_to_user("alice", 42)
    await sdk.send_to_group("room", "to room", content_type="text/plain")
    await sdk.send_to_connection(a2.id, b"\x07", content_type="application/octet-stream")
    await got(a1, server_message("json", 42))
    await got(a1, group_message("room", "text", "to room"))
    await got(a2, server_message("json", 42))
    await got(a2, server_message("binary", "Bw=="))
    await got(bob, group_message("room", "text", "to room"))
    await clients.quiet(a1, a2, bob)


async def test_sends_pass_filter_and_excluded(sdk: Sdk, clients: Clients) -> None:
    a1 = await clients.connect("alice", ["room"])
    a2 = await clients.connect("alice")
    bob = await clients.connect("bob", ["room"])

    await sdk.send_to_all("1", content_type="text/plain", filter="userId eq 'bob'")
    await sdk.send_to_all(
        "2", content_type="text/plain", filter="userId eq 'alice'", excluded=[a1.id]
    )
    await sdk.send_to_user("alice", "3", content_type="text/plain", filter="'room' in groups")
    await sdk.send_to_group("room", "4", content_type="text/plain", filter="userId ne 'bob'")
    await sdk.send_to_group("room", "5", content_type="text/plain", excluded=[a1.id], filter="")
    await got(bob, server_message("text", "1"))
    await got(a2, server_message("text", "2"))
    await got(a1, server_message("text", "3"))
    await got(a1, group_message("room", "text", "4"))
    await got(bob, group_message("room", "text", "5"))
    await clients.quiet(a1, a2, bob)


# -- groups -----------------------------------------------------------------------------


async def test_adding_a_user_affects_its_current_connections_only(
    sdk: Sdk, clients: Clients
) -> None:
    a1 = await clients.connect("alice")
    bob = await clients.connect("bob", ["team"])
    await sdk.add_user_to_group("team", "alice")
    a2 = await clients.connect("alice")  # connects after the user was added

    await sdk.send_to_group("team", "to team", content_type="text/plain")
    await got(a1, group_message("team", "text", "to team"))
    await got(bob, group_message("team", "text", "to team"))
    await clients.quiet(a2)
    assert sorted(await sdk.members("team")) == sorted([(a1.id, "alice"), (bob.id, "bob")])

    # A user without connections is not found, as Azure answers, and nothing changes.
    with pytest.raises(ResourceNotFoundError) as raised:
        await sdk.add_user_to_group("lonely", "ghost")
    assert raised.value.error is not None
    assert (raised.value.error.code, raised.value.error.target) == (
        "Warning.User.NotExisted",
        "User",
    )
    assert not await sdk.group_exists("lonely")

    await sdk.add_connection_to_group("team", a2.id)
    await sdk.remove_user_from_group("team", "alice")  # every connection of alice leaves
    assert await sdk.members("team") == [(bob.id, "bob")]
    await sdk.add_user_to_group("other", "alice")
    await sdk.add_user_to_group("other", "bob")
    await sdk.remove_user_from_all_groups("alice")  # bob stays in both groups
    assert await sdk.members("other") == [(bob.id, "bob")]
    assert await sdk.members("team") == [(bob.id, "bob")]
    await sdk.remove_connection_from_all_groups(bob.id)
    assert not await sdk.group_exists("team") and not await sdk.group_exists("other")
    await sdk.send_to_all("end", content_type="text/plain", filter="length(groups) gt 0")
    await clients.quiet(a1, a2, bob)


async def test_existence_follows_the_clients_own_joins_and_leaves(
    sdk: Sdk, clients: Clients
) -> None:
    a1 = await clients.connect("alice", roles=["webpubsub.joinLeaveGroup"])
    a2 = await clients.connect("alice")
    assert await sdk.connection_exists(a1.id) and await sdk.user_exists("alice")
    assert not await sdk.group_exists(WEIRD_GROUP)

    assert await a1.allowed({"type": "joinGroup", "group": WEIRD_GROUP})
    assert await sdk.group_exists(WEIRD_GROUP)
    assert await sdk.members(WEIRD_GROUP) == [(a1.id, "alice")]
    assert await a1.allowed({"type": "leaveGroup", "group": WEIRD_GROUP})
    assert not await sdk.group_exists(WEIRD_GROUP)
    assert await sdk.members(WEIRD_GROUP) == []

    await sdk.close_connection(a1.id, reason="one of two")
    await a1.closed_by_service("one of two")
    assert not await sdk.connection_exists(a1.id)
    assert await sdk.user_exists("alice")  # a2 is still there
    await sdk.close_connection(a2.id)
    await a2.closed_by_service(DEFAULT_CLOSE_REASON)
    assert not await sdk.user_exists("alice")


# -- closing ------------------------------------------------------------------------------


async def test_closes_send_disconnected_with_the_reason_and_respect_excluded(
    sdk: Sdk, clients: Clients
) -> None:
    a1 = await clients.connect("alice", ["room"])
    a2 = await clients.connect("alice")
    b1 = await clients.connect("bob", ["room"])
    b2 = await clients.connect("bob")
    carol = await clients.connect(None, ["room"])

    await sdk.close_user_connections("alice", excluded=[a1.id], reason="user: bye")
    await a2.closed_by_service("user: bye")
    await clients.quiet(a1, b1, b2, carol)

    await sdk.close_group_connections("room", excluded=[a1.id, carol.id], reason="group ä")
    await b1.closed_by_service("group ä")
    await clients.quiet(a1, b2, carol)
    assert await sdk.members("room") == sorted([(a1.id, "alice"), (carol.id, None)])

    await sdk.close_connection(b2.id, reason="just you")
    await b2.closed_by_service("just you")
    assert not await sdk.user_exists("bob")

    await sdk.close_all_connections(excluded=[carol.id], reason="everyone")
    await a1.closed_by_service("everyone")
    await clients.quiet(carol)

    await sdk.close_group_connections("room")
    await carol.closed_by_service(DEFAULT_CLOSE_REASON)
    assert not await sdk.group_exists("room")


# -- permissions --------------------------------------------------------------------------


async def test_permissions_change_what_a_json_client_may_do(sdk: Sdk, clients: Clients) -> None:
    client = await clients.connect("alice")
    watcher = await clients.connect("watcher", ["g1", WEIRD_GROUP])
    cid = client.id

    def join(group: str) -> dict[str, Any]:
        return {"type": "joinGroup", "group": group}

    def publish(group: str, text: str) -> dict[str, Any]:
        frame = {"type": "sendToGroup", "group": group, "dataType": "text", "data": text}
        return {**frame, "noEcho": True}  # the client is in WEIRD_GROUP itself

    async def holds(permission: str, target: str | None = None) -> bool:
        held: bool = await sdk.has_permission(permission, cid, target_name=target)
        return held

    # A token without roles: everything is forbidden.
    assert not await holds("joinLeaveGroup", "g1") and not await holds("sendToGroup", "g1")
    assert not await client.allowed(join("g1"))
    assert not await client.allowed(publish("g1", "x"))

    # joinLeaveGroup for one (percent-encoded) group only.
    await sdk.grant_permission("joinLeaveGroup", cid, target_name=WEIRD_GROUP)
    assert await holds("joinLeaveGroup", WEIRD_GROUP)
    assert not await holds("joinLeaveGroup", "g1")
    assert await client.allowed(join(WEIRD_GROUP))
    assert not await client.allowed(join("g1"))
    await sdk.revoke_permission("joinLeaveGroup", cid, target_name=WEIRD_GROUP)
    assert not await holds("joinLeaveGroup", WEIRD_GROUP)
    assert not await client.allowed({"type": "leaveGroup", "group": WEIRD_GROUP})

    # sendToGroup for two groups, then one taken back.
    await sdk.grant_permission("sendToGroup", cid, target_name="g1")
    await sdk.grant_permission("sendToGroup", cid, target_name=WEIRD_GROUP)
    assert await holds("sendToGroup", "g1") and not await holds("sendToGroup", "any group")
    assert not await holds("joinLeaveGroup", "g1")  # the other permission is untouched
    assert await client.allowed(publish("g1", "granted"))
    frame = await watcher.recv()
    assert frame == {**group_message("g1", "text", "granted"), "fromUserId": "alice"}
    await sdk.revoke_permission("sendToGroup", cid, target_name="g1")
    await sdk.revoke_permission("sendToGroup", cid, target_name="g1")  # idempotent
    assert not await holds("sendToGroup", "g1")
    assert await holds("sendToGroup", WEIRD_GROUP)
    assert not await client.allowed(publish("g1", "revoked"))
    assert await client.allowed(publish(WEIRD_GROUP, "still granted"))
    frame = await watcher.recv()
    assert frame == {**group_message(WEIRD_GROUP, "text", "still granted"), "fromUserId": "alice"}
    await clients.quiet(watcher, client)

    # Roles from the token count.
    roled = await clients.connect("bob", roles=["webpubsub.sendToGroup"])
    assert await sdk.has_permission("sendToGroup", roled.id, target_name="anything")
    # Unknown connections: not held, not grantable (404), and nothing to revoke (204).
    assert not await sdk.has_permission("sendToGroup", "no-such-connection", target_name="g1")
    with pytest.raises(ResourceNotFoundError) as missing:
        await sdk.grant_permission("sendToGroup", "no-such-connection", target_name="g1")
    assert missing.value.error is not None
    assert missing.value.error.code == "Info.Connection.NotExisted"
    await sdk.revoke_permission("sendToGroup", "no-such-connection", target_name="g1")
    # Both permissions are per group: Azure requires targetName on all three operations.
    for operation in ("grant_permission", "revoke_permission", "has_permission"):
        with pytest.raises(HttpResponseError) as raised:
            await getattr(sdk, operation)("sendToGroup", cid)
        assert raised.value.status_code == 400
        if operation != "has_permission":  # a HEAD answer has no body to read
            assert raised.value.error is not None
            assert (raised.value.error.code, raised.value.error.target) == (
                "Error.BadRequest",
                "Request",
            )
    with pytest.raises(HttpResponseError) as raised:
        await sdk.grant_permission("sendToEveryone", cid)
    assert raised.value.status_code == 400


# -- list_connections -----------------------------------------------------------------------


async def test_list_connections_pages_list_exactly_the_members(sdk: Sdk, clients: Clients) -> None:
    members = [await clients.connect(f"user {i}", [WEIRD_GROUP]) for i in range(4)]
    members.append(await clients.connect(None, [WEIRD_GROUP]))
    outsider = await clients.connect("user 0", ["elsewhere"])
    expected = sorted((c.id, c.user) for c in members)

    assert await sdk.members(WEIRD_GROUP) == expected  # ordered by connection id
    assert await sdk.pages(WEIRD_GROUP) == [expected]
    by_two = [expected[:2], expected[2:4], expected[4:]]
    assert await sdk.pages(WEIRD_GROUP, maxpagesize=2) == by_two
    assert await sdk.pages(WEIRD_GROUP, top=3) == [expected[:3]]
    assert await sdk.pages(WEIRD_GROUP, top=3, maxpagesize=2) == [expected[:2], expected[2:3]]
    assert await sdk.pages(WEIRD_GROUP, top=5, maxpagesize=5) == [expected]
    assert await sdk.members(WEIRD_GROUP, top=100, maxpagesize=1) == expected
    assert await sdk.members("elsewhere") == [(outsider.id, "user 0")]
    assert await sdk.pages("nobody here") == [[]]

    gone = members[1]
    await sdk.remove_connection_from_group(WEIRD_GROUP, gone.id)
    assert await sdk.members(WEIRD_GROUP, maxpagesize=2) == [m for m in expected if m[0] != gone.id]


# -- client tokens ---------------------------------------------------------------------------


async def test_client_access_token_roles_groups_and_lifetime(sdk: Sdk, clients: Clients) -> None:
    token = await sdk.get_client_access_token(
        user_id="tok user",
        roles=["webpubsub.sendToGroup.g1", "webpubsub.joinLeaveGroup"],
        groups=["g1", WEIRD_GROUP],
        minutes_to_expire=5,
        jwt_headers={"kid": "key-1"},
    )
    assert token["baseUrl"] == f"ws{clients.runner.endpoint.removeprefix('http')}/client/hubs/chat"
    claims = jwt.decode(token["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 300
    client = await clients.open(token["url"])
    assert client.user == "tok user"

    assert await sdk.members("g1") == [(client.id, "tok user")]
    assert await sdk.group_exists(WEIRD_GROUP)
    assert await sdk.has_permission("sendToGroup", client.id, target_name="g1")
    assert not await sdk.has_permission("sendToGroup", client.id, target_name="g2")
    assert await sdk.has_permission("joinLeaveGroup", client.id, target_name="any")
    assert await client.allowed({"type": "sendToGroup", "group": "g1", "data": {"k": 1}})
    frame = await client.recv()  # a member, so it gets its own message
    assert frame == {**group_message("g1", "json", {"k": 1}), "fromUserId": "tok user"}
    assert not await client.allowed({"type": "sendToGroup", "group": "g2", "data": 1})
    assert await client.allowed({"type": "leaveGroup", "group": "g1"})
    assert not await sdk.group_exists("g1")


async def test_send_request_reaches_what_the_sdk_does_not_wrap(sdk: Sdk, clients: Clients) -> None:
    alice = await clients.connect("alice")
    bob = await clients.connect("bob")
    response = await sdk.send_request(HttpRequest("HEAD", "/api/health"))
    assert response.status_code == 200
    body = {"groups": ["bulk"], "filter": f"connectionId eq '{bob.id}'"}
    request = HttpRequest("POST", "/api/hubs/chat/:addToGroups?api-version=2024-12-01", json=body)
    assert (await sdk.send_request(request)).status_code == 200
    assert await sdk.members("bulk") == [(bob.id, "bob")]
    await sdk.send_to_group("bulk", "bulk", content_type="text/plain")
    await got(bob, group_message("bulk", "text", "bulk"))
    await clients.quiet(alice, bob)


# -- raw REST: nextLink and :generateToken ------------------------------------------------------


class Api:
    """Raw REST calls signed as the SDKs sign them."""

    def __init__(self, runner: ServiceRunner, http: aiohttp.ClientSession) -> None:
        self.runner, self.http = runner, http

    def token(self, url: str) -> str:
        return issue_rest_token(ACCESS_KEY, audience=url, now=time.time())

    async def call(
        self, method: str, target: str, text: str | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """``target`` is a path with query or an absolute URL of this service."""
        url = target if "://" in target else self.runner.endpoint + target
        headers = {"Authorization": f"Bearer {self.token(url)}"}
        if text is not None:
            headers["Content-Type"] = "text/plain"
        async with self.http.request(method, url, headers=headers, data=text) as resp:
            body = await resp.read()
            return resp.status, dict(resp.headers), orjson.loads(body) if body else None

    async def error(
        self, method: str, target: str, text: str | None = None, *, status: int = 400
    ) -> dict[str, Any]:
        code, headers, detail = await self.call(method, target, text)
        assert code == status, detail
        # Parameter validation of an operation without a JSON result is problem+json.
        problem = ":send" in target and status == 400
        media = "application/problem+json" if problem else "application/json"
        assert headers["Content-Type"] == f"{media}; charset=utf-8"
        assert detail["code"] == headers["x-ms-error-code"]
        assert isinstance(detail["message"], str)
        return dict(detail)


@pytest.fixture
def api(runner: ServiceRunner, http: aiohttp.ClientSession) -> Api:
    return Api(runner, http)


@pytest.fixture
def raw_clients(
    runner: ServiceRunner, http: aiohttp.ClientSession, nodes: list[ServiceRunner]
) -> Clients:
    return Clients(runner, http, None, nodes)


async def test_next_link_is_absolute_and_carries_the_paging_state(
    api: Api, raw_clients: Clients
) -> None:
    members = [await raw_clients.connect(f"u{i}", [WEIRD_GROUP]) for i in range(5)]
    expected = sorted((c.id, c.user) for c in members)
    path = f"/api/hubs/Chat/groups/{quote(WEIRD_GROUP, safe='')}/connections"

    status, _, page = await api.call("GET", f"{path}?maxpagesize=2&top=4&api-version=2024-01-01")
    assert status == 200
    assert [(m["connectionId"], m["userId"]) for m in page["value"]] == expected[:2]
    link = urlsplit(page["nextLink"])
    assert f"{link.scheme}://{link.netloc}" == api.runner.endpoint
    assert link.path == path  # percent-encoded as requested
    query = dict(parse_qsl(link.query))
    assert query.keys() == {"continuationToken", "maxpagesize", "top", "api-version"}
    assert (query["maxpagesize"], query["top"], query["api-version"]) == ("2", "2", "2024-01-01")

    # Followed verbatim (as the JS SDK does) and without api-version: the same page.
    status, _, second = await api.call("GET", page["nextLink"])
    assert status == 200
    assert [m["connectionId"] for m in second["value"]] == [m[0] for m in expected[2:4]]
    assert "nextLink" not in second  # top is used up
    bare = page["nextLink"].replace("&api-version=2024-01-01", "")
    assert (await api.call("GET", bare))[2] == second

    # Without top, the pages run to the end; the last has no nextLink.
    seen: list[str] = []
    target: str | None = f"{path}?maxpagesize=2"
    while target is not None:
        status, _, page = await api.call("GET", target)
        assert status == 200 and len(page["value"]) <= 2
        seen.extend(m["connectionId"] for m in page["value"])
        target = page.get("nextLink")
    assert seen == [m[0] for m in expected]

    # A member leaving between pages neither repeats nor skips the others.
    _, _, first = await api.call("GET", f"{path}?maxpagesize=2")
    status, _, _ = await api.call("DELETE", f"{path}/{expected[2][0]}")
    assert status == 204
    status, _, rest = await api.call("GET", first["nextLink"])
    assert [m["connectionId"] for m in rest["value"]] == [m[0] for m in expected[3:5]]

    for bad, target_name in (
        ("maxpagesize=0", "maxpagesize"),
        ("maxpagesize=201", "maxpagesize"),
        ("top=0", "top"),
        ("top=x", "top"),
        ("continuationToken=%25%25%25", "continuationToken"),
    ):
        detail = await api.error("GET", f"{path}?{bad}")
        assert detail["target"] == target_name, bad


async def test_generate_token_claims_and_a_client_connecting_with_it(
    api: Api, raw_clients: Clients
) -> None:
    now = time.time()
    status, headers, body = await api.call(
        "POST",
        "/api/hubs/Chat/:generateToken?userId=gen%20user&role=webpubsub.sendToGroup.g1"
        "&role=webpubsub.joinLeaveGroup&group=g1&group=g%202&minutesToExpire=7"
        "&clientType=Default&api-version=2024-12-01",
    )
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body.keys() == {"token"}
    audience = f"{api.runner.endpoint}/client/hubs/Chat"
    header = jwt.get_unverified_header(body["token"])
    assert header == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(body["token"], ACCESS_KEY, algorithms=["HS256"], audience=audience)
    assert claims == {
        "aud": audience,
        "iat": claims["iat"],
        "exp": claims["iat"] + 7 * 60,
        "sub": "gen user",
        "role": ["webpubsub.sendToGroup.g1", "webpubsub.joinLeaveGroup"],
        "webpubsub.group": ["g1", "g 2"],
    }
    assert abs(claims["iat"] - now) < 60

    client = await raw_clients.open(
        f"ws{audience.removeprefix('http')}?access_token={body['token']}"
    )
    assert client.user == "gen user"
    assert await client.allowed({"type": "sendToGroup", "group": "g 2", "data": "no"}) is False
    assert await client.allowed({"type": "sendToGroup", "group": "g1", "data": "yes"})
    assert await client.recv() == {**group_message("g1", "json", "yes"), "fromUserId": "gen user"}
    assert await client.allowed({"type": "leaveGroup", "group": "g 2"})
    status, _, page = await api.call("GET", "/api/hubs/chat/groups/g1/connections")
    assert page == {"value": [{"connectionId": client.id, "userId": "gen user"}]}

    # Defaults: 60 minutes, no user, roles or groups; MQTT clients get their own path.
    _, _, body = await api.call("POST", "/api/hubs/chat/:generateToken")
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims.keys() == {"aud", "iat", "exp"}
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["aud"] == f"{api.runner.endpoint}/client/hubs/chat"
    anonymous = await raw_clients.open(
        f"ws{api.runner.endpoint.removeprefix('http')}/client/hubs/chat?access_token={body['token']}"
    )
    assert anonymous.user is None
    for client_type in ("MQTT", "mqtt"):
        _, _, body = await api.call(
            "POST", f"/api/hubs/chat/:generateToken?clientType={client_type}&userId=m"
        )
        claims = jwt.decode(body["token"], options={"verify_signature": False})
        assert claims["aud"] == f"{api.runner.endpoint}/clients/mqtt/hubs/chat"

    for bad, target_name in (
        ("minutesToExpire=0", "minutesToExpire"),
        ("minutesToExpire=-5", "minutesToExpire"),
        ("minutesToExpire=1.5", "minutesToExpire"),
        ("minutesToExpire=soon", "minutesToExpire"),
        ("clientType=Telnet", "clientType"),
    ):
        detail = await api.error("POST", f"/api/hubs/chat/:generateToken?{bad}")
        assert detail["target"] == target_name, bad
    await api.error("POST", "/api/hubs/chat/:generateToken?group=")


async def test_next_link_of_an_absolute_form_request(api: Api, raw_clients: Clients) -> None:
    """RFC 9112 §3.2.2: the nextLink is built from the path, not the raw request target."""
    members = [await raw_clients.connect(user, ["g"]) for user in ("a", "b")]
    url = f"{api.runner.endpoint}/api/hubs/chat/groups/g/connections?maxpagesize=1"
    reader, writer = await asyncio.open_connection("127.0.0.1", api.runner.port)
    try:
        writer.write(
            f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1:{api.runner.port}\r\n"
            f"Authorization: Bearer {api.token(url)}\r\nConnection: close\r\n\r\n".encode()
        )
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    link = orjson.loads(body)["nextLink"]
    assert link.startswith(f"{api.runner.endpoint}/api/hubs/chat/groups/g/connections?"), link
    status, _, page = await api.call("GET", link)
    assert status == 200
    assert [m["connectionId"] for m in page["value"]] == [max(c.id for c in members)]


async def test_numbers_must_be_ascii_digits(api: Api, raw_clients: Clients) -> None:
    """``²`` passes ``str.isdigit`` but is no integer: 400, never a 500."""
    client = await raw_clients.connect("u", ["g"])
    for target in (
        "/api/hubs/chat/:send?messageTtlSeconds=%C2%B2",
        f"/api/hubs/chat/connections/{client.id}/:send?messageTtlSeconds=%C2%B2",
        "/api/hubs/chat/groups/g/connections?maxpagesize=%C2%B2",
        "/api/hubs/chat/groups/g/connections?top=%C2%B2",
        "/api/hubs/chat/:generateToken?minutesToExpire=%C2%B2",
    ):
        method = "GET" if "/connections?" in target else "POST"
        await api.error(method, target, "x" if ":send" in target else None)
    status, _, _ = await api.call("POST", f"/api/hubs/chat/connections/{client.id}/:send", "m")
    assert status == 202
    assert await client.recv() == server_message("text", "m")  # nothing came before


async def test_listed_members_carry_user_id_null_when_anonymous(
    api: Api, raw_clients: Clients
) -> None:
    """Each item has both keys, as Azure's items do: ``"userId": null`` is not left out."""
    named = await raw_clients.connect("alice", ["g"])
    anonymous = await raw_clients.connect(None, ["g"])
    status, _, page = await api.call("GET", "/api/hubs/chat/groups/g/connections")
    assert status == 200
    assert sorted(page["value"], key=lambda m: m["connectionId"]) == sorted(
        [
            {"connectionId": named.id, "userId": "alice"},
            {"connectionId": anonymous.id, "userId": None},
        ],
        key=lambda m: str(m["connectionId"]),
    )
