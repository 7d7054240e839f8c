"""What protects the port before a request is complete: deadlines, descriptor headroom,
handshakes in flight, and a log that a flood cannot flood.

aiohttp keeps a connection that has not sent a complete request for its keep-alive
timeout (an hour by default), accepts sockets until the process runs out of file
descriptors (then the listening socket stalls and every new client hangs), and logs a
malformed request as an ERROR with a traceback that quotes the request line (tokens
included).  Here:

- :class:`GuardedHandler` is aiohttp's protocol with four additions: it asks the
  :class:`ConnectionGuard` whether to take a socket at all, it waits at most
  ``server.header_timeout_seconds`` for the first request head and
  ``server.keepalive_timeout_seconds`` for each next one, it answers a malformed request
  with the JSON error body of every other 400, and it logs client-caused failures as one
  line without their text.
- :class:`ConnectionGuard` holds the connections waiting for a request head, oldest
  first, each with its deadline.  Near the descriptor limit (:class:`FdBudget`) a new
  socket takes the place of the connection that has waited longest; with none waiting it
  is closed at once.
- :class:`HandshakeGate` counts WebSocket handshakes being admitted (token check, the
  ``connect`` event handler): over ``server.max_pending_handshakes``, 503.
- :class:`Throttle` bounds each of these warnings to a few lines per window and counts
  the rest.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMethod,
    ContentEncodingError,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.web_protocol import RequestHandler

from webpubsub.errors import BadRequest, ServiceUnavailable
from webpubsub.server.errors import error_response

log = logging.getLogger("webpubsub.server")

Clock = Callable[[], float]


class Throttle:
    """One kind of warning, at most ``burst`` lines per ``window`` seconds.

    The last line of a burst says that more are not logged; those are counted, and the
    count is added to the next line logged.
    """

    def __init__(self, *, burst: int = 5, window: float = 10.0, clock: Clock = time.monotonic):
        self._burst = burst
        self._window = window
        self._clock = clock
        self._opened = -math.inf
        self._logged = 0
        self.dropped = 0
        """Lines left out since the last line logged."""

    def warning(self, message: str, *args: object) -> None:
        now = self._clock()
        if now - self._opened >= self._window:
            self._opened, self._logged = now, 0
        if self._logged >= self._burst:
            self.dropped += 1
            return
        self._logged += 1
        if self.dropped:
            message, args = f"{message} (and %d more not logged)", (*args, self.dropped)
            self.dropped = 0
        if self._logged == self._burst:
            message, args = (
                f"{message} (more like it within %g s: counted, not logged)",
                (
                    *args,
                    self._window,
                ),
            )
        log.warning(message, *args)


#: Descriptors kept free for the service's own work (event-handler calls, Redis, files).
MIN_FD_RESERVE = 32


def fd_reserve(limit: int) -> int:
    """How many of ``limit`` descriptors new sockets may not take: 1/32, at least 32."""
    return max(MIN_FD_RESERVE, limit // 32)


def _open_descriptors() -> int | None:
    """This process's open descriptors (Linux ``/proc``, BSD and macOS ``/dev/fd``)."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # the listing's own descriptor
        except OSError:
            continue
    return None


def _soft_limit() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class FdBudget:
    """How many more sockets this process may take, cheaply, at every accept.

    Counting the open descriptors costs a directory listing, too much for each accept
    of a reconnect storm.  The guard knows its own connections exactly; the others
    (listening sockets, event-handler and Redis connections, files) are counted at most
    every ``refresh`` seconds and change slowly.
    """

    def __init__(
        self,
        limit: int | None,
        *,
        count: Callable[[], int | None] = _open_descriptors,
        clock: Clock = time.monotonic,
        refresh: float = 1.0,
    ) -> None:
        self.limit = limit
        self._count = count
        self._clock = clock
        self._refresh = refresh
        self._others = 0
        self._counted_at = -math.inf

    @classmethod
    def of_process(cls) -> FdBudget:
        """The budget of ``RLIMIT_NOFILE`` (soft); unlimited where there is none."""
        return cls(_soft_limit())

    def free(self, connections: int) -> int | None:
        """Descriptors left above the reserve with ``connections`` open (None: no limit)."""
        if self.limit is None:
            return None
        now = self._clock()
        if now - self._counted_at >= self._refresh:
            total = self._count()
            if total is None:
                self.limit = None
                return None
            self._others, self._counted_at = max(0, total - connections), now
        return self.limit - fd_reserve(self.limit) - self._others - connections


CLOCK_STEP = 0.001
"""uvloop's clock counts milliseconds, and its timers may fire up to one before a
deadline between two: a deadline this close is passed (a timer set again for it would
fire at once, again and again, until the clock passes it)."""


