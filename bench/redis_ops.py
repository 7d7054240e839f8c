"""Redis commands per operation of the Redis backplane, counted with ``INFO commandstats``.

Two nodes (in this process) share a ``redis-server`` of the benchmark's own on loopback.
For each operation the counters are reset, the operation is repeated ``--repeat`` times,
and the commands Redis executed are divided by the repeats (``EVALSHA`` counts as one
command: the Lua script's inner calls are listed apart, as Redis counts them).
Heartbeats run every few seconds and add a handful of commands to a whole window; over
hundreds of repeats they do not show in the per-operation figures.

    .venv/bin/python bench/redis_ops.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Awaitable, Callable

import aiohttp
import redis.asyncio as aioredis

sys.path.insert(0, os.path.dirname(__file__))
from broadcast import ACCESS_KEY, RedisProcess

HUB = "ops"
COMMAND = shlex.join([os.path.relpath(sys.executable), *sys.argv])


async def counts(
    client: aioredis.Redis, action: Callable[[], Awaitable[None]], repeat: int
) -> dict[str, float]:
    await client.config_resetstat()
    for _ in range(repeat):
        await action()
    stats = await client.info("commandstats")
    out: dict[str, float] = {}
    for name, value in stats.items():
        command = name.removeprefix("cmdstat_")
        if command in ("config|resetstat", "info", "config"):
            continue
        out[command] = value["calls"] / repeat
    return dict(sorted(out.items()))


async def main(repeat: int) -> None:
    from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

    from webpubsub.backplane.redis import RedisBackplane
    from webpubsub.config import default_config
    from webpubsub.server.app import ServiceRunner

    redis = RedisProcess()
    runners: list[ServiceRunner] = []
    try:
        config = default_config().with_overrides(host="127.0.0.1", port=0, access_keys=ACCESS_KEY)
        for i in range(2):
            plane = RedisBackplane(redis.url, node_id=f"ops{i}", heartbeat_timeout=15.0)
            runner = ServiceRunner(config, backplane=plane, advertised_host="127.0.0.1")
            await runner.start()
            runners.append(runner)
        a, b = runners
        stats = aioredis.Redis.from_url(redis.url)
        async with (
            aiohttp.ClientSession() as http,
            WebPubSubServiceClient.from_connection_string(a.connection_string, hub=HUB) as rest,
            WebPubSubServiceClient.from_connection_string(b.connection_string, hub=HUB) as on_b,
        ):
            roles = ["webpubsub.joinLeaveGroup"]
            url = (await on_b.get_client_access_token(user_id="u", roles=roles))["url"]
            ws = await http.ws_connect(url, protocols=("json.webpubsub.azure.v1",))
            connected = json.loads((await ws.receive(timeout=5)).data)
            cid = connected["connectionId"]
            plane_b = b.backplane
            assert isinstance(plane_b, RedisBackplane)
            ack_ids = iter(range(1, 10 * repeat + 10))

            async def request(frame: dict[str, object]) -> None:
                await ws.send_str(json.dumps({**frame, "ackId": next(ack_ids)}))
                while (ack := json.loads((await ws.receive(timeout=5)).data))["type"] != "ack":
                    pass  # a message sent to this user earlier
                assert ack["success"], ack

            async def connect_and_leave() -> None:
                other = await http.ws_connect(url)
                await other.close()
                assert b.node is not None
                await plane_b.flushed()

            async def join_leave() -> None:
                await request({"type": "joinGroup", "group": "g"})
                await request({"type": "leaveGroup", "group": "g"})

            async def send_all() -> None:
                await rest.send_to_all(b"x", content_type="application/octet-stream")
                await ws.receive(timeout=5)

            operations: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("REST send to all (1 recipient on the other node)", send_all),
                (
                    "REST send to user",
                    lambda: rest.send_to_user("u", b"x", content_type="application/octet-stream"),
                ),
                ("REST add connection to group", lambda: rest.add_connection_to_group("g2", cid)),
                ("REST connection exists", lambda: rest.connection_exists(cid)),
                ("REST group exists", lambda: rest.group_exists("g2")),
                (
                    "REST check permission",
                    lambda: rest.has_permission("joinLeaveGroup", cid, target_name="g"),
                ),
                ("client connect + close (presence written and removed)", connect_and_leave),
                ("client joinGroup + leaveGroup (acks after the presence write)", join_leave),
            ]
            print(f"command: {COMMAND}")
            print(f"Redis commands per operation (mean of {repeat}):")
            for label, action in operations:
                found = await counts(stats, action, repeat)
                total = sum(found.values())
                detail = ", ".join(f"{k} {v:.2f}" for k, v in found.items() if v >= 0.01)
                print(f"- {label}: {total:.2f} ({detail})")
            await ws.close()
        await stats.aclose()
    finally:
        for runner in reversed(runners):
            await runner.stop()
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200, help="repeats per operation (200)")
    args = parser.parse_args()
    if not 1 <= args.repeat <= 10_000:
        parser.error("--repeat must be within 1..10000")
    asyncio.run(asyncio.wait_for(main(args.repeat), 300))
