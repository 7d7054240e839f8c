"""``connected``/``disconnected`` survive the service stopping (issue 10.6): SIGTERM with a
slow handler, a second signal, SIGKILL. The service runs as ``webpubsub serve`` in a
subprocess with a queue in ``data_dir``; the event handler is a real app in this process."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import ACCESS_KEY
from tests.integration.test_webhook_delivery import (
    assert_connected_first,
    assert_once_each,
    received,
)
from tests.support.cli import spawn_cli
from tests.support.handler import EventHandlerApp, Recorded, default_responder, posts

pytestmark = pytest.mark.e2e
WAIT = 20.0
POLL = 0.02


class Served:
    """``webpubsub serve --config FILE`` as a subprocess; its output kept line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, config: Path, data_dir: Path) -> None:
        self.proc = proc
        self.config = config
        self.data_dir = data_dir
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self.port = 0

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            self.lines.append(line)
            self._new.set()
        self._new.set()

    async def line(self, pattern: str) -> re.Match[str]:
        """The first output line matching ``pattern`` (waiting for it)."""
        async with asyncio.timeout(WAIT):
            while True:
                for line in self.lines:
                    if found := re.search(pattern, line):
                        return found
                if self._reader.done():
                    raise AssertionError("no line matches; output:\n" + "".join(self.lines))
                self._new.clear()
                await self._new.wait()

    async def exit_code(self) -> int:
        async with asyncio.timeout(WAIT):
            code = await self.proc.wait()
            await self._reader
        return code


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[[EventHandlerApp], Awaitable[Served]]]:
    started: list[Served] = []

    async def run(handler: EventHandlerApp) -> Served:
        config = tmp_path / "webpubsub.toml"
        config.write_text(
            f"""
[server]
access_keys = ["{ACCESS_KEY}"]
data_dir = "{tmp_path / "data"}"
shutdown_timeout_seconds = 1.0

[upstream]
max_connections_per_origin = 2
retry_delays_seconds = [0.1]
retry_max_delay_seconds = 0.5

[hubs.chat]
anonymous_connect = true

[[hubs.chat.event_handlers]]
url_template = "{handler.url}"
system_events = ["connected", "disconnected"]
""",
            encoding="utf-8",
        )
        proc = await spawn_cli("serve", "--config", str(config), "--port", "0")
        served = Served(proc, config, tmp_path / "data")
        started.append(served)
        served.port = int((await served.line(r"Listening on http://127\.0\.0\.1:(\d+)")).group(1))
        return served

    yield run
    for served in started:
        if served.proc.returncode is None:
            served.proc.kill()
            await served.proc.wait()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def slow(handler: EventHandlerApp, seconds: float) -> None:
    """Every event takes the handler ``seconds`` to answer (the scenario, not a wait)."""

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST":
            await asyncio.sleep(seconds)
        return default_responder(req)

    handler.responder = responder


async def clients(
    http: aiohttp.ClientSession, served: Served, count: int
) -> list[aiohttp.ClientWebSocketResponse]:
    url = f"ws://127.0.0.1:{served.port}/client/hubs/chat"
    return [await http.ws_connect(url) for _ in range(count)]


def queued_disconnected(data_dir: Path) -> int:
    """The disconnected events in the service's queue file (read-only, next to it)."""
    uri = f"file:{data_dir / 'events.sqlite3'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as db:
        query = "SELECT count(*) FROM pending WHERE event = 'disconnected'"
        (count,) = db.execute(query).fetchone()
    return int(count)


async def all_disconnected_queued(data_dir: Path, handler: EventHandlerApp, count: int) -> None:
    """Wait until ``count`` disconnected events are queued or delivered: the queue file
    is the only signal another process gives, so it is looked at every 20 ms until
    then (bounded by WAIT); each look is one read of a few rows."""
    async with asyncio.timeout(WAIT):
        # Another process: there is no event to await, only its file to look at.
        while queued_disconnected(data_dir) + len(posts(handler, "disconnected")) < count:  # noqa: ASYNC110
            await asyncio.sleep(POLL)


async def closed_by_service(ws: aiohttp.ClientWebSocketResponse) -> None:
    msg = await ws.receive(timeout=WAIT)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg


Serve = Callable[[EventHandlerApp], Awaitable[Served]]


async def busy(
    handler: EventHandlerApp, serve: Serve, http: aiohttp.ClientSession
) -> tuple[Served, list[aiohttp.ClientWebSocketResponse]]:
    """A service with 20 clients whose events a slow handler (1 s each) is receiving."""
    slow(handler, 1.0)
    served = await serve(handler)
    connected = await clients(http, served, 20)
    await handler.next_event("sys.connected", timeout=WAIT)
    return served, connected


async def restart_delivers_all(
    handler: EventHandlerApp, serve: Serve, disconnected: int, kept: int | None = None
) -> None:
    """A restart with the same data_dir and a quick handler delivers every event left:
    20 connected, ``disconnected`` disconnected, none twice with a new ce-id."""
    handler.responder = default_responder
    again = await serve(handler)
    if kept is not None:
        await again.line(rf"{kept} queued event\(s\) from an earlier run")
    assert len(await received(handler, "connected", 20)) == 20
    assert len(await received(handler, "disconnected", disconnected)) == disconnected
    assert_once_each(handler)


async def test_sigterm_with_a_slow_handler_keeps_what_it_could_not_deliver(
    handler_app: EventHandlerApp, serve: Serve, http: aiohttp.ClientSession
) -> None:
    served, connected = await busy(handler_app, serve, http)
    served.proc.send_signal(signal.SIGTERM)
    for ws in connected:
        await closed_by_service(ws)
    assert await served.exit_code() == 0
    kept = int((await served.line(r"(\d+) queued event\(s\) not delivered within 1 s")).group(1))
    assert kept > 0
    await restart_delivers_all(handler_app, serve, 20, kept)


async def test_a_second_signal_exits_at_once_and_loses_nothing(
    handler_app: EventHandlerApp, serve: Serve, http: aiohttp.ClientSession
) -> None:
    served, connected = await busy(handler_app, serve, http)
    served.proc.send_signal(signal.SIGTERM)
    for ws in connected:
        await closed_by_service(ws)
    await all_disconnected_queued(served.data_dir, handler_app, 20)
    served.proc.send_signal(signal.SIGTERM)
    assert await served.exit_code() == 128 + signal.SIGTERM
    left = await served.line(r"second SIGTERM: exiting now; (\d+) event\(s\) stay queued in")
    assert int(left.group(1)) > 0
    await restart_delivers_all(handler_app, serve, 20)


async def test_after_sigkill_a_restart_delivers_every_event_with_its_ce_id(
    handler_app: EventHandlerApp, serve: Serve, http: aiohttp.ClientSession
) -> None:
    served, connected = await busy(handler_app, serve, http)
    for ws in connected[:10]:
        await ws.close()  # their disconnected events queue behind their connected
    await all_disconnected_queued(served.data_dir, handler_app, 10)
    served.proc.kill()
    assert await served.exit_code() == -signal.SIGKILL
    seen = {r.headers["ce-connectionId"] for r in posts(handler_app, "connected")}
    assert len(seen) < 20  # the kill came in the middle of the delivery
    # The 10 connections open at the kill get theirs at the restart, after their connected.
    await restart_delivers_all(handler_app, serve, 20)
    reasons = [orjson.loads(r.body)["reason"] for r in posts(handler_app, "disconnected")]
    assert reasons.count("The service restarted.") == 10
    assert_connected_first(handler_app)
