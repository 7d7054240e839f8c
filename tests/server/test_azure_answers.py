"""The REST API answers as live Azure Web PubSub answered the official SDKs' test suites.

The Python (``azure-messaging-webpubsubservice``) and JavaScript (``@azure/web-pubsub``)
service SDKs record their tests against live Azure; the recordings are public in the
``Azure/azure-sdk-assets`` repository. The requests below are the ones they recorded,
written down here as data, each with what Azure answered: status, ``x-ms-error-code``,
content type and the keys of the body. ``source`` names the recording (``py:`` for
``python/sdk/webpubsub/azure-messaging-webpubsubservice/tests/recordings/``, ``js:`` for
``js/sdk/web-pubsub/web-pubsub/recordings/node/``); docs/compatibility.md says which
recording settled which choice.

Part one replays the requests about connections, users and groups that do not exist;
part two replays the live-coverage flow, in its order, around one real client.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest

from tests.conftest import ACCESS_KEY
from tests.support.service import json_client
from webpubsub.protocol.tokens import issue_rest_token
from webpubsub.server.app import ServiceRunner

V = "api-version=2024-12-01"
JSON = "application/json; charset=utf-8"
PROBLEM = "application/problem+json; charset=utf-8"
DETAIL = {"code", "message", "target", "details", "inner"}
"""The keys of Azure's ErrorDetail body."""
VALIDATION = {
    "code",
    "message",
    "target",
    "errors",
    "type",
    "title",
    "status",
    "detail",
    "instance",
    "extensions",
}
"""The keys of ASP.NET's validation problem details, which Azure sends for bad parameters."""


@dataclass(frozen=True)
class Answer:
    status: int
    code: str | None = None
    """``x-ms-error-code`` (and the body's ``code``); None: no such header."""
    content_type: str | None = None
    """None: no Content-Type (and no body)."""
    keys: frozenset[str] = frozenset()
    target: str | None = None


def error(
    status: int, code: str, target: str, *, validation: bool = False, problem: bool = False
) -> Answer:
    """An error answer: ErrorDetail, or (``validation``) problem details, sent as
    ``application/problem+json`` when ``problem``."""
    keys = VALIDATION if validation else DETAIL
    return Answer(status, code, PROBLEM if problem else JSON, frozenset(keys), target)


def invalid(target: str, *, problem: bool = True) -> Answer:
    """A parameter Azure's validation refused."""
    return error(400, "Error.BadRequest", target, validation=True, problem=problem)


NONE_204 = Answer(204)
ACCEPTED = Answer(202)
OK_EMPTY = Answer(200)


@dataclass(frozen=True)
class Recorded:
    source: str
    method: str
    target: str
    """Path and query, ``{hub}`` for the hub; ``{conn}`` for the live client's id."""
    answer: Answer
    body: bytes | None = None
    content_type: str | None = None


def not_found(code: str, kind: str) -> Answer:
    return error(404, code, kind)


FAKE = "fake-connection-id"
INVALID_FILTER = "filter=invalid%20filter"
BAD_FILTER_BODY = b'{"groups": ["group1", "group2"], "filter": "invalid filter"}'

