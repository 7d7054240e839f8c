"""The portal's live trace: a bounded ring of trace records, one per observed event.

:class:`TraceRing` is an :class:`~webpubsub.node.observe.Observer`: each call becomes
one record (a plain dict, the JSON object of the portal contract) with this node's
next ``seq``, appended to a ``deque`` of at most ``[portal] trace_buffer`` records and
``[portal] trace_max_bytes`` bytes (each record is serialized once and kept so: pages
and streams send those bytes; one record is at most :data:`RECORD_MAX_BYTES`). One
record per client frame and one per fan-out (never one per recipient); bodies are cut
at :data:`BODY_LIMIT`, previews at :data:`PREVIEW_CHARS`.

The records of the hot paths (a client frame, a REST call, a CloudEvent, a fan-out, a
reply) are made lazily: the ring keeps the facts they are made of (objects the caller
had already, a frame's preview, bodies cut at :data:`BODY_LIMIT`, the first
:data:`HEADERS_SHOWN` headers) with a bound of what they cost (held in memory, and
serialized: computed from lengths, never from a pass over a body), and builds, masks
and serializes the record only when it is read (a page, a stream, one record, a
connection's recent traffic), or when the ring's bytes would pass ``trace_max_bytes``
by those bounds (the records are built then, and the bound holds for their exact
sizes, as before). A record built late is the record the eager path made: its time,
its node and its facts were taken when it was added, and the facts are never changed.

Secrets are shown in part only: every ``ce-signature`` value as ``sha256=ab12…``
(its first four hex digits) and every ``Authorization`` value as its scheme and
``…``; URLs carry no query (``safe_url``). The full original request of each
CloudEvent (for the webhook debugger's replay) is kept beside the ring, under the
record's ``seq``, and evicted with its record.

Waiters (the portal's event streams) are woken through one :class:`asyncio.Event`
made only while someone waits: with nobody watching, a hot-path record costs a tuple
of its facts and an append.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import functools
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any, cast

import orjson

from webpubsub.core.connection import Connection
from webpubsub.node.observe import Exchange, RestCall
from webpubsub.protocol.backplane import Scope, Target
from webpubsub.protocol.cloudevents import UpstreamRequest
from webpubsub.protocol.frames import ClientProtocol, DataMessage, Origin
from webpubsub.protocol.messages import ProtocolViolation
from webpubsub.protocol.names import MAX_NAME_LENGTH
from webpubsub.protocol.payload import DataType
from webpubsub.upstream.http import safe_url

Record = dict[str, object]

Built = tuple[str, str | None, str | None, str | None, Record]
"""What a record is made of: its type, hub, connection id, user id and fields."""
Pending = tuple[float, str, Callable[[Any], Built], Any]
"""A record not built yet: its time, its node, the function that makes it and the facts
it makes it of (never changed after)."""

BODY_LIMIT = 16 * 1024
"""Bytes of a CloudEvent's request or response body kept in its record."""
PREVIEW_CHARS = 256
"""Characters of a text message kept as its preview."""
PREVIEW_BYTES = 192
"""Bytes of a binary message kept (base64) as its preview."""
RECENT_SCAN = 10_000
"""Records scanned, newest first, for one connection's recent traffic."""
ORIGINALS_MAX_BYTES = 64 * 1024 * 1024
"""Bytes (body, URL and headers) of the original requests kept for replay, at most (the
oldest go first: their records stay, without a replay)."""
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
"""The ring's records, serialized, at most (``[portal] trace_max_bytes``)."""
RECORD_MAX_BYTES = 128 * 1024
"""One record, serialized, at most: bodies and headers are cut further to fit."""
BODY_SHOWN_BYTES = 2 * BODY_LIMIT
"""A body as the record shows it (JSON-escaped), at most; an escape-heavy body is cut
below :data:`BODY_LIMIT` to fit (``truncated``)."""
HEADERS_SHOWN = 64
"""Headers a record shows per request or response (the rest cut, ``truncated``)."""
HEADER_SHOWN_CHARS = 1024
"""Characters of a header value a record shows (cut with ``…``)."""
RECENT_MAX_BYTES = 128 * 1024
"""A connection's recent records, serialized, at most."""
GROUP_FRAME_MAX_BYTES = 64 * 1024
"""A client's group frame (``joinGroup``, ``leaveGroup``, ``sendToGroup``) up to this
size is parsed for its ``group`` (the group filter finds it); a larger one is not."""
GROUP_KINDS = frozenset({"sendToGroup", "group"})
"""The kinds of frame whose ``group`` the ``message-in`` record carries."""

