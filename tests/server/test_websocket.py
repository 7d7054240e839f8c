"""The client WebSocket endpoint with real clients and a real event-handler app.

Handshake (Azure docs: client tokens, Azure docs: client protocols), simple clients, close codes
and the blocking ``message`` event (Azure docs: CloudEvents).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import socket
import time
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import WSMsgType, web
from azure.core.exceptions import HttpResponseError

from tests.conftest import ACCESS_KEY, SECOND_KEY, StartService
from tests.support.handler import EventHandlerApp, Recorded, default_responder, held_until
from tests.support.rawws import RawClient, client_frame
from tests.support.service import chat_hub, client_url, sdk
from webpubsub.protocol.tokens import issue_client_token
from webpubsub.protocol.wsframe import Opcode
from webpubsub.server.app import ServiceRunner

WAIT = 5.0
"""Upper bound for anything that should happen promptly."""


# -- helpers -------------------------------------------------------------------------


def endpoint(runner: ServiceRunner, hub: str = "chat") -> str:
    return f"ws://127.0.0.1:{runner.port}/client/hubs/{hub}"


def upgrade_headers() -> dict[str, str]:
    """What a WebSocket client sends, to read a refused handshake's body with a GET."""
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }


def crafted(runner: ServiceRunner, *, key: str = ACCESS_KEY, hub: str = "chat", **kw: Any) -> str:
    return issue_client_token(
        key, audience=f"{runner.endpoint}/client/hubs/{hub}", now=time.time(), **kw
    )


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def refused(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await http.ws_connect(url, **kw)
    return info.value.status


async def error_of(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers={**upgrade_headers(), **(headers or {})}) as resp:
        assert resp.content_type == "application/json"
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> tuple[int | None, str]:
    """Wait (bounded) for the service to close ``ws``: its close code and reason."""
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.CLOSE, msg
    return msg.data, msg.extra or ""


def echo(req: Recorded) -> web.StreamResponse:
    """Answers ``message`` events with ``echo:<body>`` as text."""
    if req.method == "POST" and req.event_name == "message":
        return web.Response(text="echo:" + req.body.decode(), content_type="text/plain")
    return default_responder(req)


async def assert_echoes(ws: aiohttp.ClientWebSocketResponse, text: str = "still here") -> None:
    await ws.send_str(text)
    msg = await ws.receive(timeout=WAIT)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "echo:" + text)


# -- handshake -----------------------------------------------------------------------


async def test_a_plain_get_is_400_with_a_json_error(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub(anonymous=True))
    async with http.get(f"http://127.0.0.1:{runner.port}/client/hubs/chat") as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["code"] == "Error.BadRequest"
    assert "WebSocket" in body["message"]


async def test_an_invalid_hub_is_400(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub(anonymous=True))
    url = endpoint(runner, "1bad")
    assert await refused(http, url) == 400
    status, body = await error_of(http, url)
    assert status == 400
    assert body["code"] == "Error.BadRequest"
    assert body["target"] == "hub"