ABSENT: list[Recorded] = [
    Recorded(
        "py:test_generated_api_coverage.pyTestGeneratedApiCoveragetest_get_service_status",
        "HEAD",
        f"/api/health?{V}",
        Answer(200),
    ),
    Recorded(
        "py:...test_close_connection_with_fake_connection_id",
        "DELETE",
        f"/api/hubs/{{hub}}/connections/{FAKE}?{V}&reason=test",
        NONE_204,
    ),
    Recorded(
        "py:...test_send_to_connection_with_fake_connection_id",
        "POST",
        f"/api/hubs/{{hub}}/connections/{FAKE}/:send?{V}",
        ACCEPTED,
        b'{"hello": "world"}',
        "application/json",
    ),
    Recorded(
        "py:...test_connection_exists",
        "HEAD",
        f"/api/hubs/{{hub}}/connections/{FAKE}?{V}",
        not_found("Warning.Connection.NotExisted", "Connection"),
    ),
    Recorded(
        "py:test_smoke.pyTestWebpubsubSmoketest_no_users_groups",
        "HEAD",
        f"/api/hubs/{{hub}}/users/fake%20user?{V}",
        not_found("Warning.User.NotExisted", "User"),
    ),
    Recorded(
        "py:test_smoke.pyTestWebpubsubSmoketest_no_users_groups",
        "HEAD",
        f"/api/hubs/{{hub}}/groups/fake%20group?{V}",
        not_found("Warning.Group.NotExisted", "Group"),
    ),
    Recorded(
        "py:...test_add_connection_to_group_not_found",
        "PUT",
        f"/api/hubs/{{hub}}/groups/group1/connections/{FAKE}?{V}",
        not_found("Error.Connection.NotExisted", "Connection"),
    ),
    Recorded(
        "py:...test_remove_connection_from_group",
        "DELETE",
        f"/api/hubs/{{hub}}/groups/group1/connections/{FAKE}?{V}",
        NONE_204,
    ),
    Recorded(
        "py:test_smoke_async.pyTestWebpubsubSmokeAsynctest_remove_connection_from_all_groups",
        "DELETE",
        f"/api/hubs/{{hub}}/connections/fake%20connection%20id/groups?{V}",
        NONE_204,
    ),
    Recorded(
        "py:...test_add_user_to_group_not_found",
        "PUT",
        f"/api/hubs/{{hub}}/users/fake-user/groups/group1?{V}",
        not_found("Warning.User.NotExisted", "User"),
    ),
    Recorded(
        "py:...test_remove_user_from_group",
        "DELETE",
        f"/api/hubs/{{hub}}/users/fake-user/groups/group1?{V}",
        NONE_204,
    ),
    Recorded(
        "py:...test_remove_user_from_all_groups",
        "DELETE",
        f"/api/hubs/{{hub}}/users/fake-user/groups?{V}",
        NONE_204,
    ),
    Recorded(
        "py:...test_grant_permission_not_found",
        "PUT",
        f"/api/hubs/{{hub}}/permissions/sendToGroup/connections/{FAKE}?{V}&targetName=group1",
        not_found("Info.Connection.NotExisted", "Connection"),
    ),
    Recorded(
        "py:...test_check_permission",
        "HEAD",
        f"/api/hubs/{{hub}}/permissions/sendToGroup/connections/{FAKE}?{V}&targetName=group1",
        not_found("Info.Connection.NotExisted", "Connection"),
    ),
    Recorded(
        "py:...test_revoke_permission_with_fake_connection_id",
        "DELETE",
        f"/api/hubs/{{hub}}/permissions/sendToGroup/connections/{FAKE}?{V}&targetName=group1",
        NONE_204,
    ),
    Recorded(
        "js:hubclient_working_with_a_hub/recording_can_trace_through_the_various_options",
        "DELETE",
        f"/api/hubs/{{hub}}/permissions/joinLeaveGroup/connections/xxxx?{V}",
        error(400, "Error.BadRequest", "Request"),
    ),
    Recorded(
        "py:...test_close_group_connections",
        "POST",
        f"/api/hubs/{{hub}}/groups/group1/:closeConnections?{V}"
        "&excluded=fake-conn-1&excluded=fake-conn-2&reason=test",
        NONE_204,
    ),
    Recorded(
        "py:...test_close_user_connections",
        "POST",
        f"/api/hubs/{{hub}}/users/fake-user/:closeConnections?{V}&reason=test",
        NONE_204,
    ),
    Recorded(
        "py:...test_close_all_connections",
        "POST",
        f"/api/hubs/{{hub}}/:closeConnections?{V}&reason=test",
        NONE_204,
    ),
    Recorded(
        "py:...test_list_connections_in_group",
        "GET",
        f"/api/hubs/{{hub}}/groups/group1/connections?{V}&top=10",
        Answer(200, None, JSON, frozenset({"value"})),
    ),
    Recorded(
        "py:...test_add_connections_to_groups",
        "POST",
        f"/api/hubs/{{hub}}/:addToGroups?{V}",
        OK_EMPTY,
        b'{"filter": "userId eq \'nobody\'", "groups": ["group1", "group2"]}',
        "application/json",
    ),
    Recorded(
        "py:...test_remove_connections_from_groups",
        "POST",
        f"/api/hubs/{{hub}}/:removeFromGroups?{V}",
        OK_EMPTY,
        b'{"filter": "userId eq \'nobody\'", "groups": ["group1", "group2"]}',
        "application/json",
    ),
    Recorded(
        "py:...test_generate_client_token",
        "POST",
        f"/api/hubs/{{hub}}/:generateToken?{V}&userId=user1&role=webpubsub.sendToGroup"
        "&minutesToExpire=10&group=group1&clientType=Default",
        Answer(200, None, JSON, frozenset({"token"})),
    ),
    Recorded(
        "js:hubclient_working_with_a_hub/recording_can_generate_socketio_client_tokens_with_dac",
        "POST",
        "/api/hubs/{hub}/:generateToken?api-version=2024-01-01&userId=brian"
        "&minutesToExpire=60&group=group1&clientType=socketio",
        invalid("clientType", problem=False),  # :generateToken answers JSON
    ),
    Recorded(
        "js:hubclient_working_with_a_hub/recording_can_generate_client_mqtt_tokens_with_dac",
        "POST",
        "/api/hubs/{hub}/:generateToken?api-version=2024-01-01&userId=brian"
        "&minutesToExpire=60&group=group1&clientType=mqtt",
        Answer(200, None, JSON, frozenset({"token"})),
    ),
    Recorded(
        "js:hubclient_working_with_a_hub/recording_can_broadcast_with_filter",
        "POST",
        f"/api/hubs/{{hub}}/:send?{V}&{INVALID_FILTER}",
        invalid("filter"),
        b"hello",
        "text/plain",
    ),
    Recorded(
        "js:hubclient_working_with_a_hub/recording_can_send_to_a_user_with_filter",
        "POST",
        f"/api/hubs/{{hub}}/users/brian/:send?{V}&{INVALID_FILTER}",
        invalid("filter"),
        b"hello",
        "text/plain",
    ),
    Recorded(
        "js:group_client_working_with_a_group/recording_can_broadcast_to_group_with_filter",
        "POST",
        f"/api/hubs/{{hub}}/groups/group/:send?{V}&{INVALID_FILTER}",
        invalid("filter"),
        b"hello",
        "text/plain",
    ),
    Recorded(
        "js:client_working_with_multiple_groups/recording_can_join_multiple_groups_with_filter",
        "POST",
        f"/api/hubs/{{hub}}/:addToGroups?{V}",
        invalid("Filter"),
        BAD_FILTER_BODY,
        "application/json",
    ),
    Recorded(
        "js:client_working_with_multiple_groups/recording_can_leave_multiple_groups_with_filter",
        "POST",
        f"/api/hubs/{{hub}}/:removeFromGroups?{V}",
        invalid("Filter"),
        BAD_FILTER_BODY,
        "application/json",
    ),
]


