"""Routing on the raw, percent-encoded path (Azure REST API reference)."""

from __future__ import annotations

from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from webpubsub.server.rest import (
    add_user_to_group,
    remove_connection_from_group,
    route,
    send_to_user,
)

IDS = st.text(min_size=1, max_size=40)


@given(user=IDS, group=IDS)
def test_any_id_survives_the_round_trip_through_the_path(user: str, group: str) -> None:
    """What the SDKs percent-encode (``/`` as ``%2F``, spaces, unicode) routes intact."""
    path = f"/api/hubs/Chat/users/{quote(user, safe='')}/groups/{quote(group, safe='')}"
    found = route("PUT", path)
    assert not isinstance(found, list)
    matched, params = found
    assert matched.handler is add_user_to_group
    assert params == {"hub": "Chat", "user": user, "group": group}


def test_observed_sdk_paths() -> None:
    found = route("POST", "/api/hubs/chat/users/user%40example.com%2Fx%20y/:send")
    assert not isinstance(found, list)
    assert found[0].handler is send_to_user
    assert found[1]["user"] == "user@example.com/x y"
    found = route("DELETE", "/api/hubs/chat/groups/my%20group%2F%C3%A4%3F%23/connections/c1")
    assert not isinstance(found, list)
    assert found[0].handler is remove_connection_from_group
    assert found[1] == {"hub": "chat", "group": "my group/ä?#", "connection": "c1"}


def test_unknown_shapes_and_wrong_methods() -> None:
    assert route("GET", "/api/hubs/chat/nothing") == []
    assert route("GET", "/api/hubs/chat/connections/c1") == ["DELETE", "HEAD"]
    assert route("POST", "/api/hubs/chat/users//:send") == []  # an empty id is no id


@given(st.text(max_size=80))
def test_arbitrary_paths_route_or_not_without_raising(path: str) -> None:
    found = route("POST", "/api/" + path)
    assert isinstance(found, list | tuple)
