"""The JSON-subprotocol router, below the socket layer: frames in, effects out."""

from __future__ import annotations

import json

import orjson
import pytest

from tests.core.test_hub import make_conn
from webpubsub.core.connection import Connection
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permissions
from webpubsub.core.router import (
    GROUP_CHANGED,
    CallEvent,
    CallInvoke,
    CancelCall,
    CloseClient,
    GroupChanged,
    Publish,
    Reply,
    failed,
    route,
    succeeded,
)
from webpubsub.errors import UpstreamError
from webpubsub.protocol.backplane import Scope, Send
from webpubsub.protocol.frames import ClientProtocol
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.protocol.wsframe import CloseCode

JOIN = {"type": "joinGroup", "group": "g"}
SEND = {"type": "sendToGroup", "group": "g", "dataType": "text", "data": "hi"}


def client(roles: tuple[str, ...] = ()) -> tuple[Connection, Hub]:
    conn, _ = make_conn("c1", user="u", protocol=ClientProtocol.JSON)
    conn.permissions = Permissions.from_roles(roles)
    hub = Hub("h")
    hub.add(conn)
    return conn, hub


def ack(effect: object) -> dict[str, object]:
    assert isinstance(effect, Reply), effect
    frame: dict[str, object] = orjson.loads(effect.frame)
    assert frame["type"] == "ack"
    return frame


def frame(obj: dict[str, object]) -> str:
    return json.dumps(obj)


def test_join_and_leave_are_done_at_once_and_acked() -> None:
    conn, hub = client(("webpubsub.joinLeaveGroup",))
    assert ack(route(conn, hub, frame({**JOIN, "ackId": 1}))) == {
        "type": "ack",
        "ackId": 1,
        "success": True,
    }
    assert conn.groups == {"g"} and hub.has_group("g")
    # The same ackId again: Duplicate, and nothing runs.
    hub.leave(conn, "g")
    duplicate = ack(route(conn, hub, frame({**JOIN, "ackId": 1})))
    assert duplicate["error"] == {
        "name": "Duplicate",
        "message": "Message with ack-id: 1 has been processed",
    }
    assert conn.groups == set()
    assert route(conn, hub, frame({"type": "leaveGroup", "group": "g"})) is GROUP_CHANGED


def test_a_forbidden_request_is_acked_with_forbidden_and_may_be_retried() -> None:
    conn, hub = client()
    refused = ack(route(conn, hub, frame({**JOIN, "ackId": 7})))
    assert refused["success"] is False
    assert refused["error"] == {
        "name": "Forbidden",
        "message": "The connection has no permission to join or leave group 'g'.",
    }
    assert conn.groups == set()
    assert 7 not in conn.ack_ids  # a failed ackId is not recorded
    assert route(conn, hub, frame(JOIN)) is None  # without ackId: silently refused
    conn.permissions = Permissions.from_roles(("webpubsub.joinLeaveGroup",))
    assert ack(route(conn, hub, frame({**JOIN, "ackId": 7})))["success"] is True


def test_send_to_group_becomes_a_publish_acked_after_it() -> None:
    conn, hub = client(("webpubsub.sendToGroup",))
    effect = route(conn, hub, frame({**SEND, "ackId": 3, "noEcho": True}))
    assert isinstance(effect, Publish) and effect.ack_id == 3
    command = effect.command
    assert isinstance(command, Send)
    assert (command.hub, command.target.scope, command.target.id) == ("h", Scope.GROUP, "g")
    assert command.excluded == frozenset({"c1"})
    assert command.message.from_user_id == "u"
    assert 3 not in conn.ack_ids  # recorded only once the publish succeeded
    assert orjson.loads(succeeded(conn, 3) or b"") == {"type": "ack", "ackId": 3, "success": True}
    assert 3 in conn.ack_ids
    assert succeeded(conn, None) is None


