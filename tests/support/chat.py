"""Helpers for tests that drive a chat app (the tutorial's, or an example) as a browser would."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiohttp

from webpubsub.core.settings import EventHandlerSettings

ChatPair = tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]


def chat_app_socket() -> tuple[socket.socket, EventHandlerSettings]:
    """A socket bound for the chat app (127.0.0.1, a free port) and the event handler
    that sends a hub's events to it: every user event and ``connected``, as the tutorial
    configures it. The service needs the app's URL and the app the service's connection
    string: bind first, start the service, then serve the app on the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    handler = EventHandlerSettings(
        url_template=f"http://127.0.0.1:{sock.getsockname()[1]}/eventhandler",
        user_event_pattern="*",
        system_events=frozenset({"connected"}),
    )
    return sock, handler


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


async def two_users_chat(http: aiohttp.ClientSession, chat_url: str) -> None:
    """The tutorial's scenario: alice and bob join, each sees the joins, both talk.

    Everyone is told about a join, the one who joined included; a message reaches
    everyone once, the sender included (the app answers the event with no body).
    """
    async with two_users_chatting(http, chat_url):
        pass


@contextlib.asynccontextmanager
async def two_users_chatting(http: aiohttp.ClientSession, chat_url: str) -> AsyncIterator[ChatPair]:
    """:func:`two_users_chat`, then alice and bob, still connected, until the block ends."""
    async with http.ws_connect(await negotiate(http, chat_url, "alice")) as alice:
        assert alice.protocol is None  # a plain WebSocket, as in the tutorial
        assert await next_text(alice) == "[SYSTEM] alice joined."
        async with http.ws_connect(await negotiate(http, chat_url, "bob")) as bob:
            assert await next_text(bob) == "[SYSTEM] bob joined."
            assert await next_text(alice) == "[SYSTEM] bob joined."

            await alice.send_str("hi")
            assert await next_text(alice) == "[alice] hi"
            assert await next_text(bob) == "[alice] hi"

            await bob.send_str("hello, ünïcode ✓")
            assert await next_text(bob) == "[bob] hello, ünïcode ✓"
            assert await next_text(alice) == "[bob] hello, ünïcode ✓"
            yield alice, bob
