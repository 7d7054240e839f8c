"""The HTTP transport's pools against real event-handler apps on 127.0.0.1: one slow
endpoint must not stall handshakes, nor the handlers of another origin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web

from webpubsub.errors import UpstreamError
from webpubsub.node.observe import Exchange, Observers
from webpubsub.protocol.cloudevents import UpstreamRequest
from webpubsub.upstream.http import HttpTransport, Pool, UpstreamTimeout, _Origin, _target_of

WAIT = 5.0


class SlowApp:
    """Answers ``/slow`` only once ``release`` is set, everything else at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0
        self.held = asyncio.Event()
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            self.holding += 1
            self.held.set()
            await self.release.wait()
        return web.Response(status=204)

    def request(self, path: str) -> UpstreamRequest:
        return UpstreamRequest("POST", f"http://127.0.0.1:{self.port}{path}", (), b"")

    async def wait_holding(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.holding < count:
                self.held.clear()
                await self.held.wait()


async def _serve(app: SlowApp) -> web.AppRunner:
    web_app = web.Application()
    web_app.router.add_route("*", "/{tail:.*}", app.handle)
    runner = web.AppRunner(web_app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app.port = runner.addresses[0][1]
    return runner


@pytest.fixture
async def apps() -> AsyncIterator[tuple[SlowApp, SlowApp]]:
    first, second = SlowApp(), SlowApp()
    runners = [await _serve(first), await _serve(second)]
    try:
        yield first, second
    finally:
        first.release.set()
        second.release.set()
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    made = HttpTransport(max_connections=2)
    yield made
    await made.close()


async def _hang(transport: HttpTransport, app: SlowApp, count: int) -> list[asyncio.Task[object]]:
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(transport.send(app.request("/slow"), timeout=60.0))
        for _ in range(count)
    ]
    await app.wait_holding(count)
    return tasks


@pytest.mark.parametrize(
    ("where", "pool"),
    [
        ("connect on the same origin", Pool.CONNECT),  # its own budget
        ("an event to another origin", Pool.EVENTS),  # its own pool
    ],
)
async def test_slow_events_to_one_origin_stall_neither_connects_nor_other_origins(
    apps: tuple[SlowApp, SlowApp], transport: HttpTransport, where: str, pool: Pool
) -> None:
    slow, other = apps
    hanging = await _hang(transport, slow, 2)  # the whole events pool of that origin
    target = slow if pool is Pool.CONNECT else other
    response = await transport.send(target.request("/call"), timeout=2.0, pool=pool)
    assert response.status == 204, where
    slow.release.set()
    await asyncio.gather(*hanging)


async def test_the_timeout_covers_the_wait_for_a_pool_slot(
    apps: tuple[SlowApp, SlowApp], transport: HttpTransport
) -> None:
    slow, _ = apps
    hanging = await _hang(transport, slow, 2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.3 s"):
        await transport.send(slow.request("/fast"), timeout=0.3)
    assert loop.time() - started < 2.0
    slow.release.set()
    await asyncio.gather(*hanging)


async def test_an_observed_timeout_is_a_timeout_and_a_refusal_an_error(
    apps: tuple[SlowApp, SlowApp], transport: HttpTransport, unused_tcp_port: int
) -> None:
    """The outcome comes from the exception's type, not from its message."""
    seen: list[Exchange] = []

    class Listener:
        def cloud_event(self, exchange: Exchange) -> None:
            seen.append(exchange)

    transport.observer = Observers([Listener()])  # type: ignore[list-item]
    slow, _ = apps
    with pytest.raises(UpstreamTimeout):
        await transport.send(slow.request("/slow"), timeout=0.2)
    refused = UpstreamRequest("POST", f"http://127.0.0.1:{unused_tcp_port}/h", (), b"")
    with pytest.raises(UpstreamError):
        await transport.send(refused, timeout=2.0)
    assert [(e.timed_out, e.outcome) for e in seen] == [(True, "timeout"), (False, "error")]
    slow.release.set()


# -- the client's own connections, against a raw server that answers as told -----


class RawServer:
    """A TCP server on 127.0.0.1 that reads one request head (and its Content-Length
    body) at a time and answers with ``answer(request_number)``'s bytes; ``None`` closes
    the connection instead. Counts the connections it accepted and has open."""

    def __init__(self, answer: Callable[[int], bytes | None]) -> None:
        self.answer = answer
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[bytes] = []
        self.all_closed = asyncio.Event()
        self.arrived = asyncio.Event()
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.close_after: set[int] = set()
        """Requests after whose answer the server closes the connection (idle, then)."""
        self.delays: dict[int, float] = {}
        """Requests answered only after this many seconds (a slow handler)."""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def url(self, path: str = "/h") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.all_closed.clear()
        self._writers.add(writer)
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                self.arrived.set()
                answer = self.answer(len(self.requests))
                delay = self.delays.get(len(self.requests))
                if delay is not None:
                    await asyncio.sleep(delay)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if len(self.requests) in self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open -= 1
            if not self.open:
                self.all_closed.set()
            self._writers.discard(writer)
            writer.close()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def post(server: RawServer, body: bytes = b"x") -> UpstreamRequest:
    return UpstreamRequest("POST", server.url(), (("ce-id", "1"),), body)


async def test_the_request_on_the_wire_and_a_chunked_answer() -> None:
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    async with RawServer(lambda _: chunked) as server:
        transport = HttpTransport()
        request = UpstreamRequest("POST", server.url("/h?code=s"), (("ce-id", "1"),), b"body")
        response = await transport.send(request, timeout=WAIT)
        await transport.close()
    assert (response.status, response.body) == (201, b"hi")
    assert response.header_values("x-a") == ["1"]
    assert server.requests == [
        f"POST /h?code=s HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nce-id: 1\r\n".encode()
        + b"Content-Length: 4\r\n\r\nbody"
    ]


async def test_a_connection_is_reused_only_after_a_whole_reusable_answer() -> None:
    answers = {2: b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"}
    async with RawServer(lambda n: answers.get(n, OK)) as server:
        transport = HttpTransport()
        for _ in range(4):
            assert (await transport.send(post(server), timeout=WAIT)).body in (b"ok", b"")
        await transport.close()
    assert server.accepted == 2  # the Connection: close answer ended the first


async def test_a_connection_the_handler_closed_while_idle_is_not_reused() -> None:
    async with RawServer(lambda _: OK) as server:
        server.close_after = {1}
        transport = HttpTransport()
        await transport.send(post(server), timeout=WAIT)
        async with asyncio.timeout(WAIT):
            await server.all_closed.wait()
        async with RawServer(lambda _: OK) as other:  # a round trip: the loop saw the FIN
            await transport.send(post(other), timeout=WAIT)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 2


async def test_a_handler_closing_instead_of_answering_is_an_error_once() -> None:
    async with RawServer(lambda n: None if n == 2 else OK) as server:
        transport = HttpTransport()
        await transport.send(post(server), timeout=WAIT)
        with pytest.raises(UpstreamError, match="closed before the whole answer"):
            await transport.send(post(server), timeout=WAIT)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 2


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SMTP ready\r\n\r\n", "invalid response .not an HTTP/1.x status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", "no answer within"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n", "response too large"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", None),
    ],
)
async def test_bad_answers_are_errors_and_never_reused(answer: bytes, error: str | None) -> None:
    async with RawServer(lambda n: answer if n == 1 else OK) as server:
        transport = HttpTransport(max_response_bytes=1000)
        if error is None:  # bytes past the answer: it counts, the connection does not
            assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        else:
            with pytest.raises(UpstreamError, match=error):
                await transport.send(post(server), timeout=0.5)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 2


async def test_a_header_that_would_smuggle_another_is_refused_before_sending() -> None:
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport()
        request = UpstreamRequest("POST", server.url(), (("ce-state", "a\r\nX-B: 1"),), b"")
        with pytest.raises(UpstreamError, match="CR, LF or NUL"):
            await transport.send(request, timeout=WAIT)
        await transport.close()
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/h",
        "http:///h",
        "http://u:p@127.0.0.1/h",
        "http://" + "a" * 64 + ".example/h",  # a label over 63: IDNA refuses the host
        "http://a..b/h",
        "http://127.0.0.1/\udcff",  # a lone surrogate: no bytes to send for the path
    ],
)
async def test_an_unusable_url_is_an_error(url: str) -> None:
    transport = HttpTransport()
    with pytest.raises(UpstreamError, match="invalid event handler URL"):
        await transport.send(UpstreamRequest("POST", url, (), b""), timeout=WAIT)
    await transport.close()