class ConnectionGuard:
    """Every connection of one listening site, and those waiting for a request head."""

    def __init__(
        self,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        fds: FdBudget,
        loop: asyncio.AbstractEventLoop,
        clock: Clock = time.monotonic,
    ) -> None:
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self._fds = fds
        self._loop = loop
        self.connections = 0
        """Sockets taken and not yet lost."""
        self._waiting: dict[GuardedHandler, float] = {}
        """Connections waiting for a request head, the longest-waiting first, each with
        its deadline (``loop.time()``)."""
        self.refused = Throttle(clock=clock)
        self.reaped = Throttle(clock=clock)
        self.malformed = Throttle(clock=clock)

    def admit(self, peer: str) -> bool:
        """Whether to take a new socket from ``peer``; near the descriptor limit the
        connection that has waited longest for a request makes room, if there is one."""
        free = self._fds.free(self.connections)
        if free is not None and free <= 0:
            oldest = next(iter(self._waiting), None)
            if oldest is None:
                self.refused.warning(
                    "refused a connection from %s: file descriptors are near the limit of "
                    "%d, with %d connections open (raise ulimit -n)",
                    peer,
                    self._fds.limit,
                    self.connections,
                )
                return False
            self.reaped.warning(
                "closed a connection from %s that was waiting for a request, to make room "
                "for a new one (file descriptors near the limit of %d)",
                oldest.peer,
                self._fds.limit,
            )
            self._close(oldest)
        self.connections += 1
        return True

    def wait_for_request(self, handler: GuardedHandler) -> None:
        """``handler`` waits for a request head from now on: its first for at most
        ``header_timeout``, a next one (after an answer) for ``keepalive_timeout``.

        Each connection has one timer, set again only when it fires before the deadline
        (a keep-alive connection's next request usually comes first): no timer is made
        and cancelled per request."""
        self._waiting.pop(handler, None)  # (to the end: the longest-waiting stay first)
        timeout = self.keepalive_timeout if handler.requests else self.header_timeout
        deadline = self._loop.time() + timeout
        self._waiting[handler] = deadline
        timer = handler.deadline_timer
        if timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            handler.deadline_timer = self._loop.call_at(deadline, self._check, handler)

    def request_started(self, handler: GuardedHandler) -> None:
        self._waiting.pop(handler, None)  # (its timer, if it fires, finds it not waiting)

    def lost(self, handler: GuardedHandler) -> None:
        self._unwait(handler)
        self.connections -= 1

    def close(self) -> None:
        """Stop every deadline (the site stops serving)."""
        for handler in self._waiting:
            self._stop_timer(handler)
        self._waiting.clear()

    def _unwait(self, handler: GuardedHandler) -> None:
        self._waiting.pop(handler, None)
        self._stop_timer(handler)

    @staticmethod
    def _stop_timer(handler: GuardedHandler) -> None:
        timer, handler.deadline_timer = handler.deadline_timer, None
        if timer is not None:
            timer.cancel()

    def _check(self, handler: GuardedHandler) -> None:
        """``handler``'s timer fired: reap it if it is still waiting past its deadline
        (or within :data:`CLOCK_STEP` of it), else set the timer for the deadline it waits
        for now (if it waits)."""
        handler.deadline_timer = None
        deadline = self._waiting.get(handler)
        if deadline is None:
            return  # it got a request; its next wait sets a timer again
        if deadline - self._loop.time() > CLOCK_STEP:
            handler.deadline_timer = self._loop.call_at(deadline, self._check, handler)
            return
        self._reap(handler)

    def _reap(self, handler: GuardedHandler) -> None:
        self._waiting.pop(handler, None)
        if handler.requests == 0:
            self.reaped.warning(
                "closed a connection from %s: no complete request within %g s",
                handler.peer,
                self.header_timeout,
            )
        else:  # an idle keep-alive connection: routine
            log.debug(
                "closed a keep-alive connection from %s: no next request within %g s",
                handler.peer,
                self.keepalive_timeout,
            )
        self._close(handler)

    def _close(self, handler: GuardedHandler) -> None:
        self._unwait(handler)
        handler.force_close()