def test_an_event_becomes_a_call_whose_failure_acks_internal_server_error() -> None:
    conn, hub = client()
    effect = route(
        conn, hub, frame({"type": "event", "event": "e", "dataType": "json", "data": 1, "ackId": 4})
    )
    assert effect == CallEvent("e", Payload(DataType.JSON, b"1"), 4)
    failure = orjson.loads(failed(conn, 4, UpstreamError("The event handler failed.")) or b"")
    assert failure["error"] == {
        "name": "InternalServerError",
        "message": "The event handler failed.",
    }
    assert failed(conn, None, UpstreamError("x")) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("not json", CloseCode.POLICY_VIOLATION),
        ("[1]", CloseCode.POLICY_VIOLATION),
        (frame({"type": "joinGroup"}), CloseCode.POLICY_VIOLATION),  # bad, and no ackId
    ],
)
def test_frames_that_are_not_requests_close_the_connection(raw: str, expected: int) -> None:
    conn, hub = client()
    effect = route(conn, hub, raw)
    assert isinstance(effect, CloseClient) and effect.code == expected
    assert effect.reason.startswith("Invalid message: ")


def test_bad_requests_with_an_ack_id_get_a_bad_request_ack() -> None:
    conn, hub = client(("webpubsub.joinLeaveGroup",))
    bad = ack(route(conn, hub, frame({"type": "joinGroup", "ackId": 2})))
    assert bad["error"]["name"] == "BadRequest"  # type: ignore[index]
    unknown = ack(route(conn, hub, frame({"type": "frobnicate", "ackId": 5})))
    assert unknown["error"] == {  # type: ignore[comparison-overlap]
        "name": "BadRequest",
        "message": "Message type 'frobnicate' is not supported.",
    }
    assert route(conn, hub, frame({"type": "frobnicate"})) is None


def test_ping_and_sequence_acks() -> None:
    conn, hub = client()
    assert route(conn, hub, frame({"type": "ping"})) == Reply(b'{"type":"pong"}')
    assert route(conn, hub, frame({"type": "sequenceAck", "sequenceId": 1})) is None


def test_a_join_past_the_group_limit_is_a_bad_request() -> None:
    conn, hub = client(("webpubsub.joinLeaveGroup",))
    conn.max_groups = 3
    for i in range(3):
        assert ack(route(conn, hub, frame({"type": "joinGroup", "group": f"g{i}", "ackId": i})))[
            "success"
        ]
    refused = ack(route(conn, hub, frame({"type": "joinGroup", "group": "g9", "ackId": 9})))
    assert refused["success"] is False
    assert refused["error"]["name"] == "BadRequest"  # type: ignore[index]
    assert "3 groups" in refused["error"]["message"]  # type: ignore[index]
    assert conn.groups == {"g0", "g1", "g2"} and not hub.has_group("g9")
    # A group it is in already is fine; leaving one makes room.
    assert ack(route(conn, hub, frame({"type": "joinGroup", "group": "g1", "ackId": 10})))[
        "success"
    ]
    left = route(conn, hub, frame({"type": "leaveGroup", "group": "g0"}))
    assert left == GroupChanged(("left", "g0"))
    assert ack(route(conn, hub, frame({"type": "joinGroup", "group": "g9", "ackId": 11})))[
        "success"
    ]


def test_an_invoke_becomes_a_call_and_a_cancel_a_cancel() -> None:
    conn, hub = client()
    effect = route(
        conn,
        hub,
        frame(
            {
                "type": "invoke",
                "invocationId": "i1",
                "target": "event",
                "event": "add",
                "dataType": "text",
                "data": "x",
            }
        ),
    )
    assert effect == CallInvoke("i1", "add", Payload.text("x"))
    assert route(conn, hub, frame({"type": "cancelInvocation", "invocationId": "i1"})) == (
        CancelCall("i1")
    )


def test_a_bad_invoke_gets_a_failed_invoke_response() -> None:
    conn, hub = client()
    effect = route(conn, hub, frame({"type": "invoke", "invocationId": "i1", "event": "9x"}))
    assert isinstance(effect, Reply)
    reply = orjson.loads(effect.frame)
    assert reply["invocationId"] == "i1" and reply["success"] is False
    assert reply["error"]["name"] == "BadRequest"
    no_id = route(conn, hub, frame({"type": "invoke", "event": "e"}))
    assert isinstance(no_id, CloseClient) and no_id.code == CloseCode.POLICY_VIOLATION
