"""At-least-once delivery of ``connected``/``disconnected`` (issue 10.6), seen by a real
event-handler app that goes down and comes back on the same port."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from tests.conftest import StartService, make_config
from tests.support.handler import EventHandlerApp, Recorded, default_responder, posts
from tests.support.service import chat_hub
from webpubsub.cli import main
from webpubsub.config import UpstreamSettings
from webpubsub.server.app import ServiceRunner

WAIT = 10.0
SYSTEM = frozenset({"connected", "disconnected"})


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start(
    start_service: StartService, handler: EventHandlerApp, **upstream: object
) -> ServiceRunner:
    config = make_config(chat_hub(handler.url, anonymous=True, system=SYSTEM))
    if upstream:
        config = dataclasses.replace(
            config,
            upstream=dataclasses.replace(UpstreamSettings(), **upstream),  # type: ignore[arg-type]
        )
    return await start_service(config=config)


def client_url(runner: ServiceRunner) -> str:
    return f"ws://127.0.0.1:{runner.port}/client/hubs/chat"


async def connections(
    http: aiohttp.ClientSession, runner: ServiceRunner, count: int
) -> list[aiohttp.ClientWebSocketResponse]:
    return [await http.ws_connect(client_url(runner)) for _ in range(count)]


async def received(handler: EventHandlerApp, event: str, count: int) -> set[str]:
    """Wait until ``count`` connections' ``event`` arrived; their connection ids."""
    async with asyncio.timeout(WAIT):
        while len(ids := {r.headers["ce-connectionId"] for r in posts(handler, event)}) < count:
            await handler.next_event("sys." + event, timeout=WAIT)
    return ids


def assert_once_each(handler: EventHandlerApp) -> None:
    """Every (connection, event) arrived with one ce-id (a redelivery is the same event)."""
    ids: dict[tuple[str, str], set[str]] = {}
    for r in posts(handler, "connected") + posts(handler, "disconnected"):
        ids.setdefault((r.headers["ce-connectionId"], r.event_name), set()).add(r.headers["ce-id"])
    assert all(len(v) == 1 for v in ids.values()), ids


def assert_connected_first(handler: EventHandlerApp) -> None:
    order = [r for r in handler.requests if r.method == "POST"]
    for cid in {r.headers["ce-connectionId"] for r in order}:
        names = [r.event_name for r in order if r.headers["ce-connectionId"] == cid]
        assert names == sorted(names), (cid, names)  # "connected" < "disconnected"


