"""The node below the socket layer: a recording sink per connection, a recording event
handler, no network. Admit, attach, resume (each refusal), detach within and after the
recovery window, apply, answer, and the disconnected event of a reaped connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import orjson
import pytest

from tests.core.test_hub import RecordingSink as HubSink
from webpubsub.core.detached import DetachedSessions
from webpubsub.core.settings import HubSettings
from webpubsub.errors import ServiceUnavailable, Unauthorized, UpstreamError
from webpubsub.node.node import NODE_LOST, Admission, Handshake, Node
from webpubsub.node.ports import ReapedConnection
from webpubsub.protocol.backplane import (
    ChangeGroup,
    Close,
    Exists,
    GroupAction,
    GroupMember,
    Handover,
    ListGroup,
    Send,
    SessionState,
    Target,
)
from webpubsub.protocol.cloudevents import (
    ConnectDecision,
    ConnectRequest,
    EventContext,
    EventReply,
)
from webpubsub.protocol.frames import ClientProtocol, DataMessage
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.tokens import ClientIdentity

RELIABLE = "json.reliable.webpubsub.azure.v1"
SENDS = ("webpubsub.sendToGroup",)
JSON = "json.webpubsub.azure.v1"


class RecordingSink(HubSink):
    """The hub tests' recording sink, reading back the JSON frames it got."""

    def texts(self) -> list[dict[str, object]]:
        """The JSON text frames (unmasked server frames: a 2-byte header for < 126 B)."""
        out = []
        for frame in self.frames:
            length = frame[1] & 0x7F
            start = 2 if length < 126 else 4
            out.append(orjson.loads(frame[start:]))
        return out


class RecordingUpstream:
    """The event-handler port: answers ``connect`` with ``decision``, records the rest."""

    def __init__(self, decision: ConnectDecision | None = None) -> None:
        self.decision = decision
        self.connects: list[ConnectRequest] = []
        self.connected_ids: list[str] = []
        self.ends: list[tuple[EventContext, str]] = []
        self.ended = asyncio.Event()

    async def connect(
        self, hub: HubSettings, ctx: EventContext, request: ConnectRequest
    ) -> ConnectDecision | None:
        self.connects.append(request)
        return self.decision

    async def user_event(
        self, hub: HubSettings, ctx: EventContext, name: str, payload: Payload
    ) -> EventReply:
        return EventReply(payload=None, state=None)

    def connected(self, hub: HubSettings, ctx: EventContext) -> None:
        self.connected_ids.append(ctx.connection_id)

    def disconnected(self, hub: HubSettings, ctx: EventContext, reason: str) -> None:
        self.ends.append((ctx, reason))
        self.ended.set()


def make_node(
    upstream: RecordingUpstream | None = None,
    *,
    anonymous: bool = False,
    window: float = 60.0,
    detached: DetachedSessions | None = None,
    reliable_max_bytes: int = 16 * 1024 * 1024,
) -> tuple[Node, RecordingUpstream]:
    up = upstream or RecordingUpstream()
    published: list[object] = []

    async def publish(command: object) -> None:
        published.append(command)

    ids = iter(f"c{i}" for i in range(1, 100))
    node = Node(
        hub_settings=lambda name: HubSettings(name=name, anonymous_connect=anonymous),
        upstream=up,  # type: ignore[arg-type]
        origin="localhost",
        publish=publish,  # type: ignore[arg-type]
        id_factory=lambda: next(ids),
        recovery_window=window,
        detached=detached,
        reliable_max_bytes=reliable_max_bytes,
    )
    return node, up


def identity(
    user: str | None = "alice", roles: Sequence[str] = (), groups: Sequence[str] = ()
) -> ClientIdentity:
    return ClientIdentity(user_id=user, roles=tuple(roles), groups=tuple(groups), claims={})


def offering(*subprotocols: str) -> ConnectRequest:
    return ConnectRequest(subprotocols=subprotocols)


