"""The node tells its observer what happens: connections, frames by kind, one report per
fan-out with its number of recipients, close codes, detach and recovery; an observer
that fails is logged and never the node's problem."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.node.test_node import (
    RELIABLE,
    RecordingSink,
    RecordingUpstream,
    admission,
    make_node,
)
from webpubsub.core.connection import Connection
from webpubsub.core.permissions import Permissions
from webpubsub.node import observe
from webpubsub.node.node import Node
from webpubsub.node.observe import (
    RECEIVED_KINDS,
    Exchange,
    Observers,
    RestCall,
)
from webpubsub.protocol.backplane import (
    Handover,
    Send,
    SessionState,
    Target,
    decode_session,
    encode_session,
)
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse
from webpubsub.protocol.frames import ClientProtocol, DataMessage
from webpubsub.protocol.payload import Payload


class Recorder:
    """An observer that writes down every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def connected(self, conn: Connection) -> None:
        self.calls.append(("connected", conn.connection_id))

    def disconnected(self, conn: Connection, code: int | None, reason: str) -> None:
        self.calls.append(("disconnected", conn.connection_id, code, reason))

    def detached(self, conn: Connection, reason: str) -> None:
        self.calls.append(("detached", conn.connection_id, reason))

    def recovered(self, conn: Connection) -> None:
        self.calls.append(("recovered", conn.connection_id))

    def received(self, conn: Connection, data: bytes | str, kind: str) -> None:
        self.calls.append(("received", conn.connection_id, kind))

    def delivered(self, hub: str, target: Target, message: DataMessage, recipients: int) -> None:
        self.calls.append(("delivered", hub, target.scope.value, recipients))

    def replied(self, conn: Connection, message: DataMessage) -> None:
        self.calls.append(("replied", conn.connection_id))

    def rest_call(self, call: RestCall) -> None:
        self.calls.append(("rest", call.operation, call.status))

    def cloud_event(self, exchange: Exchange) -> None:
        self.calls.append(("cloud_event", exchange.event_type, exchange.outcome))

    def slow_client(self, conn: Connection) -> None:
        self.calls.append(("slow", conn.connection_id))

    def published(self, duration: float, error: str | None) -> None:
        self.calls.append(("published", error))

    def moved(self, conn: Connection, to_node: str) -> None:
        self.calls.append(("moved", conn.connection_id, to_node))

    def adopted(self, conn: Connection, from_node: str | None) -> None:
        self.calls.append(("adopted", conn.connection_id, from_node))

    def refused(self, hub: str | None, status: int, reason: str) -> None:
        self.calls.append(("refused", hub, status))


def observed_node(window: float = 60.0) -> tuple[Recorder, Node]:
    recorder, node, _ = observed(window)
    return recorder, node


def observed(window: float) -> tuple[Recorder, Node, RecordingUpstream]:
    node, up = make_node(window=window)
    recorder = Recorder()
    node.observer = Observers([recorder])
    return recorder, node, up


async def test_connections_frames_and_fan_outs_are_reported_once_each() -> None:
    recorder, node = observed_node()
    sinks = [RecordingSink() for _ in range(3)]
    conns = [
        node.attach(
            admission(connection_id=f"c{i}", user_id=f"u{i}", roles=("webpubsub.joinLeaveGroup",)),
            sink,
        )
        for i, sink in enumerate(sinks)
    ]
    await node.receive(conns[0], '{"type":"joinGroup","group":"g","ackId":1}')
    await node.receive(conns[1], '{"type":"joinGroup","group":"g"}')
    await node.receive(conns[0], '{"type":"ping"}')
    await node.receive(conns[0], "not json")
    node.apply(Send("chat", Target.all(), DataMessage(Payload.text("hi"))))
    assert recorder.calls == [
        ("connected", "c0"),
        ("connected", "c1"),
        ("connected", "c2"),
        ("received", "c0", "group"),
        ("received", "c1", "group"),
        ("received", "c0", "control"),
        ("received", "c0", "invalid"),
        # c0 closes on the invalid frame (1008): the fan-out reaches the other two
        ("delivered", "chat", "all", 2),
    ]
    assert conns[0].close_code == 1008
    assert [c.messages_in for c in conns] == [3, 1, 0]
    assert [c.messages_out for c in conns] == [0, 1, 1]
    assert {kind for *_, kind in recorder.calls[3:7]} <= set(RECEIVED_KINDS)


