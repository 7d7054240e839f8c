"""Group streams in the router, below the socket layer: start, fragments, keep-alives,
duplicates, gaps, ends, and every refusal, as effects and the frames they carry."""

from __future__ import annotations

import orjson

from tests.core.test_hub import make_conn
from tests.core.test_router import client, frame
from webpubsub.core.connection import Connection
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permission
from webpubsub.core.router import STREAM_END_PAYLOAD, StreamStep, route
from webpubsub.core.streams import DEFAULT_IDLE_TIMEOUT_MS, GroupStream, Streams
from webpubsub.protocol.backplane import Send, Target
from webpubsub.protocol.frames import ClientProtocol, DataMessage, Origin, encode_for
from webpubsub.protocol.messages import StreamError, StreamInfo
from webpubsub.protocol.payload import DataType, Payload

SENDER = ("webpubsub.sendToGroup",)


def start(stream_id: str = "s1", **extra: object) -> str:
    return frame({"type": "sendToGroup", "group": "g", "stream": {"streamId": stream_id, **extra}})


def data(seq: int, text: str, stream_id: str = "s1") -> str:
    return frame(
        {
            "type": "streamData",
            "streamId": stream_id,
            "streamSequenceId": seq,
            "dataType": "text",
            "data": text,
        }
    )


def step(conn: Connection, hub: Hub, raw: str, now: float = 0.0) -> StreamStep:
    effect = route(conn, hub, raw, now=now)
    assert isinstance(effect, StreamStep), effect
    return effect


def frames(effect: StreamStep) -> list[dict[str, object]]:
    return [orjson.loads(f) for f in effect.frames]


def opened(roles: tuple[str, ...] = SENDER) -> tuple[Connection, Hub]:
    conn, hub = client(roles)
    assert frames(step(conn, hub, start())) == [
        {"type": "streamAck", "streamId": "s1", "expectedSequenceId": 1}
    ]
    return conn, hub


def test_a_start_is_acknowledged_with_1_and_publishes_nothing() -> None:
    conn, hub = client(SENDER)
    effect = step(conn, hub, start(idleTimeoutMs=1500), now=10.0)
    assert effect.command is None
    stream = conn.streams.get("s1")
    assert stream is not None and stream.group == "g" and stream.deadline == 11.5
    other = step(conn, hub, start("s2"), now=10.0)
    assert conn.streams.get("s2") is not None and other.command is None
    assert conn.streams.get("s2").idle_timeout == DEFAULT_IDLE_TIMEOUT_MS / 1000  # type: ignore[union-attr]


def test_a_start_with_an_ack_id_is_also_acked() -> None:
    conn, hub = client(SENDER)
    raw = frame({"type": "sendToGroup", "group": "g", "ackId": 7, "stream": {"streamId": "s1"}})
    assert [f["type"] for f in frames(step(conn, hub, raw))] == ["streamAck", "ack"]


def test_fragments_are_published_in_order_with_their_stream_metadata() -> None:
    conn, hub = opened()
    first = step(conn, hub, data(1, "a"), now=5.0)
    assert isinstance(first.command, Send)
    assert first.command.target == Target.group("g")
    message = first.command.message
    assert message.payload == Payload(DataType.TEXT, b"a")
    assert (message.group, message.from_user_id) == ("g", "u")
    assert message.stream == StreamInfo("s1", 1)
    assert frames(first) == [{"type": "streamAck", "streamId": "s1", "expectedSequenceId": 2}]
    assert first.fragment is not None and first.fragment.in_flight == 1
    assert conn.streams.get("s1").last_active == 5.0  # type: ignore[union-attr]
    second = step(conn, hub, data(2, "b"), now=6.0)
    assert second.command is not None and second.command.message.stream == StreamInfo("s1", 2)
    assert conn.streams.get("s1").last_active == 6.0  # type: ignore[union-attr]


def test_a_duplicate_is_dropped_and_a_gap_is_nacked() -> None:
    conn, hub = opened()
    step(conn, hub, data(1, "a"))
    step(conn, hub, data(2, "b"))
    again = step(conn, hub, data(1, "a"))  # a replay after recovery
    assert again.command is None
    assert frames(again) == [{"type": "streamAck", "streamId": "s1", "expectedSequenceId": 3}]
    gap = step(conn, hub, data(5, "e"))
    assert gap.command is None
    [nack] = frames(gap)
    assert nack["type"] == "streamNack" and nack["name"] == "InvalidSequenceId"
    assert nack["expectedSequenceId"] == 3 and "got 5" in str(nack["message"])
    assert step(conn, hub, data(3, "c")).command is not None  # the stream goes on


