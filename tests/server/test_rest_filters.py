"""OData filters end to end (Azure REST API reference) and the bulk group operations.

Real JSON-subprotocol clients with different users and groups are connected; each
filter is sent with the official Python SDK (aio) and the exact set of clients that
got the message is checked: after every filtered send a marker goes to everyone, so a
client outside the set sees the marker as its next frame.  ``:addToGroups`` and
``:removeFromGroups`` (not wrapped by the Python SDK) go through its ``send_request``.
Bad filters are refused with 400 and a message pointing at the offending position.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from azure.core.exceptions import HttpResponseError
from azure.core.rest import HttpRequest
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import ACCESS_KEY, StartService
from webpubsub.protocol.tokens import issue_rest_token
from webpubsub.server.app import ServiceRunner

JSON_PROTOCOL = "json.webpubsub.azure.v1"
WEIRD_USER = "Wei rd/ü"


class Client:
    """A raw ``json.webpubsub.azure.v1`` client."""

    def __init__(self, name: str, ws: aiohttp.ClientWebSocketResponse, connected: Any) -> None:
        self.name, self.ws = name, ws
        self.id: str = connected["connectionId"]

    async def next_data(self) -> Any:
        """The ``data`` of the next frame, which must be a message."""
        msg = await self.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.TEXT, (self.name, msg)
        frame = json.loads(msg.data)
        assert frame["type"] == "message", (self.name, frame)
        return frame["data"]


class Hub:
    """The SDK client, a raw REST caller and the connected clients of hub ``chat``."""

    def __init__(
        self, runner: ServiceRunner, http: aiohttp.ClientSession, sdk: WebPubSubServiceClient
    ) -> None:
        self.runner, self.http, self.sdk = runner, http, sdk
        self.clients: dict[str, Client] = {}
        self._labels = itertools.count()

    async def connect(self, name: str, user: str | None, groups: list[str]) -> Client:
        token = await self.sdk.get_client_access_token(user_id=user, groups=groups)
        ws = await self.http.ws_connect(token["url"], protocols=[JSON_PROTOCOL])
        connected = json.loads((await ws.receive(timeout=5)).data)
        assert connected["event"] == "connected"
        self.clients[name] = client = Client(name, ws, connected)
        return client

    def id(self, name: str) -> str:
        return self.clients[name].id

    async def reached(self, send: Callable[[str], Awaitable[object]]) -> set[str]:
        """The names of the clients a send reaches: ``send(label)``, then a marker to all."""
        label = f"#{next(self._labels)}"
        await send(label)
        await self.sdk.send_to_all(f"end {label}", content_type="text/plain")
        got: set[str] = set()
        for name, client in self.clients.items():
            data = await client.next_data()
            if data == label:
                got.add(name)
                data = await client.next_data()
            assert data == f"end {label}", (name, data)
        return got

    async def members(self, group: str) -> set[str]:
        ids = {m.connection_id async for m in self.sdk.list_connections(group=group)}
        names = {name for name, client in self.clients.items() if client.id in ids}
        assert len(names) == len(ids)
        return names

    async def bulk(self, operation: str, body: dict[str, Any]) -> int:
        """``:addToGroups`` / ``:removeFromGroups`` through the SDK's ``send_request``."""
        request = HttpRequest(
            "POST", f"/api/hubs/chat/:{operation}?api-version=2024-12-01", json=body
        )
        response = await self.sdk.send_request(request)
        status: int = response.status_code
        return status

    async def raw(
        self, target: str, body: bytes, content_type: str = "text/plain"
    ) -> tuple[int, dict[str, str], Any]:
        url = self.runner.endpoint + target
        token = issue_rest_token(ACCESS_KEY, audience=url, now=time.time())
        headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
        async with self.http.post(url, data=body, headers=headers) as resp:
            raw = await resp.read()
            return resp.status, dict(resp.headers), orjson.loads(raw) if raw else None


@pytest.fixture
async def hub(start_service: StartService) -> AsyncIterator[Hub]:
    """Clients: a1 alice [g1], a2 alice [g2], b bob [g1, g2], anon (no user) [g1],
    q o'neil [], w WEIRD_USER ["g 3"]."""
    runner = await start_service()
    async with (
        aiohttp.ClientSession() as http,
        WebPubSubServiceClient.from_connection_string(runner.connection_string, hub="chat") as sdk,
    ):
        hub = Hub(runner, http, sdk)
        await hub.connect("a1", "alice", ["g1"])
        await hub.connect("a2", "alice", ["g2"])
        await hub.connect("b", "bob", ["g1", "g2"])
        await hub.connect("anon", None, ["g1"])
        await hub.connect("q", "o'neil", [])
        await hub.connect("w", WEIRD_USER, ["g 3"])
        yield hub


EVERYONE = {"a1", "a2", "b", "anon", "q", "w"}

