"""What the service tells its observers: the portal's live trace and the metrics.

The node, the operations, the upstream dispatcher and the REST layer report what
happens through one :class:`Observer` (declared here, by the node, like its other
ports); ``server/`` implements it twice (the trace ring of the portal, the Prometheus
metrics) and the composition root joins them with :class:`Observers`.

Every call is synchronous, cheap and never fails the caller: an observer only
records. The hot path reports once per client frame and once per fan-out (with the
number of recipients), never once per recipient.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from webpubsub.core.connection import Connection
from webpubsub.protocol.backplane import Target
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse
from webpubsub.protocol.frames import DataMessage

log = logging.getLogger("webpubsub.observe")


class RestCall(NamedTuple):
    """One data-plane REST request, as answered (a tuple: one per request, made fast)."""

    hub: str | None
    operation: str
    """The operation's name as Azure's REST reference spells it (``SendToAll``), or
    ``Unknown`` for a path that names none."""
    method: str
    path: str
    """The raw path, without the query (which may hold a token)."""
    status: int
    duration: float
    """Seconds from the request's head to its answer."""
    caller: str
    """The address of the peer that sent the request (``request.remote``). Behind a
    proxy of ``server.trusted_proxies`` this is the proxy's: the service takes only
    ``X-Forwarded-Proto`` / ``-Host`` from a trusted proxy (server/origin.py) and
    parses no ``X-Forwarded-For``, so it has no client address it could trust more."""


