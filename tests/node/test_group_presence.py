"""Group presence events at the node: every way a connection joins or leaves a group (its
own joinGroup/leaveGroup, REST through the backplane's ChangeGroup, its token or connect
response) tells the event-handler port, in order, after ``connected``; filters and
event names pick what is told; a repeated join, a leave of a group it is not in, and
closing the connection tell nothing."""

from __future__ import annotations

import orjson

from tests.node.test_node import RecordingSink, RecordingUpstream, admission
from webpubsub.core.settings import EventHandlerSettings, GroupPresenceEvents, HubSettings
from webpubsub.node.node import Node
from webpubsub.protocol.backplane import ChangeGroup, GroupAction, Target
from webpubsub.protocol.cloudevents import EventContext
from webpubsub.protocol.frames import ClientProtocol

JOIN_LEAVE = "webpubsub.joinLeaveGroup"


class PresenceUpstream(RecordingUpstream):
    """Records connected and group presence events in one list, in the order told."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, str]] = []
        self.event_ids: list[str] = []

    def connected(self, hub: HubSettings, ctx: EventContext) -> None:
        super().connected(hub, ctx)
        self.events.append(("connected", ctx.connection_id, ""))

    def group_presence(self, hub: HubSettings, ctx: EventContext, event: str, group: str) -> None:
        assert hub.handler_for_group_presence(event, group) is not None
        self.events.append((event, ctx.connection_id, group))
        self.event_ids.append(ctx.event_id)


def presence_node(
    names: frozenset[str] = frozenset({"joined", "left"}), filters: tuple[str, ...] = ()
) -> tuple[Node, PresenceUpstream]:
    up = PresenceUpstream()
    handlers = (
        EventHandlerSettings(url_template="http://h.test/", system_events=frozenset({"connected"})),
        EventHandlerSettings(
            url_template="http://h.test/",
            group_presence_events=GroupPresenceEvents(names, filters),
        ),
    )

    async def publish(command: object) -> None:
        pass  # pragma: no cover - nothing here publishes

    node = Node(
        hub_settings=lambda name: HubSettings(name=name, event_handlers=handlers),
        upstream=up,  # type: ignore[arg-type]
        origin="localhost",
        publish=publish,  # type: ignore[arg-type]
    )
    return node, up


def frame(**msg: object) -> bytes:
    return orjson.dumps(msg)


async def test_token_or_connect_groups_are_joined_after_connected() -> None:
    node, up = presence_node()
    node.attach(admission(groups=("a", "b", "a")), RecordingSink())
    assert up.events == [("connected", "c1", ""), ("joined", "c1", "a"), ("joined", "c1", "b")]
    assert len(set(up.event_ids)) == 2  # each event its own ce-id


async def test_a_clients_own_join_and_leave_with_and_without_ack_id() -> None:
    node, up = presence_node()
    sink = RecordingSink()
    conn = node.attach(admission(roles=(JOIN_LEAVE,)), sink)
    await node.receive(conn, frame(type="joinGroup", group="g", ackId=1))
    await node.receive(conn, frame(type="joinGroup", group="g", ackId=2))  # in it already
    await node.receive(conn, frame(type="joinGroup", group="h"))
    await node.receive(conn, frame(type="leaveGroup", group="g", ackId=3))
    await node.receive(conn, frame(type="leaveGroup", group="g"))  # not in it any more
    await node.receive(conn, frame(type="leaveGroup", group="h"))
    assert up.events[1:] == [
        ("joined", "c1", "g"),
        ("joined", "c1", "h"),
        ("left", "c1", "g"),
        ("left", "c1", "h"),
    ]
    acks = [t for t in sink.texts() if t.get("type") == "ack"]
    assert [a["success"] for a in acks] == [True, True, True]


async def test_a_refused_join_tells_nothing() -> None:
    node, up = presence_node()
    sink = RecordingSink()
    conn = node.attach(admission(roles=(JOIN_LEAVE,)), sink)
    conn.max_groups = 0
    await node.receive(conn, frame(type="joinGroup", group="g", ackId=1))
    # Forbidden too: a connection without the role.
    other = node.attach(admission(connection_id="c2"), RecordingSink())
    await node.receive(other, frame(type="joinGroup", group="g"))
    assert [t["error"]["name"] for t in sink.texts() if t.get("type") == "ack"] == ["BadRequest"]
    assert up.events == [("connected", "c1", ""), ("connected", "c2", "")]


async def test_rest_adds_and_removes_through_the_backplane_command() -> None:
    node, up = presence_node()
    node.attach(admission(ClientProtocol.SIMPLE, connection_id="a", user_id="u1"), RecordingSink())
    node.attach(admission(ClientProtocol.SIMPLE, connection_id="b", user_id="u2"), RecordingSink())
    del up.events[:]
    node.apply(ChangeGroup("chat", Target.user("u1"), GroupAction.ADD, ("g", "k")))
    node.apply(ChangeGroup("chat", Target.connection("b"), GroupAction.ADD, ("g",)))
    node.apply(ChangeGroup("chat", Target.connection("b"), GroupAction.ADD, ("g",)))  # again
    node.apply(ChangeGroup("chat", Target.all(), GroupAction.REMOVE, ("g", "g", "x")))
    node.apply(ChangeGroup("chat", Target.connection("a"), GroupAction.REMOVE_ALL))
    assert up.events == [
        ("joined", "a", "g"),
        ("joined", "a", "k"),
        ("joined", "b", "g"),
        ("left", "a", "g"),
        ("left", "b", "g"),
        ("left", "a", "k"),
    ]


async def test_closing_a_connection_in_groups_tells_no_left() -> None:
    node, up = presence_node()
    sink = RecordingSink()
    conn = node.attach(admission(groups=("g",)), sink)
    node.detach(conn, sink, "bye", recoverable=False)
    assert [ctx.connection_id for ctx, _ in up.ends] == ["c1"]
    assert up.events == [("connected", "c1", ""), ("joined", "c1", "g")]


async def test_filters_and_event_names_pick_what_is_told() -> None:
    node, up = presence_node(frozenset({"left"}), ("room-*",))
    conn = node.attach(admission(groups=("room-1", "lobby"), roles=(JOIN_LEAVE,)), RecordingSink())
    await node.receive(conn, frame(type="leaveGroup", group="lobby"))
    await node.receive(conn, frame(type="leaveGroup", group="room-1"))
    assert up.events == [("connected", "c1", ""), ("left", "c1", "room-1")]
