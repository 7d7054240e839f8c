"""A protobuf subprotocol client for tests, written from the schema's facts alone.

No official Python protobuf client exists, so the tests speak the wire format with
this: a tiny hand-written encoder of ``UpstreamMessage`` and a strict decoder of
``DownstreamMessage`` (field numbers and wire types spelt out here, independently of
``webpubsub.protocol.protobuf_schema``, so that a wrong number in either shows up as a
failed test).  Downstream messages decode to dicts shaped like the JSON subprotocol's
(``{"type": "ack", "ackId": ..., ...}``) so the tests of both read alike.

Wire format: a field is ``varint(number << 3 | wire_type)`` then a varint (type 0) or
``varint(length)`` and that many bytes (type 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import WSMsgType

VARINT, LEN = 0, 2
PROTOBUF = "protobuf.webpubsub.azure.v1"
PROTOBUF_RELIABLE = "protobuf.reliable.webpubsub.azure.v1"
WAIT = 5.0
"""Upper bound for anything that should happen promptly."""


# -- writing ---------------------------------------------------------------------------


def varint(value: int) -> bytes:
    assert 0 <= value < 2**64, value
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def int_field(number: int, value: int | bool | None) -> bytes:
    """A varint field; None: absent."""
    return b"" if value is None else tag(number, VARINT) + varint(int(value))


def bytes_field(number: int, value: bytes | str | None) -> bytes:
    """A length-delimited field (strings as UTF-8); None: absent."""
    if value is None:
        return b""
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return tag(number, LEN) + varint(len(raw)) + raw


def any_message(type_url: str, value: bytes) -> bytes:
    """A serialized ``google.protobuf.Any`` {type_url = 1, value = 2}, proto3 style
    (empty fields left out)."""
    return bytes_field(1, type_url or None) + bytes_field(2, value or None)


@dataclass(frozen=True)
class Data:
    """A ``MessageData``: ``kind`` text (str), binary (bytes), protobuf (the serialized
    ``Any``, bytes) or json (JSON text, str)."""

    kind: str
    value: bytes | str

    def encode(self) -> bytes:
        number = {"text": 1, "binary": 2, "protobuf": 3, "json": 4}[self.kind]
        return bytes_field(number, self.value)


def _data(data: Data | None) -> bytes | None:
    return None if data is None else data.encode()


def upstream(number: int, body: bytes) -> bytes:
    """``UpstreamMessage`` with oneof member ``number`` set to ``body``."""
    return bytes_field(number, body)


def join_group(group: str, ack_id: int | None = None) -> bytes:
    return upstream(6, bytes_field(1, group) + int_field(2, ack_id))


def leave_group(group: str, ack_id: int | None = None) -> bytes:
    return upstream(7, bytes_field(1, group) + int_field(2, ack_id))


def send_to_group(
    group: str,
    data: Data | None,
    ack_id: int | None = None,
    no_echo: bool | None = None,
    stream: tuple[str, int | None] | None = None,
) -> bytes:
    """``send_to_group_message``; ``stream`` (stream_id, idle_timeout_ms): a stream start."""
    start = None
    if stream is not None:
        start = bytes_field(1, stream[0]) + int_field(2, stream[1])
    return upstream(
        1,
        bytes_field(1, group)
        + int_field(2, ack_id)
        + bytes_field(3, _data(data))
        + int_field(4, no_echo)
        + bytes_field(7, start),
    )


def event(name: str, data: Data | None, ack_id: int | None = None) -> bytes:
    return upstream(5, bytes_field(1, name) + bytes_field(2, _data(data)) + int_field(3, ack_id))


def sequence_ack(sequence_id: int) -> bytes:
    return upstream(8, int_field(1, sequence_id or None))


def ping() -> bytes:
    return upstream(9, b"")


def stream_data(stream_id: str, sequence_id: int | None = None, data: Data | None = None) -> bytes:
    return upstream(
        13, bytes_field(1, stream_id) + int_field(2, sequence_id) + bytes_field(3, _data(data))
    )


def stream_end(stream_id: str, error: tuple[str | None, str | None] | None = None) -> bytes:
    """``stream_end_message``; ``error`` (message, user_error_code), each optional."""
    body = None if error is None else bytes_field(1, error[0]) + bytes_field(2, error[1])
    return upstream(14, bytes_field(1, stream_id) + bytes_field(2, body))


# -- reading ---------------------------------------------------------------------------


class WireError(ValueError):
    """The bytes are not what the schema says the service sends."""


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 2**64:
                raise WireError("varint over 64 bits")
            return value, pos
    raise WireError("varint longer than 10 bytes")


def fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """Every (number, wire type, value) of a message, in wire order."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = _read_varint(buf, pos)
            out.append((number, wire_type, value))
        elif wire_type == LEN:
            length, pos = _read_varint(buf, pos)
            if pos + length > len(buf):
                raise WireError("truncated length-delimited field")
            out.append((number, wire_type, buf[pos : pos + length]))
            pos += length
        else:
            raise WireError(f"wire type {wire_type} is not in this schema")
    return out


