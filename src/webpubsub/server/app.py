"""The composition root: config in, a running service out.

This is the only module that turns a :class:`ServiceConfig` into live objects:
the backplane, the upstream dispatcher, the node, the operations and the aiohttp
application serving ``/client/...`` and ``/api/...`` on one port.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from webpubsub.backplane.base import Backplane
from webpubsub.backplane.memory import MemoryBackplane
from webpubsub.config import ServiceConfig
from webpubsub.core.detached import DetachedSessions
from webpubsub.node.node import Node
from webpubsub.node.observe import Observer, Observers
from webpubsub.node.operations import Operations
from webpubsub.protocol.backplane import Answer, Command, Query
from webpubsub.protocol.connection_string import format_connection_string
from webpubsub.protocol.wsframe import CloseCode
from webpubsub.server import portal, rest, tls, websocket
from webpubsub.server.context import HEALTH, SERVICE, ServiceContext
from webpubsub.server.errors import error_middleware
from webpubsub.server.guard import GuardedSite, HandshakeGate
from webpubsub.server.keepalive import KeepAlive
from webpubsub.server.metrics import Metrics, metrics_endpoint
from webpubsub.server.outbox import Flusher
from webpubsub.server.portal_core import Portal
from webpubsub.server.portal_view import SURVEY_TIMEOUT, NodeView
from webpubsub.server.router import ApiRouter
from webpubsub.server.trace import TraceRing
from webpubsub.upstream.delivery import RetryPolicy
from webpubsub.upstream.dispatcher import Upstream
from webpubsub.upstream.http import HttpTransport
from webpubsub.upstream.queue import MEMORY, SqliteEventQueue, queue_file

log = logging.getLogger("webpubsub.server")

#: How long shutdown waits for clients to take their close frames.
SHUTDOWN_GRACE_SECONDS = 5.0

_LOOPBACK_OR_ANY = {"127.0.0.1", "localhost", "0.0.0.0", "::", "::1", ""}  # noqa: S104


GC_THRESHOLDS = (50_000, 20, 100)
"""The cyclic collector's thresholds in a serving process (Python's are 700, 10, 10).
A fan-out allocates a few container objects per recipient, nearly all freed by their
reference counts; with Python's thresholds the young generation is collected every 700
of them, a large share of the CPU at high fan-out (docs/performance.md). Cycles still
get collected, a little later."""


def tune_gc() -> None:
    """Set up the garbage collector for a process that serves (``webpubsub serve`` and
    ``demo``, once the service is up): what start-up made is frozen out of every
    collection (it lives as long as the process), and the thresholds are raised
    (:data:`GC_THRESHOLDS`). Not done by :class:`ServiceRunner` itself: the process
    embedding it (a test, an app) owns its collector."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class ServiceRunner:
    """Runs one node of the service on ``config.server.host``/``port``.

    ``advertised_host`` names the host in the endpoint and connection string
    (default: ``localhost`` for loopback or wildcard binds); a configured
    ``public_endpoint`` wins over both.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        backplane: Backplane | None = None,
        advertised_host: str | None = None,
        clock: Callable[[], float] = time.time,
        reuse_port: bool = False,
    ) -> None:
        if not config.server.access_keys:
            raise ValueError("the service needs at least one access key")
        self.config = config
        self.backplane = backplane or _backplane_for(config)
        self._advertised_host = advertised_host
        self._reuse_port = reuse_port
        """Share the port with other processes (``SO_REUSEPORT``: ``serve --workers``)."""
        self._clock = clock
        self._runner: web.AppRunner | None = None
        self._keepalive: KeepAlive | None = None
        self.site: GuardedSite | None = None
        """The listening site, once started (its guard: connections waiting for a request)."""
        self._ssl: ssl.SSLContext | None = None
        self.port = 0
        self.endpoint = ""
        self.node: Node | None = None
        self.upstream: Upstream | None = None
        self.metrics = Metrics() if config.metrics.enabled else None
        self.trace: TraceRing | None = None
        """The portal's live trace (None when the portal or its trace is off)."""
        observers: list[Observer] = []
        if self.metrics is not None:
            observers.append(self.metrics)
        if config.portal.enabled and config.portal.trace_buffer > 0:
            self.trace = TraceRing(
                config.portal.trace_buffer, max_bytes=config.portal.trace_max_bytes
            )
            observers.append(self.trace)
        self.observer = Observers(observers)
        """The portal's trace and the metrics: told by the node, the REST layer, the
        upstream transport and the backplane's publishes."""
        self._plane = TimedBackplane(self.backplane, self.observer)
        self.operations = Operations(
            self._plane, keys=config.server.access_keys, clock=clock, hub_settings=config.hub
        )
        """The data-plane operations, acting on every node of the backplane."""

    @property
    def connection_string(self) -> str:
        return format_connection_string(self.endpoint, self.config.server.access_keys[0])

    @property
    def portal_link(self) -> str | None:
        """The URL that logs a browser in to the portal (None when it is off)."""
        if not self.config.portal.enabled or not self.endpoint:
            return None
        return portal.admin_link(self.endpoint, self.config.server.access_keys[0])

    async def start(self) -> None:
        """Start serving; on any failure what was started is stopped again (the event
        queue's lock released) before the error propagates."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        server = self.config.server
        if server.tls_cert is not None and server.tls_key is not None:
            self._ssl = tls.server_context(server.tls_cert, server.tls_key)  # fails first
        upstream_origin = (
            urlsplit(server.public_endpoint).hostname if server.public_endpoint else None
        )
        origin = upstream_origin or self._host_for_urls()
        up = self.config.upstream
        queue = SqliteEventQueue(self.queue_path)  # fails first: in use elsewhere
        mirror = self.backplane.event_mirror()
        transport = HttpTransport(
            max_connections=up.max_connections_per_origin,
            connect_connections=up.connect_connections_per_origin,
        )
        transport.observer = self.observer
        self.upstream = Upstream(
            transport,
            keys=server.access_keys,
            origin=origin,
            validate=self.config.upstream.validation,
            clock=self._clock,
            queue=queue,
            retry=RetryPolicy(
                delays=up.retry_delays_seconds,
                max_delay=up.retry_max_delay_seconds,
                horizon=up.retry_horizon_seconds,
            ),
            max_queued_events=up.max_queued_events,
            max_dead_events=up.max_dead_events,
            # Background deliveries take at most half an origin's pool: user events
            # (a client waiting) always find connections free.
            per_origin=max(1, up.max_connections_per_origin // 2),
            # A backplane keeping presence (Redis) ends a dead node's connections itself
            # (a survivor's reaper, or this node's next start): no second disconnected.
            track_connections=self.backplane.presence() is None and queue.path != MEMORY,
            mirror=mirror,
        )
        if mirror is not None:  # before any delivery: what others took over is not sent
            await mirror.attach(self.upstream.store)
        self.upstream.start(self.config.hub)
        self.node = Node(
            hub_settings=self.config.hub,
            upstream=self.upstream,
            origin=origin,
            publish=self._plane.publish,
            recovery_window=server.recovery_window_seconds,
            reliable_max_bytes=server.reliable_max_bytes,
            detached=DetachedSessions(
                max_bytes=server.detached_max_bytes, user_max_bytes=server.detached_user_max_bytes
            ),
            node_id=getattr(self.backplane, "node_id", None) or self.config.backplane.node_id,
            presence=self.backplane.presence(),
            handover=self.backplane.handover(),
            max_inflight_events=up.max_inflight_events_per_connection,
            backlog_max_bytes=server.max_message_bytes,
            observer=self.observer,
        )
        if self.metrics is not None:
            self.metrics.watch(self.node.hubs, self.upstream)
        if self.trace is not None:
            self.trace.node_id = self.node.node_id
        endpoints: list[str] = []
        keepalive = self._keepalive = KeepAlive()
        ctx = ServiceContext(
            node=self.node,
            operations=self.operations,
            hub_settings=self.config.hub,
            access_keys=server.access_keys,
            endpoints=endpoints,
            public_endpoint=server.public_endpoint,
            trusted_proxies=server.trusted_proxies,
            max_message_bytes=server.max_message_bytes,
            outbox_max_bytes=server.outbox_max_bytes,
            clock=self._clock,
            flusher=Flusher(),
            handshakes=HandshakeGate(server.max_pending_handshakes),
            keepalive=keepalive,
            request_timeout=server.header_timeout_seconds,
            observer=self.observer,
        )
        router = ApiRouter()
        with warnings.catch_warnings():  # aiohttp deprecates a router of one's own
            warnings.filterwarnings("ignore", "router argument is deprecated", DeprecationWarning)
            app = web.Application(
                middlewares=[error_middleware],
                client_max_size=server.max_message_bytes,
                router=router,
            )
        app[SERVICE] = ctx
        app[HEALTH] = self.health
        app.router.add_get("/api/health", rest.health)  # answers HEAD too
        # (?s): a decoded path may hold a line break (%0A), which "." alone would not match
        router.catch_all = app.router.add_route("*", "/api/{tail:(?s:.*)}", rest.api_endpoint)
        app.router.add_route("GET", "/client/hubs/{hub}", websocket.client_endpoint)
        app.router.add_route("GET", "/client/", websocket.client_endpoint)
        app.router.add_route("GET", "/client", websocket.client_endpoint)
        if self.metrics is not None:
            app.router.add_get(
                "/metrics", metrics_endpoint(self.metrics, self.config.metrics.token)
            )
        if self.config.portal.enabled:
            view = NodeView(self.node, self.trace)
            self.backplane.answer_surveys(view.answer)
            portal.add_routes(
                app,
                Portal(
                    view=view,
                    survey=functools.partial(self.backplane.survey, timeout=SURVEY_TIMEOUT),
                    upstream=self.upstream,
                    hubs=self.config.hubs,
                    hub_settings=self.config.hub,
                    replay_timeout=up.timeout_seconds,
                    secure=self.scheme == "https",
                    clock=self._clock,
                ),
            )
        await self.backplane.start(self.node)
        waits = max(server.header_timeout_seconds, server.keepalive_timeout_seconds)
        handler_options: dict[str, Any] = {
            "access_log": None,
            "keepalive_timeout": 2 * waits + 1,  # a backstop: the site's guard closes first
        }
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_SECONDS
        )
        await self._runner.setup()
        site = GuardedSite(
            self._runner,
            server.host,
            server.port,
            header_timeout=server.header_timeout_seconds,
            keepalive_timeout=server.keepalive_timeout_seconds,
            handler_options=handler_options,
            ssl_context=self._ssl,
            reuse_port=self._reuse_port,
        )
        await site.start()
        self.site = site
        self.port = site.port
        self.endpoint = (
            server.public_endpoint or f"{self.scheme}://{self._host_for_urls()}:{self.port}"
        )
        endpoints.append(self.endpoint)
        log.info("webpubsub listening on %s://%s:%d", self.scheme, server.host, self.port)

    @property
    def queue_path(self) -> str:
        """The event queue's file (``:memory:`` when ``data_dir`` says so)."""
        return queue_file(data_dir(self.config), self.config.backplane.node_id)

    def health(self) -> dict[str, object]:
        """The body of ``GET /api/health``: this node and its backplane."""
        plane = self.backplane.health()
        degraded = plane.get("redis") == "disconnected"
        node_id = self.node.node_id if self.node is not None else None
        body: dict[str, object] = {
            "status": "degraded" if degraded else "ok",
            "nodeId": node_id,
            **plane,
        }
        if self.upstream is not None:
            stats = self.upstream.stats
            body["events"] = {
                "queued": self.upstream.queued(),
                "delivered": stats.delivered,
                "retried": stats.retried,
                "deadLettered": stats.dead_lettered,
                "queueFull": stats.queue_full,
                "deadDropped": stats.dead_dropped,
                "notQueued": stats.not_queued,
                "storeErrors": stats.store_errors,
                "unsaved": self.upstream.unsaved(),
                "notStored": stats.not_stored,
                "takenOver": stats.taken_over,
                "takenByOthers": stats.taken_by_others,
            }
        return body

    @property
    def scheme(self) -> str:
        """``https`` when the port serves TLS, else ``http``."""
        return "https" if self.config.server.tls else "http"

    def reload_tls(self) -> None:
        """Load the configured certificate and key again (SIGHUP), for new handshakes.

        Established connections keep their sessions. On a problem the current
        certificate stays in use and :class:`ConfigError` says why.
        """
        server = self.config.server
        if self._ssl is None or server.tls_cert is None or server.tls_key is None:
            return
        tls.reload(self._ssl, server.tls_cert, server.tls_key)
        log.info("TLS certificate reloaded from %s", server.tls_cert)

    async def stop(self) -> None:
        """Stop listening, close every client (1001, ``disconnected`` queued), then the
        server; deliver queued events for up to ``shutdown_timeout_seconds``.

        The port is closed first: while the clients finish, a new socket is refused (with
        ``serve --workers`` another worker takes it) rather than admitted and closed.
        """
        if self.site is not None:
            await self.site.stop()
            self.site = None
        if self.node is not None:
            self.node.close_all(CloseCode.GOING_AWAY, "The service is shutting down.")
            try:
                async with asyncio.timeout(SHUTDOWN_GRACE_SECONDS):
                    await self.node.wait_idle()
            except TimeoutError:
                log.warning("some clients did not close within %.0f s", SHUTDOWN_GRACE_SECONDS)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._keepalive is not None:
            self._keepalive.close()
            self._keepalive = None
        # Deliver first, then leave: deliveries still reach the event mirror, and what is
        # left stays there, for a survivor to take over if this node does not come back.
        if self.upstream is not None:
            await self.upstream.aclose(self.config.server.shutdown_timeout_seconds)
        await self.backplane.stop()

    def _host_for_urls(self) -> str:
        if self._advertised_host:
            return self._advertised_host
        host = self.config.server.host
        if host in _LOOPBACK_OR_ANY:
            return "localhost"
        return f"[{host}]" if ":" in host else host


