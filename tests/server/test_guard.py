"""The port before a request is complete (server/guard.py): deadlines, handshakes in flight,
malformed requests, and what the log says about them.

Raw asyncio sockets do what no HTTP library does: send nothing, send half a request line,
trickle headers, leave out an upgrade's final blank line, send a request line longer than
the parser takes.  The deadlines are set small in each test; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from tests.conftest import ACCESS_KEY, StartService, tls_files
from tests.support.handler import EventHandlerApp, held_until
from tests.support.rawws import handshake_request
from tests.support.service import chat_hub, client_url, json_client
from webpubsub import devcert
from webpubsub.protocol.tokens import issue_client_token, issue_rest_token
from webpubsub.server.app import ServiceRunner
from webpubsub.server.guard import FdBudget, GuardedHandler, Throttle, fd_reserve

DEADLINE = 0.5
"""``server.header_timeout_seconds`` in these tests (closes are checked not to come more
than 10 % early: the event loop's clock is read once per turn)."""
WAIT = 10.0
"""Upper bound for anything that should happen promptly (never a timing assertion)."""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Raw:
    """One plain TCP connection to the service."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.opened = time.monotonic()

    @classmethod
    async def open(cls, runner: ServiceRunner, sent: bytes = b"") -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.port)
        raw = cls(reader, writer)
        if sent:
            writer.write(sent)
        return raw

    @property
    def local(self) -> str:
        host, port = self.writer.get_extra_info("sockname")[:2]
        return f"{host}:{port}"

    async def closed_after(self) -> float:
        """Read until the service closes (bounded): seconds since the socket opened."""
        async with asyncio.timeout(WAIT):
            while await self.reader.read(65536):
                pass
        return time.monotonic() - self.opened

    async def answer(self) -> tuple[bytes, bytes]:
        """The status line and body of one response (bounded wait)."""
        async with asyncio.timeout(WAIT):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            )
            body = await self.reader.readexactly(length)
        return lines[0].encode(), body

    def close(self) -> None:
        self.writer.close()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "webpubsub.server" and r.levelno == logging.WARNING
    ]


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def upgrade_without_blank_line(runner: ServiceRunner) -> bytes:
    token = issue_client_token(
        ACCESS_KEY, audience=f"{runner.endpoint}/client/hubs/chat", now=time.time()
    )
    request = handshake_request(
        f"ws://127.0.0.1:{runner.port}/client/hubs/chat?access_token={token}"
    )
    return request.removesuffix(b"\r\n")


# -- the header deadline ---------------------------------------------------------------


async def test_sockets_without_a_complete_request_are_closed_at_the_deadline(
    start_service: StartService, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """Idle, half a request line, an upgrade without its final CRLF: each is closed once
    the deadline passes (not before), logged with its address; others are served meanwhile."""
    caplog.set_level(logging.INFO, "webpubsub.server")
    runner = await start_service(header_timeout_seconds=DEADLINE)
    stalled = [
        await Raw.open(runner),
        await Raw.open(runner, b"GET /api/hea"),
        await Raw.open(runner, upgrade_without_blank_line(runner)),
    ]
    ws, _ = await json_client(http, await client_url(runner))  # served meanwhile
    async with http.get(f"{runner.endpoint}/api/health") as resp:
        assert resp.status == 200
    for raw in stalled:
        assert DEADLINE * 0.9 <= await raw.closed_after() < WAIT  # the loop clock is coarse
    reaped = [w for w in warnings_of(caplog) if "no complete request" in w]
    assert sorted(reaped) == sorted(
        f"closed a connection from {raw.local}: no complete request within {DEADLINE:g} s"
        for raw in stalled
    )
    assert not ws.closed  # a connection that has upgraded is not waiting for a request
    await ws.close()
    assert_no_tracebacks(caplog)


async def test_a_trickle_of_header_bytes_does_not_extend_the_deadline(
    start_service: StartService,
) -> None:
    runner = await start_service(header_timeout_seconds=DEADLINE)
    head = upgrade_without_blank_line(runner) + b"\r\n"
    raw = await Raw.open(runner)
    for sent, byte in enumerate(head, 1):  # noqa: B007 - sent is read after the loop  # bounded: the whole head would take ~15 s
        raw.writer.write(bytes([byte]))
        try:
            data = await asyncio.wait_for(raw.reader.read(1), 0.05)  # the trickle's pace
        except TimeoutError:
            continue
        assert data == b""  # closed, not answered
        break
    else:
        pytest.fail("the whole head was trickled in and the connection stayed open")
    assert sent < len(head)
    assert time.monotonic() - raw.opened >= DEADLINE * 0.9


async def test_a_keep_alive_connection_waits_its_own_time_and_is_closed_quietly(
    start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "webpubsub.server")
    idle = 2 * DEADLINE
    runner = await start_service(header_timeout_seconds=DEADLINE, keepalive_timeout_seconds=idle)
    raw = await Raw.open(runner, b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n")
    status = await asyncio.wait_for(raw.reader.readline(), WAIT)
    assert status.startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    await raw.closed_after()
    assert time.monotonic() - answered >= idle * 0.9
    assert warnings_of(caplog) == []  # routine: debug only
    assert any("no next request within 1 s" in r.getMessage() for r in caplog.records)


async def test_keep_alive_requests_reuse_their_connection_s_one_timer(
    start_service: StartService,
) -> None:
    """No timer is made and cancelled per request: the one set at the first wait fires
    at its time, finds the connection served since, and is set for its current wait."""
    idle = 2 * DEADLINE
    runner = await start_service(header_timeout_seconds=DEADLINE, keepalive_timeout_seconds=idle)
    assert runner.site is not None and runner.site.guard is not None
    guard = runner.site.guard
    health = b"GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = await Raw.open(runner, health)
    assert (await raw.answer())[0].startswith(b"HTTP/1.1 200 ")
    (handler,) = guard._waiting  # answered: it waits for its next head
    timer = handler.deadline_timer
    assert timer is not None
    for _ in range(19):
        raw.writer.write(health)
        status, _ = await raw.answer()
        assert status.startswith(b"HTTP/1.1 200 ")
    answered = time.monotonic()
    assert handler.deadline_timer is timer and handler.requests == 20
    await raw.closed_after()  # the timer fired early (the first head's deadline), was set again
    assert time.monotonic() - answered >= idle * 0.9
    assert not guard._waiting and handler.deadline_timer is None


# -- handshakes in flight ---------------------------------------------------------------


async def test_handshakes_over_the_cap_get_503_with_a_json_error(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()
    handler_app.responder = held_until(release)
    runner = await start_service(
        chat_hub(handler_app.url, anonymous=True, system=frozenset({"connect"})),
        max_pending_handshakes=2,
    )
    url = f"ws://127.0.0.1:{runner.port}/client/hubs/chat"
    pending = [asyncio.create_task(http.ws_connect(url)) for _ in range(2)]
    for _ in pending:
        await handler_app.next_event("sys.connect")
    raw = await Raw.open(runner, handshake_request(url + "?x=1"))
    status, body = await raw.answer()
    assert b" 503 " in status, status
    detail = orjson.loads(body)
    assert detail["code"] == "Error.ServiceUnavailable"
    assert {"message", "target", "details", "inner"} <= detail.keys()
    [refused] = [w for w in warnings_of(caplog) if "handshake" in w]
    assert f"from {raw.local}: " in refused
    release.set()
    for task in pending:
        ws = await asyncio.wait_for(task, WAIT)
        await ws.close()
    async with await http.ws_connect(url) as ws:  # the places are free again
        assert not ws.closed
    assert_no_tracebacks(caplog)


# -- malformed requests ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["request line", "header"])
async def test_an_oversized_request_is_a_json_400_logged_without_its_token(
    start_service: StartService, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    runner = await start_service()
    token = issue_client_token(ACCESS_KEY, audience="x", now=time.time(), user_id="u" * 9000)
    if where == "request line":
        request = f"GET /client/hubs/chat?access_token={token} HTTP/1.1\r\nHost: x\r\n\r\n"
    else:
        request = f"GET /api/health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
    raw = await Raw.open(runner, request.encode())
    status, body = await raw.answer()
    assert b" 400 " in status, status
    detail = orjson.loads(body)
    assert detail["code"] == "Error.BadRequest"
    assert "too long" in detail["message"]
    assert token[:20].encode() not in body
    [line] = warnings_of(caplog)
    assert line.startswith(f"refused a malformed request from {raw.local}: ")
    assert token[:20] not in caplog.text
    assert_no_tracebacks(caplog)


# -- units: the throttle and the descriptor budget ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_throttle_logs_a_burst_per_window_and_counts_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttle = Throttle(burst=2, window=10.0, clock=clock)
    for i in range(1000):
        throttle.warning("refused %d", i)
    assert warnings_of(caplog) == [
        "refused 0",
        "refused 1 (more like it within 10 s: counted, not logged)",
    ]
    clock.now = 10.0
    throttle.warning("refused %d", 1000)
    assert warnings_of(caplog)[-1] == "refused 1000 (and 998 more not logged)"
    throttle.warning("refused %d", 1001)
    assert warnings_of(caplog)[-1].endswith("1001 (more like it within 10 s: counted, not logged)")
    assert throttle.dropped == 0


def test_the_descriptor_budget_counts_others_at_most_once_per_refresh() -> None:
    clock = Clock()
    counts = iter([50, 400])
    calls: list[int] = []

    def count() -> int:
        calls.append(1)
        return next(counts)

    budget = FdBudget(1024, count=count, clock=clock, refresh=1.0)
    reserve = fd_reserve(1024)
    assert budget.free(10) == 1024 - reserve - 40 - 10  # 40 others
    assert budget.free(500) == 1024 - reserve - 40 - 500  # own connections: exact, no count
    assert len(calls) == 1
    clock.now = 1.0
    assert budget.free(100) == 1024 - reserve - 300 - 100  # counted again
    assert fd_reserve(1024) == 32 and fd_reserve(65536) == 2048
    assert FdBudget(None).free(10**6) is None


async def test_a_tls_handshake_has_the_same_deadline(
    start_service: StartService, dev_cert: devcert.DevCert, caplog: pytest.LogCaptureFixture
) -> None:
    runner = await start_service(header_timeout_seconds=DEADLINE, **tls_files(dev_cert))
    raw = await Raw.open(runner, b"\x16\x03\x01")  # the start of a ClientHello, no more
    assert DEADLINE * 0.9 <= await raw.closed_after() < WAIT
    assert_no_tracebacks(caplog)


async def test_a_slow_rest_body_that_keeps_coming_is_not_cut(start_service: StartService) -> None:
    """The body deadline is an idle one: a body arriving slowly but steadily, for longer
    than the deadline in all, is accepted (a slow uplink is not a stalled client)."""
    runner = await start_service(header_timeout_seconds=DEADLINE)
    target = "/api/hubs/chat/:send"
    token = issue_rest_token(ACCESS_KEY, audience=runner.endpoint + target, now=time.time())
    pieces = 6
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{runner.port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {pieces * 10}\r\n\r\n"
    )
    raw = await Raw.open(runner, head.encode())
    for _ in range(pieces):  # a slow client: a piece every half deadline, 3 deadlines in all
        await asyncio.sleep(DEADLINE / 2)
        raw.writer.write(b"x" * 10)
    status, _ = await raw.answer()
    assert b" 202 " in status, status
    raw.close()


async def test_a_rest_body_that_stops_coming_is_408_at_the_deadline(
    start_service: StartService, caplog: pytest.LogCaptureFixture
) -> None:
    """The head arrived, the body stalls: the request is still not complete."""
    runner = await start_service(header_timeout_seconds=DEADLINE)
    target = "/api/hubs/chat/:send"
    token = issue_rest_token(ACCESS_KEY, audience=runner.endpoint + target, now=time.time())
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{runner.port}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n"
    )
    raw = await Raw.open(runner, head.encode() + b"x" * 10)
    status, body = await raw.answer()
    assert b" 408 " in status, status
    assert orjson.loads(body)["code"] == "Error.RequestTimeout"
    assert DEADLINE * 0.9 <= await raw.closed_after() < WAIT  # and the connection ends
    assert_no_tracebacks(caplog)


async def test_a_deadline_between_the_loop_s_milliseconds_is_kept_without_spinning(
    start_service: StartService,
) -> None:
    """uvloop's timers may fire up to a millisecond before a deadline that is not a
    whole millisecond (its clock counts them): the timer is set again once at most, not
    at once again and again until the clock passes the deadline."""
    timeout = 0.0503
    runner = await start_service(header_timeout_seconds=timeout)
    assert runner.site is not None and runner.site.guard is not None
    guard = runner.site.guard
    checks: dict[object, int] = {}
    check = guard._check

    def counted(handler: GuardedHandler) -> None:
        checks[handler] = checks.get(handler, 0) + 1
        check(handler)

    guard._check = counted  # type: ignore[method-assign]
    stalled = [await Raw.open(runner) for _ in range(5)]
    for raw in stalled:
        assert timeout * 0.9 <= await raw.closed_after() < WAIT
    assert len(checks) == 5 and max(checks.values()) <= 2, checks
