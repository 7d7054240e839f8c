"""TLS on the service's port: the official SDKs over https:// and wss://, trusting the
development CA the way the docs say, and refusing what they must refuse.

No client here turns verification off: every one is given the development CA (or
nothing) and must verify the service's certificate against it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from azure.core.exceptions import ServiceRequestError
from azure.messaging.webpubsubclient import WebPubSubClient as SyncWebPubSubClient
from azure.messaging.webpubsubclient.models import CallbackType, OnServerDataMessageArgs
from azure.messaging.webpubsubservice import WebPubSubServiceClient as SyncClient
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient as AioClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import StartService, tls_files
from tests.integration.test_js_clients import node, of, run_node
from webpubsub import devcert
from webpubsub.errors import ConfigError
from webpubsub.server.app import ServiceRunner

__all__ = ["node"]  # the session fixture, shared with test_js_clients

WAIT = 10.0
SUPPORT = Path(__file__).resolve().parents[1] / "support"


def client_context(ca: Path) -> ssl.SSLContext:
    """What a client does with the development CA: verify against it, host names included."""
    return ssl.create_default_context(cafile=str(ca))


def write_cert(directory: Path, cert: x509.Certificate, key: Any) -> dict[str, object]:
    """Write a certificate and key as PEM files; the ``start_service`` settings for them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(devcert.pem_key(key))
    return {"tls_cert": str(directory / "cert.pem"), "tls_key": str(directory / "key.pem")}


@pytest.fixture(scope="module")
def other_ca_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A localhost certificate from a CA nobody here trusts."""
    now = datetime.datetime.now(datetime.UTC)
    cert, key = devcert.issue_server_cert(
        devcert.create_ca(now), devcert.LOCAL_NAMES, not_before=now
    )
    return write_cert(tmp_path_factory.mktemp("other-ca"), cert, key)


@pytest.fixture(scope="module")
def expired_files(
    dev_cert: devcert.DevCert, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, object]:
    """A localhost certificate from the trusted development CA that expired yesterday."""
    ca = _load_ca(dev_cert)
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    cert, key = devcert.issue_server_cert(
        ca, devcert.LOCAL_NAMES, not_before=start, validity=datetime.timedelta(days=29)
    )
    return write_cert(tmp_path_factory.mktemp("expired"), cert, key)


def _load_ca(dev: devcert.DevCert) -> Any:
    cert = x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(dev.ca_key.read_bytes(), password=None)
    return cert, key


@pytest.fixture
async def tls_service(start_service: StartService, dev_cert: devcert.DevCert) -> ServiceRunner:
    return await start_service(**tls_files(dev_cert))


@pytest.fixture
async def http(dev_cert: devcert.DevCert) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_context(dev_cert.ca_cert))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


def serial_of(ws: aiohttp.ClientWebSocketResponse) -> int:
    """The serial number of the certificate the service presented on ``ws``'s handshake."""
    transport = ws._response.connection.transport  # type: ignore[union-attr]
    assert transport is not None
    der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


# -- serving ---------------------------------------------------------------------------


async def test_the_endpoint_and_connection_string_name_https(tls_service: ServiceRunner) -> None:
    assert tls_service.endpoint == f"https://127.0.0.1:{tls_service.port}"
    assert tls_service.connection_string.startswith(
        f"Endpoint=https://127.0.0.1:{tls_service.port};"
    )


async def test_plain_http_on_a_tls_port_gets_no_answer(
    tls_service: ServiceRunner,
) -> None:
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{tls_service.port}/api/health") as resp:
                await resp.read()


@pytest.mark.parametrize("kind", ["sync", "aio"])
async def test_python_service_sdk_over_tls_tokens_sends_and_paging(
    tls_service: ServiceRunner,
    dev_cert: devcert.DevCert,
    http: aiohttp.ClientSession,
    kind: str,
) -> None:
    ca = str(dev_cert.ca_cert)
    cs = tls_service.connection_string
    if kind == "sync":
        sync = SyncClient.from_connection_string(cs, hub="chat", connection_verify=ca)

        async def call(name: str, *args: Any, **kwargs: Any) -> Any:
            return await asyncio.to_thread(getattr(sync, name), *args, **kwargs)

        def pages(group: str) -> list[str]:
            return [m.connection_id for m in sync.list_connections(group=group, maxpagesize=1)]

        async def listed(group: str) -> list[str]:
            return await asyncio.to_thread(pages, group)
    else:
        aio = AioClient.from_connection_string(cs, hub="chat", connection_verify=ca)

        async def call(name: str, *args: Any, **kwargs: Any) -> Any:
            return await getattr(aio, name)(*args, **kwargs)

        async def listed(group: str) -> list[str]:
            found = aio.list_connections(group=group, maxpagesize=1)
            return [m.connection_id async for m in found]

    token = await call("get_client_access_token", user_id="alice", groups=["g"])
    assert token["url"].startswith(f"wss://127.0.0.1:{tls_service.port}/client/hubs/chat?")
    sockets = [await http.ws_connect(token["url"]) for _ in range(3)]
    await call("send_to_all", {"over": "tls"})
    for ws in sockets:
        assert json.loads((await ws.receive(timeout=WAIT)).data) == {"over": "tls"}
    # Three pages of one, each nextLink an https:// URL the SDK follows.
    assert len(set(await listed("g"))) == 3
    for ws in sockets:
        await ws.close()
    if kind == "sync":
        sync.close()
    else:
        await aio.close()


