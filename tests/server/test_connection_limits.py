"""What one client may cost the service (issue 10): nesting depth and exact numbers in
JSON data, groups per connection, inbound rate and fairness, and the closes the
WebSocket library makes, on the wire with raw aiohttp clients."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import secrets
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import WSMsgType
from azure.core.exceptions import HttpResponseError

from tests.conftest import StartService, make_config
from tests.server.test_json_protocol import WAIT, disconnected_then_closed, recv
from tests.support.handler import EventHandlerApp, held_until, posts
from tests.support.service import JSON_SUBPROTOCOL, chat_hub, client_url, json_client, sdk
from webpubsub.server.app import ServiceRunner

ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(ws: aiohttp.ClientWebSocketResponse, frame: str | dict[str, Any]) -> dict[str, Any]:
    """Send a request; its ack (which must be the next message)."""
    await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
    return await recv(ws)


async def pong(ws: aiohttp.ClientWebSocketResponse) -> None:
    assert await call(ws, {"type": "ping"}) == {"type": "pong"}


@pytest.fixture
async def runner(start_service: StartService) -> ServiceRunner:
    return await start_service(chat_hub())


# -- issue 10.8: deeply nested JSON data -----------------------------------------------


@pytest.mark.parametrize("depth", [255, 1023])
async def test_deeply_nested_data_gets_a_bad_request_ack_not_a_traceback(
    runner: ServiceRunner,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    depth: int,
) -> None:
    ws, _ = await json_client(http, await client_url(runner, roles=ROLES))
    data = "[" * depth + "1" + "]" * depth
    frame = '{"type":"sendToGroup","group":"g","ackId":7,"data":' + data + "}"
    with caplog.at_level(logging.WARNING):
        ack = await call(ws, frame)
    assert ack["ackId"] == 7 and ack["success"] is False
    assert ack["error"]["name"] == "BadRequest" and "nested" in ack["error"]["message"]
    await pong(ws)  # still connected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_deeply_nested_data_without_an_ack_id_closes_with_a_reason(
    runner: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    ws, _ = await json_client(http, await client_url(runner, roles=ROLES))
    await ws.send_str('{"type":"sendToGroup","group":"g","data":' + "[" * 300 + "]" * 300 + "}")
    reason, code = await disconnected_then_closed(ws)
    assert code == 1008 and "nested" in reason


# -- issue 10.15: big integers ----------------------------------------------------------


async def test_big_integers_in_client_json_arrive_exactly(
    runner: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    url = await client_url(runner, roles=ROLES)
    sender, _ = await json_client(http, url)
    receiver, _ = await json_client(http, url)
    assert (await call(receiver, {"type": "joinGroup", "group": "g", "ackId": 1}))["success"]
    big = "123456789012345678901234567890"
    await sender.send_str('{"type":"sendToGroup","group":"g","data":{"n":' + big + "}}")
    msg = await receiver.receive(timeout=WAIT)
    assert msg.type is WSMsgType.TEXT
    assert '"data":{"n":' + big + "}" in msg.data


# -- issue 10.1: groups per connection ----------------------------------------------------


@pytest.fixture
async def few_groups(start_service: StartService) -> ServiceRunner:
    return await start_service(dataclasses.replace(chat_hub(), max_groups_per_connection=3))


async def test_a_join_past_the_group_limit_gets_a_bad_request_ack(
    few_groups: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    ws, _ = await json_client(http, await client_url(few_groups, roles=ROLES))
    for i in range(3):
        ack = await call(ws, {"type": "joinGroup", "group": f"g{i}", "ackId": i + 1})
        assert ack["success"], ack
    ack = await call(ws, {"type": "joinGroup", "group": "one-too-many", "ackId": 9})
    assert ack["success"] is False and ack["error"]["name"] == "BadRequest"
    assert "3 groups" in ack["error"]["message"]
    async with sdk(few_groups) as service:
        assert not await service.group_exists("one-too-many")
        assert await service.group_exists("g2")


async def test_a_rest_add_past_the_group_limit_is_a_400_with_a_json_error(
    few_groups: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    ws, cid = await json_client(http, await client_url(few_groups))
    async with sdk(few_groups) as service:
        for i in range(3):
            await service.add_connection_to_group(f"g{i}", cid)
        await service.add_connection_to_group("g0", cid)  # a member already: fine
        with pytest.raises(HttpResponseError) as caught:
            await service.add_connection_to_group("one-too-many", cid)
        assert caught.value.status_code == 400
        assert caught.value.response.json()["code"] == "Error.BadRequest"
        assert "3 groups" in caught.value.response.json()["message"]
        assert not await service.group_exists("one-too-many")
        # Adds that cannot answer per connection skip the full one.
        await few_groups.operations.add_connections_to_groups(
            "chat", ["by-filter"], filter=f"connectionId eq '{cid}'"
        )
        assert not await service.group_exists("by-filter")
        await service.remove_connection_from_group("g0", cid)
        await service.add_connection_to_group("one-too-many", cid)
        assert await service.group_exists("one-too-many")
    await pong(ws)


# -- issue 10.7: inbound rate and fairness -------------------------------------------------


def client_frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    """One final client frame (RFC 6455 §5.2), masked unless told otherwise."""
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head = bytes((0x80 | opcode, mask_bit | length))
    elif length < 1 << 16:
        head = bytes((0x80 | opcode, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, mask_bit | 127)) + length.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = secrets.token_bytes(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A WebSocket client on a plain socket, driven from a thread (make it with
    ``asyncio.to_thread``): it writes frames as fast as the kernel takes them, unlike a
    client on the service's own event loop."""

    def __init__(
        self, url: str, protocol: str = "json.webpubsub.azure.v1", *, early: bytes = b""
    ) -> None:
        """``early``: bytes sent in the same write as the upgrade request."""
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=WAIT)
        key = base64.b64encode(secrets.token_bytes(16)).decode()
        self.sock.sendall(
            (
                f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
            ).encode()
            + early
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        self.received = head.split(b"\r\n\r\n", 1)[1]
        self.stop = threading.Event()

    def flood(self, blob: bytes, seconds: float) -> threading.Thread:
        """Write ``blob`` again and again for up to ``seconds`` (until told to stop)."""

        def run() -> None:
            deadline = time.monotonic() + seconds
            with contextlib.suppress(OSError):
                while not self.stop.is_set() and time.monotonic() < deadline:
                    self.sock.sendall(blob)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def read_all(self) -> bytes:
        """What the service sent until it closed the socket."""
        data = self.received
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                data += chunk
        return data

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a flood blocked in sendall
        self.sock.close()


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (opcode, payload) of each unmasked server frame in ``data``."""
    frames = []
    while len(data) >= 2:
        length, start = data[1] & 0x7F, 2
        if length == 126:
            length, start = int.from_bytes(data[2:4], "big"), 4
        elif length == 127:
            length, start = int.from_bytes(data[2:10], "big"), 10
        frames.append((data[0] & 0x0F, data[start : start + length]))
        data = data[start + length :]
    return frames


UNLIMITED = {"client_messages_per_second": 10**9, "client_bytes_per_second": 10**12}


async def test_one_flooding_client_does_not_slow_the_others(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """A client writing sends to an empty group as fast as it can (no role needed: each
    is refused, silently) while another measures its ping round trips: the flooder's
    backlog is read in slices, so the other's latency stays small, and the health check's
    too (issue 10: p50 went from 0.6 to 117 ms, the health check to 370 ms)."""
    runner = await start_service(dataclasses.replace(chat_hub(), **UNLIMITED))
    frame = client_frame(0x1, b'{"type":"sendToGroup","group":"empty","data":"x"}')
    flooder = await asyncio.to_thread(RawClient, await client_url(runner))
    other, _ = await json_client(http, await client_url(runner))
    thread = flooder.flood(frame * 20_000, seconds=10)
    try:
        await pong(other)
        latencies = []
        for _ in range(30):
            start = time.perf_counter()
            await pong(other)
            latencies.append(time.perf_counter() - start)
        health = []
        for _ in range(5):
            start = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{runner.port}/api/health") as response:
                assert response.status == 200
            health.append(time.perf_counter() - start)
        assert thread.is_alive()  # measured while the flood went on
    finally:
        flooder.close()
        thread.join(WAIT)
    assert statistics.median(latencies) < 0.02, sorted(latencies)
    assert statistics.median(health) < 0.05, sorted(health)


async def test_a_client_over_the_message_rate_gets_a_failed_ack_then_a_close(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(dataclasses.replace(chat_hub(), client_messages_per_second=20))
    ws, _ = await json_client(http, await client_url(runner, roles=ROLES))
    for i in range(1, 41):
        await ws.send_str(
            json.dumps(
                {"type": "sendToGroup", "group": "g", "ackId": i, "dataType": "text", "data": "x"}
            )
        )
    acks = []
    while (msg := await recv(ws))["type"] == "ack":
        acks.append(msg)
    assert 20 <= len(acks) < 40
    assert all(a["success"] for a in acks[:-1])
    assert acks[-1]["success"] is False
    assert acks[-1]["error"]["name"] == "TooManyRequests"
    assert msg["event"] == "disconnected" and msg["message"].startswith("TooManyRequests")
    close = await ws.receive(timeout=WAIT)
    assert (close.type, close.data) == (WSMsgType.CLOSE, 1008)
    assert close.extra == msg["message"][:123]


async def test_websocket_pings_count_against_the_message_rate(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(dataclasses.replace(chat_hub(), client_messages_per_second=20))
    ws, _ = await json_client(http, await client_url(runner))
    for _ in range(40):
        await ws.ping(b"p")
    reason, code = await disconnected_then_closed(ws)
    assert code == 1008 and reason.startswith("TooManyRequests")


async def test_a_client_over_the_byte_rate_is_closed(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """The byte bucket holds a second's worth, and at least one largest message."""
    runner = await start_service(dataclasses.replace(chat_hub(), client_bytes_per_second=1000))
    ws, _ = await json_client(http, await client_url(runner))
    big = json.dumps({"type": "event", "event": "e", "dataType": "text", "data": "x" * 400_000})
    for _ in range(3):
        await ws.send_str(big)
    reason, code = await disconnected_then_closed(ws)
    assert code == 1008 and reason.startswith("TooManyRequests") and "bytes" in reason


async def test_a_websocket_ping_is_answered_with_its_payload(
    runner: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    url = await client_url(runner)
    async with http.ws_connect(url, protocols=(JSON_SUBPROTOCOL,), autoping=False) as ws:
        assert (await recv(ws))["event"] == "connected"
        await ws.ping(b"are you there")
        msg = await ws.receive(timeout=WAIT)
        assert (msg.type, msg.data) == (WSMsgType.PONG, b"are you there")


# -- issue 10.14: the closes the WebSocket library makes -----------------------------------


def read_until_close(client: RawClient) -> list[tuple[int, bytes]]:
    """The frames the service sends until its close frame, which is answered."""
    data = client.received
    while not any(op == 0x8 for op, _ in server_frames(data)):
        chunk = client.sock.recv(65536)
        if not chunk:
            break
        data += chunk
    frames = server_frames(data)
    with contextlib.suppress(OSError):
        client.sock.sendall(client_frame(0x8, frames[-1][1][:2]))
    return frames


BROKEN = [
    # (what the client sends, the close code, words of the reason)
    (client_frame(0x1, b"\xff\xfe not UTF-8"), 1007, "UTF-8"),
    (bytes((0xC1,)) + client_frame(0x1, b"{}")[1:], 1002, "WebSocket protocol"),  # RSV1
    (client_frame(0x1, b"x" * 5000), 1009, "larger than"),
    (client_frame(0x1, b'{"type":"ping"}', masked=False), 1002, "unmasked"),
]


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    BROKEN,
    ids=["invalid-utf8", "reserved-bit", "too-big", "unmasked"],  # frames carry random masks
)
async def test_a_protocol_error_close_says_why_and_ends_a_reliable_connection(
    start_service: StartService,
    handler_app: EventHandlerApp,
    frame: bytes,
    code: int,
    words: str,
) -> None:
    runner = await start_service(
        chat_hub(handler_app.url, system=frozenset({"disconnected"})),
        max_message_bytes=4096,
        recovery_window_seconds=600.0,
    )
    url = await client_url(runner)
    client = await asyncio.to_thread(RawClient, url, "json.reliable.webpubsub.azure.v1")
    try:
        await asyncio.to_thread(client.sock.sendall, frame)
        frames = await asyncio.to_thread(read_until_close, client)
    finally:
        client.close()
    texts = [json.loads(payload) for op, payload in frames if op == 0x1]
    assert texts[0]["event"] == "connected"
    disconnected = texts[-1]
    assert disconnected["event"] == "disconnected" and words in disconnected["message"]
    op, payload = frames[-1]
    assert op == 0x8
    assert int.from_bytes(payload[:2], "big") == code
    assert payload[2:].decode() == disconnected["message"][:123]
    # Not kept for recovery: ended now.
    event = await handler_app.next_event("sys.disconnected")
    assert event.headers["ce-connectionId"] == texts[0]["connectionId"]
    assert words in event.body.decode()


async def test_an_unmasked_frame_sent_with_the_upgrade_is_refused_unread(
    runner: ServiceRunner,
) -> None:
    """Bytes that arrive with the upgrade request go through the mask check too, before
    aiohttp's reader parses them: the unmasked ping gets no pong."""
    ping = client_frame(0x1, b'{"type":"ping"}', masked=False)
    url = await client_url(runner)
    client = await asyncio.to_thread(RawClient, url, early=ping)
    try:
        frames = await asyncio.to_thread(read_until_close, client)
    finally:
        client.close()
    texts = [json.loads(payload) for op, payload in frames if op == 0x1]
    assert [t.get("event", t["type"]) for t in texts] == ["connected", "disconnected"]
    assert int.from_bytes(frames[-1][1][:2], "big") == 1002


async def test_a_client_closing_with_1002_is_echoed_not_refused(runner: ServiceRunner) -> None:
    """The echo of a client's own close code is not a refusal of the service's."""
    client = await asyncio.to_thread(RawClient, await client_url(runner))
    try:
        await asyncio.to_thread(client.sock.sendall, client_frame(0x8, b"\x03\xea"))
        frames = await asyncio.to_thread(read_until_close, client)
    finally:
        client.close()
    assert [op for op, _ in frames] == [0x1, 0x8]  # connected, then the echo
    assert frames[-1][1] == b"\x03\xea"


# -- issue 10.5: user events in flight per connection ---------------------------------------


async def test_requests_behind_a_held_event_are_bounded_and_read_on(
    start_service: StartService, handler_app: EventHandlerApp, http: aiohttp.ClientSession
) -> None:
    """While an event waits on a slow handler, the connection's next requests queue behind
    it in order, up to ``upstream.max_inflight_events_per_connection`` in all; the one
    past that is refused at once with a failed ack (it is read, not left in the socket)."""
    release = asyncio.Event()
    handler_app.responder = held_until(release, "e")
    config = make_config(chat_hub(handler_app.url))
    config = dataclasses.replace(
        config, upstream=dataclasses.replace(config.upstream, max_inflight_events_per_connection=2)
    )
    runner = await start_service(config=config)
    ws, _ = await json_client(http, await client_url(runner))
    try:
        for ack_id in (1, 2, 3):
            event = {"type": "event", "event": "e", "dataType": "text", "data": f"{ack_id}"}
            await ws.send_str(json.dumps({**event, "ackId": ack_id}))
        await handler_app.next_event("user.e")
        refused = await recv(ws)  # at once, while the first is still held
        assert refused["ackId"] == 3 and refused["success"] is False
        assert "in flight" in refused["error"]["message"]
    finally:
        release.set()
    assert [await recv(ws) for _ in range(2)] == [
        {"type": "ack", "ackId": 1, "success": True},
        {"type": "ack", "ackId": 2, "success": True},
    ]
    assert [r.body for r in posts(handler_app, "e")] == [b"1", b"2"]  # in order, no third


async def test_a_client_pipelining_events_to_a_handler_that_keeps_up_is_not_refused(
    start_service: StartService, handler_app: EventHandlerApp, http: aiohttp.ClientSession
) -> None:
    """100 events sent back to back, more than the bound: with a handler that answers at
    once, the reader waits for room instead of refusing (refusals are for a slow handler)."""
    runner = await start_service(chat_hub(handler_app.url))
    ws, _ = await json_client(http, await client_url(runner))
    for ack_id in range(1, 101):
        event = {"type": "event", "event": "e", "dataType": "text", "data": f"{ack_id}"}
        await ws.send_str(json.dumps({**event, "ackId": ack_id}))
    acks = [await recv(ws) for _ in range(100)]
    assert [(a["ackId"], a["success"]) for a in acks] == [(n, True) for n in range(1, 101)]