def admission(protocol: ClientProtocol = ClientProtocol.JSON, **kw: object) -> Admission:
    values: dict[str, object] = {
        "hub": "chat",
        "connection_id": "c1",
        "user_id": "alice",
        "groups": (),
        "roles": (),
        "protocol": protocol,
        "subprotocol": protocol.value if protocol.is_json else None,
        "state": "",
    }
    values.update(kw)
    return Admission(**values)  # type: ignore[arg-type]


# -- admit -----------------------------------------------------------------------------


async def test_admit_refuses_anonymous_clients_unless_the_hub_allows_them() -> None:
    node, _ = make_node()
    with pytest.raises(Unauthorized):
        await node.admit(Handshake("Chat", None))
    open_node, _ = make_node(anonymous=True)
    adm = await open_node.admit(Handshake("Chat", None))
    assert (adm.hub, adm.user_id, adm.protocol) == ("chat", None, ClientProtocol.SIMPLE)


async def test_admit_negotiates_the_protobuf_subprotocols() -> None:
    node, _ = make_node()
    protobuf, reliable = "protobuf.webpubsub.azure.v1", "protobuf.reliable.webpubsub.azure.v1"
    adm = await node.admit(Handshake("chat", identity(), offering(protobuf)))
    assert (adm.protocol, adm.subprotocol) == (ClientProtocol.PROTOBUF, protobuf)
    adm = await node.admit(Handshake("chat", identity(), offering("chat.v1", reliable, JSON)))
    assert (adm.protocol, adm.subprotocol) == (ClientProtocol.PROTOBUF_RELIABLE, reliable)
    assert adm.protocol.is_reliable and not adm.protocol.is_json


async def test_admit_applies_the_connect_handlers_answer() -> None:
    decision = ConnectDecision(
        user_id="bob",
        user_id_set=True,
        groups=("g2",),
        roles=("webpubsub.sendToGroup",),
        subprotocol=RELIABLE,
        state="s1",
    )
    node, up = make_node(RecordingUpstream(decision))
    hs = Handshake(
        "chat",
        identity(groups=["g1"], roles=["webpubsub.joinLeaveGroup"]),
        ConnectRequest(query={"q": ["1"]}, subprotocols=(JSON, RELIABLE)),
    )
    adm = await node.admit(hs)
    assert adm.user_id == "bob"
    assert set(adm.groups) == {"g1", "g2"}  # added to the token's
    assert adm.roles == ("webpubsub.sendToGroup",)  # replacing the token's
    assert (adm.protocol, adm.subprotocol, adm.state) == (
        ClientProtocol.JSON_RELIABLE,
        RELIABLE,
        "s1",
    )
    assert up.connects[0].query == {"q": ["1"]}
    up.decision = ConnectDecision(subprotocol="not-offered")
    with pytest.raises(UpstreamError, match="did not offer"):
        await node.admit(hs)


# -- attach and detach -----------------------------------------------------------------


async def test_attach_sends_connected_first_joins_groups_and_fires_connected() -> None:
    node, up = make_node()
    sink = RecordingSink()
    conn = node.attach(admission(groups=("g",)), sink)
    assert sink.texts()[0] == {
        "type": "system",
        "event": "connected",
        "connectionId": "c1",
        "userId": "alice",
    }
    assert conn.groups == {"g"} and node.answer(Exists("chat", Target.group("g"))) is True
    assert up.connected_ids == ["c1"]


async def test_detach_of_a_plain_connection_ends_it_at_once() -> None:
    node, up = make_node()
    sink = RecordingSink()
    conn = node.attach(admission(), sink)
    node.detach(conn, sink, "The client closed the connection.", recoverable=True)
    assert node.answer(Exists("chat", Target.connection("c1"))) is False
    [(ctx, reason)] = up.ends
    assert (ctx.connection_id, reason) == ("c1", "The client closed the connection.")


async def test_a_reliable_connection_waits_for_recovery_then_ends() -> None:
    node, up = make_node(window=0.05)
    sink = RecordingSink()
    conn = node.attach(admission(ClientProtocol.JSON_RELIABLE), sink)
    node.detach(conn, sink, "The connection was lost.", recoverable=True)
    assert node.answer(Exists("chat", Target.connection("c1"))) is True  # in its window
    assert up.ends == []
    async with asyncio.timeout(5):
        await up.ended.wait()
    assert up.ends[0][1] == "The client did not reconnect in time."
    assert node.answer(Exists("chat", Target.connection("c1"))) is False


