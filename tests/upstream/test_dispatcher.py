"""The upstream dispatcher against a real event-handler app on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from webpubsub.core.settings import EventHandlerSettings, GroupPresenceEvents, HubSettings
from webpubsub.errors import ConnectRejected, NoEventHandler, UpstreamError
from webpubsub.protocol.cloudevents import (
    ConnectDecision,
    ConnectRequest,
    EventContext,
    EventReply,
    signature,
)
from webpubsub.protocol.payload import DataType, Payload
from webpubsub.upstream.delivery import RetryPolicy
from webpubsub.upstream.dispatcher import Upstream
from webpubsub.upstream.http import HttpTransport
from webpubsub.upstream.queue import SqliteEventQueue

KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
ORIGIN = "pubsub.example.com"
WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the event-handler app received."""

    method: str
    raw_path: str
    query_string: str
    headers: tuple[tuple[str, str], ...]  # as on the wire: order and casing kept
    body: bytes
    request: web.Request = field(compare=False, repr=False)

    @property
    def event(self) -> str:
        return self.raw_path.rsplit("/", 1)[-1]

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


Respond = Callable[[Seen], Awaitable[web.StreamResponse]]


async def default_respond(seen: Seen) -> web.StreamResponse:
    if seen.method == "OPTIONS":
        return web.Response(status=200, headers={"WebHook-Allowed-Origin": "*"})
    return web.Response(status=204)


