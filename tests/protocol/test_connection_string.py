"""Connection strings: Azure's REST authentication docs and the variants the SDKs accept."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import BadRequest
from webpubsub.protocol.connection_string import (
    ConnectionString,
    format_connection_string,
    generate_access_key,
    parse_connection_string,
)

# The probe's key (the official SDKs' traffic, header): base64-looking, ends in "==".
KEY = "dGVzdGtleS10ZXN0a2V5LXRlc3RrZXktdGVzdGtleS0xMjM0NTY3OA=="


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        # observed: "Endpoint without port + Port=18080" -> _config.endpoint
        (
            f"Endpoint=http://127.0.0.1;Port=18080;AccessKey={KEY};Version=1.0;",
            "http://127.0.0.1:18080",
        ),
        # observed: "Endpoint with trailing slash + Port=18080"
        (
            f"Endpoint=http://127.0.0.1/;Port=18080;AccessKey={KEY};Version=1.0;",
            "http://127.0.0.1:18080",
        ),
        # observed: "Endpoint with trailing slash, no Port" keeps the slash
        (
            f"Endpoint=http://127.0.0.1:18080/;AccessKey={KEY};Version=1.0;",
            "http://127.0.0.1:18080/",
        ),
        # observed: "lower-case keys, no Version"
        (f"endpoint=http://127.0.0.1:18080;accesskey={KEY}", "http://127.0.0.1:18080"),
        # observed: unknown keys are ignored
        (
            f"Endpoint=http://127.0.0.1:18080;AccessKey={KEY};Version=1.0;ClientEndpoint=http://x:1;",
            "http://127.0.0.1:18080",
        ),
        (
            f"Endpoint=http://127.0.0.1:18080;AccessKey={KEY};Version=1.0;AuthType=aad;",
            "http://127.0.0.1:18080",
        ),
        # observed: "https endpoint, Port=18443"
        (
            f"Endpoint=https://127.0.0.1;Port=18443;AccessKey={KEY};Version=1.0;",
            "https://127.0.0.1:18443",
        ),
        # Azure docs: REST authentication examples
        (
            f"Endpoint=https://contoso.webpubsub.azure.com;AccessKey={KEY};Version=1.0;",
            "https://contoso.webpubsub.azure.com",
        ),
        (f"ENDPOINT=http://localhost:8080;ACCESSKEY={KEY}", "http://localhost:8080"),
        # an empty Port= is ignored, as in the SDK (`if kwargs.get("port")`)
        (f"Endpoint=http://localhost:8080;Port=;AccessKey={KEY}", "http://localhost:8080"),
        # a path prefix is allowed (Azure docs: REST authentication "configurable prefix")
        (f"Endpoint=http://localhost:8080/pubsub;AccessKey={KEY}", "http://localhost:8080/pubsub"),
    ],
)
def test_parse_like_the_python_sdk(text: str, endpoint: str) -> None:
    assert parse_connection_string(text) == ConnectionString(endpoint=endpoint, access_key=KEY)


def test_key_is_split_at_first_equals_sign_so_base64_padding_survives() -> None:
    # Azure docs: REST authentication: split at the *first* '='.
    cs = parse_connection_string("AccessKey=abc==;Endpoint=http://h")
    assert cs.access_key == "abc=="


def test_first_occurrence_wins() -> None:
    # Azure docs: REST authentication: setdefault semantics, keys case-insensitive.
    cs = parse_connection_string(
        f"Endpoint=http://a;endpoint=http://b;AccessKey={KEY};ACCESSKEY=other"
    )
    assert cs == ConnectionString("http://a", KEY)


def test_surrounding_whitespace_of_the_whole_string_is_ignored() -> None:
    cs = parse_connection_string(f"  Endpoint=http://localhost:8080;AccessKey={KEY};Version=1.0;\n")
    assert cs == ConnectionString("http://localhost:8080", KEY)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (
            "Endpoint=http://127.0.0.1:18080;Version=1.0;",
            "no AccessKey",
        ),  # observed "Missing AccessKey"
        (f"AccessKey={KEY};Version=1.0;", "no Endpoint"),
        (f"Endpoint=;AccessKey={KEY}", "no Endpoint"),
        ("Endpoint=http://h;AccessKey=", "no AccessKey"),
        (f"Endpoint=http://h;garbage;AccessKey={KEY}", "malformed"),
        (f"Endpoint=ws://127.0.0.1:18080;AccessKey={KEY};Version=1.0;", "http"),  # observed ws://
        (f"Endpoint=127.0.0.1:18080;AccessKey={KEY}", "http"),
        # observed "Endpoint with port AND Port= (double port)": the SDK breaks; we refuse.
        (f"Endpoint=http://127.0.0.1:18080;Port=18080;AccessKey={KEY};Version=1.0;", "port"),
        (f"Endpoint=http://h;Port=abc;AccessKey={KEY}", "port"),
        (f"Endpoint=http://h:99999;AccessKey={KEY}", "port"),
        (f"Endpoint=http://;AccessKey={KEY}", "host"),
        (f"Endpoint=http://h?x=1;AccessKey={KEY}", "query"),
        (f"Endpoint=http://h w;AccessKey={KEY}", "whitespace"),
        ("", "no Endpoint"),
    ],
)
def test_malformed_strings_raise_bad_request_without_the_key(text: str, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_connection_string(text)
    assert reason in info.value.message
    assert KEY not in info.value.message
    assert KEY[:10] not in str(info.value)


def test_repr_hides_the_key() -> None:
    assert KEY not in repr(ConnectionString("http://h", KEY))


def test_format_puts_the_port_inside_endpoint_and_no_port_key() -> None:
    # Brief / Azure docs: REST authentication: the SDK appends Port= to Endpoint; never emit both.
    text = format_connection_string("http://localhost:8080", "KEY")
    assert text == "Endpoint=http://localhost:8080;AccessKey=KEY;Version=1.0;"


def test_format_refuses_semicolons() -> None:
    with pytest.raises(BadRequest):
        format_connection_string("http://h", "a;b")
    with pytest.raises(BadRequest):
        format_connection_string("http://h/;x", "k")


def test_generated_keys_are_long_url_safe_and_distinct() -> None:
    keys = {generate_access_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(key) >= 43
        assert (
            len(key.encode()) >= 32
        )  # PyJWT warns below 32 bytes (Azure docs: REST authentication)
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        assert parse_connection_string(format_connection_string("http://h", key)).access_key == key


_hosts = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,3}\Z")
_endpoints = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["http", "https", "HTTP", "Https"]),
    _hosts,
    st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}")),
    st.sampled_from(["", "/", "/prefix", "/a/b/"]),
)
_keys = st.text(min_size=1).filter(lambda k: ";" not in k)


@given(endpoint=_endpoints, key=_keys)
def test_format_then_parse_round_trips(endpoint: str, key: str) -> None:
    assert parse_connection_string(format_connection_string(endpoint, key)) == ConnectionString(
        endpoint, key
    )


@given(st.text())
def test_parse_arbitrary_text_only_raises_bad_request(text: str) -> None:
    try:
        cs = parse_connection_string(text)
    except BadRequest:
        return
    assert cs.endpoint.lower().startswith(("http://", "https://"))
    assert cs.access_key


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Endpoint", "AccessKey", "Port", "Version", "x", ""]),
            st.sampled_from(["", "=", "http://h", "https://h:1", "12", "k==", "ws://h"]),
        ),
        max_size=6,
    )
)
def test_parse_structured_segments_only_raises_bad_request(pairs: list[tuple[str, str]]) -> None:
    text = ";".join(f"{k}={v}" for k, v in pairs)
    with contextlib.suppress(BadRequest):
        parse_connection_string(text)