# -- running a recorded request ------------------------------------------------------


class Replayer:
    def __init__(self, runner: ServiceRunner, http: aiohttp.ClientSession, hub: str) -> None:
        self.runner, self.http, self.hub = runner, http, hub

    async def replay(self, case: Recorded, **ids: str) -> Any:
        """Send ``case`` signed as the SDKs sign, assert Azure's answer; the parsed body."""
        target = case.target.format(hub=self.hub, **ids)
        url = self.runner.endpoint + target
        headers = {
            "Authorization": f"Bearer {issue_rest_token(ACCESS_KEY, audience=url, now=time.time())}"
        }
        if case.content_type is not None:
            headers["Content-Type"] = case.content_type
        async with self.http.request(case.method, url, headers=headers, data=case.body) as resp:
            raw = await resp.read()
            got = (
                resp.status,
                resp.headers.get("x-ms-error-code"),
                resp.headers.get("Content-Type"),
            )
        expected = case.answer
        where = f"{case.method} {target} ({case.source})"
        assert got == (expected.status, expected.code, expected.content_type), (where, raw)
        if case.method == "HEAD":
            assert raw == b"", where
            return None
        if expected.content_type is None:
            assert raw == b"", where
            return None
        body = orjson.loads(raw)
        assert set(body) == set(expected.keys), (where, body)
        if expected.code is not None:
            assert body["code"] == expected.code, where
            assert body["target"] == expected.target, (where, body)
            if "errors" in body:
                assert body["errors"] == {expected.target: [body["message"]]}, where
                assert body["status"] == expected.status
        return body


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.mark.parametrize(
    "case", ABSENT, ids=[f"{c.method} {c.target.split('?')[0]}" for c in ABSENT]
)
async def test_requests_about_absent_things_get_azures_answers(
    service: ServiceRunner, http: aiohttp.ClientSession, case: Recorded
) -> None:
    await Replayer(service, http, "apicoverage").replay(case)


