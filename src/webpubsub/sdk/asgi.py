"""ASGI middleware: the event handler in front of any ASGI app (Starlette, FastAPI).

Only a translation: the scope's method, path and headers go to the core, which
reads the body through this module only once the headers pass its checks, and no
more of it than it asks for; the core's :class:`~webpubsub.sdk.http.HttpResponse`
becomes ASGI messages. Everything the handler does not claim goes to the wrapped
app untouched (body unread)::

    app = FastAPI()
    app.add_middleware(ASGIMiddleware, handler=handler)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from webpubsub.sdk.handler import WebPubSubEventHandler
from webpubsub.sdk.http import Headers

__all__ = ["ASGIApp", "ASGIMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGIMiddleware:
    """Serves ``handler``'s requests; passes every other request to ``app``."""

    def __init__(self, app: ASGIApp, handler: WebPubSubEventHandler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers.from_raw(scope.get("headers", ()))
        if not self.handler.matches(scope["method"], scope["path"], headers):
            await self.app(scope, receive, send)
            return

        async def read_body(limit: int) -> bytes | None:
            return await _read_body(receive, limit)

        response = await self.handler.process_stream(
            scope["method"], scope["path"], headers, read_body
        )
        if response is None:  # the client went away
            return
        raw_headers = [(k.encode("latin-1"), v.encode("utf-8")) for k, v in response.headers]
        raw_headers.append((b"content-length", str(len(response.body)).encode("ascii")))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": raw_headers}
        )
        await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The body, or its first ``limit`` bytes or more: no chunk is awaited past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit or not message.get("more_body", False):
            return b"".join(chunks)