FILTERS: list[tuple[str, set[str]]] = [
    ("userId eq 'alice'", {"a1", "a2"}),
    ("userId ne 'alice'", {"b", "anon", "q", "w"}),  # null ne 'alice' holds
    ("userId eq null", {"anon"}),
    ("userId ne null and not (userId eq 'alice')", {"b", "q", "w"}),
    ("userId eq 'o''neil'", {"q"}),
    (f"userId eq '{WEIRD_USER}'", {"w"}),
    ("userId eq 'ALICE'", set()),  # values compare case-sensitively
    ("connectionId eq '{a2}'", {"a2"}),
    ("connectionId ne '{a2}' and userId eq 'alice'", {"a1"}),
    ("'g1' in groups", {"a1", "b", "anon"}),
    ("'g 3' in groups", {"w"}),
    ("'g1' in groups and 'g2' in groups", {"b"}),
    ("'g1' in groups or 'g2' in groups", {"a1", "a2", "b", "anon"}),
    ("not ('g1' in groups)", {"a2", "q", "w"}),
    ("userId in ('alice', 'o''neil')", {"a1", "a2", "q"}),
    # and binds tighter than or; parentheses change it
    ("userId eq 'bob' or userId eq 'alice' and 'g1' in groups", {"a1", "b"}),
    ("(userId eq 'bob' or userId eq 'alice') and 'g1' in groups", {"a1", "b"}),
    ("(userId eq 'bob' or userId eq 'alice') and 'g2' in groups", {"a2", "b"}),
    ("userId eq 'alice' and (not ('g1' in groups))", {"a2"}),
    ("not (userId eq 'alice' or 'g1' in groups) and userId ne null", {"q", "w"}),
    ("USERID Eq 'alice' AND 'g1' IN Groups", {"a1"}),  # names and keywords: any case
    ("length(groups) eq 0", {"q"}),
    ("startswith(userId, 'o''')", {"q"}),
    ("", EVERYONE),
]


async def test_send_to_all_with_filters(hub: Hub) -> None:
    for text, expected in FILTERS:

        async def send(label: str, flt: str = text.replace("{a2}", hub.id("a2"))) -> None:
            await hub.sdk.send_to_all(label, content_type="text/plain", filter=flt)

        assert await hub.reached(send) == expected, text


async def test_send_to_all_combines_filter_and_excluded(hub: Hub) -> None:
    reached = await hub.reached(
        lambda label: hub.sdk.send_to_all(
            label, content_type="text/plain", filter="'g1' in groups", excluded=[hub.id("b")]
        )
    )
    assert reached == {"a1", "anon"}


async def test_send_to_group_and_user_with_filters(hub: Hub) -> None:
    def to_group(group: str, flt: str, excluded: list[str] | None = None) -> Any:
        return lambda label: hub.sdk.send_to_group(
            group, label, content_type="text/plain", filter=flt, excluded=excluded
        )

    def to_user(user: str, flt: str) -> Any:
        return lambda label: hub.sdk.send_to_user(
            user, label, content_type="text/plain", filter=flt
        )

    assert await hub.reached(to_group("g1", "userId ne 'alice'")) == {"b", "anon"}
    assert await hub.reached(to_group("g1", "userId eq null or 'g2' in groups")) == {"b", "anon"}
    other = f"connectionId ne '{hub.id('b')}'"
    assert await hub.reached(to_group("g1", other, [hub.id("anon")])) == {"a1"}
    assert await hub.reached(to_group("g2", "userId eq 'nobody'")) == set()
    assert await hub.reached(to_group("g 3", f"userId eq '{WEIRD_USER}'")) == {"w"}
    assert await hub.reached(to_user("alice", "'g2' in groups")) == {"a2"}
    assert await hub.reached(to_user("alice", f"connectionId eq '{hub.id('a1')}'")) == {"a1"}
    assert await hub.reached(to_user("alice", "userId eq 'bob'")) == set()
    assert await hub.reached(to_user("o'neil", "userId eq 'o''neil'")) == {"q"}
    assert await hub.reached(to_user(WEIRD_USER, "not ('g1' in groups)")) == {"w"}


