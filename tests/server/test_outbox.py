"""The coalescing outbox against the real service and real clients.

The outbox writes prepared frames straight to the connection's transport,
next to aiohttp's own writer (docs/architecture.md).  These tests pin what that relies
on, so that an aiohttp upgrade that breaks it fails here:

- the bytes on the wire are exactly ``encode_frame(...)`` (read with a raw TCP
  client that does the WebSocket handshake by hand);
- frames offered in one loop turn leave in one transport write;
- a client that stops reading is closed (``SlowClient``) without stalling or
  dropping messages for the others;
- ``drained()`` (the pace of a replay) waits on aiohttp's ``request.writer.drain()``
  while the transport's buffer is full and returns once the client has read it down;
- aiohttp's pings, pongs and close frames still work, whole and in order.
"""

from __future__ import annotations

import asyncio
import errno
import io
import socket
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import StartService
from tests.support.rawws import RawClient, client_frame, handshake_request
from tests.support.service import client_url
from webpubsub.core.connection import Connection
from webpubsub.core.settings import HubSettings
from webpubsub.protocol.backplane import Close, Send, Target
from webpubsub.protocol.frames import ClientProtocol, DataMessage, encode_for
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.wsframe import Opcode, encode_frame
from webpubsub.server import outbox as outbox_module
from webpubsub.server.app import ServiceRunner
from webpubsub.server.outbox import Flusher, Outbox

HUB = "h"
WAIT = 10.0
"""Upper bound for anything that should happen promptly (never a timing assertion)."""


# -- helpers --------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for state that has no event to wait on (hub membership, a socket's error).

    Bounded by ``timeout``; it only waits, it never asserts how long something took.
    """
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling: there is no event to await
            await asyncio.sleep(0.005)


def connections(runner: ServiceRunner) -> list[Connection]:
    assert runner.node is not None
    hub = runner.node.hub(HUB)
    return hub.connections() if hub is not None else []


def outbox_of(conn: Connection) -> Outbox:
    assert isinstance(conn.sink, Outbox)
    return conn.sink


async def attached(runner: ServiceRunner, count: int) -> list[Connection]:
    await wait_until(lambda: len(connections(runner)) == count)
    return connections(runner)


def send_command(text: str | bytes) -> Send:
    payload = Payload.text(text) if isinstance(text, str) else Payload.binary(text)
    return Send(HUB, Target.all(), DataMessage(payload))


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- (a) byte-exact frames on the wire -------------------------------------------------


async def test_frames_are_byte_exact_on_the_wire(start_service: StartService) -> None:
    runner = await start_service()
    raw = await RawClient.connect(await client_url(runner, HUB))
    await attached(runner, 1)
    sdk = WebPubSubServiceClient.from_connection_string(runner.connection_string, hub=HUB)
    try:
        async with sdk:
            for size in (0, 125, 126, 70000):
                text = "".join(chr(ord("a") + i % 26) for i in range(size))
                await sdk.send_to_all(text, content_type="text/plain")
                expected = encode_frame(Opcode.TEXT, text.encode())
                assert await raw.read(len(expected)) == expected

                data = bytes(i % 256 for i in range(size))
                await sdk.send_to_all(io.BytesIO(data), content_type="application/octet-stream")
                expected = encode_frame(Opcode.BINARY, data)
                assert await raw.read(len(expected)) == expected

            # Nothing was written between or after the frames: the next bytes are the next frame.
            await sdk.send_to_all("end", content_type="text/plain")
            assert await raw.read(5) == b"\x81\x03end"
    finally:
        await raw.aclose()


async def test_frame_larger_than_the_bound_reaches_an_idle_client(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """A single frame bigger than ``outbox_max_bytes`` is not a slow client.

    Regression: the bound used to count the frame being offered, so one REST
    send above 64 KiB closed every client of a service configured at 64 KiB.
    """
    runner = await start_service(outbox_max_bytes=65536)
    ws = await http.ws_connect(await client_url(runner, HUB))
    await attached(runner, 1)
    big = bytes(range(256)) * 400  # 102,400 bytes
    assert runner.node is not None
    runner.node.apply(send_command(big))
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == big
    runner.node.apply(send_command("after"))
    assert (await ws.receive(timeout=WAIT)).data == "after"
    assert await runner.operations.connection_exists(HUB, connections(runner)[0].connection_id)
    await ws.close()


async def raw_client(url: str, subprotocol: str | None, *, deflate: bool) -> RawClient:
    """A raw client speaking ``subprotocol``, offering permessage-deflate if ``deflate``;
    a subprotocol client's ``connected`` message is read. The service never takes the
    extension (compression is off): the frames are plain whatever the client offers."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 20)
    extra = f"Sec-WebSocket-Protocol: {subprotocol}\r\n" if subprotocol else ""
    if deflate:
        extra += "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    writer.write(handshake_request(url).replace(b"\r\n\r\n", f"\r\n{extra}\r\n".encode()))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert b"sec-websocket-extensions" not in head.lower()
    client = RawClient(reader, writer)
    if subprotocol:
        first, _connected = await client.read_frame()
        # A final frame of the subprotocol's type, without RSV1: not compressed.
        assert first in (0x80 | Opcode.TEXT, 0x80 | Opcode.BINARY)
    return client


