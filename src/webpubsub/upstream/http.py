"""Sending CloudEvents requests to event handlers over HTTP/1.1 keep-alive connections.

The client is ours (``protocol/http1.py`` frames the bytes; this module owns the
sockets): an event costs one write and one parse, where aiohttp's ``ClientSession``
spent most of the service's time per echoed message (docs/architecture.md).

Every failure becomes an :class:`UpstreamError` whose message names the handler
by ``scheme://host/path`` only: a URL's query may carry a secret (``?code=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import quote, urlsplit

from webpubsub.errors import UpstreamError
from webpubsub.node.observe import NO_OBSERVER, Exchange, Observers
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse
from webpubsub.protocol.http1 import (
    HttpResponseError,
    InvalidRequest,
    Response,
    ResponseParser,
    ResponseTooLarge,
    encode_request,
)

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024 + 64 * 1024
DEFAULT_CONNECTIONS_PER_ORIGIN = 100
IDLE_SECONDS = 4.0
"""A kept-alive connection idle longer than this is closed rather than reused (servers
close theirs after a while: aiohttp's and nginx's after 75 s, Node's, uvicorn's and
hypercorn's after 5 s by default, uvicorn and hypercorn without saying so; an idle
connection the server closed is noticed and never reused). A handler that says
``Keep-Alive: timeout=N`` (Node does) gets at most N - 1 s. Under the servers' limits,
because a POST written as the handler closes the connection would fail, and an event is
never sent twice; a busy handler's connections never idle that long."""
CLOSE_SECONDS = 1.0
"""How long :meth:`HttpTransport.close` waits for its connections to be closed."""
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"
"""What a request target keeps as it is when percent-encoding the rest: the reserved
characters and ``%`` (a URL's own ``%XX`` stays as written)."""
MAX_URLS = 1024
"""Handler URLs whose parsed form is cached (hub names in them come from clients)."""


class Pool(enum.Enum):
    """Which connection budget a request draws on: each has its own pool per origin."""

    EVENTS = "events"
    """User events and ``connected``/``disconnected``."""
    CONNECT = "connect"
    """``connect`` calls and abuse-protection probes: a handshake never waits behind
    user events hanging on the same handler."""


MAX_HEADER_LINE_BYTES = 128 * 1024
"""Header lines read from a handler's answer: far past an 8 KiB ``ce-connectionState``,
so that a larger state is refused by ``protocol.cloudevents`` with its limit named, not
by the HTTP parser."""
MAX_HEADER_BYTES = 256 * 1024
"""The whole header block of a handler's answer."""


class UpstreamTimeout(UpstreamError):
    """The handler did not answer in time (it may still have processed the event)."""