async def test_no_token_is_401_unless_the_hub_allows_anonymous_clients(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    denying = await start_service(chat_hub())
    assert await refused(http, endpoint(denying)) == 401
    status, body = await error_of(http, endpoint(denying))
    assert (status, body["code"]) == (401, "Error.Unauthorized")

    allowing = await start_service(chat_hub(anonymous=True))
    async with await http.ws_connect(endpoint(allowing)) as ws, sdk(allowing) as service:
        await service.send_to_all("hello anonymous", content_type="text/plain")
        assert (await ws.receive(timeout=WAIT)).data == "hello anonymous"


async def test_a_token_in_the_authorization_header_is_accepted(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    headers = {"Authorization": f"Bearer {crafted(runner, user_id='alice')}"}
    async with await http.ws_connect(endpoint(runner), headers=headers), sdk(runner) as service:
        assert await service.user_exists("alice")


def _expired(runner: ServiceRunner) -> str:
    return issue_client_token(
        ACCESS_KEY,
        audience=f"{runner.endpoint}/client/hubs/chat",
        now=time.time() - 3600,
        ttl_seconds=60,  # expired 59 minutes ago: far beyond the clock skew
    )


def _alg_none(runner: ServiceRunner) -> str:
    claims = {"aud": f"{runner.endpoint}/client/hubs/chat", "exp": int(time.time()) + 600}
    return jwt.encode(claims, None, algorithm="none")


def _hs512(runner: ServiceRunner) -> str:
    claims = {"aud": f"{runner.endpoint}/client/hubs/chat", "exp": int(time.time()) + 600}
    with warnings.catch_warnings():  # PyJWT warns that the key is short for SHA-512
        warnings.simplefilter("ignore")
        return jwt.encode(claims, ACCESS_KEY.encode(), algorithm="HS512")


BAD_TOKENS: dict[str, Callable[[ServiceRunner], str]] = {
    "expired": _expired,
    "wrong key": lambda r: crafted(r, key="not-the-access-key-0123456789-abcdefghij"),
    "wrong hub": lambda r: crafted(r, hub="other"),
    "alg none": _alg_none,
    "HS512": _hs512,
    "garbage": lambda r: "not.a.jwt",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_a_bad_token_is_401(
    start_service: StartService, http: aiohttp.ClientSession, kind: str
) -> None:
    runner = await start_service(chat_hub(anonymous=True))  # a bad token is not anonymous
    url = f"{endpoint(runner)}?access_token={BAD_TOKENS[kind](runner)}"
    assert await refused(http, url) == 401
    status, body = await error_of(http, url)
    assert (status, body["code"]) == (401, "Error.Unauthorized")


async def test_a_token_signed_with_the_second_key_is_accepted(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub(), keys=(ACCESS_KEY, SECOND_KEY))
    url = f"{endpoint(runner)}?access_token={crafted(runner, key=SECOND_KEY, user_id='bob')}"
    async with await http.ws_connect(url), sdk(runner) as service:
        assert await service.user_exists("bob")


@pytest.mark.parametrize("path", ["/client/?hub=chat", "/client?hub=chat"])
async def test_the_legacy_endpoint_form(
    start_service: StartService, http: aiohttp.ClientSession, path: str
) -> None:
    runner = await start_service(chat_hub())
    url = f"ws://127.0.0.1:{runner.port}{path}&access_token={crafted(runner, user_id='carol')}"
    async with await http.ws_connect(url), sdk(runner) as service:
        assert await service.user_exists("carol")


async def test_token_groups_are_joined_at_connect(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    url = await client_url(runner, user_id="dave", groups=["g1", "g2"])
    async with await http.ws_connect(url) as ws, sdk(runner) as service:
        assert await service.group_exists("g1")
        assert await service.group_exists("g2")
        assert not await service.group_exists("g3")
        await service.send_to_group("g2", "to g2", content_type="text/plain")
        assert (await ws.receive(timeout=WAIT)).data == "to g2"


async def test_an_invalid_group_in_the_token_is_400(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    url = f"{endpoint(runner)}?access_token={crafted(runner, groups=['ok', '   '])}"
    assert await refused(http, url) == 400
    status, body = await error_of(http, url)
    assert status == 400
    assert body["target"] == "group"


async def test_a_custom_subprotocol_is_echoed_and_the_client_is_simple(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub(anonymous=True))
    async with (
        await http.ws_connect(endpoint(runner), protocols=["chat.v1", "chat.v2"]) as ws,
        sdk(runner) as service,
    ):
        assert ws.protocol == "chat.v1"
        # a simple client: no "connected" system message, payloads without envelope
        await service.send_to_all({"x": 1})
        msg = await ws.receive(timeout=WAIT)
        assert (msg.type, msg.json()) == (WSMsgType.TEXT, {"x": 1})


# -- simple clients: messages --------------------------------------------------------


async def test_a_message_over_the_limit_closes_with_1009_and_spares_the_others(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    handler_app.responder = echo
    runner = await start_service(chat_hub(handler_app.url, anonymous=True), max_message_bytes=4096)
    async with (
        await http.ws_connect(endpoint(runner)) as big,
        await http.ws_connect(endpoint(runner)) as other,
    ):
        await assert_echoes(big, "x" * 4000)  # under the limit
        await big.send_bytes(b"x" * 5000)
        code, reason = await closed_with(big)
        assert code == 1009 and "larger than the service accepts" in reason
        await assert_echoes(other)


async def test_the_limit_is_the_largest_message_accepted_as_for_a_rest_body(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """``max_message_bytes`` itself is accepted on both paths; one byte more is refused."""
    handler_app.responder = echo
    limit = 4096
    runner = await start_service(chat_hub(handler_app.url, anonymous=True), max_message_bytes=limit)
    async with await http.ws_connect(endpoint(runner)) as ws:
        await ws.send_bytes(b"x" * limit)
        msg = await ws.receive(timeout=WAIT)
        assert msg.type is WSMsgType.TEXT, msg
        assert len(msg.data) == len("echo:") + limit
        await ws.send_bytes(b"x" * (limit + 1))
        code, _ = await closed_with(ws)
        assert code == 1009
    async with sdk(runner) as service:
        await service.send_to_all("y" * limit, content_type="text/plain")  # accepted
        with pytest.raises(HttpResponseError) as raised:
            await service.send_to_all("y" * (limit + 1), content_type="text/plain")
    assert raised.value.status_code == 413


async def test_text_and_binary_frames_become_message_events(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub(handler_app.url, anonymous=True))
    async with await http.ws_connect(endpoint(runner)) as ws:
        await ws.send_str("héllo")
        text = await handler_app.next_event("user.message")
        await ws.send_bytes(b"\x00\xff")
        binary = await handler_app.next_event("user.message")
    assert text.headers["Content-Type"] == "text/plain"
    assert text.body == "héllo".encode()
    assert text.event_name == "message"
    assert binary.headers["Content-Type"] == "application/octet-stream"
    assert binary.body == b"\x00\xff"


async def test_frames_are_processed_in_order_one_at_a_time(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.method != "POST":
            return default_responder(req)
        body = req.body.decode()
        order.append(f"start {body}")
        if body == "first":
            await release.wait()
        order.append(f"end {body}")
        return web.Response(text=f"done {body}", content_type="text/plain")

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url, anonymous=True))
    async with await http.ws_connect(endpoint(runner)) as ws:
        await ws.send_str("first")
        await ws.send_str("second")
        await ws.send_str("third")
        first = await handler_app.next_event("user.message")
        assert first.body == b"first"
        # While "first" is held, no later frame may reach the handler.
        with pytest.raises(TimeoutError):
            await handler_app.next_event("user.message", timeout=0.3)
        release.set()
        replies = [(await ws.receive(timeout=WAIT)).data for _ in range(3)]
    assert replies == ["done first", "done second", "done third"]
    assert order == [
        "start first",
        "end first",
        "start second",
        "end second",
        "start third",
        "end third",
    ]


@pytest.mark.parametrize(
    ("content_type", "frame"),
    [
        ("text/plain", WSMsgType.TEXT),
        ("text/plain; charset=utf-8", WSMsgType.TEXT),
        ("application/json", WSMsgType.TEXT),
        ("application/octet-stream", WSMsgType.BINARY),
    ],
)
async def test_a_reply_body_is_sent_back_by_content_type(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    content_type: str,
    frame: WSMsgType,
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.method != "POST":
            return default_responder(req)
        return web.Response(body=b'{"reply":1}', headers={"Content-Type": content_type})

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url, anonymous=True))
    async with await http.ws_connect(endpoint(runner)) as ws:
        await ws.send_str("hi")
        msg = await ws.receive(timeout=WAIT)
    assert msg.type is frame
    assert msg.data == ('{"reply":1}' if frame is WSMsgType.TEXT else b'{"reply":1}')


async def test_a_reply_without_content_type_is_a_binary_frame(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    # aiohttp always adds a Content-Type to its responses: answer from a raw socket.
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        length = next(
            (
                int(line.split(":", 1)[1])
                for line in head.split("\r\n")
                if line.lower().startswith("content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        if head.startswith("OPTIONS"):
            writer.write(b"HTTP/1.1 200 OK\r\nWebHook-Allowed-Origin: *\r\n")
            writer.write(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nraw")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        runner = await start_service(chat_hub(f"http://127.0.0.1:{port}/", anonymous=True))
        async with await http.ws_connect(endpoint(runner)) as ws:
            await ws.send_str("hi")
            msg = await ws.receive(timeout=WAIT)
        assert (msg.type, msg.data) == (WSMsgType.BINARY, b"raw")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_204_reply_sends_nothing(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST" and req.body == b"marker":
            return web.Response(text="the marker", content_type="text/plain")
        if req.method == "POST" and req.body == b"empty":
            return web.Response(status=200, body=b"")  # 200 with an empty body
        return default_responder(req)  # 204

    handler_app.responder = responder
    runner = await start_service(chat_hub(handler_app.url, anonymous=True))
    async with await http.ws_connect(endpoint(runner)) as ws:
        await ws.send_str("nothing back")
        await ws.send_str("empty")
        await ws.send_str("marker")
        msg = await ws.receive(timeout=WAIT)
    assert (msg.type, msg.data) == (WSMsgType.TEXT, "the marker")


# -- simple clients: handler failures ------------------------------------------------


@pytest.fixture
async def never() -> AsyncIterator[asyncio.Event]:
    """An event the slow handler waits on; set at teardown to release it."""
    event = asyncio.Event()
    yield event
    event.set()


@pytest.mark.parametrize("failure", ["500", "slow", "down"])
async def test_a_failed_message_event_closes_that_connection_with_1011(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    never: asyncio.Event,
    failure: str,
) -> None:
    async def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST" and req.body == b"fail":
            if failure == "slow":
                await never.wait()
            return web.Response(status=500, text="boom")
        return echo(req)

    handler_app.responder = responder
    url = handler_app.url if failure != "down" else f"http://127.0.0.1:{free_port()}/eh"
    runner = await start_service(chat_hub(url, anonymous=True, timeout=0.5))
    async with (
        await http.ws_connect(endpoint(runner)) as victim,
        await http.ws_connect(endpoint(runner)) as other,
        sdk(runner) as service,
    ):
        started = time.monotonic()
        await victim.send_str("fail")
        code, reason = await closed_with(victim)
        assert time.monotonic() - started < 3.0
        assert code == 1011
        assert reason.startswith("The event handler failed")
        if failure != "down":
            await assert_echoes(other)
        await service.send_to_all("to the survivors", content_type="text/plain")
        assert (await other.receive(timeout=WAIT)).data == "to the survivors"
        assert not other.closed


async def test_a_message_without_a_matching_handler_closes_the_connection(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub(handler_app.url, anonymous=True, pattern="chat,other"))
    async with await http.ws_connect(endpoint(runner)) as ws:
        await ws.send_str("nobody listens")
        code, reason = await closed_with(ws)
    assert code == 1011
    assert "message" in reason
    assert not [r for r in handler_app.requests if r.method == "POST"]


async def test_a_long_close_reason_is_cut_between_characters(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub(anonymous=True))
    async with await http.ws_connect(endpoint(runner)) as ws, sdk(runner) as service:
        hub = runner.node.hub("chat") if runner.node is not None else None
        assert hub is not None
        (conn,) = hub.connections()
        await service.close_connection(conn.connection_id, reason="é" * 100)  # 200 bytes
        code, reason = await closed_with(ws)
    assert code == 1000
    assert reason == "é" * 61  # 122 bytes: the 62nd "é" would not fit whole in 123


async def test_a_client_gone_during_the_connect_webhook_is_no_error(
    handler_app: EventHandlerApp, start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    records: asyncio.Queue[logging.LogRecord] = asyncio.Queue()

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.put_nowait(record)

    handler_app.responder = held_until(release)
    runner = await start_service(
        chat_hub(handler_app.url, anonymous=True, system=frozenset({"connect", "connected"}))
    )
    caplog.set_level(logging.INFO, logger="webpubsub.server")
    recorder = Recorder(logging.INFO)
    logging.getLogger("webpubsub.server").addHandler(recorder)
    try:
        async with aiohttp.ClientSession() as session:
            attempt = asyncio.create_task(session.ws_connect(endpoint(runner)))
            await handler_app.next_event("sys.connect")
            attempt.cancel()
            with pytest.raises(asyncio.CancelledError):
                await attempt
        release.set()  # the handler accepts a client that is gone
        record = await asyncio.wait_for(records.get(), WAIT)
    finally:
        logging.getLogger("webpubsub.server").removeHandler(recorder)
    assert record.levelno < logging.WARNING, record.getMessage()
    assert runner.node is not None and runner.node.connection_count() == 0
    assert not [r for r in handler_app.requests if r.event_name == "connected"]


async def test_a_client_reset_while_its_pings_are_answered_is_no_error(
    handler_app: EventHandlerApp, start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    """Two pings and a reset in one go: the first pong's write meets the reset, the second
    finds the transport closing.  That is the client leaving, not a failure to log."""
    runner = await start_service(chat_hub(handler_app.url, system=frozenset({"disconnected"})))
    for _ in range(3):
        raw = await RawClient.connect(await client_url(runner))
        raw.writer.write(client_frame(Opcode.PING, b"a") + client_frame(Opcode.PING, b"b"))
        raw.reset()
        event = await handler_app.next_event("sys.disconnected")
        assert b"lost" in event.body, event.body
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(
    ("sent", "answered"), [(1000, 1000), (1001, 1001), (4000, 4000), (1003, 1003)]
)
async def test_a_client_close_is_answered_with_its_own_code(
    service: ServiceRunner, http: aiohttp.ClientSession, sent: int, answered: int
) -> None:
    for protocols in ((), ("json.webpubsub.azure.v1",), ("json.reliable.webpubsub.azure.v1",)):
        ws = await http.ws_connect(await client_url(service, user_id="u"), protocols=protocols)
        if protocols:
            assert (await ws.receive_json(timeout=WAIT))["event"] == "connected"
        await ws.close(code=sent)
        assert ws.close_code == answered, protocols


async def test_a_close_frame_without_a_code_is_answered_with_1000(
    service: ServiceRunner,
) -> None:
    url = await client_url(service, user_id="u")
    host_port = url.split("/")[2]
    path = url.split(host_port, 1)[1]
    reader, writer = await asyncio.open_connection(*host_port.split(":"))
    try:
        head = {"Host": host_port, **upgrade_headers()}
        lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
        writer.write("\r\n".join(lines).encode())
        async with asyncio.timeout(WAIT):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
            writer.write(b"\x88\x80" + os.urandom(4))  # a masked close frame with no body
            header = await reader.readexactly(2)
            assert header[0] == 0x88  # FIN + close
            body = await reader.readexactly(header[1] & 0x7F)
    finally:
        writer.close()
    assert int.from_bytes(body[:2], "big") == 1000


async def test_shutdown_stops_accepting_before_it_waits_for_the_clients(
    start_service: StartService, handler_app: EventHandlerApp
) -> None:
    """SIGTERM's stop: the port refuses new sockets while the old clients finish (here one
    whose message a slow handler holds; with ``serve --workers`` another worker answers the
    new ones), not only once they are gone."""
    release = asyncio.Event()
    handler_app.responder = held_until(release, "message")
    runner = await start_service(chat_hub(handler_app.url))
    raw = await RawClient.connect(await client_url(runner))
    await raw.send(client_frame(Opcode.TEXT, b"hello"))
    await handler_app.next_event(".message")
    stopping = asyncio.create_task(runner.stop())
    try:
        first, _ = await raw.read_frame()
        assert first == 0x80 | Opcode.CLOSE  # the clients are being closed ...
        with pytest.raises(OSError):  # ... and the port no longer accepts
            _, writer = await asyncio.open_connection("127.0.0.1", runner.port)
            writer.close()
        assert not stopping.done()  # still waiting for the client whose event is held
    finally:
        release.set()
    async with asyncio.timeout(10):
        await stopping
    await raw.aclose()
