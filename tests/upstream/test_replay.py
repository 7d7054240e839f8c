"""The portal's replay of a CloudEvent (``Upstream.replay``) against a real handler: the
SDK's ``WebPubSubEventHandler`` behind aiohttp on 127.0.0.1, which verifies the
signature. The replay is signed anew, carries the edited body, forwards none of the
hop-by-hop headers it was given, and sends no empty signature when there are no keys."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from multidict import CIMultiDict

from webpubsub.protocol.cloudevents import EventContext, user_event_request
from webpubsub.protocol.payload import Payload
from webpubsub.sdk import UserEventRequest, WebPubSubEventHandler
from webpubsub.sdk.http import Headers, HttpRequest
from webpubsub.upstream.dispatcher import Upstream
from webpubsub.upstream.http import HttpTransport

KEY = "replay-test-key-0123456789abcdef"
HOP_BY_HOP = (
    ("TE", "trailers"),
    ("Upgrade", "websocket"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA=="),
    ("Proxy-Connection", "keep-alive"),
    ("Expect", "100-continue"),
    ("Trailer", "x-checksum"),
    ("Connection", "close"),
    ("Transfer-Encoding", "chunked"),
    ("Content-Length", "999"),
    ("Host", "elsewhere.example"),
)


class Handler:
    """The SDK's handler (echoes a user event's body) behind aiohttp, recording the
    headers each request arrived with."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.seen: list[CIMultiDict[str]] = []
        self.port = 0

        def echo(event: UserEventRequest) -> bytes:
            return b"got: " + event.body

        self.sdk = WebPubSubEventHandler("chat", path="/events", keys=keys, on_event=echo)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(CIMultiDict(request.headers))
        body = await request.read()
        answer = await self.sdk.process(
            HttpRequest(request.method, request.path, Headers(request.headers.items()), body)
        )
        return web.Response(status=answer.status, headers=answer.headers, body=answer.body)

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"


async def serve(handler: Handler) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/events", handler.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    handler.port = runner.addresses[0][1]
    return runner


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    made = HttpTransport()
    yield made
    await made.close()


def original(url: str, keys: list[str]) -> list[tuple[str, str]]:
    ctx = EventContext("chat", "conn-1", "alice", "json.webpubsub.azure.v1", "", "7", "127.0.0.1")
    request = user_event_request(ctx, url, keys, 1714557600.0, "message", Payload.text("first"))
    return list(request.headers)


async def test_a_replay_is_signed_anew_carries_the_edit_and_drops_hop_by_hop_headers(
    transport: HttpTransport,
) -> None:
    handler = Handler((KEY,))
    runner = await serve(handler)
    upstream = Upstream(transport, keys=[KEY], origin="127.0.0.1")
    try:
        headers = [(k, v) for k, v in original(handler.url(), [KEY]) if k != "ce-signature"]
        headers.append(("ce-signature", "sha256=forged"))  # as a user might edit it
        response = await upstream.replay(handler.url(), [*headers, *HOP_BY_HOP], b"edited")
        assert response.status == 200, response.body  # the SDK verified the signature
        assert response.body == b"got: edited"
        (seen,) = handler.seen
        for name, value in HOP_BY_HOP:
            assert seen.get(name) != value, name
        assert seen["Content-Length"] == str(len(b"edited"))
        assert seen["Host"] == f"127.0.0.1:{handler.port}"
        assert seen.getall("ce-signature") != ["sha256=forged"]
    finally:
        await upstream.aclose(timeout=1.0)
        await runner.cleanup()


async def test_a_replay_without_access_keys_sends_no_signature(transport: HttpTransport) -> None:
    handler = Handler(())  # verifies nothing: it has no keys either
    runner = await serve(handler)
    upstream = Upstream(transport, keys=[], origin="127.0.0.1")
    try:
        headers = [(k, v) for k, v in original(handler.url(), []) if k != "ce-signature"]
        response = await upstream.replay(handler.url(), headers, b"again")
        assert response.status == 200 and response.body == b"got: again"
        (seen,) = handler.seen
        assert "ce-signature" not in seen
    finally:
        await upstream.aclose(timeout=1.0)
        await runner.cleanup()