def test_a_keep_alive_only_refreshes_the_idle_deadline() -> None:
    conn, hub = opened()
    keep_alive = frame({"type": "streamData", "streamId": "s1"})
    assert route(conn, hub, keep_alive, now=100.0) is None
    assert conn.streams.get("s1").last_active == 100.0  # type: ignore[union-attr]


def test_an_end_publishes_the_terminal_message_and_closes_for_the_publisher() -> None:
    conn, hub = opened()
    step(conn, hub, data(1, "a"))
    end = step(conn, hub, frame({"type": "streamEnd", "streamId": "s1"}))
    assert end.command is not None
    message = end.command.message
    assert message.stream == StreamInfo("s1", 2, end=True)
    assert message.payload == Payload(DataType.BINARY, b"")
    assert frames(end) == [{"type": "streamClosed", "streamId": "s1"}]
    assert conn.streams.get("s1") is None
    # Sent again (a client that missed the streamClosed): told again, as it was.
    again = step(conn, hub, data(2, "b"))
    assert again.command is None
    assert frames(again) == [{"type": "streamClosed", "streamId": "s1"}]
    never = step(conn, hub, data(1, "b", stream_id="zz"))
    assert frames(never)[0]["error"] == {  # type: ignore[index]
        "name": "StreamNotFound",
        "message": "Stream 'zz' is not open on this connection.",
    }


def test_an_end_with_an_error_reaches_subscribers_as_user_error() -> None:
    conn, hub = opened()
    raw = frame(
        {"type": "streamEnd", "streamId": "s1", "error": {"message": "m", "userErrorCode": "E"}}
    )
    end = step(conn, hub, raw)
    assert end.command is not None
    assert end.command.message.stream == StreamInfo(
        "s1", 1, end=True, error=StreamError("UserError", "m", "E")
    )
    assert frames(end) == [{"type": "streamClosed", "streamId": "s1"}]


def test_a_start_without_permission_an_open_id_or_past_the_limit_is_refused() -> None:
    conn, hub = client(("webpubsub.sendToGroup.other",))
    [closed] = frames(step(conn, hub, start()))
    assert closed["error"] == {
        "name": "Forbidden",
        "message": "The connection has no permission to send to group 'g'.",
    }
    conn, hub = opened()
    [closed] = frames(step(conn, hub, start()))
    assert closed["error"] == {"name": "BadRequest", "message": "Stream 's1' is open already."}
    for n in range(2, conn.streams.limit + 1):
        step(conn, hub, start(f"s{n}"))
    [closed] = frames(step(conn, hub, start("one-too-many")))
    assert closed["streamId"] == "one-too-many"
    assert closed["error"]["name"] == "BadRequest" and "16 streams" in closed["error"]["message"]  # type: ignore[index]


def test_a_revoked_permission_ends_the_stream_forbidden() -> None:
    conn, hub = opened()
    conn.permissions.revoke(Permission.SEND_TO_GROUP, None)
    effect = step(conn, hub, data(1, "a"))
    assert effect.command is not None and effect.command.message.stream is not None
    assert effect.command.message.stream.error == StreamError(
        "Forbidden", "The connection has no permission to send to group 'g'."
    )
    assert frames(effect)[0]["error"]["name"] == "Forbidden"  # type: ignore[index]
    assert conn.streams.get("s1") is None


def test_a_stream_past_its_byte_budget_ends_bad_request() -> None:
    conn, hub = client(SENDER)
    conn._streams = Streams(max_bytes=3)
    step(conn, hub, start())
    assert step(conn, hub, data(1, "abc")).command is not None
    over = step(conn, hub, data(2, "d"))
    assert over.command is not None and over.command.message.stream is not None
    assert over.command.message.stream.error == StreamError(
        "BadRequest", "The stream carried 3 bytes; a stream may carry 3."
    )
    assert conn.streams.get("s1") is None


def test_a_malformed_stream_message_ends_that_stream_only() -> None:
    conn, hub = opened()
    step(conn, hub, start("s2"))
    raw = frame({"type": "streamData", "streamId": "s1", "streamSequenceId": 1, "data": "x"})
    effect = step(conn, hub, raw)
    assert effect.command is not None and effect.command.message.stream is not None
    assert effect.command.message.stream.error is not None
    assert effect.command.message.stream.error.name == "BadRequest"
    assert conn.streams.get("s1") is None and conn.streams.get("s2") is not None
    unknown = step(conn, hub, frame({"type": "streamEnd", "streamId": "zz", "error": 3}))
    assert unknown.command is None and frames(unknown)[0]["error"]["name"] == "BadRequest"  # type: ignore[index]


