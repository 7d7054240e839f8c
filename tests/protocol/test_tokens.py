"""Client and REST JWTs: Azure docs: client tokens (client tokens) and REST API
authentication docs (REST tokens, key rotation).

Literal tokens are copied from the official SDKs' traffic; the probe's AccessKey is
given in that file's header, so they verify here.  Other tokens are made with PyJWT or
with the official ``azure-messaging-webpubsubservice`` SDK (no network).
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import jwt
import pytest
import requests
import yarl
from azure.core.pipeline.transport import HttpTransport
from azure.messaging.webpubsubservice import WebPubSubServiceClient
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.errors import BadRequest, Unauthorized, WebPubSubError
from webpubsub.protocol.tokens import (
    ClientIdentity,
    bearer_token,
    issue_client_token,
    issue_rest_token,
    verify_client_token,
    verify_rest_token,
)

KEY = "dGVzdGtleS10ZXN0a2V5LXRlc3RrZXktdGVzdGtleS0xMjM0NTY3OA=="  # observed probe key
KEY2 = "second-access-key-for-rotation-tests-0123456789"
OTHER = "a-completely-different-access-key-0123456789abc"
ENDPOINT = "http://localhost:8080"
NOW = 1_800_000_000.0
CLIENT_AUD = f"{ENDPOINT}/client/hubs/chat"

# the official SDKs' traffic, "get_client_access_token / key credential, all options"
OBSERVED_CLIENT_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwOi8vMTI3LjAuMC4xOjE4MDgwL2NsaWVudC9odW"
    "JzL2NoYXQiLCJpYXQiOjE3OTU4MjEyNDEsImV4cCI6MTc5NTgyMTU0MSwic3ViIjoidXNlcjEiLCJyb2xlIjpbIndlYnB1"
    "YnN1Yi5qb2luTGVhdmVHcm91cC5nMSIsIndlYnB1YnN1Yi5zZW5kVG9Hcm91cCJdLCJ3ZWJwdWJzdWIuZ3JvdXAiOlsi"
    "ZzEiLCJnMiJdfQ.pKtkx9J4w79i7DCvH7gBfxNRihkPIMAinBHfzgPuCks"
)
# observed, "key credential, jwt_headers kid" (header carries "kid": "k1")
OBSERVED_KID_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsImtpZCI6ImsxIiwidHlwIjoiSldUIn0.eyJhdWQiOiJodHRwOi8vMTI3LjAuMC4xOjE4MDgw"
    "L2NsaWVudC9odWJzL2NoYXQiLCJpYXQiOjE3OTU4MjEyNDIsImV4cCI6MTc5NTgyNDg0Mn0.LWdGVnV1zvG0zlLcdSULEg"
    "oKHYeCi5k4fdUzUvTrGpw"
)
OBSERVED_ENDPOINT = "http://127.0.0.1:18080"
# observed, "send_to_all / excluded + filter"
OBSERVED_FILTER_URL = (
    "http://127.0.0.1:18080/api/hubs/chat/:send?excluded=conn1&excluded=conn2"
    "&api-version=2024-12-01&filter=userId%20ne%20%27user1%27%20and%20%27g1%27%20in%20groups"
)
OBSERVED_FILTER_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwOi8vMTI3LjAuMC4xOjE4MDgwL2FwaS9odWJzL2No"
    "YXQvOnNlbmQ_ZXhjbHVkZWQ9Y29ubjEmZXhjbHVkZWQ9Y29ubjImYXBpLXZlcnNpb249MjAyNC0xMi0wMSZmaWx0ZXI9"
    "dXNlcklkJTIwbmUlMjAlMjd1c2VyMSUyNyUyMGFuZCUyMCUyN2cxJTI3JTIwaW4lMjBncm91cHMiLCJleHAiOjE3OTU4"
    "MjEyOTZ9.jdEZ7D9AaV_FhUDC8BzeBwxT4nONhoyyQF8aL0sYauw"
)
# observed, "send_to_user / user id needing escaping"
OBSERVED_USER_URL = (
    "http://127.0.0.1:18080/api/hubs/chat/users/user%40example.com%2Fx%20y/:send"
    "?api-version=2024-12-01"
)
OBSERVED_USER_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwOi8vMTI3LjAuMC4xOjE4MDgwL2FwaS9odWJzL2No"
    "YXQvdXNlcnMvdXNlciU0MGV4YW1wbGUuY29tJTJGeCUyMHkvOnNlbmQ_YXBpLXZlcnNpb249MjAyNC0xMi0wMSIsImV4"
    "cCI6MTc5NTgyMTI5N30.yyyRXP0vYQ7tvixS69geNu4f3omMLHzeKZQBhT9TbRs"
)
# observed, "connection string variants / reverse_proxy_endpoint kwarg": aud keeps the
# original endpoint while the request goes to the proxy at 127.0.0.1:18080.
OBSERVED_PROXY_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwOi8vY29udG9zby5leGFtcGxlL2FwaS9odWJzL2No"
    "YXQvOnNlbmQ_YXBpLXZlcnNpb249MjAyNC0xMi0wMSIsImV4cCI6MTc5NTgyMTMwNH0.WvJmBk0jKj6um0hR4jTvHd4jW8"
    "N8gNRHKVXqI8C5Aq4"
)
# observed, "user= kwarg" (adds the xmlsoap name claim)
OBSERVED_NAME_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiJodHRwOi8vMTI3LjAuMC4xOjE4MDgwL2FwaS9odWJzL2No"
    "YXQvOnNlbmQ_YXBpLXZlcnNpb249MjAyNC0xMi0wMSIsImV4cCI6MTc5NTgyMTMwNSwiaHR0cDovL3NjaGVtYXMueG1s"
    "c29hcC5vcmcvd3MvMjAwNS8wNS9pZGVudGl0eS9jbGFpbXMvbmFtZSI6ImFkbWluIn0.ipKaAxBxp0IS4txbOfi6pB9b4U"
    "FJYJ96S7rJB0_dB_c"
)


def _sign(payload: dict[str, Any], key: str = KEY, alg: str = "HS256", **headers: Any) -> str:
    return jwt.encode(payload, key.encode(), algorithm=alg, headers=headers or None)


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _client(payload: dict[str, Any], **kw: Any) -> ClientIdentity:
    args: dict[str, Any] = {"keys": [KEY], "hub": "chat", "endpoints": [ENDPOINT], "now": NOW}
    args.update(kw)
    return verify_client_token(_sign(payload), **args)


def _claims(**extra: Any) -> dict[str, Any]:
    return {"aud": CLIENT_AUD, "iat": int(NOW), "exp": int(NOW) + 3600, **extra}


def _unauthorized(token: str, **kw: Any) -> str:
    args: dict[str, Any] = {"keys": [KEY], "hub": "chat", "endpoints": [ENDPOINT], "now": NOW}
    args.update(kw)
    with pytest.raises(Unauthorized) as info:
        verify_client_token(token, **args)
    message = info.value.message
    assert KEY not in message and KEY2 not in message
    assert not token or token not in message
    return message


# -- observed SDK tokens (Azure docs: client tokens) ------------------------------------------


def test_observed_client_token_verifies_with_the_utf8_key() -> None:
    identity = verify_client_token(
        OBSERVED_CLIENT_TOKEN, keys=[KEY], hub="chat", endpoints=[OBSERVED_ENDPOINT], now=1795821241
    )
    assert identity.user_id == "user1"
    assert identity.roles == ("webpubsub.joinLeaveGroup.g1", "webpubsub.sendToGroup")
    assert identity.groups == ("g1", "g2")
    # Azure docs: CloudEvents: claims as type -> list of strings
    assert identity.claims == {
        "aud": ["http://127.0.0.1:18080/client/hubs/chat"],
        "iat": ["1795821241"],
        "exp": ["1795821541"],
        "sub": ["user1"],
        "role": ["webpubsub.joinLeaveGroup.g1", "webpubsub.sendToGroup"],
        "webpubsub.group": ["g1", "g2"],
    }


def test_observed_client_token_does_not_verify_with_the_base64_decoded_key() -> None:
    decoded = base64.b64decode(KEY).decode()
    with pytest.raises(Unauthorized, match="invalid signature"):
        verify_client_token(
            OBSERVED_CLIENT_TOKEN,
            keys=[decoded],
            hub="chat",
            endpoints=[OBSERVED_ENDPOINT],
            now=1795821241,
        )


def test_observed_client_token_expires_five_minutes_after_exp_plus_leeway() -> None:
    # exp = 1795821541; default leeway 300 s (Azure docs: client tokens step 3)
    args: dict[str, Any] = {"keys": [KEY], "hub": "chat", "endpoints": [OBSERVED_ENDPOINT]}
    verify_client_token(OBSERVED_CLIENT_TOKEN, now=1795821541 + 299, **args)
    with pytest.raises(Unauthorized, match="expired"):
        verify_client_token(OBSERVED_CLIENT_TOKEN, now=1795821541 + 300, **args)


def test_observed_token_with_kid_header_verifies() -> None:
    identity = verify_client_token(
        OBSERVED_KID_TOKEN, keys=[KEY], hub="chat", endpoints=[OBSERVED_ENDPOINT], now=1795821242
    )
    assert identity == ClientIdentity(
        user_id=None,
        roles=(),
        groups=(),
        claims={
            "aud": ["http://127.0.0.1:18080/client/hubs/chat"],
            "iat": ["1795821242"],
            "exp": ["1795824842"],
        },
    )


@pytest.mark.parametrize(
    ("token", "url", "exp"),
    [
        (OBSERVED_FILTER_TOKEN, OBSERVED_FILTER_URL, 1795821296),
        (OBSERVED_USER_TOKEN, OBSERVED_USER_URL, 1795821297),
        (
            OBSERVED_NAME_TOKEN,
            "http://127.0.0.1:18080/api/hubs/chat/:send?api-version=2024-12-01",
            1795821305,
        ),
    ],
)
def test_observed_rest_tokens_verify_against_their_request_url(
    token: str, url: str, exp: int
) -> None:
    verify_rest_token(token, keys=[KEY], method_url=url, endpoints=[], now=exp - 60)
    with pytest.raises(Unauthorized, match="invalid signature"):
        verify_rest_token(token, keys=[OTHER], method_url=url, endpoints=[], now=exp - 60)
    with pytest.raises(Unauthorized, match="expired"):
        verify_rest_token(token, keys=[KEY], method_url=url, endpoints=[], now=exp + 300)


def test_observed_rest_token_is_bound_to_its_user_path() -> None:
    other = OBSERVED_USER_URL.replace("user%40example.com", "mallory%40example.com")
    with pytest.raises(Unauthorized, match="audience"):
        verify_rest_token(
            OBSERVED_USER_TOKEN, keys=[KEY], method_url=other, endpoints=[], now=1795821237
        )


def test_observed_rest_token_is_bound_to_its_query() -> None:
    # dropping one `excluded` value changes the multiset of query pairs
    url = OBSERVED_FILTER_URL.replace("excluded=conn2&", "")
    with pytest.raises(Unauthorized, match="audience"):
        verify_rest_token(
            OBSERVED_FILTER_TOKEN, keys=[KEY], method_url=url, endpoints=[], now=1795821236
        )


def test_observed_reverse_proxy_token_needs_the_public_endpoint() -> None:
    url = "http://127.0.0.1:18080/api/hubs/chat/:send?api-version=2024-12-01"
    now = 1795821304 - 60
    with pytest.raises(Unauthorized, match="audience"):
        verify_rest_token(OBSERVED_PROXY_TOKEN, keys=[KEY], method_url=url, endpoints=[], now=now)
    verify_rest_token(
        OBSERVED_PROXY_TOKEN,
        keys=[KEY],
        method_url=url,
        endpoints=["http://Contoso.Example"],
        now=now,
    )


# -- tokens made by the official SDK -----------------------------------------------------


def _sdk(endpoint: str = ENDPOINT, hub: str = "Chat", **kw: Any) -> WebPubSubServiceClient:
    cs = f"Endpoint={endpoint};AccessKey={KEY};Version=1.0;"
    return WebPubSubServiceClient.from_connection_string(cs, hub=hub, **kw)


def _unverified(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


def test_sdk_client_token_verifies() -> None:
    roles = ["webpubsub.sendToGroup.g1", "webpubsub.joinLeaveGroup"]
    token = _sdk().get_client_access_token(user_id="u1", roles=roles, groups=["g1", "g 2"])["token"]
    now = _unverified(token)["iat"]
    for hub in ("Chat", "chat", "CHAT"):  # hub compared case-insensitively
        identity = verify_client_token(token, keys=[KEY], hub=hub, endpoints=[ENDPOINT], now=now)
        assert identity.user_id == "u1"
        assert identity.roles == tuple(roles)
        assert identity.groups == ("g1", "g 2")
    with pytest.raises(Unauthorized, match="audience"):
        verify_client_token(token, keys=[KEY], hub="chat2", endpoints=[ENDPOINT], now=now)


def test_sdk_client_token_from_mixed_case_host_and_port_key() -> None:
    # observed Summary: the SDK lower-cases the endpoint in aud; Port= is appended.
    cs = f"Endpoint=http://LocalHost/;Port=8080;AccessKey={KEY};Version=1.0;"
    client = WebPubSubServiceClient.from_connection_string(cs, hub="Chat")
    token = client.get_client_access_token()["token"]
    assert _unverified(token)["aud"] == "http://localhost:8080/client/hubs/Chat"
    now = _unverified(token)["iat"]
    for endpoint in ("http://localhost:8080", "http://LOCALHOST:8080/"):
        verify_client_token(token, keys=[KEY], hub="chat", endpoints=[endpoint], now=now)
    with pytest.raises(Unauthorized, match="audience"):
        verify_client_token(
            token, keys=[KEY], hub="chat", endpoints=["http://localhost:9090"], now=now
        )


def test_issued_client_token_has_the_sdk_claim_layout() -> None:
    # Azure docs: client tokens: same header and claim order as the SDK's token.
    roles = ["webpubsub.sendToGroup"]
    sdk_token = _sdk(hub="chat").get_client_access_token(user_id="u1", roles=roles, groups=["g"])[
        "token"
    ]
    ours = issue_client_token(
        KEY, audience=CLIENT_AUD, now=NOW, user_id="u1", roles=roles, groups=["g"]
    )
    assert jwt.get_unverified_header(ours) == jwt.get_unverified_header(sdk_token)
    assert list(_unverified(ours)) == list(_unverified(sdk_token))
    assert _unverified(ours) == {
        "aud": CLIENT_AUD,
        "iat": 1_800_000_000,
        "exp": 1_800_003_600,
        "sub": "u1",
        "role": ["webpubsub.sendToGroup"],
        "webpubsub.group": ["g"],
    }
    identity = verify_client_token(ours, keys=[KEY], hub="chat", endpoints=[ENDPOINT], now=NOW)
    assert (identity.user_id, identity.roles, identity.groups) == ("u1", tuple(roles), ("g",))


def test_issued_client_token_defaults() -> None:
    token = issue_client_token(KEY, audience=CLIENT_AUD, now=NOW + 0.9)
    assert _unverified(token) == {"aud": CLIENT_AUD, "iat": 1_800_000_000, "exp": 1_800_003_600}
    assert issue_client_token(KEY, audience="a", now=NOW, ttl_seconds=300).count(".") == 2
    assert _unverified(issue_client_token(KEY, audience="a", now=NOW, ttl_seconds=300))["exp"] == (
        1_800_000_300
    )


class _Captured(Exception):
    pass


class _RecordingTransport(HttpTransport[Any, Any]):
    """Records each request the SDK would send, then aborts it (no network)."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def __enter__(self) -> _RecordingTransport:
        return self

    def __exit__(self, *args: object) -> None:
        pass

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.requests.append(request)
        raise _Captured