async def test_a_handler_down_at_its_first_event_still_gets_every_connected(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start(start_service, handler_app)  # Azure's delays: 1 s, 3 s, 5 s
    await handler_app.stop()
    clients = await connections(http, runner, 40)
    assert runner.upstream is not None
    await runner.upstream.wait_until(lambda: runner.upstream.stats.retried >= 1)  # type: ignore[union-attr]
    await handler_app.start()  # back on the same port
    assert len(await received(handler_app, "connected", 40)) == 40
    for ws in clients:
        await ws.close()
    assert len(await received(handler_app, "disconnected", 40)) == 40
    assert_once_each(handler_app)
    assert_connected_first(handler_app)


async def test_a_handler_down_longer_than_azures_retries_gets_every_event(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    # Azure retries 1 s + 3 s + 5 s, then gives up: an outage of ~12 s loses the event.
    # Scaled down 10x here, the outage outlasts the first three retries all the same.
    delays = (0.1, 0.3, 0.5)
    runner = await start(
        start_service, handler_app, retry_delays_seconds=delays, retry_max_delay_seconds=0.4
    )
    assert runner.upstream is not None
    upstream = runner.upstream
    clients = await connections(http, runner, 10)
    await received(handler_app, "connected", 10)
    await handler_app.stop()
    for ws in clients:
        await ws.close()
    # every event failed more often than Azure would have tried
    await upstream.wait_until(lambda: upstream.stats.retried >= 10 * (len(delays) + 2))
    assert upstream.queued() == 10
    async with http.get(f"http://127.0.0.1:{runner.port}/api/health") as resp:
        events = (await resp.json())["events"]
    assert events["queued"] == 10 and events["deadLettered"] == 0 and events["retried"] >= 50
    await handler_app.start()
    assert len(await received(handler_app, "disconnected", 10)) == 10
    assert_once_each(handler_app)
    assert upstream.stats.dead_lettered == 0


async def test_a_flapping_handler_gets_every_event_in_order(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start(
        start_service, handler_app, retry_delays_seconds=(0.05,), retry_max_delay_seconds=0.2
    )
    assert runner.upstream is not None
    upstream = runner.upstream
    every: list[aiohttp.ClientWebSocketResponse] = []
    for round_ in range(1, 4):
        await handler_app.stop()
        batch = await connections(http, runner, 5)
        for ws in every[-5:]:  # the previous batch leaves while the handler is down
            await ws.close()
        every += batch
        failed = upstream.stats.retried
        await upstream.wait_until(lambda f=failed: upstream.stats.retried > f)  # type: ignore[misc]
        await handler_app.start()
        await received(handler_app, "connected", 5 * round_)
    for ws in every[-5:]:
        await ws.close()
    assert len(await received(handler_app, "disconnected", 15)) == 15
    assert_once_each(handler_app)
    assert_connected_first(handler_app)


async def test_a_handler_coming_back_is_noticed_within_seconds_not_its_back_off(
    handler_app: EventHandlerApp, start_service: StartService, http: aiohttp.ClientSession
) -> None:
    # Every event waits 60 s after a failure: only the one event that keeps trying the
    # handler every second notices it is back, and the others follow at once.
    runner = await start(start_service, handler_app, retry_delays_seconds=(60.0,))
    assert runner.upstream is not None
    upstream = runner.upstream
    await handler_app.stop()
    clients = await connections(http, runner, 10)
    await upstream.wait_until(lambda: upstream.stats.retried >= 10)
    await handler_app.start()
    assert len(await received(handler_app, "connected", 10)) == 10  # within WAIT, not 60 s
    for ws in clients:
        await ws.close()


async def test_dead_letters_replayed_next_to_the_running_service_are_delivered(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    def refuse(req: Recorded) -> web.StreamResponse:
        if req.method == "POST":
            return web.Response(status=400)  # "never": dead-lettered at once
        return default_responder(req)

    handler_app.responder = refuse
    config = make_config(
        chat_hub(handler_app.url, anonymous=True, system=SYSTEM), data_dir=str(tmp_path)
    )
    runner = await start_service(config=config)
    assert runner.upstream is not None
    upstream = runner.upstream
    clients = await connections(http, runner, 3)
    await upstream.wait_until(lambda: upstream.stats.dead_lettered == 3)
    assert len(posts(handler_app, "connected")) == 3  # one attempt each: 400 is final
    handler_app.requests.clear()
    handler_app.responder = default_responder
    cli = CliRunner()
    replayed = cli.invoke(main, ["events", "--data-dir", str(tmp_path), "replay", "--all"])
    assert "3 event(s) queued again" in replayed.output, replayed.output
    assert len(await received(handler_app, "connected", 3)) == 3  # picked up within a second
    assert {r.headers["ce-id"] for r in posts(handler_app, "connected")} == {"1"}
    for ws in clients:
        await ws.close()
    assert len(await received(handler_app, "disconnected", 3)) == 3


async def test_a_queue_file_locked_by_another_process_neither_stalls_nor_leaks_connections(
    handler_app: EventHandlerApp,
    start_service: StartService,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    config = make_config(
        chat_hub(handler_app.url, anonymous=True, system=SYSTEM), data_dir=str(tmp_path)
    )
    runner = await start_service(config=config)
    assert runner.node is not None
    node = runner.node
    other = sqlite3.connect(runner.queue_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # as a long `webpubsub events replay` would
    loop = asyncio.get_running_loop()
    started = loop.time()
    clients = await connections(http, runner, 3)
    for ws in clients:
        await ws.close()
    async with asyncio.timeout(WAIT):
        await node.wait_idle()  # every connection ended, none left behind in its hub
    assert loop.time() - started < 3.0  # no 5 s stall per event
    async with http.get(f"http://127.0.0.1:{runner.port}/api/health") as response:
        events = (await response.json())["events"]
    assert events["storeErrors"] >= 1 and events["unsaved"] == 6 and events["queued"] == 6
    other.execute("ROLLBACK")
    other.close()
    assert len(await received(handler_app, "connected", 3)) == 3
    assert len(await received(handler_app, "disconnected", 3)) == 3  # no connection leaked
    assert_connected_first(handler_app)
