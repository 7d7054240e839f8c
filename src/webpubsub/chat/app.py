"""The chat app of the "Handle events" tutorial, written the way a Python user would.

It is plain user code: an aiohttp web app built on public APIs only (``aiohttp``,
the official ``azure-messaging-webpubsubservice`` client, and the event handler of
:mod:`webpubsub.sdk`), so the same file runs against this service or against Azure
Web PubSub. It

* serves the chat page (``GET /``),
* hands out client access URLs (``GET /negotiate?id=<user>``),
* answers the service's webhooks at ``/eventhandler`` with the SDK's
  :class:`~webpubsub.sdk.WebPubSubEventHandler`: the abuse-protection probe, the
  ``connected`` system event (announces the user to everyone) and the ``message``
  user event (broadcasts ``[user] text``). Events must be signed with the
  connection string's access key.

Run it with ``python -m webpubsub.chat.app "<connection string>"`` and configure
the hub ``chat`` with an event handler ``http://<this host>/eventhandler`` for the
user event ``message`` (or ``*``) and the system event ``connected``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import io
import logging
import socket
import sys

from aiohttp import web
from azure.core.exceptions import AzureError
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from webpubsub.sdk import (
    ConnectedRequest,
    EventHandlerError,
    Headers,
    HttpRequest,
    UserEventRequest,
    WebPubSubEventHandler,
)

__all__ = ["create_chat_app", "run_chat"]

log = logging.getLogger(__name__)

_SERVICE = web.AppKey("service", WebPubSubServiceClient)
_HANDLER = web.AppKey("handler", WebPubSubEventHandler)
_INDEX_HTML = web.AppKey("index_html", str)


def create_chat_app(
    connection_string: str, *, hub: str = "chat", ca_file: str | None = None
) -> web.Application:
    """The chat web app for ``hub``, talking to the service in ``connection_string``.

    ``ca_file`` is a PEM file of CAs to trust for an ``https://`` service instead of
    the default ones (azure-core's ``connection_verify``).
    """
    tls = {"connection_verify": ca_file} if ca_file else {}
    service = WebPubSubServiceClient.from_connection_string(connection_string, hub=hub, **tls)

    async def broadcast(text: str) -> None:
        """Send ``text`` to every connection in the hub."""
        try:
            # Pass the UTF-8 bytes: given a str, azure-core sets Content-Length to the
            # number of characters, which truncates any message with non-ASCII text.
            await service.send_to_all(io.BytesIO(text.encode("utf-8")), content_type="text/plain")
        except AzureError as exc:
            log.warning("broadcast failed: %s", exc)
            raise EventHandlerError(502, "broadcast failed") from None

    async def on_connected(request: ConnectedRequest) -> None:
        user_id = request.context.user_id or ""
        log.info("%s connected", user_id)
        await broadcast(f"[SYSTEM] {user_id} joined.")

    async def on_event(request: UserEventRequest) -> None:
        if request.context.event_name != "message":
            return
        text = request.body.decode("utf-8", errors="replace")
        await broadcast(f"[{request.context.user_id or ''}] {text}")
        # No reply: the sender sees its own message through the broadcast, like everyone.

    app = web.Application()
    app[_SERVICE] = service
    app[_HANDLER] = WebPubSubEventHandler.from_connection_string(
        connection_string, hub, on_connected=on_connected, on_event=on_event
    )
    app[_INDEX_HTML] = _read_index_html()
    app.router.add_get("/", _index)
    app.router.add_get("/index.html", _index)
    app.router.add_get("/negotiate", _negotiate)
    app.router.add_route("*", "/eventhandler", _event_handler)
    app.router.add_route("*", "/eventhandler/{tail:.*}", _event_handler)
    app.on_cleanup.append(_close_service_client)
    return app


def run_chat(connection_string: str, *, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the chat app until interrupted (Ctrl+C); prints the page's address."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(create_chat_app(connection_string), host, port))


async def start_chat_on_socket(
    connection_string: str, sock: socket.socket, *, hub: str = "chat", ca_file: str | None = None
) -> web.AppRunner:
    """Serve the chat app on an already bound socket; ``await runner.cleanup()`` stops it."""
    runner = web.AppRunner(create_chat_app(connection_string, hub=hub, ca_file=ca_file))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


async def _serve(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        for address in runner.addresses:
            bound_host, bound_port = address[0], address[1]
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            print(f"Chat app running: open http://{shown}:{bound_port}/ in a browser", flush=True)
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def _read_index_html() -> str:
    package = __package__ or __name__
    return (importlib.resources.files(package) / "static" / "index.html").read_text("utf-8")


async def _close_service_client(app: web.Application) -> None:
    await app[_SERVICE].close()


async def _index(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[_INDEX_HTML],
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def _negotiate(request: web.Request) -> web.Response:
    """Give the user a URL (with an access token) to connect to the service with."""
    ids = request.query.getall("id", [])
    if len(ids) != 1 or not ids[0]:
        return web.Response(status=400, text="missing user id")
    token = await request.app[_SERVICE].get_client_access_token(user_id=ids[0])
    return web.Response(text=token["url"])


async def _event_handler(request: web.Request) -> web.Response:
    """The service's webhooks: hand the request to the SDK's framework-free handler."""
    http_request = HttpRequest(
        request.method, request.path, Headers(request.headers.items()), await request.read()
    )
    response = await request.app[_HANDLER].handle(http_request)
    if response is None:  # this route serves the service's webhooks and nothing else
        return web.Response(status=400, text="not a Web PubSub event for this app")
    return web.Response(status=response.status, headers=response.headers, body=response.body)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {__package__}.app '<connection string>'")
    logging.basicConfig(level=logging.INFO)
    run_chat(sys.argv[1])
