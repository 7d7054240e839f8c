"""The operator's portal in headless Chromium, against the real service.

The service runs two hubs: ``chat``, wired to the tutorial's chat app (the official
SDK on the app's side), and ``echo``, whose event handler (a real app of
tests/support/handler.py) answers every user event with a numbered text reply. The
tests log in with the access key, watch the chat flow in the live trace, open its
CloudEvents, replay one through the webhook debugger, drive the test client and the
REST console, and check the page logged no error on its console.

Screenshots go to ``$PYTEST_ARTIFACTS/portal`` (else the test's ``tmp_path``); with
``UPDATE_DOC_SCREENSHOTS=1`` the final ones are also copied to ``docs/images/portal-*.png``.
Uses the system's Chromium (``/usr/bin/chromium``); no browser download is involved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, ConsoleMessage, Locator, Page, expect

from tests.conftest import ACCESS_KEY, StartService, make_config
from tests.server.test_websocket import free_port
from tests.support.browser import chromium
from tests.support.chat import chat_app_socket, next_text, two_users_chatting
from tests.support.handler import EventHandlerApp, Recorded, default_responder, refuse_connect
from tests.support.service import chat_hub, client_url, json_client, sdk
from webpubsub.backplane.memory import MemoryBackplane, MemoryBus
from webpubsub.chat.app import start_chat_on_socket
from webpubsub.core.settings import HubSettings
from webpubsub.server.app import ServiceRunner

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 15_000
VIEWPORT = {"width": 1280, "height": 800}
DOC_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


@dataclasses.dataclass
class Portal:
    """The running service, its portal's address and the apps behind its hubs."""

    service: ServiceRunner
    chat_url: str
    echo: EventHandlerApp

    @property
    def url(self) -> str:
        return f"{self.service.endpoint}/portal"


class Echo:
    """Answers user events with ``answer N: <body>`` (N counts them; a body that is not
    UTF-8 in hex, ``0x...``), the rest as usual."""

    def __init__(self) -> None:
        self.answered = 0

    def __call__(self, req: Recorded) -> web.StreamResponse:
        if req.method != "POST" or not req.ce_type.startswith("azure.webpubsub.user."):
            return default_responder(req)
        self.answered += 1
        try:
            body = req.body.decode("utf-8")
        except UnicodeDecodeError:
            body = f"0x{req.body.hex()}"
        return web.Response(text=f"answer {self.answered}: {body}", content_type="text/plain")


@pytest.fixture
async def portal(
    start_service: StartService, handler_app: EventHandlerApp
) -> AsyncIterator[Portal]:
    handler_app.responder = Echo()
    sock, chat = chat_app_socket()
    service = await start_service(
        HubSettings(name="chat", event_handlers=(chat,)),
        chat_hub(handler_app.url, name="echo", system=frozenset({"connected"})),
    )
    app = await start_chat_on_socket(service.connection_string, sock, hub="chat")
    try:
        yield Portal(service, f"http://127.0.0.1:{sock.getsockname()[1]}", handler_app)
    finally:
        await app.cleanup()
        sock.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    root = os.environ.get("PYTEST_ARTIFACTS")
    base = Path(root) / "portal" / request.node.name if root else tmp_path / "screenshots"
    base.mkdir(parents=True, exist_ok=True)
    return base


class Screens:
    """Screenshots of each step; the chosen ones are the docs' when asked to."""

    def __init__(self, page: Page, directory: Path) -> None:
        self.page = page
        self.directory = directory
        self.taken: dict[str, Path] = {}

    async def shot(self, name: str) -> None:
        path = self.directory / f"portal-{name}.png"
        # No caret or focus ring in the picture.
        await self.page.evaluate("() => document.activeElement && document.activeElement.blur()")
        await self.page.screenshot(path=str(path))
        self.taken[name] = path

    def publish(self) -> None:
        if os.environ.get("UPDATE_DOC_SCREENSHOTS") != "1":
            return
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        for path in self.taken.values():
            shutil.copyfile(path, DOC_IMAGES / path.name)


