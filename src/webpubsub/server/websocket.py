"""The client endpoint: ``/client/hubs/{hub}`` (and the legacy ``/client/?hub=``).

Everything that can fail before the upgrade (not a WebSocket request, bad hub,
bad token, the ``connect`` handler's refusal) is answered as plain HTTP with a
JSON error body; once upgraded, each frame is handed to the node in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence

from aiohttp import WSMsgType, web

from webpubsub.errors import BadRequest, WebPubSubError
from webpubsub.node.node import Handshake
from webpubsub.protocol.names import validate_hub
from webpubsub.protocol.tokens import ClientIdentity, bearer_token, verify_client_token
from webpubsub.server.context import SERVICE, ServiceContext
from webpubsub.server.errors import error_response
from webpubsub.server.outbox import Outbox

log = logging.getLogger("webpubsub.server")

#: Query parameters that are the service's own, not application data.
_RESERVED_QUERY = frozenset({"access_token", "hub"})
_HIDDEN_HEADERS = frozenset({"authorization"})

CLIENT_CLOSED = "The client closed the connection."


async def client_endpoint(request: web.Request) -> web.StreamResponse:
    ctx = request.app[SERVICE]
    try:
        handshake = _handshake(request, ctx)
        admission = await ctx.node.admit(handshake)
    except WebPubSubError as exc:
        if exc.http_status >= 500:
            log.warning("handshake for hub %r failed: %s", request.match_info.get("hub"), exc)
        return error_response(exc)

    settings = ctx.hub_settings(admission.hub)
    ws = web.WebSocketResponse(
        protocols=(admission.subprotocol,) if admission.subprotocol else (),
        compress=False,
        max_msg_size=ctx.max_message_bytes,
        heartbeat=float(settings.keepalive_seconds),
        autoping=True,
    )
    try:
        await ws.prepare(request)
    except ConnectionResetError:  # the client went away during the connect webhook
        log.info("client of hub %s left before the upgrade", admission.hub)
        return ws
    transport = request.transport
    if transport is None:  # the client went away during the upgrade
        return ws

    def closer(code: int, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(
            ws.close(code=code, message=_close_message(reason))
        )
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)

    outbox = Outbox(transport, limit=ctx.outbox_max_bytes, closer=closer)
    conn = ctx.node.attach(admission, outbox)
    outbox.on_overflow = lambda: conn.close(1008, "SlowClient")
    reason = CLIENT_CLOSED
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                await ctx.node.receive(conn, msg.data)
            elif msg.type is WSMsgType.ERROR:
                reason = f"The connection failed: {ws.exception() or 'transport error'}"
                break
    finally:
        if ws.close_code is not None and ws.close_code not in (1000, 1001):
            reason = _close_reason(ws, reason)
        ctx.node.detach(conn, reason)
        if not ws.closed:
            await ws.close()
    return ws


_closing_tasks: set[asyncio.Task[bool]] = set()


def _close_message(reason: str) -> bytes:
    """A close frame's reason: at most 123 bytes of UTF-8, cut between characters
    (a cut character makes the frame invalid and the client fails with 1007)."""
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")


def _close_reason(ws: web.WebSocketResponse, default: str) -> str:
    if ws.close_code == 1009:
        return "The client sent a message larger than the service accepts."
    return default


def _handshake(request: web.Request, ctx: ServiceContext) -> Handshake:
    if not web.WebSocketResponse().can_prepare(request).ok:
        raise BadRequest("This endpoint accepts WebSocket upgrade requests only.")
    hub = validate_hub(request.match_info.get("hub") or request.query.get("hub", ""))
    token = request.query.get("access_token") or bearer_token(request.headers.get("Authorization"))
    identity: ClientIdentity | None = None
    if token:
        endpoints = [*ctx.endpoints, f"{request.scheme}://{request.host}"]
        identity = verify_client_token(
            token, keys=ctx.access_keys, hub=hub, endpoints=endpoints, now=ctx.clock()
        )
    protocols = [
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", [])
        for p in value.split(",")
        if p.strip()
    ]
    return Handshake(
        hub=hub,
        identity=identity,
        query=_grouped((k, v) for k, v in request.query.items() if k not in _RESERVED_QUERY),
        headers=_grouped(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HIDDEN_HEADERS
        ),
        subprotocols=tuple(protocols),
    )


def _grouped(pairs: Iterable[tuple[str, str]]) -> Mapping[str, Sequence[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        # str(): header names are multidict ``istr`` keys, which orjson refuses
        grouped.setdefault(str(key), []).append(value)
    return grouped
