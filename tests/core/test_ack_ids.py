"""The ackIds a connection remembers (Azure docs: JSON subprotocol, ``ackId``
de-duplication): bounded, oldest forgotten first, and nothing made until the first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from webpubsub.core.connection import AckIds


def test_nothing_is_made_for_a_connection_that_never_sends_an_ack_id() -> None:
    ids = AckIds()
    assert ids._seen is None
    assert 1 not in ids and len(ids) == 0 and list(ids) == []
    assert ids._seen is None  # reading made nothing
    ids.add(1)
    assert 1 in ids and list(ids) == [1]


@given(st.lists(st.integers(min_value=0, max_value=20), max_size=60), st.integers(1, 8))
def test_the_newest_ids_are_kept_up_to_the_limit(adds: list[int], limit: int) -> None:
    ids = AckIds(limit)
    model: list[int] = []
    for ack_id in adds:
        ids.add(ack_id)
        if ack_id in model:
            model.remove(ack_id)
        model.append(ack_id)
        del model[:-limit]
    assert list(ids) == model and len(ids) == len(model)
    assert all(a in ids for a in model)
    assert not any(a in ids for a in set(adds) - set(model))