def _sdk_requests(endpoint: str = ENDPOINT, **kw: Any) -> list[tuple[str, str]]:
    """(url, bearer token) of the SDK's requests for a few operations."""
    transport = _RecordingTransport()
    client = _sdk(endpoint, transport=transport, **kw)
    calls: list[Callable[[], object]] = [
        lambda: client.send_to_user("user@example.com/x y", "hi", content_type="text/plain"),
        lambda: client.send_to_group("my group/ä?#", "hi", content_type="text/plain"),
        lambda: client.send_to_all(
            "x", content_type="text/plain", excluded=["c1", "c2"], filter="userId eq 'a'"
        ),
        lambda: client.grant_permission("joinLeaveGroup", "conn1", target_name="g1"),
        lambda: client.close_connection("conn 1", reason="bye"),
    ]
    for call in calls:
        with pytest.raises(_Captured):
            call()
    result = []
    for request in transport.requests:
        token = bearer_token(request.headers["Authorization"])
        assert token is not None
        result.append((request.url, token))
    return result


def test_sdk_rest_tokens_verify_against_the_urls_it_requests() -> None:
    requests = _sdk_requests()
    assert any("user%40example.com%2Fx%20y" in url for url, _ in requests)
    for url, token in requests:
        now = _unverified(token)["exp"] - 60
        verify_rest_token(token, keys=[KEY2, KEY], method_url=url, endpoints=[], now=now)
        with pytest.raises(Unauthorized):
            verify_rest_token(token, keys=[KEY2], method_url=url, endpoints=[], now=now)


