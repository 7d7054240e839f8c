"""Two chat users against the real service, with plain WebSocket clients.

The service calls the chat app's ``/eventhandler``; the app answers by
broadcasting through the service's REST API with the official SDK.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.chat import negotiate, two_users_chat


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_two_users_see_each_other_join_and_talk(
    session: aiohttp.ClientSession, chat_url: str
) -> None:
    await two_users_chat(session, chat_url)


async def test_negotiated_url_is_refused_without_its_token(
    session: aiohttp.ClientSession, chat_url: str
) -> None:
    url = await negotiate(session, chat_url, "mallory")
    base = url.split("?", 1)[0]
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await session.ws_connect(base)
    assert caught.value.status == 401
