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


def unacknowledged(buf: ReliableBuffer) -> list[bytes]:
    """The buffered frames in sequence order (what another node would continue)."""
    return [frame for _, frame in buf.snapshot()[1]]


def sequence_ids(frames: list[bytes]) -> list[int]:
    return [orjson.loads(f[2:])["sequenceId"] for f in frames]


def test_ids_start_at_one_and_frames_are_text_frames() -> None:
    buf = ReliableBuffer()
    first = buf.stamp(BODY)
    assert first == encode_frame(Opcode.TEXT, b'{"sequenceId":1,' + BODY[1:])
    buf.stamp(BODY)
    assert sequence_ids(unacknowledged(buf)) == [1, 2]
    assert buf.last_sequence_id == 2


def test_acks_are_cumulative_and_stale_acks_are_ignored() -> None:
    buf = ReliableBuffer()
    for _ in range(5):
        buf.stamp(BODY)
    buf.ack(3)
    assert sequence_ids(unacknowledged(buf)) == [4, 5]
    buf.ack(2)
    buf.ack(3)
    assert sequence_ids(unacknowledged(buf)) == [4, 5]
    buf.ack(99)  # never sent: ignored
    assert sequence_ids(unacknowledged(buf)) == [4, 5]
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
    assert sequence_ids(unacknowledged(buf)) == model


def test_what_the_transport_holds_shares_the_byte_bound() -> None:
    buf = ReliableBuffer(max_bytes=1000)
    size = len(buf.stamp(BODY))  # ids 1 to 3 make frames of one size
    buf.stamp(BODY, held=1000 - 2 * size)  # exactly the bound
    with pytest.raises(BufferOverflow):
        buf.stamp(BODY, held=1000 - 2 * size)
    buf.stamp(BODY, held=0)  # the transport sent its copies: room again
    assert buf.last_sequence_id == 3


@given(
    st.integers(0, 30),
    st.integers(0, 40),
    st.integers(1, 200),
    st.lists(st.integers(1, 120), max_size=30),
)
def test_replay_chunks_cover_the_buffer_in_order(
    acked: int, cursor: int, chunk: int, sizes: list[int]
) -> None:
    """Chunk after chunk from any cursor: every frame after it exactly once, in order,
    each chunk at least one frame and not more than needed to reach ``chunk`` bytes."""
    buf = ReliableBuffer()
    for size in sizes:
        buf.stamp(encode_data_body(Payload.text("z" * size)))
    buf.ack(acked)
    expected = [(i, f) for i, f in buf.snapshot()[1] if i > cursor]
    replayed: list[tuple[int, bytes]] = []
    while part := buf.frames_after(cursor, chunk):
        assert sum(len(f) for _, f in part[:-1]) < chunk
        replayed += part
        cursor = part[-1][0]
    assert replayed == expected