async def test_at_most_the_pool_size_is_open_to_an_origin_and_waiters_go_in_turn() -> None:
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport(max_connections=3)
        calls = [asyncio.create_task(transport.send(post(server), timeout=WAIT)) for _ in range(20)]
        done = await asyncio.gather(*calls)
        await transport.close()
    assert [r.body for r in done] == [b"ok"] * 20
    assert server.max_open <= 3 and server.accepted <= 3


async def test_a_timed_out_request_closes_its_connection_and_frees_its_slot() -> None:
    async with RawServer(lambda n: OK if n > 1 else b"HTTP/1.1 200 OK\r\n") as server:
        transport = HttpTransport(max_connections=1)
        with pytest.raises(UpstreamTimeout):
            await transport.send(post(server), timeout=0.3)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 2


async def test_a_timeout_mid_body_on_a_reused_connection_discards_it() -> None:
    """The second answer stops inside its body: the request times out with the usual
    message, and its connection (out of step) is closed, not reused."""
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    async with RawServer(lambda n: partial if n == 2 else OK) as server:
        transport = HttpTransport(max_connections=1)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        with pytest.raises(UpstreamTimeout) as caught:
            await transport.send(post(server), timeout=0.3)
        assert (
            caught.value.message == f"POST http://127.0.0.1:{server.port}/h: no answer within 0.3 s"
        )
        async with asyncio.timeout(WAIT):
            await server.all_closed.wait()  # the connection is closed at the timeout
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 2


