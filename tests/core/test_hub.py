"""The hub: membership indexes and the synchronous fan-out (docs/architecture.md: encode once)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import cast

import pytest

from webpubsub.core import hub as hub_module
from webpubsub.core.connection import Connection
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permissions
from webpubsub.core.reliable import ReliableBuffer
from webpubsub.core.settings import HubSettings
from webpubsub.protocol import json_protocol
from webpubsub.protocol.frames import ClientProtocol, DataMessage, encode_for
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.wsframe import Opcode, encode_frame


class RecordingSink:
    """A sink that records what the fan-out offers (the real one is the outbox)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: list[tuple[int, str]] = []

    def offer(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed.append((code, reason))

    buffered_bytes = 0

    async def drained(self) -> None:
        return None


def make_conn(
    cid: str, *, user: str | None = None, protocol: ClientProtocol = ClientProtocol.SIMPLE
) -> tuple[Connection, RecordingSink]:
    sink = RecordingSink()
    conn = Connection(
        connection_id=cid,
        hub="h",
        user_id=user,
        protocol=protocol,
        subprotocol=None,
        sink=sink,
        permissions=Permissions.from_roles(()),
    )
    return conn, sink


EncodeFor = Callable[[ClientProtocol, DataMessage], bytes]


@pytest.fixture
def encode_calls(monkeypatch: pytest.MonkeyPatch) -> list[ClientProtocol]:
    """Spy on the hub's ``encode_for``: records the protocol of each call."""
    calls: list[ClientProtocol] = []
    real: EncodeFor = encode_for  # the function the hub module imported

    def spy(protocol: ClientProtocol, message: DataMessage) -> bytes:
        calls.append(protocol)
        return real(protocol, message)

    monkeypatch.setattr(hub_module, "encode_for", spy)
    return calls


TEXT = DataMessage(Payload.text("hello"))
TEXT_FRAME = encode_frame(Opcode.TEXT, b"hello")


# -- fan-out --------------------------------------------------------------------------


def test_deliver_encodes_once_and_shares_the_frame(encode_calls: list[ClientProtocol]) -> None:
    hub = Hub("h")
    pairs = [make_conn(f"c{i}") for i in range(50)]
    for conn, _ in pairs:
        hub.add(conn)

    assert hub.deliver(hub.connections(), TEXT) == 50

    assert encode_calls == [ClientProtocol.SIMPLE]
    first = pairs[0][1].frames[0]
    assert first == TEXT_FRAME
    for _, sink in pairs:
        assert sink.frames == [TEXT_FRAME]
        assert sink.frames[0] is first  # the very same bytes object, not a copy


def test_deliver_encodes_once_per_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    """With two client protocols in one fan-out, each is encoded exactly once.

    Only the simple protocol exists in this build, so a second one is stood in
    by a sentinel that the spy encodes itself.
    """
    other = cast(ClientProtocol, object())
    calls: list[object] = []

    def spy(protocol: ClientProtocol, message: DataMessage) -> bytes:
        calls.append(protocol)
        if protocol is other:
            return b"other:" + message.payload.data
        return encode_for(protocol, message)

    monkeypatch.setattr(hub_module, "encode_for", spy)
    hub = Hub("h")
    pairs = [
        make_conn(f"c{i}", protocol=other if i % 2 else ClientProtocol.SIMPLE) for i in range(6)
    ]
    for conn, _ in pairs:
        hub.add(conn)

    assert hub.deliver(hub.connections(), TEXT) == 6

    assert sorted(map(id, calls)) == sorted([id(other), id(ClientProtocol.SIMPLE)])
    for i, (_, sink) in enumerate(pairs):
        assert sink.frames == [b"other:hello" if i % 2 else TEXT_FRAME]


def test_each_send_is_encoded_again(encode_calls: list[ClientProtocol]) -> None:
    hub = Hub("h")
    conn, sink = make_conn("c")
    hub.add(conn)
    hub.deliver([conn], DataMessage(Payload.text("a")))
    hub.deliver([conn], DataMessage(Payload.binary(b"b")))
    assert len(encode_calls) == 2
    assert sink.frames == [encode_frame(Opcode.TEXT, b"a"), encode_frame(Opcode.BINARY, b"b")]


def test_deliver_to_nobody_encodes_nothing(encode_calls: list[ClientProtocol]) -> None:
    assert Hub("h").deliver([], TEXT) == 0
    assert encode_calls == []


def test_excluded_connections_are_skipped(encode_calls: list[ClientProtocol]) -> None:
    hub = Hub("h")
    pairs = {cid: make_conn(cid) for cid in ("a", "b", "c")}
    for conn, _ in pairs.values():
        hub.add(conn)

    assert hub.deliver(hub.connections(), TEXT, excluded=frozenset({"a", "c"})) == 1

    assert pairs["a"][1].frames == []
    assert pairs["b"][1].frames == [TEXT_FRAME]
    assert pairs["c"][1].frames == []
    assert len(encode_calls) == 1


def test_all_excluded_encodes_nothing(encode_calls: list[ClientProtocol]) -> None:
    hub = Hub("h")
    conn, sink = make_conn("a")
    hub.add(conn)
    assert hub.deliver([conn], TEXT, excluded={"a"}) == 0
    assert sink.frames == []
    assert encode_calls == []


def test_closing_connections_are_skipped() -> None:
    hub = Hub("h")
    open_conn, open_sink = make_conn("open")
    closing, closing_sink = make_conn("closing")
    hub.add(open_conn)
    hub.add(closing)
    closing.close(1000, "bye")

    assert hub.deliver(hub.connections(), TEXT) == 1

    assert open_sink.frames == [TEXT_FRAME]
    assert closing_sink.frames == []
    assert closing_sink.closed == [(1000, "bye")]


def test_binary_payload_is_a_binary_frame() -> None:
    hub = Hub("h")
    conn, sink = make_conn("c")
    hub.add(conn)
    hub.deliver([conn], DataMessage(Payload.binary(b"\x00\x01")))
    assert sink.frames == [b"\x82\x02\x00\x01"]


class BatchingSink(RecordingSink):
    """A sink with the batch form of ``offer`` (as the outbox has): records each batch."""

    def __init__(self, batches: list[tuple[bytes, list[object]]]) -> None:
        super().__init__()
        self.batches = batches

    def offer_each(self, frame: bytes, sinks: list[RecordingSink]) -> None:
        self.batches.append((frame, list(sinks)))
        for sink in sinks:
            sink.offer(frame)


def batching_conn(
    cid: str, batches: list[tuple[bytes, list[object]]], protocol: ClientProtocol
) -> tuple[Connection, BatchingSink]:
    conn, _ = make_conn(cid, protocol=protocol)
    sink = conn.sink = BatchingSink(batches)
    return conn, sink


def test_plain_recipients_get_their_protocols_frame_in_one_batch_each() -> None:
    """Recipients of mixed protocols: one batch per protocol's frame, in recipient order,
    each recipient in it once; the batch goes through its first sink's ``offer_each``
    (which takes the sinks without one too), or one ``offer`` each if it has none."""
    batches: list[tuple[bytes, list[object]]] = []
    hub = Hub("h")
    simple1, s1 = batching_conn("s1", batches, ClientProtocol.SIMPLE)
    json1, j1 = batching_conn("j1", batches, ClientProtocol.JSON)
    simple2, s2 = make_conn("s2")  # no offer_each of its own
    json2, j2 = make_conn("j2", protocol=ClientProtocol.JSON)
    proto1, p1 = make_conn("p1", protocol=ClientProtocol.PROTOBUF)  # first: no batch form
    proto2, p2 = batching_conn("p2", batches, ClientProtocol.PROTOBUF)
    for conn in (simple1, json1, simple2, json2, proto1, proto2):
        hub.add(conn)

    assert hub.deliver(hub.connections(), TEXT) == 6

    json_frame = encode_for(ClientProtocol.JSON, TEXT)
    assert batches == [(TEXT_FRAME, [s1, s2]), (json_frame, [j1, j2])]
    assert s1.frames == s2.frames == [TEXT_FRAME]
    assert j1.frames == j2.frames == [json_frame]
    assert p1.frames == p2.frames == [encode_for(ClientProtocol.PROTOBUF, TEXT)]
    assert [c.messages_out for c in (simple1, json1, simple2, json2, proto1, proto2)] == [1] * 6


def test_reliable_recipients_are_stamped_each_beside_the_batch() -> None:
    """A reliable recipient's frame differs (its own sequence id): it is not batched."""
    batches: list[tuple[bytes, list[object]]] = []
    hub = Hub("h")
    plain, plain_sink = batching_conn("p", batches, ClientProtocol.JSON)
    reliable, reliable_sink = make_conn("r", protocol=ClientProtocol.JSON_RELIABLE)
    reliable.reliable = ReliableBuffer()
    hub.add(plain)
    hub.add(reliable)
    for _ in range(2):
        assert hub.deliver(hub.connections(), TEXT) == 2
    body = encode_for(ClientProtocol.JSON_RELIABLE, TEXT)
    assert reliable_sink.frames == [
        encode_frame(Opcode.TEXT, json_protocol.with_sequence_id(body, n)) for n in (1, 2)
    ]
    assert plain_sink.frames == [encode_for(ClientProtocol.JSON, TEXT)] * 2
    assert [sinks for _, sinks in batches] == [[plain_sink], [plain_sink]]


# -- membership -----------------------------------------------------------------------


def test_add_get_remove_by_id_and_user() -> None:
    hub = Hub("h")
    a, _ = make_conn("a", user="u")
    b, _ = make_conn("b", user="u")
    anon, _ = make_conn("x")
    for conn in (a, b, anon):
        hub.add(conn)

    assert len(hub) == 3
    assert hub.get("a") is a and hub.get("zz") is None
    assert hub.has_user("u")
    assert set(map(id, hub.user_connections("u"))) == {id(a), id(b)}

    assert hub.remove("a") is a
    assert hub.remove("a") is None
    assert hub.has_user("u")
    hub.remove("b")
    assert not hub.has_user("u")
    assert hub.user_connections("u") == []
    assert len(hub) == 1


def test_groups_join_leave_and_remove() -> None:
    hub = Hub("h")
    a, _ = make_conn("a")
    b, _ = make_conn("b")
    hub.add(a)
    hub.add(b)
    hub.join(a, "g1")
    hub.join(a, "g2")
    hub.join(b, "g1")
    assert hub.has_group("g1") and hub.has_group("g2")
    assert a.groups == {"g1", "g2"}

    hub.leave(a, "g2")
    assert not hub.has_group("g2")
    assert a.groups == {"g1"}

    hub.remove("a")
    assert a.groups == set()
    assert [c.connection_id for c in hub.group_connections("g1")] == ["b"]
    hub.leave_all(b)
    assert not hub.has_group("g1")


def test_join_ignores_a_connection_not_in_the_hub() -> None:
    hub = Hub("h")
    stranger, _ = make_conn("s")
    hub.join(stranger, "g")
    assert not hub.has_group("g")
    assert stranger.groups == set()


def test_group_fan_out_reaches_members_only() -> None:
    hub = Hub("h")
    member, member_sink = make_conn("m")
    other, other_sink = make_conn("o")
    hub.add(member)
    hub.add(other)
    hub.join(member, "room")
    assert hub.deliver(hub.group_connections("room"), TEXT) == 1
    assert member_sink.frames == [TEXT_FRAME]
    assert other_sink.frames == []


class RecordingListener:
    """What a networked backplane is told of a hub's changes, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def added(self, hub: str, conn: Connection) -> None:
        self.calls.append(("added", hub, conn.connection_id))

    def removed(self, hub: str, conn: Connection, groups: Collection[str]) -> None:
        self.calls.append(("removed", hub, conn.connection_id, *sorted(groups)))

    def joined(self, hub: str, conn: Connection, group: str) -> None:
        self.calls.append(("joined", hub, conn.connection_id, group))

    def left(self, hub: str, conn: Connection, group: str) -> None:
        self.calls.append(("left", hub, conn.connection_id, group))

    def state_changed(self, hub: str, conn: Connection) -> None:
        self.calls.append(("state", hub, conn.connection_id, conn.state))


def test_the_listener_hears_every_change_in_order_and_no_state_after_removal() -> None:
    listener = RecordingListener()
    hub = Hub("h", listener)
    conn, _ = make_conn("c1", user="u")
    hub.add(conn)
    hub.join(conn, "g")
    hub.set_state(conn, "s1")
    hub.leave(conn, "g")
    hub.join(conn, "g2")
    hub.remove("c1")
    hub.set_state(conn, "late")  # a reply that came after the connection ended
    assert listener.calls == [
        ("added", "h", "c1"),
        ("joined", "h", "c1", "g"),
        ("state", "h", "c1", "s1"),
        ("left", "h", "c1", "g"),
        ("joined", "h", "c1", "g2"),
        ("removed", "h", "c1", "g2"),
    ]
    assert conn.state == "late"


def test_join_stops_at_the_connections_group_limit() -> None:
    hub = Hub("h")
    conn, _ = make_conn("c1")
    conn.max_groups = 2
    hub.add(conn)
    assert hub.join(conn, "a") and hub.join(conn, "b")
    assert not hub.join(conn, "c")
    assert hub.join(conn, "a")  # a member already: nothing refused
    assert conn.groups == {"a", "b"} and not hub.has_group("c")


def test_removing_a_connection_in_many_groups_is_fast() -> None:
    """Leaving is O(1) per group: a connection at the default limit leaves in well under
    a millisecond's share of the loop per hundred groups (issue 10: 462,000 groups
    stalled every client for 0.6 s; the limit bounds it at 1,000)."""
    hub = Hub("h")
    conn, _ = make_conn("c1")
    conn.max_groups = HubSettings(name="h").max_groups_per_connection
    hub.add(conn)
    for i in range(conn.max_groups + 10):
        hub.join(conn, f"{i:01024d}")
    assert len(conn.groups) == conn.max_groups
    start = time.perf_counter()
    hub.remove("c1")
    assert time.perf_counter() - start < 0.05
    assert not hub.has_group(f"{0:01024d}")
