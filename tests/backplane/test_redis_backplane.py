"""The Redis backplane's own bookkeeping, against a real redis-server: the order of a
handover among the commands, presence rewritten after a fault, the reaper's care for
connections that moved, a restart with the node id of a run that died, and surveys."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from webpubsub.backplane.base import Surveyor
from webpubsub.backplane.redis import TAKEN_MARK_SECONDS, RedisBackplane, _Pending
from webpubsub.errors import ServiceUnavailable
from webpubsub.node.ports import ReapedConnection
from webpubsub.protocol.backplane import (
    Command,
    Handover,
    Send,
    SessionState,
    SurveyReply,
    Target,
    decode_survey_request,
    encode_session,
    encode_survey_reply,
)
from webpubsub.protocol.frames import DataMessage
from webpubsub.protocol.payload import Payload


class Recorder:
    """A node stand-in: what it is given, in order."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.log: list[str] = []
        self.reaps: list[ReapedConnection] = []

    def apply(self, command: Command) -> None:
        if isinstance(command, Send):
            self.log.append(f"send {command.message.payload.data.decode()}")

    def answer(self, query: object) -> None:
        return None

    def reaped(self, connection: ReapedConnection) -> None:
        self.reaps.append(connection)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_server.url)
    yield redis_client
    await redis_client.aclose()


def session(cid: str) -> SessionState:
    return SessionState(
        "hub", cid, "u", "json.reliable.webpubsub.azure.v1", "", (), {}, "t", (), 1, ()
    )


def send(text: str) -> Send:
    return Send("hub", Target.all(), DataMessage(Payload.text(text)))


async def test_each_handed_over_connection_joins_the_stream_at_its_own_handover(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    plane = RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="b")
    node = Recorder("b")
    await plane.start(node)
    try:
        loop = asyncio.get_running_loop()
        for rq, cid in (("rx", "x"), ("ry", "y")):

            def adopt(state: SessionState, name: str = cid) -> None:
                node.log.append(f"adopt {name}")

            plane._pending[rq] = _Pending(adopt, loop.create_future(), "hub", cid, loop.time())
        handover = lambda rq, cid: Handover("hub", cid, "t", (), "b", rq)  # noqa: E731
        for command in (handover("rx", "x"), send("1"), handover("ry", "y"), send("2")):
            plane._accept(command)
        plane._deliver_direct(encode_session("ry", session("y")))  # y's state comes first
        assert node.log == []  # everything waits behind x
        plane._deliver_direct(encode_session("rx", session("x")))
        # x before "1", y after "1": each state was taken at its own Handover.
        assert node.log == ["adopt x", "send 1", "adopt y", "send 2"]
        plane._accept(send("3"))
        assert node.log[-1] == "send 3"
    finally:
        await plane.stop()


async def test_a_rebuild_drops_what_ended_while_redis_was_out_of_reach(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    plane = RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="r")
    await plane.start(Recorder("r"))
    try:
        p = redis_prefix
        # What the writes that failed would have removed: an ended connection, a left group.
        await client.hset(f"{p}:conn:hub:gone", mapping={"n": "r", "u": "", "s": "", "t": ""})
        await client.sadd(f"{p}:conns:r", "hub\x00gone")
        await client.sadd(f"{p}:group:hub:g", "gone")
        await client.sadd(f"{p}:cgroups:hub:gone", "g")
        await plane._rewrite_all()
        assert not await client.exists(f"{p}:conn:hub:gone")
        assert not await client.sismember(f"{p}:group:hub:g", "gone")
        assert not await client.sismember(f"{p}:conns:r", "hub\x00gone")
    finally:
        await plane.stop()


