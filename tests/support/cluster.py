"""The service as one node or as three nodes over Redis, for tests that must hold on both."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

from tests.conftest import ACCESS_KEY, StartService
from tests.support.cli import spawn_cli
from tests.support.redis_server import RedisServer
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.server.app import ServiceRunner

TOPOLOGIES = ["one node", "three nodes over Redis"]


async def start_nodes(
    request: pytest.FixtureRequest,
    start_service: StartService,
    keys: Sequence[str] | None = None,
    **server: object,
) -> list[ServiceRunner]:
    """``request.param`` of :data:`TOPOLOGIES`: the nodes, the one REST calls go to first.

    Behind one load balancer every node has the same public endpoint: here, the first's,
    so that tokens issued for it are good on every node.
    """
    extra: dict[str, object] = {**server, **({"keys": tuple(keys)} if keys else {})}
    if request.param == TOPOLOGIES[0]:
        return [await start_service(**extra)]
    redis: RedisServer = request.getfixturevalue("redis_server")
    prefix: str = request.getfixturevalue("redis_prefix")
    first = await start_service(
        backplane=RedisBackplane(redis.url, prefix=prefix, node_id="rest"), **extra
    )
    others = [
        await start_service(
            backplane=RedisBackplane(redis.url, prefix=prefix, node_id=f"clients{i}"),
            public_endpoint=first.endpoint,
            **extra,
        )
        for i in (1, 2)
    ]
    return [first, *others]


async def presence_written(node: ServiceRunner) -> None:
    """Wait (bounded) until ``node`` has written its presence where the others read it."""
    if isinstance(node.backplane, RedisBackplane):
        async with asyncio.timeout(5):
            await node.backplane.flushed()


def service_at(runner_or_endpoint: ServiceRunner | str) -> WebPubSubServiceClient:
    """The service SDK without retries (a failure must show), for a runner or an endpoint."""
    if isinstance(runner_or_endpoint, ServiceRunner):
        cs = runner_or_endpoint.connection_string
    else:
        cs = f"Endpoint={runner_or_endpoint};AccessKey={ACCESS_KEY};Version=1.0;"
    return WebPubSubServiceClient.from_connection_string(cs, hub="chat", retry_total=0)


def on_node(url: str, first: ServiceRunner, node: ServiceRunner) -> str:
    """``url`` (issued by ``first``) pointed at ``node``."""
    return url.replace(f"//127.0.0.1:{first.port}/", f"//127.0.0.1:{node.port}/")


async def spawn_node(
    tmp_path: Path,
    server: RedisServer,
    prefix: str,
    handler_url: str,
    *,
    heartbeat: float = 1.0,
    system_events: Sequence[str] = ("disconnected",),
    wait: float = 10.0,
) -> tuple[asyncio.subprocess.Process, str]:
    """A ``webpubsub serve`` node ``victim`` in its own process (to be SIGKILLed), its
    event queue in ``tmp_path``; its endpoint."""
    config = tmp_path / "victim.toml"
    events = ", ".join(f'"{e}"' for e in system_events)
    config.write_text(
        f'[server]\ndata_dir = "{tmp_path / "victim-data"}"\n'
        f'[backplane]\nredis_url = "{server.url}"\nkey_prefix = "{prefix}"\n'
        f'node_id = "victim"\nheartbeat_timeout_seconds = {heartbeat}\n'
        f'[hubs.chat]\n[[hubs.chat.event_handlers]]\nurl_template = "{handler_url}"\n'
        f'system_events = [{events}]\nuser_event_pattern = "*"\n'
    )
    proc = await spawn_cli(
        "serve", "--port", "0", "--access-key", ACCESS_KEY, "--config", str(config)
    )
    assert proc.stdout is not None
    async with asyncio.timeout(wait):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "the node ended before it listened"
            if match := re.search(r"Listening on http://127\.0\.0\.1:(\d+)", line):
                return proc, f"http://127.0.0.1:{match.group(1)}"
