"""Server frames (RFC 6455 §5.2): literal header bytes and a round trip.

The round trip goes through a small reference decoder written from §5.2 here,
independent of the encoder under test (the byte-exact comparison with what a
real aiohttp server writes lives in ``tests/server/test_outbox.py``).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.protocol.wsframe import CloseCode, MaskCheck, Opcode, encode_frame, frame_header

# -- literal headers: FIN=1, RSV=0, MASK=0 (§5.1: server frames are never masked) ------------


@pytest.mark.parametrize(
    ("length", "header"),
    [
        # §5.2: payload length 0-125 is the 7-bit length itself.
        (0, b"\x81\x00"),
        (1, b"\x81\x01"),
        (125, b"\x81\x7d"),
        # 126: the 7-bit field is 126 and a 16-bit big-endian length follows.
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        # 65536: the 7-bit field is 127 and a 64-bit big-endian length follows.
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
        (2**32, b"\x81\x7f\x00\x00\x00\x01\x00\x00\x00\x00"),
    ],
)
def test_text_frame_header_lengths(length: int, header: bytes) -> None:
    assert frame_header(Opcode.TEXT, length) == header


@pytest.mark.parametrize(
    ("opcode", "first_byte"),
    [
        (Opcode.CONTINUATION, 0x80),
        (Opcode.TEXT, 0x81),
        (Opcode.BINARY, 0x82),
        (Opcode.CLOSE, 0x88),
        (Opcode.PING, 0x89),
        (Opcode.PONG, 0x8A),
    ],
)
def test_first_byte_is_fin_plus_opcode(opcode: Opcode, first_byte: int) -> None:
    assert frame_header(opcode, 3)[0] == first_byte


def test_binary_frames_literal() -> None:
    assert encode_frame(Opcode.BINARY, b"") == b"\x82\x00"
    assert encode_frame(Opcode.BINARY, b"\x00\xff") == b"\x82\x02\x00\xff"
    assert encode_frame(Opcode.TEXT, b"Hello") == b"\x81\x05Hello"  # the §5.7 example


def test_encode_frame_is_header_plus_payload_at_each_boundary() -> None:
    for length in (0, 125, 126, 65535, 65536, 70000):
        payload = bytes(i % 251 for i in range(length))
        frame = encode_frame(Opcode.BINARY, payload)
        assert frame == frame_header(Opcode.BINARY, length) + payload


def test_close_codes_are_the_rfc_values() -> None:
    # RFC 6455 §7.4.1
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "INVALID_DATA": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
    }


# -- round trip through a reference decoder ---------------------------------------------------


def decode_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """Split ``data`` into (fin, opcode, payload) per RFC 6455 §5.2; rejects masked frames."""
    frames: list[tuple[bool, int, bytes]] = []
    pos = 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        pos += 2
        assert first & 0x70 == 0, "RSV bits must be 0 without extensions"
        assert second & 0x80 == 0, "a server must not mask (§5.1)"
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
            assert length >= 126, "§5.2: the minimal number of bytes MUST be used"
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
            assert length >= 1 << 16, "§5.2: the minimal number of bytes MUST be used"
            assert length < 1 << 63, "§5.2: the most significant bit MUST be 0"
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated frame"
        pos += length
        frames.append((bool(first & 0x80), first & 0x0F, payload))
    return frames


data_opcodes = st.sampled_from([Opcode.TEXT, Opcode.BINARY])
# Weighted towards the length-encoding boundaries.
lengths = st.one_of(
    st.integers(0, 300),
    st.integers(65530, 65540),
    st.sampled_from([0, 125, 126, 127, 65535, 65536]),
)


@given(opcode=data_opcodes, length=lengths, seed=st.binary(min_size=1, max_size=8))
def test_round_trip_one_frame(opcode: Opcode, length: int, seed: bytes) -> None:
    payload = (seed * (length // len(seed) + 1))[:length]
    assert decode_frames(encode_frame(opcode, payload)) == [(True, int(opcode), payload)]


@given(st.lists(st.tuples(data_opcodes, st.binary(max_size=300)), max_size=20))
def test_round_trip_coalesced_frames(frames: list[tuple[Opcode, bytes]]) -> None:
    """Concatenated frames (what one coalesced write carries) split back exactly."""
    wire = b"".join(encode_frame(op, payload) for op, payload in frames)
    assert decode_frames(wire) == [(True, int(op), payload) for op, payload in frames]


@given(st.integers(0, 2**63 - 1))
def test_header_length_field_round_trip(length: int) -> None:
    header = frame_header(Opcode.BINARY, length)
    assert header[0] == 0x82
    size = header[1]
    if length < 126:
        assert (len(header), size) == (2, length)
    elif length < 1 << 16:
        assert (len(header), size) == (4, 126)
        assert struct.unpack("!H", header[2:])[0] == length
    else:
        assert (len(header), size) == (10, 127)
        assert struct.unpack("!Q", header[2:])[0] == length


# -- the MASK bit of client frames (RFC 6455 §5.1) ---------------------------------------


def client_frame(payload: bytes, *, masked: bool = True, opcode: int = 0x1) -> bytes:
    head = frame_header(Opcode(opcode), len(payload))
    head = bytes((head[0], head[1] | (0x80 if masked else 0))) + head[2:]
    return head + (b"\x01\x02\x03\x04" if masked else b"") + payload


payloads = st.binary(max_size=300) | st.integers(0, 70_000).map(lambda n: b"x" * n)


@given(st.lists(payloads, max_size=6), st.data())
def test_masked_frames_in_any_chunks_pass(frames: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(client_frame(p) for p in frames)
    check = MaskCheck()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert all(check.feed(piece) for piece in pieces)


@given(st.lists(payloads, max_size=4), payloads, st.lists(payloads, max_size=2), st.data())
def test_an_unmasked_frame_is_found_wherever_the_chunks_cut(
    before: list[bytes], bad: bytes, after: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(
        [*(client_frame(p) for p in before), client_frame(bad, masked=False)]
        + [client_frame(p) for p in after]
    )
    check = MaskCheck()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    results = [check.feed(piece) for piece in pieces]
    assert results[-1] is False  # refused, and stays refused
    assert check.feed(client_frame(b"late")) is False