async def test_the_reaper_leaves_a_connection_that_moved_to_a_live_node(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    p = redis_prefix
    # Node "dead" handed c1 over to "alive" but died before forgetting it in its own set.
    await client.hset(f"{p}:conn:hub:c1", mapping={"n": "alive", "u": "", "s": "", "t": ""})
    await client.sadd(f"{p}:conns:dead", "hub\x00c1")
    await client.sadd(f"{p}:nodes", "dead")
    node = Recorder("reaper")
    plane = RedisBackplane(redis_server.url, prefix=p, node_id="reaper", heartbeat_timeout=1.0)
    await plane.start(node)
    try:
        plane._reap_after = 0.0
        await plane._reap(0.3)
        assert node.reaps == []
        assert await client.hget(f"{p}:conn:hub:c1", "n") == b"alive"
        assert not await client.exists(f"{p}:conns:dead")
    finally:
        await plane.stop()


async def test_a_restart_with_the_same_node_id_ends_what_the_last_run_left(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    p = redis_prefix
    await client.hset(f"{p}:conn:hub:old", mapping={"n": "same", "u": "zoe", "s": "", "t": ""})
    await client.sadd(f"{p}:conns:same", "hub\x00old")
    await client.sadd(f"{p}:user:hub:zoe", "old")
    node = Recorder("same")
    plane = RedisBackplane(redis_server.url, prefix=p, node_id="same")
    await plane.start(node)
    try:
        assert [(r.connection_id, r.user_id) for r in node.reaps] == [("old", "zoe")]
        assert not await client.exists(f"{p}:conn:hub:old", f"{p}:user:hub:zoe")
    finally:
        await plane.stop()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda url: url.replace("s3cret%2Fpa%20ss", "wrong"), "invalid username-password"),
        (lambda url: url.partition("?")[0], "certificate verify failed"),
        (lambda url: url.replace("rediss://", "redis://").partition("?")[0], "Connection"),
    ],
    ids=["wrong password", "CA not trusted", "plain text to a TLS port"],
)
async def test_a_node_that_cannot_join_says_why_and_never_shows_the_password(
    secure_redis: RedisServer, redis_prefix: str, change: Callable[[str], str], reason: str
) -> None:
    plane = RedisBackplane(change(secure_redis.url), node_id="lost", prefix=redis_prefix)
    with pytest.raises(ServiceUnavailable) as refused:
        await plane.start(Recorder("lost"))
    await plane.stop()
    assert re.match(
        r"cannot reach Redis at rediss?://\*\*\*@127\.0\.0\.1:\d+/0(\?\.\.\.)?: ",
        str(refused.value),
    )
    assert reason.lower() in str(refused.value).lower()
    assert "s3cret" not in str(refused.value) and "wrong" not in str(refused.value)


class RecordingStore:
    """An event queue stand-in for the mirror: what it adopts and drops, in order."""

    def __init__(self, timeline: list[str], on_adopt: Callable[[], object] | None = None) -> None:
        self.timeline = timeline
        self.adopted: list[bytes] = []
        self.dropped: list[tuple[int, bool]] = []
        self.released: list[int] = []
        self._on_adopt = on_adopt
        self.writable: int | None = None
        """How many more records its file takes (None: any number)."""

    def pending_seqs(self) -> list[int]:
        return []

    def epoch(self) -> str:
        return "new"

    def records(self, seqs: object) -> list[tuple[int, bytes]]:
        return []

    def release(self, seqs: list[int]) -> None:
        self.released.extend(seqs)

    def adopt(self, records: list[bytes], *, hold: bool = False) -> list[int]:
        assert hold  # a survivor sends nothing before the take is confirmed
        if self.writable is not None:  # the file locked or failing after that many
            records, self.writable = records[: self.writable], 0
        first = len(self.adopted) + 1
        self.adopted.extend(records)
        self.timeline.append(f"adopt {len(records)}")
        if self._on_adopt is not None:
            self._on_adopt()
        return list(range(first, first + len(records)))

    def drop(self, seqs: list[int], *, handed_back: bool = False) -> int:
        self.dropped.extend((s, handed_back) for s in seqs)
        return len(seqs)


class TimedRecorder(Recorder):
    def __init__(self, node_id: str, timeline: list[str]) -> None:
        super().__init__(node_id)
        self.timeline = timeline

    def reaped(self, connection: ReapedConnection) -> None:
        super().reaped(connection)
        self.timeline.append(f"reaped {connection.connection_id}")


