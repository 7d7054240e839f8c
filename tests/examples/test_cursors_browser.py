"""The collaborative cursors example in headless Chromium, against the real service.

Two pages (alice's and bob's, each in a browser context of its own) load the official
``@azure/web-pubsub-client`` 1.1.0 browser build from the example app (its ``/vendor/``
route over ``tests/js/node_modules``), ``invokeEvent("hello")`` on start, and share
their pointers over the board as group streams. The tests wait on the DOM (Playwright's
expectations, with timeouts), never sleep, and check neither page logged an error.
Uses the system's Chromium (``/usr/bin/chromium``); no browser download is involved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.conftest import StartService
from tests.examples.cursors import Cursors, cursors_module, serve_cursors
from tests.integration.test_js_clients import node  # noqa: F401 (installs tests/js/node_modules)
from tests.server.test_portal_browser import Console
from tests.support.browser import chromium

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 15_000
IDLE_TIMEOUT_MS = 1_500
"""The idle test's stream timeout: short, but well apart from the pages' own fallback
(three times it) so the service's ``IdleTimeout`` is the one seen."""
EXPECT_DEFAULT_MS = 5_000
"""Playwright's own timeout of an expectation, restored after each test."""
VIEWPORT = {"width": 1000, "height": 800}
PALETTE = cursors_module().PALETTE


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        async with chromium() as b:
            yield b
    finally:
        expect.set_options(timeout=EXPECT_DEFAULT_MS)


@pytest.fixture
async def cursors(node: str, start_service: StartService) -> AsyncIterator[Cursors]:  # noqa: F811
    # A long idle timeout: a pointer the test leaves resting does not time out.
    async with serve_cursors(start_service, idle_timeout_ms=120_000) as served:
        yield served


class Visitor:
    """One person's page and what it logged."""

    def __init__(self, page: Page, console: Console) -> None:
        self.page = page
        self.console = console
        self.board = page.locator("#board")
        self.cursors = page.locator("#cursors .cursor")

    async def point_at(self, fx: float, fy: float) -> None:
        """Move the pointer to (fx, fy), as fractions of the board, in a few steps."""
        box = await self.board.bounding_box()
        assert box is not None
        await self.page.mouse.move(
            box["x"] + fx * box["width"], box["y"] + fy * box["height"], steps=4
        )

    async def leave_board(self) -> None:
        box = await self.board.bounding_box()
        assert box is not None
        await self.page.mouse.move(box["x"] + box["width"] / 2, box["y"] - 30, steps=3)

    async def sees_cursor_at(self, user: str, fx: float, fy: float) -> None:
        """Wait until ``user``'s cursor is drawn centred on (fx, fy) of this board."""
        await expect(self.cursors.filter(has_text=user)).to_have_count(1)
        await self.page.wait_for_function(
            """([user, fx, fy]) => {
                const board = document.getElementById("board").getBoundingClientRect();
                const cursor = [...document.querySelectorAll("#cursors .cursor")]
                    .find((c) => c.dataset.user === user);
                if (!cursor) return false;
                const box = cursor.getBoundingClientRect();
                const x = box.left + box.width / 2, y = box.top + box.height / 2;
                return Math.abs(x - (board.left + fx * board.width)) <= 1.5
                    && Math.abs(y - (board.top + fy * board.height)) <= 1.5;
            }""",
            arg=[user, fx, fy],
            timeout=TIMEOUT_MS,
        )

    def no_errors(self) -> None:
        assert self.console.errors == []


async def visit(browser: Browser, cursors: Cursors, name: str) -> Visitor:
    context = await browser.new_context(viewport=VIEWPORT)
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    console = Console(page)
    console.logged_in = True  # the page has no login: every 4xx is an error
    page.on("requestfailed", lambda r: console.errors.append(f"request failed: {r.url}"))
    await page.goto(f"{cursors.url}/?name={name}")
    await expect(page.locator("body")).to_have_attribute("data-state", "ready")
    return Visitor(page, console)


