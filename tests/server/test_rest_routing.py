"""Routing on the raw, percent-encoded path (Azure REST API reference), and the whole
REST boundary fuzzed over HTTP: every request gets an answer, never a 500, and every
refusal is a JSON error body."""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, unquote

import aiohttp
import orjson
import pytest
import uvloop
import yarl
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.conftest import ACCESS_KEY, make_config
from webpubsub.errors import InvalidParameter
from webpubsub.protocol.tokens import issue_rest_token
from webpubsub.server.app import ServiceRunner
from webpubsub.server.rest import (
    INT32_MAX,
    ROUTES,
    add_user_to_group,
    int_param,
    query_pairs,
    remove_connection_from_group,
    route,
    send_to_user,
)

IDS = st.text(min_size=1, max_size=40)


@given(user=IDS, group=IDS)
def test_any_id_survives_the_round_trip_through_the_path(user: str, group: str) -> None:
    """What the SDKs percent-encode (``/`` as ``%2F``, spaces, unicode) routes intact."""
    path = f"/api/hubs/Chat/users/{quote(user, safe='')}/groups/{quote(group, safe='')}"
    found = route("PUT", path)
    assert not isinstance(found, list)
    matched, params = found
    assert matched.handler is add_user_to_group
    assert params == {"hub": "Chat", "user": user, "group": group}


def test_observed_sdk_paths() -> None:
    found = route("POST", "/api/hubs/chat/users/user%40example.com%2Fx%20y/:send")
    assert not isinstance(found, list)
    assert found[0].handler is send_to_user
    assert found[1]["user"] == "user@example.com/x y"
    found = route("DELETE", "/api/hubs/chat/groups/my%20group%2F%C3%A4%3F%23/connections/c1")
    assert not isinstance(found, list)
    assert found[0].handler is remove_connection_from_group
    assert found[1] == {"hub": "chat", "group": "my group/ä?#", "connection": "c1"}


AZURE_OPERATIONS = {
    # (method, path under /api/hubs/{hub}) -> operationId in Azure's REST reference
    # (data-plane webpubsub.json, 2024-12-01), without its "WebPubSub_" prefix
    ("POST", ":send"): "SendToAll",
    ("POST", ":closeConnections"): "CloseAllConnections",
    ("POST", ":generateToken"): "GenerateClientToken",
    ("POST", ":addToGroups"): "AddConnectionsToGroups",
    ("POST", ":removeFromGroups"): "RemoveConnectionsFromGroups",
    ("DELETE", "connections/{connection}"): "CloseConnection",
    ("HEAD", "connections/{connection}"): "ConnectionExists",
    ("POST", "connections/{connection}/:send"): "SendToConnection",
    ("DELETE", "connections/{connection}/groups"): "RemoveConnectionFromAllGroups",
    ("HEAD", "groups/{group}"): "GroupExists",
    ("POST", "groups/{group}/:closeConnections"): "CloseGroupConnections",
    ("POST", "groups/{group}/:send"): "SendToGroup",
    ("GET", "groups/{group}/connections"): "ListConnectionsInGroup",
    ("PUT", "groups/{group}/connections/{connection}"): "AddConnectionToGroup",
    ("DELETE", "groups/{group}/connections/{connection}"): "RemoveConnectionFromGroup",
    ("PUT", "permissions/{permission}/connections/{connection}"): "GrantPermission",
    ("DELETE", "permissions/{permission}/connections/{connection}"): "RevokePermission",
    ("HEAD", "permissions/{permission}/connections/{connection}"): "CheckPermission",
    ("HEAD", "users/{user}"): "UserExists",
    ("POST", "users/{user}/:closeConnections"): "CloseUserConnections",
    ("POST", "users/{user}/:send"): "SendToUser",
    ("DELETE", "users/{user}/groups"): "RemoveUserFromAllGroups",
    ("PUT", "users/{user}/groups/{group}"): "AddUserToGroup",
    ("DELETE", "users/{user}/groups/{group}"): "RemoveUserFromGroup",
}


def test_every_route_has_azures_operation_name_and_each_its_own() -> None:
    named = {(r.method, "/".join(r.pattern[2:])): r.operation for r in ROUTES}
    assert named == AZURE_OPERATIONS
    assert len({r.operation for r in ROUTES}) == len(ROUTES)


def test_unknown_shapes_and_wrong_methods() -> None:
    assert route("GET", "/api/hubs/chat/nothing") == []
    assert route("GET", "/api/hubs/chat/connections/c1") == ["DELETE", "HEAD"]
    assert route("POST", "/api/hubs/chat/users//:send") == []  # an empty id is no id


@given(st.text(max_size=80))
def test_arbitrary_paths_route_or_not_without_raising(path: str) -> None:
    found = route("POST", "/api/" + path)
    assert isinstance(found, list | tuple)