def seq_of(field: bytes) -> int:
    """The seq of a mirror field ``old:{seq}``."""
    epoch, _, seq = field.partition(b":")
    assert epoch == b"old"
    return int(seq)


async def ghost(client: aioredis.Redis, p: str, events: int) -> list[bytes]:
    """A dead node "ghost" with one connection and ``events`` mirrored events (fields
    ``old:1``..``old:n``, written out of order); their records in seq order."""
    await client.hset(f"{p}:conn:hub:c1", mapping={"n": "ghost", "u": "", "s": "", "t": ""})
    await client.sadd(f"{p}:conns:ghost", "hub\x00c1")
    await client.sadd(f"{p}:nodes", "ghost")
    records = [f"record {seq}".encode() for seq in range(1, events + 1)]
    mapping = {f"old:{seq}": records[seq - 1] for seq in reversed(range(1, events + 1))}
    await client.hset(f"{p}:events:ghost", mapping=mapping)  # type: ignore[arg-type]
    return records


async def survivor(
    server: RedisServer, prefix: str, store: RecordingStore, timeline: list[str]
) -> RedisBackplane:
    """Node "s", started with ``store``, its reaper free to run at once."""
    plane = RedisBackplane(server.url, prefix=prefix, node_id="s", heartbeat_timeout=1.0)
    await plane.attach(store)  # type: ignore[arg-type]
    await plane.start(TimedRecorder("s", timeline))
    plane._reap_after = 0.0
    return plane