async def test_an_answered_request_leaves_no_timer_behind() -> None:
    """A request answered at once, with a short timeout: the next one on the same
    connection outlives that timeout and is answered (the first one's timer is gone)."""
    async with RawServer(lambda n: OK) as server:
        server.delays[2] = 0.5
        transport = HttpTransport(max_connections=1)
        assert (await transport.send(post(server), timeout=0.2)).body == b"ok"
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 1


async def test_a_request_cancelled_from_outside_frees_its_connection_slot() -> None:
    """A request on a reused connection is cancelled while its answer is due: the
    cancellation goes through, and the connection is closed with its slot given back."""
    async with RawServer(lambda n: b"" if n == 2 else OK) as server:  # #2: never answered
        transport = HttpTransport(max_connections=1)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        server.arrived.clear()
        task = asyncio.create_task(transport.send(post(server), timeout=WAIT))
        async with asyncio.timeout(WAIT):
            await server.arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(WAIT):
            await server.all_closed.wait()
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 2


async def test_a_closed_transport_refuses_and_closes_its_idle_connections() -> None:
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport()
        await transport.send(post(server), timeout=WAIT)
        await transport.close()
        with pytest.raises(UpstreamError, match="closed"):
            await transport.send(post(server), timeout=WAIT)
        async with asyncio.timeout(WAIT):
            await server.all_closed.wait()


async def test_a_probe_closed_unanswered_on_a_kept_alive_connection_goes_once_more() -> None:
    async with RawServer(lambda n: None if n == 2 else OK) as server:
        transport = HttpTransport()
        probe = UpstreamRequest("OPTIONS", server.url(), (), b"")
        await transport.send(probe, timeout=WAIT)
        assert (await transport.send(probe, timeout=WAIT)).body == b"ok"
        await transport.close()
    assert len(server.requests) == 3 and server.accepted == 2


async def test_closing_fails_the_requests_in_flight_and_those_waiting_for_a_slot() -> None:
    async with RawServer(lambda _: b"HTTP/1.1 200 OK\r\n") as server:  # never a whole answer
        transport = HttpTransport(max_connections=1)
        calls = [asyncio.create_task(transport.send(post(server), timeout=WAIT)) for _ in range(2)]
        async with asyncio.timeout(WAIT):
            await server.arrived.wait()  # the first is in flight, the second waits
        await transport.close()
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert [type(r) for r in results] == [UpstreamError, UpstreamError]
    assert "closed before the whole answer" in str(results[0])
    assert "transport is closed" in str(results[1])


async def test_a_waiter_for_a_slot_is_served_before_a_later_request() -> None:
    """One connection: while A's first request is in flight, B waits; when A's answer
    comes back, B goes next, not A's next request (which would take the idle
    connection first, every time: B would starve until its timeout)."""
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport(max_connections=1)

        def request(body: bytes) -> UpstreamRequest:
            return UpstreamRequest("POST", server.url(), (), body)

        async def back_to_back() -> None:
            for i in range(3):
                await transport.send(request(b"A%d" % i), timeout=WAIT)

        sender = asyncio.create_task(back_to_back())
        async with asyncio.timeout(WAIT):
            await server.arrived.wait()  # A0 holds the connection
        await transport.send(request(b"B"), timeout=WAIT)
        await sender
        await transport.close()
    assert [r.rsplit(b"\r\n", 1)[1] for r in server.requests] == [b"A0", b"B", b"A1", b"A2"]
    assert server.accepted == 1