def safe_url(url: str) -> str:
    """``url`` without userinfo, query and fragment: safe to log."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path}"


@dataclass(frozen=True, slots=True)
class _Target:
    """A handler URL as the client needs it."""

    origin: tuple[bool, str, int]
    """(TLS, host, port): the pool key."""
    host_header: str
    target: str


def _target_of(url: str) -> _Target | None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host or parts.username or parts.password:
        return None
    tls = scheme == "https"
    default = 443 if tls else 80
    port = port if port is not None else default
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        if ":" not in host:  # a name (or IPv4): an IDN goes as punycode, on the wire and to DNS
            host = host.encode("idna").decode("ascii")
        # Non-ASCII, spaces and controls percent-encoded (UTF-8), as a browser would.
        target = quote(target, safe=_TARGET_SAFE)
    except UnicodeError:  # a label empty or over 63, a lone surrogate
        return None
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return _Target((tls, host, port), host_header, target)


class _ConnectionLost(Exception):
    """The connection ended before the whole response (``started``: after some of it)."""

    def __init__(self, started: bool) -> None:
        super().__init__("the connection closed")
        self.started = started


class _Connection(asyncio.Protocol):
    """One kept-alive connection to a handler; one request at a time."""

    __slots__ = (
        "_parser",
        "_waiter",
        "closed",
        "gone",
        "idle_seconds",
        "idle_since",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.gone = asyncio.get_running_loop().create_future()
        """Done once the connection is lost (:meth:`HttpTransport.close` waits on it)."""
        self.idle_since = 0.0
        self.idle_seconds = IDLE_SECONDS
        """How long it may stay idle and still be reused (a handler's ``Keep-Alive:
        timeout=N`` makes it N - 1 s at most: it closes the connection at N)."""
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[Response] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream transport

    def exchange(self, data: bytes, parser: ResponseParser) -> asyncio.Future[Response]:
        """Write a request; the future gets its response (or the error)."""
        assert self.transport is not None
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._parser = parser
        self._waiter = waiter
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        parser, waiter = self._parser, self._waiter
        if parser is None or waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        try:
            response = parser.feed(data)
        except HttpResponseError as exc:
            self._fail(exc)
            return
        if response is not None:
            self._parser = self._waiter = None
            waiter.set_result(response)

    def eof_received(self) -> bool:
        parser, waiter = self._parser, self._waiter
        if parser is not None and waiter is not None and not waiter.done():
            self._parser = self._waiter = None
            try:
                waiter.set_result(parser.feed_eof())
            except HttpResponseError as exc:
                waiter.set_exception(_ConnectionLost(parser.started) if _closed(exc) else exc)
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.gone.done():
            self.gone.set_result(None)
        parser, waiter = self._parser, self._waiter
        self._parser = self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(_ConnectionLost(parser is not None and parser.started))

    def expire(self) -> None:
        """The request's time is up (its timer): its waiter fails with ``TimeoutError``
        and the connection, out of step now, is closed. Not once the answer is in (it
        came in the timer's turn): the connection is then sound and goes back."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._fail(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._parser = self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _time_out(waiter: asyncio.Future[_Connection | None]) -> None:
    """A wait for a connection reached its deadline (it is passed over if handed one)."""
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _closed(exc: HttpResponseError) -> bool:
    return str(exc).startswith("connection closed")


class _Origin:
    """The connections to one (pool, origin): at most ``limit`` open; requests beyond
    wait, in order, and each is handed a connection (or a slot to open one in) as one
    comes back, before any later request: a request that finds others waiting waits
    behind them even if a connection is idle for a moment."""

    __slots__ = ("busy", "closed", "idle", "limit", "open", "waiters")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        """Connections open or being opened (the slots taken)."""
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        """The connections carrying a request now."""
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()
        """Only requests still waiting: one is removed as it is handed its turn or
        gives up."""
        self.closed = False
        """The transport closed: a connection given back is closed, not kept (one
        handed to a waiter as it closed is in neither ``idle`` nor ``busy``)."""

    def take_idle(self, now: float) -> _Connection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()  # the most recent: the warmest, and the others age out
            if not conn.closed and now - conn.idle_since < conn.idle_seconds:
                return conn
            conn.close()
            self.open -= 1
        return None

    async def acquire(self, now: float, deadline: float = math.inf) -> _Connection | None:
        """A connection to reuse, or None: a slot (counted in ``open``) to open one in,
        which the caller gives back with :meth:`lost` if the opening fails. Waiting for
        one ends at ``deadline`` (the loop's time) with ``TimeoutError``: a timer fails
        the wait, without a cancellation."""
        if not self.waiters:
            conn = self.take_idle(now)
            if conn is not None:
                return conn
            if self.open < self.limit:
                self.open += 1
                return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_Connection | None] = loop.create_future()
        self.waiters.append(waiter)
        timer = None if deadline == math.inf else loop.call_at(deadline, _time_out, waiter)
        try:
            conn = await waiter
            if loop.time() >= deadline:  # handed its turn as the time ran out
                raise TimeoutError
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # handed its turn, then cancelled or out of time: pass the turn on
                handed = waiter.result()
                if handed is None:
                    self.lost()
                else:
                    self.give_back(handed, True, handed.idle_since)
            else:  # given up while still waiting (cancelled, timed out), or closed
                waiter.cancel()
                with contextlib.suppress(ValueError):  # not there once the transport closed
                    self.waiters.remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if conn is not None and conn.closed:  # the handler closed it meanwhile: its slot
            conn = None
        return conn

    def give_back(self, conn: _Connection, reusable: bool, now: float) -> None:
        self.busy.discard(conn)
        if reusable and not conn.closed and not self.closed:
            conn.idle_since = now
            if not self._hand(conn):
                self.idle.append(conn)
        else:
            conn.close()
            self.lost()

    def lost(self) -> None:
        """A slot is free (a connection closed, or one being opened failed): the
        first waiter takes it over, else it is given up."""
        if not self._hand(None):
            self.open -= 1

    def _hand(self, conn: _Connection | None) -> bool:
        """Give ``conn`` (None: a slot) to the first waiter still waiting. One cancelled
        or timed out (its future is done at once, the task leaves the queue only when
        it runs again) is passed over."""
        waiters = self.waiters
        while waiters:  # bounded: each turn removes one
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False


