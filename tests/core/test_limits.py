"""The inbound budget of a connection: token buckets with the time passed in."""

from __future__ import annotations

import gc

from hypothesis import given
from hypothesis import strategies as st

from webpubsub.core.limits import InboundLimit, TokenBucket
from webpubsub.core.settings import HubSettings


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(rate=10, capacity=10, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(10))
    assert not bucket.take(1, 0.0)
    assert bucket.take(1, 0.1) and not bucket.take(1, 0.1)
    assert sum(bucket.take(1, 100.0) for _ in range(20)) == 10  # never more than capacity


@given(
    st.lists(st.tuples(st.floats(0, 2), st.integers(0, 50)), max_size=60),
    st.integers(1, 100),
)
def test_a_bucket_never_grants_more_than_its_capacity_plus_its_rate(
    steps: list[tuple[float, int]], rate: int
) -> None:
    bucket = TokenBucket.full(rate=rate, capacity=rate, now=0.0)
    now, granted = 0.0, 0
    for delay, amount in steps:
        now += delay
        if bucket.take(amount, now):
            granted += amount
        assert 0 <= bucket.tokens <= bucket.capacity
    assert granted <= rate + rate * now + 1e-6


def test_the_limit_names_what_was_exceeded() -> None:
    settings = HubSettings(name="h", client_messages_per_second=2, client_bytes_per_second=100)
    limit = InboundLimit(settings, max_message_bytes=1000, now=0.0)
    assert limit.admit(900, 0.0) is None  # the byte bucket holds one largest message
    assert limit.admit(200, 0.0) == (
        "TooManyRequests: the client sent more than 100 bytes per second."
    )
    assert limit.admit(0, 0.0) == (
        "TooManyRequests: the client sent more than 2 messages per second."
    )
    assert limit.admit(10, 1.0) is None


def test_the_limit_keeps_no_reference_to_the_hub_settings() -> None:
    """For a hub without settings of its own each connection gets a fresh copy: the
    limit must not keep it alive for the connection's lifetime (its rates are in the
    buckets)."""
    settings = HubSettings(name="h", client_messages_per_second=2, client_bytes_per_second=100)
    limit = InboundLimit(settings, max_message_bytes=1000, now=0.0)
    assert all(settings not in gc.get_referents(part) for part in (limit, *gc.get_referents(limit)))
