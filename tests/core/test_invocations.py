"""The open invocations of one connection: duplicates and the limit refused, a
cancelled invocation never started, handles returned for cancelling."""

from __future__ import annotations

import pytest

from webpubsub.core.invocations import DEFAULT_MAX_INVOCATIONS, Invocations
from webpubsub.errors import DuplicateInvocation, TooManyInvocations


def test_an_open_id_is_refused_until_it_is_closed() -> None:
    invocations: Invocations[str] = Invocations()
    invocations.open("1")
    with pytest.raises(DuplicateInvocation) as info:
        invocations.open("1")
    assert info.value.ack_name == "Duplicate"
    assert "'1'" in info.value.message
    assert invocations.start("1", "call-1")
    assert invocations.close("1") == "call-1"
    invocations.open("1")  # free again
    assert "1" in invocations and len(invocations) == 1


def test_past_the_limit_the_next_is_refused() -> None:
    invocations: Invocations[str] = Invocations(limit=2)
    invocations.open("a")
    invocations.open("b")
    with pytest.raises(TooManyInvocations) as info:
        invocations.open("c")
    assert info.value.ack_name == "TooManyRequests"
    assert "limit 2" in info.value.message
    invocations.close("a")
    invocations.open("c")
    assert DEFAULT_MAX_INVOCATIONS == 16


def test_a_closed_invocation_cannot_start() -> None:
    invocations: Invocations[str] = Invocations()
    invocations.open("1")
    assert invocations.close("1") is None  # cancelled before its call started
    assert not invocations.start("1", "call")
    assert invocations.close("never-opened") is None


def test_close_all_returns_every_id_and_its_call() -> None:
    invocations: Invocations[str] = Invocations()
    for invocation_id in ("1", "2", "3"):
        invocations.open(invocation_id)
    invocations.start("1", "call-1")
    invocations.start("3", "call-3")
    assert invocations.close_all() == {"1": "call-1", "2": None, "3": "call-3"}
    assert len(invocations) == 0