# Each message the service sends: field number -> (name, kind); kind is "int", "bool",
# "str", "bytes", or the name of a message here (its fields merged, as protobuf does).
DOWNSTREAM: dict[str, dict[int, tuple[str, str]]] = {
    "DownstreamMessage": {
        1: ("ack_message", "AckMessage"),
        2: ("data_message", "DataMessage"),
        3: ("system_message", "SystemMessage"),
        4: ("pong_message", "Empty"),
        6: ("stream_ack_message", "StreamAckMessage"),
        7: ("stream_nack_message", "StreamNackMessage"),
        8: ("stream_closed_message", "StreamClosedMessage"),
    },
    "AckMessage": {1: ("ack_id", "int"), 2: ("success", "bool"), 3: ("error", "NameMessage")},
    "NameMessage": {1: ("name", "str"), 2: ("message", "str")},
    "DataMessage": {
        1: ("from", "str"),
        2: ("group", "str"),
        3: ("data", "MessageData"),
        4: ("sequence_id", "int"),
        6: ("stream", "StreamInfo"),
    },
    "MessageData": {
        1: ("text_data", "str"),
        2: ("binary_data", "bytes"),
        3: ("protobuf_data", "bytes"),
        4: ("json_data", "str"),
    },
    "StreamInfo": {
        1: ("stream_id", "str"),
        2: ("stream_sequence_id", "int"),
        3: ("end_of_stream", "bool"),
        4: ("error", "StreamError"),
    },
    "StreamError": {1: ("name", "str"), 2: ("message", "str"), 3: ("user_error_code", "str")},
    "SystemMessage": {
        1: ("connected_message", "ConnectedMessage"),
        2: ("disconnected_message", "DisconnectedMessage"),
    },
    "ConnectedMessage": {
        1: ("connection_id", "str"),
        2: ("user_id", "str"),
        3: ("reconnection_token", "str"),
    },
    "DisconnectedMessage": {2: ("reason", "str")},
    "Empty": {},
    "StreamAckMessage": {1: ("stream_id", "str"), 2: ("expected_sequence_id", "int")},
    "StreamNackMessage": {
        1: ("stream_id", "str"),
        2: ("name", "str"),
        3: ("message", "str"),
        4: ("expected_sequence_id", "int"),
    },
    "StreamClosedMessage": {1: ("stream_id", "str"), 2: ("error", "NameMessage")},
}
_SCALAR_WIRE = {"int": VARINT, "bool": VARINT, "str": LEN, "bytes": LEN}


def parse(message: str, buf: bytes) -> dict[str, Any]:
    """``buf`` as message ``message`` of :data:`DOWNSTREAM`: a dict of the fields present
    (an unknown field or a wrong wire type is a :class:`WireError`)."""
    schema = DOWNSTREAM[message]
    raw: dict[str, Any] = {}
    for number, wire_type, value in fields(buf):
        if number not in schema:
            raise WireError(f"{message} has no field {number}")
        name, kind = schema[number]
        if wire_type != _SCALAR_WIRE.get(kind, LEN):
            raise WireError(f"{message}.{name} has wire type {wire_type}")
        if kind in _SCALAR_WIRE:
            raw[name] = value  # the last one wins
        else:
            raw[name] = raw.get(name, b"") + value  # type: ignore[operator]  # merged
    out: dict[str, Any] = {}
    for name, value in raw.items():
        kind = next(k for n, k in schema.values() if n == name)
        if kind == "bool":
            out[name] = bool(value)
        elif kind == "str":
            out[name] = value.decode("utf-8")  # strict: proto3 strings are UTF-8
        elif kind in ("int", "bytes"):
            out[name] = value
        else:
            out[name] = parse(kind, value)
    return out


_DATA_TYPES = {
    "text_data": "text",
    "binary_data": "binary",
    "protobuf_data": "protobuf",
    "json_data": "json",
}