# -- the live coverage flow ----------------------------------------------------------

LIVE = (
    "py:test_live_api_coverage.pyTestLiveApiCoveragetest_live_api_coverage_all_apis_and_parameters"
)
USER, GROUP = "live-user-1", "group-live-1"


def live(
    method: str,
    path: str,
    query: str,
    answer: Answer,
    body: bytes | None = None,
    content_type: str | None = None,
) -> Recorded:
    target = f"/api/hubs/{{hub}}{path}" + (f"?{query}" if query else "")
    return Recorded(LIVE, method, target, answer, body, content_type)


TOKEN = Answer(200, None, JSON, frozenset({"token"}))
LISTED = Answer(200, None, JSON, frozenset({"value"}))
JSON_BODY, TEXT_BODY, BINARY_BODY = (
    (b'{"kind": "json"}', "application/json"),
    (b"plain", "text/plain"),
    (b"binary", "application/octet-stream"),
)
EXCLUDED = "excluded={conn}&excluded=fake-conn-id&" + V
BY_USER = V + "&filter=userId%20eq%20%27live-user-1%27"

SENDS = [
    live("POST", "/:send", EXCLUDED, ACCEPTED, *JSON_BODY),
    live("POST", "/:send", BY_USER, ACCEPTED, *TEXT_BODY),
    live("POST", "/:send", V, ACCEPTED, *BINARY_BODY),
    live("POST", f"/groups/{GROUP}/:send", EXCLUDED, ACCEPTED, *JSON_BODY),
    live("POST", f"/groups/{GROUP}/:send", BY_USER, ACCEPTED, *TEXT_BODY),
    live("POST", f"/groups/{GROUP}/:send", V, ACCEPTED, *BINARY_BODY),
    live("POST", "/connections/{conn}/:send", V, ACCEPTED, *JSON_BODY),
    live("POST", "/connections/{conn}/:send", V, ACCEPTED, *TEXT_BODY),
    live("POST", "/connections/{conn}/:send", V, ACCEPTED, *BINARY_BODY),
    live("POST", f"/users/{USER}/:send", BY_USER, ACCEPTED, *JSON_BODY),
    live("POST", f"/users/{USER}/:send", V, ACCEPTED, *TEXT_BODY),
    live("POST", f"/users/{USER}/:send", V, ACCEPTED, *BINARY_BODY),
]
USER_FILTER_BODY = b'{"filter": "userId eq \'live-user-1\'", "groups": ["group-live-3"]}'
MEMBERSHIP = [
    live("PUT", "/groups/group-live-2/connections/{conn}", V, OK_EMPTY),
    live("GET", "/groups/group-live-2/connections", V + "&top=20", LISTED),
    live("POST", "/:addToGroups", V, OK_EMPTY, USER_FILTER_BODY, "application/json"),
    live("GET", "/groups/group-live-3/connections", V + "&top=20", LISTED),
    live(
        "PUT", "/permissions/sendToGroup/connections/{conn}", V + f"&targetName={GROUP}", OK_EMPTY
    ),
    live(
        "HEAD",
        "/permissions/sendToGroup/connections/{conn}",
        V + f"&targetName={GROUP}",
        Answer(200),
    ),
    live(
        "DELETE",
        "/permissions/sendToGroup/connections/{conn}",
        V + f"&targetName={GROUP}",
        NONE_204,
    ),
    live("PUT", f"/users/{USER}/groups/group-live-4", V, OK_EMPTY),
    live("DELETE", f"/users/{USER}/groups/group-live-4", V, NONE_204),
    live("POST", "/:removeFromGroups", V, OK_EMPTY, USER_FILTER_BODY, "application/json"),
    live("DELETE", "/groups/group-live-2/connections/{conn}", V, NONE_204),
    live("DELETE", "/connections/{conn}/groups", V, NONE_204),
    live("DELETE", f"/users/{USER}/groups", V, NONE_204),
]
NO_USER = not_found("Warning.User.NotExisted", "User")
NO_GROUP = not_found("Warning.Group.NotExisted", "Group")
GONE = live(
    "HEAD", "/connections/{conn}", V, not_found("Warning.Connection.NotExisted", "Connection")
)
CLOSES = [
    live("POST", f"/groups/{GROUP}/:closeConnections", V + "&reason=live-coverage", NONE_204),
    live("POST", f"/users/{USER}/:closeConnections", V + "&reason=live-coverage", NONE_204),
    live("DELETE", "/connections/{conn}", V + "&reason=live-coverage", NONE_204),
    live("POST", "/:closeConnections", V + "&reason=live-coverage", NONE_204),
]


