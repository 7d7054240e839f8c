"""The load generator's WebSocket client reads every stamp whatever the frame sizes and
however the bytes are split (bench/rawws.py)."""

from __future__ import annotations

from typing import Any

from harness import payload
from hypothesis import given
from hypothesis import strategies as st
from rawws import RawWebSocket, frame

UPGRADE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def server_frame(opcode: int, data: bytes) -> bytes:
    """An unmasked frame, as a server sends it."""
    n = len(data)
    if n < 126:
        return bytes((0x80 | opcode, n)) + data
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + data
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + data


class Transport:
    """What the protocol writes, and whether it closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def opened(sio: bool = False) -> tuple[RawWebSocket, list[int], Transport]:
    stamps: list[int] = []
    ws = RawWebSocket(lambda sent, now: stamps.append(sent), lambda: None, sio)
    transport = Transport()
    ws.connection_made(transport)  # type: ignore[arg-type]
    return ws, stamps, transport


def feed(ws: RawWebSocket, data: bytes, cuts: list[int]) -> None:
    """``data`` in pieces cut at ``cuts``."""
    at = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        if cut > at:
            ws.data_received(data[at:cut])
            at = cut


messages = st.lists(
    st.tuples(st.integers(0, 2**63), st.sampled_from([26, 100, 125, 126, 2048, 65535, 65536])),
    max_size=8,
)


@given(messages, st.lists(st.integers(0, 10**6), max_size=20), st.sampled_from(["", "42", "{"]))
async def test_every_stamp_is_read_however_the_bytes_arrive(
    sent: list[tuple[int, int]], cuts: list[int], wrapper: str
) -> None:
    ws, stamps, _ = opened()
    first = server_frame(0x1, b'{"type":"system","event":"connected"}')
    wire = UPGRADE + first
    for i, (ns, size) in enumerate(sent):
        wire += server_frame(0x1, (wrapper + payload(i, ns, size)).encode())
    wire += server_frame(0x9, b"ping")
    feed(ws, wire[: len(UPGRADE) + len(first)], [])
    assert (
        ws.upgraded.done() and await ws.next_message() == b'{"type":"system","event":"connected"}'
    )
    ws.ready()
    feed(ws, wire[len(UPGRADE) + len(first) :], cuts)
    assert stamps == [ns for ns, _ in sent]


async def test_a_ping_is_answered_and_a_close_ends_the_connection() -> None:
    ws, stamps, transport = opened(sio=True)
    ws.data_received(UPGRADE)
    ws.ready()
    ws.data_received(server_frame(0x9, b"hi") + server_frame(0x1, b"2"))
    assert transport.written == [frame(0xA, b"hi"), frame(0x1, b"3")]  # pong, Engine.IO pong
    ws.data_received(server_frame(0x8, (1000).to_bytes(2, "big")) + server_frame(0x1, b"late"))
    assert transport.closed and stamps == []


def test_a_client_frame_is_masked_with_the_zero_key() -> None:
    assert frame(0x1, b"abc") == b"\x81\x83\x00\x00\x00\x00abc"
    long: Any = frame(0x1, b"x" * 300)
    assert long[:8] == b"\x81\xfe\x01\x2c\x00\x00\x00\x00" and long[8:] == b"x" * 300


async def test_a_refused_upgrade_fails_the_connect() -> None:
    ws, _, transport = opened()
    ws.data_received(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
    assert transport.closed
    assert isinstance(ws.upgraded.exception(), ConnectionError)
