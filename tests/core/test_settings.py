"""Hub event-handler settings: which groups a group presence filter matches."""

from __future__ import annotations

import fnmatch
import time

from hypothesis import given
from hypothesis import strategies as st

from webpubsub.core.settings import GroupPresenceEvents

_CHARS = st.sampled_from("ab*:[?]")


def _presence(*filters: str) -> GroupPresenceEvents:
    return GroupPresenceEvents(frozenset({"joined"}), filters)


def _oracle(pattern: str, name: str) -> bool:
    """``fnmatch`` restricted to ``*``: ``[`` and ``?`` stand for themselves."""
    escaped = "".join("[[]" if c == "[" else "[?]" if c == "?" else c for c in pattern)
    return fnmatch.fnmatchcase(name, escaped)


@given(st.text(_CHARS, max_size=10), st.text(st.sampled_from("ab:[?]*"), max_size=14))
def test_a_filter_matches_as_a_star_only_glob(pattern: str, name: str) -> None:
    assert _presence(pattern).matches("joined", name) == _oracle(pattern, name)


@given(st.lists(st.text(_CHARS, max_size=6), min_size=1, max_size=3), st.text("ab:*", max_size=10))
def test_several_filters_match_when_one_does(patterns: list[str], name: str) -> None:
    expected = any(_oracle(p, name) for p in patterns)
    assert _presence(*patterns).matches("joined", name) == expected


def test_no_filter_matches_every_group_and_an_unnamed_event_none() -> None:
    assert GroupPresenceEvents(frozenset({"joined"})).matches("joined", "any")
    assert not _presence("*").matches("left", "any")


def test_a_pathological_filter_is_matched_in_linear_time() -> None:
    # A backtracking regex took ~49 s on this; a client chooses group names.
    cases = [("*a" * 5 + "*b", "a" * 1024), ("*:*:*:admin", ":" * 1020)]
    for pattern, name in cases:
        presence = _presence(pattern)
        start = time.perf_counter()
        assert not presence.matches("joined", name)
        assert time.perf_counter() - start < 0.1
