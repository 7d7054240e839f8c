"""The trace ring (server/trace.py) below the socket layer: records, bounds, masking."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gc
import itertools
import sys
import tracemalloc

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support import protobuf_client as pc
from webpubsub.core.connection import Connection
from webpubsub.core.permissions import Permissions
from webpubsub.node.observe import Exchange, RestCall
from webpubsub.protocol.backplane import Target
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse, signature
from webpubsub.protocol.frames import ClientProtocol, DataMessage, Origin
from webpubsub.protocol.messages import MAX_STREAM_ERROR, StreamError, StreamInfo
from webpubsub.protocol.payload import Payload
from webpubsub.server import trace
from webpubsub.server.trace import (
    BODY_LIMIT,
    GROUP_FRAME_MAX_BYTES,
    PREVIEW_CHARS,
    TraceRing,
    frame_group,
    mask_value,
)

KEY = "trace-test-key-0123456789"
SIG = signature("conn-1", [KEY])


def conn(cid: str = "conn-1", user: str | None = "alice") -> Connection:
    return Connection(cid, "chat", user, ClientProtocol.JSON, "json.webpubsub.azure.v1", None,
                      Permissions())  # fmt: skip


def exchange(body: bytes = b'{"a":1}', *, answer: bytes = b"ok", url: str = "") -> Exchange:
    request = UpstreamRequest(
        "POST",
        url or "http://127.0.0.1:9/handler?code=secret-code",
        (
            ("ce-type", "azure.webpubsub.user.message"),
            ("ce-id", "7"),
            ("ce-hub", "chat"),
            ("ce-connectionId", "conn-1"),
            ("ce-userId", "alice"),
            ("ce-signature", SIG),
            ("Authorization", "Bearer very-secret-token"),
        ),
        body,
    )
    response = UpstreamResponse(200, (("Content-Type", "text/plain"),), answer)
    return Exchange(request, response, None, 0.0123)


def test_the_ring_keeps_the_last_n_records_and_evicts_their_requests_with_them() -> None:
    ring = TraceRing(5, "n1", clock=itertools.count(100).__next__)
    for _ in range(15):
        ring.cloud_event(exchange())
    assert len(ring) == 5
    assert [r["seq"] for r in ring.after(0, 100)] == [11, 12, 13, 14, 15]
    assert ring.first_seq == 11 and ring.last_seq == 15
    assert ring.get(10) is None and ring.original(10) is None
    assert ring.get(11) is not None and ring.original(11) is not None
    assert len(ring._originals) == 5  # bounded by the ring
    assert [r["seq"] for r in ring.after(13, 100)] == [14, 15]
    assert [r["seq"] for r in ring.after(11, 1)] == [12]


def test_the_originals_kept_for_replay_are_bounded_in_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one = trace._request_bytes(exchange(b"b" * 100).request)
    assert one > 100 + 200  # the headers and the URL count too
    monkeypatch.setattr(trace, "ORIGINALS_MAX_BYTES", 2 * one + 50)
    ring = TraceRing(100)
    for _ in range(5):
        ring.cloud_event(exchange(b"b" * 100))
    assert [seq for seq in range(1, 6) if ring.original(seq)] == [4, 5]
    assert ring._original_bytes == 2 * one
    assert ring.get(1) is not None  # the record stays, without its original
    ring.cloud_event(exchange(b"b" * 3 * one))  # larger than the bound: kept alone, not at all
    assert not ring._originals and ring._original_bytes == 0


def test_an_escape_heavy_body_is_cut_to_its_serialized_size_and_a_record_is_bounded() -> None:
    ring = TraceRing(10, "n")
    ring.cloud_event(exchange(b"\x01" * 20000, answer=b"\x01" * 20000))  # 6x when escaped
    record = ring.get(1)
    assert record is not None
    for part in (record["request"], record["response"]):
        assert isinstance(part, dict) and part["truncated"] is True
        assert len(orjson.dumps(part["body"])) <= trace.BODY_SHOWN_BYTES
    many = tuple((f"x-h{i}", "v" * 5000) for i in range(200))
    big = Exchange(
        UpstreamRequest("POST", "http://127.0.0.1:9/h", many, b"\x01" * 20000),
        UpstreamResponse(200, many, b"\x01" * 20000),
        None,
        0.01,
    )
    ring.cloud_event(big)
    assert ring.after_raw(1, 1, 1 << 30) == [orjson.dumps(ring.get(2))]
    assert all(len(raw) <= trace.RECORD_MAX_BYTES for raw in ring.after_raw(0, 10, 1 << 30))
    shown = ring.get(2)
    assert shown is not None and shown["request"]["truncated"] is True  # type: ignore[index]


def test_the_ring_is_bounded_by_its_records_serialized_bytes_too() -> None:
    ring = TraceRing(100_000, "n", max_bytes=1024 * 1024)
    for _ in range(300):
        ring.cloud_event(exchange(b"b" * BODY_LIMIT, answer=b"a" * BODY_LIMIT))
    assert ring.size_bytes <= 1024 * 1024 < ring.size_bytes + 40 * 1024
    assert ring.size_bytes == sum(len(r) for r in ring.after_raw(0, 100_000, 1 << 30))
    assert 20 < len(ring) < 40 and ring.last_seq == 300
    assert len(ring._originals) == len(ring)  # evicted with their records
    assert ring.after_raw(0, 100, 3 * 40 * 1024) == ring.after_raw(0, 3, 1 << 30)


def test_a_cloudevent_record_shows_request_and_response_with_secrets_masked() -> None:
    ring = TraceRing(10, "n1")
    ring.cloud_event(exchange())
    record = ring.after(0, 1)[0]
    text = orjson.dumps(record).decode()
    assert SIG not in text and SIG.split("=")[1][:8] not in text
    assert "very-secret-token" not in text and "secret-code" not in text
    assert record["type"] == "cloudevent" and record["node"] == "n1"
    assert record["hub"] == "chat" and record["connectionId"] == "conn-1"
    assert record["userId"] == "alice" and record["ceId"] == "7"
    assert record["eventType"] == "azure.webpubsub.user.message"
    assert record["url"] == "http://127.0.0.1:9/handler"
    headers = dict(record["request"]["headers"])  # type: ignore[index]
    assert headers["ce-signature"] == f"sha256={SIG[7:11]}…"
    assert headers["Authorization"] == "Bearer …"
    assert record["request"]["body"] == '{"a":1}'  # type: ignore[index]
    assert record["response"] == {
        "status": 200,
        "headers": [["Content-Type", "text/plain"]],
        "body": "ok",
        "truncated": False,
    }
    assert record["outcome"] == "success" and record["replay"] is False
    assert record["durationMs"] == 12.3
    # The original keeps every byte, for the replay.
    original = ring.original(1)
    assert original is not None and ("ce-signature", SIG) in original.headers


def test_the_attempts_of_a_retried_event_are_counted_and_a_replay_is_not_one() -> None:
    ring = TraceRing(10, "n1")
    first = exchange()
    ring.cloud_event(first)
    ring.cloud_event(first)  # the same event sent again (a retry)
    ring.cloud_event(dataclasses.replace(first, replay=True))
    other = dataclasses.replace(
        first,
        request=dataclasses.replace(
            first.request,
            headers=tuple((k, "8") if k == "ce-id" else (k, v) for k, v in first.request.headers),
        ),
    )
    ring.cloud_event(other)
    ring.cloud_event(first)
    assert [r["attempt"] for r in ring.after(0, 10)] == [1, 2, 1, 1, 3]


def test_bodies_are_cut_at_16_kib_and_binary_ones_are_base64() -> None:
    ring = TraceRing(10)
    ring.cloud_event(exchange(b"x" * (BODY_LIMIT + 5), answer=b"\xff\xfe"))
    record = ring.after(0, 1)[0]
    request, response = record["request"], record["response"]
    assert request["truncated"] is True and request["body"] == "x" * BODY_LIMIT  # type: ignore[index]
    assert response["bodyEncoding"] == "base64"  # type: ignore[index]
    assert base64.b64decode(response["body"]) == b"\xff\xfe"  # type: ignore[index]
    # A cut inside a multibyte character is still text.
    ring.cloud_event(exchange("é".encode() * BODY_LIMIT))
    cut = ring.after(1, 1)[0]["request"]
    assert "bodyEncoding" not in cut and cut["truncated"] is True  # type: ignore[operator,index]


def test_frames_in_and_fan_outs_out_are_one_record_each_with_a_preview() -> None:
    ring = TraceRing(10)
    c = conn()
    ring.received(c, "h" * 1000, "message")
    ring.received(c, bytes(range(256)), "event")
    ring.delivered("chat", Target.group("room"),
                   DataMessage(Payload.text("hi"), Origin.GROUP, "room", "bob"), 3)  # fmt: skip
    ring.replied(c, DataMessage(Payload.binary(b"\x00\x01")))
    text, binary, out, reply = ring.after(0, 10)
    assert text["type"] == "message-in" and text["frame"] == "text" and text["size"] == 1000
    assert text["preview"] == "h" * PREVIEW_CHARS
    assert binary["frame"] == "binary" and binary["kind"] == "event"
    assert base64.b64decode(binary["preview"]) == bytes(range(192))  # type: ignore[arg-type]
    assert out["target"] == {"scope": "group", "id": "room"} and out["group"] == "room"
    assert out["recipients"] == 3 and out["dataType"] == "text" and out["fromUserId"] == "bob"
    assert reply["reply"] is True and reply["connectionId"] == "conn-1"
    assert reply["target"] == {"scope": "connection", "id": "conn-1"}


def test_a_clients_group_frames_carry_their_group_for_the_group_filter() -> None:
    """joinGroup / leaveGroup (kind ``group``) and sendToGroup name their group in the
    record; other kinds, non-JSON (protobuf) and oversized frames are not parsed."""
    ring = TraceRing(10)
    c = conn()
    ring.received(c, '{"type":"joinGroup","group":"room","ackId":1}', "group")
    ring.received(c, b'{"type":"sendToGroup","group":"r\xc3\xa9","data":"hi"}', "sendToGroup")
    ring.received(c, '{"type":"leaveGroup","group":"room"}', "group")
    ring.received(c, '{"type":"event","group":"not-a-group-frame"}', "event")
    ring.received(c, b"\x0a\x04room", "sendToGroup")  # protobuf: not JSON
    big = '{"type":"sendToGroup","group":"room","data":"' + "x" * GROUP_FRAME_MAX_BYTES + '"}'
    ring.received(c, big, "sendToGroup")
    ring.received(c, '{"type":"joinGroup","group":5}', "group")
    records = ring.after(0, 10)
    assert [r.get("group") for r in records] == ["room", "ré", "room", None, None, None, None]


def test_a_protobuf_clients_group_frames_carry_their_group() -> None:
    ring = TraceRing(10)
    c = Connection("conn-2", "chat", "bob", ClientProtocol.PROTOBUF,
                   "protobuf.webpubsub.azure.v1", None, Permissions())  # fmt: skip
    ring.received(c, pc.join_group("room", 1), "group")
    ring.received(c, pc.send_to_group("r\u00e9", pc.Data("text", "hi")), "sendToGroup")
    ring.received(c, pc.join_group(" ", 1), "group")  # not a valid group: none
    ring.received(c, b"\xff\xff", "group")  # not protobuf
    records = ring.after(0, 10)
    assert [r.get("group") for r in records] == ["room", "r\u00e9", None, None]


@given(
    st.one_of(st.binary(max_size=200), st.text(max_size=200)),
    st.sampled_from([ClientProtocol.JSON, ClientProtocol.PROTOBUF]),
)
def test_any_frame_gives_a_group_or_none_without_raising(
    data: bytes | str, protocol: ClientProtocol
) -> None:
    group = frame_group(data, protocol)
    assert group is None or isinstance(group, str)


def test_connection_lifecycle_and_rest_records() -> None:
    ring = TraceRing(10)
    c = conn()
    c.groups.add("room")
    ring.connected(c)
    ring.detached(c, "lost")
    ring.recovered(c)
    ring.disconnected(c, 1008, "slow")
    ring.rest_call(RestCall("Chat", "SendToAll", "POST", "/api/hubs/chat/:send", 202, 0.5, "::1"))
    connected, detached, recovered, disconnected, rest = ring.after(0, 10)
    assert connected["protocol"] == "json" and connected["groups"] == ["room"]
    assert detached["reason"] == "lost" and recovered["type"] == "recovered"
    assert disconnected["code"] == 1008 and disconnected["reason"] == "slow"
    assert rest["hub"] == "chat" and rest["operation"] == "SendToAll"
    assert rest["status"] == 202 and rest["durationMs"] == 500.0
    assert ring.recent("chat", "conn-1") == [connected, detached, recovered, disconnected]


async def test_a_waiter_is_woken_by_the_next_record() -> None:
    ring = TraceRing(10)
    waiting = asyncio.create_task(ring.wait(0, 5.0))
    await asyncio.sleep(0)  # the waiter is parked on the ring's event
    assert ring._wake is not None
    ring.recovered(conn())
    async with asyncio.timeout(2):
        await waiting
    assert ring._wake is None  # no event left behind: nobody waits


@given(st.text(alphabet="0123456789abcdef", min_size=8, max_size=64))
def test_a_signature_is_never_shown_whole(digest: str) -> None:
    shown = mask_value("CE-Signature", f"sha256={digest},sha256={digest[::-1]}")
    assert digest not in shown and digest[::-1] not in shown
    assert shown.startswith(f"sha256={digest[:4]}…")


@given(st.text(max_size=40))
def test_an_authorization_value_is_never_shown(secret: str) -> None:
    shown = mask_value("authorization", f"Bearer {secret}")
    assert shown in ("Bearer …", "…")


def test_the_connect_event_body_shows_the_client_s_secrets_in_part_only() -> None:
    body = orjson.dumps(
        {
            "claims": {"sub": ["a"]},
            "query": {"sig": ["query-secret"], "code": ["short"]},
            "headers": {
                "Host": ["127.0.0.1:1"],
                "Cookie": ["app_session=END-USER-SECRET"],
                "X-Api-Key": ["k-123"],
                "Authorization": ["Bearer very-secret-token"],
                "X-Auth-Token": ["tok-0123456789"],
                "Sec-WebSocket-Key": ["8vKEr0uGRfCujoDR0IcZIA=="],
            },
            "subprotocols": [],
            "clientCertificates": [],
        }
    )
    request = UpstreamRequest(
        "POST", "http://127.0.0.1:9/h", (("ce-type", trace.CONNECT_EVENT),), body
    )
    ring = TraceRing(5, "n")
    ring.cloud_event(Exchange(request, None, "down", 0.1))
    record = ring.get(1)
    assert record is not None
    shown = record["request"]["body"]  # type: ignore[index]
    for secret in ("END-USER-SECRET", "k-123", "query-secret", "very-secret", "short",
                   "tok-0123456789", "IZA=="):  # fmt: skip
        assert secret not in shown
    parsed = orjson.loads(shown)
    assert parsed["query"]["sig"] == ["quer…"] and parsed["headers"]["Host"] == ["127.0.0.1:1"]
    assert parsed["headers"]["Cookie"] == ["app_…"] and parsed["headers"]["X-Api-Key"] == ["…"]
    assert ring.original(1) == request  # the real request is unchanged
    # Headers of the HTTP exchange itself follow the same rule.
    assert mask_value("X-Api-Key", "abcdefghijkl") == "abcd…"
    assert mask_value("X-Session-Token", "abcdefghijkl") == "abcd…"
    assert mask_value("Content-Type", "application/json") == "application/json"


def test_the_ring_s_memory_is_a_small_multiple_of_its_byte_budget() -> None:
    ring = TraceRing(100_000, "n", max_bytes=4 * 1024 * 1024)
    bodies = [bytes(range(256)) * 64 for _ in range(2)]  # 16 KiB each, not UTF-8: base64
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(400):
            ring.cloud_event(exchange(bodies[0], answer=bodies[1]))
        ring._originals.clear()  # the originals have their own budget
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert ring.size_bytes <= 4 * 1024 * 1024
    assert used < 3 * ring.size_bytes  # the records and their bytes, no slack buffers


def test_a_handover_is_a_moved_record_on_one_node_and_adopted_on_the_other() -> None:
    old, new = TraceRing(10, "a"), TraceRing(10, "b")
    c = conn()
    old.moved(c, "b")
    new.adopted(c, "a")
    new.adopted(c, None)  # came back: no node took it
    (moved,) = old.after(0, 10)
    adopted, back = new.after(0, 10)
    assert moved["type"] == "moved" and moved["toNode"] == "b" and moved["node"] == "a"
    assert moved["connectionId"] == "conn-1" and moved["userId"] == "alice"
    assert adopted["type"] == "adopted" and adopted["fromNode"] == "a"
    assert back["fromNode"] is None
    assert new.recent("chat", "conn-1") == [adopted, back]


@given(st.text(max_size=3000) | st.text(alphabet='\x01\x1f"\\é😀', max_size=40_000))
def test_a_shown_body_is_a_prefix_within_its_json_budget(text: str) -> None:
    shown = trace._fit_text(text)
    assert text.startswith(shown)
    assert len(orjson.dumps(shown)) <= trace.BODY_SHOWN_BYTES
    if len(orjson.dumps(text)) <= trace.BODY_SHOWN_BYTES:
        assert shown == text


@given(st.binary(max_size=300) | st.builds(orjson.dumps, st.dictionaries(
    st.sampled_from(["headers", "query", "claims"]),
    st.dictionaries(st.text(max_size=12), st.lists(st.text(max_size=20), max_size=3)
                    | st.integers(-9, 9) | st.none(), max_size=4), max_size=3)))  # fmt: skip
def test_any_connect_body_is_shown_without_raising_and_its_query_never_whole(body: bytes) -> None:
    request = UpstreamRequest("POST", "http://h/", (("ce-type", trace.CONNECT_EVENT),), body)
    ring = TraceRing(2, "n")
    ring.cloud_event(Exchange(request, None, "down", 0.1))
    record = ring.get(1)
    assert record is not None and ring.original(1) == request
    try:
        sent = orjson.loads(body)
    except orjson.JSONDecodeError:
        return
    query = sent.get("query") if isinstance(sent, dict) else None
    if isinstance(query, dict):
        shown = orjson.loads(record["request"]["body"])["query"]  # type: ignore[index]
        for name, values in query.items():
            if isinstance(values, list):
                assert all(
                    v == trace.mask_secret(o) for v, o in zip(shown[name], values, strict=True)
                )


# -- records made lazily ---------------------------------------------------------------

LAZY_CALLS = st.sampled_from(["rest", "event", "big-event", "connect", "out", "reply", "in"])


def _observe(ring: TraceRing, what: str, i: int) -> None:
    """One observer call of kind ``what`` (the hot paths' are made lazily)."""
    if what == "rest":
        path = f"/api/hubs/chat/users/u{i}\x01é/:send"  # escapes and non-ASCII too
        ring.rest_call(RestCall("Chat", "SendToUser", "POST", path, 202, i / 1e4, "::1"))
    elif what == "event":
        ring.cloud_event(exchange(b'{"i":%d}' % i, answer=b"\x00\xff" * i))
    elif what == "big-event":  # cut bodies, more headers than a record shows
        many = tuple((f"x-h{n}", "v" * 2000) for n in range(trace.HEADERS_SHOWN + 5))
        big = Exchange(
            UpstreamRequest("POST", "http://127.0.0.1:9/h?code=c", exchange().request.headers,
                            b"\x01" * (BODY_LIMIT + 5)),
            UpstreamResponse(200, many, "é".encode() * BODY_LIMIT),
            None,
            0.5,
        )  # fmt: skip
        ring.cloud_event(big)
    elif what == "connect":
        body = orjson.dumps({"headers": {"Authorization": ["Bearer abcdefghijk"]}, "i": i})
        event = exchange(body)
        headers = tuple(
            (k, "azure.webpubsub.sys.connect" if k == "ce-type" else v)
            for k, v in event.request.headers
        )
        ring.cloud_event(dataclasses.replace(
            event, request=dataclasses.replace(event.request, headers=headers)
        ))  # fmt: skip
    elif what == "out":
        message = DataMessage(Payload.text("ü" * (i % 400)), Origin.GROUP, "room", "bob")
        ring.delivered("chat", Target.group("room"), message, i)
    elif what == "reply":
        ring.replied(conn(), DataMessage(Payload.binary(bytes(range(256)) * 2)))
    else:
        frame = f'{{"type":"sendToGroup","group":"g{i}","data":"x"}}'
        ring.received(conn(), frame, "sendToGroup")


@given(
    st.lists(st.tuples(LAZY_CALLS, st.booleans()), max_size=40),
    st.integers(min_value=1, max_value=12),
    st.sampled_from([4 * 1024, 64 * 1024, trace.DEFAULT_MAX_BYTES]),
)
def test_a_record_read_late_is_the_record_read_at_once(
    calls: list[tuple[str, bool]], capacity: int, max_bytes: int
) -> None:
    """Whenever a record is first read (at once, later, or never before it is evicted),
    it is the record the eager path made: the same bytes, the same bounds kept."""
    eager = TraceRing(capacity, "n1", max_bytes=max_bytes, clock=itertools.count(1).__next__)
    lazy = TraceRing(capacity, "n1", max_bytes=max_bytes, clock=itertools.count(1).__next__)
    for i, (what, read) in enumerate(calls):
        _observe(eager, what, i)
        eager.after(eager.last_seq - 1, 1)  # built at once, as the eager path did
        _observe(lazy, what, i)
        if read:
            lazy.get(lazy.last_seq - 1)  # now and then an older one, out of order
    assert (lazy.first_seq, lazy.last_seq) == (eager.first_seq, eager.last_seq)
    assert lazy.after_raw(0, 100, 1 << 30) == eager.after_raw(0, 100, 1 << 30)
    assert lazy.after(0, 100) == eager.after(0, 100)
    assert lazy.size_bytes == eager.size_bytes <= max(max_bytes, trace.RECORD_MAX_BYTES)
    for raw in lazy.after_raw(0, 100, 1 << 30):
        assert SIG not in raw.decode() and b"very-secret-token" not in raw
        assert b"abcdefghijk" not in raw and b"secret-code" not in raw


def test_a_record_not_read_is_built_only_when_it_is_read() -> None:
    ring = TraceRing(100, "n1", clock=itertools.count(1).__next__)
    for i in range(10):
        _observe(ring, "rest", i)
        _observe(ring, "event", i)
        _observe(ring, "out", i)
    assert ring._pending == 30 and len(ring) == 30
    assert all(isinstance(entry, tuple) for entry in ring._ring)  # facts only, no record
    record = ring.get(2)
    assert record is not None and record["type"] == "cloudevent" and record["seq"] == 2
    assert record["time"] == 2 and record["node"] == "n1"  # taken when it was added
    assert ring._pending == 29
    page = ring.after(10, 5)
    assert [r["seq"] for r in page] == [11, 12, 13, 14, 15] and ring._pending == 24
    assert ring.size_bytes < 30 * 4096  # the bounds of the records not built are tight enough


def test_the_facts_kept_of_a_message_are_its_preview_not_its_data() -> None:
    ring = TraceRing(10, "n1")
    data = b"x" * (1024 * 1024)
    refs = sys.getrefcount(data)
    message = DataMessage(Payload.binary(data))
    ring.delivered("chat", Target.all(), message, 5)
    ring.replied(conn(), message)
    del message
    assert sys.getrefcount(data) == refs  # neither pending record holds the megabyte
    assert ring.size_bytes < 2 * 8 * 1024
    out = ring.after(0, 1)[0]
    assert out["size"] == 1024 * 1024 and base64.b64decode(out["preview"]) == data[:192]  # type: ignore[arg-type]


def test_an_exchange_is_kept_cut_until_its_record_is_read() -> None:
    ring = TraceRing(10, "n1")
    _observe(ring, "big-event", 0)
    ((_, _, _, facts),) = ring._ring  # type: ignore[misc]
    kept = facts[0]
    assert len(kept.request.body) == len(kept.response.body) == BODY_LIMIT + 1
    assert len(kept.response.headers) == trace.HEADERS_SHOWN + 1
    assert ring.original(1) is not None and len(ring.original(1).body) == BODY_LIMIT + 5  # type: ignore[union-attr]
    record = ring.get(1)
    assert record is not None
    assert record["request"]["truncated"] is True and record["response"]["truncated"] is True  # type: ignore[index]


def test_the_byte_bound_holds_for_records_not_built_by_building_them_first() -> None:
    ring = TraceRing(100_000, "n", max_bytes=64 * 1024)
    for i in range(2000):
        _observe(ring, "rest", i)
    assert ring.size_bytes <= 64 * 1024
    assert ring.size_bytes == sum(len(r) for r in ring.after_raw(0, 100_000, 1 << 30))
    assert ring.last_seq == 2000 and 64 * 1024 // 400 < len(ring) < 64 * 1024 // 200


async def test_a_live_reader_gets_each_record_built_when_it_comes() -> None:
    ring = TraceRing(10, "n1")
    waiting = asyncio.create_task(ring.wait(0, 5.0))
    await asyncio.sleep(0)
    _observe(ring, "rest", 1)
    async with asyncio.timeout(2):
        await waiting
    (raw,) = ring.after_raw(0, 10, 1 << 30)
    assert orjson.loads(raw)["operation"] == "SendToUser" and ring._pending == 0


def test_a_record_that_cannot_be_serialized_is_read_as_unreadable_not_an_error() -> None:
    ring = TraceRing(10, "n1")
    ring.rest_call(RestCall("Chat", "SendToAll", "POST", "/api/hubs/chat/\udc80", 202, 0.1, ""))
    _observe(ring, "rest", 1)
    bad, good = ring.after(0, 10)
    assert bad["type"] == "unreadable" and bad["truncated"] is True and bad["seq"] == 1
    assert good["type"] == "rest" and good["seq"] == 2
    assert ring.size_bytes == sum(len(r) for r in ring.after_raw(0, 10, 1 << 30))


def test_an_eager_record_that_cannot_be_serialized_keeps_the_seqs_in_order() -> None:
    # a connect event is built at once; its handler's header decoded with surrogateescape
    ring = TraceRing(10, "n1")
    _observe(ring, "rest", 1)
    request = UpstreamRequest(
        "POST", "http://h/e", (("ce-type", trace.CONNECT_EVENT), ("ce-hub", "chat")), b"{}"
    )
    answer = UpstreamResponse(
        200, (("X-Name", b"caf\xe9".decode("utf-8", "surrogateescape")),), b"{}"
    )
    ring.cloud_event(Exchange(request, answer, None, 0.01))  # no error to the handler's caller
    _observe(ring, "rest", 3)
    assert [r["seq"] for r in ring.after(0, 10)] == [1, 2, 3]
    assert ring.get(2) == ring.after(1, 1)[0]
    bad = ring.get(2)
    assert bad is not None and bad["type"] == "unreadable" and bad["truncated"] is True
    assert ring.original(2) is request
    assert [r["seq"] for r in ring.after(2, 10)] == [3]
    assert ring.size_bytes == sum(len(r) for r in ring.after_raw(0, 10, 1 << 30))


def test_a_pending_stream_end_holds_its_facts_not_its_error_message() -> None:
    """The cost of a record not built yet bounds what it holds: a stream's end keeps its
    id, sequence id, end flag and error's name, not the publisher's error message."""
    error = StreamError("UserError", "\U0001f600" * (MAX_STREAM_ERROR - 96), "c" * 96)
    message = DataMessage(Payload.text("end"), Origin.GROUP, "room", "bob",
                          StreamInfo("s1", 2, True, error))  # fmt: skip
    ring = TraceRing(10, "n1", clock=itertools.count(100).__next__)
    ring.delivered("chat", Target.group("room"), message, 3)
    assert ring._pending == 1
    held: list[object] = []
    todo: list[object] = [ring._ring[0][3]]  # what the record is made of
    while todo:
        held.append(item := todo.pop())
        if isinstance(item, tuple) or (
            dataclasses.is_dataclass(item) and not isinstance(item, type)
        ):
            todo.extend(gc.get_referents(item))
    assert not any(item is error or item is error.message for item in held)
    cost = ring._raw[0]
    assert isinstance(cost, int)
    assert cost >= sum(sys.getsizeof(item) for item in held if isinstance(item, str | bytes))
    (raw,) = ring.after_raw(0, 10, 1 << 30)
    assert raw == orjson.dumps(
        {"seq": 1, "node": "n1", "time": 100, "type": "message-out", "hub": "chat",
         "connectionId": None, "userId": None, "target": {"scope": "group", "id": "room"},
         "group": "room", "recipients": 3, "size": 3, "dataType": "text", "preview": "end",
         "fromUserId": "bob",
         "stream": {"streamId": "s1", "sequenceId": 2, "end": True, "error": "UserError"}}
    )  # fmt: skip
    assert len(raw) <= cost


# -- a client frame's record, made lazily -----------------------------------------------


def _eager_message_in(ring: TraceRing, c: Connection, data: bytes | str, kind: str) -> dict:  # type: ignore[type-arg]
    """The ``message-in`` record as the trace built it at once (before it was lazy)."""
    if isinstance(data, str):
        size = len(data) if data.isascii() else len(data.encode("utf-8", "replace"))
        fields: dict[str, object] = {"kind": kind, "size": size, "frame": "text",
                                     "preview": data[:PREVIEW_CHARS]}  # fmt: skip
    else:
        size = len(data)
        fields = {"kind": kind, "size": size, "frame": "binary",
                  "preview": base64.b64encode(data[: trace.PREVIEW_BYTES]).decode()}  # fmt: skip
    if kind in trace.GROUP_KINDS and size <= GROUP_FRAME_MAX_BYTES:
        group = frame_group(data, c.protocol)
        if group is not None:
            fields["group"] = group
    return {"seq": ring.last_seq, "node": "n1", "time": 7, "type": "message-in", "hub": c.hub,
            "connectionId": c.connection_id, "userId": c.user_id, **fields}  # fmt: skip


FRAMES = st.one_of(
    st.text(max_size=600),
    st.text(alphabet='\x00\x1f"\\é😀x', max_size=600),
    st.binary(max_size=600),
    st.builds(
        lambda g, d: orjson.dumps({"type": "sendToGroup", "group": g, "data": d}).decode(),
        st.text(max_size=20),
        st.text(max_size=300),
    ),
)


@given(
    FRAMES,
    st.sampled_from(["message", "sendToGroup", "event", "group", "control", "invalid"]),
    st.text(max_size=80),
    st.none() | st.text(max_size=80),
)
def test_a_client_frame_s_record_is_made_when_read_and_reads_as_the_eager_one(
    data: bytes | str, kind: str, cid: str, user: str | None
) -> None:
    """A ``message-in`` record is made of its facts when first read: the same record
    the trace built at once, and its cost (kept until then) bounds both what the facts
    hold and the record serialized."""
    ring = TraceRing(4, "n1", clock=lambda: 7)
    c = Connection(cid, "Chat", user, ClientProtocol.JSON, None, None, Permissions())
    ring.received(c, data, kind)
    assert ring._pending == 1
    cost = ring._raw[0]
    assert isinstance(cost, int)
    held = [item for item in ring._ring[0][3] if isinstance(item, str | bytes)]  # type: ignore[index]
    assert sum(sys.getsizeof(item) for item in held) <= cost
    (raw,) = ring.after_raw(0, 1, 1 << 30)
    assert len(raw) <= cost and ring._pending == 0
    assert orjson.loads(raw) == ring.get(1) == _eager_message_in(ring, c, data, kind)


def test_a_client_frame_s_record_keeps_its_preview_not_the_frame() -> None:
    ring = TraceRing(4, "n1")
    frame = "x" * (1024 * 1024)
    refs = sys.getrefcount(frame)
    ring.received(conn(), frame, "message")
    ring.received(conn(), frame.encode(), "message")
    assert sys.getrefcount(frame) == refs
    assert ring.size_bytes < 2 * 4096
    text, binary = ring.after(0, 2)
    assert text["size"] == binary["size"] == 1024 * 1024 and text["preview"] == "x" * PREVIEW_CHARS


def test_a_client_frame_no_json_holds_is_read_as_unreadable() -> None:
    ring = TraceRing(4, "n1")
    ring.received(conn(), "\udc80 lone", "message")
    _observe(ring, "in", 2)
    bad, good = ring.after(0, 10)
    assert bad["type"] == "unreadable" and bad["seq"] == 1 and good["group"] == "g2"
    assert ring.size_bytes == sum(len(r) for r in ring.after_raw(0, 10, 1 << 30))


# -- a CloudEvent's cost, from lengths ---------------------------------------------------

HEADER_NAMES = st.sampled_from(
    ["ce-type", "CE-Type", "ce-id", "ce-hub", "Ce-ConnectionId", "ce-userId", "ce-signature",
     "Authorization", "Cookie", "x-key", "Content-Type", "x"]
) | st.text(min_size=1, max_size=12)  # fmt: skip
HEADER_VALUES = st.text(max_size=40) | st.text(alphabet="\x01é😀a", max_size=2000)
HEADERS = st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=70).map(tuple)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(alphabet='\x00\x1f"é😀a', max_size=300).map(str.encode),
    st.sampled_from([b"\x01" * (BODY_LIMIT + 3), "é".encode() * BODY_LIMIT, b"\xff" * 40_000]),
)


@given(
    HEADERS,
    BODIES,
    st.none() | st.tuples(st.integers(100, 599), HEADERS, BODIES),
    st.none() | st.text(max_size=300),
    st.text(max_size=200),
)
def test_a_cloudevent_s_cost_bounds_its_record_serialized(
    headers: tuple[tuple[str, str], ...],
    body: bytes,
    answer: tuple[int, tuple[tuple[str, str], ...], bytes] | None,
    error: str | None,
    path: str,
) -> None:
    """The cost kept for a CloudEvent's record not built yet (computed from lengths)
    is at least the record's size once built, whatever its headers, bodies and URL."""
    request = UpstreamRequest("POST", "http://h/" + path, headers, body)
    response = None if answer is None else UpstreamResponse(*answer)
    ring = TraceRing(4, "n1")
    ring.cloud_event(Exchange(request, response, error, 0.5))
    cost = ring._raw[0]
    if not isinstance(cost, int):  # a connect event's record: built at once
        return
    (raw,) = ring.after_raw(0, 1, 1 << 30)
    assert len(raw) <= cost
    assert ring.original(1) is request
    assert ring._original_bytes == trace._request_bytes(request)
