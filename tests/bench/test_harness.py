"""The benchmark harness's pure parts: the latency stamp, the quantile that counts lost
messages, and the rate search (bench/harness.py)."""

from __future__ import annotations

import json
import math

import pytest
from harness import (
    STAMP_SIZE,
    RateSearch,
    payload,
    quantile_with_lost,
    read_stamp,
    stamp,
)
from hypothesis import given
from hypothesis import strategies as st

seqs = st.integers(0, 2**32 - 1)
times = st.integers(0, 2**64 - 1)


@given(seqs, times, st.integers(STAMP_SIZE, 4096))
def test_a_stamp_survives_every_wrapping_the_scenarios_use(seq: int, ns: int, size: int) -> None:
    body = payload(seq, ns, size)
    assert len(body) == len(body.encode()) == size
    wrapped = [
        body,  # a simple client's text frame, a REST body
        json.dumps({"type": "message", "from": "group", "group": "g1", "data": body}),
        "42" + json.dumps(["m", body]),  # socket.io EVENT
    ]
    for frame in wrapped:
        assert read_stamp(frame) == (seq, ns)


def test_a_frame_without_a_stamp_reads_as_none() -> None:
    assert read_stamp('{"type":"system","event":"connected"}') is None
    assert read_stamp("2") is None  # an Engine.IO ping
    assert read_stamp(stamp(1, 2)[:-1]) is None  # cut short
    assert read_stamp("@S" + "z" * 24) is None  # not hex
    assert stamp(1, 2) == "@S00000001" + "0000000000000002"


@given(st.lists(st.integers(0, 10**12)), st.integers(0, 1000), st.floats(0.01, 1.0))
def test_lost_messages_count_as_later_than_any_latency(
    values: list[int], lost: int, q: float
) -> None:
    ordered = sorted(values)
    got = quantile_with_lost(ordered, lost, q)
    n = len(ordered) + lost
    if n == 0:
        assert math.isnan(got)
        return
    # The nearest-rank definition: the smallest value with at least q*n values at or below.
    everything = [*map(float, ordered), *[math.inf] * lost]
    rank = max(1, math.ceil(q * n))
    assert got == everything[rank - 1]
    at_or_below = sum(1 for v in everything if v <= got)
    assert at_or_below >= q * n


def test_one_lost_message_in_a_hundred_is_still_under_p99_but_two_are_not() -> None:
    assert quantile_with_lost([1.0] * 99, 1, 0.99) == 1.0
    assert quantile_with_lost([1.0] * 98, 2, 0.99) == math.inf


def run(search: RateSearch, threshold: float) -> RateSearch:
    """Drives ``search`` against a system that passes every rate up to ``threshold``."""
    for _ in range(search.max_steps + 1):  # bounded: the search must end by max_steps
        rate = search.next_rate()
        if rate is None:
            return search
        search.record(rate, rate <= threshold)
    raise AssertionError("the search asked for more steps than max_steps")


@given(
    start=st.floats(1.0, 1e4),
    threshold=st.floats(0.5, 1e6),
    max_steps=st.integers(1, 30),
    resolution=st.floats(1.01, 2.0),
)
def test_the_search_is_bounded_and_never_reports_a_failing_rate(
    start: float, threshold: float, max_steps: int, resolution: float
) -> None:
    search = run(RateSearch(start, max_steps=max_steps, resolution=resolution), threshold)
    assert len(search.steps) <= max_steps
    if search.best is not None:
        assert search.best <= threshold
        assert (search.best, True) in search.steps


@given(start=st.floats(1.0, 100.0), threshold=st.floats(1.0, 1e5), resolution=st.floats(1.05, 1.5))
def test_with_enough_steps_the_search_ends_within_its_resolution(
    start: float, threshold: float, resolution: float
) -> None:
    search = run(RateSearch(start, max_steps=60, resolution=resolution, floor=0.01), threshold)
    assert search.best is not None and search.failed is not None
    assert search.best <= threshold < search.failed
    assert search.failed / search.best <= resolution


def test_the_search_doubles_then_bisects() -> None:
    search = run(RateSearch(10, max_steps=6, resolution=1.1), threshold=50)
    assert [r for r, _ in search.steps][:4] == [10, 20, 40, 80]
    assert search.steps[4][0] == pytest.approx(math.sqrt(40 * 80))
    assert search.best is not None and 40 <= search.best <= 50


def test_the_search_stops_at_its_ceiling() -> None:
    search = run(RateSearch(10, max_steps=10, ceiling=35), threshold=1000)
    assert [r for r, _ in search.steps] == [10, 20, 35]
    assert search.best == 35


@given(
    st.integers(0, 10**6),
    st.floats(1.0, 10**5),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
)
def test_the_sends_due_in_a_window_are_counted_exactly(
    t0: int, interval: float, a: int, b: int
) -> None:
    from loadgen import due_in

    start, end = t0 + min(a, b), t0 + max(a, b)
    brute = sum(
        1 for i in range(10**6 // int(interval) + 2) if start <= t0 + int(i * interval) < end
    )
    assert due_in(t0, interval, start, end) == brute
