"""The chat app of the "Handle events" tutorial, written the way a Python user would.

It is plain user code: an aiohttp web app that depends only on public packages
(``aiohttp`` and the official ``azure-messaging-webpubsubservice`` client), so the
same file runs against this service or against Azure Web PubSub. It

* serves the chat page (``GET /``),
* hands out client access URLs (``GET /negotiate?id=<user>``),
* answers the service's webhooks at ``/eventhandler``: the abuse-protection
  ``OPTIONS`` probe, the ``connected`` system event (announces the user to
  everyone) and the ``message`` user event (broadcasts ``[user] text``).

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
import sys

from aiohttp import web
from azure.core.exceptions import AzureError
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

__all__ = ["create_chat_app", "run_chat"]

log = logging.getLogger(__name__)

CONNECTED_EVENT = "azure.webpubsub.sys.connected"
MESSAGE_EVENT = "azure.webpubsub.user.message"

_SERVICE = web.AppKey("service", WebPubSubServiceClient)
_INDEX_HTML = web.AppKey("index_html", str)


def create_chat_app(connection_string: str, *, hub: str = "chat") -> web.Application:
    """The chat web app for ``hub``, talking to the service in ``connection_string``."""
    app = web.Application()
    app[_SERVICE] = WebPubSubServiceClient.from_connection_string(connection_string, hub=hub)
    app[_INDEX_HTML] = _read_index_html()
    app.router.add_get("/", _index)
    app.router.add_get("/index.html", _index)
    app.router.add_get("/negotiate", _negotiate)
    app.router.add_route("OPTIONS", "/eventhandler", _validate_webhook)
    app.router.add_post("/eventhandler", _handle_event)
    app.on_cleanup.append(_close_service_client)
    return app


def run_chat(connection_string: str, *, host: str = "127.0.0.1", port: int = 5000) -> None:
    """Serve the chat app until interrupted (Ctrl+C); prints the page's address."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(create_chat_app(connection_string), host, port))


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


async def _validate_webhook(request: web.Request) -> web.Response:
    """Abuse protection: opt in to receiving events from any service that asks."""
    if "WebHook-Request-Origin" not in request.headers:
        return web.Response(status=400, text="missing WebHook-Request-Origin header")
    return web.Response(headers={"WebHook-Allowed-Origin": "*"})


async def _handle_event(request: web.Request) -> web.Response:
    """One CloudEvent from the service (binary mode: attributes in ``ce-*`` headers)."""
    event_type = request.headers.get("ce-type")
    if not event_type:
        return web.Response(status=400, text="missing ce-type header")
    user_id = request.headers.get("ce-userId", "")
    if event_type == CONNECTED_EVENT:
        log.info("%s connected", user_id)
        return await _broadcast(request, f"[SYSTEM] {user_id} joined.")
    if event_type == MESSAGE_EVENT:
        text = (await request.read()).decode("utf-8", errors="replace")
        return await _broadcast(request, f"[{user_id}] {text}")
    return web.Response()


async def _broadcast(request: web.Request, text: str) -> web.Response:
    """Send ``text`` to every connection in the hub; answer the event with an empty 200."""
    try:
        # Pass the UTF-8 bytes: given a str, azure-core sets Content-Length to the
        # number of characters, which truncates any message with non-ASCII text.
        body = io.BytesIO(text.encode("utf-8"))
        await request.app[_SERVICE].send_to_all(body, content_type="text/plain")
    except AzureError as exc:
        log.warning("broadcast failed: %s", exc)
        return web.Response(status=502, text="broadcast failed")
    # An empty 200 means "nothing to send back": the sender sees its own message
    # through the broadcast, like everyone else.
    return web.Response()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {__package__}.app '<connection string>'")
    logging.basicConfig(level=logging.INFO)
    run_chat(sys.argv[1])
