"""The portal's API on the real service (port 0): access, CSRF, the live trace with real
clients, the official service SDK and a real event handler, replay, and two nodes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
import yarl
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ACCESS_KEY, SECOND_KEY, StartService, make_config, tls_files
from tests.support.handler import EventHandlerApp, Recorded, default_responder
from tests.support.redis_server import RedisServer
from tests.support.service import chat_hub, json_client, next_data, sdk
from webpubsub import devcert
from webpubsub.backplane.memory import MemoryBackplane, MemoryBus
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.config import PortalSettings
from webpubsub.core.connection import Connection
from webpubsub.core.permissions import Permissions
from webpubsub.core.settings import HubSettings
from webpubsub.errors import InvalidParameter
from webpubsub.node.node import Node
from webpubsub.protocol.frames import ClientProtocol
from webpubsub.server import portal_auth, portal_trace
from webpubsub.server.app import ServiceRunner
from webpubsub.server.portal import API_ROUTES, admin_link
from webpubsub.server.portal_core import PORTAL
from webpubsub.server.portal_poll import FEED_MAX_BYTES, Feed
from webpubsub.server.portal_trace import (
    WRITE_MAX_BYTES,
    local_records,
    parse_after,
    parse_seq,
    replay_headers,
)
from webpubsub.server.portal_view import MAX_ANSWER_BYTES, NodeView
from webpubsub.server.trace import TraceRing

WAIT = 5.0


class PortalClient:
    """A browser of the portal: the session cookie kept by hand (so tests can tamper)."""

    def __init__(self, http: aiohttp.ClientSession, runner: ServiceRunner) -> None:
        self.http = http
        self.base = f"http://127.0.0.1:{runner.port}"
        self.session: str | None = None
        self.csrf = ""
        self.rings = [runner.trace] if runner.trace is not None else []
        """The traces whose new records a test waits for."""

    def headers(self, csrf: bool = True) -> dict[str, str]:
        headers = {}
        if self.session is not None:
            headers["Cookie"] = f"{portal_auth.COOKIE}={self.session}"
        if csrf and self.csrf:
            headers[portal_auth.CSRF_HEADER] = self.csrf
        return headers

    async def login(self, key: str = ACCESS_KEY) -> None:
        async with self.http.post(f"{self.base}/portal/api/login", json={"key": key}) as resp:
            assert resp.status == 204, await resp.text()
            self.session = resp.cookies[portal_auth.COOKIE].value
        self.csrf = str((await self.get("/portal/api/session"))["csrf"])

    async def get(self, path: str, status: int = 200) -> Any:
        async with self.http.get(self.base + path, headers=self.headers()) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json()

    async def post(self, path: str, body: object = None, status: int = 200, **kw: Any) -> Any:
        headers = {**self.headers(), **kw.pop("headers", {})}
        async with self.http.post(self.base + path, json=body, headers=headers, **kw) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json() if status != 204 else None


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def handler(handler_app: EventHandlerApp) -> EventHandlerApp:
    return handler_app


async def portal_for(
    http: aiohttp.ClientSession, runner: ServiceRunner, key: str = ACCESS_KEY
) -> PortalClient:
    client = PortalClient(http, runner)
    await client.login(key)
    return client


async def with_portal(start_service: StartService, settings: PortalSettings) -> ServiceRunner:
    """A service with hub ``chat`` and these ``[portal]`` settings."""
    config = dataclasses.replace(make_config(chat_hub()), portal=settings)
    return await start_service(config=config)


def concrete(path: str) -> str:
    return (
        path.replace("{hub}", "chat")
        .replace("{id}", "some-id")
        .replace("{node}", "n")
        .replace("{seq}", "1")
    )


# -- access --------------------------------------------------------------------------


@pytest.mark.parametrize("route", API_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_api_route_refuses_without_a_valid_session(
    start_service: StartService, http: aiohttp.ClientSession, route: Any
) -> None:
    runner = await start_service()
    url = f"http://127.0.0.1:{runner.port}{concrete(route.path)}"
    now = time.time()
    sessions = {
        "none": None,
        "garbage": "not-a-session",
        "expired": portal_auth.new_session(ACCESS_KEY, now - 13 * 3600),
        "other key": portal_auth.new_session("not-the-service-key-0123456789", now),
        "tampered": _tampered(portal_auth.new_session(ACCESS_KEY, now)),
    }
    for name, value in sessions.items():
        headers = {} if value is None else {"Cookie": f"{portal_auth.COOKIE}={value}"}
        async with http.request(route.method, url, headers=headers, json={}) as resp:
            assert resp.status == 401, (name, await resp.text())
            assert resp.content_type == "application/json"
            assert (await resp.json())["code"] == "Error.Unauthorized"


async def test_the_route_table_is_every_guarded_route_the_service_serves(
    service: ServiceRunner,
) -> None:
    assert service._runner is not None
    served = {
        (route.method, route.resource.canonical)
        for route in service._runner.app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/portal/api/")
    }
    open_or_catch_all = {("POST", "/portal/api/login"), ("*", "/portal/api/{tail}")}
    assert served - open_or_catch_all == {(r.method, r.path) for r in API_ROUTES}


def _tampered(session: str) -> str:
    expiry, rest = session.split(".", 1)
    return f"{int(expiry) + 3600}.{rest}"  # a longer life under the same MAC


async def test_an_unknown_api_path_is_401_without_a_session_and_404_with_one(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = PortalClient(http, service)
    await portal.get("/portal/api/nothing/here", status=401)
    await portal.login()
    await portal.get("/portal/api/nothing/here", status=404)


async def test_a_wrong_key_is_refused_401_and_sets_no_cookie(
    service: ServiceRunner, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{service.port}/portal/api/login"
    caplog.set_level(logging.WARNING, logger="webpubsub.portal")
    for body in ({"key": "wrong"}, {"key": ACCESS_KEY[:-1]}, {"nokey": 1}, {"key": 5}):
        async with http.post(url, json=body) as resp:
            assert resp.status == 401, body
            assert (await resp.json())["code"] == "Error.Unauthorized"
            assert "Set-Cookie" not in resp.headers
    # Counted, and logged once (rate-limited) with the peer's address, never the key.
    assert service._runner.app[PORTAL].failed_logins == 4  # type: ignore[union-attr]
    warnings = [r.getMessage() for r in caplog.records if "login refused" in r.getMessage()]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0]
    assert all(ACCESS_KEY[:-1] not in r.getMessage() for r in caplog.records)


def test_a_key_is_compared_by_its_digest_so_its_length_does_not_leak(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def checking(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(portal_auth.hmac, "compare_digest", checking)
    assert portal_auth.key_matches("short", [ACCESS_KEY, SECOND_KEY]) is None
    assert portal_auth.key_matches(SECOND_KEY, [ACCESS_KEY, SECOND_KEY]) == SECOND_KEY
    assert compared and all(a == b == 32 for a, b in compared)


async def test_the_session_cookie_is_httponly_samesite_strict_on_path_portal(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(keys=(ACCESS_KEY, SECOND_KEY))
    url = f"http://127.0.0.1:{runner.port}/portal/api/login"
    async with http.post(url, json={"key": SECOND_KEY}) as resp:  # any configured key
        assert resp.status == 204
        cookie = resp.headers["Set-Cookie"]
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert "Path=/portal" in cookie and "SameSite=Strict" in cookie
    assert "Max-Age=28800" in cookie


async def test_over_https_the_cookie_is_also_secure(
    start_service: StartService, dev_cert: devcert.DevCert
) -> None:
    runner = await start_service(**tls_files(dev_cert))
    context = ssl.create_default_context(cafile=str(dev_cert.ca_cert))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"https://localhost:{runner.port}/portal/api/login",
            json={"key": ACCESS_KEY},
            ssl=context,
        ) as resp,
    ):
        assert resp.status == 204
        assert "Secure" in resp.headers["Set-Cookie"]


async def test_behind_a_trusted_tls_terminator_the_cookie_is_secure(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(trusted_proxies=("127.0.0.1",))
    url = f"http://127.0.0.1:{runner.port}/portal/api/login"
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pubsub.example.com"}
    async with http.post(url, json={"key": ACCESS_KEY}, headers=headers) as resp:
        assert resp.status == 204 and "Secure" in resp.headers["Set-Cookie"]
    foreign = {**headers, "Origin": "https://elsewhere.example.com"}
    async with http.post(url, json={"key": ACCESS_KEY}, headers=foreign) as resp:
        assert resp.status == 403
    same = {**headers, "Origin": "https://pubsub.example.com"}
    async with http.post(url, json={"key": ACCESS_KEY}, headers=same) as resp:
        assert resp.status == 204


async def test_the_admin_link_logs_in_and_a_bad_token_does_not(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    link = service.portal_link
    assert link is not None and link.startswith(f"{service.endpoint}/portal/login?token=")
    local = link.replace(service.endpoint, f"http://127.0.0.1:{service.port}")
    async with http.get(local, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/portal"
        session = resp.cookies[portal_auth.COOKIE].value
        assert "HttpOnly" in resp.headers["Set-Cookie"]
    portal = PortalClient(http, service)
    portal.session = session
    assert (await portal.get("/portal/api/session"))["node"] == service.node.node_id  # type: ignore[union-attr]

    now = int(time.time())
    bad = {
        "expired": admin_link("", ACCESS_KEY, now=now - 25 * 3600),
        "other key": admin_link("", "some-other-key-0123456789-abcdefghijklmnop", now=now),
        "rest audience": "/portal/login?token="
        + jwt.encode({"aud": service.endpoint, "exp": now + 60}, ACCESS_KEY),
        "too long lived": "/portal/login?token="
        + jwt.encode({"aud": "webpubsub-portal", "exp": now + 30 * 86400}, ACCESS_KEY),
        "none": "/portal/login",
    }
    for name, path in bad.items():
        async with http.get(
            f"http://127.0.0.1:{service.port}{path}", allow_redirects=False
        ) as resp:
            assert resp.status == 401, name
            assert "Set-Cookie" not in resp.headers, name


async def test_a_key_rotation_that_drops_the_key_ends_its_sessions(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    old = await start_service(keys=(ACCESS_KEY, SECOND_KEY))
    portal = await portal_for(http, old, SECOND_KEY)
    rotated = await start_service(keys=(ACCESS_KEY,))
    moved = PortalClient(http, rotated)
    moved.session = portal.session
    await moved.get("/portal/api/session", status=401)


async def test_a_cross_site_write_is_refused_403_and_has_no_effect(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    portal = await portal_for(http, runner)
    ws, cid = await json_client(http, await _client_url(runner, user_id="alice"))
    close = f"/portal/api/hubs/chat/connections/{cid}/close"
    for name, headers in {
        "no csrf": {portal_auth.CSRF_HEADER: ""},
        "wrong csrf": {portal_auth.CSRF_HEADER: portal.csrf[:-2] + "xx"},
        "foreign origin": {"Origin": "http://evil.example"},
        "null origin": {"Origin": "null"},
        "cross-site fetch": {"Sec-Fetch-Site": "cross-site"},
    }.items():
        merged = {**portal.headers(), **headers}
        async with http.post(portal.base + close, json={}, headers=merged) as resp:
            assert resp.status == 403, name
            assert (await resp.json())["code"] == "Error.Forbidden"
    # Nothing happened: the client is still there, and a same-origin write works.
    assert await _exists(runner, cid)
    await portal.post(close, {"reason": "bye"}, status=204, headers={"Origin": portal.base})
    closed = await ws.receive(timeout=WAIT)
    if closed.type is aiohttp.WSMsgType.TEXT:  # the JSON protocol's disconnected message
        assert json.loads(closed.data)["message"] == "bye"
        closed = await ws.receive(timeout=WAIT)
    assert closed.type is aiohttp.WSMsgType.CLOSE and closed.extra == "bye"


async def test_logout_clears_the_cookie(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = await portal_for(http, service)
    async with http.post(f"{portal.base}/portal/api/logout", headers=portal.headers()) as resp:
        assert resp.status == 204
        cookie = resp.headers["Set-Cookie"]
        assert "Max-Age=0" in cookie and "Path=/portal" in cookie


async def test_the_page_and_only_its_files_are_served(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    base = f"http://127.0.0.1:{service.port}"
    async with http.get(f"{base}/portal") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        policy = resp.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "connect-src 'self';" in policy
        assert "unsafe-inline" not in policy and "data:" not in policy and "ws:" not in policy
        assert 'id="login-key"' in await resp.text()
    for name in ("../app.py", "trace.py", "%2e%2e%2fapp.py", "index.htm"):
        async with http.get(f"{base}/portal/static/{name}") as resp:
            assert resp.status == 404, name
    async with http.get(f"{base}/portal/static/index.html") as resp:
        assert resp.status == 200


async def test_a_disabled_portal_is_not_there_and_traces_nothing(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await with_portal(start_service, PortalSettings(enabled=False))
    assert runner.trace is None and runner.portal_link is None
    assert not any(isinstance(o, TraceRing) for o in runner.observer.all)
    for path in ("/portal", "/portal/api/session", "/portal/login?token=x"):
        async with http.get(f"http://127.0.0.1:{runner.port}{path}") as resp:
            assert resp.status == 404, path


async def test_with_no_trace_buffer_the_trace_answers_empty(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await with_portal(start_service, PortalSettings(trace_buffer=0))
    assert runner.trace is None
    assert not any(isinstance(o, TraceRing) for o in runner.observer.all)
    portal = await portal_for(http, runner)
    ws, _ = await json_client(http, await _client_url(runner))
    answer = await portal.get("/portal/api/trace")
    assert answer["records"] == []
    await ws.close()


# -- live data -------------------------------------------------------------------------


async def _client_url(runner: ServiceRunner, **claims: Any) -> str:
    async with sdk(runner) as service:
        token = await service.get_client_access_token(**claims)
    return str(token["url"])


async def _exists(runner: ServiceRunner, cid: str) -> bool:
    async with sdk(runner) as service:
        return bool(await service.connection_exists(cid))


async def test_hubs_and_connections_are_listed_and_a_connection_can_be_sent_to(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    hub = dataclasses.replace(
        chat_hub("http://127.0.0.1:9/hook?code=secret", system=frozenset({"connected"})),
        anonymous_connect=True,
    )
    runner = await start_service(hub)
    portal = await portal_for(http, runner)
    role = "webpubsub.sendToGroup.room"
    url = await _client_url(runner, user_id="alice", groups=["room"], roles=[role])
    alice, alice_id = await json_client(http, url)
    async with sdk(runner, "other") as other:
        token = await other.get_client_access_token(user_id="bob")
    bob, _ = await json_client(http, token["url"])

    listed = {h["name"]: h for h in (await portal.get("/portal/api/hubs"))["hubs"]}
    assert listed["chat"]["configured"] is True and listed["other"]["configured"] is False
    assert listed["chat"]["counts"] == {"connections": 1, "users": 1, "groups": 1}
    settings = listed["chat"]["settings"]
    assert settings["anonymousConnect"] is True
    assert settings["eventHandlers"] == [
        {
            "urlTemplate": "http://127.0.0.1:9/hook",
            "userEventPattern": "*",
            "systemEvents": ["connected"],
            "groupPresenceEvents": None,
            "timeoutSeconds": 5.0,
        }
    ]

    conns = await portal.get("/portal/api/hubs/chat/connections")
    assert conns["truncated"] is False
    (found,) = conns["connections"]
    assert found["connectionId"] == alice_id and found["userId"] == "alice"
    assert found["protocol"] == "json" and found["groups"] == ["room"]
    assert found["node"] == runner.node.node_id and found["detached"] is False  # type: ignore[union-attr]
    assert (await portal.get("/portal/api/hubs/chat/connections?q=ROO"))["connections"]
    assert not (await portal.get("/portal/api/hubs/chat/connections?q=bob"))["connections"]

    detail = await portal.get(f"/portal/api/hubs/chat/connections/{alice_id}")
    assert detail["permissions"] == [["sendToGroup", "room"]]
    assert detail["stateBytes"] == 0
    assert [r["type"] for r in detail["recent"]][:1] == ["connected"]
    await portal.get("/portal/api/hubs/chat/connections/nobody", status=404)

    path = f"/portal/api/hubs/chat/connections/{alice_id}/send"
    await portal.post(path, {"data": '{"x": 1}', "contentType": "application/json"}, status=204)
    assert await next_data(alice) == {"x": 1}
    await portal.post(path, {"data": "hi"}, status=204)
    assert await next_data(alice) == "hi"
    await portal.post(path, {"data": "{", "contentType": "application/json"}, status=400)
    await portal.post(path, {"data": 5}, status=400)
    await alice.close()
    await bob.close()


async def test_a_client_token_and_a_rest_token_work_against_the_service(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = await portal_for(http, service)
    issued = await portal.post(
        "/portal/api/token", {"hub": "chat", "userId": "carol", "groups": ["g"], "minutes": 5}
    )
    assert issued["url"].startswith(f"ws://127.0.0.1:{service.port}/client/hubs/chat?access_token=")
    ws, cid = await json_client(http, issued["url"])
    rest = await portal.post(
        "/portal/api/rest-token",
        {"method": "POST", "path": "/api/hubs/chat/:send?api-version=2024-12-01"},
    )
    assert rest["url"] == f"{portal.base}/api/hubs/chat/:send?api-version=2024-12-01"
    assert set(rest) == {"token", "url"}  # no method: the token binds the URL only
    async with http.post(
        rest["url"],
        data="from the console",
        headers={"Authorization": f"Bearer {rest['token']}", "Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 202
    assert await next_data(ws) == "from the console"
    # As documented: good for every method on that URL (aud is the URL, as on Azure).
    group = "/api/hubs/chat/users/carol/groups/g2?api-version=2024-12-01"
    put = await portal.post("/portal/api/rest-token", {"method": "PUT", "path": group})
    bearer = {"Authorization": f"Bearer {put['token']}"}
    async with http.delete(put["url"], headers=bearer) as resp:
        assert resp.status == 204
    for bad in (
        {"path": "/portal/api/session"},
        {"path": "/api/hubs/x\r\n"},
        {"method": "X"},
        {"path": "/api/hubs/../../portal/api/session"},
        {"path": "/api/hubs/%2E%2e/x?api-version=1"},
    ):
        await portal.post("/portal/api/rest-token", {"path": "/api/hubs/a", **bad}, status=400)
    await portal.post("/portal/api/token", {"hub": "chat", "minutes": 0}, status=400)
    await portal.post("/portal/api/token", {"hub": "bad hub!"}, status=400)
    await ws.close()
    assert cid


async def test_the_portals_tokens_name_the_callers_origin_not_the_public_endpoint(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """The page's CSP is ``connect-src 'self'``: the URLs the portal hands its own page
    (test client, REST console) are the caller's origin even with a public endpoint
    configured elsewhere, and the service accepts their tokens there."""
    service = await start_service(public_endpoint="http://pubsub.example.test")
    portal = await portal_for(http, service)
    issued = await portal.post("/portal/api/token", {"hub": "chat", "userId": "dave"})
    assert issued["url"].startswith(f"ws://127.0.0.1:{service.port}/client/hubs/chat?")
    ws, _ = await json_client(http, issued["url"])
    rest = await portal.post(
        "/portal/api/rest-token",
        {"method": "POST", "path": "/api/hubs/chat/users/dave/:send?api-version=2024-12-01"},
    )
    assert rest["url"].startswith(f"{portal.base}/api/hubs/chat/")
    bearer = {"Authorization": f"Bearer {rest['token']}", "Content-Type": "text/plain"}
    async with http.post(rest["url"], data="to dave", headers=bearer) as resp:
        assert resp.status == 202, await resp.text()
    assert await next_data(ws) == "to dave"
    await ws.close()


# -- the trace with a real flow --------------------------------------------------------


def _valid_signature(req: Recorded, keys: tuple[str, ...] = (ACCESS_KEY,)) -> bool:
    cid = req.headers.get("ce-connectionId", "")
    given = set(req.headers.get("ce-signature", "").split(","))
    expected = {
        "sha256=" + hmac.new(k.encode(), cid.encode(), hashlib.sha256).hexdigest() for k in keys
    }
    return bool(given & expected)


def echoing(req: Recorded) -> web.StreamResponse:
    """The handler: checks every signature; answers a message event with what it got."""
    if req.method == "POST":
        assert _valid_signature(req), "ce-signature does not verify"
    if req.event_name == "message":
        return web.Response(body=b"echo:" + req.body, content_type="text/plain")
    if req.event_name == "connected":
        return web.Response(status=200, text="welcome")
    return default_responder(req)


async def test_the_trace_shows_a_real_flow_and_a_replay_reaches_the_handler_again(
    start_service: StartService, http: aiohttp.ClientSession, handler: EventHandlerApp
) -> None:
    handler.responder = echoing
    runner = await start_service(
        chat_hub(handler.url + "?code=hook-secret", system=frozenset({"connected"}))
    )
    portal = await portal_for(http, runner)
    ws = await http.ws_connect(await _client_url(runner, user_id="alice"))  # a simple client
    connected = await handler.next_event("sys.connected")
    await ws.send_str("hello handler")
    message = await handler.next_event("user.message")
    assert (await ws.receive(timeout=WAIT)).data == "echo:hello handler"  # the reply
    async with sdk(runner) as service:
        await service.send_to_all("to everyone", content_type="text/plain")
    assert (await ws.receive(timeout=WAIT)).data == "to everyone"
    role = "webpubsub.sendToGroup.room"
    url = await _client_url(runner, user_id="bob", groups=["room"], roles=[role])
    bob, bob_id = await json_client(http, url)  # a JSON client, in a group
    await bob.send_json({"type": "sendToGroup", "group": "room", "dataType": "text", "data": "hi"})
    assert await next_data(bob) == "hi"

    records = await _trace_until(portal, lambda rs: "sendToGroup" in _kinds(rs))
    types = _types(records)
    assert {"connected", "message-in", "message-out", "rest", "cloudevent"} <= types
    alice_id = connected.headers["ce-connectionId"]
    events = {
        r["eventType"]: r
        for r in records
        if r["type"] == "cloudevent" and r["connectionId"] == alice_id
    }
    ce_connected = events["azure.webpubsub.sys.connected"]
    assert ce_connected["request"]["body"] == connected.body.decode()
    assert ce_connected["response"]["status"] == 200
    assert ce_connected["response"]["body"] == "welcome"
    assert ce_connected["url"] == handler.url  # no query
    incoming = next(r for r in records if r["type"] == "message-in")
    assert incoming["preview"] == "hello handler" and incoming["kind"] == "message"
    rest = next(r for r in records if r["type"] == "rest")
    assert rest["operation"] == "SendToAll" and rest["status"] == 202
    reply = next(r for r in records if r["type"] == "message-out" and r.get("reply"))
    assert reply["preview"] == "echo:hello handler"
    broadcast = next(r for r in records if r["type"] == "message-out" and not r.get("reply"))
    assert broadcast["recipients"] == 1 and broadcast["target"]["scope"] == "all"
    to_room = next(r for r in records if r["type"] == "message-in" and r["kind"] == "sendToGroup")
    assert to_room["connectionId"] == bob_id and to_room["userId"] == "bob"
    fan_out = next(r for r in records if r.get("target") == {"scope": "group", "id": "room"})
    assert fan_out["recipients"] == 1 and fan_out["fromUserId"] == "bob"

    # Secrets never whole in any answer.
    raw = await _raw(portal, "/portal/api/trace")
    signature = connected.headers["ce-signature"]
    assert signature not in raw and signature[7:20] not in raw and "hook-secret" not in raw

    # Replay the message event, edited; the URL in the body is ignored.
    ce_message = events["azure.webpubsub.user.message"]
    one = await portal.get(f"/portal/api/trace/{ce_message['node']}/{ce_message['seq']}")
    assert one == ce_message
    answer = await portal.post(
        "/portal/api/replay",
        {
            "node": ce_message["node"],
            "seq": ce_message["seq"],
            "headers": [*ce_message["request"]["headers"], ["Authorization", "Bearer s3cr3t-x"]],
            "body": "edited body",
            "url": "http://127.0.0.1:1/elsewhere",
        },
    )
    again = await handler.next_event("user.message")
    assert again.body == b"edited body" and _valid_signature(again)
    assert again.headers["Authorization"] == "Bearer s3cr3t-x"
    for answer_text in (json.dumps(answer), await _raw(portal, "/portal/api/trace")):
        assert "s3cr3t-x" not in answer_text and again.headers["ce-signature"] not in answer_text
    assert again.query == "code=hook-secret"  # the original URL, query included
    assert again.headers["ce-id"] == message.headers["ce-id"]
    assert answer["original"]["seq"] == ce_message["seq"]
    replayed = answer["replay"]
    assert replayed["replay"] is True and replayed["response"]["body"] == "echo:edited body"
    assert replayed["outcome"] == "success"
    seqs = [r["seq"] for r in (await portal.get("/portal/api/trace"))["records"]]
    assert replayed["seq"] in seqs

    # Only CloudEvents replay; a record that is gone is 404.
    await portal.post(
        "/portal/api/replay", {"node": runner.node.node_id, "seq": rest["seq"]}, status=400
    )  # type: ignore[union-attr]
    await portal.post("/portal/api/replay", {"node": "nobody", "seq": 1}, status=404)
    await portal.post("/portal/api/replay", {"node": rest["node"], "seq": 10**9}, status=404)
    await ws.close()
    await bob.close()


def _kinds(records: list[dict[str, Any]]) -> set[str]:
    return {r.get("kind", "") for r in records}


def _types(records: list[dict[str, Any]]) -> set[str]:
    return {r["type"] for r in records}


async def _trace_until(
    portal: PortalClient, done: Any = bool, path: str = "/portal/api/trace"
) -> list[dict[str, Any]]:
    """The trace once ``done(records)`` holds: fetched again each time a traced node (one
    of ``portal.rings``) has a record newer than those of the last fetch."""
    async with asyncio.timeout(WAIT):
        while True:
            marks = [(ring, ring.last_seq) for ring in portal.rings]
            records: list[dict[str, Any]] = (await portal.get(path))["records"]
            if done(records):
                return records
            waits = [asyncio.ensure_future(ring.wait(seq, WAIT)) for ring, seq in marks]
            _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for waiting in pending:
                waiting.cancel()


async def _raw(portal: PortalClient, path: str) -> str:
    async with portal.http.get(portal.base + path, headers=portal.headers()) as resp:
        return await resp.text()


async def test_the_trace_cursor_pages_through_the_ring(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = await portal_for(http, service)
    for _ in range(3):
        await portal.get("/portal/api/hubs")  # no REST call: the portal's own API is not traced
    ws, _ = await json_client(http, await _client_url(service))
    first = await portal.get("/portal/api/trace")
    node = service.node.node_id  # type: ignore[union-attr]
    assert first["cursor"][node] == first["records"][-1]["seq"]
    after = quote(json.dumps(first["cursor"]))
    await ws.send_json({"type": "event", "event": "x", "dataType": "text", "data": "y"})
    page = await _trace_until(portal, path=f"/portal/api/trace?after={after}")
    assert all(r["seq"] > first["cursor"][node] for r in page)
    for bad in ("[1]", "{", '{"a": -1}', '{"a": "1"}', '{"a": true}', "x" * 9000):
        await portal.get(f"/portal/api/trace?after={quote(bad)}", status=400)
    await ws.close()


async def test_the_stream_sends_the_kept_records_then_each_new_one(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = await portal_for(http, service)
    ws, _ = await json_client(http, await _client_url(service, user_id="first"))
    async with http.get(
        f"{portal.base}/portal/api/trace/stream", headers=portal.headers()
    ) as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        kept = await _next_record(stream)
        assert kept["type"] == "connected" and kept["userId"] == "first"
        other, _ = await json_client(http, await _client_url(service, user_id="second"))
        async with asyncio.timeout(WAIT):
            while (record := await _next_record(stream))["userId"] != "second":
                pass
        assert record["type"] == "connected"
    await ws.close()
    await other.close()


async def _next_record(stream: aiohttp.ClientResponse) -> dict[str, Any]:
    """The next ``event: record`` of an SSE stream (comments and other events skipped)."""
    event = ""
    async with asyncio.timeout(WAIT):
        while True:
            line = (await stream.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "record":
                data: dict[str, Any] = json.loads(line[6:])
                return data


async def test_the_ring_is_bounded(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await with_portal(start_service, PortalSettings(trace_buffer=20))
    portal = await portal_for(http, runner)
    ws, _ = await json_client(http, await _client_url(runner))
    for i in range(30):
        await ws.send_json({"type": "event", "event": "e", "dataType": "text", "data": str(i)})
    trace = runner.trace
    assert trace is not None
    async with asyncio.timeout(WAIT):
        while trace.last_seq < 31:  # connected + 30 frames
            await trace.wait(trace.last_seq, WAIT)
    records = (await portal.get("/portal/api/trace"))["records"]
    assert len(records) == 20 and records[-1]["seq"] == 31 and records[0]["seq"] == 12
    await ws.close()


# -- two nodes -------------------------------------------------------------------------


@pytest.mark.parametrize("plane", ["memory", "redis"])
async def test_two_nodes_list_each_others_connections_and_trace(
    start_service: StartService,
    http: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
    plane: str,
) -> None:
    if plane == "memory":
        bus = MemoryBus()
        first = await start_service(chat_hub(), backplane=MemoryBackplane(bus, wire=True))
        second = await start_service(chat_hub(), backplane=MemoryBackplane(bus, wire=True))
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        prefix: str = request.getfixturevalue("redis_prefix")
        first = await start_service(
            chat_hub(), backplane=RedisBackplane(redis.url, prefix=prefix, node_id="one")
        )
        second = await start_service(
            chat_hub(), backplane=RedisBackplane(redis.url, prefix=prefix, node_id="two")
        )
    a, b = first.node.node_id, second.node.node_id  # type: ignore[union-attr]
    portal = await portal_for(http, first)
    portal.rings.append(second.trace)  # type: ignore[arg-type]
    here, here_id = await json_client(http, await _client_url(first, user_id="here"))
    there, there_id = await json_client(http, await _client_url(second, user_id="there"))

    assert sorted((await portal.get("/portal/api/session"))["nodes"]) == sorted([a, b])
    listed = (await portal.get("/portal/api/hubs/chat/connections"))["connections"]
    assert {(c["connectionId"], c["node"]) for c in listed} == {(here_id, a), (there_id, b)}
    counts = {h["name"]: h["counts"] for h in (await portal.get("/portal/api/hubs"))["hubs"]}
    assert counts["chat"]["connections"] == 2
    detail = await portal.get(f"/portal/api/hubs/chat/connections/{there_id}")
    assert detail["node"] == b and detail["recent"][0]["type"] == "connected"

    both = {(a, "connected"), (b, "connected")}
    records = await _trace_until(portal, lambda rs: {(r["node"], r["type"]) for r in rs} >= both)
    remote = next(r for r in records if r["node"] == b and r["type"] == "connected")
    assert await portal.get(f"/portal/api/trace/{b}/{remote['seq']}") == remote

    # The stream shows the other node's new records too.
    async with http.get(
        f"{portal.base}/portal/api/trace/stream", headers=portal.headers()
    ) as stream:
        await there.send_json({"type": "event", "event": "e", "dataType": "text", "data": "x"})
        async with asyncio.timeout(WAIT):
            while not (
                (r := await _next_record(stream))["node"] == b and r["type"] == "message-in"
            ):
                pass
    # A REST close through the portal reaches the other node's client.
    await portal.post(f"/portal/api/hubs/chat/connections/{there_id}/close", {}, status=204)
    async with asyncio.timeout(WAIT):
        while (await there.receive()).type is not aiohttp.WSMsgType.CLOSE:
            pass
    await here.close()


async def test_with_redis_down_the_portal_answers_this_nodes_data_marked_partial(
    start_service: StartService,
    http: aiohttp.ClientSession,
    tmp_path: Any,
    redis_prefix: str,
) -> None:
    """The backplane cannot survey while Redis is down: the portal then answers from
    this node alone (``partial``), not 503, exactly when an operator needs it."""
    redis = RedisServer(tmp_path).start()
    try:
        plane = RedisBackplane(redis.url, prefix=redis_prefix, node_id="one")
        runner = await start_service(chat_hub(), backplane=plane)
        portal = await portal_for(http, runner)
        ws, cid = await json_client(http, await _client_url(runner, user_id="here"))
        assert "partial" not in await portal.get("/portal/api/session")
        redis.stop()
        async with asyncio.timeout(WAIT):
            await plane.surveys_linked(up=False)
        session = await portal.get("/portal/api/session")
        assert session["partial"] is True and session["nodes"] == ["one"]
        hubs = await portal.get("/portal/api/hubs")
        assert hubs["partial"] is True
        assert {h["name"]: h["counts"]["connections"] for h in hubs["hubs"]}["chat"] == 1
        listed = await portal.get("/portal/api/hubs/chat/connections")
        assert listed["partial"] is True
        assert [c["connectionId"] for c in listed["connections"]] == [cid]
        detail = await portal.get(f"/portal/api/hubs/chat/connections/{cid}")
        assert detail["userId"] == "here"
        traced = await portal.get("/portal/api/trace")
        assert traced["partial"] is True
        assert any(r["type"] == "connected" for r in traced["records"])
        await ws.close()
    finally:
        redis.stop()


# -- parsers ---------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_any_session_value_is_refused_or_accepted_without_raising(value: str) -> None:
    assert portal_auth.session_key(value, (ACCESS_KEY,), time.time()) is None


@given(st.integers(min_value=-(10**13), max_value=10**13), st.text(max_size=30))
def test_a_forged_session_never_verifies(expiry: int, nonce: str) -> None:
    forged = f"{expiry}.{nonce}.{'A' * 43}"
    assert portal_auth.session_key(forged, (ACCESS_KEY,), 0) is None


def test_a_session_verifies_until_it_expires() -> None:
    session = portal_auth.new_session(ACCESS_KEY, 1000.0, seconds=10)
    assert portal_auth.session_key(session, (SECOND_KEY, ACCESS_KEY), 1009.0) == ACCESS_KEY
    assert portal_auth.session_key(session, (ACCESS_KEY,), 1010.0) is None
    assert portal_auth.session_key(session, (SECOND_KEY,), 1000.0) is None


@given(st.one_of(st.text(max_size=200), st.from_regex(r"\{.*\}", fullmatch=True)))
def test_any_after_cursor_parses_or_raises_only_invalid_parameter(raw: str) -> None:
    try:
        cursor = parse_after(raw)
    except InvalidParameter:
        return
    assert all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in cursor.items())


@given(st.dictionaries(st.text(max_size=10), st.integers(min_value=0, max_value=2**53)))
def test_a_valid_after_cursor_round_trips(cursor: dict[str, int]) -> None:
    assert parse_after(json.dumps(cursor)) == cursor


def test_origins_compare_with_default_ports() -> None:
    assert portal_auth.normal_origin("http://LOCALHOST") == ("http", "localhost", 80)
    assert portal_auth.normal_origin("https://h") == portal_auth.normal_origin("https://h:443")
    assert portal_auth.normal_origin("ws://h") is None
    assert portal_auth.normal_origin("null") is None
    assert portal_auth.normal_origin("http://[::1") is None
    assert re.fullmatch(r"[A-Za-z0-9_-]+", portal_auth.csrf_token(ACCESS_KEY, "s"))


def test_a_stream_that_fell_behind_the_ring_gets_a_gap_then_the_oldest_kept() -> None:
    ring = TraceRing(3, "n")
    cursor: dict[str, int] = {}
    chunk: list[bytes] = []
    c = Connection("c", "chat", None, ClientProtocol.SIMPLE, None, None, Permissions())
    ring.recovered(c)
    assert local_records(ring, cursor, "n", chunk, 1 << 20) == len(chunk[0])
    assert cursor == {"n": 1} and [_seq_of(e) for e in chunk] == [1]
    for _ in range(6):
        ring.recovered(c)  # seq 2..7, the ring keeps 5..7
    chunk.clear()
    local_records(ring, cursor, "n", chunk, 1 << 20)
    assert chunk[0] == b'event: gap\ndata: {"node":"n","missed":3}\n\n'
    assert [_seq_of(e) for e in chunk[1:]] == [5, 6, 7] and cursor == {"n": 7}


def _seq_of(event: bytes) -> int:
    assert event.startswith(b"event: record\ndata: ")
    seq: int = json.loads(event.split(b"data: ", 1)[1])["seq"]
    return seq


def test_a_stream_write_and_a_trace_page_are_bounded_in_serialized_bytes() -> None:
    ring = TraceRing(1000, "n", max_bytes=1 << 30)
    big = "\x01" * 20000  # JSON escapes each as six bytes
    c = Connection("c", "chat", None, ClientProtocol.SIMPLE, None, None, Permissions())
    for _ in range(400):
        ring.received(c, big, "message")
        ring.detached(c, big)
    cursor: dict[str, int] = {}
    chunks: list[list[bytes]] = []
    while cursor.get("n", 0) < ring.last_seq:
        chunk: list[bytes] = []
        assert local_records(ring, cursor, "n", chunk, WRITE_MAX_BYTES) <= WRITE_MAX_BYTES
        assert sum(map(len, chunk)) <= WRITE_MAX_BYTES
        chunks.append(chunk)
    assert [_seq_of(e) for chunk in chunks for e in chunk] == list(range(1, 801))
    view = NodeView(_bare_node(), ring)
    page = view.trace_page(None, 500)
    assert len(page) <= MAX_ANSWER_BYTES
    records = json.loads(page)["records"]
    assert 1 < len(records) < 500 and records[0]["seq"] == 1


async def test_an_open_stream_does_not_hold_up_the_service_stopping(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = await portal_for(http, service)
    async with http.get(
        f"{portal.base}/portal/api/trace/stream", headers=portal.headers()
    ) as stream:
        assert stream.status == 200
        started = time.monotonic()
        async with asyncio.timeout(WAIT):
            await service.stop()
        assert time.monotonic() - started < 2.0  # not the 5 s grace of a stuck handler


async def test_a_replay_of_an_unedited_cut_or_binary_body_sends_the_original_bytes(
    start_service: StartService, http: aiohttp.ClientSession, handler: EventHandlerApp
) -> None:
    runner = await start_service(chat_hub(handler.url))
    portal = await portal_for(http, runner)
    ws = await http.ws_connect(await _client_url(runner))

    def traced(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            r
            for r in records
            if r["type"] == "cloudevent"
            and r["eventType"] == "azure.webpubsub.user.message"
            and not r["replay"]
        ]

    for i, data in enumerate(("x" * 20_000, b"\xff\x00binary")):
        await (ws.send_str(data) if isinstance(data, str) else ws.send_bytes(data))
        sent = (await handler.next_event("user.message")).body
        records = await _trace_until(portal, lambda rs: len(traced(rs)) > i)  # noqa: B023
        original = traced(records)[i]
        shown = original["request"]
        assert shown["truncated"] or shown.get("bodyEncoding") == "base64"
        await portal.post(
            "/portal/api/replay",
            {"node": original["node"], "seq": original["seq"], "body": shown["body"],
             "headers": shown["headers"]},
        )  # fmt: skip
        assert (await handler.next_event("user.message")).body == sent
    await ws.close()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_any_replay_headers_are_taken_or_refused_with_only_invalid_parameter(value: object) -> None:
    try:
        headers = replay_headers(value, (("ce-signature", "sha256=abcdef"),))
    except InvalidParameter:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in headers)


@given(st.text(max_size=30))
def test_any_seq_in_a_record_path_parses_or_raises_only_invalid_parameter(raw: str) -> None:
    with contextlib.suppress(InvalidParameter):
        assert parse_seq(raw) >= 0


@given(st.binary(max_size=200) | JSON_VALUES.map(lambda v: json.dumps(v).encode()))
async def test_a_node_answers_any_survey_request_without_raising(request_bytes: bytes) -> None:
    view = NodeView(_bare_node(), TraceRing(5, "n"))
    answer = await view.answer(request_bytes)
    json.loads(answer)  # always JSON (null for a request it does not know)


def _bare_node() -> Node:
    async def publish(command: object) -> None: ...

    return Node(hub_settings=HubSettings, upstream=None, origin="o", publish=publish)  # type: ignore[arg-type]


async def test_a_replay_to_a_handler_that_is_down_answers_the_failed_exchange(
    start_service: StartService, http: aiohttp.ClientSession, handler: EventHandlerApp
) -> None:
    runner = await start_service(chat_hub(handler.url))
    portal = await portal_for(http, runner)
    ws = await http.ws_connect(await _client_url(runner))
    await ws.send_str("once")
    await handler.next_event("user.message")
    records = await _trace_until(
        portal, lambda rs: any(r.get("eventType") == "azure.webpubsub.user.message" for r in rs)
    )
    traced = next(r for r in records if r.get("eventType") == "azure.webpubsub.user.message")
    await handler.stop()
    answer = await portal.post("/portal/api/replay", {"node": traced["node"], "seq": traced["seq"]})
    replayed = answer["replay"]
    assert replayed["replay"] is True and replayed["response"] is None
    assert replayed["outcome"] == "error" and "cannot connect" in replayed["error"]
    await ws.close()


# -- the trace streams' one poller --------------------------------------------------


async def test_open_streams_share_one_poll_so_a_slow_node_does_not_lock_the_portal_out(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    bus = MemoryBus()
    first = await start_service(chat_hub(), backplane=MemoryBackplane(bus, wire=True))
    second = await start_service(chat_hub(), backplane=MemoryBackplane(bus, wire=True))
    answer = NodeView(second.node, second.trace).answer  # type: ignore[arg-type]
    release = asyncio.Event()
    asked = asyncio.Event()
    waiting: list[int] = [0, 0]  # now, most at once

    async def slow(request: bytes) -> bytes:  # an overloaded node: trace polls hang
        if b'"trace"' in request:
            waiting[0] += 1
            waiting[1] = max(waiting)
            asked.set()
            await release.wait()
            waiting[0] -= 1
        return await answer(request)

    second.backplane.answer_surveys(slow)
    portal = await portal_for(http, first)
    url = f"{portal.base}/portal/api/trace/stream"
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(4):  # the most one session may open
            stream = await streams.enter_async_context(http.get(url, headers=portal.headers()))
            assert stream.status == 200
        async with http.get(url, headers=portal.headers()) as fifth:
            assert fifth.status == 503  # a session's 5th stream
        for _ in range(3):  # 16 in all (the most one node serves)
            other = await portal_for(http, first)
            for _ in range(4):
                stream = await streams.enter_async_context(http.get(url, headers=other.headers()))
                assert stream.status == 200
        async with asyncio.timeout(WAIT):
            await asked.wait()
        # Every other portal request still gets its survey (not 503: 16 in flight).
        assert (await portal.get("/portal/api/session"))["node"] == first.node.node_id  # type: ignore[union-attr]
        assert waiting[1] == 1  # one poll of the other node for all 16 streams
        release.set()


def test_a_feed_takes_what_its_stream_has_not_had_and_skips_ahead_when_full() -> None:
    feed = Feed()
    feed.offer("b", [(1, b"r1"), (2, b"r2")], 1, 2)
    assert feed.take(1 << 20) == [b"r1", b"r2"] and feed.cursor == {"b": 2}
    feed.offer("b", [(1, b"r1"), (2, b"r2"), (3, b"r3")], 1, 3)  # another stream's page
    assert feed.take(1 << 20) == [b"r3"]
    feed.offer("b", [(9, b"r9")], 9, 9)  # 4..8 left the node's ring
    assert feed.take(1 << 20) == [b'event: gap\ndata: {"node":"b","missed":5}\n\n', b"r9"]
    big = b"x" * (FEED_MAX_BYTES // 2 + 1)
    feed.offer("b", [(10, big), (11, big), (12, big)], 9, 12)  # room for one
    gap = b'event: gap\ndata: {"node":"b","missed":2}\n\n'
    assert feed.take(1 << 20) == [big, gap] and feed.cursor == {"b": 12}
    feed.offer("b", [(1, b"again")], 1, 1)  # the node restarted
    assert feed.take(1 << 20) == [b"again"]


async def test_a_stalled_reader_s_stream_ends_after_the_write_timeout(
    service: ServiceRunner, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(portal_trace, "WRITE_TIMEOUT", 0.2, raising=False)
    portal = await portal_for(http, service)
    c = Connection("c", "chat", None, ClientProtocol.SIMPLE, None, None, Permissions())
    for _ in range(100):  # ~12 MiB of records to send
        service.trace.detached(c, "\x01" * 20000)  # type: ignore[union-attr]
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", service.port))
        cookie = f"{portal_auth.COOKIE}={portal.session}"
        request = f"GET /portal/api/trace/stream HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        # The stimulus, not a synchronisation: the reader stalls for 5 times the write
        # timeout, then reads what the server sent before it gave up.
        await asyncio.sleep(1.0)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(WAIT):  # the server gave up on it: the stream ends
                while data := await loop.sock_recv(sock, 1 << 16):
                    received += len(data)
        assert received < 12 * 1024 * 1024


# -- fetch metadata, headers ----------------------------------------------------------


async def test_a_same_site_page_cannot_read_or_open_streams_with_the_cookie(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    # Another port of the same host (the demo's chat app) is the same site: its pages
    # send the SameSite=Strict cookie, but their requests carry other fetch metadata.
    portal = await portal_for(http, service)
    refused = [
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"},
        {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"},
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "no-cors"},  # an <img> of our own
    ]
    for path in ("/portal/api/trace/stream", "/portal/api/hubs", "/portal/api/nothing"):
        for headers in refused:
            async with http.get(portal.base + path, headers={**portal.headers(), **headers}) as r:
                assert r.status == 403, (path, headers)
                assert (await r.json())["code"] == "Error.Forbidden"
    async with http.post(
        portal.base + "/portal/api/login", json={"key": ACCESS_KEY}, headers=refused[0]
    ) as resp:
        assert resp.status == 403
    assert service._runner.app[PORTAL].streams == 0  # type: ignore[union-attr]
    # The portal's own page (same-origin fetch / EventSource) and scripts (none) pass.
    for headers in (
        {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"},
        {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},
        {},
    ):
        async with http.get(
            portal.base + "/portal/api/hubs", headers={**portal.headers(), **headers}
        ) as resp:
            assert resp.status == 200, headers


async def test_every_portal_answer_has_the_security_headers_and_no_echoed_path(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = await portal_for(http, service)
    cookie = portal.headers()
    cases = [
        ("/portal/api/<b>x</b>", {}, 401),
        ("/portal/api/<b>x</b>", cookie, 404),
        ("/portal/api/hubs", {**cookie, "Sec-Fetch-Site": "cross-site"}, 403),
        ("/portal/static/<b>x</b>", {}, 404),
        ("/portal/api/hubs", cookie, 200),
        ("/portal", {}, 200),
    ]
    for path, headers, status in cases:
        async with http.get(portal.base + path, headers=headers) as resp:
            assert resp.status == status, path
            assert resp.headers["Cache-Control"] == "no-store" or path == "/portal"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["X-Frame-Options"] == "DENY"
            assert "<b>" not in await resp.text()


async def test_the_security_headers_are_on_the_portals_answers_only(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    """By the decoded path, as the router reads it: a spelling of /portal has them, an
    answer elsewhere (the REST API, a WebSocket path, a 404) has none."""
    cases = [
        ("/%70ortal", 200, True),
        ("/portal%2Fnothing", 404, True),
        ("/portal/nothing", 404, True),
        ("/api/health", 200, False),
        ("/api/hubs/chat/users/u/:send", 405, False),  # a GET
        ("/client/hubs/chat", 400, False),  # no WebSocket upgrade
        ("/portalx", 404, False),
    ]
    for path, status, headers in cases:
        async with http.get(yarl.URL(service.endpoint + path, encoded=True)) as resp:
            assert resp.status == status, path
            assert ("X-Frame-Options" in resp.headers) is headers, path
            assert ("X-Content-Type-Options" in resp.headers) is headers, path


async def test_a_stream_ends_when_its_session_expires(
    service: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    portal = PortalClient(http, service)
    portal.session = portal_auth.new_session(
        ACCESS_KEY, time.time() - portal_auth.SESSION_SECONDS + 1
    )
    assert portal_auth.SESSION_SECONDS <= 8 * 3600
    async with http.get(
        f"{portal.base}/portal/api/trace/stream", headers=portal.headers()
    ) as stream:
        assert stream.status == 200
        async with asyncio.timeout(WAIT):
            await stream.content.read()  # the server ends it: EOF
    await portal.get("/portal/api/hubs", status=401)


async def test_a_record_lookup_names_its_node_and_a_large_original_comes_in_parts(
    start_service: StartService, http: aiohttp.ClientSession, handler: EventHandlerApp
) -> None:
    bus = MemoryBus()
    first = await start_service(chat_hub(handler.url), backplane=MemoryBackplane(bus, wire=True))
    second = await start_service(chat_hub(handler.url), backplane=MemoryBackplane(bus, wire=True))
    b = second.node.node_id  # type: ignore[union-attr]
    view = NodeView(second.node, second.trace)  # type: ignore[arg-type]
    asked: list[tuple[bytes, int]] = []

    async def answer(request: bytes) -> bytes:
        found = await view.answer(request)
        asked.append((request, len(found)))
        return found

    second.backplane.answer_surveys(answer)
    portal = await portal_for(http, first)
    portal.rings.append(second.trace)  # type: ignore[arg-type]
    ws = await http.ws_connect(await _client_url(second))
    sent = "\x01" * 600_000  # a body larger than any one survey answer may be
    await ws.send_str(sent)
    assert (await handler.next_event("user.message")).body == sent.encode()

    def message(r: dict[str, Any]) -> bool:
        return r["node"] == b and r.get("eventType") == "azure.webpubsub.user.message"

    records = await _trace_until(portal, lambda rs: any(message(r) for r in rs))
    traced = next(r for r in records if message(r))
    # Another node's record is asked of that node only: the others answer null at once.
    own = view.node_id
    lookup = {"op": "record", "node": "someone-else", "seq": traced["seq"]}
    assert await view.answer(json.dumps(lookup).encode()) == b"null"
    lookup["node"] = own
    assert json.loads(await view.answer(json.dumps(lookup).encode()))["seq"] == traced["seq"]
    assert await portal.get(f"/portal/api/trace/{b}/{traced['seq']}") == traced
    await portal.post("/portal/api/replay", {"node": b, "seq": traced["seq"]})
    assert (await handler.next_event("user.message")).body == sent.encode()
    originals = [size for request, size in asked if b'"original"' in request]
    assert len(originals) >= 4  # 600 KB in parts
    assert max(size for _, size in asked) < 512 * 1024  # every answer well under 1 MiB
    await ws.close()


async def test_a_replay_answers_its_own_record_whatever_is_traced_meanwhile(
    start_service: StartService, http: aiohttp.ClientSession, handler: EventHandlerApp
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST" and req.body.startswith(b"slow"):
            arrived.set()
            await release.wait()
        if req.method != "POST":
            return default_responder(req)
        return web.Response(status=200, text="echo:" + req.body.decode()[:10])

    handler.responder = responder
    hub = chat_hub(handler.url, system=frozenset({"connected"}))
    config = dataclasses.replace(make_config(hub), portal=PortalSettings(trace_buffer=20_000))
    runner = await start_service(config=config)
    portal = await portal_for(http, runner)
    ws, _ = await json_client(http, await _client_url(runner, user_id="a"))
    records = await _trace_until(
        portal, lambda rs: any(r.get("eventType") == "azure.webpubsub.sys.connected" for r in rs)
    )
    traced = next(r for r in records if r.get("eventType") == "azure.webpubsub.sys.connected")

    async def replay(body: str) -> Any:
        asked = {"node": traced["node"], "seq": traced["seq"], "body": body}
        return await portal.post("/portal/api/replay", asked)

    slow = asyncio.create_task(replay("slow-A"))
    async with asyncio.timeout(WAIT):
        await arrived.wait()
    fast = await replay("fast-B")  # another replay to the same URL, while A waits
    c = Connection("c", "chat", None, ClientProtocol.SIMPLE, None, None, Permissions())
    for _ in range(10_001):  # and a busy trace
        runner.trace.recovered(c)  # type: ignore[union-attr]
    release.set()
    slow_answer = await slow
    assert fast["replay"]["request"]["body"] == "fast-B"
    assert slow_answer["replay"]["request"]["body"] == "slow-A"
    assert slow_answer["replay"]["response"]["body"] == "echo:slow-A"
    await ws.close()


async def test_a_portal_send_past_max_message_bytes_is_413_like_rest(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    portal = await portal_for(http, runner)
    ws, cid = await json_client(http, await _client_url(runner, user_id="a"))
    limit = runner.config.server.max_message_bytes
    send = f"/portal/api/hubs/chat/connections/{cid}/send"
    async with http.post(
        portal.base + send, json={"data": "x" * (limit + 1)}, headers=portal.headers()
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["code"] == "Error.PayloadTooLarge"
    await portal.post(send, {"data": "x" * limit}, status=204)
    assert len(await next_data(ws)) == limit  # the first message to arrive: the one that fits
    await ws.close()


def test_the_hubs_settings_show_a_handlers_group_presence_events() -> None:
    from webpubsub.core.settings import EventHandlerSettings, GroupPresenceEvents, HubSettings
    from webpubsub.server.portal import _settings

    presence = GroupPresenceEvents(frozenset({"left", "joined"}), ("room-*", "lobby"))
    handler = EventHandlerSettings(url_template="http://h.test/", group_presence_events=presence)
    (shown,) = _settings(HubSettings(name="chat", event_handlers=(handler,)))["eventHandlers"]  # type: ignore[misc]
    assert shown["groupPresenceEvents"] == {
        "eventNames": ["joined", "left"],
        "groupFilters": ["room-*", "lobby"],
    }
