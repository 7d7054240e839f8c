"""The backplane contract: every implementation passes this suite.

It runs on the in-memory backplane (directly, and with every envelope through the wire
codec) and on the Redis backplane against a real ``redis-server``. Commands go to every
node in publish order; queries are answered from the connections of live nodes — by the
nodes themselves (memory) or from the presence they keep in Redis.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from tests.support.redis_server import RedisServer
from webpubsub.backplane.base import Backplane
from webpubsub.backplane.memory import MemoryBackplane, MemoryBus
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.core.settings import HubSettings
from webpubsub.node.node import Admission, Node
from webpubsub.node.ports import ReapedConnection
from webpubsub.protocol.backplane import (
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
