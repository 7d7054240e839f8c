"""The chat examples (FastAPI and Flask) and the tutorial's app against the real service.

Each example's ``create_app`` is loaded from its file, and the tutorial's whole
``server.py`` from ``docs/tutorial.md``, as printed; each is served on a real
server (uvicorn or werkzeug) and wired to a service whose hub ``chat`` sends every
user event and ``connected`` to the app's ``/eventhandler``. Raw WebSocket clients
then chat, as the browser tabs of the tutorial would.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import StartService
from tests.sdk.servers import LateWSGIApp, serve_asgi, serve_wsgi
from tests.support.chat import negotiate, next_text, two_users_chat
from tests.support.service import chat_hub
from webpubsub.core.settings import HubSettings
from webpubsub.server.app import ServiceRunner

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TUTORIAL = ROOT / "docs" / "tutorial.md"
HUB = "chat"
WAIT = 10.0


def load_example(name: str, path: Path | None = None) -> ModuleType:
    path = path or EXAMPLES / name / "app.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_hub(app_port: int) -> HubSettings:
    """The hub as the tutorial configures it, pointing at the example app on ``app_port``."""
    url = f"http://127.0.0.1:{app_port}/eventhandler"
    return chat_hub(url, name=HUB, system=frozenset({"connected"}), timeout=WAIT)


@dataclass(frozen=True)
class Chat:
    url: str  # the app's
    connection_string: str  # the service's


def tutorial_server_py() -> str:
    """The code block after "The whole `server.py`:" in the tutorial."""
    text = TUTORIAL.read_text("utf-8")
    found = re.search(r"The whole `server.py`:\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, "the tutorial has no whole server.py"
    return found.group(1)


@contextlib.asynccontextmanager
async def fastapi_chat(start_service: StartService, **_: Any) -> AsyncIterator[Chat]:
    # The app needs the service's connection string and the service the app's URL:
    # bind the app's socket first.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        runner = await start_service(example_hub(sock.getsockname()[1]))
        app = load_example("chat_fastapi").create_app(runner.connection_string, hub=HUB)
        async with serve_asgi(app, sock) as url:
            yield Chat(url, runner.connection_string)


@contextlib.asynccontextmanager
async def flask_chat(start_service: StartService, **_: Any) -> AsyncIterator[Chat]:
    late = LateWSGIApp()
    async with serve_wsgi(late) as url:
        runner: ServiceRunner = await start_service(example_hub(int(url.rsplit(":", 1)[1])))
        app = load_example("chat_flask").create_app(runner.connection_string, hub=HUB)
        late.target = app
        try:
            yield Chat(url, runner.connection_string)
        finally:
            app.extensions["webpubsub_service"].close()


@contextlib.asynccontextmanager
async def tutorial_chat(
    start_service: StartService, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[Chat]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        runner = await start_service(example_hub(sock.getsockname()[1]))
        monkeypatch.setenv("WebPubSubConnectionString", runner.connection_string)
        path = tmp_path / "server.py"
        path.write_text(tutorial_server_py(), "utf-8")
        server = load_example("tutorial", path)
        try:
            async with serve_asgi(server.app, sock) as url:
                yield Chat(url, runner.connection_string)
        finally:
            await server.service.close()


CHATS: dict[str, Callable[..., contextlib.AbstractAsyncContextManager[Chat]]] = {
    "fastapi": fastapi_chat,
    "flask": flask_chat,
    "tutorial": tutorial_chat,
}


@pytest.fixture(params=list(CHATS))
async def chat(
    request: pytest.FixtureRequest,
    start_service: StartService,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> AsyncIterator[Chat]:
    """Each chat app: the two examples and the tutorial's."""
    serve = CHATS[request.param]
    async with serve(start_service, monkeypatch=monkeypatch, tmp_path=tmp_path) as served:
        yield served


@pytest.fixture(params=["fastapi", "flask"])
async def chat_url(
    request: pytest.FixtureRequest, start_service: StartService
) -> AsyncIterator[str]:
    """Each example app (the tutorial's serves its page from the working directory)."""
    async with CHATS[request.param](start_service) as served:
        yield served.url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def anonymous_client_url(chat: Chat) -> str:
    """A client access URL for a connection without a user (not from ``/negotiate``)."""
    async with WebPubSubServiceClient.from_connection_string(
        chat.connection_string, hub=HUB
    ) as service:
        token = await service.get_client_access_token()
    return str(token["url"])


async def test_two_users_chat(http: aiohttp.ClientSession, chat: Chat) -> None:
    await two_users_chat(http, chat.url)


async def test_a_connection_without_a_user_is_shown_with_an_empty_name(
    http: aiohttp.ClientSession, chat: Chat
) -> None:
    async with http.ws_connect(await negotiate(http, chat.url, "alice")) as alice:
        assert await next_text(alice) == "[SYSTEM] alice joined."
        async with http.ws_connect(await anonymous_client_url(chat)) as anonymous:
            assert await next_text(anonymous) == "[SYSTEM]  joined."
            assert await next_text(alice) == "[SYSTEM]  joined."
            await anonymous.send_str("who am I?")
            assert await next_text(anonymous) == "[] who am I?"
            assert await next_text(alice) == "[] who am I?"


async def test_a_binary_frame_is_broadcast_as_text_and_keeps_the_sender(
    http: aiohttp.ClientSession, chat: Chat
) -> None:
    async with http.ws_connect(await negotiate(http, chat.url, "alice")) as alice:
        assert await next_text(alice) == "[SYSTEM] alice joined."
        # Not UTF-8: decoded with replacement characters, not a failed event (which
        # would make the service drop the sender).
        await alice.send_bytes(b"caf\xe9 \xff\xfe ok")
        assert await next_text(alice) == "[alice] caf\ufffd \ufffd\ufffd ok"
        await alice.send_str("still here")
        assert await next_text(alice) == "[alice] still here"


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


async def test_unsigned_events_are_refused(http: aiohttp.ClientSession, chat: Chat) -> None:
    chat_url = chat.url
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
