"""The service's Prometheus metrics (``GET /metrics``; docs/reference/metrics.md).

:class:`Metrics` is an :class:`~webpubsub.node.observe.Observer`: the node, the REST
layer, the upstream transport and the backplane adapter of the composition root
report to it, and it counts. What is a state rather than an event (connections by
hub and protocol, reliable buffers, the event queue) is read when ``/metrics`` is
scraped, by a collector of its own. Each :class:`Metrics` has its own
``CollectorRegistry`` (several services run in one test process); this is the only
module that imports ``prometheus_client``.

Label values stay bounded, and what clients choose cannot crowd out what the service
names: the first :data:`MAX_HUBS` hubs seen keep their name, any later one is counted
as ``_other`` (hub names start with a letter: no hub is named so). An ``event_type`` is
the service's own (:data:`NAMED_EVENT_TYPES`: the system events and ``validation``)
always, a user event (named by clients) up to :data:`MAX_USER_EVENTS`, then
``azure.webpubsub.user._other``; anything else (a replay's edited ``ce-type``)
``_other``. A close ``code`` is named when RFC 6455 or the service defines it
(:data:`NAMED_CLOSE_CODES`); the codes clients choose fold into ``3xxx`` and ``4xxx``,
any other into ``other``.

What is counted is counted here, in plain floats (:class:`_Counter`,
:class:`_Histogram`), and turned into ``prometheus_client`` metric families only when
scraped: the scrape is what ``Counter`` and ``Histogram`` would render (the same
names, help, types, label sets in the order they were first used, and values: floats
summed in the same order), without their ``*_created`` samples, and the hot path (one
call per client frame, one per fan-out) is a dict lookup of the cached cells and two
float additions, with no lock: every observer call and every scrape runs on the
event loop's thread.
"""

from __future__ import annotations

import hmac
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from webpubsub.core.connection import Connection
from webpubsub.errors import Unauthorized
from webpubsub.node.observe import Exchange, RestCall
from webpubsub.protocol.backplane import Target
from webpubsub.protocol.cloudevents import (
    GROUP_PRESENCE_TYPE_PREFIX,
    SYSTEM_TYPE_PREFIX,
    USER_TYPE_PREFIX,
)
from webpubsub.protocol.frames import ClientProtocol, DataMessage
from webpubsub.protocol.tokens import bearer_token
from webpubsub.protocol.wsframe import CloseCode
from webpubsub.server.errors import error_response

if TYPE_CHECKING:
    from webpubsub.core.hub import Hub
    from webpubsub.upstream.dispatcher import Upstream

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The ``Content-Type`` of :meth:`Metrics.render`: the text format every Prometheus
reads (what ``prometheus_client`` serves without content negotiation; the names here
need none of the 1.0.0 format's escaping)."""

MAX_HUBS = 1000
"""Distinct hub label values; later hubs are counted as :data:`OTHER`."""
MAX_REST_LABELS = 1024
"""(operation, status) pairs whose labelled children are cached (the operations and
the statuses are the service's own: a few dozen pairs)."""
MAX_USER_EVENTS = 50
"""Distinct user event types (clients name them); later ones are :data:`USER_OTHER`."""
NAMED_EVENT_TYPES = frozenset(
    {SYSTEM_TYPE_PREFIX + name for name in ("connect", "connected", "disconnected")}
    | {GROUP_PRESENCE_TYPE_PREFIX + name for name in ("joined", "left")}
    | {"validation", "unknown"}
)
"""The event types the service sends (``unknown``: a request without ``ce-type``)."""
USER_OTHER = USER_TYPE_PREFIX + "_other"
NAMED_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1015} | set(CloseCode)
)
"""The close codes RFC 6455 §7.4.1 defines and the service's own (``CloseCode``)."""
MAX_SCANNED_CONNECTIONS = 100_000
"""Connections a scrape looks at one by one (protocols, reliable buffers), in about
35 ms on the 2-core build machine; the hubs past it are counted whole (``len``), with
the protocol ``unknown``, and ``webpubsub_unscanned_connections`` says how many."""
OTHER = "_other"

PROTOCOL_LABELS = {
    ClientProtocol.SIMPLE: "simple",
    ClientProtocol.JSON: "json",
    ClientProtocol.JSON_RELIABLE: "json.reliable",
    ClientProtocol.PROTOBUF: "protobuf",
    ClientProtocol.PROTOBUF_RELIABLE: "protobuf.reliable",
}
SIMPLE = ClientProtocol.SIMPLE
PROTOBUF = ClientProtocol.PROTOBUF
PROTOBUF_RELIABLE = ClientProtocol.PROTOBUF_RELIABLE
REPLY = "reply"
"""The ``kind`` of an event handler's answer sent back to its connection."""

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PUBLISH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0)
REST_BUCKETS = Histogram.DEFAULT_BUCKETS
"""``prometheus_client``'s default buckets (the REST latency histogram has always used
them), ``+Inf`` included."""