def _first_matches(method: str, raw_path: str) -> tuple[object, dict[str, str]] | list[str]:
    """Routing as a scan of every route in order (what ``route`` must agree with)."""
    segments = [unquote(s) for s in raw_path.split("/")[2:]]
    if segments and segments[-1] == "":
        segments.pop()
    allowed: list[str] = []
    for candidate in ROUTES:
        params = candidate.match(segments)
        if params is not None:
            if candidate.method == method:
                return candidate, params
            allowed.append(candidate.method)
    return allowed


_SEGMENTS = st.sampled_from(
    sorted({p for r in ROUTES for p in r.pattern if not p.startswith("{")} | {"", "x", "%41"})
)


@given(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]),
    st.lists(_SEGMENTS | IDS.map(lambda t: quote(t, safe="")), max_size=8),
    st.booleans(),
)
def test_routing_finds_the_first_route_that_matches_in_order(
    method: str, segments: list[str], slash: bool
) -> None:
    path = "/api/" + "/".join(segments) + ("/" if slash else "")
    assert route(method, path) == _first_matches(method, path)


@given(st.text(alphabet="ab=&%+2 é", max_size=30) | st.text(max_size=30))
def test_a_query_splits_as_parse_qsl_splits_it(raw: str) -> None:
    assert query_pairs(raw) == parse_qsl(raw, keep_blank_values=True)


@given(raw=st.text(max_size=30) | st.from_regex(r"\A[0-9]{1,6000}\Z"), low=st.integers(0, 5))
def test_an_integer_parameter_is_its_value_in_range_or_a_400(raw: str, low: int) -> None:
    """Any text, however long: the value when it is ASCII digits in range, else the
    parameter's own validation error (never int()'s ValueError)."""
    digits = raw.lstrip("0") or "0"
    in_range = raw.isascii() and raw.isdigit() and len(digits) <= 10
    in_range = in_range and low <= int(digits) <= INT32_MAX
    try:
        value = int_param("top", raw, low=low)
    except InvalidParameter as exc:
        assert exc.target == "top"
        assert not in_range
    else:
        assert in_range and value == int(digits)


def test_integer_parameters_are_int32_as_the_rest_reference_declares() -> None:
    assert int_param("top", "0" * 5000 + str(INT32_MAX), low=1) == INT32_MAX
    for raw in (str(INT32_MAX + 1), "9" * 5000, "1" + "0" * 4400, "١", "²", "+1", " 1"):
        with pytest.raises(InvalidParameter, match="from 1 to 2147483647"):
            int_param("top", raw, low=1)


# -- the whole REST boundary, fuzzed over HTTP ---------------------------------------------

_PCHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
_WORDS = [
    "hubs", "chat", "Chat", "1hub", "h" * 130, "users", "groups", "connections",
    "permissions", "sendToGroup", "joinLeaveGroup", "health", "api", ":send",
    ":closeConnections", ":generateToken", ":addToGroups", ":removeFromGroups", "u1", "",
]  # fmt: skip
_ESCAPES = ["%2F", "%2f", "%20", "%", "%zz", "%C3%A4", "%FF", "%00", "%3F", "%23", "%25", "%0A"]
_segment = st.lists(
    st.sampled_from(_WORDS) | st.sampled_from(_ESCAPES) | st.text(_PCHARS, max_size=6),
    max_size=3,
).map("".join)
_filled = st.lists(
    st.sampled_from([w for w in _WORDS if w])
    | st.sampled_from(_ESCAPES)
    | st.text(_PCHARS, min_size=1, max_size=6),
    min_size=1,
    max_size=3,
).map("".join)
"""A segment that is not empty."""
_id = (
    st.sampled_from(["u1", "g1", "sendToGroup", "joinLeaveGroup", "c1", "my group/ä"])
    | st.text(min_size=1, max_size=12)
).map(lambda name: quote(name, safe="")) | _filled


_METHODS = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])


@st.composite
def _method_and_path(draw: st.DrawFn) -> tuple[str, str]:
    """Mostly one of the routes, its parameters filled in (sometimes a segment more or
    less, sometimes another method); else any path under ``/api/``."""
    if draw(st.integers(0, 3)) == 0:
        return draw(_METHODS), "/api/" + "/".join(draw(st.lists(_segment, max_size=7)))
    route = draw(st.sampled_from(ROUTES))
    hub = st.sampled_from(["chat", "Chat", "1hub", "h" * 130, "%63hat"]) | _filled
    segments = [
        draw(hub if part == "{hub}" else _id) if part.startswith("{") else part
        for part in route.pattern
    ]
    if draw(st.integers(0, 9)) == 0:
        at = draw(st.integers(0, len(segments) - 1))
        if draw(st.booleans()):
            segments.insert(at, draw(_segment))
        else:
            del segments[at]
    method = draw(_METHODS) if draw(st.integers(0, 9)) == 0 else route.method
    return method, "/api/" + "/".join(segments)


