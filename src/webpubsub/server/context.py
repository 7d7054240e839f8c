"""What the request handlers share: built once by the composition root (app.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from webpubsub.core.settings import HubSettings
from webpubsub.node.node import Node
from webpubsub.node.observe import NO_OBSERVER, Observers
from webpubsub.node.operations import Operations
from webpubsub.server.guard import HandshakeGate
from webpubsub.server.keepalive import KeepAlive
from webpubsub.server.outbox import Flusher


@dataclass(slots=True)
class ServiceContext:
    node: Node
    operations: Operations
    hub_settings: Callable[[str], HubSettings]
    access_keys: tuple[str, ...]
    endpoints: list[str]
    """Base URLs token audiences may name (the public endpoint, once bound)."""
    public_endpoint: str | None
    """``server.public_endpoint``: the base of every URL handed out, when set."""
    trusted_proxies: tuple[str, ...]
    """Peers whose ``X-Forwarded-Proto``/``-Host`` name the caller's origin."""
    max_message_bytes: int
    outbox_max_bytes: int
    clock: Callable[[], float]
    flusher: Flusher
    """Schedules every connection's outbox flush: one loop callback per turn."""
    handshakes: HandshakeGate
    """WebSocket handshakes being admitted, at most ``server.max_pending_handshakes``."""
    keepalive: KeepAlive
    """Pings the silent client connections and closes the dead ones (one sweep per interval)."""
    request_timeout: float
    """``server.header_timeout_seconds``: the longest pause in a REST body."""
    observer: Observers = NO_OBSERVER
    """The portal's trace and the metrics (the node's own observers)."""


SERVICE = web.AppKey("webpubsub.service", ServiceContext)
HealthReport = Callable[[], dict[str, object]]
HEALTH: web.AppKey[HealthReport] = web.AppKey("webpubsub.health")
"""What ``/api/health`` reports (the node and its backplane)."""