def test_no_echo_excludes_the_publisher() -> None:
    conn, hub = client(SENDER)
    raw = frame({"type": "sendToGroup", "group": "g", "noEcho": True, "stream": {"streamId": "s1"}})
    step(conn, hub, raw)
    effect = step(conn, hub, data(1, "a"))
    assert effect.command is not None and effect.command.excluded == frozenset({"c1"})


def test_streams_expire_by_deadline_and_are_bounded() -> None:
    streams = Streams(limit=2)
    assert streams.open(GroupStream("a", "g", False, 1.0, 0.0)) is None
    assert streams.open(GroupStream("b", "g", False, 5.0, 0.0)) is None
    assert streams.open(GroupStream("c", "g", False, 5.0, 0.0)) is not None
    assert streams.next_deadline() == 1.0
    assert [s.stream_id for s in streams.expired(1.0)] == ["a"]
    streams.remove("a", StreamError("IdleTimeout", "m"))
    assert streams.next_deadline() == 5.0 and len(streams) == 1
    assert streams.closed_as("a") == (True, StreamError("IdleTimeout", "m"))
    assert [s.stream_id for s in streams.clear()] == ["b"] and streams.next_deadline() is None


def test_a_streams_end_is_not_offered_to_simple_clients() -> None:
    simple, simple_sink = make_conn("raw")
    json_conn, json_sink = make_conn("js", protocol=ClientProtocol.JSON)
    hub = Hub("h")
    info = StreamInfo("s", 2, end=True)
    end = DataMessage(STREAM_END_PAYLOAD, Origin.GROUP, "g", "u", info)
    assert hub.deliver([simple, json_conn], end) == 1
    assert simple_sink.frames == [] and simple.messages_out == 0
    assert len(json_sink.frames) == 1
    fragment = DataMessage(Payload.text("a"), Origin.GROUP, "g", "u", StreamInfo("s", 1))
    assert hub.deliver([simple, json_conn], fragment) == 2


def test_a_recently_closed_stream_is_answered_with_its_reason_and_bounded() -> None:
    conn, hub = opened()
    keep_alive = frame({"type": "streamData", "streamId": "s1"})
    conn.permissions.revoke(Permission.SEND_TO_GROUP, None)
    ended = step(conn, hub, keep_alive)  # a keep-alive checks the permission too
    assert ended.command is not None and frames(ended)[0]["error"]["name"] == "Forbidden"  # type: ignore[index]
    assert frames(step(conn, hub, data(1, "a")))[0]["error"]["name"] == "Forbidden"  # type: ignore[index]
    streams = Streams()
    for n in range(20):
        streams.open(GroupStream(f"s{n}", "g", False, 1.0, 0.0))
        streams.remove(f"s{n}")
    assert streams.closed_as("s19") == (True, None)
    assert streams.closed_as("s0") == (False, None)  # only the last 16 are remembered


def test_a_bad_start_refuses_itself_and_leaves_an_open_stream_of_its_id() -> None:
    conn, hub = opened()
    bad = step(conn, hub, start(idleTimeoutMs=0))
    assert bad.command is None and frames(bad)[0]["error"]["name"] == "BadRequest"  # type: ignore[index]
    assert conn.streams.get("s1") is not None
    bad_group = frame({"type": "sendToGroup", "group": " ", "stream": {"streamId": "s2"}})
    refused = step(conn, hub, bad_group)  # refused for the stream, the connection stays
    assert frames(refused)[0]["streamId"] == "s2"
    assert frames(refused)[0]["error"]["name"] == "BadRequest"  # type: ignore[index]


def test_a_start_ack_id_counts_against_duplicates() -> None:
    conn, hub = client(SENDER)
    raw = frame({"type": "sendToGroup", "group": "g", "ackId": 7, "stream": {"streamId": "s1"}})
    step(conn, hub, raw)
    again = frame({"type": "sendToGroup", "group": "g", "ackId": 7, "stream": {"streamId": "s2"}})
    [ack] = frames(step(conn, hub, again))
    assert ack["type"] == "ack" and ack["error"]["name"] == "Duplicate"  # type: ignore[index]
    assert conn.streams.get("s2") is None


def test_an_empty_fragment_reaches_simple_clients_but_an_empty_end_does_not() -> None:
    empty = DataMessage(Payload.text(""), Origin.GROUP, "g", "u", StreamInfo("s", 1))
    assert encode_for(ClientProtocol.SIMPLE, empty) != b""
    end = DataMessage(STREAM_END_PAYLOAD, Origin.GROUP, "g", "u", StreamInfo("s", 2, end=True))
    assert encode_for(ClientProtocol.SIMPLE, end) == b""
