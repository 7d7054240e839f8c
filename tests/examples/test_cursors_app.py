"""The collaborative cursors example's app server, without a browser: the page and the
modules it imports (every import of the official client's browser build resolves), the
tokens ``/negotiate`` issues, and the ``hello`` invocation and the room's roster, driven
by raw ``json.webpubsub.azure.v1`` clients through the real service.

The browser itself (the invocation from the page, the cursor streams) is
``test_cursors_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import jwt
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.conftest import ACCESS_KEY, StartService
from tests.examples.cursors import NODE_MODULES, Cursors, cursors_module, serve_cursors
from tests.integration.test_js_clients import node  # noqa: F401 (installs tests/js/node_modules)
from tests.support.service import json_client

WAIT = 10.0
IMPORT = re.compile(
    r"""^[ \t]*(?:import|export)\s*(?:[\w*{}\s,$]*?\sfrom\s*)?["']([^"']+)["']"""
    r"""|\bimport\(\s*["']([^"']+)["']\s*\)""",
    re.MULTILINE,
)
BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
LINE_COMMENT = re.compile(r"^\s*//.*$", re.MULTILINE)
MAX_MODULES = 500

app_module = cursors_module()


@pytest.fixture
async def cursors(node: str, start_service: StartService) -> AsyncIterator[Cursors]:  # noqa: F811
    async with serve_cursors(start_service) as served:
        yield served


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def negotiate(http: aiohttp.ClientSession, cursors: Cursors, name: str) -> str:
    async with http.get(f"{cursors.url}/negotiate", params={"name": name}) as resp:
        assert resp.status == 200, await resp.text()
        url: str = (await resp.json())["url"]
        return url


async def invoke(
    ws: aiohttp.ClientWebSocketResponse, invocation_id: str, event: str = "hello"
) -> dict[str, Any]:
    """Send an ``invoke`` of ``event`` and return its ``invokeResponse``."""
    await ws.send_json(
        {
            "type": "invoke",
            "invocationId": invocation_id,
            "target": "event",
            "event": event,
            "dataType": "json",
            "data": {},
        }
    )
    while True:  # bounded by the receive timeout: the service sends nothing else unasked
        frame: dict[str, Any] = await ws.receive_json(timeout=WAIT)
        if frame.get("type") == "invokeResponse":
            assert frame["invocationId"] == invocation_id, frame
            return frame


def imports_of(source: str) -> list[str]:
    """The module specifiers ``source`` imports (static, ``export ... from``, dynamic);
    comments are dropped first (JSDoc examples show imports)."""
    code = LINE_COMMENT.sub("", BLOCK_COMMENT.sub("", source))
    return [a or b for a, b in IMPORT.findall(code)]


def test_imports_of_reads_every_form() -> None:
    source = """
    import { a } from "./a.js";
    import b, { c as d } from '@x/b';
    export * from "./e.mjs";
    export { f } from "./f.js";
    import "./side-effect.js";
    const g = await import("./g.js");
    /** import { no } from "@not/this"; */
    // import { nor } from "@nor/this";
    const s = "not an import from './x.js'";
    """
    assert imports_of(source) == [
        "./a.js",
        "@x/b",
        "./e.mjs",
        "./f.js",
        "./side-effect.js",
        "./g.js",
    ]


async def test_every_module_the_page_imports_resolves(
    http: aiohttp.ClientSession, cursors: Cursors
) -> None:
    async with http.get(f"{cursors.url}/") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        page = await resp.text()
    found = re.search(r'<script type="importmap">(.*?)</script>', page, re.DOTALL)
    assert found, "the page has no import map"
    import_map: dict[str, str] = json.loads(found.group(1))["imports"]
    assert import_map["@azure/web-pubsub-client"] == (
        "/vendor/@azure/web-pubsub-client/dist/browser/index.js"
    )
    assert import_map["events"] == "/static/events.js"

    # Crawl the module graph from the page's script, as the browser resolves it.
    todo = [urljoin(f"{cursors.url}/", "/static/cursors.js")]
    seen: set[str] = set(todo)
    bare: set[str] = set()
    while todo:
        assert len(seen) <= MAX_MODULES, "the module graph does not end"
        url = todo.pop()
        async with http.get(url) as resp:
            assert resp.status == 200, url
            assert resp.content_type == "text/javascript", (url, resp.content_type)
            source = await resp.text()
        for specifier in imports_of(source):
            if specifier.startswith((".", "/")):
                target = urljoin(url, specifier)
            else:
                assert specifier in import_map, f"{url} imports {specifier!r}: not in the map"
                bare.add(specifier)
                target = urljoin(url, import_map[specifier])
            if target not in seen:
                seen.add(target)
                todo.append(target)
    # Every bare import is one of the map's, and every entry of the map is used.
    assert bare == set(import_map)
    assert len(seen) > 20  # the client and its dependencies, not a stub


@pytest.mark.parametrize(
    "path",
    [
        "/vendor/@azure/web-pubsub-client/package.json",  # only scripts
        "/vendor/@azure/web-pubsub-client/../../../app.py",
        "/vendor/@azure/web-pubsub-client/dist/%2e%2e/%2e%2e/package.json",
        "/vendor/@azure/web-pubsub/dist/browser/index.js",  # not one of the client's
        "/vendor/ws/index.js",
        "/vendor/@azure/web-pubsub-client/dist/browser/missing.js",
        "/vendor/",
        "/static/app.py",
        "/static/index.html",
        "/static/../app.py",
    ],
)
async def test_only_the_clients_scripts_are_served(
    http: aiohttp.ClientSession, cursors: Cursors, path: str
) -> None:
    async with http.get(f"{cursors.url}{path}") as resp:
        assert resp.status == 404, path


def test_a_missing_client_package_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="web-pubsub-client"):
        app_module.create_app(
            f"Endpoint=http://127.0.0.1:1;AccessKey={ACCESS_KEY};Version=1.0;", tmp_path
        )


async def test_negotiate_gives_a_token_for_the_room_only(
    http: aiohttp.ClientSession, cursors: Cursors
) -> None:
    url = await negotiate(http, cursors, "alice")
    assert url.startswith(f"{cursors.service.endpoint.replace('http', 'ws', 1)}/client/hubs/")
    token = parse_qs(urlsplit(url).query)["access_token"][0]
    claims = jwt.decode(token, ACCESS_KEY, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["sub"] == "alice"
    assert sorted(claims["role"]) == [
        "webpubsub.joinLeaveGroup.room",
        "webpubsub.sendToGroup.room",
    ]
    for query in ("", "?name=", "?name=a&name=b", "?name=" + "x" * 33, "?name=a%20b"):
        async with http.get(f"{cursors.url}/negotiate{query}") as resp:
            assert resp.status == 400, query
            assert "name" in (await resp.json())["error"]

    # The token lets a page join the room and send to it, and nothing else.
    ws, _ = await json_client(http, url)
    async with ws:
        for ack_id, frame in enumerate(
            [
                {"type": "joinGroup", "group": "room"},
                {"type": "sendToGroup", "group": "room", "dataType": "text", "data": "x"},
                {"type": "joinGroup", "group": "other"},
                {"type": "sendToGroup", "group": "other", "dataType": "text", "data": "x"},
            ],
            start=1,
        ):
            await ws.send_json({**frame, "ackId": ack_id})
            ack = await ws.receive_json(timeout=WAIT)
            if ack.get("type") == "message":  # the room's echo of our own message
                ack = await ws.receive_json(timeout=WAIT)
            assert ack["ackId"] == ack_id, ack
            assert ack["success"] is (frame["group"] == "room"), (frame, ack)
            if frame["group"] == "other":
                assert ack["error"]["name"] == "Forbidden"


async def test_hello_answers_name_colour_and_who_else_is_here(
    http: aiohttp.ClientSession, cursors: Cursors
) -> None:
    palette = app_module.PALETTE
    alice, alice_id = await json_client(http, await negotiate(http, cursors, "alice"))
    async with alice:
        answer = await invoke(alice, "1")
        assert answer == {
            "type": "invokeResponse",
            "invocationId": "1",
            "success": True,
            "dataType": "json",
            "data": {"name": "alice", "colour": palette[0], "here": [], "idleTimeoutMs": 5000},
        }
        bob, bob_id = await json_client(http, await negotiate(http, cursors, "bob"))
        async with bob:
            answer = await invoke(bob, "1")
            assert answer["data"] == {
                "name": "bob",
                "colour": palette[1],
                "here": [{"name": "alice", "colour": palette[0]}],
                "idleTimeoutMs": 5000,
            }
            # The app side: both are in the room, by connection.
            assert {cid: m.name for cid, m in cursors.room.members.items()} == {
                alice_id: "alice",
                bob_id: "bob",
            }
            # A second hello keeps one's colour, and now lists bob.
            answer = await invoke(alice, "2")
            assert answer["data"]["colour"] == palette[0]
            assert answer["data"]["here"] == [{"name": "bob", "colour": palette[1]}]
            # Any other event fails the invocation (and leaves the connection open).
            answer = await invoke(alice, "3", event="goodbye")
            assert answer["success"] is False
            assert answer["error"]["name"] == "InternalServerError"
        # bob disconnected: the service tells the app, which lets his colour go.
        async with asyncio.timeout(WAIT):
            await cursors.room.wait_until(lambda room: bob_id not in room.members)
        carol, _ = await json_client(http, await negotiate(http, cursors, "carol"))
        async with carol:
            answer = await invoke(carol, "1")
            assert answer["data"]["colour"] == palette[1]
            assert answer["data"]["here"] == [{"name": "alice", "colour": palette[0]}]
    async with asyncio.timeout(WAIT):
        await cursors.room.wait_until(lambda room: not room.members)


async def test_the_room_is_bounded(
    node: str,  # noqa: F811
    http: aiohttp.ClientSession,
    start_service: StartService,
) -> None:
    async with serve_cursors(start_service, max_members=1) as cursors:
        alice, alice_id = await json_client(http, await negotiate(http, cursors, "alice"))
        bob, _ = await json_client(http, await negotiate(http, cursors, "bob"))
        async with alice, bob:
            assert (await invoke(alice, "1"))["success"] is True
            answer = await invoke(bob, "1")
            assert answer["success"] is False
            assert answer["error"]["name"] == "InternalServerError"
            assert "503" in answer["error"]["message"]
            assert list(cursors.room.members) == [alice_id]


def test_colours_are_reused_once_free_and_shared_past_the_palette() -> None:
    room = app_module.Room(max_members=20)
    palette = app_module.PALETTE
    for i in range(len(palette)):
        assert room.hello(f"c{i}", f"u{i}")[0].colour == palette[i]
    room.leave("c3")
    assert room.hello("new", "n")[0].colour == palette[3]
    # Every colour taken: shared rather than refused.
    assert room.hello("extra", "x")[0].colour in palette
    with pytest.raises(ValueError, match="max_members"):
        app_module.Room(max_members=0)


SEGMENTS = st.sampled_from(
    ["@azure", "web-pubsub-client", "@typespec", "dist", "browser", "index.js", "..", ".", ""]
)


@example(path="@azure/web-pubsub-client/dist/browser/index.js")  # served
@example(path="@azure/web-pubsub-client/dist/browser/../../../../../etc/passwd")
@example(path="@azure/web-pubsub-client/dist/browser/../../../web-pubsub/dist/browser/index.js")
@given(
    path=st.one_of(
        st.text(max_size=80),
        st.lists(SEGMENTS | st.text(max_size=8), max_size=8).map("/".join),
    )
)
def test_vendor_serves_nothing_outside_the_clients_packages(path: str) -> None:
    node_modules = NODE_MODULES.resolve()
    packages = {node_modules / p for p, _ in app_module.BROWSER_MODULES.values()}
    file = app_module.vendor_file(node_modules, path)
    if file is not None:
        resolved = file.resolve()
        assert any(resolved.is_relative_to(p) for p in packages), path
        assert resolved.suffix in (".js", ".mjs") and resolved.is_file()
