"""The node: the one object the transports call, and the executor of commands.

A node owns the hubs of the connections attached to it.  Transports call
:meth:`Node.admit` (handshake: anonymous policy, ``connect`` webhook, subprotocol),
:meth:`Node.attach` (after the upgrade), :meth:`Node.receive` (each client frame, in
order) and :meth:`Node.detach`.  The backplane calls :meth:`Node.apply` and
:meth:`Node.answer` with the commands and queries of every node's REST operations.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from webpubsub.core.connection import Connection, Sink
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permission, Permissions
from webpubsub.errors import BadRequest, InvalidName, Unauthorized, UpstreamError
from webpubsub.protocol.backplane import (
    Answer,
    ChangeGroup,
    ChangePermission,
    Close,
    Command,
    Exists,
    GroupAction,
    GroupMember,
    HasPermission,
    ListGroup,
    Query,
    Scope,
    Send,
    Target,
)
from webpubsub.protocol.cloudevents import ConnectDecision, EventContext, EventReply
from webpubsub.protocol.frames import ClientProtocol, DataMessage, encode_for
from webpubsub.protocol.names import validate_group
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.protocol.tokens import ClientIdentity
from webpubsub.protocol.wsframe import CloseCode
from webpubsub.upstream.settings import HubSettings

log = logging.getLogger("webpubsub.node")

#: Service-defined subprotocols this build speaks (client-protocols.md §1.2).
SERVICE_SUBPROTOCOLS: dict[str, ClientProtocol] = {}

#: Service-defined subprotocols that exist but this build does not speak yet.
UNSUPPORTED_SUBPROTOCOLS = frozenset(
    {
        "json.webpubsub.azure.v1",
        "json.reliable.webpubsub.azure.v1",
        "protobuf.webpubsub.azure.v1",
        "protobuf.reliable.webpubsub.azure.v1",
    }
)


class EventHandlerPort(Protocol):
    """What the node needs from the upstream dispatcher (implemented in upstream/)."""

    async def connect(
        self,
        hub: HubSettings,
        ctx: EventContext,
        *,
        claims: Mapping[str, Sequence[str]],
        query: Mapping[str, Sequence[str]],
        headers: Mapping[str, Sequence[str]],
        subprotocols: Sequence[str],
    ) -> ConnectDecision | None: ...

    async def user_event(
        self, hub: HubSettings, ctx: EventContext, name: str, payload: Payload
    ) -> EventReply: ...

    def connected(self, hub: HubSettings, ctx: EventContext) -> None: ...

    def disconnected(self, hub: HubSettings, ctx: EventContext, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Handshake:
    """A client's upgrade request, after its token was verified."""

    hub: str
    identity: ClientIdentity | None
    """``None`` for an anonymous client (no token)."""
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()


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


def new_connection_id() -> str:
    return secrets.token_hex(16)


