"""The node: the one object the transports call, and the executor of commands.

A node owns the hubs of the connections attached to it.  Transports call
:meth:`Node.admit` (handshake: anonymous policy, ``connect`` webhook, subprotocol),
:meth:`Node.attach` (after the upgrade), :meth:`Node.receive` (each client frame, in
order) and :meth:`Node.detach`.  The backplane calls :meth:`Node.apply` and
:meth:`Node.answer` with the commands and queries of every node's REST operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import assert_never

from webpubsub.core.connection import Connection, Sink
from webpubsub.core.detached import DetachedSessions
from webpubsub.core.hub import Hub
from webpubsub.core.invocations import DEFAULT_MAX_INVOCATIONS, Invocations
from webpubsub.core.permissions import Permission, Permissions
from webpubsub.core.reliable import DEFAULT_MAX_BYTES as RELIABLE_MAX_BYTES
from webpubsub.core.reliable import ReliableBuffer
from webpubsub.core.router import (
    CallEvent,
    CallInvoke,
    CancelCall,
    CloseClient,
    Effect,
    GroupChanged,
    Publish,
    Reply,
    StreamStep,
    end_message,
    failed,
    route,
    stream_ended,
    succeeded,
)
from webpubsub.core.settings import HubSettings
from webpubsub.core.streams import GroupStream
from webpubsub.errors import (
    InvalidName,
    TooManyEvents,
    TooManyRequests,
    Unauthorized,
    UpstreamError,
    WebPubSubError,
)
from webpubsub.node import ports
from webpubsub.node.observe import NO_OBSERVER, Observers, conn_fields, log_fields
from webpubsub.node.ports import (
    EventHandlerPort,
    HandoverPort,
    PresencePort,
    ReapedConnection,
)
from webpubsub.protocol.backplane import (
    Answer,
    ChangeGroup,
    ChangePermission,
    Close,
    Command,
    Exists,
    GroupAction,
    GroupMember,
    GroupRoom,
    Handover,
    HasPermission,
    ListGroup,
    Query,
    Scope,
    Send,
    SessionState,
    StreamSession,
    Target,
)
from webpubsub.protocol.cloudevents import ConnectRequest, EventContext, EventReply
from webpubsub.protocol.frames import SUBPROTOCOLS, ClientProtocol, DataMessage, encode_for
from webpubsub.protocol.json_protocol import (
    decode_client_message,
    encode_invoke_error,
    encode_invoke_response,
)
from webpubsub.protocol.messages import (
    CancelInvocation,
    Invoke,
    Ping,
    ProtocolViolation,
    StreamError,
)
from webpubsub.protocol.names import validate_group, validate_user_id
from webpubsub.protocol.odata import Filter, FilterSubject, parse_filter
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.protocol.tokens import ClientIdentity
from webpubsub.protocol.wsframe import CloseCode, encode_frame

log = logging.getLogger("webpubsub.node")

PING_MAX_BYTES = 64
"""Frames behind an event at most this long are looked at for a ``ping`` to answer at
once (a ping is ``{"type":"ping"}``, or two bytes of protobuf)."""

#: The ``disconnected`` reason of a connection whose node died.
NODE_LOST = "The connection was lost: its service node stopped."
CUT_OFF = "The connection was lost: its service node was cut off from the others."
NO_CONNECTION = "The connection does not exist or has ended."
PRESENCE_WAIT = 2.0
"""How long the ack of a join or leave waits for the node's presence write at most."""

#: How long a dropped reliable connection waits for its client (reliable JSON subprotocol).
DEFAULT_RECOVERY_WINDOW = 60.0

#: Messages of one connection waiting on an event handler: the event being handled and
#: those behind it. Past it the transport stops reading; a request with an ackId is
#: refused (failed ack) instead once the handler has kept the event for SLOW_EVENT_SECONDS.
DEFAULT_MAX_INFLIGHT_EVENTS = 16
SLOW_EVENT_SECONDS = 1.0
#: Bytes of the messages queued behind an event, at most (one largest message more).
DEFAULT_BACKLOG_MAX_BYTES = 1024 * 1024

INVOCATION_LOST = WebPubSubError(
    "The connection dropped before the invocation completed: it was cancelled."
)
"""The failure of an invocation open when its reliable connection dropped (sent on recovery)."""

#: Bytes of a recovered connection's buffer written at a time: the next chunk waits
#: until the transport has drained (so any buffer fits through any outbox).
REPLAY_CHUNK_BYTES = 64 * 1024

#: Parsed OData filters kept per node (the same filter text is often sent repeatedly).
_FILTER_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Handshake:
    """A client's upgrade request, after its token was verified."""

    hub: str
    identity: ClientIdentity | None
    """``None`` for an anonymous client (no token)."""
    request: ConnectRequest = field(default_factory=ConnectRequest)
    """What the ``connect`` handler is told (claims, query, headers, subprotocols)."""

    @property
    def subprotocols(self) -> tuple[str, ...]:
        return self.request.subprotocols


@dataclass(frozen=True, slots=True)
class Admission:
    """An accepted handshake: who the connection is, before the upgrade."""

    hub: str
    connection_id: str
    user_id: str | None
    groups: tuple[str, ...]
    roles: tuple[str, ...]
    protocol: ClientProtocol
    subprotocol: str | None
    """The value to echo in ``Sec-WebSocket-Protocol`` (None: no header)."""
    state: str


def reaped_event_id(hub: str, connection_id: str) -> str:
    """The ``ce-id`` of the ``disconnected`` a survivor sends for a dead node's
    connection: the same from any survivor, and on any retry of the reaping."""
    digest = hashlib.sha256(f"{hub}\x00{connection_id}".encode()).hexdigest()
    return f"reaped-{digest[:16]}"


def new_connection_id() -> str:
    return secrets.token_hex(16)