class Console:
    """Every error the page logged or threw."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.logged_in = False
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        # Before the login, the page asks GET /portal/api/session, which answers 401
        # (the contract); Chromium logs every 4xx resource load as an error.
        url = msg.location.get("url", "")
        if not self.logged_in and url.endswith("/portal/api/session") and "401" in msg.text:
            return
        self.errors.append(f"console: {msg.text} ({url})")


async def new_page(browser: Browser) -> tuple[Page, Console]:
    context = await browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page, Console(page)


async def open_portal(browser: Browser, portal: Portal) -> tuple[Page, Console]:
    page, console = await new_page(browser)
    await page.goto(portal.url)
    await expect(page.locator("#login-key")).to_be_visible()
    return page, console


async def log_in(page: Page, console: Console) -> None:
    await page.locator("#login-key").fill(ACCESS_KEY)
    await page.locator("#login-submit").click()
    await expect(page.locator("#app")).to_be_visible()
    console.logged_in = True
    await expect(page.locator("#login-key")).to_have_value("")
    await expect(page.locator("#trace-status")).to_have_text("live")


async def show_tab(page: Page, name: str) -> None:
    await page.locator(f"#tab-btn-{name}").click()
    await expect(page.locator(f"#tab-{name}")).to_be_visible()


def trace_rows(page: Page, kind: str, text: str | re.Pattern[str] = "") -> Locator:
    rows = page.locator(f"#trace-list tr[data-type='{kind}']")
    return rows.filter(has_text=text) if text else rows


async def test_the_chat_flow_in_the_trace_the_debugger_and_the_test_client(
    browser: Browser, portal: Portal, artifacts: Path
) -> None:
    page, console = await open_portal(browser, portal)
    screens = Screens(page, artifacts)
    await screens.shot("login")
    await log_in(page, console)
    # The key is nowhere but in the server's memory: not in storage, not in the URL.
    assert ACCESS_KEY not in page.url
    stored = await page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}])")
    assert ACCESS_KEY not in stored
    assert ACCESS_KEY not in await page.content()

    async with aiohttp.ClientSession() as http, two_users_chatting(http, portal.chat_url) as chat:
        # The tutorial's chat went on: alice and bob joined and talked (the app broadcasts
        # with the official SDK); they stay connected until the end.
        # The live trace shows it: connects, the frames in, the fan-outs, the REST calls
        # of the app and the CloudEvents with their answers.
        await show_tab(page, "trace")
        await expect(trace_rows(page, "connected", "alice")).to_have_count(1)
        await expect(trace_rows(page, "connected", "bob")).to_have_count(1)
        await expect(trace_rows(page, "message-in", "hi")).to_have_count(1)
        await expect(trace_rows(page, "message-in", "ünïcode ✓")).to_have_count(1)
        await expect(trace_rows(page, "message-out", "[alice] hi")).not_to_have_count(0)
        await expect(trace_rows(page, "rest", "SendToAll")).to_have_count(4)
        await expect(trace_rows(page, "cloudevent", "azure.webpubsub.user.message")).to_have_count(
            2
        )
        # Filters: one user's records only.
        await page.locator("#trace-filter-user").fill("alice")
        await expect(trace_rows(page, "connected")).to_have_count(1)
        await expect(trace_rows(page, "connected", "bob")).to_have_count(0)
        await page.locator("#trace-filter-user").fill("")
        await page.locator("#trace-filter-type").select_option("connection")
        await expect(page.locator("#trace-list tr[data-type]")).to_have_count(2)
        await page.locator("#trace-filter-type").select_option("")
        await screens.shot("trace")

        # The `connected` CloudEvent of alice: the request (signature masked) and the answer.
        await trace_rows(page, "cloudevent", "azure.webpubsub.sys.connected").first.click()
        detail = page.locator("#record-detail")
        await expect(detail).to_be_visible()
        await expect(detail).to_contain_text("azure.webpubsub.sys.connected")
        await expect(detail).to_contain_text("ce-signature")
        await expect(detail).to_contain_text(re.compile(r"sha256=[0-9a-f]{4}…"))
        await expect(detail).to_contain_text(re.compile(r"HTTP 20\d"))
        await expect(detail).to_contain_text("success")
        assert "alice" in (await detail.inner_text())
        await screens.shot("cloudevent")

        # Hubs: both, with their handlers and live counts.
        await show_tab(page, "hubs")
        chat_card = page.locator("#hubs-list [data-hub='chat']")
        await expect(chat_card).to_contain_text("/eventhandler")
        await expect(chat_card.locator("[data-count='connections']")).to_have_text("2")
        await expect(page.locator("#hubs-list [data-hub='echo']")).to_contain_text("connected")
        await screens.shot("hubs")

        # Connections: alice and bob, and one opened.
        await show_tab(page, "connections")
        await page.locator("#conn-hub").select_option("chat")
        await expect(page.locator("#conn-list tr")).to_have_count(2)
        await page.locator("#conn-search").fill("ali")
        await expect(page.locator("#conn-list tr")).to_have_count(1)
        await page.locator("#conn-list tr").first.click()
        await expect(page.locator("#conn-detail")).to_contain_text("alice")
        await expect(page.locator("#conn-detail-recent")).to_contain_text("hi")
        await screens.shot("connections")
        # Send to alice, and close bob with a reason, from there.
        alice, bob = chat
        await page.locator("#conn-send-data").fill("psst")
        await page.locator("#conn-send").click()
        assert await next_text(alice) == "psst"
        await page.locator("#conn-search").fill("bob")
        await expect(page.locator("#conn-list tr")).to_have_text([re.compile("bob")])
        await page.locator("#conn-list tr").first.click()
        await expect(page.locator("#conn-detail-fields")).to_contain_text("bob")
        await page.locator("#conn-close-reason").fill("bye")
        await page.locator("#conn-close").click()
        closed = await bob.receive(timeout=10)
        assert closed.type is aiohttp.WSMsgType.CLOSE, closed
        assert (closed.data, closed.extra) == (1000, "bye")
        await expect(page.locator("#conn-list tr")).to_have_count(0)
        await expect(page.locator("#conn-detail")).to_be_hidden()
        await expect(page.locator("#notice")).to_contain_text("Closed")

        # The test client, on the echo hub: its event is answered by the handler.
        await show_tab(page, "client")
        await page.locator("#tc-hub").fill("echo")
        await page.locator("#tc-user").fill("tester")
        await page.locator("#tc-roles").fill("webpubsub.joinLeaveGroup, webpubsub.sendToGroup")
        await page.locator("#tc-protocol").select_option("json.webpubsub.azure.v1")
        await page.locator("#tc-connect").click()
        await expect(page.locator("#tc-status")).to_have_text(re.compile("^connected"))
        log = page.locator("#tc-log")
        await expect(log).to_contain_text('"event":"connected"')
        await page.locator("#tc-event").fill("message")
        await page.locator("#tc-data").fill("ping")
        await page.locator("#tc-send-event").click()
        await expect(log).to_contain_text('"data":"answer 1: ping"')
        # Its roles let it join a group and send to it (it hears itself: no noEcho).
        await page.locator("#tc-group").fill("room")
        await page.locator("#tc-join").click()
        await expect(log).to_contain_text('{"type":"ack","ackId":2,"success":true}')
        await page.locator("#tc-data").fill("hello room")
        await page.locator("#tc-send-group").click()
        await expect(log).to_contain_text('"group":"room","dataType":"text","data":"hello room"')

        # A broadcast with the official service SDK reaches it.
        async with sdk(portal.service, "echo") as service:
            await service.send_to_all("from the SDK", content_type="text/plain")
        await expect(log).to_contain_text('"data":"from the SDK"')
        await screens.shot("test-client")

        # The webhook debugger: replay the `message` event with another body, and see the
        # handler's new answer beside the original one.
        await show_tab(page, "trace")
        await page.locator("#trace-filter-hub").select_option("echo")
        row = trace_rows(page, "cloudevent", "azure.webpubsub.user.message")
        await expect(row).to_have_count(1)
        await row.click()
        await expect(page.locator("#record-detail")).to_contain_text("answer 1: ping")
        await page.locator("#record-replay").click()
        await expect(page.locator("#tab-debugger")).to_be_visible()
        await expect(page.locator("#replay-headers")).to_have_value(
            re.compile("ce-eventName: message", re.IGNORECASE)
        )
        await expect(page.locator("#replay-body")).to_have_value("ping")
        await page.locator("#replay-body").fill("pong")
        await page.locator("#replay-send").click()
        result = page.locator("#replay-result")
        await expect(result).to_be_visible()
        await expect(page.locator("#replay-original")).to_contain_text("answer 1: ping")
        await expect(page.locator("#replay-new")).to_contain_text("answer 2: pong")
        await result.scroll_into_view_if_needed()
        replayed = await portal.echo.next_request(lambda r: r.body == b"pong")
        assert replayed.headers["ce-signature"].startswith("sha256=")
        await screens.shot("webhook-debugger")
        # The replay is in the trace too, marked as one.
        await show_tab(page, "trace")
        await expect(trace_rows(page, "cloudevent", "replay")).to_have_count(1)

        # The REST console: send to the test client's user through the real REST API.
        await show_tab(page, "rest")
        await page.locator("#rest-op").select_option("sendToUser")
        await page.locator("#rest-hub").fill("echo")
        await page.locator("#rest-user").fill("tester")
        await page.locator("#rest-body").fill("from the console")
        await expect(page.locator("#rest-request")).to_have_text(
            re.compile(r"^POST /api/hubs/echo/users/tester/:send\?api-version=")
        )
        await page.locator("#rest-send").click()
        await expect(page.locator("#rest-status")).to_have_text(re.compile(r"^202 "))
        await screens.shot("rest-console")
        await show_tab(page, "client")
        await expect(log).to_contain_text('"data":"from the console"')

        await alice.close()
        await show_tab(page, "trace")
        await page.locator("#trace-filter-hub").select_option("chat")
        await expect(trace_rows(page, "disconnected")).to_have_count(2)
        await expect(trace_rows(page, "disconnected", "code 1000 · bye")).to_have_count(1)

    assert console.errors == []
    screens.publish()


async def test_reliable_client_pause_export_escaping_and_logout(
    browser: Browser, portal: Portal, artifacts: Path
) -> None:
    # The link `webpubsub demo` prints logs in by itself (an admin token, then a redirect
    # to /portal with the session cookie): no login form, no 401 on the way.
    page, console = await new_page(browser)
    console.logged_in = True
    link = portal.service.portal_link
    assert link is not None
    await page.goto(link)
    assert page.url == portal.url
    await expect(page.locator("#app")).to_be_visible()
    await expect(page.locator("#login")).to_be_hidden()
    await expect(page.locator("#trace-status")).to_have_text("live")

    # A reliable test client whose user id is markup: it is shown as text everywhere.
    await show_tab(page, "client")
    markup = "<img src=x id=injected>"
    await page.locator("#tc-hub").fill("chat")
    await page.locator("#tc-user").fill(markup)
    await page.locator("#tc-roles").fill("webpubsub.joinLeaveGroup,webpubsub.sendToGroup")
    await page.locator("#tc-protocol").select_option("json.reliable.webpubsub.azure.v1")
    await page.locator("#tc-connect").click()
    await expect(page.locator("#tc-status")).to_have_text(re.compile("^connected"))
    log = page.locator("#tc-log")
    await expect(log).to_contain_text('"reconnectionToken":')
    async with sdk(portal.service, "chat") as service:
        await service.send_to_all("one", content_type="text/plain")
    await expect(log).to_contain_text('"data":"one"')
    await expect(log).to_contain_text('"sequenceId":2')
    await page.locator("#tc-group").fill("lobby")
    await page.locator("#tc-join").click()
    await expect(log).to_contain_text('"success":true')
    await page.locator("#tc-data").fill("to the lobby")
    await page.locator("#tc-send-group").click()
    await expect(log).to_contain_text('"data":"to the lobby"')

    # It acknowledged what came: the service saw its sequenceAck frames.
    await show_tab(page, "trace")
    await page.locator("#trace-filter-text").fill("sequenceAck")
    await expect(trace_rows(page, "message-in")).not_to_have_count(0)
    await page.locator("#trace-filter-text").fill("")
    # The group filter finds the client's own joinGroup frame.
    await page.locator("#trace-filter-group").fill("lobby")
    await expect(trace_rows(page, "message-in", "joinGroup")).to_have_count(1)
    await page.locator("#trace-filter-group").fill("")
    # The user filter finds what that user sent out to the group (``fromUserId``).
    await page.locator("#trace-filter-user").fill(markup)
    await expect(trace_rows(page, "message-out", "to the lobby")).to_have_count(1)
    await page.locator("#trace-filter-user").fill("")
    await expect(trace_rows(page, "connected", markup)).to_have_count(1)
    await expect(page.locator("#injected")).to_have_count(0)

    # Pause: records are kept but not shown until resumed.
    await page.locator("#trace-pause").click()
    await expect(page.locator("#trace-status")).to_have_text("paused")
    shown = await page.locator("#trace-list tr").count()
    async with sdk(portal.service, "chat") as service:
        await service.send_to_all("while paused", content_type="text/plain")
    await expect(page.locator("#trace-count")).to_contain_text("new while paused")
    assert await page.locator("#trace-list tr").count() == shown
    await expect(page.locator("#trace-list")).not_to_contain_text("while paused")
    await page.locator("#trace-pause").click()
    await expect(page.locator("#trace-list")).to_contain_text("while paused")

    # Export: JSON lines of what the page keeps.
    async with page.expect_download() as download_info:
        await page.locator("#trace-export").click()
    download = await download_info.value
    exported = (
        await asyncio.to_thread(Path(await download.path()).read_text, "utf-8")
    ).splitlines()
    records = [json.loads(line) for line in exported]
    assert any(r["type"] == "connected" and r["userId"] == markup for r in records)
    assert any(r["type"] == "rest" for r in records)
    assert all({"seq", "node", "time", "type"} <= r.keys() for r in records)

    # Clear empties the page's list.
    await page.locator("#trace-clear").click()
    await expect(page.locator("#trace-list tr")).to_have_count(0)
    await page.screenshot(path=str(artifacts / "portal-cleared.png"))
    async with sdk(portal.service, "chat") as service:
        await service.send_to_all("after the clear", content_type="text/plain")
    await expect(trace_rows(page, "message-out", "after the clear")).to_have_count(1)

    # Log out: nothing of the session stays in the page, the cookie is gone, a reload
    # shows the login form again.
    await page.locator("#logout").click()
    await expect(page.locator("#login-key")).to_be_visible()
    for kept in ("#trace-list tr", "#tc-log li", "#hubs-list *", "#trace-filter-hub option"):
        await expect(page.locator(kept)).to_have_count(1 if kept.endswith("option") else 0)
    assert markup not in await page.evaluate("() => document.body.textContent")
    console.logged_in = False
    await page.reload()
    await expect(page.locator("#login-key")).to_be_visible()
    await expect(page.locator("#app")).to_be_hidden()

    assert console.errors == []


async def test_a_wrong_key_is_refused_and_the_simple_test_client_chats(
    browser: Browser, portal: Portal
) -> None:
    page, console = await open_portal(browser, portal)
    await page.locator("#login-key").fill("not-the-key")
    await page.locator("#login-submit").click()
    await expect(page.locator("#login-error")).to_have_text(re.compile("not an access key"))
    await expect(page.locator("#app")).to_be_hidden()
    # Chromium logs the refused login (401) as an error: the one expected.
    assert [e for e in console.errors if "/portal/api/login" not in e] == []
    assert len(console.errors) == 1
    console.errors.clear()
    await log_in(page, console)

    # A plain WebSocket in the chat: the app greets it, and its raw text is a `message`.
    await show_tab(page, "client")
    await page.locator("#tc-hub").fill("chat")
    await page.locator("#tc-user").fill("carol")
    await page.locator("#tc-protocol").select_option("")
    await page.locator("#tc-connect").click()
    await expect(page.locator("#tc-status")).to_have_text("connected")
    log = page.locator("#tc-log")
    await expect(log).to_contain_text("[SYSTEM] carol joined.")
    # Groups need a subprotocol: those buttons stay off.
    await expect(page.locator("#tc-join")).to_be_disabled()
    await expect(page.locator("#tc-send-event")).to_be_disabled()
    await page.locator("#tc-data").fill("hi from a plain socket")
    await page.locator("#tc-send-raw").click()
    await expect(log).to_contain_text("[carol] hi from a plain socket")
    await page.locator("#tc-disconnect").click()
    await expect(page.locator("#tc-status")).to_have_text("disconnected")
    await show_tab(page, "trace")
    await expect(trace_rows(page, "disconnected", "carol")).to_have_count(1)
    # A record opens from the keyboard too.
    await trace_rows(page, "disconnected", "carol").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#record-detail")).to_contain_text("Close code 1000")

    assert console.errors == []


async def test_a_binary_event_is_replayed_as_bytes(browser: Browser, portal: Portal) -> None:
    page, console = await open_portal(browser, portal)
    await log_in(page, console)
    await show_tab(page, "client")
    await page.locator("#tc-hub").fill("echo")
    await page.locator("#tc-protocol").select_option("json.webpubsub.azure.v1")
    await page.locator("#tc-connect").click()
    await expect(page.locator("#tc-status")).to_have_text(re.compile("^connected"))
    await page.locator("#tc-datatype").select_option("binary")
    await page.locator("#tc-data").fill("/w==")  # the byte 0xff: not UTF-8
    await page.locator("#tc-send-event").click()
    await expect(page.locator("#tc-log")).to_contain_text('"data":"answer 1: 0xff"')

    await show_tab(page, "trace")
    row = trace_rows(page, "cloudevent", "azure.webpubsub.user.message")
    await row.click()
    await expect(page.locator("#record-detail")).to_contain_text("(binary, base64) /w==")
    await page.locator("#record-replay").click()
    await expect(page.locator("#replay-body")).to_have_value("/w==")
    await expect(page.locator("#replay-base64")).to_be_checked()
    await page.locator("#replay-body").fill("/v8=")  # 0xfe 0xff
    await page.locator("#replay-send").click()
    await expect(page.locator("#replay-new")).to_contain_text("answer 2: 0xfeff")
    await expect(page.locator("#replay-original")).to_contain_text("answer 1: 0xff")
    replayed = await portal.echo.next_request(lambda r: r.body == b"\xfe\xff")
    assert replayed.headers["content-type"] == "application/octet-stream"
    assert console.errors == []


async def test_two_nodes_in_one_page(
    browser: Browser, start_service: StartService, artifacts: Path
) -> None:
    bus = MemoryBus()
    first = await start_service(chat_hub(), backplane=MemoryBackplane(bus, wire=True))
    second = await start_service(chat_hub(), backplane=MemoryBackplane(bus, wire=True))
    a, b = first.node.node_id, second.node.node_id  # type: ignore[union-attr]
    page, console = await new_page(browser)
    await page.goto(f"{first.endpoint}/portal")
    await log_in(page, console)
    await expect(page.locator("#session-info")).to_contain_text("2 nodes")

    async with aiohttp.ClientSession() as http:
        # beta (on the other node) first: its records come by survey, later than alpha's.
        there, _ = await json_client(http, await client_url(second, user_id="beta"))
        here, _ = await json_client(http, await client_url(first, user_id="alpha"))
        # Connections of both nodes, each named by its node.
        await show_tab(page, "connections")
        await page.locator("#conn-hub").select_option("chat")
        await expect(page.locator("#conn-list tr")).to_have_count(2)
        await expect(page.locator("#conn-list tr", has_text="alpha")).to_contain_text(a)
        await expect(page.locator("#conn-list tr", has_text="beta")).to_contain_text(b)
        # The trace of both, merged.
        await show_tab(page, "trace")
        await expect(trace_rows(page, "connected", "beta")).to_contain_text(b)
        await expect(trace_rows(page, "connected", "alpha")).to_contain_text(a)
        await there.send_json({"type": "event", "event": "e", "dataType": "text", "data": "x"})
        await expect(trace_rows(page, "message-in", "beta")).to_contain_text(b)
        times = await page.locator("#trace-list tr td:first-child").evaluate_all(
            "cells => cells.map(cell => cell.title)"
        )
        assert times == sorted(times)  # merged by time, whichever node told first
        await page.screenshot(path=str(artifacts / "portal-two-nodes.png"))
        await here.close()
        await there.close()
    assert console.errors == []


async def test_a_node_restarted_under_its_id_is_traced_again(
    browser: Browser, start_service: StartService
) -> None:
    """The page keeps records by node, seq and time: a node that restarts under the same
    id counts its seq from 1 again, and its new records still show (the stream reconnects
    by itself)."""
    config = make_config(chat_hub(), port=free_port())
    config = dataclasses.replace(
        config, backplane=dataclasses.replace(config.backplane, node_id="n1")
    )
    first = await start_service(config=config)
    page, console = await new_page(browser)
    await page.goto(f"{first.endpoint}/portal")
    await log_in(page, console)
    await show_tab(page, "trace")
    async with sdk(first) as service:
        for _ in range(3):
            await service.send_to_all("before", content_type="text/plain")
    await expect(trace_rows(page, "rest")).to_have_count(3)
    await first.stop()
    await expect(page.locator("#trace-status")).not_to_have_text("live")
    second = await start_service(config=config)
    await expect(page.locator("#trace-status")).to_have_text("live", timeout=30_000)
    async with sdk(second) as service:
        await service.send_to_all("after", content_type="text/plain")
    assert second.trace is not None and second.trace.last_seq <= 3  # counted from 1 again
    await expect(trace_rows(page, "rest")).to_have_count(4)


async def test_the_test_client_connects_with_a_public_endpoint_and_shows_a_refusal(
    browser: Browser, start_service: StartService, handler_app: EventHandlerApp
) -> None:
    """With ``server.public_endpoint`` elsewhere the page still connects (the portal's
    token URL is the page's origin, which its CSP allows); a handshake the service
    refuses ends in ``#tc-log`` as a failure (never with the token), not in
    "connecting…" forever."""

    handler_app.responder = refuse_connect
    service = await start_service(
        chat_hub(name="open"),
        chat_hub(handler_app.url, name="locked", system=frozenset({"connect"})),
        public_endpoint="http://pubsub.example.test",
    )
    page, console = await new_page(browser)
    await page.goto(f"http://127.0.0.1:{service.port}/portal")
    await log_in(page, console)
    await show_tab(page, "client")
    status, log = page.locator("#tc-status"), page.locator("#tc-log")

    await page.locator("#tc-hub").fill("open")
    await page.locator("#tc-connect").click()
    await expect(status).to_have_text(re.compile("^connected"))
    await page.locator("#tc-disconnect").click()
    await expect(status).to_have_text("disconnected")

    await page.locator("#tc-hub").fill("locked")
    await page.locator("#tc-connect").click()
    await expect(status).to_have_text("disconnected (could not connect)")
    await expect(log).to_contain_text("could not connect to")
    assert "access_token" not in (await log.text_content() or "")
    # Chromium itself logs the refused handshake (a 401) on the console: the one expected.
    assert [e for e in console.errors if "WebSocket connection to" not in e] == []