def test_sdk_rest_token_with_mixed_case_host() -> None:
    # observed Summary: aud keeps "LocalHost" while urllib3 sends Host: localhost.
    for url, token in _sdk_requests("http://LocalHost:8080"):
        assert _unverified(token)["aud"].startswith("http://LocalHost:8080/")
        received = url.replace("LocalHost", "localhost")
        now = _unverified(token)["exp"] - 60
        verify_rest_token(token, keys=[KEY], method_url=received, endpoints=[], now=now)


# -- signature, algorithm and format (Azure docs: client tokens steps 2-3) -------------------------


def test_wrong_key_is_rejected() -> None:
    assert _unauthorized(_sign(_claims(), key=OTHER)) == "invalid signature"


def test_second_of_two_keys_verifies() -> None:
    # Azure docs: REST authentication: accept tokens signed by either key
    token = _sign(_claims(sub="u"), key=KEY2)
    identity = verify_client_token(
        token, keys=[KEY, KEY2], hub="chat", endpoints=[ENDPOINT], now=NOW
    )
    assert identity.user_id == "u"
    assert _unauthorized(token, keys=[KEY]) == "invalid signature"


def test_no_keys_means_unauthorized() -> None:
    assert "no access key" in _unauthorized(_sign(_claims()), keys=[])


def test_alg_none_is_rejected() -> None:
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."
    assert _unauthorized(unsigned) == "unsupported token algorithm"
    assert _unauthorized(jwt.encode(_claims(), None, algorithm="none")) == (
        "unsupported token algorithm"
    )


def test_hs512_with_the_right_key_is_rejected() -> None:
    long_key = KEY * 2  # >= 64 bytes, so PyJWT does not warn about HS512
    token = _sign(_claims(), key=long_key, alg="HS512")
    assert _unauthorized(token, keys=[long_key]) == "unsupported token algorithm"


def test_rs256_shaped_token_is_rejected() -> None:
    header = _b64({"alg": "RS256", "typ": "JWT", "kid": "x"})
    signature = _b64(bytes(range(256)))
    token = f"{header}.{_b64(_claims())}.{signature}"
    assert _unauthorized(token) == "unsupported token algorithm"


def test_alg_confusion_hmac_signature_under_rs256_header_is_rejected() -> None:
    signing_input = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64(_claims())}"
    good = _sign(_claims()).split(".")[2]
    assert _unauthorized(f"{signing_input}.{good}") == "unsupported token algorithm"


@pytest.mark.parametrize(
    "token", ["", "abc", "a.b", "a.b.c", "....", "Bearer x", "eyJhbGciOiJIUzI1NiJ9.e30.e30.x.y"]
)
def test_non_jwts_are_rejected(token: str) -> None:
    assert _unauthorized(token) in {"token is not a JWT", "malformed token"}