async def test_the_hello_invocation_and_the_cursors_of_others(
    browser: Browser, cursors: Cursors
) -> None:
    alice = await visit(browser, cursors, "alice")
    await expect(alice.page.locator("#me")).to_have_text("You are alice")
    await expect(alice.page.locator("#me")).to_have_attribute("data-colour", PALETTE[0])
    await expect(alice.page.locator("#here")).to_have_text("nobody yet")
    bob = await visit(browser, cursors, "bob")
    await expect(bob.page.locator("#me")).to_have_text("You are bob")
    await expect(bob.page.locator("#here li[data-name='alice']")).to_have_count(1)
    # The invocations reached the app server: both are in its room.
    assert sorted(m.name for m in cursors.room.members.values()) == ["alice", "bob"]

    # alice's pointer moves over her board: bob sees her cursor, where she points.
    await alice.point_at(0.25, 0.5)
    await expect(alice.page.locator("#sending")).to_have_attribute("data-state", "open")
    await bob.sees_cursor_at("alice", 0.25, 0.5)
    await alice.point_at(0.75, 0.2)
    await bob.sees_cursor_at("alice", 0.75, 0.2)
    cursor = bob.cursors.filter(has_text="alice")
    await expect(cursor).to_have_css("background-color", "rgb(230, 25, 75)")  # PALETTE[0]
    await expect(alice.cursors).to_have_count(0)  # her own stream is not echoed to her
    first_stream = await cursor.get_attribute("data-stream")

    # Both move at once: each sees the other.
    await bob.point_at(0.1, 0.9)
    await alice.sees_cursor_at("bob", 0.1, 0.9)
    await bob.sees_cursor_at("alice", 0.75, 0.2)

    # alice's pointer leaves the board: her stream ends, bob's cursor of her goes.
    await alice.leave_board()
    await expect(alice.page.locator("#sending")).to_have_attribute("data-state", "idle")
    await expect(bob.cursors.filter(has_text="alice")).to_have_count(0)
    await expect(bob.page.locator("#log li").first).to_have_text("alice's cursor is gone (ended)")
    await alice.sees_cursor_at("bob", 0.1, 0.9)  # bob's stream goes on

    # She comes back: a new stream, a new cursor.
    await alice.point_at(0.5, 0.5)
    await bob.sees_cursor_at("alice", 0.5, 0.5)
    assert await bob.cursors.filter(has_text="alice").get_attribute("data-stream") != first_stream

    # alice closes her page: bob's cursor of her goes (the service ends her stream).
    await alice.page.context.close()
    await expect(bob.cursors.filter(has_text="alice")).to_have_count(0)
    await expect(bob.page.locator("#log li").first).to_have_text(
        "alice's cursor is gone (Cancelled)"
    )
    alice.no_errors()
    bob.no_errors()


async def test_a_resting_pointers_stream_times_out(
    browser: Browser,
    node: str,  # noqa: F811
    start_service: StartService,
) -> None:
    async with serve_cursors(start_service, idle_timeout_ms=IDLE_TIMEOUT_MS) as cursors:
        alice = await visit(browser, cursors, "alice")
        bob = await visit(browser, cursors, "bob")
        await alice.point_at(0.3, 0.3)
        await bob.sees_cursor_at("alice", 0.3, 0.3)
        # The pointer rests: after IDLE_TIMEOUT_MS the service closes the stream.
        await expect(alice.page.locator("#sending")).to_have_text(
            "closed by the service: IdleTimeout"
        )
        await expect(bob.cursors).to_have_count(0)
        await expect(bob.page.locator("#log li").first).to_have_text(
            "alice's cursor is gone (IdleTimeout)"
        )
        # The service's timeout (the page's own fallback is three times as long).
        await expect(bob.page.locator("#log li").first).to_have_attribute(
            "title", f"No data or keep-alive within {IDLE_TIMEOUT_MS} ms."
        )
        # It moves again: a new stream.
        await alice.point_at(0.6, 0.4)
        await expect(alice.page.locator("#sending")).to_have_attribute("data-state", "open")
        await bob.sees_cursor_at("alice", 0.6, 0.4)
        alice.no_errors()
        bob.no_errors()