_REPLAYS: ContextVar[list[Record] | None] = ContextVar("webpubsub_trace_replays", default=None)
"""Where the records of the replays sent in this context go (:func:`catching_replays`)."""

ATTEMPTS_KEPT = 4096
"""Events whose attempts the trace counts (the newest; an older event's next attempt
counts from 1 again)."""

_PROTOCOLS = {
    ClientProtocol.SIMPLE: "simple",
    ClientProtocol.JSON: "json",
    ClientProtocol.JSON_RELIABLE: "json.reliable",
    ClientProtocol.PROTOBUF: "protobuf",
    ClientProtocol.PROTOBUF_RELIABLE: "protobuf.reliable",
}
_TEXT_TYPES = (DataType.TEXT, DataType.JSON)


@contextlib.contextmanager
def catching_replays() -> Iterator[list[Record]]:
    """The records of the replayed exchanges the current task sends inside the
    ``with`` block (the portal's webhook debugger finds its replay's record exactly:
    the transport tells the trace in the sending task, whatever runs beside it)."""
    caught: list[Record] = []
    token = _REPLAYS.set(caught)
    try:
        yield caught
    finally:
        _REPLAYS.reset(token)


def frame_group(data: bytes | str, protocol: ClientProtocol = ClientProtocol.JSON) -> str | None:
    """The ``group`` a group frame of ``protocol`` names (None: none, or not readable);
    a protobuf frame is decoded by its codec, a JSON one parsed alone."""
    if not protocol.is_json:
        try:
            msg = protocol.codec.decode_client_message(data)
        except ProtocolViolation:
            return None
        group = getattr(msg, "group", None)
        return group if isinstance(group, str) else None
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    group = frame.get("group") if isinstance(frame, dict) else None
    return group if isinstance(group, str) and len(group) <= MAX_NAME_LENGTH else None


def protocol_name(conn: Connection) -> str:
    """``simple``, ``json``, ``json.reliable``, ``protobuf`` or ``protobuf.reliable``: how
    the portal names a protocol."""
    return _PROTOCOLS[conn.protocol]


