"""A real event-handler app for tests: records every webhook and answers as told.

It is an aiohttp server on 127.0.0.1, port 0.  Tests set ``responder`` (a function
from the recorded request to a response) and wait on ``next_request`` with a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def ce_type(self) -> str:
        return self.headers.get("ce-type", "")

    @property
    def event_name(self) -> str:
        return self.headers.get("ce-eventName", "")


Responder = Callable[[Recorded], Awaitable[web.StreamResponse] | web.StreamResponse]


def default_responder(req: Recorded) -> web.StreamResponse:
    if req.method in ("OPTIONS", "GET"):
        return web.Response(headers={"WebHook-Allowed-Origin": "*"})
    return web.Response(status=204)


def refuse_connect(req: Recorded) -> web.StreamResponse:
    """Answers as :func:`default_responder`, but every ``connect`` event with 401."""
    if req.ce_type == "azure.webpubsub.sys.connect":
        return web.Response(status=401, text="not you")
    return default_responder(req)


def held_until(release: asyncio.Event, event: str = "connect") -> Responder:
    """Answers as :func:`default_responder`, holding each ``event`` until ``release`` is set."""

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == event:
            await release.wait()
        return default_responder(req)

    return responder


class EventHandlerApp:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.responder: Responder = default_responder
        self._queue: asyncio.Queue[Recorded] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/eventhandler"

    async def start(self) -> None:
        """Start serving: on a free port the first time, on the same port after :meth:`stop`
        (a handler that went down and came back)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # An app server must accept header lines a little over 8 KiB to receive an 8 KiB
        # ce-connectionState (aiohttp refuses lines over 8190 bytes by default).
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=0.5, max_field_size=16 * 1024
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=request.query_string,
            headers=CIMultiDict(request.headers),
            body=await request.read(),
        )
        self.requests.append(rec)
        self._queue.put_nowait(rec)
        result = self.responder(rec)
        if isinstance(result, web.StreamResponse):
            return result
        return await result

    async def next_request(
        self, predicate: Callable[[Recorded], bool] | None = None, timeout: float = 5.0
    ) -> Recorded:
        """The next recorded request matching ``predicate`` (skipping others)."""
        async with asyncio.timeout(timeout):
            while True:
                rec = await self._queue.get()
                if predicate is None or predicate(rec):
                    return rec

    async def next_event(self, ce_type_suffix: str, timeout: float = 5.0) -> Recorded:
        return await self.next_request(
            lambda r: r.method == "POST" and r.ce_type.endswith(ce_type_suffix), timeout
        )


def posts(app: EventHandlerApp, event: str, connection_id: str | None = None) -> list[Recorded]:
    """The events named ``event`` that ``app`` received (of one connection, if given)."""
    return [
        r
        for r in app.requests
        if r.method == "POST"
        and r.event_name == event
        and (connection_id is None or r.headers.get("ce-connectionId") == connection_id)
    ]