async def test_the_close_code_is_the_services_or_else_the_clients() -> None:
    recorder, node = observed_node()
    served, closed = RecordingSink(), RecordingSink()
    a = node.attach(admission(connection_id="a"), served)
    b = node.attach(admission(connection_id="b"), closed)
    a.close(4000, "bye")
    node.detach(a, served, "ignored", recoverable=False, code=1000)
    node.detach(b, closed, "The client closed the connection.", recoverable=False, code=3001)
    assert [c for c in recorder.calls if c[0] == "disconnected"] == [
        ("disconnected", "a", 4000, "bye"),
        ("disconnected", "b", 3001, "The client closed the connection."),
    ]


async def test_a_reliable_connection_is_reported_detached_then_recovered() -> None:
    recorder, node, up = observed(window=0.05)
    sink = RecordingSink()
    conn = node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r"), sink)
    node.detach(conn, sink, "The connection was lost.", recoverable=True, code=1006)
    token = conn.reconnection_token or ""
    assert node.resume("chat", "r", token, (RELIABLE,), RecordingSink()) is conn
    assert recorder.calls[1:] == [
        ("detached", "r", "The connection was lost."),
        ("recovered", "r"),
    ]
    assert conn.close_code is None  # it did not end: the transport's code is forgotten
    node.detach(conn, conn.sink, "lost again", recoverable=True, code=4000)  # type: ignore[arg-type]
    async with asyncio.timeout(5):  # the recovery window passes
        await up.ended.wait()
    assert recorder.calls[-1] == (
        "disconnected",
        "r",
        4000,
        "The client did not reconnect in time.",
    )


async def test_an_observer_that_raises_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Recorder):
        def delivered(self, *args: object) -> None:
            raise RuntimeError("boom")

    node, _ = make_node()
    after = Recorder()
    node.observer = Observers([Broken(), after])
    sink = RecordingSink()
    node.attach(admission(connection_id="x"), sink)
    with caplog.at_level(logging.ERROR, "webpubsub.observe"):
        node.apply(Send("chat", Target.all(), DataMessage(Payload.text("hi"))))
    assert sink.frames  # delivered all the same
    assert ("delivered", "chat", "all", 1) in after.calls
    assert "an observer failed" in caplog.text


async def test_an_observer_failing_on_disconnect_does_not_skip_the_webhook() -> None:
    class Broken(Recorder):
        def disconnected(self, *args: object) -> None:
            raise RuntimeError("boom")

    node, up = make_node()
    node.observer = Observers([Broken()])  # the only type Node.observer takes
    sink = RecordingSink()
    conn = node.attach(admission(connection_id="x"), sink)
    node.detach(conn, sink, "bye", recoverable=False, code=1000)
    assert up.ended.is_set() and node.hub("chat") is None


