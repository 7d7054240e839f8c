"""Shared fixtures for the chat app's end-to-end tests.

``chat_url`` runs the real service and the chat app wired to each other: the hub
``chat`` delivers every user event and the ``connected`` system event to the app's
``/eventhandler``, and the app talks back to the service with the official SDK.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from tests.support.chat import chat_app_socket
from webpubsub.chat.app import create_chat_app

ACCESS_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
HUB = "chat"


@pytest.fixture
async def chat_url() -> AsyncIterator[str]:
    """The chat app's base URL (no trailing slash), in front of a running service."""
    # Imported here so that the app-only tests run without the service.
    from webpubsub.config import default_config
    from webpubsub.core.settings import HubSettings
    from webpubsub.server.app import ServiceRunner

    sock, handler = chat_app_socket()
    config = dataclasses.replace(
        default_config(), hubs={HUB: HubSettings(name=HUB, event_handlers=(handler,))}
    ).with_overrides(host="127.0.0.1", port=0, access_keys=(ACCESS_KEY,))
    service = ServiceRunner(config, advertised_host="127.0.0.1")
    await service.start()
    app_runner = web.AppRunner(create_chat_app(service.connection_string, hub=HUB))
    try:
        await app_runner.setup()
        await web.SockSite(app_runner, sock).start()
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await app_runner.cleanup()
        sock.close()
        await service.stop()
