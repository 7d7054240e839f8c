"""The ``webpubsub`` command as a user runs it: real subprocesses, real signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from click.testing import CliRunner

from tests.conftest import ACCESS_KEY
from webpubsub.cli import main

GOOD_CONFIG = """
[hubs.chat]
anonymous_connect = false
[[hubs.chat.event_handlers]]
url_template = "http://localhost:5000/eventhandler"
user_event_pattern = "*"
system_events = ["connect", "connected", "disconnected"]
"""


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "webpubsub.toml"
    path.write_text(GOOD_CONFIG)
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 0, result.output
    assert f"OK: {path}" in result.output


def test_check_config_reports_file_key_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_CONFIG.replace('"connect", ', '"conect", ') + "\n[server]\nprot = 1\n")
    result = CliRunner().invoke(main, ["check-config", str(path)])
    assert result.exit_code == 1
    assert f"{path}: hubs.chat.event_handlers[0].system_events" in result.output
    assert "conect" in result.output
    assert f"{path}: server.prot: unknown key" in result.output


def test_serve_refuses_an_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[hubs.chat]\nanonymous_connect = 3\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(path)])
    assert result.exit_code == 1
    assert "hubs.chat.anonymous_connect" in result.output


def test_token_prints_a_client_url() -> None:
    cs = f"Endpoint=http://localhost:8080;AccessKey={ACCESS_KEY};Version=1.0;"
    result = CliRunner().invoke(
        main, ["token", "--connection-string", cs, "--hub", "chat", "--user", "alice"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ws://localhost:8080/client/hubs/chat?access_token=")


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("WEBPUBSUB_ACCESS_KEY", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "webpubsub.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )


async def _read_until(proc: asyncio.subprocess.Process, pattern: str) -> re.Match[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    async with asyncio.timeout(20):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("process ended early:\n" + "".join(seen))
            seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.e2e
async def test_serve_prints_a_working_connection_string_and_stops_on_ctrl_c(
    processes: list[asyncio.subprocess.Process],
) -> None:
    proc = await _spawn("serve", "--port", "0")
    processes.append(proc)
    await _read_until(proc, r"generated one")
    cs = (await _read_until(proc, r"Connection string: (\S+)")).group(1)
    match = re.fullmatch(r"Endpoint=http://localhost:(\d+);AccessKey=([^;]+);Version=1\.0;", cs)
    assert match, cs  # the port is inside the endpoint; no Port= key
    port = int(match.group(1))

    from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

    async with aiohttp.ClientSession() as http:
        for method in ("GET", "HEAD"):
            async with http.request(method, f"http://127.0.0.1:{port}/api/health") as resp:
                assert resp.status == 200
        cs_ip = cs.replace("localhost", "127.0.0.1")
        async with WebPubSubServiceClient.from_connection_string(cs_ip, hub="h") as client:
            token = await client.get_client_access_token(user_id="u")
            ws = await http.ws_connect(token["url"])
            assert await client.user_exists("u")
            proc.send_signal(signal.SIGINT)
            closed = await ws.receive(timeout=10)
            assert closed.type is aiohttp.WSMsgType.CLOSE
            assert closed.data == 1001

    async with asyncio.timeout(15):
        assert await proc.wait() == 0


@pytest.mark.e2e
async def test_demo_wires_service_and_chat(processes: list[asyncio.subprocess.Process]) -> None:
    proc = await _spawn("demo", "--port", "0", "--chat-port", "0")
    processes.append(proc)
    chat_port = int((await _read_until(proc, r"http://localhost:(\d+)/ in two")).group(1))
    base = f"http://127.0.0.1:{chat_port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200
            assert "<input" in await resp.text()
        async with http.get(f"{base}/negotiate", params={"id": "alice"}) as resp:
            url = (await resp.text()).replace("localhost", "127.0.0.1")
        ws = await http.ws_connect(url)
        assert (await ws.receive(timeout=10)).data == "[SYSTEM] alice joined."
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "[alice] hello"
        await ws.close()
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        assert await proc.wait() == 0


def test_bad_flags_are_one_line_errors_not_tracebacks() -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "70000", "--access-key", ACCESS_KEY])
    assert result.exit_code == 1
    assert "server.port: expected an integer 0..65535, got 70000" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["token", "--connection-string", "bad", "--hub", "h"])
    assert result.exit_code == 2
    assert "Invalid value for --connection-string" in result.output


def test_serve_on_a_taken_port_says_so(unused_socket: socket.socket) -> None:
    port = unused_socket.getsockname()[1]
    result = CliRunner().invoke(main, ["serve", "--port", str(port), "--access-key", ACCESS_KEY])
    assert result.exit_code == 1
    assert "Cannot start" in result.output and "address already in use" in result.output


def test_token_signs_with_the_first_of_several_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    other = "another-access-key-0123456789-abcdefghijkl"
    monkeypatch.setenv("WEBPUBSUB_ACCESS_KEY", f"{ACCESS_KEY},{other}")
    monkeypatch.delenv("WebPubSubConnectionString", raising=False)
    result = CliRunner().invoke(main, ["token", "--hub", "chat", "--user", "u"])
    assert result.exit_code == 0, result.output
    token = result.output.strip().split("access_token=", 1)[1]
    claims = jwt.decode(token, ACCESS_KEY, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["sub"] == "u"


@pytest.fixture
def unused_socket() -> Iterator[socket.socket]:
    """A socket bound to a free port and kept open, so that the port is taken."""
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()