@dataclass(frozen=True, slots=True)
class Exchange:
    """One HTTP request to an event handler and what came of it."""

    request: UpstreamRequest
    response: UpstreamResponse | None
    error: str | None
    """Why there is no usable answer (a timeout, a refused connection), else None."""
    duration: float
    replay: bool = False
    """Sent again from the portal's webhook debugger."""
    timed_out: bool = False
    """No answer within the handler's timeout (the transport's ``UpstreamTimeout``)."""
    _ce: dict[str, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ce(self) -> dict[str, str]:
        """The request's ``ce-*`` headers by lower-cased name (the first of each), read
        once for every observer (do not change it)."""
        ce = self._ce
        if ce is None:
            ce = ce_headers(self.request.headers)
            object.__setattr__(self, "_ce", ce)
        return ce

    @property
    def event_type(self) -> str:
        """The ``ce-type`` (``azure.webpubsub.sys.connected``), or ``validation`` for an
        abuse-protection probe (an ``OPTIONS`` request, no CloudEvent)."""
        event_type = self.ce.get("ce-type")
        if event_type is not None:
            return event_type
        return "validation" if self.request.method == "OPTIONS" else "unknown"

    @property
    def outcome(self) -> str:
        """``success`` (2xx), ``rejected`` (4xx), ``failed`` (any other status),
        ``timeout`` or ``error`` (no answer)."""
        if self.response is None:
            return "timeout" if self.timed_out else "error"
        status = self.response.status
        if 200 <= status < 300:
            return "success"
        return "rejected" if 400 <= status < 500 else "failed"


_CE = frozenset(a + b + "-" for a in "cC" for b in "eE")
"""How a ``ce-*`` header's name may begin."""
_KNOWN_HEADERS = {
    name: name.lower() if name[:3] in _CE else ""
    for name in (
        "Content-Type",
        "WebHook-Request-Origin",
        "ce-specversion",
        "ce-type",
        "ce-source",
        "ce-id",
        "ce-time",
        "ce-awpsversion",
        "ce-hub",
        "ce-connectionId",
        "ce-eventName",
        "ce-userId",
        "ce-subprotocol",
        "ce-connectionState",
        "ce-signature",
    )
}
"""The names of the headers the service sends, as it spells them: each ``ce-*`` one
lower-cased, any other ``""`` (looked up whole, where each would be cut and
lower-cased)."""


def ce_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The ``ce-*`` headers of a request by lower-cased name (the first of each)."""
    found: dict[str, str] = {}
    known = _KNOWN_HEADERS.get
    for key, value in headers:
        name = known(key)
        if name:
            if name not in found:
                found[name] = value
        elif name is None and key[:3] in _CE:
            found.setdefault(key.lower(), value)
    return found


class Observer(Protocol):
    """Told of what happens in the service (implemented in server/)."""

    def connected(self, conn: Connection) -> None:
        """``conn`` is attached (new, or recovered: see :meth:`recovered`)."""

    def disconnected(self, conn: Connection, code: int | None, reason: str) -> None:
        """``conn`` ended on this node (``code``: the WebSocket close code, when known)."""

    def detached(self, conn: Connection, reason: str) -> None:
        """A reliable connection lost its transport and waits for its client."""

    def recovered(self, conn: Connection) -> None:
        """A detached reliable connection has a transport again."""

    def received(self, conn: Connection, data: bytes | str, kind: str) -> None:
        """A client frame, as read (``kind``: see :data:`RECEIVED_KINDS`)."""

    def delivered(self, hub: str, target: Target, message: DataMessage, recipients: int) -> None:
        """One fan-out on this node: ``message`` offered to ``recipients`` connections."""

    def replied(self, conn: Connection, message: DataMessage) -> None:
        """An event handler's answer sent to the connection whose event it was."""

    def rest_call(self, call: RestCall) -> None: ...

    def cloud_event(self, exchange: Exchange) -> None: ...

    def slow_client(self, conn: Connection) -> None:
        """``conn`` is closed because it did not read what it was sent."""

    def published(self, duration: float, error: str | None) -> None:
        """One backplane publish took ``duration`` seconds (``error``: why it failed)."""

    def moved(self, conn: Connection, to_node: str) -> None:
        """A reliable connection left this node for node ``to_node`` (its client
        reconnected there): it did not end, no :meth:`disconnected` follows here."""

    def adopted(self, conn: Connection, from_node: str | None) -> None:
        """A reliable connection handed over by node ``from_node`` is on this node now,
        detached until its client resumes it (:meth:`recovered`); no :meth:`connected`.
        ``from_node`` is None when unknown, or when no node took a connection this node
        handed over and it came back."""

    def refused(self, hub: str | None, status: int, reason: str) -> None:
        """A WebSocket handshake was refused with HTTP ``status`` (a bad or expired
        token, anonymous connections not allowed, the ``connect`` handler said no, ...):
        no connection came of it. ``hub`` is the hub key asked for (None: not a valid
        hub name); ``reason`` is what the client was told, never its token."""


RECEIVED_KINDS = (
    "message",  # a simple client's frame (its ``message`` event)
    "sendToGroup",
    "event",
    "group",  # joinGroup / leaveGroup
    "control",  # ping, sequenceAck, or a request the service refused with a failed ack
    "invalid",  # a frame that closes the connection
    "stream",  # a group stream's start, fragment, keep-alive or end
)


def _bound(observers: tuple[Observer, ...], name: str) -> tuple[Callable[..., None], ...]:
    """Method ``name`` of each observer that has it."""
    return tuple(m for o in observers if (m := getattr(o, name, None)) is not None)


class Observers:
    """Several observers as one; an observer that raises is logged, never the caller's
    problem. Each observer's methods are bound once (an observer without one of the
    methods is not told of that event)."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self._all = tuple(observers)
        all_ = self._all
        self._connected = _bound(all_, "connected")
        self._disconnected = _bound(all_, "disconnected")
        self._detached = _bound(all_, "detached")
        self._recovered = _bound(all_, "recovered")
        self._received = _bound(all_, "received")
        self._delivered = _bound(all_, "delivered")
        self._replied = _bound(all_, "replied")
        self._rest_calls = _bound(all_, "rest_call")
        self._cloud_events = _bound(all_, "cloud_event")
        self._slow_clients = _bound(all_, "slow_client")
        self._publishes = _bound(all_, "published")
        self._moved = _bound(all_, "moved")
        self._adopted = _bound(all_, "adopted")
        self._refused = _bound(all_, "refused")

    def __bool__(self) -> bool:
        return bool(self._all)

    @property
    def all(self) -> tuple[Observer, ...]:
        return self._all

    def connected(self, conn: Connection) -> None:
        _tell(self._connected, conn)

    def disconnected(self, conn: Connection, code: int | None, reason: str) -> None:
        _tell(self._disconnected, conn, code, reason)

    def detached(self, conn: Connection, reason: str) -> None:
        _tell(self._detached, conn, reason)

    def recovered(self, conn: Connection) -> None:
        _tell(self._recovered, conn)

    def received(self, conn: Connection, data: bytes | str, kind: str) -> None:
        _tell(self._received, conn, data, kind)

    def delivered(self, hub: str, target: Target, message: DataMessage, recipients: int) -> None:
        _tell(self._delivered, hub, target, message, recipients)

    def replied(self, conn: Connection, message: DataMessage) -> None:
        _tell(self._replied, conn, message)

    def rest_call(self, call: RestCall) -> None:
        _tell(self._rest_calls, call)

    def cloud_event(self, exchange: Exchange) -> None:
        _tell(self._cloud_events, exchange)

    def slow_client(self, conn: Connection) -> None:
        _tell(self._slow_clients, conn)

    def published(self, duration: float, error: str | None) -> None:
        _tell(self._publishes, duration, error)

    def moved(self, conn: Connection, to_node: str) -> None:
        _tell(self._moved, conn, to_node)

    def adopted(self, conn: Connection, from_node: str | None) -> None:
        _tell(self._adopted, conn, from_node)

    def refused(self, hub: str | None, status: int, reason: str) -> None:
        _tell(self._refused, hub, status, reason)


NO_OBSERVER = Observers()


FAILURE_LOG_SECONDS = 60.0
"""After the first failure of an observer method (logged with its traceback), at most
one line per this many seconds says how many more there were."""
MAX_FAILING_METHODS = 64
"""Observer methods whose failures are followed one by one; more share one entry."""


class FailureLog:
    """The log of observers that fail, bounded in lines and in state."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failing: dict[str, list[float]] = {}
        """Method → [when the next line may be logged, failures not logged yet]."""

    def __len__(self) -> int:
        return len(self._failing)

    def failed(self, name: str, exc: BaseException) -> None:
        """``name`` (``Class.method``) raised ``exc``; call it from an ``except`` block."""
        now = self._clock()
        state = self._failing.get(name)
        if state is None:
            if len(self._failing) >= MAX_FAILING_METHODS:
                name = "other observers"
                state = self._failing.get(name)
            if state is None:
                self._failing[name] = [now + FAILURE_LOG_SECONDS, 0]
                log.exception("an observer failed: %s", name)
                return
        state[1] += 1
        if now < state[0]:
            return
        since = now - state[0] + FAILURE_LOG_SECONDS
        log.error(
            "an observer failed: %s failed %d more times in the last %.0f s; the last: %s: %s",
            name,
            state[1],
            since,
            type(exc).__name__,
            exc,
        )
        state[0], state[1] = now + FAILURE_LOG_SECONDS, 0


_failures = FailureLog()


def _tell(methods: tuple[Callable[..., None], ...], *args: object) -> None:
    """Call each observer's method with ``args``; one that raises is logged, and the
    others are still told."""
    for method in methods:
        try:
            method(*args)
        except Exception as exc:
            _failed(method, exc)


def _failed(method: Callable[..., None], exc: Exception) -> None:
    """``method`` of an observer raised ``exc`` (call it from an ``except`` block)."""
    owner = getattr(method, "__self__", None)
    name = getattr(method, "__name__", "?")
    _failures.failed(f"{type(owner).__name__}.{name}" if owner is not None else name, exc)


def log_fields(
    hub: str | None, connection_id: str | None = None, user_id: str | None = None
) -> dict[str, str | None]:
    """The ``extra=`` of a log call about one connection (or hub): the ``hub``,
    ``connectionId`` and ``userId`` fields of the JSON log format (server/logs.py)."""
    return {"hub": hub, "connection_id": connection_id, "user_id": user_id}


def conn_fields(conn: Connection) -> dict[str, str | None]:
    """:func:`log_fields` of ``conn``."""
    return log_fields(conn.hub, conn.connection_id, conn.user_id)
