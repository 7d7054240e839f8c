"""A hub: the connections of one node in one hub, indexed by id, user and group.

Synchronous and I/O-free.  Fan-out encodes a message once per client protocol
and offers the same frame bytes to every recipient's sink: the sinks of plain
(not reliable) recipients in one batch per frame (:func:`offer_each`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from webpubsub.core.connection import Connection, Sink
from webpubsub.protocol.frames import ClientProtocol, DataMessage, encode_for


class HubListener(Protocol):
    """Told of every change to a hub's indexes, in order (a networked backplane keeps
    its view of presence and membership from these). Calls are synchronous and must
    not raise."""

    def added(self, hub: str, conn: Connection) -> None: ...

    def removed(self, hub: str, conn: Connection, groups: Collection[str]) -> None:
        """``conn`` left the hub; it was in ``groups`` (no ``left`` call for those)."""

    def joined(self, hub: str, conn: Connection, group: str) -> None: ...

    def left(self, hub: str, conn: Connection, group: str) -> None: ...

    def state_changed(self, hub: str, conn: Connection) -> None:
        """An event handler gave ``conn`` a new connection state (``conn.state``)."""


class Hub:
    def __init__(self, key: str, listener: HubListener | None = None) -> None:
        self.key = key
        self._listener = listener
        self._connections: dict[str, Connection] = {}
        self._users: dict[str, dict[str, Connection]] = {}
        self._groups: dict[str, dict[str, Connection]] = {}

    # -- membership of the hub ------------------------------------------------------

    def __len__(self) -> int:
        return len(self._connections)

    def add(self, conn: Connection) -> None:
        self._connections[conn.connection_id] = conn
        if conn.user_id is not None:
            self._users.setdefault(conn.user_id, {})[conn.connection_id] = conn
        if self._listener is not None:
            self._listener.added(self.key, conn)

    def remove(self, connection_id: str) -> Connection | None:
        conn = self._connections.pop(connection_id, None)
        if conn is None:
            return None
        groups = tuple(conn.groups)
        for group in groups:
            self._drop_member(conn, group)
        if self._listener is not None:
            self._listener.removed(self.key, conn, groups)
        if conn.user_id is not None:
            peers = self._users.get(conn.user_id)
            if peers is not None:
                peers.pop(connection_id, None)
                if not peers:
                    del self._users[conn.user_id]
        return conn

    def set_state(self, conn: Connection, state: str) -> None:
        """Give ``conn`` a new connection state (told to the listener while it is here)."""
        conn.state = state
        if self._listener is not None and self._connections.get(conn.connection_id) is conn:
            self._listener.state_changed(self.key, conn)

    def get(self, connection_id: str) -> Connection | None:
        return self._connections.get(connection_id)

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    def user_connections(self, user_id: str) -> list[Connection]:
        return list(self._users.get(user_id, {}).values())

    def group_connections(self, group: str) -> list[Connection]:
        return list(self._groups.get(group, {}).values())

    def counts(self) -> tuple[int, int, int]:
        """How many connections, users and groups this hub holds here."""
        return len(self._connections), len(self._users), len(self._groups)

    def has_user(self, user_id: str) -> bool:
        return user_id in self._users

    def has_group(self, group: str) -> bool:
        return group in self._groups

    # -- groups -----------------------------------------------------------------------

    def join(self, conn: Connection, group: str) -> bool:
        """Add ``conn`` to ``group``; False if it may be in no more groups (it is in
        ``conn.max_groups`` already and not in this one)."""
        if conn.connection_id not in self._connections or group in conn.groups:
            return True
        if conn.max_groups is not None and len(conn.groups) >= conn.max_groups:
            return False
        self._groups.setdefault(group, {})[conn.connection_id] = conn
        conn.groups.add(group)
        if self._listener is not None:
            self._listener.joined(self.key, conn, group)
        return True

    def leave(self, conn: Connection, group: str) -> None:
        if group not in conn.groups:
            return
        self._drop_member(conn, group)
        if self._listener is not None:
            self._listener.left(self.key, conn, group)

    def _drop_member(self, conn: Connection, group: str) -> None:
        members = self._groups.get(group)
        if members is not None:
            members.pop(conn.connection_id, None)
            if not members:
                del self._groups[group]
        conn.groups.discard(group)

    def leave_all(self, conn: Connection) -> None:
        for group in list(conn.groups):
            self.leave(conn, group)

    # -- fan-out ----------------------------------------------------------------------

    def deliver(
        self,
        recipients: Iterable[Connection],
        message: DataMessage,
        *,
        excluded: Collection[str] = (),
    ) -> int:
        """Offer ``message`` to every recipient not excluded; returns how many got it
        (a protocol that carries nothing of it, e.g. a stream's empty end to simple
        clients, is skipped).

        The message is encoded at most once per client protocol for this call.
        """
        frames: dict[ClientProtocol, bytes] = {}
        # A plain (not reliable) recipient's step is one append: its sink joins the batch
        # of its protocol's frame, offered to them all at the end (each connection gets
        # one frame of this message, so its order is kept).
        batches: dict[ClientProtocol, list[Sink]] = {}
        # Recipients mostly share one protocol: the last one's frame and batch are at
        # hand without a dict lookup (an enum member's hash is a Python call).
        last: ClientProtocol | None = None
        frame = b""
        batch: list[Sink] = []
        count = 0
        if excluded:  # most sends exclude nobody: no check per recipient then
            recipients = [c for c in recipients if c.connection_id not in excluded]
        for conn in recipients:
            if conn.closing:
                continue
            protocol = conn.protocol
            if protocol is not last:
                last = protocol
                found = frames.get(protocol)
                if found is None:
                    found = frames[protocol] = encode_for(protocol, message)
                    batches[protocol] = []
                frame = found
                batch = batches[protocol]
            if not frame:  # nothing for this protocol (a stream's end to a simple client)
                continue
            sink = conn.sink
            if conn.reliable is None and sink is not None:  # send_data's plain case
                conn.messages_out += 1
                batch.append(sink)
            else:
                conn.send_data(frame)
            count += 1
        for protocol, sinks in batches.items():
            if sinks:
                offer_each(frames[protocol], sinks)
        return count


def offer_each(frame: bytes, sinks: list[Sink]) -> None:
    """Offer ``frame`` to every sink of ``sinks``, in order: through the first one's
    ``offer_each(frame, sinks)`` if it has one (a sink's batch form of ``offer``, which
    takes sinks of any kind), else one ``offer`` each."""
    batched = getattr(sinks[0], "offer_each", None)
    if batched is not None:
        batched(frame, sinks)
        return
    for sink in sinks:
        sink.offer(frame)