async def test_python_client_sdk_sync_over_tls_with_ssl_cert_file(
    tls_service: ServiceRunner, dev_cert: devcert.DevCert, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the docs tell a Python user: SSL_CERT_FILE names the development CA.
    monkeypatch.setenv("SSL_CERT_FILE", str(dev_cert.ca_cert))
    monkeypatch.delenv("WEBSOCKET_CLIENT_CA_BUNDLE", raising=False)
    service = AioClient.from_connection_string(
        tls_service.connection_string, hub="chat", connection_verify=str(dev_cert.ca_cert)
    )
    url = (await service.get_client_access_token(user_id="bob"))["url"]
    received: asyncio.Queue[Any] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def on_message(args: OnServerDataMessageArgs) -> None:
        loop.call_soon_threadsafe(received.put_nowait, args.data)

    client = SyncWebPubSubClient(url)
    client.subscribe(CallbackType.SERVER_MESSAGE, on_message)
    await asyncio.to_thread(client.open)
    try:
        await service.send_to_user("bob", "hello over wss", content_type="text/plain")
        assert await asyncio.wait_for(received.get(), WAIT) == "hello over wss"
    finally:
        await asyncio.to_thread(client.close)
        await service.close()


async def test_python_client_sdk_aio_over_tls_in_a_process_with_ssl_cert_file(
    tls_service: ServiceRunner, dev_cert: devcert.DevCert
) -> None:
    # aiohttp reads the default CAs when it is imported: SSL_CERT_FILE must be set before
    # the process starts, as a user's shell does.
    async with AioClient.from_connection_string(
        tls_service.connection_string, hub="chat", connection_verify=str(dev_cert.ca_cert)
    ) as service:
        url = (await service.get_client_access_token(user_id="carol"))["url"]
        proc = await _spawn_aio_client(url, {"SSL_CERT_FILE": str(dev_cert.ca_cert)})
        try:
            assert await _line(proc) == {"kind": "connected"}
            await service.send_to_user("carol", "hello aio", content_type="text/plain")
            assert await _line(proc) == {"kind": "message", "data": "hello aio"}
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


# -- refusing --------------------------------------------------------------------------


@pytest.mark.parametrize("certificate", ["other_ca_files", "expired_files"])
async def test_python_sdks_refuse_an_untrusted_or_expired_certificate(
    start_service: StartService,
    dev_cert: devcert.DevCert,
    certificate: str,
    request: pytest.FixtureRequest,
) -> None:
    runner = await start_service(**request.getfixturevalue(certificate))
    ca = str(dev_cert.ca_cert)
    reason = "unable to get local issuer" if certificate == "other_ca_files" else "expired"

    sync = SyncClient.from_connection_string(
        runner.connection_string, hub="chat", connection_verify=ca, retry_total=0
    )
    with pytest.raises(ServiceRequestError, match=reason):
        await asyncio.to_thread(sync.send_to_all, "x", content_type="text/plain")
    sync.close()
    async with AioClient.from_connection_string(
        runner.connection_string, hub="chat", connection_verify=ca, retry_total=0
    ) as aio:
        with pytest.raises(ServiceRequestError, match=reason):
            await aio.send_to_all("x", content_type="text/plain")
        url = (await aio.get_client_access_token(user_id="u"))["url"]
    connector = aiohttp.TCPConnector(ssl=client_context(dev_cert.ca_cert))
    async with aiohttp.ClientSession(connector=connector) as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match=reason):
            await http.ws_connect(url)
    proc = await _spawn_aio_client(url, {"SSL_CERT_FILE": ca})
    try:
        line = await _line(proc)
    finally:
        await proc.wait()
    assert line["kind"] == "refused" and reason in line["error"], line


