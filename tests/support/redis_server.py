"""A real ``redis-server`` for tests: started on a free loopback port in a temp dir,
ready when it says so, stopped (or killed) at the end. Nothing is persisted. It may
serve TLS only (``rediss://``) and ask for a password, as a managed Redis does."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis.asyncio as aioredis

from webpubsub.devcert import DevCert

READY = b"Ready to accept connections"
START_TIMEOUT = 10.0


class RedisServer:
    def __init__(
        self, directory: Path, *, tls: DevCert | None = None, password: str | None = None
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.password = password
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL a client needs: with TLS, ``rediss://`` and the CA to trust."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca_cert}"

    def _listen_arguments(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            *("--port", "0", "--tls-port", str(self.port)),
            *("--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)),
            *("--tls-ca-cert-file", str(self.tls.ca_cert), "--tls-auth-clients", "no"),
        ]

    def start(self, port: int | None = None) -> RedisServer:
        """Start on ``port`` (default: a free one)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is needed for the backplane tests: run scripts/setup.sh --dev "
                "(or apt-get install redis-server)"
            )
        self.port = port or _free_port()
        self._proc = subprocess.Popen(  # noqa: S603 - a fixed binary, our own arguments
            [
                binary,
                *self._listen_arguments(),
                *(("--requirepass", self.password) if self.password else ()),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        seen = b""
        while READY not in seen:  # bounded: the process ends or the deadline passes
            line = self._proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{seen.decode(errors='replace')}")
            seen += line
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Stop, then start again on the same port, empty (a restart without persistence)."""
        port = self.port
        self.stop()
        self.start(port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_for_hash_size(
    client: aioredis.Redis, key: str, size: int, timeout: float = 10.0
) -> None:
    """Wait until hash ``key`` has ``size`` fields, woken by Redis's keyspace
    notifications (switched on for hashes and generic commands here), bounded."""
    await client.config_set("notify-keyspace-events", "Khg")
    db = client.connection_pool.connection_kwargs.get("db", 0)
    pubsub = client.pubsub()
    await pubsub.subscribe(f"__keyspace@{db}__:{key}")
    try:
        async with asyncio.timeout(timeout):
            while await client.hlen(key) != size:  # type: ignore[misc]
                await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
