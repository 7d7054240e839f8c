"""The chat page in headless Chromium: two users, two pages, messages on both.

Uses the system's Chromium (``/usr/bin/chromium``) through Playwright's API; no
browser download is involved.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from tests.support.browser import chromium

pytestmark = pytest.mark.e2e

TIMEOUT_MS = 15_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as b:
        yield b


async def _open_chat(browser: Browser, chat_url: str, name: str) -> Page:
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    # The name comes from the URL, so no prompt() may appear (Playwright would
    # dismiss it, and the page would then stay disconnected).
    dialogs: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    await page.goto(f"{chat_url}/?name={name}")
    status = page.locator("#status")
    await expect(status).to_have_text(re.compile(r"^(dis)?connected$"), timeout=TIMEOUT_MS)
    assert dialogs == []
    await expect(status).to_have_text("connected", timeout=TIMEOUT_MS)
    return page


async def _say(page: Page, text: str) -> None:
    box = page.locator("#message")
    await box.fill(text)
    await box.press("Enter")
    await expect(box).to_have_value("", timeout=TIMEOUT_MS)


async def test_two_users_chat_in_the_browser(browser: Browser, chat_url: str) -> None:
    alice = await _open_chat(browser, chat_url, "alice")
    await expect(alice.get_by_role("heading", level=1)).to_have_text("Web PubSub Chat")
    alice_lines = alice.locator("#messages p")
    await expect(alice_lines).to_have_text(["[SYSTEM] alice joined."], timeout=TIMEOUT_MS)

    bob = await _open_chat(browser, chat_url, "bob")
    bob_lines = bob.locator("#messages p")
    await expect(bob_lines).to_have_text(["[SYSTEM] bob joined."], timeout=TIMEOUT_MS)
    await expect(alice_lines).to_have_text(
        ["[SYSTEM] alice joined.", "[SYSTEM] bob joined."], timeout=TIMEOUT_MS
    )

    await _say(alice, "hi")
    await expect(alice_lines.last).to_have_text("[alice] hi", timeout=TIMEOUT_MS)
    await expect(bob_lines.last).to_have_text("[alice] hi", timeout=TIMEOUT_MS)

    await _say(bob, "hello")
    await expect(alice_lines).to_have_text(
        ["[SYSTEM] alice joined.", "[SYSTEM] bob joined.", "[alice] hi", "[bob] hello"],
        timeout=TIMEOUT_MS,
    )
    await expect(bob_lines).to_have_text(
        ["[SYSTEM] bob joined.", "[alice] hi", "[bob] hello"], timeout=TIMEOUT_MS
    )


async def test_markup_in_messages_is_shown_as_text(browser: Browser, chat_url: str) -> None:
    page = await _open_chat(browser, chat_url, "eve")
    lines = page.locator("#messages p")
    await expect(lines).to_have_text(["[SYSTEM] eve joined."], timeout=TIMEOUT_MS)

    await _say(page, "<b id=injected>bold</b>")
    await expect(lines.last).to_have_text("[eve] <b id=injected>bold</b>", timeout=TIMEOUT_MS)
    await expect(page.locator("#injected")).to_have_count(0)
