"""The service as one node or as three nodes over Redis, for tests that must hold on both."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from tests.conftest import StartService
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


def on_node(url: str, first: ServiceRunner, node: ServiceRunner) -> str:
    """``url`` (issued by ``first``) pointed at ``node``."""
    return url.replace(f"//127.0.0.1:{first.port}/", f"//127.0.0.1:{node.port}/")
