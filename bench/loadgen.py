"""The load generator of bench/scenarios.py: one process on uvloop holding a share of the
WebSocket clients (:class:`rawws.RawWebSocket`), and a share of the sending.

The orchestrator drives it over a pipe: ``("connect",)`` opens its clients;
``("step", rate, t0, duration, warmup, drain)`` sends at ``rate`` per second on the
schedule ``t0 + i / rate`` (ns, ``time.monotonic_ns()``) until ``t0 + duration`` while
every client counts the stamps of the step's messages until ``t0 + duration + drain``;
``("stop",)`` closes everything. REST calls go over :class:`RestPool`, a minimal
HTTP/1.1 keep-alive client (the aiohttp client cost the generator about 0.2 ms of CPU
per request, more than the service spent on some of them).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any
from urllib.parse import urlsplit

from harness import own_cpu_seconds, payload, raise_fd_limit
from rawws import OnStamp, RawWebSocket

OPEN_CONCURRENCY = 64
"""WebSocket handshakes one generator process runs at once."""
NS = 1_000_000_000
REQUEST_TIMEOUT = 30.0
COMMAND_TIMEOUT = 3600.0


# -- what a generator process is given ----------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    url: str
    subprotocol: str | None = None
    sio_auth: str | None = None
    """socket.io: the CONNECT packet's auth payload (JSON); None: not socket.io."""
    frame: tuple[str, str] = ("", "")
    """What a published message is wrapped in (prefix, suffix)."""


@dataclass(frozen=True)
class GeneratorSpec:
    index: int
    clients: list[ClientSpec]
    size: int
    sends: str
    """``rest``, ``publish`` or ``none``; a generator with no share of the sending has
    ``none``."""
    rest_urls: list[str] = field(default_factory=list)
    rest_key: str | None = None
    """Sign each REST request with this key (as the SDKs do: ``aud`` = the URL)."""
    concurrency: int = 16
    senders: int = 1
    """Generators sharing the sending: REST targets are taken round-robin over all of
    them (this one's sends are ``index``, ``index + senders``, ...)."""


@dataclass
class ConnectReport:
    connected: int
    failed: int
    start_ns: int
    end_ns: int
    cpu_seconds: float
    error: str = ""


@dataclass
class StepReport:
    scheduled: int
    """Sends due within the measured window (sent or not)."""
    sent: int
    send_errors: int
    first_error: str
    received: int
    """Deliveries of measured messages."""
    received_all: int
    """Deliveries of every message of the step (warm-up included): CPU per delivery."""
    latencies_ns: bytes
    lag_p99_ns: float
    """How late the generator started its sends (its own falling behind)."""
    cpu_seconds: float
    cpu_sending: float
    """CPU-seconds from the step's start to its last send's due time (``duration``)."""
    closed: int
    """Clients whose connection ended (during the step or before)."""


# -- the generator process ------------------------------------------------------------------


def generator(pipe: Pipe, spec: GeneratorSpec) -> None:
    raise_fd_limit()
    import uvloop

    uvloop.run(_generator(pipe, spec))


class _Window:
    """Which stamps the receivers count: measured in [start, end), all in [t0, end)."""

    def __init__(self) -> None:
        self.t0 = self.start = self.end = 0
        self.received = self.received_all = 0
        self.latencies = array("q")


async def _generator(pipe: Pipe, spec: GeneratorSpec) -> None:
    def next_command() -> Any:
        """The orchestrator's next command, read in a thread: the pipe stays blocking
        (a loop reader would make it non-blocking, and a large report would then fail
        to send). Its end, or an hour of silence, is a stop."""
        try:
            return pipe.recv() if pipe.poll(COMMAND_TIMEOUT) else ("stop",)
        except (EOFError, OSError):
            return ("stop",)

    window = _Window()
    sockets: list[RawWebSocket] = []
    closed = [0]

    def on_stamp(sent: int, now: int) -> None:
        w = window
        if w.t0 <= sent < w.end:
            w.received_all += 1
            if sent >= w.start:
                w.received += 1
                w.latencies.append(now - sent)

    def on_close() -> None:
        closed[0] += 1

    rest = RestPool(spec.concurrency)
    frames: list[tuple[str, str]] = []
    try:
        while True:  # bounded: by the orchestrator's "stop" (or its pipe's end)
            command = await asyncio.to_thread(next_command)
            kind = command[0]
            if kind == "stop":
                break
            if kind == "connect":
                opened: list[ClientSpec] = []
                report = await _connect(spec, sockets, opened, on_stamp, on_close)
                frames = [c.frame for c in opened]
                pipe.send(("connected", report))
            elif kind == "step":
                _, rate, t0, duration, warm, drain = command
                report = await _step(
                    spec, rest, sockets, frames, window, rate, t0, duration, warm, drain
                )
                report.closed = closed[0]
                pipe.send(("step", report))
    finally:
        rest.close()
        for ws in sockets:
            ws.close()