async def test_resume_refuses_with_a_reason_then_recovers_and_replays() -> None:
    node, _ = make_node()
    plain = node.attach(admission(connection_id="p1"), RecordingSink())
    sink = RecordingSink()
    conn = node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r1"), sink)
    token = conn.reconnection_token or ""
    node.apply(Send("chat", Target.connection("r1"), DataMessage(Payload.text("m1"))))
    assert node.resume("chat", "nope", token, (RELIABLE,), RecordingSink()) == (
        "The connection does not exist or has ended."
    )
    assert node.resume("chat", plain.connection_id, "x", (JSON,), RecordingSink()) == (
        "The connection is not reliable and cannot be recovered."
    )
    assert node.resume("chat", "r1", token + "x", (RELIABLE,), RecordingSink()) == (
        "The reconnection token is not valid."
    )
    assert node.resume("chat", "r1", token, (JSON,), RecordingSink()) == (
        "Recovery must use the connection's subprotocol."
    )
    fresh = RecordingSink()
    assert node.resume("chat", "r1", token, (RELIABLE,), fresh) is conn
    # The old transport is closed; the new one gets ``connected`` again (same id and
    # token: the JS client resumes its group streams on it), then the replay.
    assert sink.closed == [(1008, "The connection was recovered elsewhere.")]
    [connected, replayed] = fresh.frames
    assert b'"event":"connected"' in connected and b'"connectionId":"r1"' in connected
    assert token.encode() in connected
    assert b'"m1"' in replayed and b'"sequenceId":1' in replayed


# -- apply and answer ------------------------------------------------------------------


async def test_apply_and_answer_on_the_nodes_own_connections() -> None:
    node, _ = make_node()
    sinks = {name: RecordingSink() for name in ("a", "b")}
    node.attach(admission(ClientProtocol.SIMPLE, connection_id="a", user_id="u1"), sinks["a"])
    node.attach(admission(ClientProtocol.SIMPLE, connection_id="b", user_id="u2"), sinks["b"])
    node.apply(ChangeGroup("chat", Target.all(), GroupAction.ADD, ("g",), "userId eq 'u2'"))
    assert node.answer(ListGroup("chat", "g")) == (GroupMember("b", "u2"),)
    node.apply(Send("chat", Target.group("g"), DataMessage(Payload.text("hi"))))
    assert sinks["b"].frames and not sinks["a"].frames
    node.apply(Close("chat", Target.user("u1"), "bye"))
    assert sinks["a"].closed == [(1000, "bye")]
    assert node.answer(Exists("chat", Target.user("u1"))) is False  # closing: gone already
    node.apply(Send("other hub", Target.all(), DataMessage(Payload.text("x"))))  # ignored
    assert len(sinks["b"].frames) == 1


async def test_a_reaped_connection_gets_its_disconnected_event_from_this_node() -> None:
    node, up = make_node()
    node.reaped(ReapedConnection("chat", "dead1", "zoe", JSON, "st", "node-x"))
    [(ctx, reason)] = up.ends
    assert (ctx.connection_id, ctx.user_id, ctx.state, reason) == ("dead1", "zoe", "st", NODE_LOST)


# -- user events in flight ---------------------------------------------------------------