_KEYS = [
    "api-version", "excluded", "filter", "userId", "role", "group", "minutesToExpire", "top",
    "maxpagesize", "continuationToken", "reason", "targetName", "messageTtlSeconds",
    "clientType",
]  # fmt: skip
_query_value = st.text(_PCHARS.replace("&", "") + "/?", max_size=8) | st.sampled_from(
    [*_ESCAPES, "-1", "0", "1", "999999999999999999999", "userId eq 'u1'", "socketio"]
).map(lambda v: quote(v, safe="%"))
_query = st.lists(
    st.tuples(st.sampled_from(_KEYS) | st.text(_PCHARS.replace("&", ""), max_size=4), _query_value),
    max_size=4,
).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
_BODIES = [
    (None, b""),
    ("text/plain", b"hi"),
    ("application/json", b'{"groups": ["g1"], "filter": "userId eq \'u1\'"}'),
    ("application/json", b'{"groups": "g1"}'),
    ("application/json", b"[1, 2"),
    ("application/octet-stream", b"\x00\xff"),
    ("text/html", b"<p>"),
    ("text/plain", b"\xff\xfe"),
]


class Served:
    """One service and one HTTP client, both on a loop this module drives itself:
    each Hypothesis input runs one request to completion on it."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.runner = ServiceRunner(make_config(), advertised_host="127.0.0.1")
        self.loop.run_until_complete(self.runner.start())
        self.http = self.loop.run_until_complete(self._session())
        self.errors: list[logging.LogRecord] = []

    @staticmethod
    async def _session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        async def go() -> tuple[int, dict[str, str], bytes]:
            url = yarl.URL(self.runner.endpoint + target, encoded=True)
            async with self.http.request(method, url, headers=headers, data=body) as resp:
                return resp.status, dict(resp.headers), await resp.read()

        return self.loop.run_until_complete(asyncio.wait_for(go(), 10))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.close())
        self.loop.run_until_complete(self.runner.stop())
        self.loop.close()


class _Errors(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    served = Served()
    handler = _Errors(served.errors)
    logging.getLogger().addHandler(handler)
    try:
        yield served
    finally:
        logging.getLogger().removeHandler(handler)
        served.close()


@settings(deadline=None)  # a real round trip on a shared machine
@given(
    request=_method_and_path(),
    query=_query,
    auth=st.sampled_from(["signed", "signed", "signed", "none", "garbage", "other URL"]),
    body=st.sampled_from(_BODIES),
)
def test_any_request_gets_an_answer_never_a_500_and_json_refusals(
    served: Served,
    request: tuple[str, str],
    query: str,
    auth: str,
    body: tuple[str | None, bytes],
) -> None:
    method, path = request
    target = f"{path}?{query}" if query else path
    signed_for = target if auth == "signed" else "/api/hubs/chat/:send"
    token = issue_rest_token(
        ACCESS_KEY, audience=served.runner.endpoint + signed_for, now=time.time()
    )
    headers = {} if auth == "none" else {"Authorization": f"Bearer {token}"}
    if auth == "garbage":
        headers["Authorization"] = "Bearer not.a.jwt"
    content_type, data = body
    if content_type:
        headers["Content-Type"] = content_type

    status, answer, raw = served.request(method, target, headers, data)

    event(f"answered {status} {answer.get('x-ms-error-code', '')}".rstrip())
    assert status < 500, (status, raw)
    assert not served.errors, [r.getMessage() for r in served.errors]
    if status >= 400:
        code = answer["x-ms-error-code"]
        if method != "HEAD":
            media = answer["Content-Type"].partition(";")[0]
            assert media in {"application/json", "application/problem+json"}, answer
            detail = orjson.loads(raw)
            assert detail["code"] == code and isinstance(detail["message"], str)


def test_routes_of_one_length_with_parameters_at_other_places_match_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every length of today's routes has one shape (the short way); with two, the first
    route in order that matches wins, and the methods of all that match are allowed."""
    from webpubsub.server import rest

    extra = (
        rest.Route("GET", ("hubs", "{hub}", "x", "{a}"), "A", send_to_user),
        rest.Route("PUT", ("hubs", "{hub}", "{b}", "y"), "B", send_to_user),
        rest.Route("GET", ("hubs", "{hub}", "{b}", "y"), "C", send_to_user),
    )
    monkeypatch.setattr(rest, "_SHAPES", rest._shapes(extra))
    assert len(rest._SHAPES[4]) == 2
    found = route("GET", "/api/hubs/chat/x/y")  # both shapes match: A comes first
    assert not isinstance(found, list) and found[0] is extra[0]
    assert found[1] == {"hub": "chat", "a": "y"}
    found = route("PUT", "/api/hubs/chat/x/y")
    assert not isinstance(found, list) and found[0] is extra[1]
    assert found[1] == {"hub": "chat", "b": "x"}
    assert route("DELETE", "/api/hubs/chat/x/y") == ["GET", "PUT", "GET"]
    assert route("DELETE", "/api/hubs/chat/z/y") == ["PUT", "GET"]
    assert route("GET", "/api/hubs/chat/z/w") == []