KINDS = [(p.value if p.is_pubsub else None, p) for p in ClientProtocol]
"""Every client protocol, by the subprotocol a client asks for (none: a simple client)."""


async def test_a_broadcast_reaches_every_kind_of_client_byte_exact(
    start_service: StartService,
) -> None:
    """One fan-out to clients of every protocol, each with and without offering
    permessage-deflate: the plain ones share their protocol's frame (one batch each), the
    reliable ones get it with their own sequence ids; on the wire, exactly the frames
    the codecs make, coalesced per turn, in order."""
    runner = await start_service()
    url = await client_url(runner, HUB)
    clients = [
        (protocol, await raw_client(url, subprotocol, deflate=deflate))
        for subprotocol, protocol in KINDS
        for deflate in (False, True)
    ]
    await attached(runner, len(clients))
    messages = [
        DataMessage(Payload.text("hello")),
        DataMessage(Payload.binary(bytes(range(200)))),
        DataMessage(Payload.text("é" * 70)),  # 140 bytes: a 16-bit length
    ]
    assert runner.node is not None
    for message in messages:  # one turn: one write per client
        runner.node.apply(Send(HUB, Target.all(), message))
    await next_turn()  # the next send comes in a turn of its own
    runner.node.apply(Send(HUB, Target.all(), messages[0]))
    try:
        for protocol, client in clients:
            expected = b""
            for n, message in enumerate([*messages, messages[0]], start=1):
                encoded = encode_for(protocol, message)
                if protocol.is_reliable:
                    codec = protocol.codec
                    encoded = encode_frame(codec.OPCODE, codec.with_sequence_id(encoded, n))
                expected += encoded
            assert await client.read(len(expected)) == expected, protocol
    finally:
        for _, client in clients:
            await client.aclose()


# -- (b) one transport write per connection per loop turn ------------------------------


async def test_sends_in_one_loop_turn_leave_in_one_write(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service()
    url = await client_url(runner, HUB)
    clients = [await http.ws_connect(url) for _ in range(5)]
    outboxes = [outbox_of(c) for c in await attached(runner, 5)]
    before = [(o.writes, o.frames_written) for o in outboxes]
    n = 50

    node = runner.node
    assert node is not None
    for i in range(n):  # no await in between: one loop turn
        node.apply(send_command(f"m{i}"))

    for ws in clients:
        for i in range(n):
            msg = await ws.receive(timeout=WAIT)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, f"m{i}")
    for outbox, (writes, frames) in zip(outboxes, before, strict=True):
        assert outbox.writes == writes + 1
        assert outbox.frames_written == frames + n
        assert outbox.pending_bytes == 0

    # Sends in separate turns are separate writes.
    node.apply(send_command("x"))
    for ws in clients:
        assert (await ws.receive(timeout=WAIT)).data == "x"
    node.apply(send_command("y"))
    for ws in clients:
        assert (await ws.receive(timeout=WAIT)).data == "y"
    for outbox, (writes, frames) in zip(outboxes, before, strict=True):
        assert outbox.writes == writes + 3
        assert outbox.frames_written == frames + n + 2
    for ws in clients:
        await ws.close()


