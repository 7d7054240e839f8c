"""The client endpoint: ``/client/hubs/{hub}`` (and the legacy ``/client/?hub=``).

Everything that can fail before the upgrade (not a WebSocket request, bad hub,
bad token, the ``connect`` handler's refusal) is answered as plain HTTP with a
JSON error body; once upgraded, each frame is handed to the node in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aiohttp import WebSocketError, WSMsgType, web
from aiohttp.helpers import DEFAULT_CHUNK_SIZE
from aiohttp.web_request import BaseRequest

from webpubsub.core.connection import Connection
from webpubsub.core.limits import InboundLimit
from webpubsub.errors import BadRequest, UpstreamError, WebPubSubError
from webpubsub.node.node import Handshake
from webpubsub.node.observe import conn_fields, log_fields
from webpubsub.protocol.cloudevents import ConnectRequest
from webpubsub.protocol.frames import SUBPROTOCOLS
from webpubsub.protocol.names import hub_key, validate_hub
from webpubsub.protocol.tokens import ClientIdentity, bearer_token, verify_client_token
from webpubsub.protocol.wsframe import CloseCode, MaskCheck, Opcode, encode_frame
from webpubsub.server.context import SERVICE, ServiceContext
from webpubsub.server.errors import error_response
from webpubsub.server.guard import peer_of
from webpubsub.server.origin import caller_origin
from webpubsub.server.outbox import Outbox

log = logging.getLogger("webpubsub.server")

RECOVERY_ID = "awps_connection_id"
RECOVERY_TOKEN = "awps_reconnection_token"  # noqa: S105 - a parameter name

#: Query parameters that are the service's own, not application data.
_RESERVED_QUERY = frozenset({"access_token", "hub", RECOVERY_ID, RECOVERY_TOKEN})
_HIDDEN_HEADERS = frozenset({"authorization"})

MAX_REASON_CHARS = 512
"""Characters of a refused handshake's reason the observers are told."""

#: Frames read from one connection before the loop runs the others.
FAIR_SLICE = 16

CLIENT_CLOSED = "The client closed the connection."
TOO_BIG = "The client sent a message larger than the service accepts."

#: Why aiohttp's reader closes a connection (RFC 6455 §7.4.1 codes), said to the client.
REFUSALS: dict[int, str] = {
    CloseCode.PROTOCOL_ERROR: "The client broke the WebSocket protocol (RFC 6455).",
    CloseCode.INVALID_DATA: "The client sent a text message that is not valid UTF-8.",
    CloseCode.MESSAGE_TOO_BIG: TOO_BIG,
}


UNMASKED = "The client sent an unmasked frame (RFC 6455 section 5.1)."
NO_ANSWER = "the client did not answer the keep-alive ping"

_PING = encode_frame(Opcode.PING, b"")
_RANDOM_BITS = functools.partial(random.getrandbits, 32)
_NO_TASKS: frozenset[Any] = frozenset()


