"""Delivering events to a hub's event handlers (Azure docs: CloudEvents).

* Blocking events (``connect``, user events) are sent once — the client waits
  and a retry could duplicate its message — and their errors propagate.
* ``connected`` / ``disconnected`` and the group presence events (``joined`` /
  ``left``) are queued durably when they happen and
  delivered at least once (``upstream/delivery.py``): retried on 408/429/5xx,
  timeouts and network errors (a failed probe too) up to a horizon, then
  dead-lettered.  A connection's ``disconnected`` goes after its ``connected``;
  a dead ``connected`` takes its later events along, a dead ``joined``/``left`` goes alone.
* With ``track_connections`` (a backplane that does not end a dead node's
  connections itself), the queue also records each connection whose hub
  subscribes to ``disconnected``; a start after a crash queues the ``disconnected``
  of every connection the last run left (:data:`RESTARTED`), after its ``connected``.
* Abuse protection: before the first event to a handler URL the URL is
  probed (``OPTIONS``, ``GET`` after a 404); concurrent first events share one
  probe; success is cached for ``validation_ttl`` seconds, failure with a
  short back-off (1 s, then 2 s at most) before the next event probes again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from webpubsub.core.settings import EventHandlerSettings, HubSettings
from webpubsub.errors import NoEventHandler, UpstreamError
from webpubsub.node.observe import log_fields
from webpubsub.node.ports import EventMirrorPort, EventStore
from webpubsub.protocol.cloudevents import (
    ConnectDecision,
    ConnectRequest,
    EventContext,
    EventReply,
    UpstreamRequest,
    UpstreamResponse,
    connect_request,
    connected_request,
    disconnected_request,
    group_presence_request,
    parse_connect_response,
    parse_user_event_response,
    signature,
    user_event_request,
    validation_accepted,
    validation_request,
)
from webpubsub.protocol.payload import Payload
from webpubsub.upstream.delivery import Delivery, DeliveryStats, RetryPolicy, connection_chain
from webpubsub.upstream.http import HttpTransport, Pool, safe_url
from webpubsub.upstream.queue import (
    MEMORY,
    EventQueue,
    LiveConnection,
    QueuedEvent,
    SqliteEventQueue,
)

_log = logging.getLogger("webpubsub.upstream")

PROBE_TIMEOUT = 10.0
VALIDATION_BACKOFF = (1.0, 2.0)
"""A failed probe is tried again on the next event after 1 s, then every 2 s at most:
a handler coming back is noticed within a second or two."""
MAX_VALIDATION_ENTRIES = 4096
_REPLAY_DROPPED = frozenset(
    {
        "ce-signature",
        "content-length",
        "host",
        # hop-by-hop (RFC 9110 §7.6.1) and their kin: the HTTP client's own, or
        # meant for a proxy, never for the handler
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
"""Headers of a replayed event that are not sent as given: made anew by the replay
(the signature), by the HTTP client, or not for the handler at all."""
RESTARTED = "The service restarted."
"""The ``disconnected`` reason of a connection that was open when the service stopped
without closing it (a crash, SIGKILL, a second signal), sent at the next start."""


@dataclass(slots=True)
class _Validation:
    """Probe state of one validation URL (mutable, private to :class:`Upstream`)."""

    backoff: float
    ok_until: float = float("-inf")
    retry_at: float = float("-inf")
    probe: asyncio.Task[bool] | None = None


class Upstream:
    """Sends a hub's events to its configured event handlers.

    ``clock`` (wall time) stamps ``ce-time``; ``monotonic`` drives the validation
    cache and back-off; ``queue_clock`` (wall time: it is stored) the retries of
    queued events.  ``keys`` sign every event and are never logged.
    """

    def __init__(
        self,
        transport: HttpTransport,
        *,
        keys: Sequence[str],
        origin: str,
        validate: bool = True,
        clock: Callable[[], float] = time.time,
        validation_ttl: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
        probe_timeout: float = PROBE_TIMEOUT,
        validation_backoff: tuple[float, float] = VALIDATION_BACKOFF,
        queue: EventQueue | None = None,
        retry: RetryPolicy = RetryPolicy(),  # noqa: B008 (frozen)
        max_queued_events: int = 100_000,
        max_dead_events: int = 100_000,
        per_origin: int = 100,
        queue_clock: Callable[[], float] = time.time,
        track_connections: bool = False,
        mirror: EventMirrorPort | None = None,
    ) -> None:
        self._transport = transport
        self._track_connections = track_connections
        self._keys = tuple(keys)
        self._origin = origin
        self._validate = validate
        self._clock = clock
        self._queue_clock = queue_clock
        self._monotonic = monotonic
        self._validation_ttl = validation_ttl
        self._probe_timeout = probe_timeout
        self._backoff_initial, self._backoff_max = validation_backoff
        self._validations: dict[str, _Validation] = {}
        self._closed = False
        self._delivery = Delivery(
            queue or SqliteEventQueue(MEMORY),
            transport,
            self._ensure_url_validated,
            clock=queue_clock,
            retry=retry,
            max_queued=max_queued_events,
            max_dead=max_dead_events,
            per_origin=per_origin,
            mirror=mirror,
        )

    @property
    def store(self) -> EventStore:
        """The queue of asynchronous events as an event mirror sees it."""
        return self._delivery

    @property
    def stats(self) -> DeliveryStats:
        """Counters of the asynchronous events' delivery."""
        return self._delivery.stats

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` holds, checked after each asynchronous delivery attempt."""
        await self._delivery.wait_until(done)

    def queued(self) -> int:
        """Asynchronous events waiting or being delivered."""
        return len(self._delivery)

    def unsaved(self) -> int:
        """Writes waiting in memory for the queue's file (locked elsewhere or failing)."""
        return self._delivery.unsaved

    # -- blocking events ------------------------------------------------------

    async def connect(
        self,
        hub: HubSettings,
        ctx: EventContext,
        request: ConnectRequest,
    ) -> ConnectDecision | None:
        """Ask the ``connect`` handler; ``None`` when no handler subscribes.

        Raises :class:`ConnectRejected` (4xx) or :class:`UpstreamError`.
        """
        handler = hub.handler_for_system_event("connect")
        if handler is None:
            return None
        validate_url = self._to_validate(handler, ctx.hub)
        if validate_url is not None:
            await self._ensure_url_validated(validate_url)
        url = handler.url_for(ctx.hub, "connect")
        upstream_request = connect_request(ctx, url, self._keys, self._clock(), request)
        response = await self._transport.send(
            upstream_request, timeout=handler.timeout_seconds, pool=Pool.CONNECT
        )
        decision = parse_connect_response(response)
        if decision.body_ignored:
            _log.warning(
                "connect handler %s answered %d with a body that is not a JSON object; "
                "ignored (hub=%s connection=%s)",
                safe_url(url),
                response.status,
                ctx.hub,
                ctx.connection_id,
                extra=log_fields(ctx.hub, ctx.connection_id, ctx.user_id),
            )
        return decision

    def has_user_event_handler(self, hub: HubSettings, name: str) -> bool:
        return hub.handler_for_user_event(name) is not None

    async def user_event(
        self, hub: HubSettings, ctx: EventContext, name: str, payload: Payload
    ) -> EventReply:
        """Deliver user event ``name``; raises :class:`UpstreamError` on any failure."""
        handler = hub.handler_for_user_event(name)
        if handler is None:
            raise NoEventHandler(name)
        validate_url = self._to_validate(handler, ctx.hub)
        if validate_url is not None:
            await self._ensure_url_validated(validate_url)
        url = handler.url_for(ctx.hub, name)
        request = user_event_request(ctx, url, self._keys, self._clock(), name, payload)
        response = await self._transport.send(request, timeout=handler.timeout_seconds)
        return parse_user_event_response(response)

    async def replay(
        self,
        url: str,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        method: str = "POST",
        timeout: float = 20.0,  # noqa: ASYNC109 (a handler's default)
    ) -> UpstreamResponse:
        """Send a CloudEvent again (the portal's webhook debugger), to ``url``: the URL
        of a request this service sent (the caller checks that). Its ``ce-signature``
        is made anew from its ``ce-connectionId`` with this service's keys, as for the
        original (none without keys); ``Content-Length``, ``Host`` and hop-by-hop
        headers (:data:`_REPLAY_DROPPED`) are the transport's own, or dropped.
        Raises :class:`UpstreamError` when the handler does not answer."""
        kept = [(k, v) for k, v in headers if k.lower() not in _REPLAY_DROPPED]
        connection_id = next((v for k, v in kept if k.lower() == "ce-connectionid"), None)
        if connection_id is not None and self._keys:  # no keys: unsigned, as the original
            kept.append(("ce-signature", signature(connection_id, self._keys)))
        request = UpstreamRequest(method=method, url=url, headers=tuple(kept), body=body)
        return await self._transport.send(request, timeout=timeout, replay=True)

    # -- asynchronous events ----------------------------------------------------------

    def start(self, hub_settings: Callable[[str], HubSettings] | None = None) -> None:
        """Start delivering what the queue holds (call inside the running loop); with
        ``hub_settings``, first queue the ``disconnected`` of every connection the last
        run left open (it stopped without closing them)."""
        self._delivery.start()
        if hub_settings is not None:
            self._sweep(hub_settings)

    def _sweep(self, hub_settings: Callable[[str], HubSettings]) -> None:
        left = self._delivery.queue.live()
        if left:
            _log.warning(
                "%d connection(s) were open when the service last stopped: "
                "their disconnected event is queued",
                len(left),
            )
        for live in left:
            settings = hub_settings(live.hub)
            if settings.handler_for_system_event("disconnected") is None:
                self._delivery.ended(live.chain)
                continue
            ctx = EventContext(
                hub=live.hub,
                connection_id=live.connection_id,
                user_id=live.user_id,
                subprotocol=live.subprotocol,
                state=live.state,
                event_id=f"restarted-{secrets.token_hex(8)}",
                origin=self._origin,
            )
            self.disconnected(settings, ctx, RESTARTED)

    def connected(self, hub: HubSettings, ctx: EventContext) -> None:
        """Queue the ``connected`` event, if a handler subscribes to it (and record the
        connection, if one subscribes to ``disconnected``)."""
        live = self._live(hub, ctx)
        handler = hub.handler_for_system_event("connected")
        if handler is None:
            if live is not None:
                self._delivery.opened(live)
            return
        url = handler.url_for(ctx.hub, "connected")
        request = connected_request(ctx, url, self._keys, self._clock())
        self._queue_event(handler, ctx, "connected", request, opens=live)

    def _live(self, hub: HubSettings, ctx: EventContext) -> LiveConnection | None:
        if not self._track_connections or hub.handler_for_system_event("disconnected") is None:
            return None
        return LiveConnection(
            chain=_chain(ctx),
            hub=ctx.hub,
            connection_id=ctx.connection_id,
            user_id=ctx.user_id,
            subprotocol=ctx.subprotocol,
            state=ctx.state,
        )

    def disconnected(self, hub: HubSettings, ctx: EventContext, reason: str) -> None:
        """Queue the ``disconnected`` event: delivered after the connection's ``connected``
        (the connection's record goes in the same write)."""
        handler = hub.handler_for_system_event("disconnected")
        if handler is None:
            return
        url = handler.url_for(ctx.hub, "disconnected")
        request = disconnected_request(ctx, url, self._keys, self._clock(), reason)
        self._queue_event(handler, ctx, "disconnected", request, ends=True)

    def group_presence(self, hub: HubSettings, ctx: EventContext, event: str, group: str) -> None:
        """Queue ``event`` (``joined``/``left``) of ``group``, if a handler takes it: in
        the connection's order, after its ``connected`` and before its ``disconnected``;
        dead-lettered alone (its connection's later events go on), and bounded even on a
        queued connection (``upstream/delivery.py``: MAX_PRESENCE_WAITING)."""
        handler = hub.handler_for_group_presence(event, group)
        if handler is None:
            return
        url = handler.url_for(ctx.hub, event)
        request = group_presence_request(ctx, url, self._keys, self._clock(), event, group)
        self._queue_event(handler, ctx, event, request)

    def _queue_event(
        self,
        handler: EventHandlerSettings,
        ctx: EventContext,
        event: str,
        request: UpstreamRequest,
        *,
        opens: LiveConnection | None = None,
        ends: bool = False,
    ) -> None:
        if self._closed:
            _log.info(
                "%s event queued during shutdown, for the next start (hub=%s connection=%s)",
                event,
                ctx.hub,
                ctx.connection_id,
                extra=log_fields(ctx.hub, ctx.connection_id, ctx.user_id),
            )
        validate_url = handler.url_for(ctx.hub, "validate") if self._validate else ""
        self._delivery.add(
            QueuedEvent(
                chain=_chain(ctx),
                event=event,
                request=request,
                validate_url=validate_url,
                timeout=handler.timeout_seconds,
                created=self._queue_clock(),
            ),
            opens=opens,
            ends=ends,
        )

    # -- abuse protection ---------------------------------------------------------

    def _to_validate(self, handler: EventHandlerSettings, hub: str) -> str | None:
        """The URL to pass :meth:`_ensure_url_validated` before an event goes to
        ``handler``; None when abuse protection is off or the URL passed its probe and
        may be sent to now (what that method returns at once for: no coroutine then)."""
        if not self._validate:
            return None
        url = handler.url_for(hub, "validate")
        entry = self._validations.get(url)
        if entry is not None and entry.probe is None and self._monotonic() < entry.ok_until:
            return None
        return url

    async def _ensure_url_validated(self, url: str) -> None:
        now = self._monotonic()
        entry = self._validations.get(url)
        if entry is None:
            if not self._evict(now):
                # Every entry has a probe running: refuse rather than grow without bound.
                raise _validation_failed(url)
            entry = _Validation(backoff=self._backoff_initial)
            self._validations[url] = entry
        elif entry.probe is None:
            if now < entry.ok_until:
                return
            if now < entry.retry_at:
                raise _validation_failed(url)
        if entry.probe is None:
            entry.probe = asyncio.create_task(self._probe(url, entry))
        if not await asyncio.shield(entry.probe):
            raise _validation_failed(url)

    def _evict(self, now: float) -> bool:
        """Make room for one entry (hub names can come from clients); False if none.

        Expired entries go first, then the oldest settled ones; entries with a probe
        running are kept.
        """
        if len(self._validations) < MAX_VALIDATION_ENTRIES:
            return True
        settled = [(u, e) for u, e in self._validations.items() if e.probe is None]
        expired = [u for u, e in settled if now >= e.ok_until and now >= e.retry_at]
        for url in expired or [u for u, _ in settled[:1]]:
            del self._validations[url]
        return len(self._validations) < MAX_VALIDATION_ENTRIES

    async def _probe(self, url: str, entry: _Validation) -> bool:
        request = validation_request(url, self._origin)
        try:
            try:
                response = await self._transport.send(
                    request, timeout=self._probe_timeout, pool=Pool.CONNECT
                )
                if response.status == 404:
                    request = replace(request, method="GET")
                    response = await self._transport.send(
                        request, timeout=self._probe_timeout, pool=Pool.CONNECT
                    )
            except UpstreamError as exc:
                problem = exc.message
            else:
                if validation_accepted(response, self._origin):
                    entry.ok_until = self._monotonic() + self._validation_ttl
                    entry.retry_at = float("-inf")
                    entry.backoff = self._backoff_initial
                    return True
                if 200 <= response.status <= 299:
                    problem = f"WebHook-Allowed-Origin does not allow {self._origin!r}"
                else:
                    problem = f"{request.method} answered {response.status}"
            entry.retry_at = self._monotonic() + entry.backoff
            _log.warning(
                "event handler %s failed abuse-protection validation: %s; next probe in %g s",
                safe_url(url),
                problem,
                entry.backoff,
            )
            entry.backoff = min(entry.backoff * 2, self._backoff_max)
            return False
        finally:
            entry.probe = None

    # -- shutdown -------------------------------------------------------------------

    async def aclose(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (a grace period)
        """Deliver queued events for up to ``timeout`` seconds, then close; what is
        left stays queued for the next start (a queue in memory loses it), logged."""
        if self._closed:
            return
        self._closed = True
        left = await self._delivery.aclose(timeout)
        probes = [e.probe for e in self._validations.values() if e.probe is not None]
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        await self._transport.close()
        queue = self._delivery.queue
        if left and getattr(queue, "path", MEMORY) == MEMORY:
            _log.warning("%d queued event(s) lost: the event queue is in memory", left)
        elif left:
            _log.warning(
                "%d queued event(s) not delivered within %g s: kept in %s for the next start",
                left,
                timeout,
                getattr(queue, "path", "the queue"),
            )
        queue.close()


def _chain(ctx: EventContext) -> str:
    """A connection's events go one at a time, in order."""
    return connection_chain(ctx.hub, ctx.connection_id)


def _validation_failed(url: str) -> UpstreamError:
    return UpstreamError(f"event handler {safe_url(url)} failed abuse-protection validation")
