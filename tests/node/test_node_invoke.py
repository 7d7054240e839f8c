"""Invocations (``invoke`` / ``cancelInvocation``) in the node, below the socket layer:
a scripted event handler whose every call waits until the test answers it."""

from __future__ import annotations

import asyncio

import orjson

from tests.node.test_node import (
    RELIABLE,
    RecordingSink,
    RecordingUpstream,
    admission,
    make_node,
)
from webpubsub.core.connection import Connection
from webpubsub.core.settings import HubSettings
from webpubsub.errors import NoEventHandler, UpstreamError
from webpubsub.node.node import Node
from webpubsub.protocol.cloudevents import EventContext, EventReply
from webpubsub.protocol.frames import ClientProtocol
from webpubsub.protocol.payload import DataType, Payload


class ScriptedUpstream(RecordingUpstream):
    """Each user event waits for its future; records the calls and the cancelled ones."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Payload, asyncio.Future[EventReply]]] = []
        self.cancelled: list[str] = []
        self.changed = asyncio.Event()

    async def user_event(
        self, hub: HubSettings, ctx: EventContext, name: str, payload: Payload
    ) -> EventReply:
        answer: asyncio.Future[EventReply] = asyncio.get_running_loop().create_future()
        self.calls.append((name, payload, answer))
        self.changed.set()
        try:
            return await answer
        except asyncio.CancelledError:
            self.cancelled.append(name)
            self.changed.set()
            raise

    async def call_count(self, count: int) -> None:
        while len(self.calls) < count:  # bounded by the test's timeout
            self.changed.clear()
            await self.changed.wait()

    async def cancel_count(self, count: int) -> None:
        while len(self.cancelled) < count:
            self.changed.clear()
            await self.changed.wait()


def invoke(invocation_id: str, event: str = "add", data: object = None) -> bytes:
    frame: dict[str, object] = {
        "type": "invoke",
        "invocationId": invocation_id,
        "target": "event",
        "event": event,
    }
    if data is not None:
        frame |= {"dataType": "json", "data": data}
    return orjson.dumps(frame)


def sent(sink: RecordingSink) -> list[dict[str, object]]:
    """What the connection was sent after its ``connected`` message."""
    return [t for t in sink.texts() if t.get("type") != "system"]


def failure(invocation_id: str, name: str, message: str) -> dict[str, object]:
    """A failed ``invokeResponse``."""
    return {
        "type": "invokeResponse",
        "invocationId": invocation_id,
        "success": False,
        "error": {"name": name, "message": message},
    }


def cancel(invocation_id: str) -> bytes:
    return orjson.dumps({"type": "cancelInvocation", "invocationId": invocation_id})


def setup(
    *, reliable: bool = False, **node_attrs: int
) -> tuple[Node, ScriptedUpstream, RecordingSink, Connection]:
    """A node with ``node_attrs`` set and one connection (``r1`` when ``reliable``)."""
    up = ScriptedUpstream()
    node, _ = make_node(up)
    for name, value in node_attrs.items():
        setattr(node, name, value)
    sink = RecordingSink()
    if reliable:
        conn = node.attach(admission(ClientProtocol.JSON_RELIABLE, connection_id="r1"), sink)
    else:
        conn = node.attach(admission(), sink)
    return node, up, sink, conn


async def test_the_handlers_reply_is_the_invoke_response_not_a_message() -> None:
    up = ScriptedUpstream()
    node, _ = make_node(up)
    sink = RecordingSink()
    conn = node.attach(admission(), sink)
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1", "add", {"a": 1, "b": 2}))
        await up.call_count(1)
        name, payload, answer = up.calls[0]
        assert (name, payload) == ("add", Payload(DataType.JSON, b'{"a":1,"b":2}'))
        answer.set_result(EventReply(Payload(DataType.JSON, b'{"sum":3}'), state="s1"))
        await node.settle(conn)
    assert sent(sink) == [
        {
            "type": "invokeResponse",
            "invocationId": "1",
            "success": True,
            "dataType": "json",
            "data": {"sum": 3},
        }
    ]
    assert conn.state == "s1"  # the handler's state applies, as for a user event


async def test_a_reply_without_a_body_is_a_success_without_data() -> None:
    node, up, sink, conn = setup()
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1", "nothing"))
        await up.call_count(1)
        assert up.calls[0][1] == Payload(DataType.BINARY, b"")
        up.calls[0][2].set_result(EventReply(None, None))
        await node.settle(conn)
    assert sent(sink) == [{"type": "invokeResponse", "invocationId": "1", "success": True}]


async def test_a_failing_or_missing_handler_is_a_failed_response() -> None:
    node, up, sink, conn = setup()
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await node.receive(conn, invoke("2"))
        await up.call_count(1)
        up.calls[0][2].set_exception(UpstreamError("http://h/ answered 500", status=500))
        await up.call_count(2)
        up.calls[1][2].set_exception(NoEventHandler("add"))
        await node.settle(conn)
    assert sent(sink) == [
        failure("1", "InternalServerError", "The event handler failed (status 500)."),
        failure("2", "InternalServerError", "No event handler accepts 'add' events."),
    ]
    assert not conn.closing


async def test_an_open_invocation_id_is_refused_and_free_again_once_answered() -> None:
    node, up, sink, conn = setup()
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await up.call_count(1)
        await node.receive(conn, invoke("1"))
        refused = sent(sink)[-1]
        assert refused["invocationId"] == "1" and refused["success"] is False
        assert refused["error"]["name"] == "Duplicate"  # type: ignore[index]
        up.calls[0][2].set_result(EventReply(Payload.text("one"), None))
        await node.settle(conn)
        await node.receive(conn, invoke("1"))
        await up.call_count(2)
        up.calls[1][2].set_result(EventReply(Payload.text("two"), None))
        await node.settle(conn)
    assert [(t["success"], t.get("data")) for t in sent(sink)] == [
        (False, None),
        (True, "one"),
        (True, "two"),
    ]
    assert len(up.calls) == 2  # the duplicate never reached the handler


async def test_past_the_limit_an_invocation_is_refused_at_once() -> None:
    node, up, sink, conn = setup(max_invocations=2)
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await node.receive(conn, invoke("2"))  # queued behind 1
        await node.receive(conn, invoke("3"))
        refused = sent(sink)[-1]
        assert refused["invocationId"] == "3" and refused["success"] is False
        assert refused["error"] == {
            "name": "TooManyRequests",
            "message": "Too many invocations in progress for this connection (limit 2).",
        }
        await up.call_count(1)
        up.calls[0][2].set_result(EventReply(None, None))
        await up.call_count(2)
        up.calls[1][2].set_result(EventReply(None, None))
        await node.settle(conn)
    assert [t["invocationId"] for t in sent(sink)] == ["3", "1", "2"]


async def test_cancel_stops_the_handler_call_and_sends_nothing() -> None:
    node, up, sink, conn = setup()
    event = orjson.dumps({"type": "event", "event": "after", "dataType": "text", "data": "x"})
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await up.call_count(1)
        await node.receive(conn, event)  # queued behind it
        await node.receive(conn, cancel("1"))  # not queued
        await up.cancel_count(1)
        await up.call_count(2)  # the connection goes on with its next message
        up.calls[1][2].set_result(EventReply(None, None))
        await node.settle(conn)
    assert up.cancelled == ["add"]
    assert [c[0] for c in up.calls] == ["add", "after"]
    assert sent(sink) == []  # neither an invokeResponse nor anything else


async def test_cancel_of_a_queued_invocation_means_it_is_never_called() -> None:
    node, up, sink, conn = setup()
    event = orjson.dumps({"type": "event", "event": "first", "dataType": "text", "data": "x"})
    async with asyncio.timeout(5.0):
        await node.receive(conn, event)
        await up.call_count(1)
        await node.receive(conn, invoke("1"))  # waits behind
        await node.receive(conn, cancel("1"))
        await node.receive(conn, invoke("2", "second"))
        up.calls[0][2].set_result(EventReply(None, None))
        await up.call_count(2)
        up.calls[1][2].set_result(EventReply(None, None))
        await node.settle(conn)
    assert [c[0] for c in up.calls] == ["first", "second"]  # in order; "1" never called
    assert [t["invocationId"] for t in sent(sink)] == ["2"]


async def test_cancel_of_an_unknown_invocation_is_ignored() -> None:
    node, _up, sink, conn = setup()
    await node.receive(conn, cancel("nope"))
    assert sent(sink) == [] and not conn.closing


async def test_a_connection_that_ends_cancels_its_open_calls() -> None:
    node, up, sink, conn = setup()
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await up.call_count(1)
        node.detach(conn, sink, "bye", recoverable=False)
        await up.cancel_count(1)
    assert node._invocations == {}


async def test_a_malformed_invoke_is_a_failed_response_and_the_connection_stays() -> None:
    node, up, sink, conn = setup()
    bad = orjson.dumps({"type": "invoke", "invocationId": "7", "target": "x", "event": "e"})
    await node.receive(conn, bad)
    await node.settle(conn)
    assert sent(sink) == [
        {
            "type": "invokeResponse",
            "invocationId": "7",
            "success": False,
            "error": {"name": "BadRequest", "message": "'target' must be \"event\"."},
        }
    ]
    assert not up.calls and not conn.closing


async def test_an_invoke_behind_a_full_backlog_is_refused_at_once_not_held() -> None:
    """When the connection's messages fill its backlog an ``invoke`` does not wait for
    room (the transport would stop reading): it gets a failed response at once."""
    node, up, sink, conn = setup(max_inflight_events=2)
    event = orjson.dumps({"type": "event", "event": "e", "dataType": "text", "data": "x"})
    async with asyncio.timeout(5.0):
        await node.receive(conn, event)
        await up.call_count(1)
        await node.receive(conn, event)  # queued: the backlog is full
        await node.receive(conn, invoke("1"))  # returns at once
        assert sent(sink) == [
            failure(
                "1",
                "InternalServerError",
                "Too many events in flight for this connection (limit 2).",
            )
        ]
        up.calls[0][2].set_result(EventReply(None, None))
        await up.call_count(2)
        up.calls[1][2].set_result(EventReply(None, None))
        await node.settle(conn)
        await node.receive(conn, invoke("1"))  # the refused id is free
        await up.call_count(3)
        up.calls[2][2].set_result(EventReply(Payload.text("ok"), None))
        await node.settle(conn)
    assert sent(sink)[-1]["data"] == "ok"


async def test_a_dropped_reliable_connection_cancels_its_invocations_and_says_so_on_recovery() -> (
    None
):
    """The JavaScript client fails every pending invocation when its socket drops and
    cannot cancel them, so the drop cancels their calls (the recovered connection's next
    messages do not wait behind them); on recovery each gets a failed ``invokeResponse``
    (a client that kept waiting is answered) and its id is free again."""
    node, up, first, conn = setup(reliable=True)
    token = conn.reconnection_token or ""
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await node.receive(conn, invoke("2"))  # queued behind 1
        await up.call_count(1)
        node.detach(conn, first, "The connection was lost.", recoverable=True)
        await up.cancel_count(1)
        second = RecordingSink()
        assert node.resume("chat", "r1", token, (RELIABLE,), second) is conn
        await node.receive(conn, invoke("1", "echo"))  # free again; not behind the old call
        await up.call_count(2)
        up.calls[1][2].set_result(EventReply(Payload.text("one"), None))
        await node.settle(conn)
    lost = "The connection dropped before the invocation completed: it was cancelled."
    assert sent(second) == [
        failure("1", "InternalServerError", lost),
        failure("2", "InternalServerError", lost),
        {
            "type": "invokeResponse",
            "invocationId": "1",
            "success": True,
            "dataType": "text",
            "data": "one",
        },
    ]
    assert [c[0] for c in up.calls] == ["add", "echo"]  # invocation 2 was never called
    assert up.cancelled == ["add"]
    assert sent(first) == []


async def test_a_recovery_before_the_drop_is_noticed_cancels_the_invocations_too() -> None:
    """The client may be back before the service has seen its old socket close: the
    recovery closes that socket, and its invocations end as if it had dropped first."""
    node, up, _first, conn = setup(reliable=True)
    token = conn.reconnection_token or ""
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await up.call_count(1)
        second = RecordingSink()
        assert node.resume("chat", "r1", token, (RELIABLE,), second) is conn  # no detach
        await up.cancel_count(1)
        await node.settle(conn)
    lost = "The connection dropped before the invocation completed: it was cancelled."
    assert sent(second) == [failure("1", "InternalServerError", lost)]


async def test_an_invoke_with_its_key_spelt_with_an_escape_is_answered() -> None:
    node, up, sink, conn = setup()
    frame = b'{"type":"invoke","invocation\\u0049d":"1","target":"event","event":"add"}'
    async with asyncio.timeout(5.0):
        await node.receive(conn, frame)
        await up.call_count(1)
        up.calls[0][2].set_result(EventReply(None, None))
        await node.settle(conn)
    assert sent(sink) == [{"type": "invokeResponse", "invocationId": "1", "success": True}]


async def test_a_cancel_after_the_handler_answered_still_means_no_response() -> None:
    node, up, sink, conn = setup()
    async with asyncio.timeout(5.0):
        await node.receive(conn, invoke("1"))
        await up.call_count(1)
        up.calls[0][2].set_result(EventReply(Payload(DataType.JSON, b"1"), None))
        # One loop turn: the handler call finishes; the invocation has not sent yet.
        await asyncio.sleep(0)
        await node.receive(conn, cancel("1"))
        await node.settle(conn)
    assert sent(sink) == []