async def test_the_live_coverage_flow_gets_azures_answers(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    replayer = Replayer(service, http, "hub")

    async def connect() -> tuple[aiohttp.ClientWebSocketResponse, str]:
        """A client of the live user in the live group, with a token from :generateToken."""
        body = await replayer.replay(
            live(
                "POST",
                "/:generateToken",
                V + f"&userId={USER}&role=webpubsub.sendToGroup&role=webpubsub.joinLeaveGroup"
                f"&minutesToExpire=15&group={GROUP}&clientType=Default",
                TOKEN,
            )
        )
        url = f"ws://127.0.0.1:{service.port}/client/hubs/hub?access_token={body['token']}"
        return await json_client(http, url)

    ws, conn = await connect()
    await replayer.replay(Recorded(LIVE, "HEAD", f"/api/health?{V}", Answer(200)))
    page = await replayer.replay(live("GET", f"/groups/{GROUP}/connections", V + "&top=20", LISTED))
    assert page["value"] == [{"connectionId": conn, "userId": USER}]
    for exists in (f"/connections/{conn}", f"/users/{USER}", f"/groups/{GROUP}"):
        await replayer.replay(live("HEAD", exists, V, Answer(200)))
    for case in SENDS + MEMBERSHIP:
        listed = await replayer.replay(case, conn=conn)
        if case.method == "GET":
            assert listed["value"] == [{"connectionId": conn, "userId": USER}], case.target
    # Each close ends a new client of the live user in the live group (the one above left
    # every group), as the recorded test connected one before each.
    for close in CLOSES:
        await ws.close()
        ws, conn = await connect()
        await replayer.replay(close, conn=conn)
        await replayer.replay(GONE, conn=conn)  # at once, before the client has left
        await replayer.replay(live("HEAD", f"/users/{USER}", V, NO_USER))
        await replayer.replay(live("HEAD", f"/groups/{GROUP}", V, NO_GROUP))
        disconnected = json.loads((await ws.receive(timeout=5)).data)
        assert disconnected["event"] == "disconnected"
        assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.CLOSE
    await ws.close()
    await replayer.replay(live("HEAD", "/users/live-user-not-exist", V, NO_USER))
    await replayer.replay(live("HEAD", "/groups/live-group-not-exist", V, NO_GROUP))
