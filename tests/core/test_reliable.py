"""The reliable buffer: sequence ids, cumulative acks, bounds (reliable JSON subprotocol)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.core.reliable import BufferOverflow, ReliableBuffer
from webpubsub.protocol.json_protocol import encode_data_body
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.wsframe import Opcode, encode_frame

BODY = encode_data_body(Payload.text("x"))


def sequence_ids(frames: list[bytes]) -> list[int]:
    return [orjson.loads(f[2:])["sequenceId"] for f in frames]


def test_ids_start_at_one_and_frames_are_text_frames() -> None:
    buf = ReliableBuffer()
    first = buf.stamp(BODY)
    assert first == encode_frame(Opcode.TEXT, b'{"sequenceId":1,' + BODY[1:])
    buf.stamp(BODY)
    assert sequence_ids(buf.unacknowledged()) == [1, 2]
    assert buf.last_sequence_id == 2


def test_acks_are_cumulative_and_stale_acks_are_ignored() -> None:
    buf = ReliableBuffer()
    for _ in range(5):
        buf.stamp(BODY)
    buf.ack(3)
    assert sequence_ids(buf.unacknowledged()) == [4, 5]
    buf.ack(2)
    buf.ack(3)
    assert sequence_ids(buf.unacknowledged()) == [4, 5]
    buf.ack(99)  # never sent: ignored
    assert sequence_ids(buf.unacknowledged()) == [4, 5]
    buf.ack(5)
    assert len(buf) == 0 and buf.buffered_bytes == 0
    assert sequence_ids([buf.stamp(BODY)]) == [6]  # never reused


def test_bounded_by_messages_and_bytes() -> None:
    buf = ReliableBuffer(max_messages=3)
    for _ in range(3):
        buf.stamp(BODY)
    with pytest.raises(BufferOverflow):
        buf.stamp(BODY)
    buf.ack(1)
    buf.stamp(BODY)  # room again
    small = ReliableBuffer(max_bytes=100)
    with pytest.raises(BufferOverflow):
        small.stamp(encode_data_body(Payload.text("y" * 200)))
    assert len(small) == 0


@given(st.lists(st.one_of(st.just(None), st.integers(0, 60)), max_size=80))
def test_matches_a_model(ops: list[int | None]) -> None:
    buf = ReliableBuffer()
    model: list[int] = []
    sent = 0
    for op in ops:
        if op is None:
            sent += 1
            buf.stamp(BODY)
            model.append(sent)
        else:
            buf.ack(op)
            if op <= sent:
                model = [s for s in model if s > op]
    assert sequence_ids(buf.unacknowledged()) == model
