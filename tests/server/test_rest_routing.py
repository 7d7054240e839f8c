"""Routing on the raw, percent-encoded path (Azure REST API reference)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import InvalidParameter
from webpubsub.server.rest import (
    INT32_MAX,
    add_user_to_group,
    int_param,
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


@given(raw=st.text(max_size=30) | st.from_regex(r"\A[0-9]{1,6000}\Z"), low=st.integers(0, 5))
def test_an_integer_parameter_is_its_value_in_range_or_a_400(raw: str, low: int) -> None:
    """Any text, however long: the value when it is ASCII digits in range, else the
    parameter's own validation error (never int()'s ValueError)."""
    digits = raw.lstrip("0") or "0"
    in_range = raw.isascii() and raw.isdigit() and len(digits) <= 10
    in_range = in_range and low <= int(digits) <= INT32_MAX
    try:
        value = int_param("top", raw, low=low)
    except InvalidParameter as exc:
        assert exc.target == "top"
        assert not in_range
    else:
        assert in_range and value == int(digits)


def test_integer_parameters_are_int32_as_the_rest_reference_declares() -> None:
    assert int_param("top", "0" * 5000 + str(INT32_MAX), low=1) == INT32_MAX
    for raw in (str(INT32_MAX + 1), "9" * 5000, "1" + "0" * 4400, "١", "²", "+1", " 1"):
        with pytest.raises(InvalidParameter, match="from 1 to 2147483647"):
            int_param("top", raw, low=1)