class Node:
    def __init__(
        self,
        *,
        hub_settings: Callable[[str], HubSettings],
        upstream: EventHandlerPort,
        origin: str,
        publish: ports.Publish,
        node_id: str | None = None,
        id_factory: Callable[[], str] = new_connection_id,
        recovery_window: float = DEFAULT_RECOVERY_WINDOW,
        presence: PresencePort | None = None,
        handover: HandoverPort | None = None,
        max_inflight_events: int = DEFAULT_MAX_INFLIGHT_EVENTS,
        backlog_max_bytes: int = DEFAULT_BACKLOG_MAX_BYTES,
        max_invocations: int = DEFAULT_MAX_INVOCATIONS,
        reliable_max_bytes: int = RELIABLE_MAX_BYTES,
        detached: DetachedSessions | None = None,
        observer: Observers = NO_OBSERVER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id or secrets.token_hex(4)
        self.observer = observer
        """Told of connections, frames, fan-outs (the portal's trace, the metrics)."""
        self._clock = clock
        self.max_inflight_events = max_inflight_events
        """Messages one connection may have waiting on a handler: the event being handled
        and those queued behind it."""
        self.backlog_max_bytes = backlog_max_bytes
        """Bytes of the messages queued behind one connection's event, at most."""
        self._backlogs: dict[Connection, _Backlog] = {}
        self.max_invocations = max_invocations
        """Invocations (``invoke``) one connection may have open; the next is refused."""
        self._invocations: dict[Connection, Invocations[asyncio.Task[EventReply]]] = {}
        """The open invocations of the connections that sent an ``invoke``."""
        self._lost_invocations: dict[Connection, list[str]] = {}
        """Detached connections' invocations cancelled by the drop (at most
        ``max_invocations`` each): each gets a failed ``invokeResponse`` on recovery."""
        self._closing_all: tuple[int, str] | None = None
        """Set by :meth:`close_all`: a connection attached later is closed at once."""
        """Connections with an event at a handler: their next messages, in order."""
        self._presence = presence
        self._handover = handover
        self._welcomes: set[asyncio.Task[None]] = set()

        self._hub_settings = hub_settings
        self._upstream = upstream
        self._origin = origin
        self._new_id = id_factory
        self._recovery_window = recovery_window
        self._reliable_max_bytes = reliable_max_bytes
        self._detached = DetachedSessions() if detached is None else detached
        self._replays: set[asyncio.Task[None]] = set()
        self._hubs: dict[str, Hub] = {}
        self._idle: asyncio.Event | None = None
        self._expiry: dict[Connection, asyncio.TimerHandle] = {}
        self._reported: set[Connection] = set()
        """Connections closing whose ``disconnected`` event another node already sent."""
        self._publish = publish
        self._filters: dict[str, Filter] = {}
        self._stream_timers: dict[Connection, asyncio.TimerHandle] = {}
        """One idle timer per connection with open group streams."""
        self._stream_tasks: set[asyncio.Task[None]] = set()
        """Streams' terminal messages being published (idle, the publisher gone)."""
        self._handling: set[Connection] = set()
        """Connections a frame of which is being handled now (not in the background)."""
        self._handling_done: dict[Connection, asyncio.Event] = {}
        """Set when the frame is done, for whoever waits (a recovered transport's next
        frame, a stream's terminal message): made only when someone waits."""

    # -- transport side --------------------------------------------------------------

    def hub(self, key: str) -> Hub | None:
        return self._hubs.get(key)

    def hubs(self) -> list[Hub]:
        """This node's hubs that have connections (a copy: the metrics and the portal
        read it)."""
        return list(self._hubs.values())

    def connection_count(self) -> int:
        return sum(len(h) for h in self._hubs.values())

    async def admit(self, hs: Handshake) -> Admission:
        """Run the handshake's checks and the ``connect`` webhook.

        Raises :class:`Unauthorized` (anonymous not allowed), :class:`BadRequest`,
        :class:`ConnectRejected` (the handler's 4xx) or :class:`UpstreamError`.
        """
        key = hs.hub.lower()
        settings = self._hub_settings(hs.hub)
        if hs.identity is None and not settings.anonymous_connect:
            raise Unauthorized("An access token is required to connect to this hub.")
        identity = hs.identity or ClientIdentity(user_id=None, roles=(), groups=(), claims={})
        connection_id = self._new_id()
        ctx = EventContext(
            hub=key,
            connection_id=connection_id,
            user_id=identity.user_id,
            subprotocol=None,
            state="",
            event_id="0",
            origin=self._origin,
        )
        decision = await self._upstream.connect(settings, ctx, hs.request)
        user_id, groups, roles = identity.user_id, identity.groups, identity.roles
        picked: str | None = None
        state = ""
        if decision is not None:
            if decision.user_id_set:
                user_id = _valid_user_id(decision.user_id)
            if decision.groups is not None:
                groups = _union(groups, _valid_groups(decision.groups))
            if decision.roles is not None:
                roles = decision.roles
            if decision.subprotocol is not None:
                if decision.subprotocol not in hs.subprotocols:
                    raise UpstreamError(
                        f"The connect handler picked subprotocol {decision.subprotocol!r}, "
                        "which the client did not offer."
                    )
                picked = decision.subprotocol
            if decision.state is not None:
                state = decision.state
        protocol, echo = _select_protocol(hs.subprotocols, picked)
        return Admission(
            hub=key,
            connection_id=connection_id,
            user_id=user_id,
            groups=groups,
            roles=roles,
            protocol=protocol,
            subprotocol=echo,
            state=state,
        )

    def attach(self, adm: Admission, sink: Sink) -> Connection:
        """Register an upgraded connection, join its groups, fire ``connected``.

        Subprotocol clients get the ``connected`` system message before anything else;
        with a networked backplane only once the node's presence write has landed, so
        that once a client knows it is connected, every node's queries know it too.
        """
        reliable = adm.protocol.is_reliable
        conn = Connection(
            connection_id=adm.connection_id,
            hub=adm.hub,
            user_id=adm.user_id,
            protocol=adm.protocol,
            subprotocol=adm.subprotocol if adm.protocol.is_pubsub else None,
            sink=sink,
            permissions=Permissions.from_roles(adm.roles),
            state=adm.state,
            reliable=ReliableBuffer(max_bytes=self._reliable_max_bytes, codec=adm.protocol.codec)
            if reliable
            else None,
            reconnection_token=secrets.token_urlsafe(24) if reliable else None,
            on_detached_close=self._end_detached,
            max_groups=self._hub_settings(adm.hub).max_groups_per_connection,
            connected_at=self._clock(),
        )
        held: _Held | None = None
        if conn.protocol.is_pubsub:
            connected = conn.protocol.codec.encode_connected(
                conn.connection_id, conn.user_id, conn.reconnection_token
            )
            if self._presence is None:
                conn.send_control(connected)
            else:
                held = _Held(sink, encode_frame(conn.protocol.codec.OPCODE, connected))
                conn.sink = held
        hub = self._hubs.get(adm.hub)
        if hub is None:
            hub = self._hubs[adm.hub] = Hub(adm.hub, self._presence)
        hub.add(conn)
        joined = _join_all(hub, conn, adm.groups, "its token or connect handler")
        self.observer.connected(conn)
        self._upstream.connected(self._hub_settings(adm.hub), self.context(conn))
        self._group_presence(conn, "joined", joined)
        if held is not None:
            task = asyncio.get_running_loop().create_task(self._welcome(conn, held))
            self._welcomes.add(task)
            task.add_done_callback(self._welcomes.discard)
        if self._closing_all is not None:  # the service is stopping
            conn.close(*self._closing_all)
        return conn

    async def _welcome(self, conn: Connection, held: _Held) -> None:
        """Send ``connected`` (and what waited behind it) once presence is written."""
        if self._presence is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PRESENCE_WAIT):
                    await self._presence.flushed()
        held.release()
        if conn.sink is held:
            conn.sink = held.target

    def resume(
        self, hub_key: str, connection_id: str, token: str, subprotocols: Sequence[str], sink: Sink
    ) -> Connection | str:
        """Recover a reliable connection onto a new transport (reliable JSON subprotocol).

        Returns the connection, or the reason recovery is impossible (the caller closes
        with 1008).  The client gets ``connected`` again, then its unacknowledged
        messages are replayed in order, the first chunk
        at once and the rest as the transport drains; data sent meanwhile follows them.
        """
        hub = self._hubs.get(hub_key)
        conn = hub.get(connection_id) if hub is not None else None
        refusal = _recovery_refusal(conn, token, subprotocols)
        if refusal is not None or conn is None or conn.reliable is None:
            return refusal or NO_CONNECTION
        timer = self._expiry.pop(conn, None)
        if timer is not None:
            timer.cancel()
        self._attached(conn)
        old, conn.sink = conn.sink, sink
        lost = self._lost_invocations.pop(conn, [])
        if old is not None:  # the old transport is still open: the client moved on
            old.close(CloseCode.POLICY_VIOLATION, "The connection was recovered elsewhere.")
            lost = self._end_invocations(conn)  # as if it had dropped first
        conn.replaying = True
        conn.close_code = None
        self.observer.recovered(conn)
        # ``connected`` again (same id and token): the JS client resumes its paused
        # group streams on it; clients take it as a token update, not a new connection.
        codec = conn.protocol.codec
        conn.send_control(
            codec.encode_connected(conn.connection_id, conn.user_id, conn.reconnection_token)
        )
        for invocation_id in lost:
            conn.send_control(encode_invoke_error(invocation_id, INVOCATION_LOST))
        cursor = _replay_chunk(conn, sink, 0)
        if cursor is not None:
            task = asyncio.get_running_loop().create_task(self._replay(conn, sink, cursor))
            self._replays.add(task)
            task.add_done_callback(self._replays.discard)
        return conn

    async def _replay(self, conn: Connection, sink: Sink, cursor: int) -> None:
        """Replay the rest of ``conn``'s buffer to ``sink``, a chunk each time it has
        drained; stops if the connection moves to another sink or ends."""
        next_cursor: int | None = cursor
        try:
            while next_cursor is not None:
                await sink.drained()
                if conn.sink is not sink or conn.closing:
                    return
                next_cursor = _replay_chunk(conn, sink, next_cursor)
        except Exception:  # pragma: no cover - a broken transport ends only this replay
            log.exception(
                "replaying connection %s failed", conn.connection_id, extra=conn_fields(conn)
            )
            conn.close(CloseCode.INTERNAL_ERROR, "The service failed to replay the messages.")

    def _attached(self, conn: Connection) -> None:
        """``conn`` is no longer detached (recovered, moved or ended)."""
        self._detached.remove(conn)
        conn.on_buffered = None

    def _detached_now(self, conn: Connection) -> None:
        """Count ``conn``, detached, against the bounds of detached connections."""
        conn.on_buffered = self._buffered
        self._end_oldest(self._detached.add(conn))

    def _buffered(self, conn: Connection, size: int) -> None:
        self._end_oldest(self._detached.grew(conn, size))

    def _end_oldest(self, ended: list[tuple[Connection, str]]) -> None:
        for conn, reason in ended:
            log.warning(
                "ending detached connection %s of hub %s: %s",
                conn.connection_id,
                conn.hub,
                reason,
                extra=conn_fields(conn),
            )
            conn.close_reason = reason
            self._end(conn, reason)
            if conn.reliable is not None:
                conn.reliable.clear()

    async def recover(
        self, hub_key: str, connection_id: str, token: str, subprotocols: Sequence[str], sink: Sink
    ) -> Connection | str:
        """:meth:`resume` here, or take the connection over from the node that holds it
        (its client reconnected through another node of the cluster)."""
        result = self.resume(hub_key, connection_id, token, subprotocols, sink)
        if not (result == NO_CONNECTION and self._handover is not None):
            return result
        adopted: list[Connection] = []

        def adopt(session: SessionState) -> None:
            adopted.append(self._adopt(session, session.from_node))

        refusal = await self._handover.take_over(
            hub_key, connection_id, token, tuple(subprotocols), adopt
        )
        if refusal is not None:
            return refusal
        if not adopted:
            return NO_CONNECTION
        return self.resume(hub_key, connection_id, token, subprotocols, sink)

    def _adopt(self, session: SessionState, from_node: str | None) -> Connection:
        """A reliable connection handed over by node ``from_node`` (None: unknown, or
        this node's own that no node took), detached until resumed."""
        protocol = SUBPROTOCOLS.get(session.subprotocol.lower(), ClientProtocol.JSON_RELIABLE)
        conn = Connection(
            connection_id=session.connection_id,
            hub=session.hub,
            user_id=session.user_id,
            protocol=protocol,
            subprotocol=session.subprotocol,
            sink=None,
            permissions=Permissions.restore(session.permissions),
            state=session.state,
            reliable=ReliableBuffer.restore(
                session.next_sequence_id,
                list(session.frames),
                max_bytes=self._reliable_max_bytes,
                codec=protocol.codec,
            ),
            reconnection_token=session.reconnection_token,
            on_detached_close=self._end_detached,
            max_groups=self._hub_settings(session.hub).max_groups_per_connection,
            connected_at=session.connected_at or self._clock(),
        )
        for ack_id in session.ack_ids:
            conn.ack_ids.add(ack_id)
        conn.events_sent = session.events_sent
        conn.messages_in, conn.messages_out = session.messages_in, session.messages_out
        hub = self._hubs.get(session.hub)
        if hub is None:
            hub = self._hubs[session.hub] = Hub(session.hub, self._presence)
        hub.add(conn)
        _join_all(hub, conn, session.groups, "the node it moved from")
        self._streams_arriving(conn, session.streams)
        self._expiry[conn] = asyncio.get_running_loop().call_later(
            self._recovery_window, self._end, conn, "The client did not reconnect in time."
        )
        log.info(
            "connection %s of hub %s moved here",
            conn.connection_id,
            conn.hub,
            extra=conn_fields(conn),
        )
        self.observer.adopted(conn, from_node)
        self._detached_now(conn)
        return conn

    def _hand_over(self, command: Handover) -> None:
        """Another node asks for a reliable connection of this one: send its state as of
        this point in the command stream, and let it go (it does not end)."""
        if self._handover is None or command.to_node == self.node_id:
            return  # a Handover this node asked for: its backplane settles it
        hub = self._hubs.get(command.hub)
        conn = hub.get(command.connection_id) if hub is not None else None
        if hub is None or conn is None:
            return  # not this node's: the owner answers
        refusal = _recovery_refusal(conn, command.token, command.subprotocols)
        if refusal is not None or conn.reliable is None:
            self._handover.hand_over(command.to_node, command.request_id, refusal or NO_CONNECTION)
            return
        next_id, frames = conn.reliable.snapshot()
        session = SessionState(
            hub=conn.hub,
            connection_id=conn.connection_id,
            user_id=conn.user_id,
            subprotocol=conn.subprotocol or "",
            state=conn.state,
            groups=tuple(conn.groups),
            permissions=conn.permissions.snapshot(),
            reconnection_token=conn.reconnection_token or "",
            ack_ids=tuple(conn.ack_ids),
            next_sequence_id=next_id,
            frames=tuple(frames),
            events_sent=conn.events_sent,
            from_node=self.node_id,
            connected_at=conn.connected_at,
            messages_in=conn.messages_in,
            messages_out=conn.messages_out,
            streams=self._streams_leaving(conn),
        )
        timer = self._expiry.pop(conn, None)
        if timer is not None:
            timer.cancel()
        self._end_invocations(conn)  # the client failed them when its socket dropped
        self._attached(conn)
        conn.moved_to = command.to_node
        old, conn.sink = conn.sink, None
        conn.closing = True  # nothing more is delivered here
        hub.remove(conn.connection_id)  # no disconnected event: it lives on elsewhere
        self.observer.moved(conn, command.to_node)
        if not len(hub):
            del self._hubs[conn.hub]
            if not self._hubs and self._idle is not None:
                self._idle.set()

        def undelivered() -> None:
            log.warning(
                "connection %s could not move to %s; it stays",
                conn.connection_id,
                command.to_node,
                extra=conn_fields(conn),
            )
            self._adopt(session, None)

        self._handover.hand_over(command.to_node, command.request_id, session, undelivered)
        if old is not None:  # the old transport is still open: the client moved on
            old.close(CloseCode.POLICY_VIOLATION, "The connection was recovered elsewhere.")
        log.info(
            "connection %s of hub %s moved to %s",
            conn.connection_id,
            conn.hub,
            command.to_node,
            extra=conn_fields(conn),
        )

    async def receive(self, conn: Connection, data: bytes | str) -> None:
        """Handle one client message, in order with the connection's others.

        An event for a handler goes on in the background, so that the transport reads
        on (pings, the next messages): the connection's later messages wait behind it,
        at most :attr:`max_inflight_events` in all and :attr:`backlog_max_bytes` queued.
        Past that the transport stops reading (this waits for room), unless the handler
        has kept the event for :data:`SLOW_EVENT_SECONDS`: then a request with an ackId
        gets a failed ack at once (a client that pipelines requests to a handler that
        keeps up is never refused).
        """
        if conn.closing:
            return
        invocation_id = None
        if conn.protocol.is_json and _names_invocation(data):
            handled, invocation_id = self._invocation_arrived(conn, data)
            if handled:
                return
        await self._enqueue(conn, data, invocation_id)

    async def _enqueue(
        self, conn: Connection, data: bytes | str, invocation_id: str | None
    ) -> None:
        """Handle ``data`` now or queue it behind ``conn``'s event (``invocation_id``: the
        frame is that open invocation's ``invoke``, refused at once rather than waiting
        for room)."""
        if conn.closing:
            return
        backlog = self._backlogs.get(conn)
        if backlog is None:
            if conn in self._handling:  # a frame of its previous transport (a recovery
                await self._handled(conn)  # raced it) is still being handled: after it
                await self._enqueue(conn, data, invocation_id)
                return
            self._handling.add(conn)
            try:
                await self._handle(conn, data, inline=False)
            finally:
                self._handling.discard(conn)
                done = self._handling_done.pop(conn, None)
                if done is not None:
                    done.set()
            return
        if conn.protocol.is_pubsub and len(data) <= PING_MAX_BYTES and self._pinged(conn, data):
            return  # answered at once: a slow handler must not look like a dead service
        while self._full(backlog, data):  # bounded: the head event has a timeout
            if invocation_id is not None:  # an invocation never waits: "not a hang"
                self._refuse_invocation(
                    conn, invocation_id, TooManyEvents(self.max_inflight_events)
                )
                return
            slow_in = backlog.head_since + SLOW_EVENT_SECONDS - asyncio.get_running_loop().time()
            if slow_in <= 0:
                codec = conn.protocol.codec
                ack_id = codec.ack_id_of(data) if conn.protocol.is_pubsub else None
                if ack_id is not None:
                    error = TooManyEvents(self.max_inflight_events)
                    conn.send_control(codec.encode_ack(ack_id, error))
                    return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(slow_in if slow_in > 0 else None):
                    await backlog.changed()
            if self._backlogs.get(conn) is not backlog:  # it drained meanwhile
                await self._enqueue(conn, data, invocation_id)
                return
        backlog.frames.append(data)
        backlog.bytes += len(data)

    def _pinged(self, conn: Connection, data: bytes | str) -> bool:
        """Answer a ``ping`` that would wait behind an event: its ``pong`` goes now (a
        pong has no place in the order of the connection's other answers)."""
        try:
            msg = conn.protocol.codec.decode_client_message(data)
        except ProtocolViolation:
            return False
        if not isinstance(msg, Ping):
            return False
        conn.messages_in += 1
        self.observer.received(conn, data, "control")
        conn.send_control(conn.protocol.codec.PONG)
        return True

    async def _handled(self, conn: Connection) -> None:
        """Return once no frame of ``conn`` is being handled (bounded: a frame's work
        has its own timeouts)."""
        while conn in self._handling:
            done = self._handling_done.get(conn)
            if done is None:
                done = self._handling_done[conn] = asyncio.Event()
            await done.wait()

    def _invocation_arrived(self, conn: Connection, data: bytes | str) -> tuple[bool, str | None]:
        """Open an ``invoke``'s invocation as its frame arrives (so duplicates and the
        limit count those still queued), refusing it at once with a failed
        ``invokeResponse``; carry out a ``cancelInvocation`` at once (not behind the call
        it cancels). Returns whether the frame needs nothing more, and the id opened."""
        try:
            msg = decode_client_message(data)
        except ProtocolViolation:
            return False, None  # the ordinary path answers it
        match msg:
            case Invoke():
                invocations = self._invocations.get(conn)
                if invocations is None:
                    invocations = self._invocations[conn] = Invocations(self.max_invocations)
                try:
                    invocations.open(msg.invocation_id)
                except WebPubSubError as exc:
                    conn.messages_in += 1
                    self.observer.received(conn, data, "event")
                    conn.send_control(encode_invoke_error(msg.invocation_id, exc))
                    return True, None
                return False, msg.invocation_id
            case CancelInvocation():
                conn.messages_in += 1
                self.observer.received(conn, data, "control")
                self._cancel_invocation(conn, msg.invocation_id)
                return True, None
            case _:
                return False, None

    def _end_invocations(self, conn: Connection) -> list[str]:
        """``conn`` ends, drops or moves to another node: its handler calls are cancelled
        (the client fails its pending invocations when its socket closes, and cannot
        cancel them); the ids that were open."""
        self._lost_invocations.pop(conn, None)
        invocations = self._invocations.pop(conn, None)
        closed = invocations.close_all() if invocations is not None else {}
        for call in closed.values():
            if call is not None:
                call.cancel()
        return list(closed)

    def _refuse_invocation(
        self, conn: Connection, invocation_id: str, error: WebPubSubError
    ) -> None:
        self._cancel_invocation(conn, invocation_id)  # open, never started
        conn.send_control(encode_invoke_error(invocation_id, error))

    def _cancel_invocation(self, conn: Connection, invocation_id: str) -> None:
        invocations = self._invocations.get(conn)
        call = invocations.close(invocation_id) if invocations is not None else None
        if call is not None:
            call.cancel()

    def _full(self, backlog: _Backlog, data: bytes | str) -> bool:
        if len(backlog.frames) + 1 >= self.max_inflight_events:
            return True
        return bool(backlog.frames) and backlog.bytes + len(data) > self.backlog_max_bytes

    async def settle(self, conn: Connection) -> None:
        """Return once the messages ``conn`` sent are handled (its transport has ended)."""
        backlog = self._backlogs.get(conn)
        if backlog is not None and backlog.task is not None and not conn.closing:
            # Not for a connection the service closed (shutdown, REST close): its
            # ``disconnected`` must not wait for a handler that may never answer.
            await asyncio.wait([backlog.task])

    async def _handle(self, conn: Connection, data: bytes | str, *, inline: bool) -> None:
        conn.messages_in += 1
        if conn.protocol.is_pubsub:
            await self._request(conn, data, inline=inline)
            return
        self.observer.received(conn, data, "message")
        if isinstance(data, str):
            payload = Payload(DataType.TEXT, data.encode("utf-8"))
        else:
            payload = Payload(DataType.BINARY, data)
        message = self._message(conn, payload)
        if inline:
            await message
        else:
            self._in_background(conn, message)

    async def _message(self, conn: Connection, payload: Payload) -> None:
        """A simple client's message: the ``message`` event; its reply goes back."""
        try:  # what user_event does, one coroutine less (every simple client's message)
            reply = await self._upstream.user_event(
                self._hub_settings(conn.hub), self.context(conn), "message", payload
            )
        except UpstreamError as exc:
            self._event_failed(conn, "message", exc)
            conn.close(CloseCode.INTERNAL_ERROR, exc.client_message)
            return
        self.apply_reply(conn, reply)

    def _in_background(self, conn: Connection, first: Coroutine[object, object, None]) -> None:
        """Run ``first`` (an event) as the head of ``conn``'s backlog."""
        backlog = _Backlog()
        self._backlogs[conn] = backlog
        backlog.task = asyncio.create_task(self._work_off(conn, backlog, first))

    async def _work_off(
        self, conn: Connection, backlog: _Backlog, first: Coroutine[object, object, None]
    ) -> None:
        try:
            await first
            while backlog.frames and not conn.closing:  # bounded: max_inflight_events
                data = backlog.frames.popleft()
                backlog.bytes -= len(data)
                backlog.head_since = asyncio.get_running_loop().time()
                backlog.wake()
                await self._handle(conn, data, inline=True)
        except Exception:  # one connection's failure must not end the others
            log.exception(
                "connection %s of hub %s failed",
                conn.connection_id,
                conn.hub,
                extra=conn_fields(conn),
            )
            conn.close(CloseCode.INTERNAL_ERROR, "The service failed to process a message.")
        finally:
            del self._backlogs[conn]
            backlog.wake()

    def throttle(self, conn: Connection, data: bytes | str | None, reason: str) -> None:
        """``conn`` sent more than its hub allows: the request in ``data`` (None: a
        WebSocket ping) gets a failed ack when it has an ackId, then the connection is
        closed with 1008 and ``reason``."""
        if conn.closing:
            return
        log.info(
            "closing connection %s of hub %s: %s",
            conn.connection_id,
            conn.hub,
            reason,
            extra=conn_fields(conn),
        )
        if conn.protocol.is_pubsub and data is not None:
            codec = conn.protocol.codec
            ack_id = codec.ack_id_of(data)
            if ack_id is not None:
                conn.send_control(codec.encode_ack(ack_id, TooManyRequests(reason)))
        conn.close(CloseCode.POLICY_VIOLATION, reason)

    async def _request(self, conn: Connection, data: bytes | str, *, inline: bool) -> None:
        """Carry out what the router makes of one JSON-subprotocol frame (an event in the
        background unless ``inline``)."""
        hub = self._hubs.get(conn.hub)
        if hub is None:  # pragma: no cover - an attached connection always has its hub
            return
        effect = route(conn, hub, data, now=asyncio.get_running_loop().time())
        self.observer.received(conn, data, _kind(effect))
        match effect:
            case None:
                return
            case GroupChanged():
                if effect.presence is not None:
                    self._group_presence(conn, effect.presence[0], effect.presence[1:])
                return
            case Reply():
                if effect.presence is not None:
                    self._group_presence(conn, effect.presence[0], effect.presence[1:])
                if effect.after_presence and self._presence is not None:
                    # Bounded: if Redis is slow or down the ack goes out anyway.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(PRESENCE_WAIT):
                            await self._presence.flushed()
                conn.send_control(effect.frame)
                return
            case CloseClient():
                conn.close(effect.code, effect.reason)
                return
            case Publish():
                try:
                    await self._publish(effect.command)
                except WebPubSubError as exc:  # the backplane is down: say so, keep the client
                    ack = failed(conn, effect.ack_id, exc)
                else:
                    ack = succeeded(conn, effect.ack_id)
            case CallEvent() | CallInvoke():
                if isinstance(effect, CallEvent):
                    call = self._call(conn, effect)
                else:
                    call = self._invoke(conn, effect)
                if inline:
                    await call
                else:
                    self._in_background(conn, call)
                return
            case CancelCall():
                self._cancel_invocation(conn, effect.invocation_id)
                return
            case StreamStep():
                await self._stream_step(conn, effect)
                return
            case _:
                assert_never(effect)
        if ack is not None:
            conn.send_control(ack)

    # -- group streams ---------------------------------------------------------------

    async def _stream_step(self, conn: Connection, step: StreamStep) -> None:
        """Publish a stream's fragment (or terminal message), then answer the publisher.

        A fragment the backplane cannot take ends its stream, ``InternalServerError`` for
        the publisher and (if the backplane takes that) the subscribers: the JavaScript
        client does not send a fragment again on a ``TransientError`` nack (it only
        trims its buffer), so a rewound stream would silently lose the rest.
        """
        if step.command is not None:
            try:
                await self._publish(step.command)
            except WebPubSubError as exc:
                if step.fragment is None:  # a terminal message: the stream is over anyway
                    _end_not_published(conn, exc)
                else:
                    stream = step.fragment
                    stream.in_flight = None
                    if conn.streams.get(stream.stream_id) is stream:
                        lost = f"The service could not publish the fragment: {exc.message}"
                        ended = stream_ended(conn, stream, StreamError("InternalServerError", lost))
                        for frame in ended.frames:
                            conn.send_control(frame)
                        if ended.command is not None:
                            self._publish_later(conn, ended.command)
                    self._watch_streams(conn)
                    return
        if step.fragment is not None:
            step.fragment.in_flight = None
        for frame in step.frames:
            conn.send_control(frame)
        self._watch_streams(conn)

    def _watch_streams(self, conn: Connection) -> None:
        """Keep one timer per connection with streams, due at its earliest idle deadline
        (a stream that was active since is looked at and the timer set again)."""
        timer = self._stream_timers.get(conn)
        deadline = conn.streams.next_deadline() if conn.has_streams else None
        if deadline is None:
            if timer is not None:
                timer.cancel()
                del self._stream_timers[conn]
            return
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._stream_timers[conn] = loop.call_at(deadline, self._streams_idle, conn)

    def _streams_idle(self, conn: Connection) -> None:
        """End the streams of ``conn`` idle past their timeout: ``IdleTimeout`` to their
        subscribers and to the publisher."""
        self._stream_timers.pop(conn, None)
        now = asyncio.get_running_loop().time()
        for stream in conn.streams.expired(now):
            if stream.in_flight is not None:  # its fragment is being published: active
                stream.last_active = now
                continue
            timeout_ms = round(stream.idle_timeout * 1000)
            error = StreamError("IdleTimeout", f"No data or keep-alive within {timeout_ms} ms.")
            ended = stream_ended(conn, stream, error)  # told again on a recovery, if missed
            for frame in ended.frames:
                conn.send_control(frame)
            if ended.command is not None:
                self._publish_later(conn, ended.command)
        self._watch_streams(conn)

    def _end_streams(self, conn: Connection, reason: str) -> None:
        """``conn`` ends (or leaves this node): its streams end for their subscribers
        with ``Cancelled``; there is no publisher left to tell."""
        timer = self._stream_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
        if not conn.has_streams:
            return
        error = StreamError("Cancelled", reason)
        for stream in conn.streams.clear():
            self._publish_later(conn, end_message(conn, stream, error))

    def _streams_leaving(self, conn: Connection) -> tuple[StreamSession, ...]:
        """The open streams of ``conn``, which moves to another node (they go on there)."""
        timer = self._stream_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
        if not conn.has_streams:
            return ()
        now = asyncio.get_running_loop().time()
        return tuple(
            StreamSession(
                s.stream_id,
                s.group,
                s.no_echo,
                s.idle_timeout,
                max(s.deadline - now, 0.0),
                # A fragment still being published is not delivered yet: the other node
                # takes it again (the client sends it, unacknowledged) rather than lose it.
                s.in_flight if s.in_flight is not None else s.expected,
                s.carried,
            )
            for s in conn.streams.clear()
        )

    def _streams_arriving(self, conn: Connection, streams: Sequence[StreamSession]) -> None:
        """Open the streams of a connection handed over to this node, as they were."""
        if not streams:
            return
        now = asyncio.get_running_loop().time()
        for s in streams:
            last_active = now - max(s.idle_timeout - s.idle_left, 0.0)
            stream = GroupStream(
                s.stream_id, s.group, s.no_echo, s.idle_timeout, last_active, s.expected, s.carried
            )
            refused = conn.streams.open(stream)
            if refused is not None:  # a node with a lower limit: end it for its subscribers
                error = StreamError("Cancelled", refused)
                self._publish_later(conn, end_message(conn, stream, error))
        self._watch_streams(conn)

    def _publish_later(self, conn: Connection, command: Send) -> None:
        task = asyncio.get_running_loop().create_task(self._publish_quietly(conn, command))
        self._stream_tasks.add(task)
        task.add_done_callback(self._stream_tasks.discard)

    async def _publish_quietly(self, conn: Connection, command: Send) -> None:
        try:
            await self._handled(conn)  # after a fragment still being published
            await self._publish(command)
        except WebPubSubError as exc:
            _end_not_published(conn, exc)

    async def _call(self, conn: Connection, effect: CallEvent) -> None:
        """A JSON client's event: the handler's reply, then the ack."""
        try:
            reply = await self.user_event(conn, effect.event, effect.payload)
        except UpstreamError as exc:
            ack = failed(conn, effect.ack_id, UpstreamError(exc.client_message, status=exc.status))
        else:
            self.apply_reply(conn, reply)  # the reply reaches the client before the ack
            ack = succeeded(conn, effect.ack_id)
        if ack is not None:
            conn.send_control(ack)

    async def _invoke(self, conn: Connection, effect: CallInvoke) -> None:
        """A JSON client's invocation: the handler's reply as its ``invokeResponse``
        (a failure as ``success: false``), unless it was cancelled meanwhile."""
        invocations = self._invocations.get(conn)
        if invocations is None or effect.invocation_id not in invocations:
            return  # cancelled while it waited behind earlier messages
        call = asyncio.create_task(self.user_event(conn, effect.event, effect.payload))
        invocations.start(effect.invocation_id, call)
        try:
            await asyncio.wait([call])
        finally:
            call.cancel()  # no-op once done; stops the call if this work is cancelled
        if call.cancelled():  # by the client or the connection's end: closed already
            return
        if invocations.close(effect.invocation_id) is None:
            return  # cancelled (or the connection dropped) after the call was done
        exc = call.exception()
        if isinstance(exc, UpstreamError):
            frame = encode_invoke_error(effect.invocation_id, exc)
        elif exc is not None:
            raise exc
        else:
            reply = call.result()
            if reply.state is not None:
                self.apply_reply(conn, EventReply(None, reply.state))
            frame = encode_invoke_response(effect.invocation_id, reply.payload)
        conn.send_control(frame)

    async def user_event(self, conn: Connection, name: str, payload: Payload) -> EventReply:
        """Call the event handler for a user event; failures are logged and re-raised."""
        try:
            return await self._upstream.user_event(
                self._hub_settings(conn.hub), self.context(conn), name, payload
            )
        except UpstreamError as exc:
            self._event_failed(conn, name, exc)
            raise

    def _event_failed(self, conn: Connection, name: str, exc: UpstreamError) -> None:
        log.warning(
            "event %r of connection %s (hub %s) failed: %s",
            name,
            conn.connection_id,
            conn.hub,
            exc.message,
            extra=conn_fields(conn),
        )

    def detach(
        self,
        conn: Connection,
        sink: Sink,
        reason: str,
        *,
        recoverable: bool,
        code: int | None = None,
    ) -> None:
        """The transport ``sink`` of ``conn`` is gone (``code``: the close code the
        client sent, if it sent one).

        A reliable connection that was not closed on purpose stays, detached, for the
        recovery window; any other connection ends now and ``disconnected`` fires once.
        """
        current = conn.sink.target if isinstance(conn.sink, _Held) else conn.sink
        if current is not sink:
            return  # an older transport of a recovered connection
        conn.sink = None
        if conn.close_code is None:  # the last transport's, until a recovery
            conn.close_code = code
        if recoverable and conn.reliable is not None and not conn.closing:
            loop = asyncio.get_running_loop()
            self._expiry[conn] = loop.call_later(
                self._recovery_window, self._end, conn, "The client did not reconnect in time."
            )
            self._detached_now(conn)
            lost = self._end_invocations(conn)
            if lost:
                self._lost_invocations[conn] = lost
            self.observer.detached(conn, reason)
            return
        self._end(conn, reason)

    def _end_detached(self, conn: Connection) -> None:
        self._end(conn, conn.close_reason)

    def _end(self, conn: Connection, reason: str) -> None:
        """Forget a connection and fire ``disconnected`` (once)."""
        timer = self._expiry.pop(conn, None)
        if timer is not None:
            timer.cancel()
        self._end_invocations(conn)
        self._end_streams(conn, conn.close_reason or reason)
        self._attached(conn)
        conn.closing = True
        hub = self._hubs.get(conn.hub)
        if hub is None or hub.remove(conn.connection_id) is None:
            return
        if not len(hub):
            del self._hubs[conn.hub]
            if not self._hubs and self._idle is not None:
                self._idle.set()
        self.observer.disconnected(conn, conn.close_code, conn.close_reason or reason)
        if conn in self._reported:
            self._reported.discard(conn)
            return
        self._upstream.disconnected(
            self._hub_settings(conn.hub), self.context(conn), conn.close_reason or reason
        )

    def reaped(self, connection: ReapedConnection) -> None:
        """A connection of a node that died: send its ``disconnected`` event from here."""
        ctx = EventContext(
            hub=connection.hub,
            connection_id=connection.connection_id,
            user_id=connection.user_id,
            subprotocol=connection.subprotocol,
            state=connection.state,
            event_id=reaped_event_id(connection.hub, connection.connection_id),
            origin=self._origin,
        )
        log.info(
            "connection %s of hub %s ended with its node %s",
            connection.connection_id,
            connection.hub,
            connection.node_id,
            extra=log_fields(connection.hub, connection.connection_id, connection.user_id),
        )
        self._upstream.disconnected(self._hub_settings(connection.hub), ctx, NODE_LOST)

    def abandon(self, hub: str, connection_id: str) -> None:
        """Close a connection whose ``disconnected`` event a survivor sent when it took
        this node for dead (it was cut off from Redis alone): no second event."""
        found = self._hubs.get(hub)
        conn = found.get(connection_id) if found is not None else None
        if conn is None:
            return
        self._reported.add(conn)
        conn.close(CloseCode.GOING_AWAY, CUT_OFF)

    def close_all(self, code: int, reason: str) -> None:
        """Close every connection; one attached later (its handshake was in progress)
        is closed as soon as it is attached."""
        self._closing_all = (code, reason)
        for hub in list(self._hubs.values()):
            for conn in hub.connections():
                conn.close(code, reason)

    async def wait_idle(self) -> None:
        """Return once no connection is attached (bound it with ``asyncio.timeout``)."""
        if not self._hubs:
            return
        self._idle = asyncio.Event()
        try:
            await self._idle.wait()
        finally:
            self._idle = None

    def apply_reply(self, conn: Connection, reply: EventReply) -> None:
        """Apply an event handler's answer: new state, and its body to that connection."""
        if reply.state is not None:
            hub = self._hubs.get(conn.hub)
            if hub is not None:
                hub.set_state(conn, reply.state)  # kept where other nodes read it, too
            else:
                conn.state = reply.state
        if reply.payload is not None:
            message = DataMessage(reply.payload)
            conn.send_data(encode_for(conn.protocol, message))
            self.observer.replied(conn, message)

    def settings(self, conn: Connection) -> HubSettings:
        return self._hub_settings(conn.hub)

    def _group_presence(self, conn: Connection, event: str, groups: Sequence[str]) -> None:
        """Queue ``event`` (``joined``/``left``) of each of ``groups`` for the handler that
        takes it (Azure's ``groupPresenceEvents``): joins and leaves by the client, by
        REST and by its token or ``connect`` handler alike. A connection moving between
        nodes, or leaving its groups as it closes, is not reported (its ``disconnected``
        says that)."""
        if not groups:
            return
        settings = self._hub_settings(conn.hub)
        if not settings.wants_group_presence:
            return
        for group in groups:
            if settings.handler_for_group_presence(event, group) is not None:
                self._upstream.group_presence(settings, self.context(conn), event, group)

    def context(self, conn: Connection) -> EventContext:
        return EventContext(  # positional: one per event (hub, id, user, subprotocol, state)
            conn.hub,
            conn.connection_id,
            conn.user_id,
            conn.subprotocol,
            conn.state,
            conn.next_event_id(),
            self._origin,
        )

    # -- backplane side --------------------------------------------------------------

    def apply(self, command: Command) -> None:
        hub = self._hubs.get(command.hub)
        if hub is None:
            return
        try:
            match command:
                case Send():
                    targets = self._select(hub, command.target, command.filter)
                    count = hub.deliver(targets, command.message, excluded=command.excluded)
                    self.observer.delivered(command.hub, command.target, command.message, count)
                case Close():
                    for conn in _targets(hub, command.target):
                        if conn.connection_id not in command.excluded:
                            conn.close(CloseCode.NORMAL, command.reason)
                case ChangeGroup():
                    for conn in self._select(hub, command.target, command.filter):
                        if command.action is GroupAction.ADD:
                            joined = _join_all(hub, conn, command.groups, "a REST call")
                            self._group_presence(conn, "joined", joined)
                            continue
                        if command.action is GroupAction.REMOVE_ALL:
                            left = tuple(conn.groups)
                        else:
                            left = tuple(
                                dict.fromkeys(g for g in command.groups if g in conn.groups)
                            )
                        for group in left:
                            hub.leave(conn, group)
                        self._group_presence(conn, "left", left)
                case Handover():
                    self._hand_over(command)
                case ChangePermission():
                    found = hub.get(command.connection_id)
                    if found is not None:
                        perm = Permission.parse(command.permission)
                        if command.grant:
                            found.permissions.grant(perm, command.group)
                        else:
                            found.permissions.revoke(perm, command.group)
                case _:
                    assert_never(command)
        except Exception:  # a bad command must never take the node down
            log.exception("failed to apply %s", type(command).__name__)

    def _select(self, hub: Hub, target: Target, filter_text: str) -> list[Connection]:
        """The target's connections that match the OData filter (all if it is empty)."""
        conns = _targets(hub, target)
        if not filter_text:
            return conns
        compiled = self._filters.get(filter_text)
        if compiled is None:
            compiled = parse_filter(filter_text)  # validated by the REST layer already
            if len(self._filters) >= _FILTER_CACHE_SIZE:
                self._filters.pop(next(iter(self._filters)))
            self._filters[filter_text] = compiled
        return [
            c
            for c in conns
            if compiled.matches(
                FilterSubject(c.connection_id, c.user_id, frozenset(c.groups), c.subprotocol)
            )
        ]

    def answer(self, query: Query) -> Answer:
        hub = self._hubs.get(query.hub)
        match query:
            case Exists():
                if hub is None:
                    return False
                # A connection the service is closing is gone already, as on Azure: a REST
                # close is followed at once by a 404 for it, its user and its groups (and
                # it is no longer listed).
                return any(not c.closing for c in _targets(hub, query.target))
            case HasPermission():
                conn = hub.get(query.connection_id) if hub is not None else None
                if conn is None or conn.closing:
                    return None
                return conn.permissions.has(Permission.parse(query.permission), query.group)
            case ListGroup():
                if hub is None:
                    return ()
                return tuple(
                    GroupMember(c.connection_id, c.user_id)
                    for c in hub.group_connections(query.group)
                    if not c.closing
                )
            case GroupRoom():
                conn = hub.get(query.connection_id) if hub is not None else None
                if conn is None or conn.closing:
                    return None
                return query.group in conn.groups or len(conn.groups) < query.limit
            case _:
                assert_never(query)