def test_tampered_payload_is_rejected() -> None:
    header, _, signature = _sign(_claims(sub="alice")).split(".")
    forged = f"{header}.{_b64(_claims(sub='admin'))}.{signature}"
    assert _unauthorized(forged) == "invalid signature"


def test_signed_non_object_payload_is_malformed() -> None:
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(b'[1, 2]')}"
    mac = hmac.new(KEY.encode(), signing_input.encode(), hashlib.sha256).digest()
    assert _unauthorized(f"{signing_input}.{_b64(mac)}") == "malformed token"


# -- lifetime ---------------------------------------------------------------------------


def test_missing_exp_is_rejected() -> None:
    assert _unauthorized(_sign({"aud": CLIENT_AUD, "iat": int(NOW)})) == "token has no exp claim"


def test_expired_beyond_leeway_is_rejected_within_leeway_accepted() -> None:
    _client(_claims(exp=int(NOW) - 299))
    assert _unauthorized(_sign(_claims(exp=int(NOW) - 301))) == "token expired"
    assert _unauthorized(_sign(_claims(exp=int(NOW) - 1)), leeway=0) == "token expired"


def test_nbf_in_the_future_is_rejected() -> None:
    _client(_claims(nbf=int(NOW) + 299))
    assert _unauthorized(_sign(_claims(nbf=int(NOW) + 301))) == "token not yet valid"
    assert _unauthorized(_sign(_claims(nbf=int(NOW) + 1)), leeway=0) == "token not yet valid"


@pytest.mark.parametrize(
    "exp", ["1900000000", True, None, [1900000000], float("nan"), float("inf")]
)
def test_non_numeric_exp_is_rejected(exp: object) -> None:
    message = _unauthorized(_sign(_claims(exp=exp)))
    assert message in {"token claim exp is not a number", "token has no exp claim"}


def test_iat_in_the_future_is_ignored() -> None:
    # only exp and nbf are checked (Azure docs: client tokens)
    assert _client(_claims(iat=int(NOW) + 10_000)).user_id is None


# -- client audience (Azure docs: client tokens step 4) --------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "http://localhost:8080/client/hubs/chat",
        "http://localhost:8080/client/hubs/Chat",  # hub case-insensitive
        "http://localhost:8080/client/hubs/chat/",  # trailing slash
        "http://LocalHost:8080/client/hubs/chat",  # host case
        "HTTP://LOCALHOST:8080/CLIENT/HUBS/CHAT",
        "http://localhost:8080/client/hubs/%63hat",  # percent-encoded
        "http://localhost:8080/client/?hub=chat",  # legacy form
        "http://localhost:8080/client?hub=Chat",
    ],
)
def test_accepted_client_audiences(aud: str) -> None:
    _client(_claims(aud=aud))


@pytest.mark.parametrize(
    "aud",
    [
        "http://localhost:8080/client/hubs/chat2",
        "http://localhost:8080/client/hubs/other",
        "http://localhost:9090/client/hubs/chat",
        "https://localhost:8080/client/hubs/chat",
        "http://evil.example:8080/client/hubs/chat",
        "http://localhost:8080/clients/mqtt/hubs/chat",
        "http://localhost:8080/client/hubs/chat?x=1",
        "http://localhost:8080/client/?hub=other",
        "http://localhost:8080/client/?hub=chat&hub=x",
        "http://localhost:8080/api/hubs/chat",
        "localhost:8080/client/hubs/chat",
        "chat",
        "",
    ],
)
def test_rejected_client_audiences(aud: str) -> None:
    assert _unauthorized(_sign(_claims(aud=aud))) == "audience mismatch"


def test_client_audience_matches_any_configured_endpoint_and_default_ports() -> None:
    endpoints = ["https://pubsub.example.com", "http://127.0.0.1:8080/"]
    _client(_claims(aud="https://pubsub.example.com:443/client/hubs/chat"), endpoints=endpoints)
    _client(_claims(aud="http://127.0.0.1:8080/client/hubs/chat"), endpoints=endpoints)
    _client(_claims(aud="http://h/client/hubs/chat"), endpoints=["http://h:80"])
    _client(_claims(aud="http://h/pre/client/hubs/chat"), endpoints=["http://h/pre/"])
    assert _unauthorized(
        _sign(_claims(aud="http://h/client/hubs/chat")), endpoints=["http://h/pre"]
    )


def test_aud_may_be_a_list() -> None:
    _client(_claims(aud=["http://x/client/hubs/chat", CLIENT_AUD]))
    assert _unauthorized(_sign(_claims(aud=[1]))) == "malformed aud claim"
    assert _unauthorized(_sign({"exp": int(NOW) + 60})) == "token has no aud claim"


# -- client claims ----------------------------------------------------------------------


def test_role_may_be_a_single_string() -> None:
    assert _client(_claims(role="webpubsub.joinLeaveGroup")).roles == ("webpubsub.joinLeaveGroup",)


def test_role_aliases_are_combined_and_deduplicated() -> None:
    ms_role = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
    identity = _client(_claims(role=["a", "b"], **{ms_role: ["b", "c"]}))
    assert identity.roles == ("a", "b", "c")


def test_non_string_role_is_rejected() -> None:
    assert _unauthorized(_sign(_claims(role=["a", 1]))) == "malformed role claim"


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", "alice"),
        ("sub", ["alice"]),
        ("http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier", "alice"),
        ("nameid", "alice"),
    ],
)
def test_user_id_claims(claim: str, value: object) -> None:
    assert _client(_claims(**{claim: value})).user_id == "alice"


def test_sub_wins_over_aliases_and_empty_sub_means_no_user() -> None:
    assert _client(_claims(sub="a", nameid="b")).user_id == "a"
    assert _client(_claims(sub="")).user_id is None
    assert _client(_claims()).user_id is None


def test_malformed_sub_is_rejected() -> None:
    assert _unauthorized(_sign(_claims(sub=["a", "b"]))) == "malformed sub claim"
    assert _unauthorized(_sign(_claims(sub=5))) == "malformed sub claim"
    with pytest.raises(BadRequest):
        _client(_claims(sub="u" * 1025))


def test_group_claim_may_be_a_single_string() -> None:
    assert _client(_claims(**{"webpubsub.group": "g1"})).groups == ("g1",)
    assert _client(_claims(**{"webpubsub.group": ["g1", "g1", "g2"]})).groups == ("g1", "g2")


