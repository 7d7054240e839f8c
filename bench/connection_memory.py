"""Memory per connection: what the service holds for clients that fall behind.

The service runs in its own process (a real ``ServiceRunner`` on uvloop, default settings
unless overridden); this process holds the clients and sends REST broadcasts until every
client is either closed by the service or has received ``--messages`` messages.  The
service's memory is read from ``/proc/<pid>/status``: ``VmRSS`` once the clients are
connected, and ``VmHWM`` (peak RSS) at the end; with ``--tracemalloc`` the service also
reports the peak of Python's traced allocations (``tracemalloc``: the frames and their
copies, without allocator slack).  Kernel socket buffers are not process memory and are
not counted.

Scenarios (``--scenario``):

- ``unacked``: reliable clients that read every message and never acknowledge one: each
  holds the service's unacknowledged buffer until ``server.reliable_max_bytes``;
- ``stalled``: reliable clients that read nothing at all (a raw socket after the
  handshake): the outbox bound or the budget closes them;
- ``plain``: ``json.webpubsub.azure.v1`` clients that read nothing: ``outbox_max_bytes``;
- ``abandoned``: one user's reliable clients, all dropped (detached) before the
  broadcasts: ``server.detached_user_max_bytes`` bounds them together.

Each prints the peak growth per client next to the documented bound.  Run
``python bench/connection_memory.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import sys
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

HUB = "bench"
ACCESS_KEY = "bench-access-key-0123456789-abcdefghijklmnop"
RELIABLE = "json.reliable.webpubsub.azure.v1"
JSON = "json.webpubsub.azure.v1"
MIB = 1024 * 1024


def status_bytes(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak(pid: int) -> None:
    """Reset ``VmHWM`` to the current RSS (Linux 4.0+: write 5 to ``clear_refs``)."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


# -- the service process ---------------------------------------------------------------


def serve(pipe: Pipe, server: dict[str, Any], traced: bool) -> None:
    import uvloop

    if traced:
        import tracemalloc

        tracemalloc.start()
    uvloop.run(_serve(pipe, server))


async def _serve(pipe: Pipe, server: dict[str, Any]) -> None:
    import dataclasses
    import tracemalloc

    from webpubsub.config import default_config
    from webpubsub.server.app import ServiceRunner

    config = default_config().with_overrides(host="127.0.0.1", port=0, access_keys=ACCESS_KEY)
    config = dataclasses.replace(config, server=dataclasses.replace(config.server, **server))
    runner = ServiceRunner(config, advertised_host="127.0.0.1")
    await runner.start()
    pipe.send((os.getpid(), runner.port))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def command() -> None:
        try:
            what = pipe.recv()
        except EOFError:
            stop.set()
            return
        if what == "traced":
            if tracemalloc.is_tracing():
                pipe.send(tracemalloc.get_traced_memory())
            else:
                pipe.send((0, 0))
        elif what == "reset":
            if tracemalloc.is_tracing():
                tracemalloc.reset_peak()
                pipe.send(tracemalloc.get_traced_memory()[0])
            else:
                pipe.send(0)
        else:
            stop.set()

    loop.add_reader(pipe.fileno(), command)
    await stop.wait()
    await runner.stop()


# -- clients ---------------------------------------------------------------------------


async def raw_client(port: int, protocol: str, user: str | None) -> asyncio.StreamWriter:
    """A WebSocket client that completes the handshake, then never reads again."""
    from webpubsub.protocol.tokens import issue_client_token

    token = issue_client_token(
        ACCESS_KEY,
        audience=f"http://127.0.0.1:{port}/client/hubs/{HUB}",
        now=time.time(),
        user_id=user,
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /client/hubs/{HUB}?access_token={token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {protocol}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"upgrade refused: {head[:80]!r}")
    return writer


async def broadcast(port: int, size: int, messages: int, done: asyncio.Event) -> int:
    """REST ``send_to_all`` of ``size``-byte texts until ``done`` or ``messages`` sent."""
    import aiohttp

    from webpubsub.protocol.tokens import issue_rest_token

    url = f"http://127.0.0.1:{port}/api/hubs/{HUB}/:send?api-version=2024-12-01"
    bearer = issue_rest_token(ACCESS_KEY, audience=url, now=time.time())
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "text/plain"}
    body = "x" * size
    sent = 0
    async with aiohttp.ClientSession() as http:
        while sent < messages and not done.is_set():
            async with http.post(url, data=body, headers=headers) as resp:
                assert resp.status == 202, resp.status
            sent += 1
    return sent