def _end_not_published(conn: Connection, exc: WebPubSubError) -> None:
    """A stream's terminal message the backplane did not take: logged (it is over)."""
    log.warning(
        "the end of a stream of connection %s (hub %s) was not published: %s",
        conn.connection_id,
        conn.hub,
        exc.message,
        extra=conn_fields(conn),
    )


def _kind(effect: Effect | None) -> str:
    """What a JSON client's frame was, for the observers (:data:`RECEIVED_KINDS`)."""
    match effect:
        case Publish():
            return "sendToGroup"
        case CallEvent() | CallInvoke():
            return "event"
        case Reply() if effect.after_presence:
            return "group"
        case GroupChanged():
            return "group"
        case CloseClient():
            return "invalid"
        case StreamStep():
            return "stream"
        case _:
            return "control"


def _names_invocation(data: bytes | str) -> bool:
    """Whether a JSON frame may be an ``invoke`` or ``cancelInvocation`` (both need an
    ``invocationId``): a substring test, so other frames are not decoded twice. A frame
    with a ``\\u`` escape may spell the key escaped: it is decoded to be sure."""
    if isinstance(data, bytes):
        return b"invocationId" in data or b"\\u" in data
    return "invocationId" in data or "\\u" in data


def _join_all(hub: Hub, conn: Connection, groups: Sequence[str], source: str) -> tuple[str, ...]:
    """Join ``groups`` up to the connection's group limit (one warning if that cut some);
    the groups it was not in before and is now, in order."""
    joined: list[str] = []
    refused = 0
    for group in groups:
        member = group in conn.groups
        if not hub.join(conn, group):
            refused += 1
        elif not member and group in conn.groups:
            joined.append(group)
    if refused:
        log.warning(
            "connection %s of hub %s is in %d groups, its limit: %d more groups from %s "
            "were not joined",
            conn.connection_id,
            conn.hub,
            len(conn.groups),
            refused,
            source,
            extra=conn_fields(conn),
        )
    return tuple(joined)