def test_a_failing_observer_is_logged_with_its_traceback_once_then_once_a_minute(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the hot path an observer may fail on every frame: the first failure of each
    observer method is logged with its traceback, the rest as one line a minute with
    their count; the state kept is bounded."""
    now = [1000.0]
    monkeypatch.setattr(observe, "_failures", observe.FailureLog(clock=lambda: now[0]))

    class Broken(Recorder):
        def delivered(self, *args: object) -> None:
            raise RuntimeError("boom")

        def replied(self, *args: object) -> None:
            raise ValueError("bang")

    observers = Observers([Broken()])
    message = DataMessage(Payload.text("hi"))
    with caplog.at_level(logging.ERROR, "webpubsub.observe"):
        for _ in range(1000):
            observers.delivered("chat", Target.all(), message, 1)
        first = list(caplog.records)
        now[0] += 30
        observers.delivered("chat", Target.all(), message, 1)
        assert len(caplog.records) == 1  # nothing new within the minute
        observers.replied(None, message)  # type: ignore[arg-type]
        now[0] += 31
        observers.delivered("chat", Target.all(), message, 1)
    assert len(first) == 1 and first[0].exc_info is not None
    assert "Broken.delivered" in first[0].getMessage()
    replied, summary = caplog.records[1:]
    assert replied.exc_info is not None and "Broken.replied" in replied.getMessage()
    assert summary.exc_info is None
    assert "Broken.delivered" in summary.getMessage() and "1001 more times" in summary.getMessage()
    assert "RuntimeError: boom" in summary.getMessage()
    for i in range(observe.MAX_FAILING_METHODS * 2):  # many distinct failing methods
        observe._failures.failed(f"Observer{i}.connected", RuntimeError("x"))
    assert len(observe._failures) <= observe.MAX_FAILING_METHODS + 1


def test_an_exchange_names_its_event_type_and_outcome() -> None:
    def exchange(status: int | None, error: str | None = None, method: str = "POST") -> Exchange:
        headers = (("ce-type", "azure.webpubsub.sys.connected"),) if method == "POST" else ()
        request = UpstreamRequest(method, "http://127.0.0.1/h", headers, b"")
        response = None if status is None else UpstreamResponse(status, (), b"")
        return Exchange(request, response, error, 0.01)

    assert exchange(204).event_type == "azure.webpubsub.sys.connected"
    assert exchange(200, method="OPTIONS").event_type == "validation"
    assert [exchange(s).outcome for s in (200, 204, 401, 500, 302)] == [
        "success",
        "success",
        "rejected",
        "failed",
        "failed",
    ]
    request = UpstreamRequest("POST", "http://127.0.0.1/h", (), b"")
    timed_out = Exchange(request, None, "POST http://127.0.0.1/h: too slow", 1.0, timed_out=True)
    assert timed_out.outcome == "timeout"  # from the flag the transport sets, not the text
    # a handler's own error text that happens to say "no answer" is no timeout
    assert (
        exchange(None, "POST http://127.0.0.1/h: 'no answer' said the handler").outcome == "error"
    )
    assert exchange(None, "POST http://127.0.0.1/h: cannot connect (refused)").outcome == "error"
    assert not Observers() and Observers([Recorder()])


class PairedHandover:
    """The handover port of two nodes in one process: ``take_over`` publishes the
    Handover to the other node, whose answer is adopted here at once."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.peer: PairedHandover | None = None
        self._adopt: dict[str, Callable[[SessionState], None]] = {}
        self.lost = False
        """Drop the state sent (no node takes it: the owner keeps the connection)."""

    async def take_over(
        self,
        hub: str,
        connection_id: str,
        token: str,
        subprotocols: tuple[str, ...],
        adopt: Callable[[SessionState], None],
    ) -> str | None:
        assert self.peer is not None
        self._adopt["rq"] = adopt
        self.peer.node.apply(
            Handover(hub, connection_id, token, subprotocols, self.node.node_id, "rq")
        )
        return None

    def hand_over(
        self,
        to_node: str,
        request_id: str,
        session: SessionState | str,
        undelivered: Callable[[], None] | None = None,
    ) -> None:
        assert self.peer is not None and isinstance(session, SessionState)
        if self.lost:
            assert undelivered is not None
            undelivered()
            return
        _, sent = decode_session(encode_session(request_id, session))  # as on the wire
        assert isinstance(sent, SessionState)
        self.peer._adopt.pop(request_id)(sent)


def paired_nodes() -> tuple[tuple[Recorder, Node], tuple[Recorder, Node]]:
    (old_rec, old), (new_rec, new) = observed_node(), observed_node()
    old.node_id, new.node_id = "a", "b"
    ports = PairedHandover(old), PairedHandover(new)
    ports[0].peer, ports[1].peer = ports[1], ports[0]
    old._handover, new._handover = ports  # type: ignore[assignment]
    return (old_rec, old), (new_rec, new)


async def test_a_handover_is_reported_as_moved_by_one_node_and_adopted_by_the_other() -> None:
    (old_rec, old), (new_rec, new) = paired_nodes()
    sink = RecordingSink()
    conn = old.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r"), sink)
    old.detach(conn, sink, "The connection was lost.", recoverable=True, code=1006)
    token = conn.reconnection_token or ""
    moved = await new.recover("chat", "r", token, (RELIABLE,), RecordingSink())
    assert isinstance(moved, Connection) and moved is not conn
    assert old_rec.calls == [
        ("connected", "r"),
        ("detached", "r", "The connection was lost."),
        ("moved", "r", "b"),  # it left this node, it did not end: no disconnected
    ]
    assert new_rec.calls == [("adopted", "r", "a"), ("recovered", "r")]
    assert not old.hubs() and [len(h) for h in new.hubs()] == [1]


async def test_a_handover_keeps_when_the_connection_began_and_its_counts() -> None:
    """The portal shows a moved connection as connected since it began, with its
    messages in and out so far: the handover carries them."""
    (_, old), (_, new) = paired_nodes()
    sink = RecordingSink()
    conn = old.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r"), sink)
    conn.connected_at, conn.messages_in, conn.messages_out = 1_700_000_000.5, 7, 3
    old.detach(conn, sink, "The connection was lost.", recoverable=True, code=1006)
    moved = await new.recover("chat", "r", conn.reconnection_token or "", (RELIABLE,), sink)
    assert isinstance(moved, Connection)
    assert (moved.connected_at, moved.messages_in, moved.messages_out) == (1_700_000_000.5, 7, 3)


async def test_a_handover_no_node_took_is_adopted_back_by_its_owner() -> None:
    (old_rec, old), (new_rec, _) = paired_nodes()
    old._handover.lost = True  # type: ignore[union-attr]
    sink = RecordingSink()
    conn = old.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r"), sink)
    old.apply(Handover("chat", "r", conn.reconnection_token or "", (RELIABLE,), "b", "rq"))
    # out and back in on the same node: connects - disconnects still counts it once
    assert old_rec.calls == [("connected", "r"), ("moved", "r", "b"), ("adopted", "r", None)]
    assert [len(h) for h in old.hubs()] == [1] and new_rec.calls == []


def _reference_ce(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in headers:
        if key[:3].lower() == "ce-":
            found.setdefault(key.lower(), value)
    return found


NAMES = st.sampled_from(
    ["ce-type", "CE-TYPE", "Ce-Id", "ce-id", "ce-userId", "ce-connectionId", "cE-hub",
     "Content-Type", "WebHook-Request-Origin", "ce-", "c", "ce", "x-ce-type"]
) | st.text(max_size=8)  # fmt: skip


@given(st.lists(st.tuples(NAMES, st.text(max_size=5)), max_size=20).map(tuple))
def test_an_exchange_reads_its_ce_headers_by_lower_cased_name_the_first_of_each(
    headers: tuple[tuple[str, str], ...],
) -> None:
    request = UpstreamRequest("POST", "http://127.0.0.1/h", headers, b"")
    exchange = Exchange(request, None, "refused", 0.1)
    assert observe.ce_headers(headers) == _reference_ce(headers) == exchange.ce
    ce_type = _reference_ce(headers).get("ce-type")
    assert exchange.event_type == (ce_type if ce_type is not None else "unknown")


def test_an_exchange_reads_its_headers_once_for_every_observer() -> None:
    headers = (("ce-type", "azure.webpubsub.user.x"), ("ce-id", "1"))
    exchange = Exchange(UpstreamRequest("POST", "http://h/", headers, b""), None, "e", 0.1)
    assert exchange.ce is exchange.ce  # read once, kept
    other = dataclasses.replace(exchange, request=UpstreamRequest("POST", "http://h/", (), b""))
    assert other.ce == {} and other.event_type == "unknown"  # a new exchange reads its own
    assert exchange == dataclasses.replace(exchange)  # (not part of what it equals)


def test_an_observer_without_a_method_is_not_told_of_that_event() -> None:
    seen: list[str] = []

    class Listener:
        def cloud_event(self, exchange: Exchange) -> None:
            seen.append(exchange.event_type)

    observers = Observers([Listener(), Recorder()])  # type: ignore[list-item]
    conn = Connection("c", "chat", None, ClientProtocol.SIMPLE, None, None, Permissions())
    observers.received(conn, "hi", "message")  # Listener has no received: skipped
    observers.connected(conn)
    request = UpstreamRequest("POST", "http://h/", (("ce-type", "t"),), b"")
    observers.cloud_event(Exchange(request, None, "e", 0.1))
    assert seen == ["t"]
    assert observers.all[1].calls[:2] == [  # type: ignore[attr-defined]
        ("received", "c", "message"),
        ("connected", "c"),
    ]


def test_the_services_observers_implement_every_observer_method() -> None:
    """``Observers`` skips a method an observer lacks: the two the service runs must
    lack none (a misspelt method would otherwise go unheard)."""
    from webpubsub.node.observe import Observer
    from webpubsub.server.metrics import Metrics
    from webpubsub.server.trace import TraceRing

    wanted = {n for n in vars(Observer) if not n.startswith("_")}
    assert {"connected", "cloud_event", "rest_call", "published"} <= wanted
    for cls in (Metrics, TraceRing):
        missing = {n for n in wanted if not callable(getattr(cls, n, None))}
        assert not missing, f"{cls.__name__} lacks {sorted(missing)}"
