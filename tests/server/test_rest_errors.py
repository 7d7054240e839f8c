"""REST failures: authentication, routing, bodies and parameters (Azure REST API reference).

Raw aiohttp requests carry tokens minted exactly as the SDK mints them, so each
case differs from a valid call in one respect only.  Every error is a JSON
``ErrorDetail`` with a matching ``x-ms-error-code`` header.
"""

from __future__ import annotations

import asyncio
import gzip as gzip_module
import logging
import time
from collections.abc import AsyncIterator, Awaitable

import aiohttp
import orjson
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.messaging.webpubsubservice import WebPubSubServiceClient as SyncClient
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient as AioClient

from tests.conftest import ACCESS_KEY, SECOND_KEY, StartService
from tests.support.service import json_client
from webpubsub.protocol.connection_string import format_connection_string
from webpubsub.protocol.tokens import issue_client_token, issue_rest_token
from webpubsub.server.app import ServiceRunner

WRONG_KEY = "wrong-access-key-0123456789-abcdefghijklmn"
SEND = "/api/hubs/chat/:send?api-version=2024-12-01"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def error(self, status: int, code: str | None = None, *, problem: bool = False) -> None:
        """Assert an ErrorDetail response with ``status`` (and ``code``), as Azure shapes it:
        ``problem`` for a parameter's validation problem details (RFC 9457)."""
        assert self.status == status, self.body
        media = "application/problem+json" if problem else "application/json"
        assert self.headers["Content-Type"] == f"{media}; charset=utf-8"
        detail = orjson.loads(self.body)
        assert isinstance(detail, dict) and isinstance(detail["message"], str)
        assert detail["code"] == self.headers["x-ms-error-code"]
        if problem:
            assert detail["errors"] == {detail["target"]: [detail["message"]]}
            assert (detail["status"], detail["title"]) == (
                status,
                "One or more validation errors occurred.",
            )
        else:
            assert {"target", "details", "inner"} <= detail.keys()
        if code is not None:
            assert detail["code"] == code


class Api:
    """Raw REST calls against one service, plus one simple WebSocket client on hub chat."""

    def __init__(self, runner: ServiceRunner, http: aiohttp.ClientSession) -> None:
        self.runner, self.http = runner, http

    def token(self, target: str, *, key: str = ACCESS_KEY, now: float | None = None) -> str:
        audience = target if "://" in target else self.runner.endpoint + target
        return issue_rest_token(key, audience=audience, now=time.time() if now is None else now)

    async def call(
        self,
        method: str,
        target: str,
        *,
        token: str | None = "",
        body: bytes = b"",
        content_type: str | None = "text/plain",
        headers: dict[str, str] | None = None,
    ) -> Response:
        """``token=""`` signs for ``target``; ``None`` sends no Authorization header."""
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {token or self.token(target)}")
        if content_type is not None:
            sent["Content-Type"] = content_type
        async with self.http.request(
            method, self.runner.endpoint + target, data=body, headers=sent
        ) as resp:
            return Response(resp.status, dict(resp.headers), await resp.read())

    async def client(self) -> aiohttp.ClientWebSocketResponse:
        base = f"{self.runner.endpoint}/client/hubs/chat"
        token = issue_client_token(ACCESS_KEY, audience=base, now=time.time())
        return await self.http.ws_connect(f"ws{base.removeprefix('http')}?access_token={token}")


@pytest.fixture
async def runner(start_service: StartService) -> ServiceRunner:
    return await start_service(keys=(ACCESS_KEY, SECOND_KEY), max_message_bytes=2048)


@pytest.fixture
async def api(runner: ServiceRunner) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http:
        yield Api(runner, http)


async def only_marker(api: Api, ws: aiohttp.ClientWebSocketResponse) -> None:
    """Nothing was delivered to ``ws`` before a marker sent now."""
    assert (await api.call("POST", SEND, body=b"marker")).status == 202
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "marker")


# -- health --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_health_needs_no_token(api: Api, method: str) -> None:
    for target in ("/api/health", "/api/health?api-version=2024-12-01"):
        resp = await api.call(method, target, token=None, content_type=None)
        assert resp.status == 200


