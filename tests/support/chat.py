"""Helpers for tests that drive a chat app (the tutorial's, or an example) as a browser would."""

from __future__ import annotations

import asyncio

import aiohttp


async def negotiate(http: aiohttp.ClientSession, chat_url: str, user: str) -> str:
    """The client access URL the chat app's ``/negotiate`` gives ``user``."""
    async with http.get(f"{chat_url}/negotiate", params={"id": user}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def next_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> str:
    """The next message on ``ws``, which must be a text frame."""
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    assert isinstance(msg.data, str)
    return msg.data
