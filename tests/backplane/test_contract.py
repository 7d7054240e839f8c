"""The backplane contract: every implementation passes this suite.

It runs on the in-memory backplane (directly, and with every envelope through the wire
codec) and on the Redis backplane against a real ``redis-server``. Commands go to every
node in publish order; queries are answered from the connections of live nodes — by the
nodes themselves (memory) or from the presence they keep in Redis. A survey gets one
answer per live node, None for a node that did not answer in time.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from tests.support.redis_server import RedisServer
from webpubsub.backplane.base import MAX_SURVEYS_IN_FLIGHT, Backplane, Surveyor
from webpubsub.backplane.memory import MemoryBackplane, MemoryBus
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.core.settings import HubSettings
from webpubsub.errors import BadRequest, PayloadTooLarge, ServiceUnavailable
from webpubsub.node.node import Admission, Node
from webpubsub.node.ports import ReapedConnection
from webpubsub.protocol.backplane import (
    MAX_SURVEY_ANSWER_BYTES,
    MAX_SURVEY_REQUEST_BYTES,
    MAX_SURVEY_TIMEOUT,
    Answer,
    ChangeGroup,
    ChangePermission,
    Close,
    Command,
    Exists,
    GroupAction,
    GroupMember,
    GroupRoom,
    HasPermission,
    ListGroup,
    Query,
    Send,
    Target,
)
from webpubsub.protocol.frames import ClientProtocol, DataMessage, Origin
from webpubsub.protocol.payload import DataType, Payload

WAIT = 5.0


class RecordingNode:
    """A node stand-in that records the commands it is given."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.commands: list[Command] = []
        self.reaps: list[ReapedConnection] = []
        self._arrived = asyncio.Condition()

    def apply(self, command: Command) -> None:
        self.commands.append(command)
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    def answer(self, query: Query) -> Answer:
        return False

    def reaped(self, connection: ReapedConnection) -> None:
        self.reaps.append(connection)

    async def received(self, count: int) -> list[Command]:
        """The first ``count`` commands, once they have arrived (bounded wait)."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: len(self.commands) >= count)
        return self.commands[:count]


class NullUpstream:
    """No event handler: records the ``disconnected`` events a node sends."""

    def __init__(self) -> None:
        self.disconnected_ids: list[str] = []

    async def connect(self, *args: object, **kwargs: object) -> None:
        return None

    async def user_event(self, *args: object) -> object:
        raise AssertionError("no user events in the contract suite")

    def connected(self, *args: object) -> None:
        return None

    def disconnected(self, hub: object, ctx: object, reason: str) -> None:
        self.disconnected_ids.append(ctx.connection_id)  # type: ignore[attr-defined]


class Sink:
    def offer(self, frame: bytes) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        pass

    buffered_bytes = 0

    async def drained(self) -> None:
        return None


Cluster = Callable[[int], Awaitable[list[Backplane]]]
_ids = itertools.count(1)


@pytest.fixture(params=["memory", "memory-wire", "redis"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """``await cluster(n)``: n backplanes joined to one another."""
    started: list[Backplane] = []
    bus = MemoryBus()
    kind = request.param
    server: RedisServer | None = (
        request.getfixturevalue("redis_server") if kind == "redis" else None
    )
    prefix: str = request.getfixturevalue("redis_prefix")

    async def make(n: int) -> list[Backplane]:
        planes: list[Backplane] = []
        for _ in range(n):
            if server is not None:
                planes.append(RedisBackplane(server.url, prefix=prefix, node_id=f"n{next(_ids)}"))
            else:
                planes.append(MemoryBackplane(bus, wire=kind == "memory-wire"))
        started.extend(planes)
        return planes

    yield make
    for plane in started:
        await plane.stop()


async def nodes(planes: Sequence[Backplane]) -> list[Node]:
    """A real node on each backplane, started."""
    out = []
    for i, plane in enumerate(planes):
        node = Node(
            hub_settings=lambda name: HubSettings(name=name),
            upstream=NullUpstream(),
            origin="localhost",
            publish=plane.publish,
            node_id=getattr(plane, "node_id", None) or f"m{i}",
            presence=plane.presence(),
        )
        await plane.start(node)
        out.append(node)
    return out


def attach(
    node: Node,
    cid: str,
    *,
    user: str | None = None,
    groups: Sequence[str] = (),
    roles: Sequence[str] = (),
) -> None:
    node.attach(
        Admission("hub", cid, user, tuple(groups), tuple(roles), ClientProtocol.SIMPLE, None, ""),
        Sink(),
    )


async def settled(planes: Sequence[Backplane]) -> None:
    """Wait until what every node changed is visible to queries (bounded)."""
    async with asyncio.timeout(WAIT):
        for plane in planes:
            if isinstance(plane, RedisBackplane):
                await plane.flushed()


def send(text: str) -> Send:
    return Send("hub", Target.all(), DataMessage(Payload.text(text)))


async def test_a_command_reaches_every_node_in_publish_order(cluster: Cluster) -> None:
    a, b = await cluster(2)
    node_a, node_b = RecordingNode("a"), RecordingNode("b")
    await a.start(node_a)
    await b.start(node_b)
    commands = [send(str(i)) for i in range(50)] + [Close("hub", Target.user("u"), "bye")]
    for command in commands:
        await a.publish(command)
    assert await node_a.received(len(commands)) == commands  # the publishing node included
    assert await node_b.received(len(commands)) == commands


async def test_every_kind_of_command_arrives_as_it_was_sent(cluster: Cluster) -> None:
    a, b = await cluster(2)
    node_a, node_b = RecordingNode("a"), RecordingNode("b")
    await a.start(node_a)
    await b.start(node_b)
    binary = DataMessage(Payload(DataType.BINARY, b"\x00\xff"), Origin.GROUP, "g", "u")
    commands: list[Command] = [
        Send("hub", Target.group("g"), binary, frozenset({"c1", "c2"}), "userId eq 'x'"),
        Close("hub", Target.connection("c1"), "bye", frozenset({"c3"})),
        ChangeGroup("hub", Target.user("u"), GroupAction.ADD, ("g1", "g2"), "true"),
        ChangeGroup("hub", Target.all(), GroupAction.REMOVE_ALL),
        ChangePermission("hub", "c1", "sendToGroup", True, "g"),
        ChangePermission("hub", "c1", "joinLeaveGroup", False, "h"),
    ]
    for command in commands:
        await b.publish(command)
    assert await node_a.received(len(commands)) == commands


async def test_a_stopped_node_no_longer_receives(cluster: Cluster) -> None:
    a, b = await cluster(2)
    node_a, node_b = RecordingNode("a"), RecordingNode("b")
    await a.start(node_a)
    await b.start(node_b)
    await b.stop()
    await a.publish(send("after"))
    assert await node_a.received(1) == [send("after")]
    assert node_b.commands == []


async def test_queries_see_the_connections_of_every_node(cluster: Cluster) -> None:
    planes = await cluster(3)
    n1, n2, _ = await nodes(planes)
    attach(n1, "c1", user="alice", groups=["g"], roles=["webpubsub.sendToGroup.g"])
    attach(n2, "c2", user="bob", groups=["g", "h"])
    await settled(planes)
    for plane in planes:  # any node answers the same
        assert any(a is True for a in await plane.gather(Exists("hub", Target.connection("c2"))))
        assert any(a is True for a in await plane.gather(Exists("hub", Target.user("alice"))))
        assert any(a is True for a in await plane.gather(Exists("hub", Target.group("h"))))
        assert not any(a is True for a in await plane.gather(Exists("hub", Target.group("x"))))
        members = {m for a in await plane.gather(ListGroup("hub", "g")) if a for m in a}  # type: ignore[union-attr]
        assert members == {GroupMember("c1", "alice"), GroupMember("c2", "bob")}
        held = await plane.gather(HasPermission("hub", "c1", "sendToGroup", "g"))
        assert any(a is True for a in held)
        assert not any(
            a is True for a in await plane.gather(HasPermission("hub", "c2", "sendToGroup", "g"))
        )
        # c2 is in two groups: room for a third under a limit of 3, not of 2, unless it
        # is a member already; an unknown connection is nobody's.
        assert True in await plane.gather(GroupRoom("hub", "c2", "x", 3))
        assert False in await plane.gather(GroupRoom("hub", "c2", "x", 2))
        assert True in await plane.gather(GroupRoom("hub", "c2", "h", 2))
        assert set(await plane.gather(GroupRoom("hub", "nobody", "x", 2))) <= {None}


async def test_changes_made_through_one_node_are_seen_through_another_at_once(
    cluster: Cluster,
) -> None:
    planes = await cluster(2)
    n1, _ = await nodes(planes)
    attach(n1, "c1", user="alice")
    await settled(planes)
    other = planes[1]

    async def exists(target: Target) -> bool:
        return any(a is True for a in await other.gather(Exists("hub", target)))

    await other.publish(ChangeGroup("hub", Target.connection("c1"), GroupAction.ADD, ("g",)))
    assert await exists(Target.group("g"))  # no wait: read your writes
    await other.publish(ChangePermission("hub", "c1", "joinLeaveGroup", True, "g"))
    assert any(
        a is True for a in await other.gather(HasPermission("hub", "c1", "joinLeaveGroup", "g"))
    )
    await other.publish(ChangeGroup("hub", Target.user("alice"), GroupAction.REMOVE_ALL))
    assert not await exists(Target.group("g"))
    await other.publish(Close("hub", Target.connection("c1"), "bye"))
    assert not await exists(Target.connection("c1"))
    assert not await exists(Target.user("alice"))


async def test_a_stopped_node_leaves_every_answer_at_once(cluster: Cluster) -> None:
    planes = await cluster(2)
    n1, _ = await nodes(planes)
    attach(n1, "c1", user="alice", groups=["g"])
    await settled(planes)
    await planes[0].stop()
    survivor = planes[1]
    for target in (Target.connection("c1"), Target.user("alice"), Target.group("g")):
        assert not any(a is True for a in await survivor.gather(Exists("hub", target)))
    assert not any(await survivor.gather(ListGroup("hub", "g")))


# -- surveys: an opaque question to every live node, for observation only -----------------


def echo(node_id: str) -> Surveyor:
    """An answerer naming its node and the request it was asked."""

    async def answer(request: bytes) -> bytes:
        return node_id.encode() + b":" + request

    return answer


async def surveyed(planes: Sequence[Backplane]) -> list[str]:
    """Real nodes on ``planes``, each answering with :func:`echo`; their ids."""
    started = await nodes(planes)
    for plane, node in zip(planes, started, strict=True):
        plane.answer_surveys(echo(node.node_id))
    return [node.node_id for node in started]


async def test_a_survey_asks_every_node_and_each_answer_names_its_node(cluster: Cluster) -> None:
    planes = await cluster(3)
    ids = await surveyed(planes)
    assert len(set(ids)) == 3
    for plane in planes:  # any node may ask; it is asked too
        answers = await plane.survey(b'{"op":"trace"}', timeout=WAIT)
        assert answers == [(i, i.encode() + b':{"op":"trace"}') for i in sorted(ids)]


async def test_a_node_without_an_answerer_or_whose_answerer_fails_answers_none_at_once(
    cluster: Cluster,
) -> None:
    planes = await cluster(3)
    answering, silent, failing = await nodes(planes)
    planes[0].answer_surveys(echo(answering.node_id))

    async def fail(request: bytes) -> bytes:
        raise RuntimeError("the answerer broke")

    planes[2].answer_surveys(fail)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answers = await planes[1].survey(b"q", timeout=WAIT)
    assert dict(answers) == {
        answering.node_id: answering.node_id.encode() + b":q",
        silent.node_id: None,
        failing.node_id: None,
    }
    assert loop.time() - began < WAIT / 2  # they said so: nobody waited for the timeout


async def test_a_stopped_node_is_not_surveyed(cluster: Cluster) -> None:
    planes = await cluster(3)
    ids = await surveyed(planes)
    await planes[2].stop()  # in Redis its heartbeat key goes with it
    answers = await planes[0].survey(b"q", timeout=WAIT)
    assert [node for node, _ in answers] == sorted(ids[:2])
    assert all(answer is not None for _, answer in answers)


async def test_a_slow_answerer_gives_none_without_delaying_the_survey(cluster: Cluster) -> None:
    planes = await cluster(3)
    ids = await surveyed(planes)
    never = asyncio.Event()  # never set: the answerer waits past any timeout
    cancelled = asyncio.Event()

    async def slow(request: bytes) -> bytes:
        try:
            await never.wait()
        finally:
            cancelled.set()
        return b"too late"

    planes[1].answer_surveys(slow)
    loop = asyncio.get_running_loop()
    began = loop.time()
    answers = await planes[0].survey(b"q", timeout=0.2)
    took = loop.time() - began
    assert dict(answers) == {
        ids[0]: ids[0].encode() + b":q",
        ids[1]: None,
        ids[2]: ids[2].encode() + b":q",
    }
    assert took < 1.5  # the timeout, not more (with a loaded machine's slack)
    async with asyncio.timeout(WAIT):
        await cancelled.wait()  # the slow answerer does not go on forever


async def test_concurrent_surveys_do_not_mix_their_answers(cluster: Cluster) -> None:
    planes = await cluster(3)
    ids = await surveyed(planes)
    count = 12
    arrived = {i: 0 for i in ids}
    everywhere = asyncio.Event()

    def barrier(node_id: str) -> Surveyor:
        """Answers only once every survey has reached every node: all are in flight."""

        async def answer(request: bytes) -> bytes:
            arrived[node_id] += 1
            if all(n == count for n in arrived.values()):
                everywhere.set()
            await everywhere.wait()
            return node_id.encode() + b":" + request

        return answer

    for plane, node_id in zip(planes, ids, strict=True):
        plane.answer_surveys(barrier(node_id))
    requests = [f"request {n}".encode() for n in range(count)]
    results = await asyncio.gather(
        *(planes[n % 3].survey(r, timeout=WAIT) for n, r in enumerate(requests))
    )
    for request, answers in zip(requests, results, strict=True):
        assert answers == [(i, i.encode() + b":" + request) for i in sorted(ids)]


async def test_surveys_in_flight_are_bounded(cluster: Cluster) -> None:
    (plane,) = await cluster(1)
    (node,) = await nodes([plane])
    calls = 0
    all_in = asyncio.Event()
    release = asyncio.Event()

    async def held(request: bytes) -> bytes:
        nonlocal calls
        calls += 1
        if calls == MAX_SURVEYS_IN_FLIGHT:
            all_in.set()
        await release.wait()
        return request

    plane.answer_surveys(held)
    waiting = [
        asyncio.create_task(plane.survey(str(n).encode(), timeout=WAIT))
        for n in range(MAX_SURVEYS_IN_FLIGHT)
    ]
    async with asyncio.timeout(WAIT):
        await all_in.wait()
    with pytest.raises(ServiceUnavailable):
        await plane.survey(b"one more", timeout=WAIT)
    release.set()
    results = await asyncio.gather(*waiting)
    assert results == [[(node.node_id, str(n).encode())] for n in range(MAX_SURVEYS_IN_FLIGHT)]
    assert await plane.survey(b"again", timeout=WAIT) == [(node.node_id, b"again")]


async def test_surveys_are_bounded_in_size_and_time(cluster: Cluster) -> None:
    planes = await cluster(2)
    big, small = await nodes(planes)

    async def too_much(request: bytes) -> bytes:
        return b"x" * (MAX_SURVEY_ANSWER_BYTES + 1)

    async def just_enough(request: bytes) -> bytes:
        return b"x" * MAX_SURVEY_ANSWER_BYTES

    planes[0].answer_surveys(too_much)
    planes[1].answer_surveys(just_enough)
    answers = dict(await planes[0].survey(b"q", timeout=WAIT))
    assert answers == {big.node_id: None, small.node_id: b"x" * MAX_SURVEY_ANSWER_BYTES}
    with pytest.raises(PayloadTooLarge):
        await planes[0].survey(b"x" * (MAX_SURVEY_REQUEST_BYTES + 1))
    for timeout in (0.0, -1.0, MAX_SURVEY_TIMEOUT + 1):
        with pytest.raises(BadRequest):
            await planes[0].survey(b"q", timeout=timeout)