@pytest.mark.parametrize("groups", [["ok", "   "], [""], "g" * 1025, [1], [["g"]]])
def test_invalid_group_claim_is_a_bad_request(groups: object) -> None:
    # Azure docs: client tokens: invalid group in webpubsub.group -> 400, not 401
    with pytest.raises(BadRequest) as info:
        _client(_claims(**{"webpubsub.group": groups}))
    assert info.value.http_status == 400
    assert not isinstance(info.value, Unauthorized)


def test_custom_claims_are_stringified_for_the_connect_event() -> None:
    identity = _client(
        _claims(
            custom="x",
            n=1.5,
            whole=2.0,
            flag=True,
            nothing=None,
            nested={"a": [1]},
            mixed=[1, "y", False],
        )
    )
    assert identity.claims["custom"] == ["x"]
    assert identity.claims["n"] == ["1.5"]
    assert identity.claims["whole"] == ["2"]
    assert identity.claims["flag"] == ["true"]
    assert identity.claims["nothing"] == []
    assert identity.claims["nested"] == ['{"a":[1]}']
    assert identity.claims["mixed"] == ["1", "y", "false"]
    assert identity.claims["exp"] == [str(int(NOW) + 3600)]


# -- REST audience (Azure docs: REST authentication) -----------------------------------------------

HUB_URL = "http://localhost:8080/api/hubs/chat"
Q = "?api-version=2024-12-01"
REST_URL = "http://localhost:8080/api/hubs/chat/users/user%40example.com%2Fx%20y/:send?api-version=2024-12-01"


def _rest(aud: str, url: str = REST_URL, endpoints: tuple[str, ...] = ()) -> None:
    token = issue_rest_token(KEY, audience=aud, now=NOW)
    verify_rest_token(token, keys=[KEY], method_url=url, endpoints=endpoints, now=NOW)


def _rest_rejected(aud: str, url: str = REST_URL, endpoints: tuple[str, ...] = ()) -> str:
    with pytest.raises(Unauthorized) as info:
        _rest(aud, url, endpoints)
    return info.value.message


@pytest.mark.parametrize(
    "aud",
    [
        REST_URL,
        REST_URL.replace("localhost", "LocalHost"),
        REST_URL.replace("http://localhost:8080", "HTTP://localhost:8080"),
        REST_URL.replace("%40", "@").replace("%2F", "%2f"),  # escaped as aiohttp does
        REST_URL + "&",  # an empty field is no pair
    ],
)
def test_accepted_rest_audiences(aud: str) -> None:
    _rest(aud)


@pytest.mark.parametrize(
    "aud",
    [
        "http://localhost:8080/api/hubs/chat/users/user%40example.com%2Fx%20z/:send",
        "http://localhost:8080/api/hubs/chat/users/user%40example.com/:send",
        "http://localhost:8080/api/hubs/chat/:send",
        REST_URL.replace("2024-12-01", "2021-10-01"),  # query mismatch
        REST_URL + "&excluded=c1",
        "http://localhost:9090/api/hubs/chat/users/user%40example.com%2Fx%20y/:send",
        "https://localhost:8080/api/hubs/chat/users/user%40example.com%2Fx%20y/:send",
        "http://other.example:8080/api/hubs/chat/users/user%40example.com%2Fx%20y/:send",
        "/api/hubs/chat/users/user%40example.com%2Fx%20y/:send",
        "",
        REST_URL.split("?")[0],  # the SDKs sign the query too
        REST_URL.replace("/:send", "/:send/"),
        "http://localhost:8080/api/hubs/chat/users/user@example.com/x y/:send" + Q,  # decoded
        "http://localhost:8080/api/hubs/Chat/users/USER%40EXAMPLE.COM%2fX%20Y/:send" + Q,  # case
        "http://localhost:8080/api/hubs/chat/users/user%40example.com%2Fx%20y/:send" + Q + "#f",
        REST_URL.replace("/:send", "/:se\tnd"),  # urlsplit would drop the tab
    ],
)
def test_rejected_rest_audiences(aud: str) -> None:
    assert _rest_rejected(aud) == "audience mismatch"


@pytest.mark.parametrize(
    ("signed", "sent"),
    [
        # issue 10, defect 9: a HEAD token for the user "alice/groups/g2" ...
        ("/users/alice%2Fgroups%2Fg2", "/users/alice/groups/g2"),  # ... on PUT/DELETE
        ("/users/ALICE", "/users/alice"),
        ("/groups/G", "/groups/g"),
        ("/connections/AB-CD_EF", "/connections/ab-cd_ef"),  # an upper-cased connection id
        ("/users/alice/groups/g2", "/users/alice%2Fgroups%2Fg2"),
        ("/users/a%2Fb", "/users/a/b"),
        ("/users/alice/", "/users/alice"),
    ],
)
def test_rest_audience_is_the_path_as_routed_not_decoded_or_lower_cased(
    signed: str, sent: str
) -> None:
    assert _rest_rejected(HUB_URL + signed + Q, HUB_URL + sent + Q) == "audience mismatch"


def test_rest_hub_in_the_audience_is_the_hub_as_requested() -> None:
    # Azure routes hub names case-insensitively, but the SDKs sign the URL they send.
    upper = "http://localhost:8080/api/hubs/Chat/:send" + Q
    _rest(upper, upper)
    assert _rest_rejected(upper, HUB_URL + "/:send" + Q) == "audience mismatch"
    assert _rest_rejected(HUB_URL + "/:send" + Q, upper) == "audience mismatch"


@pytest.mark.parametrize(
    ("signed", "sent"),
    [
        # aiohttp (the aio SDK's transport) sends "@", "'" and "," unescaped.
        ("/users/user%40example.com%2Fx%20y", "/users/user@example.com%2Fx%20y"),
        ("/users/a%2fb", "/users/a%2Fb"),
        ("/users/%7Ealice", "/users/~alice"),  # requests sends unreserved characters as is
        ("/:send?filter=userId%20ne%20%27a%27", "/:send?filter=userId%20ne%20'a'"),
        ("/:send?filter=a+b", "/:send?filter=a%20b"),
    ],
)
def test_rest_audience_may_escape_what_the_router_decodes_alike(signed: str, sent: str) -> None:
    _rest(HUB_URL + signed, HUB_URL + sent)


_segment = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8).filter(
    lambda s: s not in {".", ".."}  # HTTP clients resolve these: no SDK can send them
)
_pair = st.tuples(st.text(st.characters(codec="utf-8"), max_size=5), _segment)


def _signed_url(segments: list[str], pairs: list[tuple[str, str]]) -> str:
    """A URL as the Python SDK builds it: every segment and query item quoted with
    ``safe=""``."""
    path = "/".join(quote(s, safe="") for s in segments)
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)
    return f"{HUB_URL}/{path}?{query}"


