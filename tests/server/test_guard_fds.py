"""The service at its file-descriptor limit (server/guard.py), in a subprocess whose
``RLIMIT_NOFILE`` is low: a flood of sockets that send nothing does not lock clients out,
and when every descriptor holds a live client, new sockets are closed at once (not left to
stall in the listen backlog) while the clients connected keep being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ACCESS_KEY
from tests.support.cli import spawn_cli
from tests.support.service import json_client
from webpubsub.protocol.tokens import issue_client_token

LIMIT = 200
"""The service's ``RLIMIT_NOFILE``: soft and hard."""
WAIT = 10.0

pytestmark = pytest.mark.e2e


class Service:
    """``webpubsub serve`` in a subprocess; its output is collected as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.port = 0
        self._reader: asyncio.Task[None] | None = None

    async def started(self) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            while not self.port:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise AssertionError("the service ended:\n" + "".join(self.lines))
                self.lines.append(line)
                if match := re.search(r"listening on http://127\.0\.0\.1:(\d+)", line):
                    self.port = int(match.group(1))
        self._reader = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self) -> str:
        audience = f"{self.endpoint}/client/hubs/chat"
        token = issue_client_token(ACCESS_KEY, audience=audience, now=time.time())
        return f"ws://127.0.0.1:{self.port}/client/hubs/chat?access_token={token}"

    async def stop(self) -> str:
        if self.proc.returncode is None:
            self.proc.terminate()
            async with asyncio.timeout(WAIT):
                await self.proc.wait()
        if self._reader is not None:
            await self._reader
        return "".join(self.lines)


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    config = tmp_path / "webpubsub.toml"
    config.write_text("[server]\nheader_timeout_seconds = 30.0\n")
    proc = await spawn_cli(
        *("serve", "--config", str(config), "--port", "0", "--access-key", ACCESS_KEY),
        preexec_fn=_low_limit,
        inherit=False,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": ":".join(sys.path),
            "XDG_DATA_HOME": os.environ["XDG_DATA_HOME"],  # this run's, not the user's
        },
    )
    service = Service(proc)
    try:
        await service.started()
        yield service
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def closed_promptly(reader: asyncio.StreamReader) -> bool:
    """Whether the service has closed this socket (EOF or reset) within WAIT."""
    try:
        async with asyncio.timeout(WAIT):
            return await reader.read(1) == b""
    except ConnectionError:
        return True


async def test_a_flood_of_silent_sockets_does_not_lock_clients_out(service: Service) -> None:
    """Twice as many silent sockets as the limit (the deadline is 30 s here, so none is
    reaped by time): each beyond the budget takes the place of the one that waited longest,
    and a client arriving during the flood is served."""
    flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(2 * LIMIT):
            flood.append(await asyncio.open_connection("127.0.0.1", service.port))
        async with aiohttp.ClientSession() as http:
            ws, _ = await json_client(http, service.url())
            await ws.send_json({"type": "ping"})
            assert await ws.receive_json(timeout=WAIT) == {"type": "pong"}
            async with http.get(f"{service.endpoint}/api/health") as resp:
                assert resp.status == 200
            await ws.close()
        assert await closed_promptly(flood[0][0])  # the longest-waiting made room
    finally:
        for _, writer in flood:
            writer.close()
    output = await service.stop()
    evicted = [line for line in output.splitlines() if "to make room" in line]
    assert evicted and all("from 127.0.0.1:" in line for line in evicted)
    assert len(evicted) <= 10, "\n".join(evicted)  # bounded, however many were closed
    assert "counted, not logged" in output
    assert "Traceback" not in output and "ERROR" not in output


async def test_at_the_limit_new_sockets_are_refused_and_the_clients_still_served(
    service: Service,
) -> None:
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=True)
    ) as http:
        clients: list[aiohttp.ClientWebSocketResponse] = []
        refused = 0
        try:
            for _ in range(LIMIT):  # bounded: the limit is reached well before
                try:
                    async with asyncio.timeout(WAIT):  # a refusal is prompt, never a stall
                        clients.append((await json_client(http, service.url()))[0])
                except (aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError):
                    refused += 1
                    if refused == 3:
                        break
            assert refused == 3 and len(clients) < LIMIT - 32
            for ws in (clients[0], clients[-1]):  # the service still serves its clients
                await ws.send_json({"type": "ping"})
                assert await ws.receive_json(timeout=WAIT) == {"type": "pong"}
            for ws in clients[: len(clients) // 2]:
                await ws.close()
            del clients[: len(clients) // 2]
            ws = await _connect_again(http, service)
            clients.append(ws)
        finally:
            for ws in clients:
                with contextlib.suppress(Exception):
                    await ws.close()
    output = await service.stop()
    lines = [line for line in output.splitlines() if "refused a connection" in line]
    assert lines and all("from 127.0.0.1:" in line for line in lines)
    assert all("access_token" not in line for line in output.splitlines())
    assert "Traceback" not in output and "ERROR" not in output


async def _connect_again(
    http: aiohttp.ClientSession, service: Service
) -> aiohttp.ClientWebSocketResponse:
    """A new client once descriptors are free again (the service sees the closes at once;
    a few attempts cover the closes it has not processed yet)."""
    for _ in range(20):
        try:
            ws, _ = await json_client(http, service.url())
        except (aiohttp.ClientConnectionError, aiohttp.WSServerHandshakeError):
            continue
        return ws
    raise AssertionError("no client could connect after others left")