async def test_coalesced_write_is_the_concatenated_frames(start_service: StartService) -> None:
    runner = await start_service()
    raw = await RawClient.connect(await client_url(runner, HUB))
    (conn,) = await attached(runner, 1)
    outbox = outbox_of(conn)
    writes = outbox.writes
    payloads = [b"", b"a" * 125, b"b" * 126, b"c" * 70000, b"d"]
    assert runner.node is not None
    for data in payloads:
        runner.node.apply(send_command(data))
    expected = b"".join(encode_frame(Opcode.BINARY, p) for p in payloads)
    try:
        assert await raw.read(len(expected)) == expected
        assert outbox.writes == writes + 1
    finally:
        await raw.aclose()


# -- (c) a slow client is closed; the others are not stalled ---------------------------


async def test_slow_client_is_closed_and_others_get_everything_in_order(
    start_service: StartService, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "SLOW_CLIENT_GRACE_SECONDS", 0.5)
    runner = await start_service(outbox_max_bytes=65536)
    url = await client_url(runner, HUB)
    loop = asyncio.get_running_loop()

    # The slow client: handshake by hand, a small receive buffer, then it never reads.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", runner.port))
    await loop.sock_sendall(sock, handshake_request(url))
    head = b""
    async with asyncio.timeout(WAIT):
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 1)  # byte by byte: read nothing past the head
            assert chunk, "the service closed during the handshake"
            head += chunk
    assert head.startswith(b"HTTP/1.1 101 ")
    (slow,) = await attached(runner, 1)

    reader = await http.ws_connect(url)
    (fast,) = [c for c in await attached(runner, 2) if c is not slow]
    assert runner.node is not None

    body = b"x" * 8192
    sent = 0
    try:
        # Broadcast until the slow client overflows (bounded: 64 MiB at most); the reading
        # client takes each message before the next is sent, so it never falls behind.
        while not slow.closing:
            assert sent < 8192, "the slow client was never closed"
            runner.node.apply(send_command(sent.to_bytes(4, "big") + body))
            msg = await reader.receive(timeout=WAIT)
            assert msg.type is aiohttp.WSMsgType.BINARY
            assert int.from_bytes(msg.data[:4], "big") == sent
            sent += 1
        assert slow.close_reason == "SlowClient"
        assert not fast.closing

        # The others keep receiving while the slow connection is being torn down (bursts
        # of 5 × 8 KiB in one loop turn stay within the reader's 64 KiB bound).
        for burst in range(4):
            first = sent + 5 * burst
            for i in range(first, first + 5):
                runner.node.apply(send_command(i.to_bytes(4, "big") + body))
            for i in range(first, first + 5):
                msg = await reader.receive(timeout=WAIT)
                assert msg.type is aiohttp.WSMsgType.BINARY
                assert int.from_bytes(msg.data[:4], "big") == i

        # The slow connection disappears from the hub within a bounded wait.
        await wait_until(lambda: slow not in connections(runner), timeout=3 * WAIT)
        assert not await runner.operations.connection_exists(HUB, slow.connection_id)
        assert await runner.operations.connection_exists(HUB, fast.connection_id)
        runner.node.apply(send_command("still here"))
        assert (await reader.receive(timeout=WAIT)).data == "still here"

        # Its close frame cannot get past the full buffers, so after the grace period the
        # service cuts the socket (a reset: seen without reading a byte).
        errors: list[int] = []

        def socket_failed() -> bool:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # reading clears it
            errors.append(code)
            return code != 0

        await wait_until(socket_failed, timeout=3 * WAIT)
        assert errors[-1] == errno.ECONNRESET
    finally:
        sock.close()
        await reader.close()