async def _connect(
    spec: GeneratorSpec,
    sockets: list[RawWebSocket],
    opened: list[ClientSpec],
    on_stamp: OnStamp,
    on_close: Callable[[], None],
) -> ConnectReport:
    """Open every client (``OPEN_CONCURRENCY`` at once); a client counts once it can be
    used: upgraded (simple), ``connected`` received (JSON), namespace joined (socket.io)."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    cpu0 = own_cpu_seconds()
    start = time.monotonic_ns()
    errors: list[str] = []

    async def open_one(client: ClientSpec) -> RawWebSocket:
        sio = client.sio_auth is not None
        async with gate:
            ws = await RawWebSocket.connect(client.url, client.subprotocol, on_stamp, on_close, sio)
            if client.subprotocol:
                first = await ws.next_message()
                if b'"connected"' not in first:
                    raise RuntimeError(f"no connected message: {first!r:.200}")
            if client.sio_auth is not None:
                hello = await ws.next_message()  # 0{"sid":...}
                if not hello.startswith(b"0"):
                    raise RuntimeError(f"no Engine.IO open packet: {hello!r:.200}")
                ws.send(("40" + client.sio_auth).encode())
                joined = await ws.next_message()
                if not joined.startswith(b"40"):
                    raise RuntimeError(f"no socket.io CONNECT: {joined!r:.200}")
            ws.ready()
            return ws

    results = await asyncio.gather(*(open_one(c) for c in spec.clients), return_exceptions=True)
    end = time.monotonic_ns()
    for client, result in zip(spec.clients, results, strict=True):
        if isinstance(result, BaseException):
            errors.append(repr(result))
        else:
            sockets.append(result)
            opened.append(client)
    return ConnectReport(
        connected=len(sockets),
        failed=len(errors),
        start_ns=start,
        end_ns=end,
        cpu_seconds=own_cpu_seconds() - cpu0,
        error=errors[0][:300] if errors else "",
    )


def due_in(t0: int, interval_ns: float, start: int, end: int) -> int:
    """How many sends of the schedule ``t0 + int(i * interval_ns)`` fall in [start, end)."""
    return max(0, _first_at(t0, interval_ns, end) - _first_at(t0, interval_ns, start))


def _first_at(t0: int, interval_ns: float, bound: int) -> int:
    """The first ``i >= 0`` whose send time ``t0 + int(i * interval_ns)`` (as the sender
    computes it) is at or after ``bound``, i.e. ``i * interval_ns >= bound - t0``: the
    quotient's ceiling, moved by the one step its rounding can be off."""
    k = bound - t0
    i = max(0, math.ceil(k / interval_ns))
    if i > 0 and (i - 1) * interval_ns >= k:
        i -= 1
    elif i * interval_ns < k:
        i += 1
    return i


