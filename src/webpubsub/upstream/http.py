"""Sending CloudEvents requests to event handlers over HTTP (the only aiohttp client).

Every failure becomes an :class:`UpstreamError` whose message names the handler
by ``scheme://host/path`` only: a URL's query may carry a secret (``?code=``).
"""

from __future__ import annotations

import asyncio
import enum
import time
from urllib.parse import urlsplit

import aiohttp

from webpubsub.errors import UpstreamError
from webpubsub.node.observe import NO_OBSERVER, Exchange, Observers
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse

DEFAULT_MAX_RESPONSE_BYTES = 1024 * 1024 + 64 * 1024
DEFAULT_CONNECTIONS_PER_ORIGIN = 100


class Pool(enum.Enum):
    """Which connection budget a request draws on: each has its own pool per origin."""

    EVENTS = "events"
    """User events and ``connected``/``disconnected``."""
    CONNECT = "connect"
    """``connect`` calls and abuse-protection probes: a handshake never waits behind
    user events hanging on the same handler."""


MAX_HEADER_LINE_BYTES = 128 * 1024
"""Header lines read from a handler's answer: far past an 8 KiB ``ce-connectionState``
(aiohttp's default, 8190 bytes, cut it short), so that a larger state is refused by
``protocol.cloudevents`` with its limit named, not by the HTTP parser."""


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


class HttpTransport:
    """Pooled HTTP clients for all event handlers.

    Each :class:`Pool` is bounded per handler origin (scheme, host, port):
    ``max_connections`` for events, ``connect_connections`` for ``connect`` calls
    and probes, so one slow endpoint stalls neither handshakes nor the handlers of
    another origin (origins come from the configuration, so the total is bounded
    too). A request's timeout covers the wait for a free connection as well.

    Sessions are created on first use, inside the running event loop.
    Redirects are not followed (a 3xx is returned as the answer) and cookies are
    not kept, so nothing leaks from one connection's events to another's.
    """

    def __init__(
        self,
        *,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_connections: int = DEFAULT_CONNECTIONS_PER_ORIGIN,
        connect_connections: int = DEFAULT_CONNECTIONS_PER_ORIGIN,
    ) -> None:
        self._max_response_bytes = max_response_bytes
        self._limits = {Pool.EVENTS: max_connections, Pool.CONNECT: connect_connections}
        self._sessions: dict[Pool, aiohttp.ClientSession] = {}
        self._closed = False
        self.observer: Observers = NO_OBSERVER
        """Told of every exchange (request, answer or error, duration)."""

    def _get_session(self, pool: Pool) -> aiohttp.ClientSession:
        if self._closed:
            raise UpstreamError("the upstream transport is closed")
        session = self._sessions.get(pool)
        if session is None:
            session = self._sessions[pool] = aiohttp.ClientSession(
                # limit=0: no cap across origins; limit_per_host: per (host, port, TLS).
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=self._limits[pool]),
                cookie_jar=aiohttp.DummyCookieJar(),
                raise_for_status=False,
                max_field_size=MAX_HEADER_LINE_BYTES,
                # send() bounds each call with the handler's own timeout; aiohttp's
                # default 300 s total would silently cap longer ones.
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return session

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

    async def _send(
        self,
        request: UpstreamRequest,
        timeout: float,  # noqa: ASYNC109
        pool: Pool,
    ) -> UpstreamResponse:
        where = f"{request.method} {safe_url(request.url)}"
        session = self._get_session(pool)
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(session, request, where)
        except TimeoutError:
            raise UpstreamTimeout(f"{where}: no answer within {timeout:g} s") from None
        except aiohttp.InvalidURL:
            raise UpstreamError(f"{where}: invalid event handler URL") from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror or type(exc.os_error).__name__
            raise UpstreamError(f"{where}: cannot connect ({reason})") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{where}: {type(exc).__name__}") from None
        except (OSError, ValueError) as exc:
            raise UpstreamError(f"{where}: {type(exc).__name__}") from None

    async def _exchange(
        self, session: aiohttp.ClientSession, request: UpstreamRequest, where: str
    ) -> UpstreamResponse:
        limit = self._max_response_bytes
        async with session.request(
            request.method,
            request.url,
            headers=list(request.headers),
            data=request.body or None,
            allow_redirects=False,
        ) as resp:
            if resp.content_length is not None and resp.content_length > limit:
                raise UpstreamError(f"{where}: response too large", status=resp.status)
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise UpstreamError(f"{where}: response too large", status=resp.status)
                chunks.append(chunk)
            return UpstreamResponse(
                status=resp.status,
                headers=tuple(resp.headers.items()),
                body=b"".join(chunks),
            )

    async def close(self) -> None:
        """Close the pools; later sends fail."""
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()
