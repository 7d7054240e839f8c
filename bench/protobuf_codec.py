"""The cost of the protobuf codec (protocol/protobuf_protocol.py) against the JSON one.

    PYTHONPATH=src .venv/bin/python bench/protobuf_codec.py [--size 2048] [--number N]

Times, per call, on one core: a group message's ``encode_data_body`` (once per send)
plus ``with_sequence_id`` (once per reliable recipient), and ``decode_client_message``
of a client's ``sendToGroup`` frame, for the JSON and protobuf codecs; and, to judge a
hand-written codec, the same protobuf encode done entirely by the ``protobuf`` package
(every field set on message objects, then ``SerializeToString``) and done entirely by
hand in Python (varints and byte concatenation), and the same decode done by a
hand-written Python wire reader.  Prints microseconds per call (best of ``--repeat``).
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable

import orjson

from webpubsub.protocol import json_protocol, protobuf_protocol
from webpubsub.protocol.messages import SendToGroup
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.protocol.protobuf_protocol import _varint as varint
from webpubsub.protocol.protobuf_schema import message_class

GROUP = "group-1"
USER = "user-1"


def field(tag: int, data: bytes) -> bytes:
    return bytes([tag]) + varint(len(data)) + data


def hand_encode(payload: Payload) -> bytes:
    """The whole ``DownstreamMessage{data_message}`` by hand (text payloads)."""
    inner = b"\x0a\x05group" + field(0x12, GROUP.encode()) + field(0x1A, field(0x0A, payload.data))
    return field(0x12, inner)


def library_encode(payload: Payload) -> bytes:
    """The whole message through the ``protobuf`` package (text payloads)."""
    downstream = message_class("DownstreamMessage")()
    data = downstream.data_message
    setattr(data, "from", "group")
    data.group = GROUP
    data.data.text_data = payload.data.decode()
    return bytes(downstream.SerializeToString())


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def read_fields(buf: bytes) -> dict[int, int | bytes]:
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        if key & 7 == 0:
            out[key >> 3], pos = read_varint(buf, pos)
        else:
            length, pos = read_varint(buf, pos)
            out[key >> 3] = buf[pos : pos + length]
            pos += length
    return out


def hand_decode(frame: bytes) -> SendToGroup:
    """A hand-written reader of a text ``send_to_group_message`` (no checks beyond it)."""
    message = read_fields(read_fields(frame)[1])  # type: ignore[arg-type]
    data = read_fields(message[3])  # type: ignore[arg-type]
    group = message[1].decode()  # type: ignore[union-attr]
    payload = Payload(DataType.TEXT, data[1])  # type: ignore[arg-type]
    return SendToGroup(group, payload, bool(message.get(4, 0)), message.get(2))  # type: ignore[arg-type]


def best(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Microseconds per call, the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=2048, help="payload bytes")
    parser.add_argument("--number", type=int, default=50_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    n, r = args.number, args.repeat
    text = Payload.text("x" * args.size)
    binary = Payload.binary((bytes(range(256)) * (args.size // 256 + 1))[: args.size])
    print("command:", " ".join([sys.executable, *sys.argv]))
    print(f"payload {args.size} B, best of {r} x {n} calls, microseconds per call\n")

    assert (
        library_encode(text)
        == hand_encode(text)
        == protobuf_protocol.encode_data_body(text, group=GROUP, from_user_id=USER)
    )
    rows: list[tuple[str, float]] = []
    for name, codec in (("json", json_protocol), ("protobuf", protobuf_protocol)):
        for kind, payload in (("text", text), ("binary", binary)):
            body = codec.encode_data_body(payload, group=GROUP, from_user_id=USER)
            rows.append(
                (
                    f"{name:8} encode_data_body ({kind})",
                    best(
                        lambda c=codec, p=payload: c.encode_data_body(  # type: ignore[misc]
                            p, group=GROUP, from_user_id=USER
                        ),
                        n,
                        r,
                    ),
                )
            )
            rows.append(
                (
                    f"{name:8} with_sequence_id ({kind})",
                    best(lambda c=codec, b=body: c.with_sequence_id(b, 123456), n, r),  # type: ignore[misc]
                )
            )
    rows.append(("protobuf all-library encode (text)", best(lambda: library_encode(text), n, r)))
    rows.append(("protobuf all-by-hand encode (text)", best(lambda: hand_encode(text), n, r)))

    json_frame = orjson.dumps(
        {
            "type": "sendToGroup",
            "group": GROUP,
            "ackId": 12345,
            "dataType": "text",
            "data": text.data.decode(),
            "noEcho": False,
        }
    )
    upstream = message_class("UpstreamMessage")()
    send = upstream.send_to_group_message
    send.group, send.ack_id, send.no_echo = GROUP, 12345, False
    send.data.text_data = text.data.decode()
    pb_frame = bytes(upstream.SerializeToString())
    expected = SendToGroup(GROUP, text, False, 12345)
    assert json_protocol.decode_client_message(json_frame) == expected
    assert protobuf_protocol.decode_client_message(pb_frame) == expected
    assert hand_decode(pb_frame) == expected
    rows.append(
        (
            "json     decode sendToGroup (text)",
            best(lambda: json_protocol.decode_client_message(json_frame), n, r),
        )
    )
    rows.append(
        (
            "protobuf decode sendToGroup (text)",
            best(lambda: protobuf_protocol.decode_client_message(pb_frame), n, r),
        )
    )
    rows.append(("protobuf hand-written decode (text)", best(lambda: hand_decode(pb_frame), n, r)))
    for name, micros in rows:
        print(f"{name:40} {micros:7.2f}")
    print(f"\nframe sizes: json sendToGroup {len(json_frame)} B, protobuf {len(pb_frame)} B")


if __name__ == "__main__":
    main()