async def _step(
    spec: GeneratorSpec,
    rest: RestPool,
    sockets: list[RawWebSocket],
    frames: list[tuple[str, str]],
    window: _Window,
    rate: float,
    t0: int,
    duration: int,
    warm: int,
    drain: int,
) -> StepReport:
    """One paced step: sends due at ``t0 + i / rate`` until ``t0 + duration``; receivers
    count stamps of [t0, end) (measured: from ``t0 + warm``) until ``end + drain``."""
    from webpubsub.protocol.tokens import issue_rest_token

    end = t0 + duration
    hard_stop = end + drain
    window.latencies = array("q")
    window.received = window.received_all = 0
    window.t0, window.start, window.end = t0, t0 + warm, end
    cpu0 = own_cpu_seconds()
    sent = errors = 0
    lags = array("q")
    pending: set[asyncio.Task[None]] = set()
    first_error = [""]
    gate = asyncio.Semaphore(max(1, spec.concurrency))
    monotonic_ns = time.monotonic_ns
    interval = NS / rate if rate > 0 and spec.sends != "none" else 0.0

    async def post(url: str, body: str) -> None:
        nonlocal errors
        try:
            token = None
            if spec.rest_key:
                token = issue_rest_token(spec.rest_key, audience=url, now=time.time())
            status = await rest.post(url, body, token)
            if status >= 300:
                errors += 1
                first_error[0] = first_error[0] or f"HTTP {status} from {url[:120]}"
        except Exception as exc:  # refused, reset, timed out, not HTTP: all one error
            errors += 1
            first_error[0] = first_error[0] or repr(exc)[:300]
        finally:
            gate.release()

    wait = (t0 - monotonic_ns()) / NS
    if wait > 0:
        await asyncio.sleep(wait)
    i = 0
    targets = spec.rest_urls or [""]
    stride = max(1, spec.senders)
    while interval and sockets:  # bounded: by the schedule's end, or the hard stop
        due = t0 + int(i * interval)
        if due >= end:
            break
        now = monotonic_ns()
        if now >= hard_stop:
            break  # the rest was never sent: counted as lost
        if due > now:
            await asyncio.sleep((due - now) / NS)
        body = payload(i, due, spec.size)
        if spec.sends == "rest":
            await gate.acquire()
            task = asyncio.create_task(
                post(targets[(i * stride + spec.index) % len(targets)], body)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
        else:
            k = i % len(sockets)
            prefix, suffix = frames[k]
            try:
                sockets[k].send((prefix + body + suffix).encode())
            except ConnectionError:
                errors += 1
        sent += 1
        if i % 16 == 0:
            lags.append(monotonic_ns() - due)
        i += 1
    until_end = (end - monotonic_ns()) / NS
    if until_end > 0:
        await asyncio.sleep(until_end)
    cpu_sending = own_cpu_seconds() - cpu0
    left = (hard_stop - monotonic_ns()) / NS
    if left > 0:
        await asyncio.sleep(left)  # the drain: late deliveries still count
    if pending:
        await asyncio.wait(pending, timeout=5)
    report = StepReport(
        scheduled=due_in(t0, interval, t0 + warm, end) if interval else 0,
        sent=sent,
        send_errors=errors,
        first_error=first_error[0],
        received=window.received,
        received_all=window.received_all,
        latencies_ns=window.latencies.tobytes(),
        lag_p99_ns=sorted(lags)[int(0.99 * (len(lags) - 1))] if lags else 0.0,
        cpu_seconds=own_cpu_seconds() - cpu0,
        cpu_sending=cpu_sending,
        closed=0,
    )
    window.t0 = window.start = window.end = 0  # later arrivals are not this step's
    return report


# -- REST -----------------------------------------------------------------------------------

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time; responses must carry
    ``Content-Length`` (or have no body), as the two servers' do."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buffer[:head_end])
        found = _CONTENT_LENGTH.search(head)
        total = head_end + 4 + (int(found.group(1)) if found else 0)
        if len(self.buffer) < total:
            return
        del self.buffer[:total]
        try:
            waiter.set_result(int(head[9:12]))
        except ValueError:
            waiter.set_exception(ValueError(f"not an HTTP response: {head[:40]!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the server closed the connection"))

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.waiter, REQUEST_TIMEOUT)


class RestPool:
    """Up to ``size`` keep-alive connections to the one server of a run; a request takes
    an idle one or opens one (the caller bounds the requests in flight to ``size``)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.idle: list[_HttpConnection] = []
        self.all: list[_HttpConnection] = []

    async def post(self, url: str, body: str, token: str | None) -> int:
        """POST ``body`` (text/plain) to ``url``, with ``Authorization: Bearer token``;
        the response's status."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        data = body.encode()
        head = (
            f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            + (f"Authorization: Bearer {token}\r\n" if token else "")
            + f"Content-Type: text/plain\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.transport is None:
            loop = asyncio.get_running_loop()
            _, conn = await asyncio.wait_for(
                loop.create_connection(_HttpConnection, parts.hostname, parts.port),
                REQUEST_TIMEOUT,
            )
            self.all = [c for c in self.all if c.transport is not None]
            self.all.append(conn)
        try:
            status = await conn.request(head.encode() + data)
        except BaseException:
            if conn.transport is not None:
                conn.transport.close()  # its state is unknown: not used again
            raise
        if len(self.idle) < self.size:
            self.idle.append(conn)
        return status

    def close(self) -> None:
        for conn in self.all:
            if conn.transport is not None:
                conn.transport.close()
