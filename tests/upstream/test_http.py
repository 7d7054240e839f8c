"""The HTTP transport's pools against real event-handler apps on 127.0.0.1: one slow
endpoint must not stall handshakes, nor the handlers of another origin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from webpubsub.errors import UpstreamError
from webpubsub.node.observe import Exchange, Observers
from webpubsub.protocol.cloudevents import UpstreamRequest
from webpubsub.upstream.http import HttpTransport, Pool, UpstreamTimeout

WAIT = 5.0


class SlowApp:
    """Answers ``/slow`` only once ``release`` is set, everything else at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0
        self.held = asyncio.Event()
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            self.holding += 1
            self.held.set()
            await self.release.wait()
        return web.Response(status=204)

    def request(self, path: str) -> UpstreamRequest:
        return UpstreamRequest("POST", f"http://127.0.0.1:{self.port}{path}", (), b"")

    async def wait_holding(self, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.holding < count:
                self.held.clear()
                await self.held.wait()


async def _serve(app: SlowApp) -> web.AppRunner:
    web_app = web.Application()
    web_app.router.add_route("*", "/{tail:.*}", app.handle)
    runner = web.AppRunner(web_app, shutdown_timeout=0.5, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    app.port = runner.addresses[0][1]
    return runner


@pytest.fixture
async def apps() -> AsyncIterator[tuple[SlowApp, SlowApp]]:
    first, second = SlowApp(), SlowApp()
    runners = [await _serve(first), await _serve(second)]
    try:
        yield first, second
    finally:
        first.release.set()
        second.release.set()
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def transport() -> AsyncIterator[HttpTransport]:
    made = HttpTransport(max_connections=2)
    yield made
    await made.close()


async def _hang(transport: HttpTransport, app: SlowApp, count: int) -> list[asyncio.Task[object]]:
    tasks: list[asyncio.Task[object]] = [
        asyncio.create_task(transport.send(app.request("/slow"), timeout=60.0))
        for _ in range(count)
    ]
    await app.wait_holding(count)
    return tasks


@pytest.mark.parametrize(
    ("where", "pool"),
    [
        ("connect on the same origin", Pool.CONNECT),  # its own budget
        ("an event to another origin", Pool.EVENTS),  # its own pool
    ],
)
async def test_slow_events_to_one_origin_stall_neither_connects_nor_other_origins(
    apps: tuple[SlowApp, SlowApp], transport: HttpTransport, where: str, pool: Pool
) -> None:
    slow, other = apps
    hanging = await _hang(transport, slow, 2)  # the whole events pool of that origin
    target = slow if pool is Pool.CONNECT else other
    response = await transport.send(target.request("/call"), timeout=2.0, pool=pool)
    assert response.status == 204, where
    slow.release.set()
    await asyncio.gather(*hanging)


async def test_the_timeout_covers_the_wait_for_a_pool_slot(
    apps: tuple[SlowApp, SlowApp], transport: HttpTransport
) -> None:
    slow, _ = apps
    hanging = await _hang(transport, slow, 2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout, match=r"no answer within 0\.3 s"):
        await transport.send(slow.request("/fast"), timeout=0.3)
    assert loop.time() - started < 2.0
    slow.release.set()
    await asyncio.gather(*hanging)


async def test_an_observed_timeout_is_a_timeout_and_a_refusal_an_error(
    apps: tuple[SlowApp, SlowApp], transport: HttpTransport, unused_tcp_port: int
) -> None:
    """The outcome comes from the exception's type, not from its message."""
    seen: list[Exchange] = []

    class Listener:
        def cloud_event(self, exchange: Exchange) -> None:
            seen.append(exchange)

    transport.observer = Observers([Listener()])  # type: ignore[list-item]
    slow, _ = apps
    with pytest.raises(UpstreamTimeout):
        await transport.send(slow.request("/slow"), timeout=0.2)
    refused = UpstreamRequest("POST", f"http://127.0.0.1:{unused_tcp_port}/h", (), b"")
    with pytest.raises(UpstreamError):
        await transport.send(refused, timeout=2.0)
    assert [(e.timed_out, e.outcome) for e in seen] == [(True, "timeout"), (False, "error")]
    slow.release.set()
