"""The backplane contract: every implementation passes this suite.

Only the in-memory backplane exists today, run directly and through the wire codec;
a networked one (Redis) joins the ``cluster`` parametrization and must pass the same
tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from webpubsub.backplane.base import Backplane
from webpubsub.backplane.memory import MemoryBackplane, MemoryBus
from webpubsub.protocol.backplane import (
    Answer,
    ChangeGroup,
    ChangePermission,
    Close,
    Command,
    Exists,
    GroupAction,
    GroupMember,
    HasPermission,
    ListGroup,
    Query,
    Send,
    Target,
)
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.payload import DataType, Payload


class RecordingNode:
    """A node stand-in that records commands and answers queries with a fixed value."""

    def __init__(self, node_id: str, answer: Answer = False) -> None:
        self.node_id = node_id
        self.commands: list[Command] = []
        self._answer = answer

    def apply(self, command: Command) -> None:
        self.commands.append(command)

    def answer(self, query: Query) -> Answer:
        return self._answer


Cluster = Callable[[int], Awaitable[list[Backplane]]]


@pytest.fixture(params=["memory", "memory-wire"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """``await cluster(n)``: n backplanes joined to one another (``-wire``: every
    envelope through the wire codec, as a networked backplane sends it)."""
    started: list[Backplane] = []
    bus = MemoryBus()
    wire = request.param == "memory-wire"

    async def make(n: int) -> list[Backplane]:
        planes: list[Backplane] = [MemoryBackplane(bus, wire=wire) for _ in range(n)]
        started.extend(planes)
        return planes

    yield make
    for plane in started:
        await plane.stop()


def send(text: str) -> Send:
    return Send("hub", Target.all(), DataMessage(Payload.text(text)))


async def test_a_command_reaches_every_node_in_publish_order(cluster: Cluster) -> None:
    a, b = await cluster(2)
    node_a, node_b = RecordingNode("a"), RecordingNode("b")
    await a.start(node_a)
    await b.start(node_b)
    commands = [send("1"), Close("hub", Target.user("u"), "bye"), send("2")]
    for command in commands:
        await a.publish(command)
    assert node_a.commands == commands  # the publishing node included
    assert node_b.commands == commands


async def test_a_query_gets_one_answer_per_node(cluster: Cluster) -> None:
    a, b, c = await cluster(3)
    await a.start(RecordingNode("a", answer=False))
    await b.start(RecordingNode("b", answer=True))
    await c.start(RecordingNode("c", answer=False))
    answers = await c.gather(Exists("hub", Target.connection("x")))
    assert sorted(answers, key=str) == [False, False, True]


async def test_a_stopped_node_no_longer_receives(cluster: Cluster) -> None:
    a, b = await cluster(2)
    node_a, node_b = RecordingNode("a"), RecordingNode("b")
    await a.start(node_a)
    await b.start(node_b)
    await b.stop()
    await a.publish(send("after"))
    assert node_b.commands == []
    assert node_a.commands == [send("after")]
    assert await a.gather(Exists("hub", Target.all())) == [False]


async def test_every_kind_of_command_and_answer_arrives_as_it_was_sent(cluster: Cluster) -> None:
    a, b = await cluster(2)
    members = (GroupMember("c1", "u"), GroupMember("c2", None))
    node_a, node_b = RecordingNode("a", answer=members), RecordingNode("b", answer=None)
    await a.start(node_a)
    await b.start(node_b)
    binary = DataMessage(Payload(DataType.BINARY, b"\x00\xff"), Origin.GROUP, "g", "u")
    commands: list[Command] = [
        Send("hub", Target.group("g"), binary, frozenset({"c1", "c2"}), "userId eq 'x'"),
        Close("hub", Target.connection("c1"), "bye", frozenset({"c3"})),
        ChangeGroup("hub", Target.user("u"), GroupAction.ADD, ("g1", "g2"), "true"),
        ChangeGroup("hub", Target.all(), GroupAction.REMOVE_ALL),
        ChangePermission("hub", "c1", "sendToGroup", True, "g"),
        ChangePermission("hub", "c1", "joinLeaveGroup", False, None),
    ]
    for command in commands:
        await b.publish(command)
    assert node_a.commands == commands
    answers = await a.gather(ListGroup("hub", "g"))
    assert sorted(answers, key=str) == sorted([members, None], key=str)
    assert await a.gather(HasPermission("hub", "c1", "sendToGroup", None)) in (
        [members, None],
        [None, members],
    )
