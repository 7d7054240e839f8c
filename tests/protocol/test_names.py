"""Name rules: Azure REST API reference (hub, group, userId, connectionId), (hub case)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import BadRequest, InvalidName
from webpubsub.protocol.names import (
    hub_key,
    validate_connection_id,
    validate_event_name,
    validate_group,
    validate_hub,
    validate_user_id,
)


@pytest.mark.parametrize(
    "hub",
    ["chat", "Chat_1", "a", "h`,.[]", "A" + "b" * 127, "x.y"],
)
def test_valid_hubs_are_returned_unchanged(hub: str) -> None:
    # Azure REST API reference: ^[A-Za-z][A-Za-z0-9_`,.[\]]{0,127}$
    assert validate_hub(hub) == hub


@pytest.mark.parametrize(
    "hub",
    ["", "1chat", "_chat", "chat-1", "chat room", "chat/x", "A" + "b" * 128, "chat\n", "ch%61t"],
)
def test_invalid_hubs_raise_invalid_name(hub: str) -> None:
    with pytest.raises(InvalidName) as info:
        validate_hub(hub)
    assert info.value.http_status == 400
    assert info.value.code == "Error.BadRequest"


def test_hub_key_lower_cases_because_hubs_are_case_insensitive() -> None:
    #: key hubs by hub.lower().
    assert hub_key("Chat_1") == "chat_1"
    assert hub_key("CHAT") == hub_key("chat")
    with pytest.raises(InvalidName):
        hub_key("9lives")


@pytest.mark.parametrize("group", ["g1", "my group/ä?#", " x ", "g" * 1024, "."])
def test_valid_groups(group: str) -> None:
    # Azure REST API reference: 1..1024 chars, not whitespace-only; case-sensitive.
    assert validate_group(group) == group


@pytest.mark.parametrize("group", ["", " ", "\t\n ", "g" * 1025])
def test_invalid_groups(group: str) -> None:
    with pytest.raises(InvalidName):
        validate_group(group)


def test_invalid_name_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        validate_group("")


@pytest.mark.parametrize("validate", [validate_user_id, validate_connection_id])
def test_ids_need_one_to_1024_characters(validate: Callable[[str], str]) -> None:
    assert validate("u") == "u"
    assert validate(" ") == " "
    assert validate("x" * 1024) == "x" * 1024
    with pytest.raises(InvalidName):
        validate("")
    with pytest.raises(InvalidName):
        validate("x" * 1025)


@pytest.mark.parametrize("name", ["message", "a", "my-event_1.x", "E" * 128])
def test_valid_event_names(name: str) -> None:
    assert validate_event_name(name) == name


@pytest.mark.parametrize("name", ["", "1abc", "-x", "has space", "a/b", "E" * 129, "é"])
def test_invalid_event_names(name: str) -> None:
    with pytest.raises(InvalidName):
        validate_event_name(name)


@given(st.text(max_size=1100))
def test_arbitrary_names_are_accepted_or_refused_with_invalid_name(name: str) -> None:
    from webpubsub.protocol import names

    for check in (
        names.validate_hub,
        names.validate_group,
        names.validate_user_id,
        names.validate_connection_id,
        names.validate_event_name,
    ):
        with contextlib.suppress(InvalidName):
            assert check(name) == name


@given(
    st.lists(st.text(st.sampled_from("aZ9_`,.[]-é\n"), max_size=6) | st.just("a" * 200), max_size=6)
)
def test_a_hub_is_valid_as_the_pattern_says_asked_again_or_not(hubs: list[str]) -> None:
    from webpubsub.protocol.names import HUB_PATTERN

    for hub in hubs + hubs:
        valid = HUB_PATTERN.fullmatch(hub) is not None
        try:
            assert validate_hub(hub) == hub and valid, hub
        except InvalidName:
            assert not valid, hub


def test_only_names_a_hub_may_have_are_kept() -> None:
    """Hub names are checked once each, the last 256 kept; a name longer than a hub's
    (any length may be sent) is checked each time, never kept."""
    from webpubsub.protocol import names

    names._is_hub.cache_clear()
    for hub in ("chat", "a" * 128, "1bad"):
        with contextlib.suppress(InvalidName):
            validate_hub(hub)
    for _ in range(2):
        with pytest.raises(InvalidName):
            validate_hub("a" * 129)
        with pytest.raises(InvalidName):
            validate_hub("a" * 5000)
    info = names._is_hub.cache_info()
    assert (info.currsize, info.misses) == (3, 3)
