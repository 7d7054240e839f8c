"""ASGI middleware: the event handler in front of any ASGI app (Starlette, FastAPI).

Only a translation: the scope and body become an
:class:`~webpubsub.sdk.http.HttpRequest`, the core's
:class:`~webpubsub.sdk.http.HttpResponse` becomes ASGI messages. Everything the
handler does not claim goes to the wrapped app untouched (body unread)::

    app = FastAPI()
    app.add_middleware(ASGIMiddleware, handler=handler)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from webpubsub.sdk.handler import WebPubSubEventHandler
from webpubsub.sdk.http import Headers, HttpRequest

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
        body = await _read_body(receive)
        if body is None:  # the client went away
            return
        response = await self.handler.process(
            HttpRequest(scope["method"], scope["path"], headers, body)
        )
        raw_headers = [(k.encode("latin-1"), v.encode("utf-8")) for k, v in response.headers]
        raw_headers.append((b"content-length", str(len(response.body)).encode("ascii")))
        await send(
            {"type": "http.response.start", "status": response.status, "headers": raw_headers}
        )
        await send({"type": "http.response.body", "body": response.body})


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
