"""The chat examples (FastAPI and Flask) against the real service.

Each example's ``create_app`` is loaded from its file, served on a real server
(uvicorn or werkzeug), and wired to a service whose hub ``chat`` sends every user
event and ``connected`` to the app's ``/eventhandler``. Two raw WebSocket clients
then chat, as the two browser tabs of the tutorial would.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import pytest

from tests.conftest import StartService
from tests.sdk.servers import LateWSGIApp, serve_asgi, serve_wsgi
from webpubsub.server.app import ServiceRunner
from webpubsub.upstream.settings import EventHandlerSettings, HubSettings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HUB = "chat"
WAIT = 10.0


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / name / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chat_hub(app_port: int) -> HubSettings:
    handler = EventHandlerSettings(
        url_template=f"http://127.0.0.1:{app_port}/eventhandler",
        user_event_pattern="*",
        system_events=frozenset({"connected"}),
        timeout_seconds=WAIT,
    )
    return HubSettings(name=HUB, event_handlers=(handler,))


@contextlib.asynccontextmanager
async def fastapi_chat(start_service: StartService) -> AsyncIterator[str]:
    # The app needs the service's connection string and the service the app's URL:
    # bind the app's socket first.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        runner = await start_service(chat_hub(sock.getsockname()[1]))
        app = load_example("chat_fastapi").create_app(runner.connection_string, hub=HUB)
        async with serve_asgi(app, sock) as url:
            yield url


@contextlib.asynccontextmanager
async def flask_chat(start_service: StartService) -> AsyncIterator[str]:
    late = LateWSGIApp()
    async with serve_wsgi(late) as url:
        runner: ServiceRunner = await start_service(chat_hub(int(url.rsplit(":", 1)[1])))
        app = load_example("chat_flask").create_app(runner.connection_string, hub=HUB)
        late.target = app
        try:
            yield url
        finally:
            app.extensions["webpubsub_service"].close()


@pytest.fixture(params=["fastapi", "flask"])
async def chat_url(
    request: pytest.FixtureRequest, start_service: StartService
) -> AsyncIterator[str]:
    serve = fastapi_chat if request.param == "fastapi" else flask_chat
    async with serve(start_service) as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def negotiate(http: aiohttp.ClientSession, chat_url: str, user: str) -> str:
    async with http.get(f"{chat_url}/negotiate", params={"id": user}) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def next_text(ws: aiohttp.ClientWebSocketResponse) -> str:
    msg = await asyncio.wait_for(ws.receive(), WAIT)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    assert isinstance(msg.data, str)
    return msg.data


async def test_two_users_chat(http: aiohttp.ClientSession, chat_url: str) -> None:
    async with http.ws_connect(await negotiate(http, chat_url, "alice")) as alice:
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


async def test_the_page_and_negotiate(http: aiohttp.ClientSession, chat_url: str) -> None:
    for path in ("/", "/index.html"):
        async with http.get(f"{chat_url}{path}") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            assert "<h1>Web PubSub Chat</h1>" in await resp.text()
    for query in ("", "?id=", "?id=a&id=b"):
        async with http.get(f"{chat_url}/negotiate{query}") as resp:
            assert resp.status == 400
            assert await resp.text() == "missing user id"
    url = await negotiate(http, chat_url, "carol")
    assert url.startswith("ws://127.0.0.1:") and "/client/hubs/chat?access_token=" in url


async def test_unsigned_events_are_refused(http: aiohttp.ClientSession, chat_url: str) -> None:
    headers = {
        "Content-Type": "text/plain",
        "ce-specversion": "1.0",
        "ce-type": "azure.webpubsub.user.message",
        "ce-awpsversion": "1.0",
        "ce-hub": HUB,
        "ce-connectionId": "forged",
        "ce-eventName": "message",
        "ce-userId": "mallory",
        "WebHook-Request-Origin": "127.0.0.1",
    }
    async with http.post(f"{chat_url}/eventhandler", headers=headers, data=b"x") as resp:
        assert resp.status == 401
    probe = {"WebHook-Request-Origin": "127.0.0.1", "ce-awpsversion": "1.0"}
    async with http.options(f"{chat_url}/eventhandler", headers=probe) as resp:
        assert resp.status == 200
        assert resp.headers["WebHook-Allowed-Origin"] == "*"
