"""URLs the REST API hands back (``nextLink``, ``:generateToken``) name the address the
caller used: the public endpoint, else forwarded headers from trusted proxies only,
else the request's own scheme and host."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import orjson
import pytest
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ACCESS_KEY, StartService
from tests.support.proxy import TcpProxy
from webpubsub.devcert import DevCert
from webpubsub.protocol.tokens import issue_rest_token
from webpubsub.server import origin
from webpubsub.server.app import ServiceRunner

FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "front.example:8443"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def members(runner: ServiceRunner, http: aiohttp.ClientSession, n: int) -> list[Any]:
    """``n`` connections in group ``g`` (kept open by the caller)."""
    async with WebPubSubServiceClient.from_connection_string(
        runner.connection_string.replace(runner.endpoint, f"http://127.0.0.1:{runner.port}"),
        hub="chat",
    ) as sdk:
        return [
            await http.ws_connect((await sdk.get_client_access_token(groups=["g"]))["url"])
            for _ in range(n)
        ]


async def call(
    runner: ServiceRunner,
    http: aiohttp.ClientSession,
    method: str,
    target: str,
    *,
    audience_base: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """A REST call to the service's socket, signed for ``audience_base`` + ``target``."""
    base = audience_base or f"http://127.0.0.1:{runner.port}"
    token = issue_rest_token(ACCESS_KEY, audience=base + target, now=time.time())
    async with http.request(
        method,
        f"http://127.0.0.1:{runner.port}{target}",
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    ) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else None


LIST = "/api/hubs/chat/groups/g/connections?maxpagesize=1"
TOKEN = "/api/hubs/chat/:generateToken?userId=u"


def client_audience(token_body: Any) -> str:
    claims = jwt.decode(
        token_body["token"], ACCESS_KEY, algorithms=["HS256"], options={"verify_aud": False}
    )
    return str(claims["aud"])


