"""What the service keeps for an idle connection (the ``idle`` benchmark's RSS per
connection, docs/performance.md): the handshake's objects are freed once the client is
upgraded, and structures most connections never use are not made for them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.http_websocket import WebSocketWriter

from tests.conftest import StartService
from tests.support.service import chat_hub, client_url, sdk
from webpubsub.core.connection import Connection
from webpubsub.core.permissions import Permission
from webpubsub.protocol.cloudevents import ConnectRequest
from webpubsub.protocol.tokens import ClientIdentity
from webpubsub.server import websocket
from webpubsub.server.app import ServiceRunner
from webpubsub.server.outbox import Outbox
from webpubsub.server.websocket import ClientSocket

WAIT = 5.0


@contextlib.asynccontextmanager
async def attached_client(runner: ServiceRunner) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A client of ``chat``, connected and attached (it received a broadcast)."""
    url = await client_url(runner)
    async with aiohttp.ClientSession() as http, await http.ws_connect(url) as ws:
        async with sdk(runner) as service:
            await service.send_to_all("attached", content_type="text/plain")
        assert (await ws.receive(timeout=WAIT)).data == "attached"
        yield ws


def alive(kind: type) -> list[Any]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]


def of_user(kind: type, user_id: str) -> list[Any]:
    """The live ``kind`` objects that belong to ``user_id``'s connection: a test worker
    may hold other tests' services (and their connections) meanwhile."""
    mine = []
    for o in alive(kind):
        if isinstance(o, ConnectRequest):
            if any(user_id in value for values in o.claims.values() for value in values):
                mine.append(o)
        elif getattr(o, "user_id", None) == user_id:
            mine.append(o)
    return mine


def this_service(runner: ServiceRunner) -> list[Connection]:
    """The connections of ``runner`` (the test's own service)."""
    assert runner.node is not None
    return [c for hub in runner.node.hubs() for c in hub.connections()]


def socket_of(conn: Connection) -> list[ClientSocket]:
    """The live ``ClientSocket`` that writes to ``conn``'s transport."""
    assert isinstance(conn.sink, Outbox)
    transport = conn.sink._transport
    return [
        o
        for o in alive(ClientSocket)
        if o._writer is not None and getattr(o._writer, "transport", None) is transport
    ]


async def test_an_idle_connection_keeps_no_handshake_objects(
    start_service: StartService,
) -> None:
    """The ``connect`` request (every header and query parameter, the token's claims) is
    needed until the connection is attached, not while it is served."""
    runner = await start_service(chat_hub())
    user = f"ann-{uuid.uuid4().hex}"
    url = await client_url(runner, user_id=user, roles=["webpubsub.sendToGroup.g"])
    async with aiohttp.ClientSession() as http, await http.ws_connect(url) as ws:
        async with sdk(runner) as service:
            await service.send_to_all("attached", content_type="text/plain")
        msg = await ws.receive(timeout=WAIT)
        assert (msg.type, msg.data) == (WSMsgType.TEXT, "attached")
        (conn,) = of_user(Connection, user)
        assert isinstance(conn, Connection) and conn.user_id == user
        assert conn.permissions.allows(Permission.SEND_TO_GROUP, "g")  # the token's role
        assert of_user(ConnectRequest, user) == []
        assert of_user(ClientIdentity, user) == []


async def test_an_upgraded_connection_keeps_no_http_parser_nor_its_cached_headers(
    start_service: StartService,
) -> None:
    """After the 101 the connection only carries WebSocket frames: aiohttp's HTTP request
    parser (with its buffers) is freed, and frames still flow both ways."""
    runner = await start_service(chat_hub())
    async with attached_client(runner) as ws:
        (conn,) = this_service(runner)
        assert isinstance(conn, Connection) and isinstance(conn.sink, Outbox)
        handler = _protocol(conn.sink)
        assert handler._parser is None
        assert handler._payload_parser is not None
        assert handler._messages == ()  # nor its (empty) queue of HTTP requests
        assert conn.ack_ids._seen is None  # nothing made for ackIds never sent
        (socket_,) = socket_of(conn)
        assert isinstance(socket_, ClientSocket) and socket_._req is not None
        assert len(socket_.headers) == 0  # the 101's headers, written, are not kept
        assert socket_._req._cache == {}  # nor the request's parsed query (with the token)
        # Under CPython's 30 shared keys, its attributes stay in the class's compact
        # layout instead of a dict of its own (1.3 KiB more).
        assert len(vars(socket_)) < 30
        writer = socket_._writer  # never masks nor compresses: keeps nothing for either
        assert writer is not None and not writer.use_mask and not writer.compress
        assert writer.get_random_bits is websocket._RANDOM_BITS
        assert writer._background_tasks == frozenset()
        await ws.ping()  # answered by the service (its pong is read by the client)
        async with sdk(runner) as service:
            await service.send_to_all("still attached", content_type="text/plain")
        assert (await ws.receive(timeout=WAIT)).data == "still attached"


def _protocol(outbox: Outbox) -> Any:
    transport: Any = outbox._transport
    return transport.get_protocol()


def test_a_client_socket_is_made_as_aiohttp_would_make_it() -> None:
    """:class:`ClientSocket` keeps as class attributes what ``WebSocketResponse.__init__``
    stores in each instance: every attribute aiohttp's own constructor sets, with the
    endpoint's options, reads the same on ours (this fails if aiohttp adds or changes
    one), and ours stores fewer."""
    options: dict[str, Any] = {"protocols": ("json.webpubsub.azure.v1",), "max_msg_size": 1025}
    ours = ClientSocket(**options)
    theirs = web.WebSocketResponse(**options, compress=False, autoping=False, autoclose=False)
    for name, value in vars(theirs).items():
        assert getattr(ours, name) == value, name
    assert len(vars(ours)) < len(vars(theirs))


def test_the_writer_attributes_the_endpoint_shares_are_aiohttp_s() -> None:
    """What the endpoint replaces in aiohttp's WebSocket writer is there to replace (a
    renamed one would be added beside it, and nothing freed)."""
    writer = WebSocketWriter(Any, Any)  # type: ignore[arg-type]  # stored only
    assert {"get_random_bits", "_background_tasks", "use_mask", "compress"} <= set(vars(writer))
    assert type(writer._background_tasks) is set and not writer._background_tasks


async def test_an_idle_connection_holds_no_middleware_frame_of_ours(
    start_service: StartService,
) -> None:
    """Each coroutine in the chain that serves a connection stays alive as long as it
    does: of ours, only the endpoint's (and the error middleware's), which serves the
    connection itself. The middleware that tells the guard a request started returns
    the handler's awaitable instead of awaiting it in a frame of its own (which aiohttp
    accepts: it awaits whatever a middleware returns)."""
    runner = await start_service(chat_hub())
    async with attached_client(runner):
        (chain,) = (c for c in map(_awaiting, asyncio.all_tasks()) if "client_endpoint" in c)
        ours = [name for name in chain if name in _OURS]
        assert ours == ["error_middleware", "client_endpoint"]


_OURS = {"request_started", "error_middleware", "client_endpoint", "_admit", "_recover"}


def _awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The qualified names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None:
        code = getattr(coro, "cr_code", None)
        if code is not None:
            names.append(code.co_qualname)
        coro = getattr(coro, "cr_await", None)
    return names
