"""The protobuf schema of the ``protobuf.webpubsub.azure.v1`` subprotocols, as data.

Our own definitions, written from the public facts (field numbers and types) of the
current JS/C# protobuf client schema plus the stream and ping messages of the Learn
reference (Azure docs: protobuf subprotocol; every choice in docs/compatibility.md).
The messages are flat here (the client's schema nests them): names are not on the
wire, numbers and types are.  :func:`message_class` builds the classes once, in a
descriptor pool of their own (no generated code, nothing registered globally).
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

PACKAGE = "webpubsub.protocol"

__all__ = ["SCHEMA", "DecodeError", "message_class"]
"""``DecodeError``: what parsing bytes that are not the message raises (the only module
importing ``protobuf`` is this one)."""

# (field, number, type, how): ``how`` is "" (singular), "?" (proto3 ``optional``) or
# the name of the oneof the field belongs to.  A type starting with an upper-case
# letter is a message of this schema; ``Any`` is ``google.protobuf.Any``.
Field = tuple[str, int, str, str]
SCHEMA: dict[str, tuple[Field, ...]] = {
    # -- client → service -------------------------------------------------------------
    "UpstreamMessage": (
        ("send_to_group_message", 1, "SendToGroupMessage", "message"),
        ("event_message", 5, "EventMessage", "message"),
        ("join_group_message", 6, "JoinGroupMessage", "message"),
        ("leave_group_message", 7, "LeaveGroupMessage", "message"),
        ("sequence_ack_message", 8, "SequenceAckMessage", "message"),
        ("ping_message", 9, "PingMessage", "message"),
        ("stream_data_message", 13, "StreamDataMessage", "message"),
        ("stream_end_message", 14, "StreamEndMessage", "message"),
    ),
    "SendToGroupMessage": (
        ("group", 1, "string", ""),
        ("ack_id", 2, "uint64", "?"),
        ("data", 3, "MessageData", ""),
        ("no_echo", 4, "bool", "?"),
        ("stream", 7, "StreamStartInfo", ""),
    ),
    "StreamStartInfo": (
        ("stream_id", 1, "string", ""),
        ("idle_timeout_ms", 2, "uint32", "?"),
    ),
    "EventMessage": (
        ("event", 1, "string", ""),
        ("data", 2, "MessageData", ""),
        ("ack_id", 3, "uint64", "?"),
    ),
    "JoinGroupMessage": (("group", 1, "string", ""), ("ack_id", 2, "uint64", "?")),
    "LeaveGroupMessage": (("group", 1, "string", ""), ("ack_id", 2, "uint64", "?")),
    "SequenceAckMessage": (("sequence_id", 1, "uint64", ""),),
    "PingMessage": (),
    "StreamDataMessage": (
        ("stream_id", 1, "string", ""),
        ("stream_sequence_id", 2, "uint64", "?"),
        ("data", 3, "MessageData", ""),
    ),
    "StreamEndMessage": (("stream_id", 1, "string", ""), ("error", 2, "StreamEndError", "?")),
    "StreamEndError": (("message", 1, "string", "?"), ("user_error_code", 2, "string", "?")),
    # -- service → client -------------------------------------------------------------
    "DownstreamMessage": (
        ("ack_message", 1, "AckMessage", "message"),
        ("data_message", 2, "DataMessage", "message"),
        ("system_message", 3, "SystemMessage", "message"),
        ("pong_message", 4, "PongMessage", "message"),
        ("stream_ack_message", 6, "StreamAckMessage", "message"),
        ("stream_nack_message", 7, "StreamNackMessage", "message"),
        ("stream_closed_message", 8, "StreamClosedMessage", "message"),
    ),
    "AckMessage": (
        ("ack_id", 1, "uint64", ""),
        ("success", 2, "bool", ""),
        ("error", 3, "ErrorMessage", "?"),
    ),
    "ErrorMessage": (("name", 1, "string", ""), ("message", 2, "string", "")),
    "DataMessage": (
        ("from", 1, "string", ""),
        ("group", 2, "string", "?"),
        ("data", 3, "MessageData", ""),
        ("sequence_id", 4, "uint64", "?"),
        ("stream", 6, "StreamInfo", ""),
    ),
    "SystemMessage": (
        ("connected_message", 1, "ConnectedMessage", "message"),
        ("disconnected_message", 2, "DisconnectedMessage", "message"),
    ),
    "ConnectedMessage": (
        ("connection_id", 1, "string", ""),
        ("user_id", 2, "string", ""),
        ("reconnection_token", 3, "string", ""),
    ),
    "DisconnectedMessage": (("reason", 2, "string", ""),),
    "PongMessage": (),
    "StreamAckMessage": (("stream_id", 1, "string", ""), ("expected_sequence_id", 2, "uint64", "")),
    "StreamNackMessage": (
        ("stream_id", 1, "string", ""),
        ("name", 2, "string", ""),
        ("message", 3, "string", ""),
        ("expected_sequence_id", 4, "uint64", ""),
    ),
    "StreamClosedMessage": (
        ("stream_id", 1, "string", ""),
        ("error", 2, "StreamClosedError", "?"),
    ),
    "StreamClosedError": (("name", 1, "string", ""), ("message", 2, "string", "")),
    "StreamInfo": (
        ("stream_id", 1, "string", ""),
        ("stream_sequence_id", 2, "uint64", ""),
        ("end_of_stream", 3, "bool", "?"),
        ("error", 4, "StreamError", "?"),
    ),
    "StreamError": (
        ("name", 1, "string", ""),
        ("message", 2, "string", ""),
        ("user_error_code", 3, "string", ""),
    ),
    # -- both ways --------------------------------------------------------------------
    "MessageData": (
        ("text_data", 1, "string", "data"),
        ("binary_data", 2, "bytes", "data"),
        ("protobuf_data", 3, "Any", "data"),
        ("json_data", 4, "string", "data"),
    ),
}

_F = descriptor_pb2.FieldDescriptorProto
_SCALAR_TYPES = {
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "bool": _F.TYPE_BOOL,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
}


def _message(name: str, fields: tuple[Field, ...]) -> Any:
    """The ``DescriptorProto`` of message ``name``; proto3 ``optional`` fields get the
    synthetic oneofs (after the real ones) that give them presence."""
    proto = descriptor_pb2.DescriptorProto(name=name)
    oneofs = list(dict.fromkeys(how for _, _, _, how in fields if how not in ("", "?")))
    oneofs += [f"_{field}" for field, _, _, how in fields if how == "?"]
    for oneof in oneofs:
        proto.oneof_decl.add(name=oneof)
    for field, number, kind, how in fields:
        entry = proto.field.add(name=field, number=number, label=_F.LABEL_OPTIONAL)
        if kind in _SCALAR_TYPES:
            entry.type = _SCALAR_TYPES[kind]
        else:
            entry.type = _F.TYPE_MESSAGE
            entry.type_name = ".google.protobuf.Any" if kind == "Any" else f".{PACKAGE}.{kind}"
        if how == "?":
            entry.proto3_optional = True
            entry.oneof_index = oneofs.index(f"_{field}")
        elif how:
            entry.oneof_index = oneofs.index(how)
    return proto


@functools.cache
def _classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(any_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name="webpubsub/protocol/client.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["google/protobuf/any.proto"],
    )
    file.message_type.extend(_message(name, fields) for name, fields in SCHEMA.items())
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name in SCHEMA
    }


def message_class(name: str) -> Any:
    """The message class of ``name`` (a key of :data:`SCHEMA`), built on first use."""
    return _classes()[name]