@pytest.mark.e2e
@pytest.mark.parametrize("certificate", ["other_ca_files", "expired_files"])
async def test_js_sdks_refuse_an_untrusted_or_expired_certificate(
    node: str,
    start_service: StartService,
    dev_cert: devcert.DevCert,
    certificate: str,
    request: pytest.FixtureRequest,
) -> None:
    runner = await start_service(**request.getfixturevalue(certificate))
    async with AioClient.from_connection_string(runner.connection_string, hub="chat") as sdk:
        url = (await sdk.get_client_access_token(user_id="u"))["url"]

    obs = await run_node(
        node, "tls_refused.mjs", runner.connection_string, "chat", url, trust=dev_cert.ca_cert
    )

    code = (
        "UNABLE_TO_VERIFY_LEAF_SIGNATURE" if certificate == "other_ca_files" else "CERT_HAS_EXPIRED"
    )
    assert of(obs, "sent") == []
    refused = {o["what"]: o["code"] for o in of(obs, "refused")}
    assert refused["service"] == code
    assert code in str(of(obs, "refused", what="client")[0]), obs


# -- certificates: loading and reloading -------------------------------------------


async def test_an_unusable_certificate_is_a_clear_error(
    dev_cert: devcert.DevCert, other_ca_files: dict[str, object], tmp_path: Path
) -> None:
    from tests.conftest import make_config

    missing = make_config(tls_cert=str(tmp_path / "nope.pem"), tls_key=str(dev_cert.key))
    with pytest.raises(ConfigError, match=r"TLS: cannot read .*nope\.pem"):
        await ServiceRunner(missing).start()
    mismatched = make_config(tls_cert=str(dev_cert.cert), tls_key=str(other_ca_files["tls_key"]))
    with pytest.raises(ConfigError, match="key values mismatch"):
        await ServiceRunner(mismatched).start()


async def test_reload_serves_the_new_certificate_and_keeps_open_connections(
    start_service: StartService,
    dev_cert: devcert.DevCert,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    ca = _load_ca(dev_cert)
    now = datetime.datetime.now(datetime.UTC)
    first = devcert.issue_server_cert(ca, devcert.LOCAL_NAMES, not_before=now)
    files = write_cert(tmp_path, *first)
    runner = await start_service(**files)
    async with AioClient.from_connection_string(
        runner.connection_string, hub="chat", connection_verify=str(dev_cert.ca_cert)
    ) as sdk:
        before = await http.ws_connect((await sdk.get_client_access_token(user_id="a"))["url"])
        assert serial_of(before) == first[0].serial_number

        second = devcert.issue_server_cert(ca, devcert.LOCAL_NAMES, not_before=now)
        write_cert(tmp_path, *second)
        runner.reload_tls()

        fresh = aiohttp.TCPConnector(ssl=client_context(dev_cert.ca_cert))
        async with aiohttp.ClientSession(connector=fresh) as again:
            after = await again.ws_connect((await sdk.get_client_access_token(user_id="b"))["url"])
            assert serial_of(after) == second[0].serial_number
            # The connection opened before the reload is still served.
            await sdk.send_to_all("both", content_type="text/plain")
            assert (await before.receive(timeout=WAIT)).data == "both"
            assert (await after.receive(timeout=WAIT)).data == "both"
            await after.close()

        # A broken file is refused and the certificate in use stays.
        await asyncio.to_thread(Path(str(files["tls_key"])).write_text, "not a key")
        with pytest.raises(ConfigError, match="TLS: cannot use certificate"):
            runner.reload_tls()
        fresh = aiohttp.TCPConnector(ssl=client_context(dev_cert.ca_cert))
        async with aiohttp.ClientSession(connector=fresh) as third:
            ws = await third.ws_connect((await sdk.get_client_access_token(user_id="c"))["url"])
            assert serial_of(ws) == second[0].serial_number
            await ws.close()
        await before.close()


# -- helpers ---------------------------------------------------------------------------


async def _spawn_aio_client(url: str, env: dict[str, str]) -> asyncio.subprocess.Process:
    full = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(SUPPORT / "tls_aio_client.py"),
        url,
        stdout=asyncio.subprocess.PIPE,
        env={**full, **env},
    )


async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    async with asyncio.timeout(WAIT * 2):
        line = await proc.stdout.readline()
    assert line, "the client process ended without a word"
    parsed: dict[str, Any] = json.loads(line)
    return parsed