async def test_drained_waits_for_a_client_that_does_not_read_and_returns_as_it_reads(
    start_service: StartService,
) -> None:
    """The pace of a replay: ``drained()`` returns only once the transport's buffer is
    under its low-water mark (aiohttp's ``request.writer.drain()`` on the transport's
    flow control), so a replay never piles up more than a chunk in the outbox."""
    runner = await start_service()
    url = await client_url(runner, HUB)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", runner.port))
        await loop.sock_sendall(sock, handshake_request(url))
        head = b""
        async with asyncio.timeout(WAIT):
            while b"\r\n\r\n" not in head:
                chunk = await loop.sock_recv(sock, 1)
                assert chunk, "the service closed during the handshake"
                head += chunk
        (conn,) = await attached(runner, 1)
        outbox = outbox_of(conn)
        frame = encode_frame(Opcode.BINARY, b"x" * (1 << 20))

        async def drained() -> int:
            """What the outbox holds when ``drained()`` returns."""
            await outbox.drained()
            return outbox.buffered_bytes

        for _ in range(64):  # until the kernel's buffers are full: 64 MiB at most
            outbox.offer(frame)
            task = asyncio.create_task(drained())
            # drained() returns in its first step unless it has to wait for the transport
            await asyncio.sleep(0)
            if not task.done():
                break
        assert not task.done(), "64 MiB written and the transport never filled up"
        assert outbox.buffered_bytes > 64 * 1024
        async with asyncio.timeout(WAIT):
            while not task.done():  # bounded: by the timeout (a few MiB to read)
                await loop.sock_recv(sock, 65536)
        assert task.result() <= 64 * 1024  # back under the transport's marks
    finally:
        sock.close()


# -- (d) aiohttp's ping, pong and close next to the raw write path ---------------------