def _targets(hub: Hub, target: Target) -> list[Connection]:
    if target.scope is Scope.ALL:
        return hub.connections()
    if target.scope is Scope.USER:
        return hub.user_connections(target.id)
    if target.scope is Scope.GROUP:
        return hub.group_connections(target.id)
    conn = hub.get(target.id)
    return [conn] if conn is not None else []


class _Backlog:
    """The messages of one connection waiting behind its event at a handler."""

    __slots__ = ("_changed", "bytes", "frames", "head_since", "task")

    def __init__(self) -> None:
        self.frames: deque[bytes | str] = deque()
        self.bytes = 0
        """Of ``frames``."""
        self.head_since = asyncio.get_running_loop().time()
        """When the message being handled started."""
        self.task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        """Made once a frame waits for room (most backlogs never have one)."""

    async def changed(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def wake(self) -> None:
        changed = self._changed
        if changed is not None:
            changed.set()
            changed.clear()


class _Held:
    """A new connection's sink until its ``connected`` message may go: what is sent
    meanwhile waits behind that message, in order (a close too)."""

    LIMIT = 10_000
    """Frames held at most; past that they go out at once (the outbox bounds them)."""

    def __init__(self, target: Sink, connected: bytes) -> None:
        """``connected``: the framed ``connected`` message."""
        self.target = target
        self._frames: list[bytes] = [connected]
        self._close: tuple[int, str] | None = None
        self._released = False

    def offer(self, frame: bytes) -> None:
        if self._released:
            self.target.offer(frame)
            return
        self._frames.append(frame)
        if len(self._frames) > self.LIMIT:
            self.release()

    def close(self, code: int, reason: str) -> None:
        if self._released:
            self.target.close(code, reason)
        elif self._close is None:
            self._close = (code, reason)

    @property
    def buffered_bytes(self) -> int:
        return self.target.buffered_bytes

    async def drained(self) -> None:
        await self.target.drained()

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        frames, self._frames = self._frames, []
        for frame in frames:
            self.target.offer(frame)
        if self._close is not None:
            self.target.close(*self._close)


def _replay_chunk(conn: Connection, sink: Sink, cursor: int) -> int | None:
    """Offer ``sink`` the next chunk of ``conn``'s buffer after sequence id ``cursor``;
    returns the new cursor, or ``None`` once the replay has caught up (from then on data
    goes straight to the sink: nothing can slip in between)."""
    assert conn.reliable is not None
    chunk = conn.reliable.frames_after(cursor, REPLAY_CHUNK_BYTES)
    for _, frame in chunk:
        sink.offer(frame)
    if chunk:
        cursor = chunk[-1][0]
    if cursor >= conn.reliable.last_sequence_id or not chunk:
        conn.replaying = False
        return None
    return cursor


def _recovery_refusal(
    conn: Connection | None, token: str, subprotocols: Sequence[str]
) -> str | None:
    """Why ``conn`` cannot be recovered with ``token`` over ``subprotocols``, if it cannot."""
    if conn is None or conn.closing:
        return NO_CONNECTION
    if conn.reliable is None or conn.reconnection_token is None:
        return "The connection is not reliable and cannot be recovered."
    if not hmac.compare_digest(conn.reconnection_token.encode(), token.encode()):
        return "The reconnection token is not valid."
    if conn.subprotocol is None or conn.subprotocol.lower() not in (
        p.lower() for p in subprotocols
    ):
        return "Recovery must use the connection's subprotocol."
    return None


def _select_protocol(
    offered: Sequence[str], picked: str | None
) -> tuple[ClientProtocol, str | None]:
    """Azure docs: client protocols: the handler's pick, else the first service value,
    else a simple client echoing the first offered value (browsers require an echo)."""
    if picked is not None:
        return SUBPROTOCOLS.get(picked.lower(), ClientProtocol.SIMPLE), picked
    for value in offered:
        protocol = SUBPROTOCOLS.get(value.lower())
        if protocol is not None:
            return protocol, value
    return ClientProtocol.SIMPLE, (offered[0] if offered else None)


def _valid_user_id(user_id: str | None) -> str | None:
    """A connect handler's ``userId``: ``""`` or null means no user (emulator)."""
    if not user_id:
        return None
    try:
        return validate_user_id(user_id)
    except InvalidName as exc:
        raise UpstreamError(
            f"The connect handler returned an invalid userId: {exc.message}"
        ) from None


def _valid_groups(groups: Sequence[str]) -> tuple[str, ...]:
    try:
        return tuple(validate_group(g) for g in groups)
    except InvalidName as exc:
        raise UpstreamError(
            f"The connect handler returned an invalid group: {exc.message}"
        ) from None


def _union(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*a, *b]))
