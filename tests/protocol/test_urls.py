"""URLs in logs and problems: nothing of a password, a query or a fragment survives."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from webpubsub.protocol.urls import redacted


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cr/etPW@host:6379/0", "redis://***@host:6379/0"),
        ("redis://:pa?ss#w@host/0", "redis://***?..."),
        ("https://h/hook?code=ab@cd", "https://***?..."),
        ("rediss://user:pw@h:6380/0?ssl_ca_certs=/ca.pem", "rediss://***@h:6380/0?..."),
        ("https://h/hook?code=SECRET", "https://h/hook?..."),
        ("https://h/hook#frag", "https://h/hook?..."),
        ("https://h/hook#frag?q", "https://h/hook?..."),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///run/redis.sock?password=x", "unix:///run/redis.sock?..."),
    ],
)
def test_redacted(url: str, shown: str) -> None:
    assert redacted(url) == shown


@given(
    scheme=st.sampled_from(["redis", "rediss", "http", "https"]),
    password=st.text(min_size=4),
    rest=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.:/", max_size=30),
    query=st.text(max_size=20),
    mark=st.sampled_from("?#"),
)
def test_no_password_or_query_survives(
    scheme: str, password: str, rest: str, query: str, mark: str
) -> None:
    url = f"{scheme}://user:{password}@{rest}" + (f"{mark}{query}" if query else "")
    shown = redacted(url)
    assume(password not in f"{scheme}://***@{rest}?...")  # not there by chance
    assert password not in shown
    assert query not in shown or query in f"{scheme}://***@{rest}?..."
    if query:
        assert shown.endswith("?...")