def peer_of(transport: asyncio.BaseTransport) -> str:
    """``host:port`` (``[host]:port`` for IPv6) of the transport's peer."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peer) if peer else "an unknown peer"


def _what(exc: BaseException) -> str:
    """What was wrong with a request, without any of its text (which may hold a token)."""
    if isinstance(exc, LineTooLong):
        return "a request line or header field is too long"
    if isinstance(exc, ContentEncodingError):
        return "its body cannot be decoded as its Content-Encoding says"
    if isinstance(exc, BadHttpMethod):
        return "it is not an HTTP/1.1 request (TLS to a plain-HTTP port?)"
    return f"it is not valid HTTP/1.1 ({type(exc).__name__})"


_CLIENT_CAUSED = (ConnectionError, HttpProcessingError, web.RequestPayloadError)


class GuardedHandler(RequestHandler):
    """aiohttp's HTTP protocol for one connection, held to the :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_taken", "deadline_timer", "peer", "requests")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._taken = False
        self.peer = "an unknown peer"
        self.requests = 0
        """Requests whose head arrived on this connection."""
        self.deadline_timer: asyncio.TimerHandle | None = None
        """The guard's timer for this connection's wait for a request (see
        :meth:`ConnectionGuard.wait_for_request`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = peer_of(transport)
        if not self._guard.admit(self.peer):
            transport.close()
            return
        self._taken = True
        super().connection_made(transport)
        factory = self._request_factory
        if factory is not None:  # aiohttp makes each request as its head arrives

            def request_factory(*args: Any) -> web.BaseRequest:
                self.request_started()  # its connection waits for a request no more
                return factory(*args)

            # (aiohttp drops it when the connection is lost: no cycle is left behind)
            self._request_factory = request_factory
        self._guard.wait_for_request(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._taken:
            return
        self._taken = False
        self._guard.lost(self)
        super().connection_lost(exc)

    def request_started(self) -> None:
        self.requests += 1
        self._guard.request_started(self)

    def log_access(
        self, request: web.BaseRequest, response: web.StreamResponse, started: float | None
    ) -> None:
        """Called once a response is written: the connection waits for the next request."""
        super().log_access(request, response, started)
        if self._taken and response.keep_alive:
            self._guard.wait_for_request(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse: a one-line warning and a JSON 400."""
        if status >= 500 or exc is None:
            return super().handle_error(request, status, exc, message)
        self._guard.malformed.warning(
            "refused a malformed request from %s: %s", self.peer, _what(exc)
        )
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already")
        response = error_response(BadRequest(f"The request is malformed: {_what(exc)}."))
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """What the client caused (it went away, sent a broken body) is one line, no
        traceback; the service's own failures keep theirs."""
        exc = kw.get("exc_info")
        if isinstance(exc, _CLIENT_CAUSED):
            self._guard.malformed.warning(
                "a request from %s failed: %s", self.peer, type(exc).__name__
            )
            return
        super().log_exception(*args, **kw)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections are :class:`GuardedHandler` s of one guard."""

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        *,
        header_timeout: float,
        keepalive_timeout: float,
        handler_options: dict[str, Any],
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        fds: FdBudget | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host = host
        self._port = port
        self._header_timeout = header_timeout
        self._keepalive_timeout = keepalive_timeout
        self._handler_options = handler_options
        self._reuse_port = reuse_port
        self._fds = fds
        self.guard: ConnectionGuard | None = None
        self.port = 0
        """The bound port, once started."""

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port or self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        guard = ConnectionGuard(
            header_timeout=self._header_timeout,
            keepalive_timeout=self._keepalive_timeout,
            fds=self._fds or FdBudget.of_process(),
            loop=loop,
        )
        self.guard = guard
        options = self._handler_options

        def protocol() -> GuardedHandler:
            return GuardedHandler(server, guard=guard, loop=loop, **options)

        tls: dict[str, Any] = {}
        if self._ssl_context is not None:
            tls = {"ssl": self._ssl_context, "ssl_handshake_timeout": self._header_timeout}
        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_port=self._reuse_port or None,
            **tls,
        )
        sockets = getattr(self._server, "sockets", None)
        if not sockets:
            raise RuntimeError("the server did not bind")
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.guard is not None:
            self.guard.close()
        await super().stop()


class HandshakeGate:
    """WebSocket handshakes being admitted at once, at most ``limit``."""

    def __init__(self, limit: int, *, clock: Clock = time.monotonic) -> None:
        self.limit = limit
        self.in_flight = 0
        self._refused = Throttle(clock=clock)

    @contextmanager
    def slot(self, peer: str) -> Iterator[None]:
        """Hold a place for one handshake; ServiceUnavailable when none is left."""
        if self.in_flight >= self.limit:
            self._refused.warning(
                "refused a WebSocket handshake from %s: %d are being admitted "
                "(server.max_pending_handshakes)",
                peer,
                self.in_flight,
            )
            raise ServiceUnavailable(
                "The service is admitting too many connections at once; retry later."
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