class TimedBackplane:
    """The backplane as the node and the operations use it, each publish timed for the
    observers (:meth:`Observer.published`: the metrics' latency and errors)."""

    def __init__(self, backplane: Backplane, observer: Observers) -> None:
        self._backplane = backplane
        self._observer = observer

    async def publish(self, command: Command) -> None:
        if not self._observer:
            await self._backplane.publish(command)
            return
        started = time.perf_counter()
        try:
            await self._backplane.publish(command)
        except Exception as exc:
            self._observer.published(time.perf_counter() - started, type(exc).__name__)
            raise
        self._observer.published(time.perf_counter() - started, None)

    async def gather(self, query: Query) -> list[Answer]:
        return await self._backplane.gather(query)


def data_dir(config: ServiceConfig) -> str:
    """``[server] data_dir``, else the user data directory (``$XDG_DATA_HOME`` or
    ``~/.local/share``, then ``webpubsub``)."""
    if config.server.data_dir is not None:
        return config.server.data_dir
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "webpubsub")


def _backplane_for(config: ServiceConfig) -> Backplane:
    plane = config.backplane
    if plane.redis_url is None:
        return MemoryBackplane()
    from webpubsub.backplane.redis import RedisBackplane

    return RedisBackplane(
        plane.redis_url,
        node_id=plane.node_id,
        prefix=plane.key_prefix,
        heartbeat_timeout=plane.heartbeat_timeout_seconds,
    )