class HttpTransport:
    """Pooled HTTP/1.1 keep-alive connections to all event handlers.

    Each :class:`Pool` is bounded per handler origin (scheme, host, port):
    ``max_connections`` for events, ``connect_connections`` for ``connect`` calls
    and probes, so one slow endpoint stalls neither handshakes nor the handlers of
    another origin (origins come from the configuration, so the total is bounded
    too). A request's timeout covers the wait for a free connection as well.

    A connection goes back to its pool only after a whole response was read (and the
    handler did not ask to close it); a request that fails or times out closes its
    connection. Redirects are not followed (a 3xx is returned as the answer), cookies
    are not kept, and nothing is retried here: user events are sent once, the
    asynchronous events' retries are ``upstream/delivery.py``'s.
    """

    def __init__(
        self,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_connections: int = DEFAULT_CONNECTIONS_PER_ORIGIN,
        connect_connections: int = DEFAULT_CONNECTIONS_PER_ORIGIN,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._max_response_bytes = max_response_bytes
        self._limits = {Pool.EVENTS: max_connections, Pool.CONNECT: connect_connections}
        self._origins: dict[tuple[Pool, tuple[bool, str, int]], _Origin] = {}
        self._targets: dict[str, _Target | None] = {}
        self._ssl = ssl_context
        self._closed = False
        self.observer: Observers = NO_OBSERVER
        """Told of every exchange (request, answer or error, duration)."""

    async def send(
        self,
        request: UpstreamRequest,
        *,
        timeout: float,  # noqa: ASYNC109 (each event handler has its own timeout)
        pool: Pool = Pool.EVENTS,
        replay: bool = False,
    ) -> UpstreamResponse:
        """Send ``request`` on ``pool``; the whole exchange (waiting for a free
        connection, connecting, to the last body byte) is bounded by ``timeout``.
        ``replay``: the portal sends it again (its observers are told so)."""
        if not self.observer:
            return await self._send(request, timeout, pool)
        started = time.monotonic()
        try:
            response = await self._send(request, timeout, pool)
        except UpstreamError as exc:
            elapsed = time.monotonic() - started
            timed_out = isinstance(exc, UpstreamTimeout)
            exchange = Exchange(request, None, exc.message, elapsed, replay, timed_out)
            self.observer.cloud_event(exchange)
            raise
        elapsed = time.monotonic() - started
        self.observer.cloud_event(Exchange(request, response, None, elapsed, replay))
        return response

    def _target(self, url: str) -> _Target | None:
        targets = self._targets
        try:
            return targets[url]
        except KeyError:
            pass
        if len(targets) >= MAX_URLS:
            targets.clear()
        found = targets[url] = _target_of(url)
        return found

    async def _send(
        self,
        request: UpstreamRequest,
        timeout: float,  # noqa: ASYNC109
        pool: Pool,
    ) -> UpstreamResponse:
        if self._closed:
            raise UpstreamError("the upstream transport is closed")
        target = self._target(request.url)
        if target is None:
            raise UpstreamError(f"{_where(request)}: invalid event handler URL")
        key = (pool, target.origin)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin(self._limits[pool])
        try:
            data = encode_request(
                request.method, target.target, target.host_header, request.headers, request.body
            )
        except InvalidRequest as exc:
            raise UpstreamError(f"{_where(request)}: {exc}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        method = request.method
        retry = method in _IDEMPOTENT
        try:
            while True:  # the exchange: once, or twice for a probe (below)
                if self._closed:
                    raise UpstreamError("the upstream transport is closed")
                # The usual case without a coroutine: an idle connection and nobody waiting.
                conn = None if origin.waiters else origin.take_idle(loop.time())
                reused = conn is not None
                if conn is None:
                    conn, reused = await self._connection(origin, target, loop, deadline)
                origin.busy.add(conn)
                parser = ResponseParser(
                    max_line=MAX_HEADER_LINE_BYTES,
                    max_head=MAX_HEADER_BYTES,
                    max_body=self._max_response_bytes,
                    no_body=method == "HEAD",
                )
                reusable = False
                # The request and its answer under one timer that fails the connection's
                # waiter (no cancellation, no context manager). Past the deadline already
                # (the connection came just in time): it fires at the loop's next turn.
                timer = loop.call_at(deadline, conn.expire)
                try:
                    response = await conn.exchange(data, parser)
                    reusable = response.reusable and not self._closed
                    limit = response.keep_alive_timeout
                    if limit is not None:
                        conn.idle_seconds = min(IDLE_SECONDS, limit - 1.0)
                    break
                except _ConnectionLost as exc:
                    # A kept-alive connection the handler closed as the request went out:
                    # a probe goes again on a new one (an event is never sent twice).
                    if not (retry and reused and not exc.started):
                        raise
                    retry = False
                finally:
                    timer.cancel()
                    origin.give_back(conn, reusable, loop.time())
        except TimeoutError:
            raise UpstreamTimeout(f"{_where(request)}: no answer within {timeout:g} s") from None
        except ResponseTooLarge as exc:
            where = _where(request)
            raise UpstreamError(f"{where}: response too large", status=exc.status) from None
        except HttpResponseError as exc:
            raise UpstreamError(f"{_where(request)}: invalid response ({exc})") from None
        except _ConnectionLost:
            raise UpstreamError(
                f"{_where(request)}: the connection closed before the whole answer"
            ) from None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UpstreamError(f"{_where(request)}: cannot connect ({reason})") from None
        except ValueError as exc:  # e.g. a UnicodeError from the resolver (IDNA)
            reason = str(exc)[:200] or type(exc).__name__
            raise UpstreamError(f"{_where(request)}: cannot connect ({reason})") from None
        return UpstreamResponse(response.status, response.headers, response.body)

    async def _connection(
        self,
        origin: _Origin,
        target: _Target,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
    ) -> tuple[_Connection, bool]:
        """A connection once one is free or opened, by ``deadline`` (else
        ``TimeoutError``), and whether it was reused."""
        conn = await origin.acquire(loop.time(), deadline)
        reused = conn is not None
        if conn is None:
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await self._open(target)
            except BaseException:
                origin.lost()
                raise
        if self._closed:  # it closed while this connection was opened (or handed over)
            conn.close()
            origin.lost()
            raise UpstreamError("the upstream transport is closed")
        return conn, reused

    async def _open(self, target: _Target) -> _Connection:
        tls, host, port = target.origin
        loop = asyncio.get_running_loop()
        context = None
        if tls:
            context = self._ssl
            if context is None:
                context = self._ssl = ssl.create_default_context()
        _, conn = await loop.create_connection(
            _Connection, host, port, ssl=context, server_hostname=host if tls else None
        )
        return conn

    async def close(self) -> None:
        """Close every connection, the idle ones and those carrying a request (which
        fails), and wait (a little) until they are closed; later sends fail."""
        self._closed = True
        origins, self._origins = list(self._origins.values()), {}
        conns: list[_Connection] = []
        for origin in origins:
            origin.closed = True
            conns += origin.idle
            conns += origin.busy
            origin.idle.clear()
            while origin.waiters:
                waiter = origin.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(UpstreamError("the upstream transport is closed"))
        for conn in conns:
            conn.close()
        if conns:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_SECONDS):
                    await asyncio.gather(*(conn.gone for conn in conns))


def _where(request: UpstreamRequest) -> str:
    """How errors name the request (made only for an error: it parses the URL)."""
    return f"{request.method} {safe_url(request.url)}"
