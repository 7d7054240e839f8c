"""The tutorial's chat app on Flask, with the webpubsub SDK's event handler.

Run it (the service must be running, with the hub ``chat`` wired to
``http://localhost:5000/eventhandler``, see README.md)::

    python examples/chat_flask/app.py "<connection string>"

``GET /`` is the chat page, ``GET /negotiate?id=<user>`` gives a client access URL,
and the SDK's WSGI middleware answers the service's webhooks at ``/eventhandler``.
Everything here is synchronous, including the official service client.
"""

from __future__ import annotations

import importlib.resources
import io
import logging
import os
import sys

from azure.core.exceptions import AzureError
from azure.messaging.webpubsubservice import WebPubSubServiceClient
from flask import Flask, Response, request

from webpubsub.sdk import (
    ConnectedRequest,
    EventHandlerError,
    UserEventRequest,
    WebPubSubEventHandler,
    WSGIMiddleware,
)

log = logging.getLogger("chat_flask")

INDEX_HTML = (importlib.resources.files("webpubsub.chat") / "static" / "index.html").read_text(
    "utf-8"
)


def create_app(connection_string: str, hub: str = "chat") -> Flask:
    service = WebPubSubServiceClient.from_connection_string(connection_string, hub=hub)

    def broadcast(text: str) -> None:
        try:
            # Bytes, not str: azure-core would send the character count as Content-Length.
            service.send_to_all(io.BytesIO(text.encode("utf-8")), content_type="text/plain")
        except AzureError as exc:
            log.warning("broadcast failed: %s", exc)
            raise EventHandlerError(502, "broadcast failed") from None

    # The event handler: verifies the service's signature with the connection string's key.
    handler = WebPubSubEventHandler.from_connection_string(connection_string, hub)

    @handler.on_connected
    def connected(event: ConnectedRequest) -> None:
        user_id = event.context.user_id or ""  # a connection may have no user
        log.info("%s connected", user_id)
        broadcast(f"[SYSTEM] {user_id} joined.")

    @handler.on_event
    def message(event: UserEventRequest) -> None:
        if event.context.event_name == "message":
            text = event.body.decode("utf-8", errors="replace")
            broadcast(f"[{event.context.user_id or ''}] {text}")

    app = Flask(__name__)
    app.extensions["webpubsub_service"] = service
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, handler)  # type: ignore[method-assign]

    @app.get("/")
    @app.get("/index.html")
    def index() -> Response:
        return Response(INDEX_HTML, content_type="text/html; charset=utf-8")

    @app.get("/negotiate")
    def negotiate() -> Response:
        ids = request.args.getlist("id")
        if len(ids) != 1 or not ids[0]:
            return Response("missing user id", status=400, content_type="text/plain")
        token = service.get_client_access_token(user_id=ids[0])
        return Response(token["url"], content_type="text/plain")

    return app


if __name__ == "__main__":
    # The same variable as `webpubsub chat` reads.
    env = os.environ.get("WebPubSubConnectionString", "")  # noqa: SIM112
    connection_string = sys.argv[1] if len(sys.argv) > 1 else env
    if not connection_string:
        sys.exit("usage: python examples/chat_flask/app.py '<connection string>'")
    logging.basicConfig(level=logging.INFO)
    create_app(connection_string).run(host="127.0.0.1", port=5000)
