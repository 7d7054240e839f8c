"""Two chat users against the real service, with plain WebSocket clients.

The service calls the chat app's ``/eventhandler``; the app answers by
broadcasting through the service's REST API with the official SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.chat import negotiate, next_text


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_two_users_see_each_other_join_and_talk(
    session: aiohttp.ClientSession, chat_url: str
) -> None:
    alice_url = await negotiate(session, chat_url, "alice")
    async with session.ws_connect(alice_url) as alice:
        assert alice.protocol is None
        # Everyone is told about a join, including the one who joined.
        assert await next_text(alice) == "[SYSTEM] alice joined."

        bob_url = await negotiate(session, chat_url, "bob")
        async with session.ws_connect(bob_url) as bob:
            assert await next_text(bob) == "[SYSTEM] bob joined."
            assert await next_text(alice) == "[SYSTEM] bob joined."

            # A message reaches everyone once, the sender included (the app
            # answers the event with an empty 200, so nothing else comes back).
            await alice.send_str("hi")
            assert await next_text(alice) == "[alice] hi"
            assert await next_text(bob) == "[alice] hi"

            await bob.send_str("hello, ünïcode ✓")
            assert await next_text(bob) == "[bob] hello, ünïcode ✓"
            assert await next_text(alice) == "[bob] hello, ünïcode ✓"


async def test_negotiated_url_is_refused_without_its_token(
    session: aiohttp.ClientSession, chat_url: str
) -> None:
    url = await negotiate(session, chat_url, "mallory")
    base = url.split("?", 1)[0]
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await session.ws_connect(base)
    assert caught.value.status == 401