# -- authentication -------------------------------------------------------------------


async def test_bad_tokens_are_401_without_secrets(api: Api) -> None:
    ws = await api.client()
    target = "/api/hubs/chat/:send?excluded=b"
    cases: dict[str, str | None] = {
        "missing": None,
        "not bearer": f"Basic {api.token(target)}",
        "garbage": "Bearer not.a.jwt",
        "wrong key": f"Bearer {api.token(target, key=WRONG_KEY)}",
        "expired": f"Bearer {api.token(target, now=time.time() - 3600)}",
        "other path": f"Bearer {api.token('/api/hubs/chat/:closeConnections?excluded=b')}",
        "other hub": f"Bearer {api.token('/api/hubs/other/:send?excluded=b')}",
        "query mismatch": f"Bearer {api.token('/api/hubs/chat/:send?excluded=a')}",
    }
    for case, authorization in cases.items():
        headers = {"Authorization": authorization} if authorization else {}
        resp = await api.call("POST", target, token=None, body=b"x", headers=headers)
        resp.error(401, "Error.Unauthorized")
        text = resp.body.decode()
        for secret in (ACCESS_KEY, SECOND_KEY, WRONG_KEY, authorization or "-"):
            assert secret not in text, case
    await only_marker(api, ws)
    # The control: the same request, rightly signed, goes through.
    assert (await api.call("POST", target, body=b"signed")).status == 202
    assert (await ws.receive(timeout=5)).data == "signed"

    # Unauthenticated existence checks are 401 too, not a "does not exist".
    resp = await api.call("HEAD", "/api/hubs/chat/users/u", token=None, content_type=None)
    assert (resp.status, resp.headers["x-ms-error-code"]) == (401, "Error.Unauthorized")


async def test_a_token_is_for_its_own_raw_path_and_case_only(api: Api) -> None:
    """Issue 10, defect 9: ``aud`` was compared with the decoded, lower-cased path."""
    base = f"{api.runner.endpoint}/client/hubs/chat"
    token = issue_client_token(
        ACCESS_KEY, audience=base, now=time.time(), user_id="alice", groups=["g"]
    )
    ws, conn_id = await json_client(api.http, f"ws{base.removeprefix('http')}?access_token={token}")
    assert conn_id.upper() != conn_id
    v = "?api-version=2024-12-01"

    def head(target: str) -> Awaitable[Response]:
        return api.call("HEAD", target + v, token=api.token(target + v), content_type=None)

    # A HEAD token for the user "alice/groups/g2" is no PUT or DELETE of alice in g2.
    head_token = api.token(f"/api/hubs/chat/users/alice%2Fgroups%2Fg2{v}")
    for method in ("PUT", "DELETE"):
        resp = await api.call(
            method, f"/api/hubs/chat/users/alice/groups/g2{v}", token=head_token, content_type=None
        )
        resp.error(401, "Error.Unauthorized")
    assert (await head("/api/hubs/chat/groups/g2")).status == 404  # alice was not added
    # Tokens for ALICE, G and the upper-cased connection id are not tokens for the real ones.
    for signed, sent in (
        ("users/ALICE", "users/alice"),
        ("groups/G", "groups/g"),
        (f"connections/{conn_id.upper()}", f"connections/{conn_id}"),
    ):
        resp = await api.call(
            "HEAD",
            f"/api/hubs/chat/{sent}{v}",
            token=api.token(f"/api/hubs/chat/{signed}{v}"),
            content_type=None,
        )
        assert (resp.status, resp.headers["x-ms-error-code"]) == (401, "Error.Unauthorized"), sent
        assert (await head(f"/api/hubs/chat/{sent}")).status == 200  # the control
    await ws.close()


async def test_audience_is_the_whole_url_with_its_query(api: Api) -> None:
    ws = await api.client()
    for signed in ("/api/hubs/chat/:send", SEND):  # the SDKs sign the query too
        resp = await api.call("POST", SEND + "&excluded=nobody", token=api.token(signed))
        resp.error(401, "Error.Unauthorized")
    await only_marker(api, ws)
    # Spelled as aiohttp re-escapes it after signing: the same pairs, so the same request.
    sent = SEND + "&filter=userId%20ne%20'x'"
    resp = await api.call(
        "POST", sent, token=api.token(SEND + "&filter=userId+ne+%27x%27"), body=b"hi"
    )
    assert resp.status == 202
    msg = await ws.receive(timeout=5)
    assert msg.data == "hi"