async def test_a_waiter_cancelled_once_its_turn_came_passes_it_on() -> None:
    """A's connection is handed to B, and B is cancelled before it runs (by A's
    observer, told synchronously as A ends): C, behind B, gets the connection."""
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport(max_connections=1)
        tasks: dict[bytes, asyncio.Task[object]] = {}

        class CancelB:
            def cloud_event(self, exchange: Exchange) -> None:
                if exchange.request.body == b"A":
                    tasks[b"B"].cancel()

        transport.observer = Observers([CancelB()])  # type: ignore[list-item]
        for name in (b"A", b"B", b"C"):  # A opens the one connection, B and C wait
            request = UpstreamRequest("POST", server.url(), (), name)
            tasks[name] = asyncio.create_task(transport.send(request, timeout=WAIT))
        assert (await tasks[b"C"]).body == b"ok"  # type: ignore[attr-defined]
        with pytest.raises(asyncio.CancelledError):
            await tasks[b"B"]
        await transport.close()
    assert [r.rsplit(b"\r\n", 1)[1] for r in server.requests] == [b"A", b"C"]
    assert server.accepted == 1


async def test_closing_while_a_connection_opens_stops_its_request() -> None:
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport()
        task = asyncio.create_task(transport.send(post(server), timeout=WAIT))
        await asyncio.sleep(0)  # one turn: the task runs until it waits in create_connection
        assert [o.open for o in transport._origins.values()] == [1]  # it is opening
        await transport.close()
        with pytest.raises(UpstreamError, match="closed"):
            await task
        async with asyncio.timeout(WAIT):
            await server.all_closed.wait()
    assert server.requests == []


async def test_a_header_that_is_not_utf_8_is_an_error_not_a_crash() -> None:
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport()
        state = b"\xff".decode("utf-8", "surrogateescape")
        request = UpstreamRequest("POST", server.url(), (("ce-connectionState", state),), b"")
        with pytest.raises(UpstreamError, match="not UTF-8"):
            await transport.send(request, timeout=WAIT)
        await transport.close()
    assert server.requests == []


async def test_a_path_and_query_are_percent_encoded_on_the_wire() -> None:
    async with RawServer(lambda _: OK) as server:
        transport = HttpTransport()
        url = server.url("/h/é b/%41?q=é x&r=%2F;s:t@u")
        await transport.send(UpstreamRequest("POST", url, (), b""), timeout=WAIT)
        await transport.close()
    assert server.requests[0].startswith(
        b"POST /h/%C3%A9%20b/%41?q=%C3%A9%20x&r=%2F;s:t@u HTTP/1.1\r\n"
    )


def test_an_idn_host_is_sent_and_connected_to_as_punycode() -> None:
    target = _target_of("https://Bücher.example:8443/h")
    assert target is not None
    assert target.origin == (True, "xn--bcher-kva.example", 8443)
    assert target.host_header == "xn--bcher-kva.example:8443"
    v6 = _target_of("http://[::1]:8080/h")
    assert v6 is not None and v6.origin == (False, "::1", 8080)
    assert v6.host_header == "[::1]:8080"


async def test_a_handlers_keep_alive_timeout_shortens_the_idle_time() -> None:
    """``Keep-Alive: timeout=1``: the handler closes it after 1 s idle, so the
    connection is not kept at all (at most N - 1 s)."""
    short = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(lambda _: short) as server:
        transport = HttpTransport()
        for _ in range(2):
            await transport.send(post(server), timeout=WAIT)
        await transport.close()
    assert server.accepted == 2
    async with RawServer(lambda _: short.replace(b"=1", b"=30")) as server:
        transport = HttpTransport()
        for _ in range(2):
            await transport.send(post(server), timeout=WAIT)
        await transport.close()
    assert server.accepted == 1


async def _waiting(origin: _Origin, count: int) -> None:
    """Return once ``count`` requests wait for the origin (bounded: a few loop turns)."""
    for _ in range(100):
        if len(origin.waiters) >= count:
            return
        await asyncio.sleep(0)  # one loop turn, not a timed wait
    raise AssertionError("the requests never waited")