def decode(frame: bytes) -> dict[str, Any]:
    """A ``DownstreamMessage`` as a JSON-subprotocol-shaped dict (absent strings and
    numbers read as their proto3 defaults, ``""`` and 0, as a protobuf client reads them)."""
    top = parse("DownstreamMessage", frame)
    if len(top) != 1:
        raise WireError(f"a DownstreamMessage with {len(top)} members: {sorted(top)}")
    ((member, body),) = top.items()
    if member == "ack_message":
        ack: dict[str, Any] = {
            "type": "ack",
            "ackId": body.get("ack_id", 0),
            "success": body.get("success", False),
        }
        if "error" in body:
            ack["error"] = {"name": "", "message": ""} | body["error"]
        return ack
    if member == "data_message":
        return _data_message(body)
    if member == "system_message":
        if len(body) != 1:
            raise WireError(f"a SystemMessage with {len(body)} members")
        if "connected_message" in body:
            connected = body["connected_message"]
            return {
                "type": "system",
                "event": "connected",
                "connectionId": connected.get("connection_id", ""),
                "userId": connected.get("user_id", ""),
                "reconnectionToken": connected.get("reconnection_token", ""),
            }
        return {
            "type": "system",
            "event": "disconnected",
            "message": body["disconnected_message"].get("reason", ""),
        }
    if member == "pong_message":
        return {"type": "pong"}
    if member == "stream_ack_message":
        return {
            "type": "streamAck",
            "streamId": body.get("stream_id", ""),
            "expectedSequenceId": body.get("expected_sequence_id", 0),
        }
    if member == "stream_nack_message":
        return {
            "type": "streamNack",
            "streamId": body.get("stream_id", ""),
            "expectedSequenceId": body.get("expected_sequence_id", 0),
            "name": body.get("name", ""),
            "message": body.get("message", ""),
        }
    closed: dict[str, Any] = {"type": "streamClosed", "streamId": body.get("stream_id", "")}
    if "error" in body:
        closed["error"] = {"name": "", "message": ""} | body["error"]
    return closed


def _data_message(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "message", "from": body.get("from", "")}
    if "group" in body:
        out["group"] = body["group"]
    data = body.get("data", {})
    if len(data) != 1:
        raise WireError(f"a MessageData with {len(data)} members")
    ((member, value),) = data.items()
    out["dataType"] = _DATA_TYPES[member]
    out["data"] = value
    if "sequence_id" in body:
        out["sequenceId"] = body["sequence_id"]
    if "stream" in body:
        info = body["stream"]
        stream: dict[str, Any] = {
            "streamId": info.get("stream_id", ""),
            "streamSequenceId": info.get("stream_sequence_id", 0),
        }
        if "end_of_stream" in info:
            stream["endOfStream"] = info["end_of_stream"]
        if "error" in info:
            stream["error"] = {"name": "", "message": "", "user_error_code": ""} | info["error"]
        out["stream"] = stream
    return out


# -- over a real WebSocket -------------------------------------------------------------


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    """The next message: a binary frame holding a ``DownstreamMessage``."""
    msg = await ws.receive(timeout=WAIT)
    assert msg.type is WSMsgType.BINARY, msg
    return decode(msg.data)


@dataclass
class ProtobufClient:
    """A protobuf subprotocol client: an aiohttp WebSocket and its ``connected`` message."""

    ws: aiohttp.ClientWebSocketResponse
    connected: dict[str, Any]

    @property
    def id(self) -> str:
        connection_id: str = self.connected["connectionId"]
        return connection_id

    @property
    def reconnection_token(self) -> str:
        token: str = self.connected["reconnectionToken"]
        return token

    async def recv(self) -> dict[str, Any]:
        return await receive(self.ws)

    async def send(self, frame: bytes) -> None:
        await self.ws.send_bytes(frame)

    async def call(self, frame: bytes, ack_id: int) -> list[dict[str, Any]]:
        """Send a request with ``ack_id``: what arrived up to and including its ack."""
        await self.send(frame)
        seen: list[dict[str, Any]] = []
        for _ in range(50):
            seen.append(await self.recv())
            if seen[-1]["type"] == "ack" and seen[-1]["ackId"] == ack_id:
                return seen
        raise AssertionError(f"no ack {ack_id}: {seen}")

    async def ack(self, frame: bytes, ack_id: int) -> dict[str, Any]:
        """The ack of ``frame``, which must be the next message."""
        (ack,) = await self.call(frame, ack_id)
        return ack

    async def expect_pong(self) -> None:
        """A ping round trip: nothing else is pending, and the connection still works."""
        await self.send(ping())
        assert await self.recv() == {"type": "pong"}


async def connect(
    http: aiohttp.ClientSession,
    url: str,
    protocol: str = PROTOBUF,
    *,
    protocols: Sequence[str] | None = None,
) -> ProtobufClient:
    """A client at ``url`` offering ``protocol`` (or ``protocols``), once its ``connected``
    message came."""
    ws = await http.ws_connect(url, protocols=protocols or [protocol])
    connected = await receive(ws)
    assert (connected["type"], connected["event"]) == ("system", "connected"), connected
    return ProtobufClient(ws, connected)