class TraceRing:
    """The last ``capacity`` trace records of node ``node_id`` (``capacity`` > 0).

    ``node_id`` may be set once the node exists (the composition root builds the
    trace before the node it observes).
    """

    def __init__(
        self,
        capacity: int,
        node_id: str = "",
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 1:
            raise ValueError("a trace ring holds at least one record")
        self.node_id = node_id
        self._clock = clock
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._ring: deque[Record | Pending] = deque()
        """Each record, or what it is made of until it is read (:meth:`_built`)."""
        self._raw: deque[bytes | int] = deque()
        """Each record serialized (once): what pages and streams send; for a record not
        built yet, a bound of what it costs (its facts held, and serialized)."""
        self._bytes = 0
        self._pending = 0
        """Records not built yet."""
        self._originals: dict[int, tuple[UpstreamRequest, int]] = {}
        """The full request of each CloudEvent record still in the ring, by seq (oldest
        first), with what it costs; :data:`ORIGINALS_MAX_BYTES` at most in all."""
        self._original_bytes = 0
        self._seq = 0
        self._wake: asyncio.Event | None = None
        self._attempts: OrderedDict[tuple[str | None, ...], int] = OrderedDict()
        """Requests sent per event (hub, connection, ce-id, type), the newest
        :data:`ATTEMPTS_KEPT` events: a retried event's records count its attempts."""

    # -- reading ------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def size_bytes(self) -> int:
        """The kept records' serialized size (for a record not built yet, a bound of it)."""
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The seq of the newest record (0 before the first)."""
        return self._seq

    @property
    def first_seq(self) -> int:
        """The seq of the oldest record kept (``last_seq + 1`` when empty)."""
        return self._seq - len(self._ring) + 1

    def __len__(self) -> int:
        return len(self._ring)

    def after(self, seq: int, limit: int) -> list[Record]:
        """At most ``limit`` records newer than ``seq``, oldest first."""
        start = max(0, seq - self.first_seq + 1)
        stop = min(len(self._ring), start + max(0, limit))
        self._build_range(start, stop)
        return list(itertools.islice(self._ring, start, stop))  # type: ignore[arg-type]

    def after_raw(self, seq: int, limit: int, max_bytes: int) -> list[bytes]:
        """At most ``limit`` serialized records newer than ``seq``, oldest first, at most
        ``max_bytes`` of them (but at least one, if any)."""
        start = max(0, seq - self.first_seq + 1)
        found: list[bytes] = []
        size = 0
        for index in range(start, min(len(self._ring), start + max(0, limit))):
            raw = self._built(index)[1]
            size += len(raw)
            if found and size > max_bytes:
                break
            found.append(raw)
        return found

    def get(self, seq: int) -> Record | None:
        """The record ``seq``, while the ring keeps it."""
        index = seq - self.first_seq
        if 0 <= index < len(self._ring):
            return self._built(index)[0]
        return None

    def original(self, seq: int) -> UpstreamRequest | None:
        """The full request of CloudEvent record ``seq``, while the ring keeps it."""
        kept = self._originals.get(seq)
        return kept[0] if kept is not None else None

    def recent(self, hub: str, connection_id: str, limit: int = 50) -> list[Record]:
        """The newest ``limit`` records of a connection (of the last :data:`RECENT_SCAN`),
        oldest first, :data:`RECENT_MAX_BYTES` of them serialized at most."""
        found: list[Record] = []
        size = 0
        newest = len(self._ring) - 1
        for index in range(newest, max(-1, newest - RECENT_SCAN), -1):
            record, raw = self._built(index)
            if record["connectionId"] == connection_id and record["hub"] == hub:
                size += len(raw)
                if size > RECENT_MAX_BYTES:
                    break
                found.append(record)
                if len(found) >= limit:
                    break
        found.reverse()
        return found

    def wake(self) -> None:
        """Wake every waiter now (the service stops)."""
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.set()

    async def wait(self, seq: int, timeout: float) -> None:  # noqa: ASYNC109 (a poll period)
        """Return once a record newer than ``seq`` exists, or after ``timeout`` seconds."""
        if self._seq > seq:
            return
        if self._wake is None:
            self._wake = asyncio.Event()
        wake = self._wake
        try:
            async with asyncio.timeout(timeout):
                await wake.wait()
        except TimeoutError:
            pass

    # -- writing ------------------------------------------------------------------

    def _add(
        self,
        kind: str,
        hub: str | None,
        connection_id: str | None,
        user_id: str | None,
        fields: Record,
    ) -> Record:
        """Add a record built now (serialized before it takes a seq: one that cannot be
        is added as an unreadable record, and the seqs stay those of the ring's places)."""
        seq, when = self._seq + 1, self._clock()
        try:
            record, raw = _record(
                seq, self.node_id, when, (kind, hub, connection_id, user_id, fields)
            )
        except (TypeError, ValueError):  # e.g. a lone surrogate: no JSON string holds it
            record, raw = _unreadable(seq, self.node_id, when)
        self._seq = seq
        self._ring.append(record)
        self._raw.append(raw)
        self._bytes += len(raw)
        self._added()
        return record

    def _add_lazy(self, build: Callable[[Any], Built], facts: object, cost: int) -> None:
        """Add a record that ``build(facts)`` makes when it is first read; ``cost``
        bounds both what ``facts`` hold in memory and the record serialized."""
        self._seq += 1
        self._ring.append((self._clock(), self.node_id, build, facts))
        self._raw.append(cost)
        self._bytes += cost
        self._pending += 1
        self._added()

    def _added(self) -> None:
        """Keep the bounds (records, bytes) and wake the waiters."""
        if len(self._ring) > self._capacity:
            self._evict()
        if self._bytes > self._max_bytes:
            self._build_pending()  # their exact sizes (each is at most its bound)
            while self._bytes > self._max_bytes and len(self._ring) > 1:
                self._evict()
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def _built(self, index: int) -> tuple[Record, bytes]:
        """The record at ``index`` (0: the oldest kept) and its bytes, built now if it was
        not yet."""
        entry = self._ring[index]
        raw = self._raw[index]
        if isinstance(raw, bytes):
            return cast(Record, entry), raw
        when, node, build, facts = cast(Pending, entry)
        seq = self._seq - len(self._ring) + 1 + index
        try:
            record, built = _record(seq, node, when, build(facts))
        except (TypeError, ValueError):  # e.g. a lone surrogate: no JSON string holds it
            record, built = _unreadable(seq, node, when)
        self._ring[index] = record
        self._raw[index] = built
        self._bytes += len(built) - raw
        self._pending -= 1
        return record, built

    def _build_range(self, start: int, stop: int) -> None:
        if self._pending:
            for index in range(start, stop):
                self._built(index)

    def _build_pending(self) -> None:
        """Build every record not built yet (the newest first: reads build the older)."""
        index = len(self._ring) - 1
        while self._pending and index >= 0:
            self._built(index)
            index -= 1

    def _evict(self) -> None:
        """Drop the oldest record (and its original request)."""
        self._ring.popleft()
        raw = self._raw.popleft()
        if isinstance(raw, bytes):
            self._bytes -= len(raw)
        else:  # not built: its bound
            self._bytes -= raw
            self._pending -= 1
        if self._originals:
            kept = self._originals.pop(self._seq - len(self._ring), None)  # the seq it had
            if kept is not None:
                self._original_bytes -= kept[1]

    # -- the Observer ---------------------------------------------------------------

    def connected(self, conn: Connection) -> None:
        self._add(
            "connected",
            conn.hub,
            conn.connection_id,
            conn.user_id,
            {
                "protocol": protocol_name(conn),
                "subprotocol": conn.subprotocol,
                "groups": sorted(conn.groups),
            },
        )

    def disconnected(self, conn: Connection, code: int | None, reason: str) -> None:
        self._add(
            "disconnected",
            conn.hub,
            conn.connection_id,
            conn.user_id,
            {"code": code, "reason": reason},
        )

    def detached(self, conn: Connection, reason: str) -> None:
        self._add("detached", conn.hub, conn.connection_id, conn.user_id, {"reason": reason})

    def recovered(self, conn: Connection) -> None:
        self._add("recovered", conn.hub, conn.connection_id, conn.user_id, {})

    def moved(self, conn: Connection, to_node: str) -> None:
        self._add("moved", conn.hub, conn.connection_id, conn.user_id, {"toNode": to_node})

    def adopted(self, conn: Connection, from_node: str | None) -> None:
        fields: Record = {"fromNode": from_node}
        self._add("adopted", conn.hub, conn.connection_id, conn.user_id, fields)

    def refused(self, hub: str | None, status: int, reason: str) -> None:
        self._add("refused", hub, None, None, {"status": status, "reason": reason})

    def received(self, conn: Connection, data: bytes | str, kind: str) -> None:
        head: str | bytes
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode("utf-8", "replace"))
            head = data[:PREVIEW_CHARS]
        else:
            size = len(data)
            head = data[:PREVIEW_BYTES]
        group = None
        if kind in GROUP_KINDS and size <= GROUP_FRAME_MAX_BYTES:
            group = frame_group(data, conn.protocol)
        hub, connection_id, user_id = conn.hub, conn.connection_id, conn.user_id
        strings = len(hub) + len(connection_id) + len(user_id or "") + len(kind) + len(group or "")
        cost = _RECORD_COST + _ESCAPED * strings + _PREVIEW_COST * len(head)
        facts = (hub, connection_id, user_id, kind, size, head, group)
        self._add_lazy(_received_record, facts, cost)

    def delivered(self, hub: str, target: Target, message: DataMessage, recipients: int) -> None:
        facts = _message_facts(message)
        self._add_lazy(
            _delivered_record, (hub, target, facts, recipients), _message_cost(hub, target, facts)
        )

    def replied(self, conn: Connection, message: DataMessage) -> None:
        facts = _message_facts(message)
        who = (conn.hub, conn.connection_id, conn.user_id)
        cost = _message_cost(conn.hub, conn.connection_id, facts) + 6 * len(conn.user_id or "")
        self._add_lazy(_replied_record, (who, facts), cost)

    def rest_call(self, call: RestCall) -> None:
        self._add_lazy(_rest_record, call, _rest_cost(call))

    def cloud_event(self, exchange: Exchange) -> None:
        request = exchange.request
        ce = exchange.ce
        hub = ce.get("ce-hub")
        connection_id = ce.get("ce-connectionid")
        attempt = self._attempt(hub, connection_id, exchange, ce.get("ce-id"))
        caught = _REPLAYS.get() if exchange.replay else None
        headers = _headers_cost(request.headers)
        if caught is not None or ce.get("ce-type") == CONNECT_EVENT:
            # A replay's record is wanted at once; a connect event's body is masked
            # whole (it is not cut first): both are built now.
            caught_record = self._add(*_cloudevent_record((exchange, ce, attempt)))
            if caught is not None:
                caught.append(caught_record)
        else:
            facts = (_bounded_exchange(exchange), ce, attempt)
            self._add_lazy(_cloudevent_record, facts, _exchange_cost(facts[0], ce, headers))
        size = _request_bytes(request, headers)
        self._originals[self._seq] = (request, size)
        self._original_bytes += size
        while self._original_bytes > ORIGINALS_MAX_BYTES:
            self._forget(next(iter(self._originals)))

    def _attempt(
        self, hub: str | None, connection_id: str | None, exchange: Exchange, ce_id: str | None
    ) -> int:
        """Which attempt at its event ``exchange`` is (1: the first; a replay is not one)."""
        if exchange.replay or ce_id is None:
            return 1
        key = (hub, connection_id, ce_id, exchange.event_type)
        attempt = self._attempts.pop(key, 0) + 1
        self._attempts[key] = attempt
        if len(self._attempts) > ATTEMPTS_KEPT:
            self._attempts.popitem(last=False)
        return attempt

    def _forget(self, seq: int) -> None:
        kept = self._originals.pop(seq, None)
        if kept is not None:
            self._original_bytes -= kept[1]

    def slow_client(self, conn: Connection) -> None:
        """Shown by the ``disconnected`` record that follows (code 1008)."""

    def published(self, duration: float, error: str | None) -> None:
        """Backplane latency is the metrics' concern, not the trace's."""


def _record(seq: int, node: str, when: float, built: Built) -> tuple[Record, bytes]:
    """Record ``seq`` and its bytes (at most :data:`RECORD_MAX_BYTES`)."""
    kind, hub, connection_id, user_id, fields = built
    record: Record = {
        "seq": seq,
        "node": node,
        "time": when,
        "type": kind,
        "hub": hub,
        "connectionId": connection_id,
        "userId": user_id,
    }
    record.update(fields)
    raw = orjson.dumps(record)
    if len(raw) > RECORD_MAX_BYTES:
        raw = _fit(record)
    if len(raw) > 512:  # orjson's buffer may be several times larger: keep a tight copy
        raw = bytes(memoryview(raw))
    return record, raw


def _unreadable(seq: int, node: str, when: float) -> tuple[Record, bytes]:
    """Record ``seq`` in place of one that no JSON can hold: its type says so."""
    record, _ = _record(seq, node, when, ("unreadable", None, None, None, {}))
    record["truncated"] = True
    return record, orjson.dumps(record)


_RECORD_COST = 512
"""A record's common fields and the rest of its keys and numbers, serialized, at most."""
_ESCAPED = 6
"""Bytes one character may take in a JSON string (a control character: ``\\u0000``),
and at most in memory."""


_PREVIEW_COST = _ESCAPED + 4
"""Bytes per character (or byte) of a frame's preview kept: held (4 at most) and shown
(6 at most; a binary one's base64, 4 per 3 bytes)."""

ReceivedFacts = tuple[str, str, str | None, str, int, str | bytes, str | None]
"""A client frame as a record shows it: hub, connection id, user id, kind, size, its
first :data:`PREVIEW_CHARS` characters (a text frame) or :data:`PREVIEW_BYTES` bytes
(binary) and the group it names (a group frame's)."""


def _received_record(facts: ReceivedFacts) -> Built:
    hub, connection_id, user_id, kind, size, head, group = facts
    fields: Record
    if isinstance(head, str):
        fields = {"kind": kind, "size": size, "frame": "text", "preview": head}
    else:
        preview = base64.b64encode(head).decode()
        fields = {"kind": kind, "size": size, "frame": "binary", "preview": preview}
    if group is not None:
        fields["group"] = group
    return "message-in", hub, connection_id, user_id, fields


def _rest_record(call: RestCall) -> Built:
    fields: Record = {
        "operation": call.operation,
        "method": call.method,
        "path": call.path,
        "status": call.status,
        "durationMs": round(call.duration * 1000, 3),
        "caller": call.caller,
    }
    return "rest", call.hub.lower() if call.hub is not None else None, None, None, fields


def _rest_cost(call: RestCall) -> int:
    strings = len(call.hub or "") + len(call.operation) + len(call.method) + len(call.path)
    return _RECORD_COST + _ESCAPED * (strings + len(call.caller))


StreamFacts = tuple[str, int, bool, str | None]
"""A group stream's message as a record shows it: the stream's id, the message's
sequence id, whether it ends the stream and its error's name (not the error's message:
a publisher's may be :data:`~webpubsub.protocol.messages.MAX_STREAM_ERROR` long)."""
MessageFacts = tuple[DataType, int, bytes, str | None, str | None, StreamFacts | None]
"""A message as a record shows it: its data type, its data's size and first bytes (not
the data: a message may be large), its group (a group message's), the sender's user id
and its group stream."""


def _message_facts(message: DataMessage) -> MessageFacts:
    payload = message.payload
    data = payload.data
    text = payload.data_type in _TEXT_TYPES
    head = data[: PREVIEW_CHARS * 4] if text else data[:PREVIEW_BYTES]
    group = message.group if message.origin is Origin.GROUP else None
    return payload.data_type, len(data), head, group, message.from_user_id, _stream_facts(message)


def _stream_facts(message: DataMessage) -> StreamFacts | None:
    stream = message.stream
    if stream is None:
        return None
    error = stream.error.name if stream.error is not None else None
    return stream.stream_id, stream.sequence_id, stream.end, error


def _message_cost(hub: str, target: object, facts: MessageFacts) -> int:
    strings = len(hub) + len(facts[3] or "") + len(facts[4] or "")
    target_id = getattr(target, "id", target)
    if isinstance(target_id, str):
        strings += len(target_id)
    stream = facts[5]
    if stream is not None:  # its id and error's name, and 64 for its number and keys
        strings += len(stream[0]) + len(stream[3] or "") + 64
    # the preview: at most PREVIEW_CHARS characters (6 bytes each escaped) or base64
    return _RECORD_COST + _ESCAPED * (strings + PREVIEW_CHARS) + 2 * len(facts[2])


def _delivered_record(facts: tuple[str, Target, MessageFacts, int]) -> Built:
    hub, target, message, recipients = facts
    scope = target.scope
    fields = _message_fields(message, scope.value, target.id or None, recipients)
    return (
        "message-out",
        hub,
        target.id if scope is Scope.CONNECTION else None,
        target.id if scope is Scope.USER else None,
        fields,
    )


def _replied_record(facts: tuple[tuple[str, str, str | None], MessageFacts]) -> Built:
    (hub, connection_id, user_id), message = facts
    fields = _message_fields(message, Scope.CONNECTION.value, connection_id, 1)
    fields["reply"] = True
    return "message-out", hub, connection_id, user_id, fields


def _bounded_exchange(exchange: Exchange) -> Exchange:
    """``exchange`` as its record shows it: bodies cut after :data:`BODY_LIMIT` bytes
    (and one more, so that the record still says it was cut), the response's first
    :data:`HEADERS_SHOWN` headers (and one more; the request's are the service's own,
    and name the event)."""
    request, response = exchange.request, exchange.response
    if len(request.body) > BODY_LIMIT + 1 or (
        response is not None
        and (len(response.body) > BODY_LIMIT + 1 or len(response.headers) > HEADERS_SHOWN + 1)
    ):
        request = dataclasses.replace(request, body=request.body[: BODY_LIMIT + 1])
        if response is not None:
            response = dataclasses.replace(
                response,
                headers=tuple(response.headers[: HEADERS_SHOWN + 1]),
                body=response.body[: BODY_LIMIT + 1],
            )
        exchange = dataclasses.replace(exchange, request=request, response=response)
    return exchange


def _exchange_cost(exchange: Exchange, ce: Mapping[str, str], headers: int) -> int:
    """A bound of what a bounded exchange (:func:`_bounded_exchange`) holds and of its
    record serialized (``headers``: :func:`_headers_cost` of its request's headers)."""
    request, response = exchange.request, exchange.response
    strings = len(request.url) + len(request.method) + len(exchange.error or "")
    strings += sum(map(len, ce.values()))  # the type, id, hub, connection and user
    cost = _RECORD_COST + _ESCAPED * strings + _part_cost(headers, request.body)
    if response is not None:
        cost += _part_cost(_headers_cost(response.headers), response.body)
    return cost


def _headers_cost(headers: Sequence[tuple[str, str]]) -> int:
    """The characters of ``headers``' names and values, and 4 more per header."""
    return sum(map(len, itertools.chain.from_iterable(headers))) + 4 * len(headers)


def _part_cost(headers: int, body: bytes) -> int:
    """A bound of a request's or response's headers (``headers``: their
    :func:`_headers_cost`) and body, held and as a record shows them (masked values
    are a few bytes longer at most: ``Bearer …``)."""
    return 64 + _ESCAPED * headers + min(BODY_SHOWN_BYTES, _ESCAPED * len(body)) + len(body)


def _cloudevent_record(facts: tuple[Exchange, Mapping[str, str], int]) -> Built:
    exchange, ce, attempt = facts
    hub = ce.get("ce-hub")
    fields = exchange_fields(exchange, ce)
    fields["attempt"] = attempt
    return (
        "cloudevent",
        hub.lower() if hub is not None else None,
        ce.get("ce-connectionid"),
        ce.get("ce-userid"),
        fields,
    )


def exchange_fields(exchange: Exchange, ce: Mapping[str, str] | None = None) -> Record:
    """The ``cloudevent`` fields of an exchange with an event handler (secrets masked);
    ``ce``: its request's ``ce-*`` headers, when the caller has them already."""
    request = exchange.request
    response = exchange.response
    if ce is None:
        ce = exchange.ce
    connect = ce.get("ce-type") == CONNECT_EVENT
    body = _connect_body_shown(request.body) if connect else request.body
    answer: Record | None = None
    if response is not None:
        answer = {"status": response.status, **_http_part(response.headers, response.body)}
    return {
        "eventType": exchange.event_type,
        "ceId": ce.get("ce-id"),
        "method": request.method,
        "url": safe_url(request.url),
        "request": _http_part(request.headers, body),
        "response": answer,
        "error": exchange.error,
        "outcome": exchange.outcome,
        "durationMs": round(exchange.duration * 1000, 3),
        "replay": exchange.replay,
    }


def _request_bytes(request: UpstreamRequest, headers: int | None = None) -> int:
    """What a kept original request costs: body, URL and headers (``headers``: their
    :func:`_headers_cost`, when the caller has it)."""
    if headers is None:
        headers = _headers_cost(request.headers)
    return len(request.body) + len(request.url) + headers + 64


def _fit(record: Record) -> bytes:
    """``record`` serialized within :data:`RECORD_MAX_BYTES`: its request and response
    (bodies and headers) are dropped, in that order of size, until it fits (each marked
    ``truncated``); a record that still does not fit keeps its common fields only."""
    for key in ("response", "request"):
        part = record.get(key)
        if isinstance(part, dict):
            part.update(headers=[], body="", truncated=True)
            part.pop("bodyEncoding", None)
            raw = orjson.dumps(record)
            if len(raw) <= RECORD_MAX_BYTES:
                return raw
    for key in list(record):
        if key not in ("seq", "node", "time", "type", "hub", "connectionId", "userId"):
            del record[key]
    record["truncated"] = True
    return orjson.dumps(record)


def mask_headers(headers: Iterable[tuple[str, str]]) -> list[list[str]]:
    """``headers`` as ``[name, value]`` pairs as a record shows them: secrets in part
    only, long values cut (:func:`shown_value`)."""
    return [[name, shown_value(name, value)] for name, value in headers]


def shown_value(name: str, value: str) -> str:
    """A header value as a record shows it: masked, and cut at :data:`HEADER_SHOWN_CHARS`."""
    shown = mask_value(name, value)
    if len(shown) > HEADER_SHOWN_CHARS:
        return shown[:HEADER_SHOWN_CHARS] + "…"
    return shown


_SECRET_WORDS = ("key", "token", "secret", "signature", "password", "auth")
"""A header whose name contains one of these is shown in part only."""
CONNECT_EVENT = "azure.webpubsub.sys.connect"


def mask_value(name: str, value: str) -> str:
    """A header's value as the trace shows it: ``ce-signature`` values keep their
    first four hex digits, ``Authorization`` (and ``Proxy-Authorization``) its scheme,
    ``Cookie``/``Set-Cookie`` and any header whose name contains ``key``, ``token``,
    ``secret``, ``signature``, ``password`` or ``auth`` its first four characters
    (:func:`mask_secret`)."""
    kind = _masking(name)
    if kind is _Masking.NONE:
        return value
    if kind is _Masking.SIGNATURE:
        return ",".join(_masked_signature(part.strip()) for part in value.split(","))
    if kind is _Masking.SCHEME:
        scheme = value.strip().partition(" ")[0]
        return f"{scheme} …" if scheme and scheme != value.strip() else "…"
    return mask_secret(value)


class _Masking(enum.Enum):
    NONE = 0
    SIGNATURE = 1
    SCHEME = 2
    SECRET = 3


@functools.lru_cache(maxsize=512)
def _masking(name: str) -> _Masking:
    """How a header of ``name`` is masked: decided once per name (an event's headers
    are the same few names every time; the cache is bounded)."""
    lowered = name.lower()
    if lowered == "ce-signature":
        return _Masking.SIGNATURE
    if lowered in ("authorization", "proxy-authorization"):
        return _Masking.SCHEME
    if lowered in ("cookie", "set-cookie") or any(w in lowered for w in _SECRET_WORDS):
        return _Masking.SECRET
    return _Masking.NONE


def mask_secret(value: str) -> str:
    """A secret as the trace shows it: its first four characters and ``…`` (only ``…``
    for one of at most 8 characters, which four would nearly give away)."""
    return f"{value[:4]}…" if len(value) > 8 else "…"


def _connect_body_shown(body: bytes) -> bytes:
    """The body of a ``connect`` event as the trace shows it: the client's request
    headers masked as :func:`mask_value` masks them, every query value as a secret
    (an app's ``?sig=``, ``?code=``). The request sent is never changed."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if not isinstance(value, dict):
        return body
    for key, mask in (("headers", mask_value), ("query", lambda _name, v: mask_secret(v))):
        part = value.get(key)
        if isinstance(part, dict):
            value[key] = {
                name: [mask(name, v) if isinstance(v, str) else "…" for v in values]
                if isinstance(values, list)
                else "…"
                for name, values in part.items()
            }
    return orjson.dumps(value)


def _masked_signature(part: str) -> str:
    algorithm, sep, digest = part.partition("=")
    if not sep:
        return "…"
    return f"{algorithm}={digest[:4]}…"


def _http_part(headers: Sequence[tuple[str, str]], body: bytes) -> Record:
    truncated = len(body) > BODY_LIMIT or len(headers) > HEADERS_SHOWN
    kept = body[:BODY_LIMIT] if len(body) > BODY_LIMIT else body
    part: Record = {"headers": mask_headers(headers[:HEADERS_SHOWN])}
    text = _utf8(kept, truncated)
    if text is None:
        part["body"] = base64.b64encode(kept).decode()
        part["bodyEncoding"] = "base64"
    else:
        shown = _fit_text(text)
        truncated = truncated or len(shown) < len(text)
        part["body"] = shown
    part["truncated"] = truncated
    return part


def _fit_text(text: str) -> str:
    """``text``, cut so that its JSON string is at most :data:`BODY_SHOWN_BYTES` (control
    characters escape to six bytes each)."""
    size = len(orjson.dumps(text))
    for _ in range(8):  # each cut is proportional: a few rounds at most
        if size <= BODY_SHOWN_BYTES:
            return text
        text = text[: max(0, len(text) * BODY_SHOWN_BYTES // size - 8)]
        size = len(orjson.dumps(text))
    return text if size <= BODY_SHOWN_BYTES else ""


def _utf8(data: bytes, cut: bool) -> str | None:
    """``data`` as text, if it is UTF-8 (a cut body may end inside a character)."""
    for trim in range(4 if cut else 1):
        try:
            return data[: len(data) - trim].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _message_fields(
    facts: MessageFacts, scope: str, target_id: str | None, recipients: int
) -> Record:
    data_type, size, head, group, from_user_id, stream = facts
    if data_type in _TEXT_TYPES:
        preview = head.decode("utf-8", "replace")[:PREVIEW_CHARS]
    else:
        preview = base64.b64encode(head).decode()
    fields: Record = {
        "target": {"scope": scope, "id": target_id},
        "group": group,
        "recipients": recipients,
        "size": size,
        "dataType": data_type.value,
        "preview": preview,
        "fromUserId": from_user_id,
    }
    if stream is not None:  # a group stream's fragment or end: which and where
        stream_id, sequence_id, end, error = stream
        fields["stream"] = {
            "streamId": stream_id,
            "sequenceId": sequence_id,
            "end": end,
            "error": error,
        }
    return fields


def _header(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.lower() == lowered:
            return value
    return None