async def test_a_dead_nodes_events_are_taken_once_in_order_before_its_connections_end(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    """Two survivors reap at once: the lock lets one take the events, in seq order across
    batches, before it reports the connection; a second round finds nothing left."""
    p = redis_prefix
    records = await ghost(client, p, 450)  # three batches
    timeline: list[str] = []
    stores = [RecordingStore(timeline) for _ in range(2)]
    planes = [
        RedisBackplane(redis_server.url, prefix=p, node_id=f"s{i}", heartbeat_timeout=1.0)
        for i in range(2)
    ]
    for plane, store in zip(planes, stores, strict=True):
        await plane.attach(store)  # type: ignore[arg-type]
        await plane.start(TimedRecorder(plane.node_id, timeline))
        plane._reap_after = 0.0
    try:
        await asyncio.gather(*(plane._reap(0.3) for plane in planes))
        await client.delete(f"{p}:reaper")
        await asyncio.gather(*(plane._reap(0.3) for plane in planes))
    finally:
        for plane in planes:
            await plane.stop()
    assert [s.adopted for s in stores if s.adopted] == [records]  # one survivor, in order
    assert timeline == ["adopt 200", "adopt 200", "adopt 50", "reaped c1"]
    assert not await client.exists(f"{p}:events:ghost")
    taken = await client.smembers(f"{p}:taken:ghost")  # type: ignore[misc]
    assert sorted(seq_of(s) for s in taken) == list(range(1, 451))
    assert 0 < await client.ttl(f"{p}:taken:ghost") <= TAKEN_MARK_SECONDS


async def test_a_node_that_beats_again_mid_takeover_keeps_the_rest_of_its_events(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    """The dead node's heartbeat comes back while the survivor queues a batch: that batch
    is handed back (dropped at the survivor, left in the node's mirror, not marked), the
    rest is not read, and the node's connection is not reported."""
    p = redis_prefix
    await ghost(client, p, 250)
    timeline: list[str] = []
    beat = sync_redis.Redis.from_url(redis_server.url)
    # Blocking, inside adopt: the beat is in Redis before the batch would be marked taken.
    store = RecordingStore(timeline, on_adopt=lambda: beat.set(f"{p}:node:ghost", "1", px=5000))
    plane = await survivor(redis_server, p, store, timeline)
    try:
        await plane._reap(0.3)
    finally:
        await plane.stop()
        beat.close()
    assert timeline == ["adopt 200"]
    assert store.dropped == [(s, True) for s in range(1, 201)]
    assert store.released == []  # held from adopt on: none was ever sent from here
    assert await client.hlen(f"{p}:events:ghost") == 250  # type: ignore[misc]
    assert not await client.exists(f"{p}:taken:ghost")


async def test_events_a_survivor_cannot_queue_yet_stay_in_the_dead_nodes_copy(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    """Its queue file takes only part of a batch: only that part is taken (removed from
    the copy, marked), the dead node's connection is not reported yet; the next pass
    takes the rest, in order, then reports it."""
    p = redis_prefix
    records = await ghost(client, p, 250)
    timeline: list[str] = []
    store = RecordingStore(timeline)
    store.writable = 150
    plane = await survivor(redis_server, p, store, timeline)
    try:
        await plane._reap(0.3)
        assert timeline == ["adopt 150"]
        assert await client.hlen(f"{p}:events:ghost") == 100  # type: ignore[misc]
        taken = await client.smembers(f"{p}:taken:ghost")  # type: ignore[misc]
        assert sorted(seq_of(s) for s in taken) == list(range(1, 151))
        store.writable = None  # the file works again
        await client.delete(f"{p}:reaper")
        await plane._reap(0.3)
    finally:
        await plane.stop()
    assert timeline == ["adopt 150", "adopt 100", "reaped c1"]
    assert store.adopted == records and store.dropped == []
    assert store.released == list(range(1, 251))  # each once its take was confirmed
    assert not await client.exists(f"{p}:events:ghost")


class FileStore(RecordingStore):
    """A store that numbers what it queues, as a queue file does (``seq`` from 1)."""

    def __init__(self, limits: list[int | None], on_adopt: Callable[[], object]) -> None:
        super().__init__([], on_adopt)
        self.limits = limits
        self.local: dict[int, bytes] = {}

    def pending_seqs(self) -> list[int]:
        return sorted(self.local)

    def next_seq(self) -> int:  # as a file numbers its events
        return max(self.local, default=0) + 1

    def records(self, seqs: object) -> list[tuple[int, bytes]]:
        return [(s, self.local[s]) for s in seqs if s in self.local]  # type: ignore[attr-defined]

    def adopt(self, records: list[bytes], *, hold: bool = False) -> list[int]:
        limit = self.limits.pop(0) if self.limits else None
        taken = records if limit is None else records[:limit]
        self.adopted.extend(taken)
        seqs = [self.own(r) for r in taken]
        if self._on_adopt is not None:
            self._on_adopt()
        return seqs

    def own(self, record: bytes) -> int:
        seq = self.next_seq()
        self.local[seq] = record
        return seq


async def test_a_restart_without_the_file_takes_every_copied_event_back_despite_a_failure(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    """The new file takes one copied event, then fails; meanwhile the node queues one of
    its own (taking the next seq): the retry still knows the copy's other events for
    events the file never had, queues them, and the copy ends up as the file."""
    p = redis_prefix
    copied = [b"copied 1", b"copied 2", b"copied 3"]
    await client.hset(f"{p}:events:s", mapping={f"old:{i + 1}": r for i, r in enumerate(copied)})

    def own_event_once() -> None:
        if store.limits:  # the first, failing, call: the node's own event comes in
            store.own(b"own")

    store = FileStore([1, None], on_adopt=own_event_once)
    plane = RedisBackplane(redis_server.url, prefix=p, node_id="s", heartbeat_timeout=1.0)
    await plane.attach(store)  # type: ignore[arg-type]
    await plane.start(Recorder("s"))
    try:
        async with asyncio.timeout(5.0):
            await plane.mirror_flushed()
    finally:
        await plane.stop()
    assert store.adopted == copied
    assert store.local == {1: b"copied 1", 2: b"own", 3: b"copied 2", 4: b"copied 3"}
    mirror = await client.hgetall(f"{p}:events:s")  # type: ignore[misc]
    assert mirror == {f"new:{s}".encode(): r for s, r in store.local.items()}


async def test_a_node_that_writes_its_presence_again_is_alive_with_it(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    """Its key lapsed while it was cut off (or Redis restarted empty): the presence it
    writes again counts only with its heartbeat, so the rewrite beats too; once the node
    is synced its connections are there, not only after its next beat (a third of the
    heartbeat timeout later; 10 s here)."""
    p = redis_prefix
    async with TcpProxy(redis_server.port) as link:
        plane = RedisBackplane(
            f"redis://127.0.0.1:{link.port}/0", prefix=p, node_id="s", heartbeat_timeout=30.0
        )
        await plane.start(Recorder("s"))
        try:

            async def lapse() -> None:
                async with asyncio.timeout(5.0):
                    await plane.lost()
                await client.delete(f"{p}:node:s")

            await link.cut_and_hold(lapse, redis_server.port)
            async with asyncio.timeout(5.0):
                await plane.synced()
            assert await client.exists(f"{p}:node:s")
        finally:
            await plane.stop()


async def test_a_node_without_an_event_queue_leaves_a_dead_node_with_events_to_others(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    """A reaper with no queue to take events into neither reaps a dead node whose copy
    holds events nor forgets it: the node stays listed, with its copy and connection, for
    a survivor that can take them; one with a queue then takes them and reaps it."""
    p = redis_prefix
    records = await ghost(client, p, 3)
    timeline: list[str] = []
    bare = RedisBackplane(redis_server.url, prefix=p, node_id="bare", heartbeat_timeout=1.0)
    await bare.start(TimedRecorder("bare", timeline))
    bare._reap_after = 0.0
    try:
        await bare._reap(0.3)
    finally:
        await bare.stop()
    assert timeline == []
    assert await client.sismember(f"{p}:nodes", "ghost")  # type: ignore[misc]
    assert await client.hlen(f"{p}:events:ghost") == 3  # type: ignore[misc]
    await client.delete(f"{p}:reaper")
    store = RecordingStore(timeline)
    plane = await survivor(redis_server, p, store, timeline)
    try:
        await plane._reap(0.3)
    finally:
        await plane.stop()
    assert store.adopted == records and timeline == ["adopt 3", "reaped c1"]


async def test_mirror_writes_past_their_bound_are_replaced_by_one_copy_of_the_queue(
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While Redis is cut off, the queue changes more often than the mirror's writes may
    wait (the bound patched down to 2): the writes are dropped and, once Redis answers,
    the copy is made from the queue: it then holds what the queue holds, no more."""
    monkeypatch.setattr("webpubsub.backplane.redis.MIRROR_QUEUE_LIMIT", 2)
    p = redis_prefix
    store = FileStore([], on_adopt=lambda: None)
    async with TcpProxy(redis_server.port) as link:
        plane = RedisBackplane(
            f"redis://127.0.0.1:{link.port}/0", prefix=p, node_id="s", heartbeat_timeout=30.0
        )
        await plane.attach(store)  # type: ignore[arg-type]
        await plane.start(Recorder("s"))
        try:
            for record in (b"one", b"two"):
                plane.queued(store.own(record), record)
            async with asyncio.timeout(5.0):
                await plane.mirror_flushed()

            async def change_the_queue() -> None:
                async with asyncio.timeout(5.0):
                    await plane.lost()
                del store.local[1]
                plane.settled(1)
                for record in (b"three", b"four", b"five"):
                    plane.queued(store.own(record), record)

            await link.cut_and_hold(change_the_queue, redis_server.port)
            async with asyncio.timeout(5.0):
                await plane.synced()
                await plane.mirror_flushed()
        finally:
            await plane.stop()
    assert "event mirror writes backed up" in caplog.text
    mirror = await client.hgetall(f"{p}:events:s")  # type: ignore[misc]
    assert mirror == {f"new:{s}".encode(): r for s, r in store.local.items()}
    assert sorted(mirror.values()) == sorted([b"two", b"three", b"four", b"five"])


# -- surveys -------------------------------------------------------------------------------


def answering(node_id: str, release: asyncio.Event | None = None) -> Surveyor:
    """An answerer naming its node (once ``release`` is set, if given)."""

    async def answer(request: bytes) -> bytes:
        if release is not None:
            await release.wait()
        return node_id.encode() + b":" + request

    return answer


async def test_a_survey_waits_only_for_nodes_whose_heartbeat_lives(
    redis_server: RedisServer, redis_prefix: str, client: aioredis.Redis
) -> None:
    """A node still listed without a heartbeat (dead, not reaped yet) is not asked nor
    waited for; a node with a heartbeat that does not answer is None after the timeout."""
    p = redis_prefix
    plane = RedisBackplane(redis_server.url, prefix=p, node_id="s")
    plane.answer_surveys(answering("s"))  # before start: kept
    await plane.start(Recorder("s"))
    try:
        await client.sadd(f"{p}:nodes", "gone")  # type: ignore[misc]
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await plane.survey(b"q", timeout=5.0) == [("s", b"s:q")]
        assert loop.time() - began < 2.5  # not the timeout: nobody else was live
        await client.set(f"{p}:node:mute", "1", px=30_000)
        await client.sadd(f"{p}:nodes", "mute")  # type: ignore[misc]
        assert await plane.survey(b"q", timeout=0.2) == [("mute", None), ("s", b"s:q")]
    finally:
        await plane.stop()


async def test_answers_of_nodes_not_asked_or_to_other_surveys_are_dropped(
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever else arrives on the asker's answer channel meanwhile (an answer from a
    node that is not live, one to an unknown request id, garbage) changes nothing."""
    p = redis_prefix
    plane = RedisBackplane(redis_server.url, prefix=p, node_id="s")
    forged = asyncio.Event()
    plane.answer_surveys(answering("s", forged))
    await plane.start(Recorder("s"))
    listener = client.pubsub(ignore_subscribe_messages=True)
    await listener.subscribe(f"{p}:survey")
    try:
        asking = asyncio.create_task(plane.survey(b"q", timeout=5.0))
        async with asyncio.timeout(5.0):
            message = None
            while message is None:  # bounded by the timeout; get_message waits itself
                message = await listener.get_message(timeout=1.0)
        request = decode_survey_request(message["data"])
        assert (request.from_node, request.body) == ("s", b"q")
        for reply in (
            SurveyReply(request.request_id, "ghost", b"boo"),
            SurveyReply("not-a-request", "s", b"stale"),
        ):
            await client.publish(f"{p}:surveyed:s", encode_survey_reply(reply))
        await client.publish(f"{p}:surveyed:s", b"\x01garbage")
        await client.publish(f"{p}:surveyed:s", encode_survey_reply(SurveyReply("x", "s", None)))
        forged.set()  # the real answer goes last
        assert await asking == [("s", b"s:q")]
    finally:
        await listener.aclose()  # type: ignore[no-untyped-call]
        await plane.stop()
    assert "dropped a corrupt survey answer" in caplog.text


async def test_a_node_answers_a_bounded_number_of_surveys_at_once(
    redis_server: RedisServer, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the bound (patched down to 1) a node does not answer: None for that survey."""
    monkeypatch.setattr("webpubsub.backplane.redis.MAX_SURVEYS_ANSWERING", 1)
    p = redis_prefix
    asker = RedisBackplane(redis_server.url, prefix=p, node_id="a")
    busy = RedisBackplane(redis_server.url, prefix=p, node_id="b")
    release, called = asyncio.Event(), asyncio.Event()

    async def held(request: bytes) -> bytes:
        called.set()
        await release.wait()
        return b"b:" + request

    asker.answer_surveys(answering("a"))
    busy.answer_surveys(held)
    await asker.start(Recorder("a"))
    await busy.start(Recorder("b"))
    try:
        first = asyncio.create_task(asker.survey(b"1", timeout=5.0))
        async with asyncio.timeout(5.0):
            await called.wait()
            # a's own answer to the first is out: until it is published it counts
            # against a's bound of 1 too, and a would not answer the second (CI saw it).
            await asyncio.gather(*asker._answering)
        # b never answers this one (it is at its bound): the survey lasts its whole timeout.
        assert await asker.survey(b"2", timeout=1.0) == [("a", b"a:2"), ("b", None)]
        release.set()
        assert await first == [("a", b"a:1"), ("b", b"b:1")]
    finally:
        await asker.stop()
        await busy.stop()


async def test_a_survey_without_redis_raises_service_unavailable(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    p = redis_prefix
    unstarted = RedisBackplane(redis_server.url, prefix=p, node_id="u")
    with pytest.raises(ServiceUnavailable):
        await unstarted.survey(b"q")
    async with TcpProxy(redis_server.port) as link:
        plane = RedisBackplane(
            f"redis://127.0.0.1:{link.port}/0", prefix=p, node_id="s", heartbeat_timeout=30.0
        )
        plane.answer_surveys(answering("s"))
        await plane.start(Recorder("s"))
        try:

            async def ask() -> None:
                async with asyncio.timeout(5.0):
                    await plane.lost()
                with pytest.raises(ServiceUnavailable):
                    await plane.survey(b"q")

            await link.cut_and_hold(ask, redis_server.port)
            async with asyncio.timeout(5.0):
                await plane.synced()
            assert await plane.survey(b"q", timeout=5.0) == [("s", b"s:q")]
        finally:
            await plane.stop()


class Counting(Recorder):
    """A recorder that says when it has seen ``expected`` sends."""

    def __init__(self, node_id: str, expected: int) -> None:
        super().__init__(node_id)
        self.expected = expected
        self.all_seen = asyncio.Event()

    def apply(self, command: Command) -> None:
        super().apply(command)
        if len(self.log) >= self.expected:
            self.all_seen.set()


@pytest.fixture
async def small_pubsub_buffers(client: aioredis.Redis) -> AsyncIterator[None]:
    """Redis cuts a pub/sub client once 1 MB waits for it (the default is 32 MB): what
    many large answers at once would do at the default, quickly."""
    before = (await client.config_get("client-output-buffer-limit"))["client-output-buffer-limit"]
    await client.config_set("client-output-buffer-limit", "pubsub 1mb 0 0")
    yield
    await client.config_set("client-output-buffer-limit", before)


@pytest.mark.parametrize("room", [512 * 1024, None], ids=["answers bounded", "default room"])
async def test_heavy_surveys_never_cost_the_asker_a_command(
    redis_server: RedisServer,
    redis_prefix: str,
    small_pubsub_buffers: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    room: int | None,
) -> None:
    """16 surveys of two nodes answering 256 KiB each (8 MiB for the asker at once) while
    the other node publishes 200 sends: every send reaches the asker, whose command
    subscription is never cut. With the answers in flight bounded to what the test's
    Redis takes, every survey is answered by both nodes; with the default room (16 MiB,
    past the 1 MB the test's Redis takes) Redis may cut the survey subscription: answers
    go missing, commands do not."""
    if room is not None:
        monkeypatch.setattr("webpubsub.backplane.redis.SURVEY_BYTES_IN_FLIGHT", room)
    p, sends = redis_prefix, 200
    big = b"x" * (256 * 1024)

    async def answer(request: bytes) -> bytes:
        return big

    asker = RedisBackplane(redis_server.url, prefix=p, node_id="a")
    other = RedisBackplane(redis_server.url, prefix=p, node_id="b")
    asker.answer_surveys(answer)
    other.answer_surveys(answer)
    seen = Counting("a", sends)
    await asker.start(seen)
    await other.start(Recorder("b"))
    try:
        timeout = 20.0 if room is not None else 2.0
        surveys = [asyncio.create_task(asker.survey(b"q", timeout=timeout)) for _ in range(16)]

        async def publish() -> None:
            for i in range(sends):
                await other.publish(send(str(i)))

        await asyncio.gather(publish(), *surveys, return_exceptions=room is None)
        async with asyncio.timeout(10.0):
            await seen.all_seen.wait()
        assert seen.log == [f"send {i}" for i in range(sends)]
        assert asker.connected and not asker._rebuild.is_set()
        if room is not None:
            for survey in surveys:
                assert survey.result() == [("a", big), ("b", big)]
    finally:
        await asker.stop()
        await other.stop()
    assert "lost its Redis subscription" not in caplog.text
    assert "resubscribed to Redis" not in caplog.text


def survey_client_ids(clients: list[dict[str, object]], node_id: str) -> list[object]:
    return [c["id"] for c in clients if c.get("name") == f"webpubsub-surveys-{node_id}"]


async def test_a_lost_survey_subscription_costs_surveys_only_and_comes_back(
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis cuts the asker's survey connection (as an output buffer overflow would):
    surveys are refused while it is down, commands flow on untouched (no rebuild, nothing
    missed), and once it is back surveys are answered again."""
    p, sends = redis_prefix, 50
    asker = RedisBackplane(redis_server.url, prefix=p, node_id="a")
    other = RedisBackplane(redis_server.url, prefix=p, node_id="b")
    asker.answer_surveys(answering("a"))
    other.answer_surveys(answering("b"))
    seen = Counting("a", sends)
    await asker.start(seen)
    await other.start(Recorder("b"))
    try:
        (killed,) = survey_client_ids(await client.client_list(_type="pubsub"), "a")
        assert await client.execute_command("CLIENT", "KILL", "ID", killed) == 1
        async with asyncio.timeout(5.0):
            await asker.surveys_linked(False)
        with pytest.raises(ServiceUnavailable):
            await asker.survey(b"q")
        for i in range(sends):
            await other.publish(send(str(i)))
        async with asyncio.timeout(5.0):
            await asker.surveys_linked(True)
            await seen.all_seen.wait()
        assert seen.log == [f"send {i}" for i in range(sends)]
        assert asker.connected and not asker._rebuild.is_set()
        assert survey_client_ids(await client.client_list(_type="pubsub"), "a") != [killed]
        assert await asker.survey(b"q", timeout=5.0) == [("a", b"a:q"), ("b", b"b:q")]
    finally:
        await asker.stop()
        await other.stop()
    assert "lost its survey subscription" in caplog.text
    assert "lost its Redis subscription" not in caplog.text
    assert "resubscribed to Redis" not in caplog.text


async def test_the_answers_in_flight_to_one_node_are_bounded(
    redis_server: RedisServer, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With room for 1 MiB of answers (patched down): two nodes answer at most 512 KiB
    each (a longer answer is not sent: None); a survey that finds no room waits for
    another to be answered, and past its timeout raises ServiceUnavailable; with more
    nodes than room for 64 KiB answers each, a survey is refused."""
    monkeypatch.setattr("webpubsub.backplane.redis.SURVEY_BYTES_IN_FLIGHT", 1024 * 1024)
    p = redis_prefix
    asker = RedisBackplane(redis_server.url, prefix=p, node_id="a")
    other = RedisBackplane(redis_server.url, prefix=p, node_id="b")
    release, called = asyncio.Event(), asyncio.Event()
    fits, too_long = b"x" * (512 * 1024), b"y" * (512 * 1024 + 1)

    async def answer_a(request: bytes) -> bytes:
        return fits

    async def answer_b(request: bytes) -> bytes:
        if request == b"held":
            called.set()
            await release.wait()
        return too_long

    asker.answer_surveys(answer_a)
    other.answer_surveys(answer_b)
    await asker.start(Recorder("a"))
    await other.start(Recorder("b"))
    try:
        # The first survey is reserved for one node, finds two: reserved again for two.
        assert await asker.survey(b"q", timeout=5.0) == [("a", fits), ("b", None)]
        assert asker._survey_bytes == 0  # all released
        held = asyncio.create_task(asker.survey(b"held", timeout=5.0))
        async with asyncio.timeout(5.0):
            await called.wait()
        with pytest.raises(ServiceUnavailable, match="waiting on as many answers"):
            await asker.survey(b"q", timeout=0.2)  # b's answer to "held" is still due
        waiting = asyncio.create_task(asker.survey(b"q", timeout=5.0))
        release.set()
        assert await held == [("a", fits), ("b", None)]
        assert await waiting == [("a", fits), ("b", None)]
        monkeypatch.setattr("webpubsub.backplane.redis.SURVEY_BYTES_IN_FLIGHT", 64 * 1024)
        with pytest.raises(ServiceUnavailable, match="2 nodes answer surveys"):
            await asker.survey(b"q", timeout=5.0)
    finally:
        await asker.stop()
        await other.stop()