class HangingUpstream(RecordingUpstream):
    """User events hang until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.calls = 0
        self.called = asyncio.Event()

    async def user_event(
        self, hub: HubSettings, ctx: EventContext, name: str, payload: Payload
    ) -> EventReply:
        self.calls += 1
        self.called.set()
        await self.release.wait()
        return EventReply(payload=None, state=None)


async def test_messages_behind_an_event_at_a_handler_queue_in_order_and_are_bounded() -> None:
    up = HangingUpstream()
    node, _ = make_node(up)
    node.max_inflight_events = 3  # the event at the handler and two behind it
    sink = RecordingSink()
    conn = node.attach(admission(), sink)

    def event(ack_id: int | None) -> bytes:
        message = {"type": "event", "event": "e", "dataType": "text", "data": "x"}
        return orjson.dumps(message if ack_id is None else {**message, "ackId": ack_id})

    async with asyncio.timeout(5.0):
        for ack_id in (1, 2, 3):  # each returns at once: the reader reads on
            await node.receive(conn, event(ack_id))
        await up.called.wait()
        await node.receive(conn, event(4))  # past the bound: refused at once
        assert up.calls == 1  # the others wait behind the first, in order
        ack = sink.texts()[-1]
        assert ack["ackId"] == 4 and ack["success"] is False
        assert "in flight" in str(ack["error"])
        no_ack_id = asyncio.create_task(node.receive(conn, event(None)))  # cannot be refused
        await asyncio.sleep(0)  # let it run up to its wait for room (not a synchronisation)
        assert not no_ack_id.done()
        up.release.set()
        await no_ack_id
        await node.settle(conn)
    assert [t.get("ackId") for t in sink.texts()[-3:]] == [1, 2, 3]
    assert up.calls == 4
    await node.receive(conn, event(5))  # room again
    await node.settle(conn)
    assert sink.texts()[-1] == {"type": "ack", "ackId": 5, "success": True}


async def test_a_ping_behind_an_event_at_a_handler_is_answered_at_once() -> None:
    """A client's ``ping`` does not wait behind its event at a slow handler (the JS
    client takes 120 s without an answer for a dead connection); the event's ack and
    the requests behind it keep their order."""
    up = HangingUpstream()
    node, _ = make_node(up)
    sink = RecordingSink()
    conn = node.attach(admission(), sink)
    event = {"type": "event", "event": "e", "dataType": "text", "data": "x", "ackId": 1}
    async with asyncio.timeout(5.0):
        await node.receive(conn, orjson.dumps(event))
        await up.called.wait()
        await node.receive(conn, orjson.dumps({**event, "ackId": 2}))  # waits behind it
        await node.receive(conn, b'{"type":"ping"}')
        assert sink.texts()[-1] == {"type": "pong"}  # while the handler still holds 1
        up.release.set()
        await node.settle(conn)
    assert [t.get("ackId") for t in sink.texts()[-2:]] == [1, 2]


async def test_messages_queued_behind_an_event_are_bounded_in_bytes_too() -> None:
    """At most ``backlog_max_bytes`` wait behind an event (one message always may): a
    larger backlog would hold full-size messages the socket would otherwise keep."""
    up = HangingUpstream()
    node, _ = make_node(up)
    node.backlog_max_bytes = 1000
    conn = node.attach(admission(ClientProtocol.SIMPLE), RecordingSink())  # message events
    async with asyncio.timeout(5.0):
        await node.receive(conn, b"head")
        await up.called.wait()
        await node.receive(conn, b"x" * 900)  # queued
        over = asyncio.create_task(node.receive(conn, b"y" * 200))  # 1100 bytes: waits
        await asyncio.sleep(0)  # let it run up to its wait for room (not a synchronisation)
        assert not over.done()
        up.release.set()
        await over
        await node.settle(conn)
    assert up.calls == 3


async def test_settle_does_not_wait_for_the_handler_of_a_connection_the_service_closed() -> None:
    """Shutdown closes the clients: their ``disconnected`` is not held up by an event a
    handler keeps (the handler may never answer before the queue closes)."""
    up = HangingUpstream()
    node, _ = make_node(up)
    conn = node.attach(admission(ClientProtocol.SIMPLE), RecordingSink())
    await node.receive(conn, b"held")
    async with asyncio.timeout(5.0):
        await up.called.wait()
        conn.close(1001, "The service is shutting down.")
        await node.settle(conn)  # at once
    up.release.set()


async def test_a_connection_attached_after_close_all_is_closed_at_once() -> None:
    """A handshake whose ``connect`` handler answered while the service was stopping."""
    node, _ = make_node()
    node.close_all(1001, "The service is shutting down.")
    sink = RecordingSink()
    node.attach(admission(), sink)
    assert sink.closed == [(1001, "The service is shutting down.")]


# -- recovery: paced replay and the bounds of detached connections ---------------------


class PacedSink(RecordingSink):
    """A sink whose transport drains only when the test lets it."""

    def __init__(self) -> None:
        super().__init__()
        self._drain = asyncio.Event()
        self._offered = asyncio.Event()

    def offer(self, frame: bytes) -> None:
        super().offer(frame)
        self._offered.set()

    async def drained(self) -> None:
        await self._drain.wait()
        self._drain.clear()

    async def let_drain_until(self, count: int) -> None:
        """Let the transport drain until ``count`` frames were offered (bounded)."""
        async with asyncio.timeout(5):
            while len(self.frames) < count:
                self._offered.clear()
                self._drain.set()
                await self._offered.wait()

    def sequence_ids(self) -> list[object]:
        """Of the data messages (the ``connected`` a recovery sends first has none)."""
        return [t.get("sequenceId") for t in self.texts() if t.get("event") != "connected"]


def send(node: Node, text: str, target: Target | None = None) -> None:
    node.apply(Send("chat", target or Target.connection("r1"), DataMessage(Payload.text(text))))


async def test_a_replay_goes_a_chunk_per_drain_and_new_data_queues_behind_it() -> None:
    node, _ = make_node()
    sink = RecordingSink()
    conn = node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r1"), sink)
    for n in range(1, 4):
        send(node, f"{n}" * 40_000)  # 40 kB each: two fill a 64 KiB chunk
    node.detach(conn, sink, "lost", recoverable=True)
    fresh = PacedSink()
    assert node.resume("chat", "r1", conn.reconnection_token or "", (RELIABLE,), fresh) is conn
    assert fresh.sequence_ids() == [1, 2]  # the first chunk at once
    send(node, "during")  # behind the replay, not before its rest
    assert fresh.sequence_ids() == [1, 2]
    await fresh.let_drain_until(4)
    assert fresh.sequence_ids() == [1, 2, 3, 4]
    assert fresh.texts()[-1]["data"] == "during"
    send(node, "after")  # caught up: straight to the sink
    assert fresh.sequence_ids() == [1, 2, 3, 4, 5]


async def test_a_replay_skips_what_is_acknowledged_meanwhile_and_stops_on_a_new_recovery() -> None:
    node, _ = make_node()
    sink = RecordingSink()
    conn = node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r1"), sink)
    for n in range(1, 6):
        send(node, f"{n}" * 40_000)
    node.detach(conn, sink, "lost", recoverable=True)
    token = conn.reconnection_token or ""
    first = PacedSink()
    node.resume("chat", "r1", token, (RELIABLE,), first)
    assert first.sequence_ids() == [1, 2]
    assert conn.reliable is not None
    conn.reliable.ack(3)  # the client had 3 already
    await first.let_drain_until(4)
    assert first.sequence_ids() == [1, 2, 4, 5]
    second = PacedSink()  # the client recovers again: all unacknowledged, from the start
    node.resume("chat", "r1", token, (RELIABLE,), second)
    assert second.sequence_ids() == [4, 5]
    assert first.closed == [(1008, "The connection was recovered elsewhere.")]


async def test_detached_connections_over_the_service_bound_end_oldest_first() -> None:
    node, up = make_node(detached=DetachedSessions(max_bytes=250_000, user_max_bytes=10**9))
    sinks = {}
    for cid, user in (("r1", "u1"), ("r2", "u2"), ("r3", None)):
        sinks[cid] = RecordingSink()
        conn = node.attach(
            admission(ClientProtocol.JSON_RELIABLE, connection_id=cid, user_id=user), sinks[cid]
        )
        node.detach(conn, sinks[cid], "lost", recoverable=True)
    live = node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r4"), RecordingSink())
    send(node, "x" * 50_000, Target.all())  # 150 kB held: fits
    assert up.ends == []
    send(node, "y" * 50_000, Target.all())  # 300 kB: the oldest (r1) ends
    [(ctx, reason)] = up.ends
    assert ctx.connection_id == "r1" and "all detached connections" in reason
    assert node.answer(Exists("chat", Target.connection("r1"))) is False
    assert all(node.answer(Exists("chat", Target.connection(c))) for c in ("r2", "r3", "r4"))
    assert live.reliable is not None and len(live.reliable) == 2  # live ones do not count


async def test_one_budget_covers_the_unacknowledged_frames_and_what_the_transport_holds() -> None:
    node, _ = make_node(reliable_max_bytes=200_000)
    sink = RecordingSink()
    node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r1"), sink)
    send(node, "a" * 60_000)
    send(node, "b" * 60_000)  # 120 kB unacknowledged: within the budget
    sink.buffered_bytes = 70_000  # the client reads slowly: copies wait in the transport
    send(node, "c" * 60_000)  # 180 kB + 70 kB held > 200 kB
    assert sink.closed == [(1008, sink.closed[0][1])]
    assert "Too many unacknowledged messages" in sink.closed[0][1]
    assert [t.get("sequenceId") for t in sink.texts()[1:]] == [1, 2, None]  # then disconnected


async def test_data_queued_behind_a_replay_is_bounded_by_the_same_budget() -> None:
    node, _ = make_node(reliable_max_bytes=210_000)
    sink = RecordingSink()
    conn = node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r1"), sink)
    for n in range(1, 4):
        send(node, f"{n}" * 40_000)
    node.detach(conn, sink, "lost", recoverable=True)
    fresh = PacedSink()  # a client that does not read: the replay stalls after a chunk
    node.resume("chat", "r1", conn.reconnection_token or "", (RELIABLE,), fresh)
    send(node, "4" * 40_000)  # 160 kB held
    assert not fresh.closed
    send(node, "5" * 40_000)  # 200 kB: within the budget
    assert not fresh.closed
    send(node, "6" * 40_000)
    [(code, reason)] = fresh.closed
    assert code == 1008 and "210000 bytes" in reason
    assert fresh.sequence_ids() == [1, 2, None]  # then disconnected: the rest never goes
    assert fresh.texts()[-1]["event"] == "disconnected"


# -- group streams -----------------------------------------------------------------------


async def test_a_fragment_the_backplane_refuses_ends_its_stream_internal_server_error() -> None:
    """The backplane fails a fragment's publish: the stream ends (the JS client would not
    send the fragment again on a nack: the rest would be lost unseen), the publisher
    told ``InternalServerError``; the terminal message is tried for the subscribers, and
    a fragment sent later is answered with the same reason."""
    attempts: list[object] = []
    second = asyncio.Event()

    async def publish(command: object) -> None:
        attempts.append(command)
        if len(attempts) == 1:
            raise ServiceUnavailable("Redis is unreachable.")
        second.set()

    node = Node(
        hub_settings=lambda name: HubSettings(name=name),
        upstream=RecordingUpstream(),  # type: ignore[arg-type]
        origin="localhost",
        publish=publish,  # type: ignore[arg-type]
        id_factory=lambda: "c1",
    )
    sink = RecordingSink()
    conn = node.attach(admission(roles=("webpubsub.sendToGroup",)), sink)
    start = {"type": "sendToGroup", "group": "g", "stream": {"streamId": "s"}}
    await node.receive(conn, json.dumps(start))
    fragment = {"type": "streamData", "streamId": "s", "streamSequenceId": 1}
    fragment |= {"dataType": "text", "data": "abc"}
    await node.receive(conn, json.dumps(fragment))
    *_, opened, closed = sink.texts()
    assert opened == {"type": "streamAck", "streamId": "s", "expectedSequenceId": 1}
    error = {
        "name": "InternalServerError",
        "message": "The service could not publish the fragment: Redis is unreachable.",
    }
    assert closed == {"type": "streamClosed", "streamId": "s", "error": error}
    assert conn.streams.get("s") is None
    async with asyncio.timeout(5):
        await second.wait()  # the terminal message, from the background
    terminal = attempts[1]
    assert isinstance(terminal, Send) and terminal.message.stream is not None
    assert terminal.message.stream.end and terminal.message.stream.error is not None
    assert terminal.message.stream.error.name == "InternalServerError"
    await node.receive(conn, json.dumps({**fragment, "streamSequenceId": 2}))
    assert sink.texts()[-1] == {"type": "streamClosed", "streamId": "s", "error": error}


def stream_fragment(n: int) -> str:
    return json.dumps(
        {"type": "streamData", "streamId": "s", "streamSequenceId": n}
        | {"dataType": "text", "data": f"f{n}"}
    )


STREAM_START = json.dumps({"type": "sendToGroup", "group": "g", "stream": {"streamId": "s"}})


async def test_a_recovered_transport_waits_for_the_frame_its_old_one_is_handling() -> None:
    """A reliable publisher recovers while its old transport's fragment 1 is still being
    published (a slow backplane): the new transport's frames (1 again, then 2) wait for
    it, so fragments are published once and in order, and acknowledged in order."""
    gate = asyncio.Event()
    published: list[int] = []

    async def publish(command: Send) -> None:
        stream = command.message.stream
        assert stream is not None
        if stream.sequence_id == 1 and not published:
            await gate.wait()  # the backplane is slow
        published.append(stream.sequence_id)

    node = Node(
        hub_settings=lambda name: HubSettings(name=name),
        upstream=RecordingUpstream(),  # type: ignore[arg-type]
        origin="localhost",
        publish=publish,  # type: ignore[arg-type]
        id_factory=lambda: "r1",
    )
    conn = node.attach(
        admission(ClientProtocol.JSON_RELIABLE, connection_id="r1", roles=SENDS), RecordingSink()
    )
    await node.receive(conn, STREAM_START)
    old_reader = asyncio.create_task(node.receive(conn, stream_fragment(1)))
    await asyncio.sleep(0)  # fragment 1 is being published (the stimulus: one loop turn)
    new = RecordingSink()
    assert node.resume("chat", "r1", conn.reconnection_token or "", (RELIABLE,), new) is conn
    replay = asyncio.create_task(node.receive(conn, stream_fragment(1)))
    going_on = asyncio.create_task(node.receive(conn, stream_fragment(2)))
    await asyncio.sleep(0)
    assert published == [] and not replay.done() and not going_on.done()  # they wait
    gate.set()
    async with asyncio.timeout(5):
        await asyncio.gather(old_reader, replay, going_on)
    assert published == [1, 2]
    acks = [f["expectedSequenceId"] for f in new.texts() if f.get("type") == "streamAck"]
    assert acks == [2, 2, 3]  # fragment 1's (on the new transport), the duplicate's, 2's


async def test_a_handover_during_a_fragments_publish_moves_the_stream_from_that_fragment() -> None:
    """Handed over while fragment 1 is being published: the session says the other node
    expects fragment 1 (the client sends it again, unacknowledged), not 2: at least
    once, never lost."""
    gate = asyncio.Event()

    async def publish(command: Send) -> None:
        await gate.wait()
        raise ServiceUnavailable("Redis timed out.")

    sessions: list[SessionState] = []

    class Port:
        async def take_over(self, *args: object, **kwargs: object) -> None:
            return None

        def hand_over(self, to_node: str, request_id: str, session: object, *rest: object) -> None:
            assert isinstance(session, SessionState)
            sessions.append(session)

    node = Node(
        hub_settings=lambda name: HubSettings(name=name),
        upstream=RecordingUpstream(),  # type: ignore[arg-type]
        origin="localhost",
        publish=publish,  # type: ignore[arg-type]
        id_factory=lambda: "r1",
        handover=Port(),  # type: ignore[arg-type]
        node_id="a",
    )
    conn = node.attach(
        admission(ClientProtocol.JSON_RELIABLE, connection_id="r1", roles=SENDS), RecordingSink()
    )
    await node.receive(conn, STREAM_START)
    reader = asyncio.create_task(node.receive(conn, stream_fragment(1)))
    await asyncio.sleep(0)
    token = conn.reconnection_token or ""
    node.apply(Handover("chat", "r1", token, (RELIABLE,), "b", "rq1"))
    gate.set()
    async with asyncio.timeout(5):
        await reader
    [session] = sessions
    [moved] = session.streams
    assert (moved.stream_id, moved.expected) == ("s", 1)
