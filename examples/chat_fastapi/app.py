"""The tutorial's chat app on FastAPI, with the webpubsub SDK's event handler.

Run it (the service must be running, with the hub ``chat`` wired to
``http://localhost:5000/eventhandler``, see README.md)::

    python examples/chat_fastapi/app.py "<connection string>"

``GET /`` is the chat page, ``GET /negotiate?id=<user>`` gives a client access URL,
and the SDK's ASGI middleware answers the service's webhooks at ``/eventhandler``.
"""

from __future__ import annotations

import importlib.resources
import io
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from azure.core.exceptions import AzureError
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from webpubsub.sdk import (
    ASGIMiddleware,
    ConnectedRequest,
    EventHandlerError,
    UserEventRequest,
    WebPubSubEventHandler,
)

log = logging.getLogger("chat_fastapi")

INDEX_HTML = (importlib.resources.files("webpubsub.chat") / "static" / "index.html").read_text(
    "utf-8"
)


def create_app(connection_string: str, hub: str = "chat") -> FastAPI:
    service = WebPubSubServiceClient.from_connection_string(connection_string, hub=hub)

    async def broadcast(text: str) -> None:
        try:
            # Bytes, not str: azure-core would send the character count as Content-Length.
            await service.send_to_all(io.BytesIO(text.encode("utf-8")), content_type="text/plain")
        except AzureError as exc:
            log.warning("broadcast failed: %s", exc)
            raise EventHandlerError(502, "broadcast failed") from None

    # The event handler: verifies the service's signature with the connection string's key.
    handler = WebPubSubEventHandler.from_connection_string(connection_string, hub)

    @handler.on_connected
    async def connected(request: ConnectedRequest) -> None:
        user_id = request.context.user_id or ""  # a connection may have no user
        log.info("%s connected", user_id)
        await broadcast(f"[SYSTEM] {user_id} joined.")

    @handler.on_event
    async def message(request: UserEventRequest) -> None:
        if request.context.event_name == "message":
            text = request.body.decode("utf-8", errors="replace")
            await broadcast(f"[{request.context.user_id or ''}] {text}")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await service.close()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(ASGIMiddleware, handler=handler)

    @app.get("/", response_class=HTMLResponse)
    @app.get("/index.html", response_class=HTMLResponse)
    async def index() -> str:
        return INDEX_HTML

    @app.get("/negotiate", response_class=PlainTextResponse)
    async def negotiate(request: Request) -> PlainTextResponse:
        ids = request.query_params.getlist("id")
        if len(ids) != 1 or not ids[0]:
            return PlainTextResponse("missing user id", status_code=400)
        token = await service.get_client_access_token(user_id=ids[0])
        return PlainTextResponse(token["url"])

    return app


if __name__ == "__main__":
    import uvicorn

    # The same variable as `webpubsub chat` reads.
    env = os.environ.get("WebPubSubConnectionString", "")  # noqa: SIM112
    connection_string = sys.argv[1] if len(sys.argv) > 1 else env
    if not connection_string:
        sys.exit("usage: python examples/chat_fastapi/app.py '<connection string>'")
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(create_app(connection_string), host="127.0.0.1", port=5000)