async def test_a_waiter_cancelled_in_the_turn_a_slot_comes_back_is_passed_over() -> None:
    """A task's cancel (its timeout) cancels the future it waits on at once, but it leaves
    the queue only when the task runs again: a slot or connection coming back in
    between goes to the next live waiter, or back to the pool."""
    origin = _Origin(1)
    assert await origin.acquire(0.0) is None  # the one slot, taken
    gone = asyncio.create_task(origin.acquire(0.0))
    kept = asyncio.create_task(origin.acquire(0.0))
    await _waiting(origin, 2)
    gone.cancel()
    origin.lost()  # the slot comes back while the cancelled waiter is still queued
    assert await kept is None  # the live waiter was handed the slot
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert origin.open == 1 and not origin.waiters
    late = asyncio.create_task(origin.acquire(0.0))
    await _waiting(origin, 1)
    late.cancel()
    origin.lost()  # nobody live waits: the slot is given up
    with pytest.raises(asyncio.CancelledError):
        await late
    assert origin.open == 0 and not origin.waiters


async def test_a_wait_for_a_slot_times_out_and_leaves_the_queue() -> None:
    """The wait ends at its deadline (a timer fails it, no cancellation): the waiter
    leaves the queue, and a slot coming back goes to the one behind it."""
    loop = asyncio.get_running_loop()
    origin = _Origin(1)
    assert await origin.acquire(0.0) is None  # the one slot, taken
    early = asyncio.create_task(origin.acquire(0.0, loop.time() + 0.05))
    behind = asyncio.create_task(origin.acquire(0.0))
    await _waiting(origin, 2)
    with pytest.raises(TimeoutError):
        await early
    assert len(origin.waiters) == 1
    origin.lost()
    assert await behind is None  # handed the slot
    assert origin.open == 1 and not origin.waiters


async def test_a_slot_handed_over_as_the_deadline_passes_is_passed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A waiter handed its turn that runs only after its deadline does not take it (its
    request would be sent out of time): the turn goes to the next waiter."""
    loop = asyncio.get_running_loop()
    origin = _Origin(1)
    assert await origin.acquire(0.0) is None
    now = loop.time()
    late = asyncio.create_task(origin.acquire(0.0, now + 3600))
    behind = asyncio.create_task(origin.acquire(0.0))
    await _waiting(origin, 2)
    origin.lost()  # handed to ``late``, which runs at the loop's next turn...
    assert len(origin.waiters) == 1  # (``late`` took it: it was not skipped)
    monkeypatch.setattr(loop, "time", lambda: now + 3600)  # ...after its deadline
    with pytest.raises(TimeoutError):
        await late
    monkeypatch.undo()
    assert await behind is None
    assert origin.open == 1 and not origin.waiters


async def test_a_timer_firing_after_the_answer_came_in_leaves_the_connection_sound() -> None:
    """The answer's last byte and the deadline in one loop turn: the answer is read
    first, then the timer runs. The request succeeded: its connection is kept."""
    async with RawServer(lambda n: OK) as server:
        transport = HttpTransport(max_connections=1)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        (origin,) = transport._origins.values()
        (conn,) = origin.idle
        conn.expire()  # what a timer left to run after the answer does
        assert not conn.closed
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        await transport.close()
    assert server.accepted == 1


async def test_a_connection_given_back_after_the_transport_closed_is_closed() -> None:
    """One handed to a waiter as the transport closes is in neither the idle list nor
    the busy set: given back later, it is closed, not kept open in a dropped origin."""
    async with RawServer(lambda n: OK) as server:
        transport = HttpTransport(max_connections=1)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        (origin,) = transport._origins.values()
        handed = origin.idle.pop()  # in flight to a waiter
        await transport.close()
        origin.give_back(handed, True, 0.0)
        assert handed.closed and not origin.idle
        async with asyncio.timeout(WAIT):
            await server.all_closed.wait()


async def test_a_connection_idle_near_a_five_second_server_limit_is_not_reused() -> None:
    """uvicorn, hypercorn and Node close a connection idle for 5 s by default (the first
    two without a ``Keep-Alive`` header saying so): past 4 s idle ours is not written on,
    so that an event never goes out as the handler closes its end."""
    async with RawServer(lambda n: OK) as server:
        transport = HttpTransport(max_connections=1)
        assert (await transport.send(post(server), timeout=WAIT)).body == b"ok"
        (origin,) = transport._origins.values()
        (conn,) = origin.idle
        assert origin.take_idle(conn.idle_since + 3.5) is conn  # still warm: reused
        origin.give_back(conn, True, conn.idle_since)
        assert origin.take_idle(conn.idle_since + 4.5) is None  # closed, not reused
        assert conn.closed and origin.open == 0
        await transport.close()