class ClientSocket(web.WebSocketResponse):
    """A client's WebSocket. When a client breaks the protocol, aiohttp's ``receive()``
    closes the connection itself, with no reason: :attr:`on_refusal` is told first (and
    sends a JSON client its ``disconnected`` message), and its reason goes in the close.

    aiohttp's reader accepts unmasked client frames; a :class:`MaskCheck` in front of
    it refuses them (RFC 6455 §5.1) with 1002.
    """

    on_refusal: Callable[[int, str], None] | None = None
    refusal: str | None = None
    """Why the service refused what the client sent, once it did."""

    # What ``WebSocketResponse.__init__`` would store in every instance, the same for
    # every client: class attributes here. An instance of a class without
    # ``__slots__`` keeps its attributes in a compact array shared with its class
    # only while it has fewer than 30 (CPython's shared-key limit); from the 30th it
    # gets a dict of its own, 1.3 KiB more per connection.
    # ``tests/server/test_idle_memory.py`` checks these are aiohttp's own values.
    _timeout = 10.0
    _receive_timeout: float | None = None
    _autoclose = False  # the endpoint answers a client's close with the client's own code
    _autoping = False  # the endpoint counts a client's pings against its rate
    _compress: bool | int = False  # per-message compression is off (docs/architecture.md)
    _decode_text = True
    _writer_limit = DEFAULT_CHUNK_SIZE
    _heartbeat: float | None = None  # the service's KeepAlive pings, not aiohttp's timers

    intake: _Intake | None = None
    """What the client sends goes through it, once upgraded (the keep-alive's member)."""

    def __init__(self, *, protocols: Sequence[str], max_msg_size: int) -> None:
        web.StreamResponse.__init__(self, status=101)
        # Set before any attribute a closing socket adds, so that the class's shared
        # keys always have room for every attribute an open socket holds.
        self.on_refusal = None
        self._protocols = protocols
        self._max_msg_size = max_msg_size

    async def close(
        self, *, code: int = CloseCode.NORMAL, message: bytes = b"", drain: bool = True
    ) -> bool:
        reason = (self.refusal or REFUSALS[code]) if code in REFUSALS else None
        if reason is not None and not message and not self.closed:
            self.refusal = reason
            message = _close_message(reason)
            if self.on_refusal is not None:
                self.on_refusal(code, reason)
        return await super().close(code=code, message=message, drain=drain)

    async def echo_close(self, code: int) -> None:
        """Answer a client's close frame with ``code`` (its own, maybe 1002): no refusal."""
        await super().close(code=code, drain=False)

    def _post_start(self, request: BaseRequest, protocol: str | None, writer: Any) -> None:
        handler = request.protocol
        check = MaskCheck()
        # What came behind the upgrade request is fed to aiohttp's reader by
        # ``super()._post_start``: check it first, and drop it if it breaks the rule.
        early_refused = bool(handler._message_tail) and not check.feed(handler._message_tail)
        if early_refused:
            handler._message_tail = b""
        super()._post_start(request, protocol, writer)
        # A server's frames are never masked, and ours never compressed: what aiohttp's
        # writer keeps for either (a mask generator, a set of compression tasks; 480
        # bytes) is shared by every connection.
        writer.get_random_bits = _RANDOM_BITS
        writer._background_tasks = _NO_TASKS
        self.intake = handler._payload_parser = _Intake(handler._payload_parser, check, self)
        # An upgraded connection never parses HTTP again (aiohttp feeds its reader only,
        # once ``_payload_parser`` is set): free the HTTP parser and its buffers.
        handler._parser = None
        # Nor queues HTTP requests: aiohttp's request deque, empty since the upgrade's
        # was taken, costs 760 bytes; an empty tuple reads the same to aiohttp's checks
        # (``not``, ``len``) and would fail loudly if it were ever appended to.
        if not handler._messages:
            handler._messages = ()  # type: ignore[assignment]
        if early_refused:
            self._unmasked()

    def _unmasked(self) -> None:
        self.refusal = UNMASKED
        if self._reader is not None:
            self._reader.set_exception(WebSocketError(CloseCode.PROTOCOL_ERROR, UNMASKED))

    @property
    def gone(self) -> bool:
        return self._closed or self._closing

    def keepalive_ping(self) -> None:
        """Ping the client (the keep-alive found it silent for an interval)."""
        writer = self._writer
        if writer is not None and not writer.transport.is_closing():
            writer.transport.write(_PING)

    def keepalive_expired(self) -> None:
        """Close the connection as aiohttp's heartbeat does when no pong comes: 1006,
        the transport closed, ``receive()`` returning an ERROR message with why."""
        self._handle_ping_pong_exception(TimeoutError(NO_ANSWER))

    def close_soon(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason`` from a callback (the outbox's closer)."""
        task = asyncio.get_running_loop().create_task(
            self.close(code=code, message=_close_message(reason))
        )
        _closing_tasks.add(task)
        task.add_done_callback(_closing_tasks.discard)


class _Intake:
    """Feeds aiohttp's WebSocket reader only what :class:`MaskCheck` lets through, and
    notes that the client was heard: the connection's member of the :class:`KeepAlive`."""

    __slots__ = ("_check", "_parser", "_socket", "heard", "silent")

    def __init__(self, parser: Any, check: MaskCheck, socket: ClientSocket) -> None:
        self._parser = parser
        self._check = check
        self._socket = socket
        self.heard = False
        self.silent = 0

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.heard = True
        if self._check.feed(data):
            result: tuple[bool, bytes] = self._parser.feed_data(data)
            return result
        self._socket._unmasked()
        return False, b""

    def feed_eof(self) -> None:
        self._parser.feed_eof()

    @property
    def gone(self) -> bool:
        return self._socket.gone

    def ping(self) -> None:
        self._socket.keepalive_ping()

    def expire(self) -> None:
        self._socket.keepalive_expired()


async def client_endpoint(request: web.Request) -> web.StreamResponse:
    """Admit (or recover) the client, then hand each of its frames to the node, in order,
    until the transport ends.

    The loop is here, not in a coroutine of its own: every coroutine suspended below
    another lives as long as the connection (the handshake's return once it is attached).
    """
    ctx = request.app[SERVICE]
    if RECOVERY_ID in request.query:
        attached = await _recover(request, ctx)
    else:
        attached = await _admit(request, ctx)
    if not isinstance(attached, tuple):  # refused, or the client left before the upgrade
        return attached
    conn, ws, outbox = attached
    del attached

    def overflow() -> None:
        ctx.observer.slow_client(conn)
        conn.close(CloseCode.POLICY_VIOLATION, "SlowClient")

    outbox.on_overflow = overflow
    ws.on_refusal = conn.close  # the outbox sends what it holds, then ``disconnected``
    reason = CLIENT_CLOSED
    client_close_code: int | None = None
    refused = False  # the service refused what the client sent (an over-size message)
    clock = asyncio.get_running_loop().time
    limit = InboundLimit(ctx.hub_settings(conn.hub), ctx.max_message_bytes, clock())
    unyielded = 0
    try:
        while True:
            msg = await ws.receive()
            # A backlog of buffered frames is read without suspending: let the other
            # connections run between slices of it.
            unyielded += 1
            if unyielded >= FAIR_SLICE:
                unyielded = 0
                await asyncio.sleep(0)
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                over = limit.admit(len(msg.data), clock())
                if over is None:
                    await ctx.node.receive(conn, msg.data)
                else:
                    ctx.node.throttle(conn, msg.data, over)
            elif msg.type is WSMsgType.PING:
                over = limit.admit(len(msg.data), clock())
                if over is None:
                    outbox.offer(encode_frame(Opcode.PONG, msg.data))
                else:
                    ctx.node.throttle(conn, None, over)
            elif msg.type is WSMsgType.PONG:
                pass  # anything received counts as a keep-alive answer (the intake notes it)
            elif msg.type is WSMsgType.CLOSE:
                client_close_code = int(msg.data)
                if not ws.closed:  # RFC 6455 §5.5.1: echo the status code received
                    await ws.echo_close(_echoed(client_close_code))
                break
            elif msg.type is WSMsgType.ERROR:
                refused = ws.refusal is not None
                reason = ws.refusal or f"The connection failed: {msg.data or 'transport'}."
                break
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                reason = "The connection was lost."
                break
    except ConnectionError:  # e.g. a pong written to a client that reset meanwhile
        reason = "The connection was lost."
    except Exception:  # never let one connection's failure become an HTTP response
        log.exception(
            "connection %s of hub %s failed", conn.connection_id, conn.hub, extra=conn_fields(conn)
        )
        conn.close(CloseCode.INTERNAL_ERROR, "The service failed to process a message.")
    finally:
        # A reliable client that did not close normally may come back; one
        # whose message the service refused may not.
        recoverable = client_close_code != CloseCode.NORMAL and not refused
        await ctx.node.settle(conn)  # what the client sent before it left is handled first
        ctx.node.detach(conn, outbox, reason, recoverable=recoverable, code=client_close_code)
        if not ws.closed:
            await ws.close()
        _unwatch(ws, ctx)
    return ws


async def _admit(
    request: web.Request, ctx: ServiceContext
) -> web.StreamResponse | tuple[Connection, ClientSocket, Outbox]:
    """Check the handshake, upgrade and attach; the refusal's response otherwise.

    Its own coroutine, so that what only the handshake needs (the ``connect`` request
    with its headers and query, the token's claims, the admission) is freed when it
    returns: the frame that serves the connection keeps only the connection.
    """
    transport = request.transport
    try:
        with ctx.handshakes.slot(peer_of(transport) if transport else str(request.remote)):
            admission = await ctx.node.admit(_handshake(request, ctx))
    except UpstreamError as exc:
        # The detail names the handler's address: log it, tell the client less.
        hub = request.match_info.get("hub")
        log.warning("handshake for hub %r failed: %s", hub, exc, extra=log_fields(hub))
        return _refused(request, ctx, UpstreamError(exc.client_message, status=exc.status))
    except WebPubSubError as exc:
        return _refused(request, ctx, exc)

    ws = _websocket(ctx, admission.subprotocol)
    outbox = await _upgrade(ws, request, ctx, ctx.hub_settings(admission.hub).keepalive_seconds)
    if outbox is None:
        return ws
    return ctx.node.attach(admission, outbox), ws, outbox


def _refused(request: web.Request, ctx: ServiceContext, error: WebPubSubError) -> web.Response:
    """The HTTP answer to a refused handshake, told to the observers (the trace and the
    metrics) with what the client is told: never its token."""
    if ctx.observer:
        raw = request.match_info.get("hub") or request.query.get("hub", "")
        try:
            hub: str | None = hub_key(validate_hub(raw))
        except WebPubSubError:
            hub = None
        ctx.observer.refused(hub, error.http_status, error.message[:MAX_REASON_CHARS])
    return error_response(error)


async def _recover(
    request: web.Request, ctx: ServiceContext
) -> web.StreamResponse | tuple[Connection, ClientSocket, Outbox]:
    """A reliable client resuming its connection (Azure docs: reliable JSON subprotocol).

    The access token is not checked and no ``connect`` webhook is sent; a failed
    recovery is still upgraded, then closed with 1008 so that the client stops
    retrying and opens a new connection.  No ``disconnected`` message precedes that
    close: the SDKs report the last one they got, which must stay the one that
    ended the connection (e.g. a REST close's reason).
    """
    offered = _subprotocols(request)
    if not _is_upgrade(request, offered):
        return error_response(BadRequest("This endpoint accepts WebSocket upgrade requests only."))
    hub = request.match_info.get("hub") or request.query.get("hub", "")
    connection_id = request.query.get(RECOVERY_ID, "")
    echo = _recovery_echo(ctx, hub.lower(), connection_id, offered)
    ws = _websocket(ctx, echo)
    outbox = await _upgrade(ws, request, ctx, ctx.hub_settings(hub).keepalive_seconds)
    if outbox is None:
        return ws
    result = await ctx.node.recover(
        hub.lower(),
        connection_id,
        request.query.get(RECOVERY_TOKEN, ""),
        offered,
        outbox,
    )
    if isinstance(result, str):
        log.info(
            "recovery refused for hub %r: %s",
            hub,
            result,
            extra=log_fields(hub.lower(), connection_id),
        )
        outbox.close(CloseCode.POLICY_VIOLATION, result)
        await _drain(ws)
        _unwatch(ws, ctx)
        return ws
    return result, ws, outbox


def _recovery_echo(
    ctx: ServiceContext, hub_key: str, connection_id: str, offered: Sequence[str]
) -> str | None:
    """The subprotocol to echo to a recovering client: the connection's own when it
    is offered (it never changes), else the first service value offered."""
    hub = ctx.node.hub(hub_key)
    conn = hub.get(connection_id) if hub is not None else None
    own = conn.subprotocol.lower() if conn is not None and conn.subprotocol else None
    return next(
        (p for p in offered if p.lower() == own),
        next((p for p in offered if p.lower() in SUBPROTOCOLS), offered[0] if offered else None),
    )


def _websocket(ctx: ServiceContext, subprotocol: str | None) -> ClientSocket:
    return ClientSocket(
        protocols=(subprotocol,) if subprotocol else (),
        # aiohttp refuses a message of max_msg_size bytes; the limit is the largest accepted.
        max_msg_size=ctx.max_message_bytes + 1,
    )


async def _upgrade(
    ws: ClientSocket, request: web.Request, ctx: ServiceContext, keepalive_seconds: int
) -> Outbox | None:
    """Send the 101, watch the connection's keep-alive and build its outbox; None if the
    client left."""
    try:
        await ws.prepare(request)
    except ConnectionResetError:  # the client went away during the connect webhook
        hub = request.match_info.get("hub")
        log.info("a client of hub %r left before the upgrade", hub, extra=log_fields(hub))
        return None
    transport = request.transport
    if transport is None:  # the client went away during the upgrade
        return None
    _forget_handshake(ws, request)
    if ws.intake is not None:
        ctx.keepalive.watch(ws.intake, keepalive_seconds)
    return Outbox(
        transport,
        limit=ctx.outbox_max_bytes,
        closer=ws.close_soon,
        flusher=ctx.flusher,
        drain=request.writer.drain,
    )


def _forget_handshake(ws: ClientSocket, request: web.Request) -> None:
    """Free what the HTTP exchange cached once the 101 is sent: the response's headers
    (written) and the request's parsed properties (its query with the token, the raw
    path...; aiohttp computes them again if asked). The request stays alive as long as
    the connection (aiohttp's handler frames hold it): its cache need not."""
    ws.headers.clear()
    request._cache.clear()


def _unwatch(ws: ClientSocket, ctx: ServiceContext) -> None:
    """The connection ended: no more keep-alive (the sweep would drop it on its next tick)."""
    if ws.intake is not None:
        ctx.keepalive.forget(ws.intake)


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read until the close handshake completes (the close was already sent)."""
    while not ws.closed:
        msg = await ws.receive()
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            break


_closing_tasks: set[asyncio.Task[bool]] = set()


def _echoed(code: int) -> int:
    """The code to answer a client's close with: its own, if a peer may send it (RFC 6455
    §7.4), else 1000 (e.g. a close frame without a code, reported as 1005 or 0)."""
    sendable = 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
    return code if sendable else CloseCode.NORMAL


def _close_message(reason: str) -> bytes:
    """A close frame's reason: at most 123 bytes of UTF-8, cut between characters
    (a cut character makes the frame invalid and the client fails with 1007)."""
    return reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")


def _is_upgrade(request: web.Request, offered: Sequence[str]) -> bool:
    # Offering the client's own protocols keeps aiohttp from warning about a mismatch.
    return web.WebSocketResponse(protocols=offered).can_prepare(request).ok


def _subprotocols(request: web.Request) -> tuple[str, ...]:
    return tuple(
        p.strip()
        for value in request.headers.getall("Sec-WebSocket-Protocol", [])
        for p in value.split(",")
        if p.strip()
    )


def _handshake(request: web.Request, ctx: ServiceContext) -> Handshake:
    if not _is_upgrade(request, _subprotocols(request)):
        raise BadRequest("This endpoint accepts WebSocket upgrade requests only.")
    hub = validate_hub(request.match_info.get("hub") or request.query.get("hub", ""))
    token = request.query.get("access_token") or bearer_token(request.headers.get("Authorization"))
    identity: ClientIdentity | None = None
    if token:
        endpoints = [*ctx.endpoints, caller_origin(request, ctx.trusted_proxies)]
        identity = verify_client_token(
            token, keys=ctx.access_keys, hub=hub, endpoints=endpoints, now=ctx.clock()
        )
    connect = ConnectRequest(
        claims=identity.claims if identity is not None else {},
        query=_grouped((k, v) for k, v in request.query.items() if k not in _RESERVED_QUERY),
        headers=_grouped(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HIDDEN_HEADERS
        ),
        subprotocols=_subprotocols(request),
    )
    return Handshake(hub=hub, identity=identity, request=connect)


def _grouped(pairs: Iterable[tuple[str, str]]) -> Mapping[str, Sequence[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        # str(): header names are multidict ``istr`` keys, which orjson refuses
        grouped.setdefault(str(key), []).append(value)
    return grouped