class Node:
    def __init__(
        self,
        *,
        hub_settings: Callable[[str], HubSettings],
        upstream: EventHandlerPort,
        origin: str,
        node_id: str | None = None,
        id_factory: Callable[[], str] = new_connection_id,
    ) -> None:
        self.node_id = node_id or secrets.token_hex(4)
        self._hub_settings = hub_settings
        self._upstream = upstream
        self._origin = origin
        self._new_id = id_factory
        self._hubs: dict[str, Hub] = {}
        self._idle: asyncio.Event | None = None

    # -- transport side --------------------------------------------------------------

    def hub(self, key: str) -> Hub | None:
        return self._hubs.get(key)

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
        unsupported = [p for p in hs.subprotocols if p.lower() in UNSUPPORTED_SUBPROTOCOLS]
        if unsupported and not any(p.lower() in SERVICE_SUBPROTOCOLS for p in hs.subprotocols):
            raise BadRequest(f"Subprotocol {unsupported[0]!r} is not supported by this service.")
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
        decision = await self._upstream.connect(
            settings,
            ctx,
            claims=identity.claims,
            query=hs.query,
            headers=hs.headers,
            subprotocols=hs.subprotocols,
        )
        user_id, groups, roles = identity.user_id, identity.groups, identity.roles
        picked: str | None = None
        state = ""
        if decision is not None:
            if decision.body_ignored:
                log.warning("connect handler of hub %s answered a body that is not JSON", key)
            if decision.user_id_set:
                user_id = decision.user_id
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
        """Register an upgraded connection, join its groups, fire ``connected``."""
        conn = Connection(
            connection_id=adm.connection_id,
            hub=adm.hub,
            user_id=adm.user_id,
            protocol=adm.protocol,
            subprotocol=adm.subprotocol if adm.protocol is not ClientProtocol.SIMPLE else None,
            sink=sink,
            permissions=Permissions.from_roles(adm.roles),
            state=adm.state,
        )
        hub = self._hubs.get(adm.hub)
        if hub is None:
            hub = self._hubs[adm.hub] = Hub(adm.hub)
        hub.add(conn)
        for group in adm.groups:
            hub.join(conn, group)
        self._upstream.connected(self._hub_settings(adm.hub), self._context(conn))
        return conn

    async def receive(self, conn: Connection, data: bytes | str) -> None:
        """Handle one client message; the transport awaits it before reading the next."""
        if conn.closing:
            return
        if isinstance(data, str):
            payload = Payload(DataType.TEXT, data.encode("utf-8"))
        else:
            payload = Payload(DataType.BINARY, data)
        settings = self._hub_settings(conn.hub)
        try:
            reply = await self._upstream.user_event(
                settings, self._context(conn), "message", payload
            )
        except UpstreamError as exc:
            log.warning(
                "closing connection %s of hub %s: message event failed: %s",
                conn.connection_id,
                conn.hub,
                exc.message,
            )
            conn.close(CloseCode.INTERNAL_ERROR, f"The event handler failed: {exc.message}")
            return
        self._apply_reply(conn, reply)

    def detach(self, conn: Connection, reason: str) -> None:
        """Forget a closed connection and fire ``disconnected`` (once)."""
        hub = self._hubs.get(conn.hub)
        if hub is None or hub.remove(conn.connection_id) is None:
            return
        if not len(hub):
            del self._hubs[conn.hub]
            if not self._hubs and self._idle is not None:
                self._idle.set()
        conn.closing = True
        self._upstream.disconnected(
            self._hub_settings(conn.hub), self._context(conn), conn.close_reason or reason
        )

    def close_all(self, code: int, reason: str) -> None:
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

    def _apply_reply(self, conn: Connection, reply: EventReply) -> None:
        if reply.state is not None:
            conn.state = reply.state
        if reply.payload is not None:
            conn.deliver(encode_for(conn.protocol, DataMessage(reply.payload)))

    def _context(self, conn: Connection) -> EventContext:
        return EventContext(
            hub=conn.hub,
            connection_id=conn.connection_id,
            user_id=conn.user_id,
            subprotocol=conn.subprotocol,
            state=conn.state,
            event_id=conn.next_event_id(),
            origin=self._origin,
        )

    # -- backplane side --------------------------------------------------------------

    def apply(self, command: Command) -> None:
        hub = self._hubs.get(command.hub)
        if hub is None:
            return
        try:
            if isinstance(command, Send):
                hub.deliver(
                    _targets(hub, command.target), command.message, excluded=command.excluded
                )
            elif isinstance(command, Close):
                for conn in _targets(hub, command.target):
                    if conn.connection_id not in command.excluded:
                        conn.close(CloseCode.NORMAL, command.reason)
            elif isinstance(command, ChangeGroup):
                for conn in _targets(hub, command.target):
                    if command.action is GroupAction.ADD:
                        hub.join(conn, command.group)
                    elif command.action is GroupAction.REMOVE:
                        hub.leave(conn, command.group)
                    else:
                        hub.leave_all(conn)
            elif isinstance(command, ChangePermission):
                found = hub.get(command.connection_id)
                if found is not None:
                    perm = Permission.parse(command.permission)
                    if command.grant:
                        found.permissions.grant(perm, command.group)
                    else:
                        found.permissions.revoke(perm, command.group)
        except Exception:  # a bad command must never take the node down
            log.exception("failed to apply %s", type(command).__name__)

    def answer(self, query: Query) -> Answer:
        hub = self._hubs.get(query.hub)
        if isinstance(query, Exists):
            if hub is None:
                return False
            scope, ident = query.target.scope, query.target.id
            if scope is Scope.CONNECTION:
                return hub.get(ident) is not None
            if scope is Scope.USER:
                return hub.has_user(ident)
            if scope is Scope.GROUP:
                return hub.has_group(ident)
            return len(hub) > 0
        if isinstance(query, HasPermission):
            conn = hub.get(query.connection_id) if hub is not None else None
            if conn is None:
                return None
            return conn.permissions.has(Permission.parse(query.permission), query.group)
        if isinstance(query, ListGroup):
            if hub is None:
                return ()
            return tuple(
                GroupMember(c.connection_id, c.user_id) for c in hub.group_connections(query.group)
            )
        raise AssertionError(f"unknown query {query!r}")  # pragma: no cover


def _targets(hub: Hub, target: Target) -> list[Connection]:
    if target.scope is Scope.ALL:
        return hub.connections()
    if target.scope is Scope.USER:
        return hub.user_connections(target.id)
    if target.scope is Scope.GROUP:
        return hub.group_connections(target.id)
    conn = hub.get(target.id)
    return [conn] if conn is not None else []


def _select_protocol(
    offered: Sequence[str], picked: str | None
) -> tuple[ClientProtocol, str | None]:
    """client-protocols.md §1.2: the handler's pick, else the first service value,
    else a simple client echoing the first offered value (browsers require an echo)."""
    if picked is not None:
        return SERVICE_SUBPROTOCOLS.get(picked.lower(), ClientProtocol.SIMPLE), picked
    for value in offered:
        protocol = SERVICE_SUBPROTOCOLS.get(value.lower())
        if protocol is not None:
            return protocol, value
    return ClientProtocol.SIMPLE, (offered[0] if offered else None)


def _valid_groups(groups: Sequence[str]) -> tuple[str, ...]:
    try:
        return tuple(validate_group(g) for g in groups)
    except InvalidName as exc:
        raise UpstreamError(
            f"The connect handler returned an invalid group: {exc.message}"
        ) from None


def _union(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*a, *b]))