async def test_links_and_tokens_use_the_public_endpoint(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(public_endpoint="https://pubsub.example.com")
    sockets = await members(runner, http, 2)
    # Signed for the public URL, as an SDK with the public connection string signs.
    public = "https://pubsub.example.com"
    status, page = await call(runner, http, "GET", LIST, audience_base=public)
    assert status == 200
    assert page["nextLink"].startswith(f"{public}/api/hubs/chat/groups/g/connections?")
    status, body = await call(runner, http, "POST", TOKEN, audience_base=public)
    assert status == 200
    assert client_audience(body) == f"{public}/client/hubs/chat"
    for ws in sockets:
        await ws.close()


async def test_forwarded_headers_count_only_from_trusted_proxies(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    untrusted = await start_service()
    trusted = await start_service(trusted_proxies=("127.0.0.0/8",))
    front = "https://front.example:8443"
    for runner in (untrusted, trusted):
        sockets = await members(runner, http, 2)
        own = f"http://127.0.0.1:{runner.port}"
        expected = front if runner is trusted else own
        status, page = await call(
            runner, http, "GET", LIST, headers=FORWARDED, audience_base=expected
        )
        assert status == 200
        assert urlsplit(page["nextLink"])._replace(path="", query="").geturl() == expected
        status, body = await call(
            runner, http, "POST", TOKEN, headers=FORWARDED, audience_base=expected
        )
        assert client_audience(body) == f"{expected}/client/hubs/chat"
        # A token for the forwarded origin is the caller's own only behind a trusted proxy.
        status, _ = await call(runner, http, "GET", LIST, headers=FORWARDED, audience_base=front)
        assert status == (200 if runner is trusted else 401)
        for ws in sockets:
            await ws.close()


async def test_malformed_forwarded_values_are_ignored(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(trusted_proxies=("*",))
    sockets = await members(runner, http, 2)
    own = f"http://127.0.0.1:{runner.port}"
    bad = {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "evil.example/path@x"}
    _, page = await call(runner, http, "GET", LIST, headers=bad)
    assert page["nextLink"].startswith(f"{own}/api/")
    # Several proxies: the nearest one's value (the last) counts.
    chain = {
        "X-Forwarded-Proto": "http, https",
        "X-Forwarded-Host": "spoofed.example, front.example",
    }
    _, page = await call(
        runner, http, "GET", LIST, headers=chain, audience_base="https://front.example"
    )
    assert page["nextLink"].startswith("https://front.example/api/")
    for ws in sockets:
        await ws.close()


@pytest.mark.parametrize("kind", ["sync", "aio"])
async def test_python_sdk_pages_through_a_tls_terminator(
    start_service: StartService, dev_cert: DevCert, http: aiohttp.ClientSession, kind: str
) -> None:
    """The SDK reaches the service only through an https:// offloader: every nextLink it
    follows must be the offloader's https:// URL, or ``requests`` cannot go on."""
    offload = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    offload.load_cert_chain(dev_cert.cert, dev_cert.key)
    async with TcpProxy(0, ssl=offload) as proxy:
        public = f"https://127.0.0.1:{proxy.port}"
        runner = await start_service(public_endpoint=public)
        proxy.retarget(runner.port)
        sockets = await members(runner, http, 3)
        cs = runner.connection_string
        assert cs.startswith(f"Endpoint={public};")
        ca = str(dev_cert.ca_cert)
        if kind == "sync":
            import asyncio

            from azure.messaging.webpubsubservice import WebPubSubServiceClient as Sync

            def listed() -> list[str]:
                with Sync.from_connection_string(cs, hub="chat", connection_verify=ca) as sdk:
                    return [m.connection_id for m in sdk.list_connections(group="g", maxpagesize=1)]

            ids = await asyncio.to_thread(listed)
        else:
            async with WebPubSubServiceClient.from_connection_string(
                cs, hub="chat", connection_verify=ca
            ) as sdk:
                ids = [
                    m.connection_id async for m in sdk.list_connections(group="g", maxpagesize=1)
                ]
        assert len(set(ids)) == 3
        assert proxy.accepted >= 1
        for ws in sockets:
            await ws.close()


async def _raw_post(port: int, target: str, host: str, token: str) -> tuple[int, bytes]:
    """One raw HTTP/1.1 POST with a ``Host`` header of the caller's choosing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    )
    writer.write(head.encode())
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest


async def test_a_host_that_smuggles_a_path_cannot_stretch_a_token_to_another_hub(
    start_service: StartService,
) -> None:
    """A token signed for hub A's URL, used on hub B with a ``Host`` that carries hub A's
    path, query and a ``#`` (so that the joined URL the audience is checked against would
    parse as hub A's): refused, 400, never carried out."""
    runner = await start_service()
    origin = f"127.0.0.1:{runner.port}"
    a_path = "/api/hubs/hubA/:send?api-version=2024-01-01"
    b_path = "/api/hubs/hubB/:send?api-version=2024-01-01"
    token = issue_rest_token(ACCESS_KEY, audience=f"http://{origin}{a_path}", now=time.time())
    assert (await _raw_post(runner.port, a_path, origin, token))[0] == 202
    assert (await _raw_post(runner.port, b_path, origin, token))[0] == 401
    for host in (f"{origin}{a_path}#", f"{origin}{a_path}&x=", f"{origin}/api"):
        status, rest = await _raw_post(runner.port, b_path, host, token)
        assert status == 400, (host, status)
        assert b"is not a host" in rest


_HOSTS = st.text(st.sampled_from("ab9.-_:[]/?#@ \n%é"), max_size=12) | st.sampled_from(
    ["localhost:8080", "[::1]:80", "a" * 300, "a" * 300 + "/x", "h/p", "h?q", "h#f"]
)


@given(st.lists(_HOSTS, max_size=6))
def test_a_host_is_a_host_as_the_pattern_says_asked_again_or_not(hosts: list[str]) -> None:
    """The verdicts kept for the few hosts seen are the pattern's (long ones not kept)."""
    for host in hosts + hosts:
        assert origin._is_host(host) == (origin._HOST.fullmatch(host) is not None), host


def test_only_short_hosts_are_kept() -> None:
    origin._is_short_host.cache_clear()
    for host in ("localhost:8080", "h/p", "a" * 257, "a" * 257, "a" * 5000):
        origin._is_host(host)
    assert origin._is_short_host.cache_info().currsize == 2
