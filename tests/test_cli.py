"""The ``webpubsub`` command as a user runs it: real subprocesses, real signals."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import jwt
import pytest
from click.testing import CliRunner

from tests.conftest import ACCESS_KEY
from tests.support.cli import spawn_cli
from tests.support.redis_server import RedisServer
from tests.support.service import json_client, next_data
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


async def _spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await spawn_cli(*args, env=env)


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
    await _read_until(proc, rf"Portal: http://localhost:{port}/portal/login\?token=\S+")

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
@pytest.mark.parametrize("tls", [False, True], ids=["http", "tls"])
async def test_demo_wires_service_and_chat(
    processes: list[asyncio.subprocess.Process], tmp_path: Path, tls: bool
) -> None:
    import ssl

    from webpubsub import devcert

    flags = ["--tls"] if tls else []
    env = {devcert.DIR_ENV: str(tmp_path)}
    proc = await _spawn("demo", "--port", "0", "--chat-port", "0", *flags, env=env)
    processes.append(proc)
    link = (
        await _read_until(proc, r"Portal: (https?://localhost:\d+/portal/login\?token=\S+)")
    ).group(1)
    chat_port = int((await _read_until(proc, r"http://localhost:(\d+)/ in two")).group(1))
    base = f"http://127.0.0.1:{chat_port}"
    # With --tls the client trusts the development CA, as the printed instructions say.
    verify = ssl.create_default_context(cafile=str(tmp_path / "ca.pem")) if tls else True
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=verify)) as http:
        async with http.get(f"{base}/") as resp:
            assert resp.status == 200
            assert "<input" in await resp.text()
        async with http.get(f"{base}/negotiate", params={"id": "alice"}) as resp:
            url = await resp.text()
        assert url.startswith("wss://localhost:" if tls else "ws://localhost:")
        if not tls:
            url = url.replace("localhost", "127.0.0.1")
        ws = await http.ws_connect(url)
        # Both lines are broadcast by the chat app through the REST API (https with --tls).
        assert (await ws.receive(timeout=10)).data == "[SYSTEM] alice joined."
        await ws.send_str("hello")
        assert (await ws.receive(timeout=10)).data == "[alice] hello"
        await ws.close()
        # The printed link logs in to the portal, which shows the chat's traffic.
        async with http.get(link, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/portal"
            session = resp.cookies["webpubsub_portal"].value
        trace_url = link.partition("/portal/")[0] + "/portal/api/trace"
        async with http.get(trace_url, headers={"Cookie": f"webpubsub_portal={session}"}) as resp:
            records = (await resp.json())["records"]
        assert {"connected", "message-in", "rest"} <= {r["type"] for r in records}
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


# -- TLS -------------------------------------------------------------------------------


def test_dev_cert_creates_once_and_says_how_to_trust_it(tmp_path: Path) -> None:
    first = CliRunner().invoke(main, ["dev-cert", "--dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "created the CA, issued a server certificate" in first.output
    ca = tmp_path / "ca.pem"
    assert f"export NODE_EXTRA_CA_CERTS={ca}" in first.output
    assert f"export SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca}" in first.output
    assert "update-ca-certificates" in first.output or "certutil" in first.output
    assert "PRIVATE KEY" not in first.output
    before = ca.read_bytes(), (tmp_path / "cert.pem").read_bytes()

    again = CliRunner().invoke(main, ["dev-cert", "--dir", str(tmp_path)])
    assert again.exit_code == 0 and "(already there)" in again.output
    assert (ca.read_bytes(), (tmp_path / "cert.pem").read_bytes()) == before


def test_serve_reports_an_unusable_certificate_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--port",
            "0",
            "--access-key",
            ACCESS_KEY,
            "--tls-cert",
            str(tmp_path / "cert.pem"),
            "--tls-key",
            str(tmp_path / "key.pem"),
        ],
    )
    assert result.exit_code == 1
    assert f"TLS: cannot use certificate {tmp_path / 'cert.pem'}" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["serve", "--tls-cert", str(tmp_path / "cert.pem")])
    assert result.exit_code == 1
    assert "server.tls_key: required with server.tls_cert" in result.output


def test_check_config_loads_the_tls_certificate(tmp_path: Path) -> None:
    from webpubsub import devcert

    dev, _ = devcert.ensure(tmp_path / "dev")
    good = tmp_path / "good.toml"
    good.write_text(f'[server]\ntls_cert = "{dev.cert}"\ntls_key = "{dev.key}"\n')
    assert CliRunner().invoke(main, ["check-config", str(good)]).exit_code == 0
    swapped = tmp_path / "swapped.toml"
    swapped.write_text(f'[server]\ntls_cert = "{dev.key}"\ntls_key = "{dev.cert}"\n')
    result = CliRunner().invoke(main, ["check-config", str(swapped)])
    assert result.exit_code == 1
    assert "TLS: cannot use certificate" in result.output


@pytest.mark.e2e
async def test_serve_tls_uses_the_dev_cert_and_reloads_it_on_sighup(
    processes: list[asyncio.subprocess.Process], tmp_path: Path
) -> None:
    import ssl

    from cryptography import x509

    from webpubsub import devcert

    proc = await _spawn("serve", "--port", "0", "--tls", env={devcert.DIR_ENV: str(tmp_path)})
    processes.append(proc)
    await _read_until(proc, r"issued a server certificate")
    port = int((await _read_until(proc, r"Listening on https://127\.0\.0\.1:(\d+)")).group(1))
    cs = (await _read_until(proc, r"Connection string: (\S+)")).group(1)
    assert cs.startswith(f"Endpoint=https://localhost:{port};")
    await _read_until(proc, rf"NODE_EXTRA_CA_CERTS={re.escape(str(tmp_path / 'ca.pem'))}")

    context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))

    async def served_serial() -> int:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()
        return x509.load_der_x509_certificate(der).serial_number

    first = await served_serial()
    # Issue a new certificate in place, as a renewal does.
    (tmp_path / "cert.pem").unlink()
    devcert.ensure(tmp_path)
    renewed = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    assert renewed.serial_number != first
    proc.send_signal(signal.SIGHUP)
    await _read_until(proc, r"TLS certificate reloaded")
    assert await served_serial() == renewed.serial_number
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        assert await proc.wait() == 0


# -- Redis ------------------------------------------------------------------------------


def test_serve_says_in_one_line_when_redis_cannot_be_reached(unused_socket: socket.socket) -> None:
    # A port where a socket is bound but nothing answers Redis's protocol: refused at once.
    port = unused_socket.getsockname()[1]
    result = CliRunner().invoke(
        main,
        [
            "serve",
            "--port",
            "0",
            "--access-key",
            ACCESS_KEY,
            "--redis",
            f"redis://:pw@127.0.0.1:{port}",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "cannot reach Redis at redis://***@127.0.0.1:" in result.output
    assert "pw" not in result.output and "Traceback" not in result.output


@pytest.mark.e2e
async def test_two_serve_processes_over_redis_are_one_service(
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

    config = tmp_path / "webpubsub.toml"
    config.write_text(f'[backplane]\nkey_prefix = "{redis_prefix}"\n')
    env = {"WEBPUBSUB_REDIS_URL": redis_server.url}
    ports = []
    for node in ("first", "second"):
        proc = await _spawn(
            "serve",
            "--port",
            "0",
            "--access-key",
            ACCESS_KEY,
            "--node-id",
            node,
            "--config",
            str(config),
            env=env,
        )
        processes.append(proc)
        ports.append(
            int((await _read_until(proc, r"Listening on http://127\.0\.0\.1:(\d+)")).group(1))
        )
        await _read_until(proc, rf"Node {node} joined the Redis backplane")
    first, second = (
        f"Endpoint=http://127.0.0.1:{p};AccessKey={ACCESS_KEY};Version=1.0;" for p in ports
    )
    async with (
        aiohttp.ClientSession() as http,
        WebPubSubServiceClient.from_connection_string(first, hub="h") as one,
        WebPubSubServiceClient.from_connection_string(second, hub="h") as two,
    ):
        ws, _ = await json_client(http, (await two.get_client_access_token(user_id="u"))["url"])
        assert await one.user_exists("u")
        await one.send_to_user("u", "across", content_type="text/plain")
        assert await next_data(ws, 10) == "across"
        async with http.get(f"http://127.0.0.1:{ports[0]}/api/health") as resp:
            assert (await resp.json())["nodeId"] == "first"
        # SIGTERM on the second node: its client's presence goes at once.
        processes[1].send_signal(signal.SIGTERM)
        disconnected = await ws.receive_json(timeout=10)
        assert (disconnected["type"], disconnected["event"]) == ("system", "disconnected")
        assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
        async with asyncio.timeout(15):
            assert await processes[1].wait() == 0
        assert not await one.user_exists("u")


def test_workers_need_redis() -> None:
    result = CliRunner().invoke(main, ["serve", "--workers", "2", "--access-key", ACCESS_KEY])
    assert result.exit_code == 2
    assert "--workers needs the Redis backplane" in result.output


@pytest.mark.e2e
async def test_serve_workers_share_one_port_as_nodes_of_one_service(
    processes: list[asyncio.subprocess.Process],
    redis_server: RedisServer,
    redis_prefix: str,
    tmp_path: Path,
) -> None:
    config = tmp_path / "webpubsub.toml"
    config.write_text(f'[backplane]\nkey_prefix = "{redis_prefix}"\n')
    proc = await _spawn(
        "serve",
        "--workers",
        "2",
        "--port",
        "0",
        "--access-key",
        ACCESS_KEY,
        "--redis",
        redis_server.url,
        "--node-id",
        "w",
        "--config",
        str(config),
    )
    processes.append(proc)
    port = int((await _read_until(proc, r"Starting 2 workers on port (\d+)")).group(1))
    for _ in range(2):
        await _read_until(proc, r"Node w-\d joined the Redis backplane")
    seen: set[str] = set()
    async with aiohttp.ClientSession() as http:
        for _ in range(40):  # bounded: new connections are spread over the workers
            headers = {"Connection": "close"}
            async with http.get(f"http://127.0.0.1:{port}/api/health", headers=headers) as resp:
                seen.add((await resp.json())["nodeId"])
            if len(seen) == 2:
                break
    assert seen == {"w-1", "w-2"}
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        assert await proc.wait() == 0