async def test_client_ping_gets_its_pong(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service()
    ws = await http.ws_connect(await client_url(runner, HUB), autoping=False)
    await attached(runner, 1)
    assert runner.node is not None
    runner.node.apply(send_command("before"))
    await ws.ping(b"are you there")
    got = [await ws.receive(timeout=WAIT), await ws.receive(timeout=WAIT)]
    assert {(m.type, m.data) for m in got} == {
        (aiohttp.WSMsgType.TEXT, "before"),
        (aiohttp.WSMsgType.PONG, b"are you there"),
    }
    await ws.close()


async def test_heartbeat_client_stays_connected_and_receives(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """aiohttp's heartbeat closes the connection if a pong goes missing."""
    runner = await start_service()
    ws = await http.ws_connect(await client_url(runner, HUB), heartbeat=0.2)
    (conn,) = await attached(runner, 1)
    assert runner.node is not None
    for i in range(10):  # ~1 s of traffic: several heartbeats, each answered by a pong
        runner.node.apply(send_command(f"m{i}"))
        assert (await ws.receive(timeout=WAIT)).data == f"m{i}"
        await asyncio.sleep(0.1)
    assert not ws.closed
    assert await runner.operations.connection_exists(HUB, conn.connection_id)
    await ws.close()


async def test_raw_ping_pong_frames_are_whole_among_data_frames(
    start_service: StartService,
) -> None:
    runner = await start_service()
    raw = await RawClient.connect(await client_url(runner, HUB))
    await attached(runner, 1)
    assert runner.node is not None
    try:
        for i in range(3):
            runner.node.apply(send_command(b"d" * 200))
            await raw.send(client_frame(Opcode.PING, f"ping{i}".encode()))
        frames = [await raw.read_frame() for _ in range(6)]
        pongs = [p for first, p in frames if first == 0x80 | Opcode.PONG]
        data = [p for first, p in frames if first == 0x80 | Opcode.BINARY]
        assert pongs == [b"ping0", b"ping1", b"ping2"]
        assert data == [b"d" * 200] * 3
    finally:
        await raw.aclose()


async def test_server_heartbeat_pings_reach_the_client(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(HubSettings(name=HUB, keepalive_seconds=1))
    ws = await http.ws_connect(await client_url(runner, HUB), autoping=False)
    await attached(runner, 1)
    assert runner.node is not None
    runner.node.apply(send_command("data"))
    seen: set[aiohttp.WSMsgType] = set()
    while aiohttp.WSMsgType.PING not in seen:
        msg = await ws.receive(timeout=WAIT)
        seen.add(msg.type)
        if msg.type is aiohttp.WSMsgType.PING:
            await ws.pong(msg.data)
    assert aiohttp.WSMsgType.TEXT in seen
    await ws.close()


async def test_rest_close_comes_after_queued_messages(start_service: StartService) -> None:
    runner = await start_service()
    raw = await RawClient.connect(await client_url(runner, HUB))
    (conn,) = await attached(runner, 1)
    assert runner.node is not None
    try:
        # Messages and the close in one loop turn: the messages are still queued.
        for i in range(3):
            runner.node.apply(send_command(f"queued {i}"))
        runner.node.apply(Close(HUB, Target.connection(conn.connection_id), "bye now"))
        expected = b"".join(encode_frame(Opcode.TEXT, f"queued {i}".encode()) for i in range(3))
        expected += encode_frame(Opcode.CLOSE, struct.pack("!H", 1000) + b"bye now")
        assert await raw.read(len(expected)) == expected

        await raw.send(client_frame(Opcode.CLOSE, struct.pack("!H", 1000)))
        assert await asyncio.wait_for(raw.reader.read(), WAIT) == b""  # the server hung up
        await wait_until(lambda: not connections(runner))
    finally:
        await raw.aclose()


async def test_sdk_close_after_sends_with_aiohttp_client(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service()
    ws = await http.ws_connect(await client_url(runner, HUB))
    (conn,) = await attached(runner, 1)
    sdk = WebPubSubServiceClient.from_connection_string(runner.connection_string, hub=HUB)
    async with sdk:
        for i in range(3):
            await sdk.send_to_all(f"m{i}", content_type="text/plain")
        await sdk.close_connection(conn.connection_id, reason="done")
    for i in range(3):
        assert (await ws.receive(timeout=WAIT)).data == f"m{i}"
    closed = await ws.receive(timeout=WAIT)
    assert closed.type is aiohttp.WSMsgType.CLOSE
    assert (closed.data, closed.extra) == (1000, "done")
    await wait_until(lambda: not connections(runner))


class _RecordingTransport:
    """A stand-in for the socket transport (not one of our components)."""

    def __init__(self, *, fail: bool = False, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.fail = fail
        self.buffered = buffered
        self.buffer_reads = 0

    def write(self, data: bytes) -> None:
        if self.fail:
            raise OSError("broken transport")
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        self.buffer_reads += 1
        return self.buffered

    def abort(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


async def next_turn() -> None:
    """Return after the callbacks scheduled so far (the flusher's) have run."""
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done


class _OfferedSink:
    """A sink that is not an outbox (as a new connection's held sink is)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def offer(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        pass

    buffered_bytes = 0

    async def drained(self) -> None:
        return None


async def test_offer_each_queues_the_frame_in_every_outbox_and_offers_other_sinks() -> None:
    flusher = Flusher()
    transports = [_RecordingTransport() for _ in range(3)]
    outboxes = [
        Outbox(t, limit=1 << 20, closer=lambda code, reason: None, flusher=flusher)
        for t in transports
    ]
    other = _OfferedSink()
    sinks = [outboxes[0], other, outboxes[1], outboxes[2]]
    Outbox.offer_each(b"a", sinks)
    outboxes[1].offer(b"own")  # a frame of its own between two of the batch's
    Outbox.offer_each(b"b", sinks)
    assert other.frames == [b"a", b"b"]
    assert [o.pending_bytes for o in outboxes] == [2, 5, 2]
    await next_turn()
    assert [t.writes for t in transports] == [[b"ab"], [b"aownb"], [b"ab"]]
    assert [o.frames_written for o in outboxes] == [2, 3, 2]
    Outbox.offer_each(b"c", sinks)  # the next turn: a write of its own
    await next_turn()
    assert [t.writes for t in transports] == [[b"ab", b"c"], [b"aownb", b"c"], [b"ab", b"c"]]


async def test_offer_each_closes_only_the_outbox_over_its_bound() -> None:
    flusher = Flusher()
    closed: list[tuple[int, str]] = []
    full = _RecordingTransport(buffered=100)  # the kernel has not taken 100 bytes yet
    fine = _RecordingTransport()
    slow = Outbox(full, limit=128, closer=lambda c, r: closed.append((c, r)), flusher=flusher)
    told: list[str] = []
    slow.on_overflow = lambda: told.append("overflow")
    other = Outbox(fine, limit=128, closer=lambda c, r: closed.append((c, r)), flusher=flusher)
    Outbox.offer_each(b"x" * 20, [slow, other])  # 120 outstanding: within the bound
    Outbox.offer_each(b"y" * 20, [slow, other])  # 140: the slow one is over it
    assert told == ["overflow"]
    assert closed == [(1008, "SlowClient: the client did not read its messages fast enough.")]
    Outbox.offer_each(b"z", [slow, other])  # a closed outbox takes nothing more
    await next_turn()
    assert full.writes == []  # what it held was dropped: the close goes first
    assert fine.writes == [b"x" * 20 + b"y" * 20 + b"z"]
    # A frame larger than the bound still reaches an outbox with nothing outstanding.
    Outbox.offer_each(b"w" * 200, [other])
    await next_turn()
    assert fine.writes[-1] == b"w" * 200


async def test_the_transports_buffer_is_read_once_per_turn() -> None:
    """The bound's view of the transport is taken at the turn's first frame, not per frame
    (the per-recipient step of a fan-out stays an append)."""
    transport = _RecordingTransport()
    outbox = Outbox(transport, limit=1 << 20, closer=lambda code, reason: None)
    for _ in range(10):
        Outbox.offer_each(b"f", [outbox])
    assert transport.buffer_reads == 1
    await next_turn()
    outbox.offer(b"g")
    outbox.offer(b"h")
    assert transport.buffer_reads == 2
    await next_turn()
    assert transport.writes == [b"f" * 10, b"gh"]


async def test_one_flusher_callback_per_turn_serves_every_outbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[object] = []
    real_call_soon = loop.call_soon

    def counting_call_soon(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return real_call_soon(callback, *args, **kwargs)

    flusher = Flusher(loop)
    transports = [_RecordingTransport() for _ in range(100)]
    outboxes = [
        Outbox(t, limit=1 << 20, closer=lambda code, reason: None, flusher=flusher)
        for t in transports
    ]
    monkeypatch.setattr(loop, "call_soon", counting_call_soon)
    for outbox in outboxes:
        outbox.offer(b"a")
        outbox.offer(b"b")
    monkeypatch.undo()
    assert len(scheduled) == 1  # one callback for the whole broadcast
    done = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done
    assert all(t.writes == [b"ab"] for t in transports)


async def test_a_broken_transport_does_not_starve_the_other_outboxes() -> None:
    flusher = Flusher()
    broken, healthy = _RecordingTransport(fail=True), _RecordingTransport()
    for transport in (broken, healthy):
        Outbox(transport, limit=1 << 20, closer=lambda code, reason: None, flusher=flusher).offer(
            b"x"
        )
    done = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(done.set_result, None)
    await done
    assert healthy.writes == [b"x"]


async def test_a_buffer_that_drained_since_the_turns_first_frame_does_not_close_the_client() -> (
    None
):
    """The view taken at the turn's first frame can only be too high (uvloop may move the
    transport's buffer into the kernel before the flush): before closing a client for its
    backlog, the outbox reads the buffer again."""
    closed: list[tuple[int, str]] = []
    transport = _RecordingTransport(buffered=900)
    outbox = Outbox(
        transport, limit=1000, closer=lambda code, reason: closed.append((code, reason))
    )
    outbox.offer(b"a" * 50)  # 950 outstanding: within the bound
    transport.buffered = 0  # the kernel took the transport's buffer meanwhile
    outbox.offer(b"b" * 100)  # 1,050 by the stale view, 150 in truth
    assert closed == []
    transport.buffered = 900  # and one that is really over the bound still closes it
    outbox.offer(b"c" * 900)
    assert closed and closed[0][0] == 1008