@pytest.mark.parametrize("kind", ["sync", "aio"])
async def test_sdk_with_wrong_key_raises_authentication_error(
    runner: ServiceRunner, kind: str
) -> None:
    cs = format_connection_string(runner.endpoint, WRONG_KEY)
    if kind == "sync":
        sync = SyncClient.from_connection_string(cs, hub="chat")
        with sync:
            with pytest.raises(ClientAuthenticationError):
                await asyncio.to_thread(sync.send_to_all, "x", content_type="text/plain")
            with pytest.raises(ClientAuthenticationError):  # a failed HEAD is no "False"
                await asyncio.to_thread(sync.user_exists, "u")
    else:
        async with AioClient.from_connection_string(cs, hub="chat") as aio:
            with pytest.raises(ClientAuthenticationError):
                await aio.send_to_all("x", content_type="text/plain")
            with pytest.raises(ClientAuthenticationError):  # a failed HEAD is no "False"
                await aio.user_exists("u")


# -- routing ---------------------------------------------------------------------------


async def test_unknown_route_is_404_and_wrong_method_405(api: Api) -> None:
    for target in (
        "/api/nothing",
        "/api/hubs/chat/:nothing",
        "/api/hubs/chat/users/u/x/y",
        "/api/a%0Ab",  # a line break in the decoded path (found by the fuzzer)
    ):
        (await api.call("POST", target)).error(404, "Error.NotFound")
    for method, target, allow in (
        ("GET", SEND, "POST"),
        ("PUT", "/api/hubs/chat/users/u", "HEAD"),
        ("POST", "/api/hubs/chat/groups/g/connections/c", "PUT, DELETE"),
    ):
        resp = await api.call(method, target)
        resp.error(405, "Error.MethodNotAllowed")
        assert resp.headers["Allow"] == allow


async def raw_http(api: Api, target: str, *, length: int, body: bytes) -> bytes:
    """Send a hand-made POST (``length`` may exceed ``body``); return the status line."""
    request = (
        f"POST {target} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{api.runner.port}\r\n"
        f"Authorization: Bearer {api.token(SEND)}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {length}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", api.runner.port)
    try:
        writer.write(request.encode() + body)
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_absolute_form_request_target_is_routed(api: Api) -> None:
    ws = await api.client()
    status = await raw_http(api, api.runner.endpoint + SEND, length=8, body=b"absolute")
    assert status.startswith(b"HTTP/1.1 202 ")
    assert (await ws.receive(timeout=5)).data == "absolute"


async def test_invalid_hub_name_is_400(api: Api) -> None:
    resp = await api.call("POST", "/api/hubs/1chat/:send", body=b"x")
    resp.error(400, "Error.BadRequest")


# -- bodies and parameters ----------------------------------------------------------------


async def test_body_over_the_limit_is_413(api: Api) -> None:
    ws = await api.client()
    (await api.call("POST", SEND, body=b"x" * 2049)).error(413, "Error.PayloadTooLarge")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the read is bounded
        for _ in range(3):
            yield b"x" * 1000

    resp = await api.call("POST", SEND, body=chunks())  # type: ignore[arg-type]
    resp.error(413, "Error.PayloadTooLarge")
    # A too large Content-Length is refused up front, without waiting for the body.
    assert (await raw_http(api, SEND, length=10**9, body=b"")).startswith(b"HTTP/1.1 413 ")
    await only_marker(api, ws)

    assert (await api.call("POST", SEND, body=b"y" * 2048)).status == 202
    assert (await ws.receive(timeout=5)).data == "y" * 2048

    async with AioClient.from_connection_string(api.runner.connection_string, hub="chat") as aio:
        with pytest.raises(HttpResponseError) as raised:
            await aio.send_to_all("z" * 4096, content_type="text/plain")
    assert raised.value.status_code == 413