@given(st.lists(_segment, min_size=1, max_size=4), st.lists(_pair, max_size=3))
def test_rest_audience_survives_the_http_clients_re_escaping(
    segments: list[str], pairs: list[tuple[str, str]]
) -> None:
    signed = _signed_url(segments, pairs)
    for sent in (str(yarl.URL(signed)), requests.Request("GET", signed).prepare().url or ""):
        _rest(signed, sent)


@given(
    st.lists(_segment, min_size=1, max_size=4),
    st.lists(_segment, min_size=1, max_size=4),
    st.lists(_pair, max_size=2),
    st.lists(_pair, max_size=2),
)
def test_rest_audience_for_another_path_or_query_is_refused(
    segments: list[str],
    other_segments: list[str],
    pairs: list[tuple[str, str]],
    other_pairs: list[tuple[str, str]],
) -> None:
    signed = _signed_url(segments, pairs)
    sent = _signed_url(other_segments, other_pairs)
    if (segments, pairs) == (other_segments, other_pairs):
        _rest(signed, sent)
    else:
        assert _rest_rejected(signed, sent) == "audience mismatch"
    joined = _signed_url(["/".join(segments)], pairs)  # one segment holding the "/"s
    if len(segments) > 1:
        assert _rest_rejected(joined, signed) == "audience mismatch"
        assert _rest_rejected(signed, joined) == "audience mismatch"


def test_rest_query_is_compared_as_the_ordered_decoded_pairs() -> None:
    url = "http://h/api/hubs/chat/:send?excluded=c1&excluded=c2&filter=a%20b"
    _rest("http://h/api/hubs/chat/:send?excluded=c1&excluded=c2&filter=a+b", url)
    _rest("http://h/api/hubs/chat/:send?excluded=c1&excluded=c2&filter=a b", url)
    assert _rest_rejected("http://h/api/hubs/chat/:send?filter=a+b&excluded=c2&excluded=c1", url)
    assert _rest_rejected("http://h/api/hubs/chat/:send?excluded=c1&excluded=c2", url)
    assert _rest_rejected("http://h/api/hubs/chat/:send", url)
    assert _rest_rejected(
        "http://h/api/hubs/chat/:send?excluded=c1%26excluded%3Dc2&filter=a%20b", url
    )
    assert _rest_rejected("http://h/api/hubs/chat/:send?excluded=c1&filter=a%20b", url)
    assert _rest_rejected("http://h/api/hubs/chat/:send?excluded=c1&excluded=c1&filter=a%20b", url)
    assert _rest_rejected("http://h/api/hubs/chat/:send?x=1", "http://h/api/hubs/chat/:send")


def test_rest_audience_from_the_observed_file() -> None:
    aud = (
        "http://127.0.0.1:18080/api/hubs/chat/:send?excluded=conn1&excluded=conn2"
        "&api-version=2024-12-01&filter=userId%20ne%20%27user1%27%20and%20%27g1%27%20in%20groups"
    )
    _rest(aud, aud)
    _rest(aud, aud.replace("127.0.0.1:18080", "localhost:8080"), ("http://127.0.0.1:18080",))
    assert _rest_rejected(aud, aud.replace("127.0.0.1:18080", "localhost:8080"))
    assert _rest_rejected(aud, aud.replace("%27user1%27", "%27user2%27"))


def test_rest_origin_default_ports_and_allow_list() -> None:
    _rest("http://h/api/hubs/chat/:send", "http://h:80/api/hubs/chat/:send")
    _rest("https://h:443/api/hubs/chat/:send", "https://h/api/hubs/chat/:send")
    proxied = "http://10.0.0.5:8080/api/hubs/chat/:send"
    assert _rest_rejected("https://public.example/api/hubs/chat/:send", proxied)
    _rest("https://public.example/api/hubs/chat/:send", proxied, ("https://PUBLIC.example/",))


def test_rest_token_lifetime_and_keys() -> None:
    token = issue_rest_token(KEY2, audience=REST_URL, now=NOW)
    assert _unverified(token) == {"aud": REST_URL, "exp": 1_800_000_060}
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    verify_rest_token(token, keys=[KEY, KEY2], method_url=REST_URL, endpoints=[], now=NOW + 359)
    with pytest.raises(Unauthorized, match="expired"):
        verify_rest_token(token, keys=[KEY2], method_url=REST_URL, endpoints=[], now=NOW + 360)
    with pytest.raises(Unauthorized, match="invalid signature"):
        verify_rest_token(token, keys=[KEY], method_url=REST_URL, endpoints=[], now=NOW)
    no_exp = _sign({"aud": REST_URL}, key=KEY)
    with pytest.raises(Unauthorized, match="no exp"):
        verify_rest_token(no_exp, keys=[KEY], method_url=REST_URL, endpoints=[], now=NOW)


def test_rest_rejects_other_algorithms() -> None:
    for token in (
        _sign({"aud": REST_URL, "exp": int(NOW) + 60}, alg="HS384"),
        jwt.encode({"aud": REST_URL, "exp": int(NOW) + 60}, None, algorithm="none"),
    ):
        with pytest.raises(Unauthorized, match="algorithm"):
            verify_rest_token(token, keys=[KEY], method_url=REST_URL, endpoints=[], now=NOW)


# -- bearer header ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc", "abc"),
        ("BEARER   abc  ", "abc"),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
        ("Bearerabc", None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


# -- fuzzing: only the documented errors escape -------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_claim_names = st.sampled_from(
    ["aud", "exp", "nbf", "iat", "sub", "role", "webpubsub.group", "nameid", "x"]
)


@given(st.text())
def test_verify_client_token_on_arbitrary_text(text: str) -> None:
    with pytest.raises(Unauthorized):
        verify_client_token(text, keys=[KEY], hub="chat", endpoints=[ENDPOINT], now=NOW)


@given(st.text(), st.text())
def test_verify_rest_token_on_arbitrary_text(text: str, url: str) -> None:
    with pytest.raises(Unauthorized):
        verify_rest_token(text, keys=[KEY], method_url=url, endpoints=[url], now=NOW)


@given(st.dictionaries(_claim_names, _json), st.text(max_size=30))
def test_verify_signed_arbitrary_claims_raises_only_documented_errors(
    claims: dict[str, Any], url: str
) -> None:
    token = _sign(claims)
    try:
        identity = verify_client_token(token, keys=[KEY], hub="chat", endpoints=[ENDPOINT], now=NOW)
    except (Unauthorized, BadRequest):
        pass
    else:
        assert all(isinstance(v, str) for values in identity.claims.values() for v in values)
    with contextlib.suppress(Unauthorized, BadRequest):
        verify_rest_token(token, keys=[KEY], method_url=url, endpoints=[ENDPOINT], now=NOW)


