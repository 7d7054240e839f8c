"""Downstream data messages and how each client protocol frames them.

A :class:`DataMessage` is what the service delivers to clients (a REST send, a
group publish, an upstream reply).  :func:`encode_for` turns it into bytes for a
given client protocol; the fan-out calls it once per protocol per send and shares
the bytes between recipients.  For simple and JSON clients those bytes are a
complete WebSocket frame; for reliable clients they are the envelope body, into
which each connection splices its own ``sequenceId``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from webpubsub.protocol.json_protocol import (
    JSON_RELIABLE_SUBPROTOCOL,
    JSON_SUBPROTOCOL,
    encode_data_body,
)
from webpubsub.protocol.messages import StreamInfo
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.wsframe import Opcode, encode_frame


class ClientProtocol(enum.Enum):
    """How a connection frames messages: chosen at the handshake, never changed."""

    SIMPLE = "simple"
    """No service subprotocol: frames are raw payloads (Azure docs: client protocols)."""
    JSON = JSON_SUBPROTOCOL
    JSON_RELIABLE = JSON_RELIABLE_SUBPROTOCOL

    @property
    def is_json(self) -> bool:
        return self is not ClientProtocol.SIMPLE

    @property
    def is_reliable(self) -> bool:
        return self is ClientProtocol.JSON_RELIABLE


#: The service-defined subprotocols this service speaks, by lower-cased name.
SUBPROTOCOLS = {p.value: p for p in ClientProtocol if p.is_json}


class Origin(enum.Enum):
    SERVER = "server"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class DataMessage:
    payload: Payload
    origin: Origin = Origin.SERVER
    group: str | None = None
    from_user_id: str | None = None
    stream: StreamInfo | None = None
    """Set on a group message that belongs to a group stream."""


def encode_for(protocol: ClientProtocol, message: DataMessage) -> bytes:
    """The bytes carrying ``message`` to a client speaking ``protocol``."""
    payload = message.payload
    if protocol is ClientProtocol.SIMPLE:
        if message.stream is not None and not payload.data:
            return b""  # a stream's empty terminal message: nothing for a raw client
        opcode = Opcode.TEXT if payload.is_text_frame else Opcode.BINARY
        return encode_frame(opcode, payload.data)
    body = encode_data_body(
        payload,
        group=message.group if message.origin is Origin.GROUP else None,
        from_user_id=message.from_user_id,
        stream=message.stream,
    )
    if protocol is ClientProtocol.JSON_RELIABLE:
        return body
    return encode_frame(Opcode.TEXT, body)