INF = float("inf")
_go_float: Callable[[float], str] = floatToGoString
"""How ``prometheus_client`` writes a bucket's bound (``0.005``, ``1.0``, ``+Inf``)."""


Cell = list[float]
"""A counter's value (one float), or a histogram's: its buckets' counts (not
cumulative) and, last, the sum of what it observed."""
_Pair = tuple[Cell, Cell]


class _Family:
    """One metric family: a cell per label values (the order they were first used in
    is the scrape's, as ``prometheus_client``'s)."""

    kind = ""

    def __init__(
        self, families: list[_Family], name: str, doc: str, labelnames: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.cells: dict[tuple[str, ...], Cell] = {}
        if not self.labelnames:  # an unlabelled metric is shown from the start
            self.cells[()] = self._cell()
        families.append(self)

    def _cell(self) -> Cell:
        return [0.0]

    def labels(self, *values: str) -> Cell:
        """The cell of ``values`` (made on first use, like ``labels()``)."""
        cell = self.cells.get(values)
        if cell is None:
            # Checked where a cell is made (a cached one passed already): a wrong call
            # fails here, at the caller, not every scrape after it.
            if len(values) != len(self.labelnames):
                raise ValueError(f"{self.name}: {len(self.labelnames)} label values expected")
            if not all(isinstance(v, str) for v in values):
                raise TypeError(f"{self.name}: label values are strings")
            cell = self.cells[values] = self._cell()
        return cell

    def metric(self) -> Metric:
        """The family as ``prometheus_client`` would collect it (no ``_created``)."""
        metric = Metric(self.name, self.doc, self.kind)
        for values, cell in list(self.cells.items()):
            self._samples(metric.samples, dict(zip(self.labelnames, values, strict=True)), cell)
        return metric

    def _samples(self, samples: list[Sample], labels: dict[str, str], cell: Cell) -> None:
        raise NotImplementedError


class _Counter(_Family):
    """A ``Counter``: ``cell[0] += amount`` (amounts are never negative here)."""

    kind = "counter"

    def _samples(self, samples: list[Sample], labels: dict[str, str], cell: Cell) -> None:
        samples.append(Sample(self.name + "_total", labels, cell[0]))


class _Histogram(_Family):
    """A ``Histogram`` (``+Inf`` is the last bound): see :func:`_observe`."""

    kind = "histogram"

    def __init__(
        self,
        families: list[_Family],
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds[-1] != INF:
            bounds.append(INF)
        self.bounds = tuple(bounds)
        self._le = tuple(_go_float(b) for b in bounds)
        super().__init__(families, name, doc, labelnames)

    def _cell(self) -> Cell:
        return [0.0] * (len(self.bounds) + 1)

    def _samples(self, samples: list[Sample], labels: dict[str, str], cell: Cell) -> None:
        acc = 0.0
        for i, le in enumerate(self._le):
            acc += cell[i]
            samples.append(Sample(self.name + "_bucket", {**labels, "le": le}, acc))
        samples.append(Sample(self.name + "_count", labels, acc))
        samples.append(Sample(self.name + "_sum", labels, cell[-1]))


def _observe(cell: Cell, bounds: tuple[float, ...], amount: float) -> None:
    """``Histogram.observe``: the sum, and the first bucket whose bound is at least
    ``amount`` (none for NaN, as ``prometheus_client``)."""
    cell[-1] += amount
    i = bisect_left(bounds, amount)
    if amount <= bounds[i]:
        cell[i] += 1


class _Bounded:
    """The label value of each distinct value, the first ``limit`` as themselves, the
    others as ``other``."""

    def __init__(self, limit: int, other: str = OTHER) -> None:
        self._limit = limit
        self._other = other
        self._seen: set[str] = set()

    def seen(self, value: str) -> bool:
        """``value`` has a label of its own already (asking adds none)."""
        return value in self._seen

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return self._other


class _EventTypes:
    """The ``event_type`` label: the service's own named, user events bounded."""

    def __init__(self) -> None:
        self._user = _Bounded(MAX_USER_EVENTS, USER_OTHER)

    def __call__(self, value: str) -> str:
        if value in NAMED_EVENT_TYPES:
            return value
        if value.startswith(USER_TYPE_PREFIX):
            return self._user(value)
        return OTHER


_CODE_LABELS = {code: str(code) for code in NAMED_CLOSE_CODES}


def close_code_label(code: int | None) -> str:
    """The ``code`` label of a close code (see the module docs)."""
    if code is None:
        return "none"
    label = _CODE_LABELS.get(code)
    if label is not None:
        return label
    if 3000 <= code <= 3999:
        return "3xxx"
    return "4xxx" if 4000 <= code <= 4999 else "other"


class Metrics:
    """Counts what the observers are told; renders it in the text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r: list[_Family] = []
        self._families = r
        """The families counted here, in the order they are scraped."""
        self._hub = _Bounded(MAX_HUBS)
        self._event_type = _EventTypes()
        self._connects = _Counter(
            r, "webpubsub_connects", "Connections attached.", ("hub", "protocol")
        )
        self._disconnects = _Counter(
            r,
            "webpubsub_disconnects",
            "Connections ended, by WebSocket close code (3xxx, 4xxx: a client's; none: unknown).",
            ("hub", "code"),
        )
        self._received = _Counter(
            r, "webpubsub_received_messages", "Client frames read.", ("hub", "kind")
        )
        self._received_bytes = _Counter(
            r, "webpubsub_received_bytes", "Bytes of client frames read.", ("hub", "kind")
        )
        self._delivered = _Counter(
            r,
            "webpubsub_delivered_messages",
            "Data messages offered to connections (one per recipient).",
            ("hub", "kind"),
        )
        self._delivered_bytes = _Counter(
            r,
            "webpubsub_delivered_bytes",
            "Payload bytes offered to connections (size times recipients).",
            ("hub", "kind"),
        )
        self._rest = _Counter(
            r,
            "webpubsub_rest_requests",
            "REST requests answered.",
            ("operation", "status"),
        )
        self._rest_seconds = _Histogram(
            r,
            "webpubsub_rest_request_duration_seconds",
            "REST request latency, head to answer.",
            ("operation",),
            buckets=REST_BUCKETS,
        )
        self._events = _Counter(
            r,
            "webpubsub_cloudevent_requests",
            "Requests to event handlers, by outcome.",
            ("event_type", "outcome"),
        )
        self._event_seconds = _Histogram(
            r,
            "webpubsub_cloudevent_request_duration_seconds",
            "Event handler request latency.",
            ("event_type",),
            buckets=LATENCY_BUCKETS,
        )
        self._slow = _Counter(
            r,
            "webpubsub_slow_client_closes",
            "Connections closed for not reading what they were sent.",
            ("hub",),
        )
        self._handovers = _Counter(
            r,
            "webpubsub_handovers",
            "Reliable connections that moved between nodes (out: left this node, in: came).",
            ("hub", "direction"),
        )
        self._refused = _Counter(
            r,
            "webpubsub_handshakes_refused",
            "WebSocket handshakes refused, by HTTP status (no connection came of them).",
            ("hub", "status"),
        )
        self._publish_seconds = _Histogram(
            r,
            "webpubsub_backplane_publish_duration_seconds",
            "Backplane publish latency.",
            buckets=PUBLISH_BUCKETS,
        )
        self._publish_errors = _Counter(
            r, "webpubsub_backplane_publish_errors", "Backplane publishes that failed."
        )
        self._in: dict[tuple[str, Any], _Pair] = {}
        """(hub, kind) → the received children: the hot path's one lookup."""
        self._out: dict[tuple[str, Any], _Pair] = {}
        """(hub, target scope or ``reply``) → the delivered children."""
        self._calls: dict[tuple[str, int], _Pair] = {}
        """(operation, status) → the REST cells: the same few pairs on every request."""
        self._events_by: dict[tuple[str, str], _Pair] = {}
        """(event type, outcome) → the CloudEvent cells, for the event types that are
        their own label (bounded: so are those)."""
        self._publish_cell = self._publish_seconds.labels()
        self._publish_error_cell = self._publish_errors.labels()
        self._hubs: Callable[[], Iterable[Hub]] = lambda: ()
        self._upstream: Upstream | None = None
        self.registry.register(_Counts(self._families))
        self.registry.register(_StateCollector(self))

    def watch(self, hubs: Callable[[], Iterable[Hub]], upstream: Upstream | None) -> None:
        """Read these at scrape time: the node's hubs, the upstream's queue and stats."""
        self._hubs = hubs
        self._upstream = upstream

    def render(self) -> bytes:
        """The text format of every metric, as of now."""
        return generate_latest(self.registry)

    # -- the observer --------------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        self._connects.labels(self._hub(conn.hub), PROTOCOL_LABELS[conn.protocol])[0] += 1

    def disconnected(self, conn: Connection, code: int | None, reason: str) -> None:
        self._disconnects.labels(self._hub(conn.hub), close_code_label(code))[0] += 1

    def detached(self, conn: Connection, reason: str) -> None:
        pass

    def recovered(self, conn: Connection) -> None:
        pass

    def received(self, conn: Connection, data: bytes | str, kind: str) -> None:
        pair = self._in.get((conn.hub, kind))
        if pair is None:
            pair = self._pair(self._in, self._received, self._received_bytes, conn.hub, kind, kind)
        pair[0][0] += 1
        if isinstance(data, str):
            pair[1][0] += len(data) if data.isascii() else len(data.encode("utf-8", "replace"))
        else:
            pair[1][0] += len(data)

    def delivered(self, hub: str, target: Target, message: DataMessage, recipients: int) -> None:
        if not recipients:
            return
        pair = self._out.get((hub, target.scope))
        if pair is None:
            pair = self._out_pair(hub, target.scope, target.scope.value)
        pair[0][0] += recipients
        pair[1][0] += len(message.payload.data) * recipients

    def replied(self, conn: Connection, message: DataMessage) -> None:
        pair = self._out.get((conn.hub, REPLY))
        if pair is None:
            pair = self._out_pair(conn.hub, REPLY, REPLY)
        pair[0][0] += 1
        pair[1][0] += len(message.payload.data)

    def rest_call(self, call: RestCall) -> None:
        cells = self._calls.get((call.operation, call.status))
        if cells is None:
            cells = (
                self._rest.labels(call.operation, str(call.status)),
                self._rest_seconds.labels(call.operation),
            )
            if len(self._calls) < MAX_REST_LABELS:  # (operations and statuses are ours)
                self._calls[(call.operation, call.status)] = cells
        cells[0][0] += 1
        _observe(cells[1], self._rest_seconds.bounds, call.duration)

    def cloud_event(self, exchange: Exchange) -> None:
        key = (exchange.event_type, exchange.outcome)
        cells = self._events_by.get(key)
        if cells is None:
            event_type = self._event_type(key[0])
            cells = (
                self._events.labels(event_type, key[1]),
                self._event_seconds.labels(event_type),
            )
            if event_type == key[0]:  # a label of its own: one of a bounded few
                self._events_by[key] = cells
        cells[0][0] += 1
        _observe(cells[1], self._event_seconds.bounds, exchange.duration)

    def slow_client(self, conn: Connection) -> None:
        self._slow.labels(self._hub(conn.hub))[0] += 1

    def published(self, duration: float, error: str | None) -> None:
        _observe(self._publish_cell, self._publish_seconds.bounds, duration)
        if error is not None:
            self._publish_error_cell[0] += 1

    def moved(self, conn: Connection, to_node: str) -> None:
        self._handovers.labels(self._hub(conn.hub), "out")[0] += 1

    def adopted(self, conn: Connection, from_node: str | None) -> None:
        self._handovers.labels(self._hub(conn.hub), "in")[0] += 1

    def refused(self, hub: str | None, status: int, reason: str) -> None:
        # Clients name the hub of a refused handshake: one not already counted by a
        # connection is ``_other``, so refused attempts never use up the hub labels.
        label = hub if hub is not None and self._hub.seen(hub) else OTHER
        self._refused.labels(label, str(status))[0] += 1

    # -- labelled cells ------------------------------------------------------------

    def _out_pair(self, hub: str, key: object, kind: str) -> _Pair:
        return self._pair(self._out, self._delivered, self._delivered_bytes, hub, key, kind)

    def _pair(
        self,
        cache: dict[tuple[str, Any], _Pair],
        count: _Counter,
        size: _Counter,
        hub: str,
        key: object,
        kind: str,
    ) -> _Pair:
        """The (count, bytes) cells of (hub, kind), cached under (hub, key)."""
        label = self._hub(hub)
        pair = (count.labels(label, kind), size.labels(label, kind))
        if label == hub:  # a hub counted as _other is not cached: the cache stays bounded
            cache[(hub, key)] = pair
        return pair

    # -- the state, read at scrape time ----------------------------------------------

    def _state(self) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "webpubsub_connections",
            "Connections on this node (detached reliable ones included).",
            labels=("hub", "protocol"),
        )
        buffered = GaugeMetricFamily(
            "webpubsub_reliable_buffered_bytes",
            "Unacknowledged bytes kept for reliable connections, summed.",
        )
        largest = GaugeMetricFamily(
            "webpubsub_reliable_largest_buffered_bytes",
            "Unacknowledged bytes of the reliable connection that keeps the most.",
        )
        detached = GaugeMetricFamily(
            "webpubsub_detached_connections", "Reliable connections waiting for their client."
        )
        scan = _scan(self._hubs(), self._hub)
        for (hub_label, protocol), n in sorted(scan.counts.items()):
            connections.add_metric((hub_label, protocol), n)
        buffered.add_metric((), scan.buffered)
        largest.add_metric((), scan.largest)
        detached.add_metric((), scan.detached)
        skipped = GaugeMetricFamily(
            "webpubsub_unscanned_connections",
            "Connections this scrape counted without looking at them (past its budget).",
        )
        skipped.add_metric((), scan.unscanned)
        yield from (connections, buffered, largest, detached, skipped)
        if self._upstream is not None:
            yield from _upstream_state(self._upstream)


@dataclass(slots=True)
class _Scan:
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    """(hub label, protocol label) → connections."""
    buffered: int = 0
    largest: int = 0
    detached: int = 0
    unscanned: int = 0

    def add(self, hub: str, protocol: str, n: int) -> None:
        if n:
            self.counts[(hub, protocol)] = self.counts.get((hub, protocol), 0) + n


def _scan(hubs: Iterable[Hub], hub_label: Callable[[str], str]) -> _Scan:
    """One pass over the connections, at most :data:`MAX_SCANNED_CONNECTIONS` of them."""
    scan = _Scan()
    budget = MAX_SCANNED_CONNECTIONS
    for hub in hubs:
        label = hub_label(hub.key)
        if budget < len(hub):
            scan.add(label, "unknown", len(hub))
            scan.unscanned += len(hub)
            continue
        budget -= len(hub)
        simple = json = reliable = protobuf = protobuf_reliable = 0  # identity tests:
        for conn in hub.connections():  # an Enum hashes slowly
            buffer = conn.reliable
            if buffer is None:
                if conn.protocol is SIMPLE:
                    simple += 1
                elif conn.protocol is PROTOBUF:
                    protobuf += 1
                else:
                    json += 1
                continue
            if conn.protocol is PROTOBUF_RELIABLE:
                protobuf_reliable += 1
            else:
                reliable += 1
            size = buffer.buffered_bytes
            scan.buffered += size
            if size > scan.largest:
                scan.largest = size
            if conn.sink is None:
                scan.detached += 1
        scan.add(label, "simple", simple)
        scan.add(label, "json", json)
        scan.add(label, "json.reliable", reliable)
        scan.add(label, "protobuf", protobuf)
        scan.add(label, "protobuf.reliable", protobuf_reliable)
    return scan


def _upstream_state(upstream: Upstream) -> Iterator[Metric]:
    stats = upstream.stats
    queued = GaugeMetricFamily(
        "webpubsub_events_queued", "Asynchronous events waiting or being delivered."
    )
    queued.add_metric((), upstream.queued())
    yield queued
    for name, doc, value in (
        ("webpubsub_events_delivered", "Asynchronous events delivered.", stats.delivered),
        ("webpubsub_event_retries", "Retries of queued events.", stats.retried),
        (
            "webpubsub_events_dead_lettered",
            "Events given up on (kept as dead letters).",
            stats.dead_lettered,
        ),
    ):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric((), value)
        yield counter
    dropped = CounterMetricFamily(
        "webpubsub_events_dropped", "Events lost, by why.", labels=("reason",)
    )
    for reason, value in (
        ("queue_full", stats.queue_full),
        ("dead_letters_full", stats.dead_dropped),
        ("after_close", stats.not_queued),
        ("store_failed", stats.not_stored),
    ):
        dropped.add_metric((reason,), value)
    yield dropped


def metrics_endpoint(metrics: Metrics, token: str | None) -> Handler:
    """The ``GET /metrics`` handler: the text format; with ``token``, only for a request
    with ``Authorization: Bearer <token>`` (compared in constant time), else 401."""
    expected = token.encode("utf-8") if token is not None else None

    async def handle(request: web.Request) -> web.StreamResponse:
        if expected is not None:
            given = bearer_token(request.headers.get("Authorization")) or ""
            if not hmac.compare_digest(given.encode("utf-8", "replace"), expected):
                refusal = error_response(
                    Unauthorized("/metrics needs an Authorization: Bearer token.")
                )
                refusal.headers["WWW-Authenticate"] = "Bearer"
                return refusal
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    return handle


class _StateCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return list(self._metrics._state())

    def describe(self) -> Iterable[Metric]:
        return ()


class _Counts(Collector):
    """The families counted by :class:`Metrics`, in their order."""

    def __init__(self, families: list[_Family]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return [family.metric() for family in self._families]

    def describe(self) -> Iterable[Metric]:
        return ()