@given(
    aud=st.sampled_from([CLIENT_AUD, "http://localhost:8080/client/?hub=chat", REST_URL]),
    extra=st.dictionaries(_claim_names, _json),
)
def test_errors_are_web_pubsub_errors_without_secrets(aud: str, extra: dict[str, Any]) -> None:
    token = _sign({"exp": int(NOW) + 60, **extra, "aud": aud})
    for verify in (
        lambda: verify_client_token(token, keys=[KEY], hub="chat", endpoints=[ENDPOINT], now=NOW),
        lambda: verify_rest_token(token, keys=[KEY], method_url=REST_URL, endpoints=[], now=NOW),
    ):
        try:
            verify()
        except WebPubSubError as error:
            assert isinstance(error, Unauthorized | BadRequest)
            assert KEY not in str(error) and token not in str(error)


# -- the HS256 verifier against PyJWT's verdicts ----------------------------------------

from webpubsub.protocol import tokens as _tokens  # noqa: E402

_any_claims = st.dictionaries(
    st.text(max_size=8),
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.lists(st.text(max_size=4), max_size=3),
    max_size=5,
)


def _pyjwt_verdict(token: str, key: str) -> dict[str, Any] | None:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.encode(),
            algorithms=["HS256"],
            options={"verify_signature": True}
            | {f"verify_{c}": False for c in ("exp", "nbf", "iat", "aud", "iss", "sub", "jti")},
        )
    except (jwt.PyJWTError, ValueError):
        return None
    return claims


def _our_verdict(token: str, key: str) -> dict[str, Any] | None:
    try:
        return _tokens._decode(token, keys=[key], now=0.0, leeway=float("inf"))
    except Unauthorized:
        return None


@pytest.mark.filterwarnings("ignore:The HMAC key is")
@given(
    claims=_any_claims,
    key=st.text(min_size=1, max_size=20),
    other_key=st.text(min_size=1, max_size=20),
    header=st.sampled_from(
        [
            {},
            {"kid": "k"},
            {"kid": 3},
            {"alg": "HS512"},
            {"alg": "none"},
            {"typ": "x"},
            {"crit": ["exp"]},
            {"b64": False},
        ]
    ),
    tamper=st.none() | st.tuples(st.integers(0, 2), st.integers(0, 200), st.characters()),
)
def test_the_verifier_agrees_with_pyjwt(
    claims: dict[str, Any],
    key: str,
    other_key: str,
    header: dict[str, Any],
    tamper: tuple[int, int, str] | None,
) -> None:
    """Signed (by PyJWT) with ``key`` or another key, with odd headers, a character of a
    segment changed: accepted exactly when PyJWT accepts, with the same claims (an
    ``exp`` is added: a token without one is refused by both callers' rules)."""
    algorithm = header.get("alg", "HS256")
    extra = {k: v for k, v in header.items() if k != "alg"}
    signing_key = key.encode() if algorithm != "none" else None
    payload = {**claims, "exp": 10}
    if algorithm == "none":
        token = jwt.encode(payload, None, algorithm="none", headers=extra or None)
    else:
        try:
            token = jwt.encode(payload, signing_key, algorithm=algorithm, headers=extra or None)
        except (jwt.PyJWTError, TypeError):
            return
    if tamper is not None:
        parts = token.split(".")
        segment, at, char = tamper
        text = parts[segment]
        if text:
            at %= len(text)
            parts[segment] = text[:at] + char + text[at + 1 :]
        token = ".".join(parts)
    for verifying in (key, other_key):
        theirs, ours = _pyjwt_verdict(token, verifying), _our_verdict(token, verifying)
        if theirs is None:
            assert ours is None, (token, verifying)
        else:  # PyJWT accepts: so do we, unless the token is stricter-refused (see below)
            strict_refusal = not all(_canonical(p) for p in token.split("."))
            assert ours == theirs or (ours is None and strict_refusal), (token, verifying)


def _canonical(segment: str) -> bool:
    """A base64url segment in its one spelling (the verifier is stricter than PyJWT
    there: outside the alphabet, or spare bits set in its last character)."""
    if not _tokens._SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        return False
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment


@given(st.text(max_size=300))
def test_the_verifier_refuses_anything_with_unauthorized_only(token: str) -> None:
    with contextlib.suppress(Unauthorized):
        _tokens._decode(token, keys=["k"], now=0.0, leeway=0.0)


def _signed(header: dict[str, Any], payload: dict[str, Any], key: str) -> str:
    """A token made by hand (any header): base64url segments, HMAC-SHA256 under ``key``."""
    import hashlib
    import hmac as hmac_module

    def segment(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = segment(json.dumps(header).encode()) + "." + segment(json.dumps(payload).encode())
    mac = hmac_module.new(key.encode(), head.encode(), hashlib.sha256).digest()
    return head + "." + segment(mac)


def test_an_empty_key_verifies_nothing() -> None:
    forged = _signed({"alg": "HS256", "typ": "JWT"}, {"exp": 10**10}, "")
    with pytest.raises(Unauthorized):
        _tokens._decode(forged, keys=["", "a-real-key"], now=0.0, leeway=0.0)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "crit": []},
        {"alg": "HS256", "b64": False},
        {"alg": "HS256", "b64": False, "crit": ["b64"]},
    ],
)
def test_headers_with_extensions_are_refused(header: dict[str, Any]) -> None:
    token = _signed(header, {"exp": 10**10}, "k")
    with pytest.raises(Unauthorized, match="unsupported token header"):
        _tokens._decode(token, keys=["k"], now=0.0, leeway=0.0)


def test_a_token_has_one_spelling() -> None:
    """The last character of a segment whose length is not a multiple of 4 has spare
    bits: another character with the same top bits decodes to the same bytes. Refused."""
    token = _signed({"alg": "HS256"}, {"exp": 10**10}, "k")
    head, body, signature = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(signature[-1])
    other = alphabet[last ^ 1]  # 43 characters: the last carries 4 bits and 2 spare ones
    assert base64.urlsafe_b64decode(signature[:-1] + other + "=") == base64.urlsafe_b64decode(
        signature + "="
    )
    _tokens._decode(token, keys=["k"], now=0.0, leeway=0.0)  # the canonical one passes
    with pytest.raises(Unauthorized):
        _tokens._decode(f"{head}.{body}.{signature[:-1]}{other}", keys=["k"], now=0.0, leeway=0.0)


def test_big_integers_in_claims_are_kept_exactly() -> None:
    big = 12345678901234567890123
    token = _signed({"alg": "HS256"}, {"exp": 10**10, "n": big, "m": 2**64}, "k")
    claims = _tokens._decode(token, keys=["k"], now=0.0, leeway=0.0)
    assert claims["n"] == big and isinstance(claims["n"], int)
    assert claims["m"] == 2**64 and isinstance(claims["m"], int)


