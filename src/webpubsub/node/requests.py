"""What a subprotocol client may ask of the service (client-protocols.md §3.2–§3.4).

Each frame of a ``json.webpubsub.azure.v1`` (or reliable) connection is decoded and
executed here: join and leave groups, publish to a group, send an event to the
event handler, acknowledge sequence ids, ping.  Requests with an ``ackId`` are
answered with an ``ack`` and are idempotent: a repeated ackId that succeeded is
answered ``Duplicate`` without running again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from webpubsub.core.connection import Connection
from webpubsub.core.permissions import Permission
from webpubsub.errors import NoEventHandler, UpstreamError
from webpubsub.protocol.backplane import Command, Send, Target
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.json_protocol import (
    PONG,
    JoinGroup,
    LeaveGroup,
    Ping,
    ProtocolViolation,
    SendEvent,
    SendToGroup,
    SequenceAck,
    Unsupported,
    decode_client_message,
    encode_ack,
)
from webpubsub.protocol.wsframe import CloseCode

if TYPE_CHECKING:
    from webpubsub.node.node import Node


def handler_failed(exc: UpstreamError) -> str:
    """A client-facing reason: no handler URL or internal detail, the status if any."""
    if isinstance(exc, NoEventHandler):
        return exc.message
    if exc.status is not None:
        return f"The event handler failed (status {exc.status})."
    return "The event handler failed."


log = logging.getLogger("webpubsub.node")

Error = tuple[str, str]
"""An ack's error: (name, message)."""


class ClientRequests:
    def __init__(self, node: Node, publish: Callable[[Command], Awaitable[None]]) -> None:
        self._node = node
        self._publish = publish

    async def handle(self, conn: Connection, frame: str | bytes) -> None:
        try:
            msg = decode_client_message(frame)
        except ProtocolViolation as exc:
            if exc.fatal or exc.ack_id is None:
                conn.close(CloseCode.POLICY_VIOLATION, f"Invalid message: {exc.message}")
            else:
                conn.send_control(encode_ack(exc.ack_id, ("BadRequest", exc.message)))
            return
        if isinstance(msg, SequenceAck):
            if conn.reliable is not None:
                conn.reliable.ack(msg.sequence_id)
            return
        if isinstance(msg, Ping):
            conn.send_control(PONG)
            return
        if isinstance(msg, Unsupported):
            if msg.ack_id is not None:
                unsupported = ("BadRequest", f"Message type '{msg.type}' is not supported.")
                conn.send_control(encode_ack(msg.ack_id, unsupported))
            return
        ack_id = msg.ack_id
        if ack_id is not None and ack_id in conn.ack_ids:
            duplicate = ("Duplicate", f"Message with ack-id: {ack_id} has been processed")
            conn.send_control(encode_ack(ack_id, duplicate))
            return
        error = await self._execute(conn, msg)
        if ack_id is None:
            return
        if error is None:
            conn.ack_ids.add(ack_id)
        conn.send_control(encode_ack(ack_id, error))

    async def _execute(
        self, conn: Connection, msg: JoinGroup | LeaveGroup | SendToGroup | SendEvent
    ) -> Error | None:
        hub = self._node.hub(conn.hub)
        if hub is None:  # pragma: no cover - an attached connection always has its hub
            return ("InternalServerError", "The connection has ended.")
        if isinstance(msg, JoinGroup | LeaveGroup):
            if not conn.permissions.allows(Permission.JOIN_LEAVE_GROUP, msg.group):
                return (
                    "Forbidden",
                    f"The connection has no permission to join or leave group '{msg.group}'.",
                )
            if isinstance(msg, JoinGroup):
                hub.join(conn, msg.group)
            else:
                hub.leave(conn, msg.group)
            return None
        if isinstance(msg, SendToGroup):
            if not conn.permissions.allows(Permission.SEND_TO_GROUP, msg.group):
                return (
                    "Forbidden",
                    f"The connection has no permission to send to group '{msg.group}'.",
                )
            message = DataMessage(msg.payload, Origin.GROUP, msg.group, conn.user_id)
            excluded = frozenset({conn.connection_id}) if msg.no_echo else frozenset()
            await self._publish(Send(conn.hub, Target.group(msg.group), message, excluded))
            return None
        try:
            reply = await self._node.user_event(conn, msg.event, msg.payload)
        except UpstreamError as exc:
            return ("InternalServerError", handler_failed(exc))
        self._node.apply_reply(conn, reply)  # the reply reaches the client before the ack
        return None
