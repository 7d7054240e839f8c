"""Delivering events to a hub's event handlers (Azure docs: CloudEvents).

* Blocking events (``connect``, user events) are sent once — the client waits
  and a retry could duplicate its message — and their errors propagate.
* ``connected`` / ``disconnected`` are fire-and-forget background tasks, retried
  on 408/5xx/network errors; failures are only logged.  A connection's
  ``disconnected`` is sent after its ``connected`` has finished.
* Abuse protection: before the first event to a handler URL the URL is
  probed (``OPTIONS``, ``GET`` after a 404); concurrent first events share one
  probe; success is cached for ``validation_ttl`` seconds, failure with a
  back-off of 1 s doubling to 60 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from webpubsub.core.settings import EventHandlerSettings, HubSettings
from webpubsub.errors import NoEventHandler, UpstreamError
from webpubsub.protocol.cloudevents import (
    ConnectDecision,
    ConnectRequest,
    EventContext,
    EventReply,
    UpstreamRequest,
    connect_request,
    connected_request,
    disconnected_request,
    parse_connect_response,
    parse_user_event_response,
    user_event_request,
    validation_accepted,
    validation_request,
)
from webpubsub.protocol.payload import Payload
from webpubsub.upstream.http import HttpTransport, Pool, UpstreamTimeout, safe_url

_log = logging.getLogger("webpubsub.upstream")

PROBE_TIMEOUT = 10.0
ASYNC_RETRY_DELAYS = (1.0, 3.0, 5.0)
MAX_VALIDATION_ENTRIES = 4096


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
    cache and back-off.  ``keys`` sign every event and are never logged.
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
        max_pending_async: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
        probe_timeout: float = PROBE_TIMEOUT,
        async_retry_delays: Sequence[float] = ASYNC_RETRY_DELAYS,
        validation_backoff: tuple[float, float] = (1.0, 60.0),
    ) -> None:
        self._transport = transport
        self._keys = tuple(keys)
        self._origin = origin
        self._validate = validate
        self._clock = clock
        self._monotonic = monotonic
        self._validation_ttl = validation_ttl
        self._max_pending = max_pending_async
        self._probe_timeout = probe_timeout
        self._retry_delays = tuple(async_retry_delays)
        self._backoff_initial, self._backoff_max = validation_backoff
        self._validations: dict[str, _Validation] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._connected_tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._closed = False

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
        await self._ensure_validated(handler, ctx.hub)
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
        await self._ensure_validated(handler, ctx.hub)
        url = handler.url_for(ctx.hub, name)
        request = user_event_request(ctx, url, self._keys, self._clock(), name, payload)
        response = await self._transport.send(request, timeout=handler.timeout_seconds)
        return parse_user_event_response(response)

    # -- fire-and-forget events -------------------------------------------------

    def connected(self, hub: HubSettings, ctx: EventContext) -> None:
        """Schedule the ``connected`` event, if a handler subscribes to it."""
        handler = hub.handler_for_system_event("connected")
        if handler is None:
            return
        url = handler.url_for(ctx.hub, "connected")
        request = connected_request(ctx, url, self._keys, self._clock())
        task = self._spawn(handler, ctx, "connected", request, after=None)
        if task is None:
            return
        key = (ctx.hub, ctx.connection_id)
        self._connected_tasks[key] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._connected_tasks.get(key) is done:
                del self._connected_tasks[key]

        task.add_done_callback(forget)

    def disconnected(self, hub: HubSettings, ctx: EventContext, reason: str) -> None:
        """Schedule the ``disconnected`` event, after the connection's ``connected``."""
        after = self._connected_tasks.pop((ctx.hub, ctx.connection_id), None)
        handler = hub.handler_for_system_event("disconnected")
        if handler is None:
            return
        url = handler.url_for(ctx.hub, "disconnected")
        request = disconnected_request(ctx, url, self._keys, self._clock(), reason)
        self._spawn(handler, ctx, "disconnected", request, after=after)

    def _spawn(
        self,
        handler: EventHandlerSettings,
        ctx: EventContext,
        event: str,
        request: UpstreamRequest,
        *,
        after: asyncio.Task[None] | None,
    ) -> asyncio.Task[None] | None:
        if self._closed:
            _log.warning(
                "upstream is closed; %s event not sent (hub=%s connection=%s)",
                event,
                ctx.hub,
                ctx.connection_id,
            )
            return None
        if len(self._pending) >= self._max_pending:
            _log.warning(
                "%d upstream events pending; %s event dropped (hub=%s connection=%s)",
                len(self._pending),
                event,
                ctx.hub,
                ctx.connection_id,
            )
            return None
        task = asyncio.create_task(self._deliver(handler, ctx, event, request, after))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _deliver(
        self,
        handler: EventHandlerSettings,
        ctx: EventContext,
        event: str,
        request: UpstreamRequest,
        after: asyncio.Task[None] | None,
    ) -> None:
        where = (
            f"{event} event to {safe_url(request.url)} "
            f"(hub={ctx.hub} connection={ctx.connection_id})"
        )
        try:
            if after is not None:
                await asyncio.wait([after])
            await self._ensure_validated(handler, ctx.hub)
            attempts = len(self._retry_delays) + 1
            for attempt in range(1, attempts + 1):
                try:
                    response = await self._transport.send(request, timeout=handler.timeout_seconds)
                except UpstreamTimeout as exc:
                    _log.warning("%s failed: %s", where, exc.message)
                    return
                except UpstreamError as exc:
                    failure, retry = exc.message, True
                else:
                    if 200 <= response.status <= 299:
                        return
                    failure = f"status {response.status}"
                    retry = response.status == 408 or response.status >= 500
                if not retry or attempt == attempts:
                    _log.warning("%s failed after %d attempt(s): %s", where, attempt, failure)
                    return
                _log.info("%s attempt %d failed (%s); retrying", where, attempt, failure)
                await asyncio.sleep(self._retry_delays[attempt - 1])
        except UpstreamError as exc:
            _log.warning("%s not sent: %s", where, exc.message)
        except Exception:
            _log.exception("%s: unexpected error", where)

    # -- abuse protection ---------------------------------------------------------

    async def _ensure_validated(self, handler: EventHandlerSettings, hub: str) -> None:
        if not self._validate:
            return
        url = handler.url_for(hub, "validate")
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
        """Wait up to ``timeout`` seconds for pending async events, then close."""
        self._closed = True
        pending = set(self._pending)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        probes = [e.probe for e in self._validations.values() if e.probe is not None]
        for probe in probes:
            probe.cancel()
        await asyncio.gather(*probes, return_exceptions=True)
        await self._transport.close()


def _validation_failed(url: str) -> UpstreamError:
    return UpstreamError(f"event handler {safe_url(url)} failed abuse-protection validation")