class HandlerApp:
    """An event-handler app that records every request; ``respond`` decides answers."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.respond: Respond = default_respond
        self.release = asyncio.Event()  # set at teardown so blocked handlers finish
        self._changed = asyncio.Condition()
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(
            method=request.method,
            raw_path=request.raw_path.split("?", 1)[0],
            query_string=request.query_string,
            headers=tuple((k.decode(), v.decode()) for k, v in request.raw_headers),
            body=await request.read(),
            request=request,
        )
        async with self._changed:
            self.seen.append(seen)
            self._changed.notify_all()
        return await self.respond(seen)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def hold_posts(self) -> None:
        """Answer probes as usual but hold every POST until teardown."""

        async def respond(seen: Seen) -> web.StreamResponse:
            if seen.method == "POST":
                await self.release.wait()
            return await default_respond(seen)

        self.respond = respond

    async def wait_until(self, predicate: Callable[[list[Seen]], bool]) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(lambda: predicate(self.seen))

    def methods(self) -> list[str]:
        return [s.method for s in self.seen]

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def url(self, path: str = "/api/{hub}/{event}?code=secret") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
async def handler() -> AsyncIterator[HandlerApp]:
    app = HandlerApp()
    runner = web.AppRunner(app.app(), shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app.port = runner.addresses[0][1]
    try:
        yield app
    finally:
        app.release.set()
        await runner.cleanup()


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


MakeUpstream = Callable[..., Upstream]


@pytest.fixture
async def make_upstream(monotonic: FakeMonotonic) -> AsyncIterator[MakeUpstream]:
    made: list[Upstream] = []

    def make(transport: HttpTransport | None = None, **kwargs: object) -> Upstream:
        options: dict[str, object] = {
            "keys": [KEY],
            "origin": ORIGIN,
            "clock": lambda: 1714557600.0,
            "monotonic": monotonic,
            "retry": RetryPolicy(delays=(0.0, 0.0), max_delay=0.02, horizon=0.5),
        }
        options.update(kwargs)
        upstream = Upstream(transport or HttpTransport(), **options)  # type: ignore[arg-type]
        made.append(upstream)
        return upstream

    yield make
    for upstream in made:
        await upstream.aclose(timeout=1.0)


def hub_with(
    url: str,
    *,
    user: str = "*",
    system: frozenset[str] = frozenset({"connect", "connected", "disconnected"}),
    timeout: float = 5.0,
) -> HubSettings:
    handler = EventHandlerSettings(
        url_template=url, user_event_pattern=user, system_events=system, timeout_seconds=timeout
    )
    return HubSettings(name="Chat", event_handlers=(handler,))


def ctx(connection_id: str = "conn1", hub: str = "chat") -> EventContext:
    return EventContext(
        hub=hub,
        connection_id=connection_id,
        user_id="alice",
        subprotocol=None,
        state="",
        event_id="1",
        origin=ORIGIN,
    )


async def connect(upstream: Upstream, hub: HubSettings) -> ConnectDecision | None:
    request = ConnectRequest(
        claims={"sub": ["alice"]},
        query={"id": ["alice"]},
        subprotocols=("json.webpubsub.azure.v1",),
    )
    return await upstream.connect(hub, ctx(), request)


@pytest.fixture
def closed_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    yield port


# -- abuse protection --------------------------------------------------------------------


async def test_concurrent_first_events_share_one_probe_which_is_cached(
    handler: HandlerApp, make_upstream: MakeUpstream, monotonic: FakeMonotonic
) -> None:
    gate = asyncio.Event()

    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            await gate.wait()
        return await default_respond(seen)

    handler.respond = respond
    upstream = make_upstream(validation_ttl=300.0)
    hub = hub_with(handler.url())
    events = [
        asyncio.create_task(upstream.user_event(hub, ctx(f"c{i}"), "message", Payload.text("x")))
        for i in range(5)
    ]
    await handler.wait_until(lambda seen: len(seen) >= 1)
    gate.set()
    replies = await asyncio.wait_for(asyncio.gather(*events), WAIT)
    assert replies == [EventReply(None, None)] * 5
    assert handler.methods() == ["OPTIONS"] + ["POST"] * 5
    probe = handler.seen[0]
    assert probe.raw_path == "/api/chat/validate"
    assert probe.query_string == "code=secret"
    assert probe.header("WebHook-Request-Origin") == ORIGIN
    assert probe.header("ce-awpsversion") == "1.0"

    monotonic.now += 299.0  # still cached, also for a system event to the same URL
    assert await connect(upstream, hub) == ConnectDecision()
    assert handler.methods().count("OPTIONS") == 1

    monotonic.now += 2.0  # expired: probed again
    await upstream.user_event(hub, ctx(), "message", Payload.text("x"))
    assert handler.methods()[-2:] == ["OPTIONS", "POST"]


async def test_options_404_falls_back_to_get(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return web.Response(status=404)
        if seen.method == "GET":
            return web.Response(headers={"WebHook-Allowed-Origin": "pubsub.example.com:443"})
        return web.Response(status=204)

    handler.respond = respond
    upstream = make_upstream()
    await upstream.user_event(hub_with(handler.url()), ctx(), "message", Payload.text("x"))
    assert handler.methods() == ["OPTIONS", "GET", "POST"]
    assert handler.seen[1].header("WebHook-Request-Origin") == ORIGIN


async def test_failed_probe_blocks_events_and_backs_off(
    handler: HandlerApp, make_upstream: MakeUpstream, monotonic: FakeMonotonic
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        return web.Response(headers={"WebHook-Allowed-Origin": "other.example.com"})

    handler.respond = respond
    upstream = make_upstream()
    hub = hub_with(handler.url())
    with pytest.raises(UpstreamError, match="abuse-protection validation"):
        await upstream.user_event(hub, ctx(), "message", Payload.text("x"))
    with pytest.raises(UpstreamError, match="abuse-protection validation"):
        await connect(upstream, hub)  # cached failure: no new probe
    assert handler.methods() == ["OPTIONS"]

    monotonic.now += 1.0  # first back-off (1 s) over
    with pytest.raises(UpstreamError):
        await connect(upstream, hub)
    assert handler.methods() == ["OPTIONS", "OPTIONS"]
    monotonic.now += 1.5  # second back-off is 2 s
    with pytest.raises(UpstreamError):
        await connect(upstream, hub)
    assert handler.methods() == ["OPTIONS", "OPTIONS"]
    monotonic.now += 0.5
    with pytest.raises(UpstreamError):
        await connect(upstream, hub)
    assert handler.methods() == ["OPTIONS"] * 3  # and never a POST


async def test_validation_can_be_switched_off(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream(validate=False)
    await upstream.user_event(hub_with(handler.url()), ctx(), "message", Payload.text("x"))
    assert handler.methods() == ["POST"]


# -- connect ----------------------------------------------------------------------------


async def test_connect_accepts_with_the_handlers_fields(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        body = {
            "userId": "bob",
            "groups": ["g1"],
            "roles": ["webpubsub.sendToGroup.g1"],
            "subprotocol": "json.webpubsub.azure.v1",
        }
        return web.json_response(body, headers={"ce-connectionState": "eyJrIjoxfQ=="})

    handler.respond = respond
    upstream = make_upstream()
    decision = await connect(upstream, hub_with(handler.url()))
    assert decision == ConnectDecision(
        user_id="bob",
        user_id_set=True,
        groups=("g1",),
        roles=("webpubsub.sendToGroup.g1",),
        subprotocol="json.webpubsub.azure.v1",
        state="eyJrIjoxfQ==",
    )
    post = handler.posts()[0]
    assert post.raw_path == "/api/chat/connect"
    names = [k for k, _ in post.headers]
    for name in ("ce-type", "ce-connectionId", "ce-eventName", "ce-userId", "ce-signature"):
        assert name in names  # emitted with the spec's casing
    assert "ce-subprotocol" not in names
    assert post.header("ce-type") == "azure.webpubsub.sys.connect"
    assert post.header("ce-signature") == signature("conn1", [KEY])
    assert post.header("ce-time") == "2024-05-01T10:00:00Z"
    assert post.header("WebHook-Request-Origin") == ORIGIN
    assert orjson.loads(post.body)["query"] == {"id": ["alice"]}


@pytest.mark.parametrize("status", [401, 403])
async def test_connect_4xx_rejects_with_that_status(
    handler: HandlerApp, make_upstream: MakeUpstream, status: int
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        return web.Response(status=status, text="go away")

    handler.respond = respond
    with pytest.raises(ConnectRejected) as info:
        await connect(make_upstream(), hub_with(handler.url()))
    assert info.value.http_status == status


async def test_connect_500_is_an_upstream_error(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        return web.Response(status=500)

    handler.respond = respond
    with pytest.raises(UpstreamError) as info:
        await connect(make_upstream(), hub_with(handler.url()))
    assert info.value.status == 500
    assert handler.methods() == ["OPTIONS", "POST"]  # blocking events are not retried


async def test_redirects_are_not_followed(handler: HandlerApp, make_upstream: MakeUpstream) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS" or seen.raw_path == "/elsewhere":
            return await default_respond(seen)
        return web.Response(status=307, headers={"Location": "/elsewhere"})

    handler.respond = respond
    with pytest.raises(UpstreamError) as info:
        await connect(make_upstream(), hub_with(handler.url()))
    assert info.value.status == 307
    assert [s.raw_path for s in handler.seen] == ["/api/chat/validate", "/api/chat/connect"]


async def test_connect_without_a_handler_is_none(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    hub = hub_with(handler.url(), system=frozenset({"connected"}))
    assert await connect(make_upstream(), hub) is None
    assert handler.seen == []


async def test_slow_handler_fails_within_its_timeout(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    handler.hold_posts()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamError, match="no answer within"):
        await connect(make_upstream(), hub_with(handler.url(), timeout=0.3))
    assert loop.time() - started < 2.0


@pytest.mark.parametrize("validate", [False, True])
async def test_handler_down_is_an_upstream_error(
    closed_port: int, make_upstream: MakeUpstream, validate: bool
) -> None:
    hub = hub_with(f"http://127.0.0.1:{closed_port}/api/{{event}}")
    with pytest.raises(UpstreamError) as info:
        await connect(make_upstream(validate=validate), hub)
    assert not isinstance(info.value, ConnectRejected)


# -- user events --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_type", "body", "payload"),
    [
        (200, "text/plain", b"hello", Payload(DataType.TEXT, b"hello")),
        (200, "application/json", b'{"a":1}', Payload(DataType.JSON, b'{"a":1}')),
        (200, "application/octet-stream", b"\x00\x01", Payload(DataType.BINARY, b"\x00\x01")),
        (200, "application/octet-stream", b"", None),
        (204, None, b"", None),
    ],
)
async def test_user_event_replies(
    handler: HandlerApp,
    make_upstream: MakeUpstream,
    status: int,
    content_type: str | None,
    body: bytes,
    payload: Payload | None,
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        headers = {"ce-connectionState": "s2"}
        if content_type:
            headers["Content-Type"] = content_type
        return web.Response(status=status, body=body or None, headers=headers)

    handler.respond = respond
    upstream = make_upstream()
    reply = await upstream.user_event(
        hub_with(handler.url()), ctx(), "chat", Payload.binary(b"\x09")
    )
    assert reply == EventReply(payload=payload, state="s2")
    post = handler.posts()[0]
    assert post.header("Content-Type") == "application/octet-stream"
    assert post.header("ce-type") == "azure.webpubsub.user.chat"
    assert post.body == b"\x09"


async def test_user_event_failure_status(handler: HandlerApp, make_upstream: MakeUpstream) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        return web.Response(status=502)

    handler.respond = respond
    with pytest.raises(UpstreamError) as info:
        await make_upstream().user_event(hub_with(handler.url()), ctx(), "m", Payload.text("x"))
    assert info.value.status == 502


async def test_user_event_without_a_matching_handler(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream()
    hub = hub_with(handler.url(), user="chat, Other")
    assert upstream.has_user_event_handler(hub, "OTHER")
    assert not upstream.has_user_event_handler(hub, "message")
    with pytest.raises(NoEventHandler, match="No event handler accepts 'message' events"):
        await upstream.user_event(hub, ctx(), "message", Payload.text("x"))
    assert handler.seen == []


async def test_url_template_substitutes_hub_and_event(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream()
    hub = hub_with(handler.url("/x/{hub}/y/{event}?code=secret"))
    await upstream.user_event(hub, ctx(hub="my hub"), "a b", Payload.text("x"))
    assert [s.raw_path for s in handler.seen] == ["/x/my%20hub/y/validate", "/x/my%20hub/y/a%20b"]
    assert {s.query_string for s in handler.seen} == {"code=secret"}
    assert handler.seen[1].header("ce-hub") == "my hub"


async def test_response_bigger_than_the_limit(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        size = int(seen.body)
        if seen.header("ce-eventName") == "sized":
            return web.Response(body=b"x" * size)
        stream = web.StreamResponse()  # chunked: no Content-Length to check up front
        await stream.prepare(seen.request)
        await stream.write(b"x" * size)
        await stream.write_eof()
        return stream

    handler.respond = respond
    upstream = make_upstream(HttpTransport(max_response_bytes=1000))
    hub = hub_with(handler.url())
    ok = await upstream.user_event(hub, ctx(), "sized", Payload.text("1000"))
    assert ok.payload == Payload(DataType.BINARY, b"x" * 1000)
    ok = await upstream.user_event(hub, ctx(), "chunked", Payload.text("1000"))
    assert ok.payload is not None and len(ok.payload.data) == 1000
    for event in ("sized", "chunked"):
        with pytest.raises(UpstreamError, match="response too large"):
            await upstream.user_event(hub, ctx(), event, Payload.text("1001"))


# -- connected / disconnected ------------------------------------------------------------


async def test_disconnected_is_sent_after_connected(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    disconnected_arrived = asyncio.Event()
    overlapped: list[bool] = []

    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.event == "disconnected":
            disconnected_arrived.set()
        if seen.event == "connected":
            # Hold `connected` until `disconnected` shows up (it must not) or 0.5 s pass.
            try:
                await asyncio.wait_for(disconnected_arrived.wait(), 0.5)
                overlapped.append(True)
            except TimeoutError:
                overlapped.append(False)
        return await default_respond(seen)

    handler.respond = respond
    upstream = make_upstream()
    hub = hub_with(handler.url())
    upstream.connected(hub, ctx())
    upstream.disconnected(hub, ctx(), "The client closed the connection.")
    await handler.wait_until(lambda seen: len(seen) == 3)
    assert [s.event for s in handler.seen] == ["validate", "connected", "disconnected"]
    assert overlapped == [False]
    assert orjson.loads(handler.seen[2].body) == {"reason": "The client closed the connection."}


async def test_group_presence_events_queue_in_the_connections_order_to_their_handler(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    presence = EventHandlerSettings(
        url_template=handler.url("/presence/{hub}/{event}"),
        group_presence_events=GroupPresenceEvents(frozenset({"joined", "left"}), ("room-*",)),
    )
    system = EventHandlerSettings(
        url_template=handler.url(), system_events=frozenset({"connected", "disconnected"})
    )
    hub = HubSettings(name="Chat", event_handlers=(system, presence))
    upstream = make_upstream()
    upstream.connected(hub, ctx())
    upstream.group_presence(hub, ctx(), "joined", "room-1")
    upstream.group_presence(hub, ctx(), "joined", "lobby")  # no handler takes it: not queued
    upstream.group_presence(hub, ctx(), "left", "room-1")
    upstream.disconnected(hub, ctx(), "bye")
    await handler.wait_until(lambda seen: len(handler.posts()) == 4)
    posts = handler.posts()
    assert [(s.raw_path, s.body) for s in posts[1:3]] == [
        ("/presence/chat/joined", b'{"group":"room-1"}'),
        ("/presence/chat/left", b'{"group":"room-1"}'),
    ]
    assert [s.event for s in posts] == ["connected", "joined", "left", "disconnected"]
    assert posts[1].header("ce-type") == "azure.webpubsub.group.joined"
    async with asyncio.timeout(WAIT):
        await upstream.wait_until(lambda: upstream.stats.delivered == 4)
    assert upstream.queued() == 0


@pytest.mark.parametrize(
    ("statuses", "attempts", "dead"),
    [
        ([503, 503, 503, 503, 204], 5, False),  # past Azure's three retries: at least once
        ([503, 204], 2, False),
        ([500, 408, 429, 200], 4, False),
        ([400, 204], 1, True),  # refused for good
    ],
)
async def test_async_events_are_retried_until_delivered(
    handler: HandlerApp,
    make_upstream: MakeUpstream,
    caplog: pytest.LogCaptureFixture,
    statuses: list[int],
    attempts: int,
    dead: bool,
) -> None:
    answers = iter(statuses)

    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        return web.Response(status=next(answers))

    handler.respond = respond
    upstream = make_upstream()
    caplog.set_level(logging.WARNING, "webpubsub.upstream")
    upstream.connected(hub_with(handler.url()), ctx("conn7"))
    await upstream.aclose(timeout=WAIT)
    posts = handler.posts()
    assert len(posts) == attempts
    assert {p.header("ce-id") for p in posts} == {"1"}  # the same event every time
    assert upstream.stats.dead_lettered == int(dead)
    if dead:
        text = caplog.records[-1].getMessage()
        assert "connected" in text and "conn7" in text and "hub=chat" in text
        assert "400" in text and "dead-lettered" in text


async def test_a_full_queue_dead_letters_new_events_and_says_so(
    handler: HandlerApp, make_upstream: MakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    handler.hold_posts()
    queue = SqliteEventQueue(":memory:")
    upstream = make_upstream(max_queued_events=1, queue=queue)
    hub = hub_with(handler.url())
    upstream.connected(hub, ctx("c1"))
    upstream.connected(hub, ctx("c2"))
    assert "queue is full" in caplog.text and "c2" in caplog.text
    assert upstream.stats.queue_full == 1
    [dead] = queue.dead()
    assert dead.event.chain.endswith("connection=c2") and "full" in dead.reason
    await handler.wait_until(lambda seen: len(seen) == 2)
    handler.release.set()
    await upstream.aclose(timeout=WAIT)
    assert [s.header("ce-connectionId") for s in handler.posts()] == ["c1"]


async def test_aclose_does_not_wait_forever(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    handler.hold_posts()
    upstream = make_upstream()
    upstream.connected(hub_with(handler.url()), ctx())
    await handler.wait_until(lambda seen: len(seen) == 2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await upstream.aclose(timeout=0.2)
    assert loop.time() - started < 2.0


# -- secrets ----------------------------------------------------------------------------


async def test_query_secret_and_keys_are_never_logged(
    handler: HandlerApp,
    make_upstream: MakeUpstream,
    closed_port: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.raw_path.startswith("/bad-origin/"):
            return web.Response(headers={"WebHook-Allowed-Origin": "evil.example"})
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        return web.Response(status=500)

    handler.respond = respond
    upstream = make_upstream()
    errors: list[str] = []
    hubs = [
        hub_with(handler.url()),
        hub_with(handler.url("/bad-origin/{event}?code=secret")),
        hub_with(f"http://127.0.0.1:{closed_port}/down/{{event}}?code=secret"),
    ]
    for hub in hubs:
        upstream.connected(hub, ctx())
        with pytest.raises(UpstreamError) as info:
            await upstream.user_event(hub, ctx(), "message", Payload.text("x"))
        errors.append(str(info.value))
    down = make_upstream(validate=False)
    down.disconnected(hubs[2], ctx(), "bye")
    with pytest.raises(UpstreamError) as info:
        await connect(down, hubs[2])
    errors.append(str(info.value))
    await upstream.aclose(timeout=WAIT)
    await down.aclose(timeout=WAIT)

    assert any("status 500" in r.getMessage() for r in caplog.records)
    assert any("abuse-protection" in r.getMessage() for r in caplog.records)
    assert any("/down/disconnected" in r.getMessage() for r in caplog.records)
    for text in [caplog.text, *errors]:
        assert "secret" not in text
        assert KEY not in text
    assert f"127.0.0.1:{closed_port}/down/connect" in errors[-1]


async def test_a_burst_of_10500_disconnects_is_delivered_without_a_drop(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    upstream = make_upstream()
    hub = hub_with(handler.url(), system=frozenset({"disconnected"}))
    count = 10_500
    for i in range(count):
        upstream.disconnected(hub, ctx(f"c{i}"), "bye")
    assert upstream.queued() == count  # every one queued: no cap at 10,000
    await upstream.aclose(timeout=120.0)
    delivered = {s.header("ce-connectionId") for s in handler.posts()}
    assert len(delivered) == count
    assert upstream.stats.delivered == count and upstream.stats.queue_full == 0


async def test_a_429_waits_its_retry_after_instead_of_azures_schedule(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        return web.Response(status=429, headers={"Retry-After": "3600"})

    handler.respond = respond
    queue = SqliteEventQueue(":memory:")
    upstream = make_upstream(queue=queue, retry=RetryPolicy(delays=(0.0,), horizon=86400.0))
    upstream.connected(hub_with(handler.url()), ctx())
    await upstream.wait_until(lambda: upstream.stats.retried == 1)
    [waiting] = queue.pending()
    assert waiting.attempts == 1 and waiting.last_error == "status 429"
    assert waiting.next_at - waiting.created >= 3599.0  # not the 0 s of the schedule
    assert len(handler.posts()) == 1


async def test_past_the_horizon_an_event_is_dead_lettered(
    handler: HandlerApp, make_upstream: MakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS":
            return await default_respond(seen)
        return web.Response(status=503)

    handler.respond = respond
    queue = SqliteEventQueue(":memory:")
    upstream = make_upstream(queue=queue)  # retried every 20 ms for 0.5 s
    upstream.disconnected(hub_with(handler.url()), ctx("c5"), "bye")
    await upstream.wait_until(lambda: upstream.stats.dead_lettered == 1)
    [dead] = queue.dead()
    assert dead.reason == "status 503" and dead.event.chain.endswith("connection=c5")
    assert len(handler.posts()) > 3  # past Azure's three retries
    assert "dead-lettered" in caplog.text


async def test_a_failed_probe_is_retried_and_its_back_off_stays_short(
    handler: HandlerApp, make_upstream: MakeUpstream, monotonic: FakeMonotonic
) -> None:
    allowed = False

    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "OPTIONS" and not allowed:
            return web.Response(status=503)
        return await default_respond(seen)

    handler.respond = respond
    upstream = make_upstream()
    hub = hub_with(handler.url())
    for _ in range(6):  # the handler stays down a while: back-off 1 s, then 2 s, 2 s ...
        with pytest.raises(UpstreamError):
            await connect(upstream, hub)
        monotonic.now += 2.0
    probes = handler.methods().count("OPTIONS")
    assert probes == 6  # each event after the capped back-off probed again
    allowed = True
    upstream.connected(hub, ctx("c1"))  # queued: its probe is retried, then delivered
    await upstream.aclose(timeout=WAIT)
    assert [p.event for p in handler.posts()] == ["connected"]


async def test_an_event_after_close_is_logged_and_counted_not_lost_silently(
    handler: HandlerApp, make_upstream: MakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = make_upstream()
    await upstream.aclose(timeout=WAIT)
    upstream.disconnected(hub_with(handler.url()), ctx("late"), "bye")
    assert upstream.stats.not_queued == 1
    assert "not queued" in caplog.text and "late" in caplog.text


# -- the event mirror's view of the queue (node/ports.EventStore) ---------------------------


class RecordingMirror:
    """An event mirror that only records what it is told, in order."""

    def __init__(self) -> None:
        self.told: list[tuple[str, int]] = []

    async def attach(self, store: object) -> None:
        pass

    def queued(self, seq: int, record: bytes) -> None:
        self.told.append(("queued", seq))

    def settled(self, seq: int) -> None:
        self.told.append(("settled", seq))

    async def closing(self) -> None:
        self.told.append(("closing", 0))


async def test_the_mirror_hears_of_every_event_queued_delivered_or_dead_lettered(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "POST" and seen.header("ce-connectionId") == "refused":
            return web.Response(status=400)
        return await default_respond(seen)

    handler.respond = respond
    mirror = RecordingMirror()
    upstream = make_upstream(mirror=mirror)
    hub = hub_with(handler.url())
    upstream.connected(hub, ctx("taken"))
    upstream.connected(hub, ctx("refused"))
    async with asyncio.timeout(WAIT):
        await upstream.wait_until(lambda: upstream.queued() == 0)
    assert sorted(mirror.told) == [("queued", 1), ("queued", 2), ("settled", 1), ("settled", 2)]
    assert upstream.stats.delivered == 1 and upstream.stats.dead_lettered == 1
    await upstream.aclose(0)
    assert mirror.told[-1] == ("closing", 0)  # once the queue changes no more


async def test_adopted_events_go_in_their_order_with_their_ce_id_and_dropped_ones_never(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    """Records of another node's queue are delivered here as they were built; events
    another node took over leave this queue and its schedule, even mid back-off."""
    refusing = True

    async def respond(seen: Seen) -> web.StreamResponse:
        if seen.method == "POST" and refusing:
            return web.Response(status=503)
        return await default_respond(seen)

    handler.respond = respond
    other = SqliteEventQueue(":memory:")
    elsewhere = make_upstream(queue=other, retry=RetryPolicy(delays=(60.0,), horizon=600.0))
    hub = hub_with(handler.url())
    elsewhere.connected(hub, ctx("moved"))
    elsewhere.disconnected(hub, ctx("moved"), "The client closed the connection.")
    await handler.wait_until(lambda seen: len(handler.posts()) == 1)  # then 60 s of back-off
    store = elsewhere.store
    records = [record for _, record in store.records(store.pending_seqs())]
    assert len(records) == 2

    here = make_upstream()
    refusing = False
    assert here.store.adopt([b"not a record", *records]) == [0, 1, 2]
    async with asyncio.timeout(WAIT):
        await here.wait_until(lambda: here.stats.delivered == 2)
    posts = handler.posts()
    assert [p.event for p in posts] == ["connected", "connected", "disconnected"]
    assert posts[0].headers == posts[1].headers  # the same request: ce-id, signature
    assert here.stats.taken_over == 2

    assert elsewhere.store.drop(elsewhere.store.pending_seqs()) == 2
    assert elsewhere.queued() == 0 and other.count("pending") == 0
    assert elsewhere.stats.taken_by_others == 2


# -- connections left open by a crash ---------------------------------------------------


@pytest.mark.parametrize("system", [frozenset({"connected", "disconnected"}), {"disconnected"}])
async def test_a_start_after_a_crash_sends_the_disconnected_of_every_connection_left_open(
    handler: HandlerApp, make_upstream: MakeUpstream, tmp_path: Path, system: frozenset[str]
) -> None:
    async def down(seen: Seen) -> web.StreamResponse:
        return web.Response(status=503)

    handler.respond = down
    path = str(tmp_path / "events.sqlite3")
    hub = hub_with(handler.url(), system=frozenset(system))
    retry = RetryPolicy(delays=(30.0,), horizon=3600.0)
    first = make_upstream(
        queue=SqliteEventQueue(path), validate=False, retry=retry, track_connections=True
    )
    first.start(lambda name: hub)
    first.connected(hub, ctx("c1"))
    first.connected(hub, ctx("c2"))
    first.disconnected(hub, ctx("c2"), "The client closed the connection.")
    await first.aclose(timeout=0)  # as a crash: c1 is still open, its events queued
    handler.seen.clear()
    handler.respond = default_respond

    queue = SqliteEventQueue(path)
    again = make_upstream(queue=queue, validate=False, retry=retry, track_connections=True)
    again.start(lambda name: hub)
    async with asyncio.timeout(WAIT):
        await again.wait_until(lambda: again.queued() == 0)
    got = [
        (s.header("ce-connectionId"), s.event, s.header("ce-userId"), s.body)
        for s in handler.posts()
    ]
    connected = [("c1", "connected", "alice", b"{}"), ("c2", "connected", "alice", b"{}")]
    restarted = ("c1", "disconnected", "alice", b'{"reason":"The service restarted."}')
    closed = ("c2", "disconnected", "alice", b'{"reason":"The client closed the connection."}')
    if "connected" in system:
        assert [g for g in got if g[0] == "c1"] == [connected[0], restarted]
        assert [g for g in got if g[0] == "c2"] == [connected[1], closed]
    else:
        assert sorted(got) == sorted([restarted, closed])
    assert queue.live() == []  # swept once: the next start sends nothing more


async def test_without_tracking_no_connection_is_recorded(
    handler: HandlerApp, make_upstream: MakeUpstream
) -> None:
    """The Redis backplane ends a dead node's connections itself (its reaper)."""
    queue = SqliteEventQueue(":memory:")
    upstream = make_upstream(queue=queue, validate=False)
    hub = hub_with(handler.url())
    upstream.connected(hub, ctx("c1"))
    assert queue.live() == []
    await upstream.aclose(timeout=WAIT)
    assert [s.event for s in handler.posts()] == ["connected"]
