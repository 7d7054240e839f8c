"""Connection state: base64 of a compact JSON object, as the express SDK keeps it."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.protocol.cloudevents import MAX_STATE_BYTES
from webpubsub.sdk import ConnectionState, decode_state, encode_state


def test_the_express_sdk_encoding_is_used() -> None:
    assert encode_state({"key": "a"}) == "eyJrZXkiOiJhIn0="
    assert decode_state("eyJrZXkiOiJhIn0=") == {"key": "a"}
    assert encode_state({}) == "e30="


@pytest.mark.parametrize(
    "values", [{}, {"a": 1, "b": [1, "x", None], "c": {"d": True}}, {"ü": "✓"}]
)
def test_round_trip(values: dict[str, object]) -> None:
    assert decode_state(encode_state(values)) == values


@pytest.mark.parametrize(
    "header", ["", "   ", "not base64!", "W10=", "aGk=", "ImEi", "eyJrZXkiOiJhIn0"]
)
def test_decoding_is_lenient(header: str) -> None:
    # Unpadded base64 of an object still decodes; anything else reads as empty.
    expected = {"key": "a"} if header == "eyJrZXkiOiJhIn0" else {}
    assert decode_state(header) == expected


def test_unserialisable_values_raise_type_error() -> None:
    with pytest.raises(TypeError, match="JSON"):
        encode_state({"o": object()})


def test_a_state_over_the_services_limit_raises_naming_it() -> None:
    """8 KiB of header is what the service keeps: the app server learns it at once,
    not from a refused event."""
    fits = encode_state({"k": "x" * 6136})  # 6,144 bytes of JSON: 8,192 of base64
    assert len(fits) == MAX_STATE_BYTES
    with pytest.raises(ValueError, match=f"at most {MAX_STATE_BYTES} bytes"):
        encode_state({"k": "x" * 6137})


@given(st.dictionaries(st.text(max_size=20), st.text(max_size=3000), max_size=5))
def test_a_state_round_trips_or_is_refused_exactly_when_too_large(values: dict[str, str]) -> None:
    try:
        header = encode_state(values)
    except ValueError:
        assert len(base64.b64encode(orjson.dumps(values))) > MAX_STATE_BYTES
    else:
        assert len(header) <= MAX_STATE_BYTES
        assert decode_state(header) == values


def test_changes_are_tracked() -> None:
    state = ConnectionState.from_header("eyJrZXkiOiJhIn0=")
    assert (dict(state), state.raw, state.modified) == ({"key": "a"}, "eyJrZXkiOiJhIn0=", False)
    assert state.get("key") == "a" and "key" in state and len(state) == 1
    state["n"] = 1
    assert state.modified
    assert state.encode() == encode_state({"key": "a", "n": 1})

    for change in (lambda s: s.__delitem__("key"), lambda s: s.clear(), lambda s: s.pop("key")):
        state = ConnectionState.from_header("eyJrZXkiOiJhIn0=")
        change(state)
        assert state.modified
        assert state.encode() == "e30="

    empty = ConnectionState.from_header(None)
    assert (dict(empty), empty.raw, empty.modified) == ({}, "", False)


def test_a_value_changed_in_place_is_not_a_change_until_the_key_is_reassigned() -> None:
    # As documented: only assigning, deleting and clearing keys are seen.
    state = ConnectionState({"list": [1]})
    state["list"].append(2)
    assert not state.modified
    state["list"] = [*state["list"], 3]
    assert state.modified
    assert decode_state(state.encode()) == {"list": [1, 2, 3]}
