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
from typing import Protocol

from webpubsub.errors import WebPubSubError
from webpubsub.protocol import json_protocol, protobuf_protocol
from webpubsub.protocol.json_protocol import JSON_RELIABLE_SUBPROTOCOL, JSON_SUBPROTOCOL
from webpubsub.protocol.messages import ClientMessage, StreamError, StreamInfo
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.protobuf_protocol import (
    PROTOBUF_RELIABLE_SUBPROTOCOL,
    PROTOBUF_SUBPROTOCOL,
)
from webpubsub.protocol.wsframe import Opcode, encode_frame


class Codec(Protocol):
    """How one service subprotocol encodes messages: a codec *module*
    (:mod:`~webpubsub.protocol.json_protocol`), which every frame a connection sends
    or reads goes through (:attr:`ClientProtocol.codec`).  A new wire format is a new
    module with these names, a :class:`ClientProtocol` member whose value is its
    subprotocol (in ``_CODECS``, and in ``is_reliable`` for a reliable variant), and
    its label in ``server/trace.py`` and ``server/metrics.py``."""

    OPCODE: Opcode
    """The WebSocket frame type the subprotocol's messages travel in."""
    PONG: bytes

    def decode_client_message(self, frame: str | bytes) -> ClientMessage: ...

    def ack_id_of(self, frame: str | bytes) -> int | None: ...

    def encode_connected(
        self, connection_id: str, user_id: str | None, reconnection_token: str | None = None
    ) -> bytes: ...

    def encode_disconnected(self, reason: str) -> bytes: ...

    def encode_ack(self, ack_id: int, error: WebPubSubError | None = None) -> bytes: ...

    def encode_stream_ack(self, stream_id: str, expected_sequence_id: int) -> bytes: ...

    def encode_stream_nack(
        self, stream_id: str, expected_sequence_id: int, name: str, message: str
    ) -> bytes: ...

    def encode_stream_closed(self, stream_id: str, error: StreamError | None = None) -> bytes: ...

    def encode_data_body(
        self,
        payload: Payload,
        *,
        group: str | None = None,
        from_user_id: str | None = None,
        stream: StreamInfo | None = None,
    ) -> bytes: ...

    def with_sequence_id(self, body: bytes, sequence_id: int) -> bytes: ...


class ClientProtocol(enum.Enum):
    """How a connection frames messages: chosen at the handshake, never changed."""

    SIMPLE = "simple"
    """No service subprotocol: frames are raw payloads (Azure docs: client protocols)."""
    JSON = JSON_SUBPROTOCOL
    JSON_RELIABLE = JSON_RELIABLE_SUBPROTOCOL
    PROTOBUF = PROTOBUF_SUBPROTOCOL
    """Binary frames of protobuf messages (Azure docs: protobuf subprotocol)."""
    PROTOBUF_RELIABLE = PROTOBUF_RELIABLE_SUBPROTOCOL

    @property
    def is_pubsub(self) -> bool:
        """Speaks a service subprotocol (requests, acks, system messages)."""
        return self is not ClientProtocol.SIMPLE

    @property
    def is_json(self) -> bool:
        return self in (ClientProtocol.JSON, ClientProtocol.JSON_RELIABLE)

    @property
    def is_reliable(self) -> bool:
        return self in (ClientProtocol.JSON_RELIABLE, ClientProtocol.PROTOBUF_RELIABLE)

    @property
    def codec(self) -> Codec:
        """The codec of this subprotocol (simple clients have none: the JSON one is
        returned, never used for their data)."""
        return _CODECS[self]


_CODECS: dict[ClientProtocol, Codec] = {
    ClientProtocol.SIMPLE: json_protocol,
    ClientProtocol.JSON: json_protocol,
    ClientProtocol.JSON_RELIABLE: json_protocol,
    ClientProtocol.PROTOBUF: protobuf_protocol,
    ClientProtocol.PROTOBUF_RELIABLE: protobuf_protocol,
}

#: The service-defined subprotocols this service speaks, by lower-cased name.
SUBPROTOCOLS = {p.value: p for p in ClientProtocol if p.is_pubsub}


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
        if message.stream is not None and message.stream.end and not payload.data:
            return b""  # a stream's empty terminal message: nothing for a raw client
        opcode = Opcode.TEXT if payload.is_text_frame else Opcode.BINARY
        return encode_frame(opcode, payload.data)
    codec = protocol.codec
    body = codec.encode_data_body(
        payload,
        group=message.group if message.origin is Origin.GROUP else None,
        from_user_id=message.from_user_id,
        stream=message.stream,
    )
    if protocol.is_reliable:
        return body
    return encode_frame(codec.OPCODE, body)
