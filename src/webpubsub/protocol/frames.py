"""Downstream data messages and how each client protocol frames them.

A :class:`DataMessage` is what the service delivers to clients (a REST send, a
group publish, an upstream reply).  :func:`encode_for` turns it into the bytes
of one WebSocket frame for a given client protocol; the fan-out calls it once
per protocol per send and shares the bytes between recipients.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from webpubsub.protocol.payload import Payload
from webpubsub.protocol.wsframe import Opcode, encode_frame


class ClientProtocol(enum.Enum):
    """How a connection frames messages: chosen at the handshake, never changed."""

    SIMPLE = "simple"
    """No service subprotocol: frames are raw payloads (client-protocols.md §2)."""


class Origin(enum.Enum):
    SERVER = "server"
    GROUP = "group"


@dataclass(frozen=True, slots=True)
class DataMessage:
    payload: Payload
    origin: Origin = Origin.SERVER
    group: str | None = None
    from_user_id: str | None = None


def encode_for(protocol: ClientProtocol, message: DataMessage) -> bytes:
    """The frame bytes carrying ``message`` to a client speaking ``protocol``."""
    payload = message.payload
    if protocol is ClientProtocol.SIMPLE:
        opcode = Opcode.TEXT if payload.is_text_frame else Opcode.BINARY
        return encode_frame(opcode, payload.data)
    raise AssertionError(f"unknown client protocol {protocol!r}")  # pragma: no cover