async def test_add_and_remove_connections_to_groups_by_filter(hub: Hub) -> None:
    body: dict[str, Any] = {"groups": ["x", "y z"], "filter": "userId eq 'alice'"}
    assert await hub.bulk("addToGroups", body) == 200
    assert await hub.members("x") == await hub.members("y z") == {"a1", "a2"}
    to_y = await hub.reached(
        lambda label: hub.sdk.send_to_group("y z", label, content_type="text/plain")
    )
    assert to_y == {"a1", "a2"}

    # The groups a filter sees include those just added.
    flt = "'x' in groups and 'g1' in groups"
    assert await hub.bulk("removeFromGroups", {"groups": ["x", "y z"], "filter": flt}) == 200
    assert await hub.members("x") == await hub.members("y z") == {"a2"}
    assert await hub.bulk("addToGroups", {"groups": ["x"], "filter": "userId eq 'bob'"}) == 200
    assert await hub.members("x") == {"a2", "b"}

    # No filter (absent or empty) selects every connection of the hub.
    assert await hub.bulk("addToGroups", {"groups": ["all"]}) == 200
    assert await hub.members("all") == EVERYONE
    assert await hub.bulk("removeFromGroups", {"groups": ["all", "x"], "filter": ""}) == 200
    assert await hub.members("all") == await hub.members("x") == set()
    assert await hub.members("g1") == {"a1", "b", "anon"}  # other groups untouched
    assert await hub.reached(lambda label: hub.sdk.send_to_group("x", label)) == set()

    # A filter on groups that matches nobody changes nothing.
    assert await hub.bulk("addToGroups", {"groups": ["x"], "filter": "'none' in groups"}) == 200
    assert not await hub.sdk.group_exists("x")


async def test_bulk_group_operations_refuse_bad_bodies(hub: Hub) -> None:
    for operation in ("addToGroups", "removeFromGroups"):
        target = f"/api/hubs/chat/:{operation}?api-version=2024-12-01"
        for body, content_type in (
            (b'{"filter": "userId eq \'alice\'"}', "application/json"),  # no groups
            (b'{"groups": []}', "application/json"),
            (b'{"groups": "g1"}', "application/json"),
            (b'{"groups": [""]}', "application/json"),
            (b'{"groups": ["   "]}', "application/json"),
            (b'{"groups": ["g1"], "filter": 5}', "application/json"),
            (b'["g1"]', "application/json"),
            (b"{not json", "application/json"),
            (b'{"groups": ["g1"]}', "text/plain"),
        ):
            status, headers, detail = await hub.raw(target, body, content_type)
            assert status == 400, (operation, body, content_type)
            assert detail["code"] == headers["x-ms-error-code"]
    assert await hub.members("g1") == {"a1", "b", "anon"}
    assert await hub.members("g2") == {"a2", "b"}


BAD_FILTERS: list[tuple[str, int, str]] = [
    # (filter, position reported, what starts there)
    ("userId eq", 9, ""),
    ("userId eq 'alice", 10, "'alice"),
    ("userId eq 'a' xor userId eq 'b'", 14, "xor"),
    ("unknownField eq 'a'", 0, "unknownField"),
    ("(userId eq 'a'", 14, ""),
    ("userId eq 'a' and (connectionId eq 'b' or)", 41, ")"),
    ("'g1' in group", 8, "group"),
    ("not length(userId) gt 5", 4, "length"),
    ("userId eq 'it''s", 10, "'it''s"),
]


async def test_bad_filters_are_400_pointing_at_the_position(hub: Hub) -> None:
    user = quote("o'neil", safe="")
    for text, position, there in BAD_FILTERS:
        assert text[position:].startswith(there)
        assert position == len(text) or there, text
        query = quote(text, safe="")
        for target in (
            f"/api/hubs/chat/:send?filter={query}",
            f"/api/hubs/chat/groups/g1/:send?filter={query}",
            f"/api/hubs/chat/users/{user}/:send?filter={query}",
        ):
            status, headers, detail = await hub.raw(target, b"must not arrive")
            assert status == 400, (text, target)
            # Azure's answer: validation problem details, naming the query parameter.
            assert headers["Content-Type"] == "application/problem+json; charset=utf-8"
            assert (detail["code"], headers["x-ms-error-code"]) == (
                "Error.BadRequest",
                "Error.BadRequest",
            )
            assert detail["target"] == "filter"
            assert detail["errors"] == {"filter": [detail["message"]]}
            assert f"position {position}:" in detail["message"], (text, detail)
        for operation in ("addToGroups", "removeFromGroups"):
            body = orjson.dumps({"groups": ["g1", "new"], "filter": text})
            target = f"/api/hubs/chat/:{operation}"
            status, headers, detail = await hub.raw(target, body, "application/json")
            # In a body Azure names the model's property: "Filter".
            assert status == 400 and detail["target"] == "Filter", (text, operation)
            assert headers["Content-Type"] == "application/problem+json; charset=utf-8"
            assert f"position {position}:" in detail["message"]

        with pytest.raises(HttpResponseError) as raised:
            await hub.sdk.send_to_all("must not arrive", content_type="text/plain", filter=text)
        assert raised.value.status_code == 400
        assert f"position {position}:" in str(raised.value)

    # Nothing was delivered and no membership changed.
    assert await hub.reached(lambda label: hub.sdk.send_to_all(label, filter="true")) == EVERYONE
    assert await hub.members("g1") == {"a1", "b", "anon"}
    assert not await hub.sdk.group_exists("new")