async def scenario(args: argparse.Namespace, port: int) -> tuple[int, dict[str, int]]:
    """Run one scenario against the service on ``port``: (messages sent, how clients ended)."""
    import aiohttp

    from webpubsub.protocol.tokens import issue_client_token

    outcomes: dict[str, int] = {}
    done = asyncio.Event()
    n = args.clients
    async with aiohttp.ClientSession() as http:
        if args.scenario in ("stalled", "plain"):
            protocol = RELIABLE if args.scenario == "stalled" else JSON
            writers = [await raw_client(port, protocol, f"u{i}") for i in range(n)]
            sent = await broadcast(port, args.size, args.messages, done)
            for w in writers:
                w.close()
            return sent, {"not reading": n}
        user = "mallory" if args.scenario == "abandoned" else None
        sockets = []
        for i in range(n):
            token = issue_client_token(
                ACCESS_KEY,
                audience=f"http://127.0.0.1:{port}/client/hubs/{HUB}",
                now=time.time(),
                user_id=user or f"u{i}",
            )
            url = f"ws://127.0.0.1:{port}/client/hubs/{HUB}?access_token={token}"
            ws = await http.ws_connect(url, protocols=[RELIABLE], max_msg_size=0)
            connected = json.loads((await ws.receive(timeout=10)).data)
            assert connected["event"] == "connected", connected
            sockets.append(ws)
        if args.scenario == "abandoned":
            for ws in sockets:
                await ws.close(code=4000)  # not 1000: the service keeps them for recovery
            sent = await broadcast(port, args.size, args.messages, done)
            return sent, {"abandoned": n}
        open_clients = n

        async def read(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal open_clients
            while True:  # bounded: the service ends it at its budget, or the run ends
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    key = f"closed {ws.close_code}"
                    outcomes[key] = outcomes.get(key, 0) + 1
                    break
            open_clients -= 1
            if not open_clients:
                done.set()

        readers = [asyncio.create_task(read(ws)) for ws in sockets]
        sent = await broadcast(port, args.size, args.messages, done)
        for ws in sockets:
            await ws.close()
        await asyncio.gather(*readers)
        return sent, outcomes


BOUNDS = {
    "unacked": ("reliable_max_bytes", 16 * MIB),
    "stalled": ("reliable_max_bytes", 16 * MIB),
    "plain": ("outbox_max_bytes", 4 * MIB),
    "abandoned": ("detached_user_max_bytes", 64 * MIB),
}


async def run(args: argparse.Namespace) -> None:
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = int(value)
    ctx = mp.get_context("spawn")
    pipe, child = ctx.Pipe()
    proc = ctx.Process(target=serve, args=(child, overrides, args.tracemalloc), daemon=True)
    proc.start()
    try:
        pid, port = pipe.recv()
        async with asyncio.timeout(args.timeout):
            before = status_bytes(pid, "VmRSS")
            reset_peak(pid)
            pipe.send("reset")
            traced_before = pipe.recv()
            started = time.monotonic()
            sent, outcomes = await scenario(args, port)
            elapsed = time.monotonic() - started
            peak = status_bytes(pid, "VmHWM")
            pipe.send("traced")
            _, traced_peak = pipe.recv()
            traced_peak -= traced_before
    finally:
        pipe.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    key, default = BOUNDS[args.scenario]
    bound = overrides.get(key, default)
    per = args.clients
    print(" ".join([sys.executable, *sys.argv]))
    print(
        f"scenario {args.scenario}: {args.clients} clients, {sent} messages of {args.size} B "
        f"in {elapsed:.1f} s; clients: {outcomes}"
    )
    print(
        f"service RSS before {before / MIB:.1f} MiB, peak {peak / MIB:.1f} MiB: "
        f"+{(peak - before) / MIB:.1f} MiB, {(peak - before) / per / MIB:.2f} MiB per client"
    )
    if args.tracemalloc:
        each = traced_peak / per / MIB
        print(f"traced peak growth {traced_peak / MIB:.1f} MiB, {each:.2f} MiB per client")
    if args.scenario == "abandoned":
        print(f"bound: {key} = {bound / MIB:.1f} MiB for all {args.clients} together")
    else:
        print(f"bound: {key} = {bound / MIB:.1f} MiB per client")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(BOUNDS), default="unacked")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--size", type=int, default=16 * 1024, help="message bytes")
    parser.add_argument("--messages", type=int, default=2000, help="broadcasts at most")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=BYTES",
        help="a [server] byte setting, e.g. reliable_max_bytes=4194304",
    )
    parser.add_argument("--tracemalloc", action="store_true", help="also trace allocations")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
