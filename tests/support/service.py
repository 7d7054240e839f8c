"""What most tests need of a running service: a hub's settings, the official service SDK
pointed at it (aio, or sync and aio alike through :class:`Sdk`), and a client URL that SDK
issues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from azure.messaging.webpubsubservice import WebPubSubServiceClient as SyncClient
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from webpubsub.core.settings import EventHandlerSettings, HubSettings
from webpubsub.server.app import ServiceRunner

ALL_SYSTEM_EVENTS = frozenset({"connect", "connected", "disconnected"})

Member = tuple[str, str | None]
"""(connectionId, userId) of a listed group member."""


def chat_hub(
    url: str | None = None,
    *,
    name: str = "chat",
    anonymous: bool = False,
    pattern: str = "*",
    system: frozenset[str] = frozenset(),
    timeout: float = 5.0,
) -> HubSettings:
    """Hub ``name`` with one event handler at ``url`` (none without it)."""
    handlers: tuple[EventHandlerSettings, ...] = ()
    if url is not None:
        handler = EventHandlerSettings(
            url_template=url,
            user_event_pattern=pattern,
            system_events=system,
            timeout_seconds=timeout,
        )
        handlers = (handler,)
    return HubSettings(name=name, anonymous_connect=anonymous, event_handlers=handlers)


def sdk(runner: ServiceRunner, hub: str = "chat", **options: Any) -> WebPubSubServiceClient:
    """The official (aio) service client for ``hub`` of ``runner``."""
    return WebPubSubServiceClient.from_connection_string(
        runner.connection_string, hub=hub, **options
    )


async def client_url(runner: ServiceRunner, hub: str = "chat", **claims: Any) -> str:
    """The client URL the SDK issues (``.../client/hubs/{hub}?access_token=...``)."""
    async with sdk(runner, hub) as service:
        token = await service.get_client_access_token(**claims)
    url: str = token["url"]
    return url


class Sdk:
    """One SDK client, sync or aio, whose every method is awaited the same way."""

    def __init__(
        self, kind: str, connection_string: str, hub: str = "chat", **options: Any
    ) -> None:
        self.kind = kind
        cls = SyncClient if kind == "sync" else WebPubSubServiceClient
        self.client: Any = cls.from_connection_string(connection_string, hub=hub, **options)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.client, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.kind == "sync":
                return await asyncio.to_thread(method, *args, **kwargs)
            return await method(*args, **kwargs)

        return call

    async def pages(self, group: str, **kwargs: Any) -> list[list[Member]]:
        """``list_connections(group=...).by_page()``, every page, as (id, user) pairs."""
        if self.kind == "sync":

            def collect() -> list[list[Member]]:
                paged = self.client.list_connections(group=group, **kwargs)
                return [[(m.connection_id, m.user_id) for m in page] for page in paged.by_page()]

            return await asyncio.to_thread(collect)
        paged = self.client.list_connections(group=group, **kwargs)
        return [
            [(m.connection_id, m.user_id) async for m in page] async for page in paged.by_page()
        ]

    async def members(self, group: str, **kwargs: Any) -> list[Member]:
        """``list_connections`` iterated item by item."""
        if self.kind == "sync":

            def collect() -> list[Member]:
                paged = self.client.list_connections(group=group, **kwargs)
                return [(m.connection_id, m.user_id) for m in paged]

            return await asyncio.to_thread(collect)
        paged = self.client.list_connections(group=group, **kwargs)
        return [(m.connection_id, m.user_id) async for m in paged]

    async def aclose(self) -> None:
        if self.kind == "sync":
            self.client.close()
        else:
            await self.client.close()


JSON_SUBPROTOCOL = "json.webpubsub.azure.v1"


async def json_client(
    http: aiohttp.ClientSession, url: str, timeout: float = 5.0
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    """A ``json.webpubsub.azure.v1`` client at ``url`` and its connection id, once its
    ``connected`` message came: from then on every node's queries know it (a new simple
    client is known to other nodes only eventually, docs/how-to/scale-out.md)."""
    ws = await http.ws_connect(url, protocols=(JSON_SUBPROTOCOL,))
    connected = await ws.receive_json(timeout=timeout)
    assert connected["event"] == "connected", connected
    return ws, str(connected["connectionId"])


async def next_data(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> object:
    """The ``data`` of the next message a JSON-subprotocol client gets."""
    frame = await ws.receive_json(timeout=timeout)
    assert frame["type"] == "message", frame
    return frame["data"]


class GroupInbox:
    """What a client SDK's group-message callback got, as (data, sequenceId) in order."""

    def __init__(self) -> None:
        self.received: list[tuple[Any, int | None]] = []
        self._arrived = asyncio.Condition()

    async def on_group(self, args: Any) -> None:
        """Subscribe this to ``CallbackType.GROUP_MESSAGE``."""
        async with self._arrived:
            self.received.append((args.data, args.sequence_id))
            self._arrived.notify_all()

    async def wait_for(self, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.received) >= count)