async def test_bad_bodies_are_400(api: Api) -> None:
    ws = await api.client()
    for content_type, body, code in (
        ("text/html", b"<p>hi</p>", "Error.BadRequest"),
        ("application/json", b"{not json", "Error.BadRequest"),
        ("application/json", b"", "Error.BadRequest"),
        ("text/plain", b"\xff\xfe", "Error.BadRequest"),
    ):
        resp = await api.call("POST", SEND, body=body, content_type=content_type)
        resp.error(400, code)
    await only_marker(api, ws)

    resp = await api.call("POST", SEND, body=b'{"a": 1}', content_type="application/json")
    assert resp.status == 202
    assert (await ws.receive(timeout=5)).data == '{"a": 1}'


async def test_message_ttl_seconds(api: Api) -> None:
    ws = await api.client()
    for ttl in ("301", "-1", "abc", "1.5"):
        resp = await api.call("POST", f"{SEND}&messageTtlSeconds={ttl}", body=b"x")
        resp.error(400, "Error.BadRequest", problem=True)
    await only_marker(api, ws)

    for ttl in ("10", "0", "300"):
        resp = await api.call("POST", f"{SEND}&messageTtlSeconds={ttl}", body=ttl.encode())
        assert resp.status == 202
        assert (await ws.receive(timeout=5)).data == ttl


async def test_any_or_no_api_version_is_accepted(api: Api) -> None:
    ws = await api.client()
    for target in ("/api/hubs/chat/:send", "/api/hubs/chat/:send?api-version=whatever"):
        assert (await api.call("POST", target, body=target.encode())).status == 202
        assert (await ws.receive(timeout=5)).data == target


def assert_no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Client-caused input: nothing at ERROR, no traceback."""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_a_body_that_is_not_the_content_encoding_it_claims_is_400(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await api.client()
    gzip = {"Content-Encoding": "gzip"}
    for target, content_type in (
        (SEND, "text/plain"),
        ("/api/hubs/chat/:addToGroups", "application/json"),
    ):
        resp = await api.call(
            "POST", target, body=b'{"groups": ["g"]}', content_type=content_type, headers=gzip
        )
        resp.error(400, "Error.BadRequest")
        assert "Content-Encoding" in orjson.loads(resp.body)["message"]
    for encoding in ("deflate", "br", "zstd"):  # whether or not its decoder is installed
        resp = await api.call("POST", SEND, body=b"plain", headers={"Content-Encoding": encoding})
        resp.error(400, "Error.BadRequest")
        assert "Content-Encoding" in orjson.loads(resp.body)["message"]
    await only_marker(api, ws)
    # A body that is what it claims still arrives decoded.
    resp = await api.call("POST", SEND, body=zlib_gzip(b"zipped"), headers=gzip)
    assert resp.status == 202
    assert (await ws.receive(timeout=5)).data == "zipped"
    assert_no_errors_logged(caplog)


def zlib_gzip(data: bytes) -> bytes:
    return gzip_module.compress(data)


async def test_integers_too_long_to_convert_are_400(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    huge = "9" * 5000
    ws = await api.client()
    resp = await api.call("POST", f"{SEND}&messageTtlSeconds={huge}", body=b"x")
    resp.error(400, "Error.BadRequest", problem=True)
    token = "/api/hubs/chat/:generateToken?api-version=2024-12-01"
    resp = await api.call("POST", f"{token}&minutesToExpire={huge}", content_type=None)
    assert resp.status == 400
    assert orjson.loads(resp.body)["target"] == "minutesToExpire"
    listing = "/api/hubs/chat/groups/g/connections?api-version=2024-12-01"
    for name in ("maxpagesize", "top"):
        resp = await api.call("GET", f"{listing}&{name}={huge}", content_type=None)
        assert resp.status == 400
        assert orjson.loads(resp.body)["target"] == name
    # Leading zeros do not make a small value large.
    resp = await api.call("POST", f"{SEND}&messageTtlSeconds={'0' * 5000}7", body=b"kept")
    assert resp.status == 202
    assert (await ws.receive(timeout=5)).data == "kept"
    assert_no_errors_logged(caplog)