@given(key=st.text(max_size=100), message=st.binary(max_size=300))
def test_the_hs256_of_the_keys_hashed_pads_is_hmac_sha256(key: str, message: bytes) -> None:
    """Keys shorter and longer than SHA-256's block (long ones are hashed first)."""
    assert _tokens._hs256(key, message) == hmac.digest(key.encode(), message, "sha256")


@given(st.from_regex(r"[A-Za-z0-9_-]*", fullmatch=True))
def test_a_segment_decodes_exactly_when_it_is_canonical_base64url(segment: str) -> None:
    if not _canonical(segment):
        with pytest.raises(ValueError):
            _tokens._b64url(segment)
    else:
        assert _tokens._b64url(segment) == base64.urlsafe_b64decode(
            segment + "=" * (-len(segment) % 4)
        )


def test_only_a_header_that_passed_is_remembered_and_the_memory_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_tokens, "_good_headers", {})
    bad = jwt.encode({"exp": 10}, "k" * 64, algorithm="HS512")
    for _ in range(2):  # refused each time: a refused header is not remembered
        assert _our_verdict(bad, "k" * 64) is None
    assert not _tokens._good_headers
    good = jwt.encode({"exp": 10}, "k" * 32, algorithm="HS256")
    assert _our_verdict(good, "k" * 32) == {"exp": 10}
    assert list(_tokens._good_headers) == [good.split(".")[0]]
    for i in range(2 * _tokens.GOOD_HEADERS_KEPT):
        token = jwt.encode({"exp": 10}, "k" * 32, algorithm="HS256", headers={"kid": str(i)})
        assert _our_verdict(token, "k" * 32) == {"exp": 10}
    assert len(_tokens._good_headers) == _tokens.GOOD_HEADERS_KEPT
    forged = good.split(".")[0] + "." + bad.split(".", 1)[1]  # a good header, a bad signature
    assert _our_verdict(forged, "k" * 32) is None


def test_only_a_header_whose_signature_verified_is_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forged tokens (junk signatures, each a header of its own) cannot fill the cache
    of good headers before the SDK's header is seen."""
    monkeypatch.setattr(_tokens, "_good_headers", {})
    for i in range(_tokens.GOOD_HEADERS_KEPT + 6):
        forged = _signed({"alg": "HS256", "j": i}, {"exp": 10**10}, "not-the-key")
        with pytest.raises(Unauthorized, match="invalid signature"):
            _tokens._decode(forged, keys=["k"], now=0.0, leeway=0.0)
    assert _tokens._good_headers == {}
    token = _signed({"alg": "HS256", "typ": "JWT"}, {"exp": 10**10}, "k")
    _tokens._decode(token, keys=["k"], now=0.0, leeway=0.0)
    assert list(_tokens._good_headers) == [token.split(".")[0]]


_json_texts = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
).map(lambda value: json.dumps(value).encode())


@given(
    _json_texts
    | st.binary(max_size=40)
    | st.sampled_from(
        [b'{"a":1,"a":"x"}', b'{"n": NaN}', b'{"a":"\\ud800"}', b'{"exp":1e3}', b"[1]", b'"s"']
    )
    | st.integers(0, 2**200).map(lambda n: b'{"exp":%d,"aud":"u"}' % n)
)
def test_claims_read_as_the_careful_reading_reads_them(raw: bytes) -> None:
    """The short reading of a token's claims (orjson, when every claim is a string or
    an integer) is the careful one's: the same value, or refused alike."""
    try:
        expected: object = _tokens._json_object(raw)
    except ValueError:
        expected = ValueError
    try:
        got: object = _tokens._claims_object(raw)
    except ValueError:
        got = ValueError
    assert got == expected and type(got) is type(expected)
    if isinstance(expected, dict):
        assert {k: type(v) for k, v in expected.items()} == {
            k: type(v)
            for k, v in got.items()  # type: ignore[union-attr]
        }


@given(st.text(max_size=60) | st.from_regex(r"[A-Za-z0-9_.-]{0,40}", fullmatch=True))
def test_a_token_is_not_a_jwt_exactly_when_it_is_not_three_base64url_segments(text: str) -> None:
    if _tokens._TOKEN.fullmatch(text) is None:
        with pytest.raises(Unauthorized, match="token is not a JWT"):
            _tokens._decode(text, keys=["k"], now=0.0, leeway=0.0)
    else:  # the format passes (with a good header): anything else may be wrong
        _, body, signature = text.split(".")
        good_head = _signed({"alg": "HS256"}, {"exp": 10**10}, "k").split(".")[0]
        try:
            _tokens._decode(f"{good_head}.{body}.{signature}", keys=["k"], now=0.0, leeway=0.0)
        except Unauthorized as exc:
            assert exc.message != "token is not a JWT"


@pytest.mark.parametrize(
    ("claims", "now", "reason"),
    [
        ({"exp": 100}, 399.0, None),
        ({"exp": 100}, 400.0, "token expired"),
        ({"exp": 100.5}, 400.0, None),
        ({"exp": True}, 0.0, "token claim exp is not a number"),
        ({"exp": "100"}, 0.0, "token claim exp is not a number"),
        ({"exp": 10**10, "nbf": 1000}, 699.0, "token not yet valid"),
        ({"exp": 10**10, "nbf": 1000}, 700.0, None),
        ({"exp": 10**10, "nbf": "x"}, 700.0, "token claim nbf is not a number"),
        ({"nbf": 1}, 0.0, "token has no exp claim"),
    ],
)
def test_lifetime_claims(claims: dict[str, Any], now: float, reason: str | None) -> None:
    token = _signed({"alg": "HS256"}, claims, "k")
    if reason is None:
        assert _tokens._decode(token, keys=["k"], now=now, leeway=300.0) == claims
    else:
        with pytest.raises(Unauthorized, match=reason):
            _tokens._decode(token, keys=["k"], now=now, leeway=300.0)


@given(st.binary(max_size=80))
def test_bytes_in_base64url_read_back_as_themselves(data: bytes) -> None:
    encoded = _tokens._b64url_of(data)
    assert encoded == base64.urlsafe_b64encode(data).rstrip(b"=")
    assert _tokens._b64url(encoded.decode()) == data


@given(
    st.text(st.sampled_from("Bearer bEARER xyz.\t\n\u00a0\u2003"), max_size=16)
    | st.text(max_size=12).map(lambda rest: "Bearer " + rest)
)
def test_the_bearer_token_of_any_header_is_the_scheme_split_off(header: str) -> None:
    """As the header reads: stripped, split at its first space, the scheme any case."""
    scheme, _, token = header.strip().partition(" ")
    expected = (token.strip() or None) if scheme.lower() == "bearer" else None
    assert bearer_token(header) == expected
