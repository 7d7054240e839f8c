"""Broadcast benchmark: N WebSocket clients, M messages of S bytes sent to all over REST.

Processes (all on 127.0.0.1):

- the service: a real ``ServiceRunner`` on uvloop, in its own process, so that its CPU
  time can be read from ``/proc/<pid>/stat`` (utime + stime) before and after; with
  ``--nodes N`` N of them joined through a Redis of the benchmark's own; with
  ``--workers N`` the real ``webpubsub serve --workers N --redis URL`` (its supervisor and
  workers all counted), whose workers share one port;
- one or more client processes (``--client-procs``), each holding a share of the N
  aiohttp WebSocket clients on uvloop;
- this process: it mints the client token and sends each message with the official
  ``azure-messaging-webpubsubservice`` aio client (``send_to_all``, binary body).

Each message starts with a 12-byte header: a sequence number and the sender's
``time.monotonic_ns()`` taken just before the REST call, so a client computes the
latency from "REST send started" to "frame received" (CLOCK_MONOTONIC is system-wide
on Linux, so the clocks agree across processes).  A few warm-up messages go first and
are not counted.  Everything is bounded: ``--timeout`` caps the whole run.

Run ``python bench/broadcast.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import multiprocessing as mp
import re
import signal
import struct
import sys
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe

from harness import (
    ACCESS_KEY,
    HUB,
    children_of,
    command_line,
    cpu_seconds,
    machine_cpu,
    own_cpu_seconds,
    percentile,
    raise_fd_limit,
    recv,
    rss_bytes,
    serve,
    write_syscalls,
)

HEADER = struct.Struct("!IQ")
"""seq (u32), send time (u64, ``time.monotonic_ns()``)."""
OPEN_CONCURRENCY = 64
"""How many WebSocket handshakes a client process runs at once."""


# -- the service process ---------------------------------------------------------------


OBSERVER_SETUPS = {
    "none": "portal and metrics off",
    "portal": "portal on (idle: nobody watching), metrics off",
    "default": "portal and metrics on (the defaults), nobody watching",
}
"""``--observers`` runs: what the service observes (the trace ring, the metrics)."""


async def start_cli(
    workers: int, redis_url: str | None, within: float
) -> tuple[asyncio.subprocess.Process, str, list[int], asyncio.Task[None]]:
    """``webpubsub serve`` (``--workers``, when more than one): the process, its connection
    string, the pids of the supervisor and every worker, and the task that drains its
    output. Returns once every worker listens."""
    command = [sys.executable, "-m", "webpubsub.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--access-key", ACCESS_KEY]
    if workers > 1:
        assert redis_url is not None
        command += ["--workers", str(workers), "--redis", redis_url]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert proc.stdout is not None
    ports: list[int] = []
    seen: list[str] = []
    async with asyncio.timeout(within):
        while len(ports) < workers:  # bounded: by the timeout, or the output's end
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise SystemExit("webpubsub serve ended:\n" + "".join(seen))
            seen.append(line)
            if match := re.search(r"Listening on http://127\.0\.0\.1:(\d+)", line):
                ports.append(int(match.group(1)))
    assert len(set(ports)) == 1, f"the workers listen on different ports: {ports}"

    async def drain(stream: asyncio.StreamReader) -> None:
        while await stream.readline():  # the log must not fill the pipe and stall it
            pass

    drainer = asyncio.create_task(drain(proc.stdout))
    pids = [proc.pid, *children_of(proc.pid)] if workers > 1 else [proc.pid]
    connection_string = f"Endpoint=http://127.0.0.1:{ports[0]};AccessKey={ACCESS_KEY};Version=1.0;"
    return proc, connection_string, pids, drainer


async def stop_cli(proc: asyncio.subprocess.Process, drainer: asyncio.Task[None]) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)  # the supervisor passes it on to its workers
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    drainer.cancel()


# -- the client processes --------------------------------------------------------------


@dataclass
class ClientResult:
    connected: int
    received: int
    """Measured (non-warm-up) messages received, over all clients."""
    out_of_order: int
    failed: int
    """Clients that stopped (closed, error, timeout) before receiving everything."""
    last_receive_ns: int
    latencies_ns: bytes
    """``array('q')`` of measured latencies, as bytes."""
    cpu_seconds: float
    """This client process's CPU time from warm-up done to the end."""


def clients(pipe: Pipe, url: str, count: int, messages: int, warmup: int, within: float) -> None:
    raise_fd_limit()
    import uvloop

    uvloop.run(_clients(pipe, url, count, messages, warmup, within))


async def _clients(
    pipe: Pipe, url: str, count: int, messages: int, warmup: int, within: float
) -> None:
    """Connect ``count`` clients, then receive until done or ``within`` seconds passed."""
    import aiohttp

    total = warmup + messages
    latencies = array("q")
    warm = asyncio.Event()
    state = {"warm": 0, "received": 0, "out_of_order": 0, "failed": 0, "last": 0}
    monotonic_ns = time.monotonic_ns
    unpack = HEADER.unpack_from
    binary = aiohttp.WSMsgType.BINARY

    async def consume(ws: aiohttp.ClientWebSocketResponse) -> None:
        n = 0
        out_of_order = 0
        now = 0
        receive = ws.receive
        append = latencies.append
        while n < total:
            msg = await receive()
            now = monotonic_ns()
            if msg.type is not binary:
                state["failed"] += 1
                break
            seq, sent = unpack(msg.data)
            if seq != n:
                out_of_order += 1
            n += 1
            if seq >= warmup:
                append(now - sent)
            if n == warmup:
                state["warm"] += 1
                if state["warm"] == count:
                    warm.set()
        state["received"] += max(0, n - warmup)
        state["out_of_order"] += out_of_order
        state["last"] = max(state["last"], now)

    connector = aiohttp.TCPConnector(limit=0)
    timeout_cfg = aiohttp.ClientTimeout(total=None, connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout_cfg) as session:
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)

        async def open_one() -> aiohttp.ClientWebSocketResponse:
            async with gate:
                return await session.ws_connect(url, max_msg_size=0, autoclose=True)

        sockets = await asyncio.gather(*(open_one() for _ in range(count)))
        tasks = [asyncio.create_task(consume(ws)) for ws in sockets]
        pipe.send(("ready",))
        cpu0 = own_cpu_seconds()
        try:
            async with asyncio.timeout(within):
                if warmup:
                    await warm.wait()
                cpu0 = own_cpu_seconds()
                pipe.send(("warm",))
                await asyncio.gather(*tasks)
        except TimeoutError:
            unfinished = sum(1 for t in tasks if not t.done())
            state["failed"] += unfinished
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        cpu1 = own_cpu_seconds()
        pipe.send(
            (
                "done",
                ClientResult(
                    connected=len(sockets),
                    received=state["received"],
                    out_of_order=state["out_of_order"],
                    failed=state["failed"],
                    last_receive_ns=state["last"],
                    latencies_ns=latencies.tobytes(),
                    cpu_seconds=cpu1 - cpu0,
                ),
            )
        )
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


# -- the orchestrator ------------------------------------------------------------------


class RedisProcess:
    """A ``redis-server`` of the benchmark's own on a free loopback port (no persistence)."""

    def __init__(self) -> None:
        import shutil
        import socket
        import subprocess
        import tempfile

        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--nodes needs redis-server (apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._dir = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(  # noqa: S603 - a fixed binary, our own arguments
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir.name,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert self.proc.stdout is not None
        for _ in range(200):  # bounded: the server says when it is ready
            line = self.proc.stdout.readline()
            if not line or b"Ready to accept connections" in line:
                break
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self._dir.cleanup()


@dataclass
class Report:
    command: str
    nodes: int
    workers: bool
    """The nodes are ``webpubsub serve --workers`` on one port (else one port each)."""
    clients: int
    messages: int
    size: int
    rate: float
    concurrency: int
    client_procs: int
    expected: int
    delivered: int
    out_of_order: int
    failed_clients: int
    send_seconds: float
    wall_seconds: float
    msgs_per_second: float
    server_cpu_seconds: float
    server_kernel_seconds: float
    """The part of ``server_cpu_seconds`` spent in the kernel (stime)."""
    cpu_per_million: float
    server_writes_per_delivery: float | None
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_seconds: float
    sender_cpu_seconds: float
    machine_busy_seconds: float
    machine_total_seconds: float
    rss_per_connection: float

    @property
    def other_cpu_seconds(self) -> float:
        """Machine CPU not used by the service or this benchmark (other load)."""
        ours = self.server_cpu_seconds + self.client_cpu_seconds + self.sender_cpu_seconds
        return max(0.0, self.machine_busy_seconds - ours)

    def text(self) -> str:
        pacing = f"paced at {self.rate:g} msg/s" if self.rate else "unpaced"
        writes = (
            f"{self.server_writes_per_delivery:.3f}"
            if self.server_writes_per_delivery is not None
            else "n/a"
        )
        how = ""
        if self.workers:
            how = " (webpubsub serve --workers)" if self.nodes > 1 else " (webpubsub serve)"
        counted = ""
        if self.nodes > 1:
            counted = " (supervisor + workers + Redis)" if self.workers else " (nodes + Redis)"
        return "\n".join(
            [
                f"command: {self.command}",
                f"setup: {self.nodes} node(s){' over Redis' if self.nodes > 1 else ''}{how}, "
                f"{self.clients} clients in {self.client_procs} process(es), "
                f"{self.messages} messages of {self.size} B, {pacing}, "
                f"{self.concurrency} REST send(s) in flight",
                f"delivered: {self.delivered}/{self.expected} "
                f"(failed clients: {self.failed_clients}, out of order: {self.out_of_order})",
                f"sending took {self.send_seconds:.3f} s; first send to last delivery "
                f"{self.wall_seconds:.3f} s",
                f"delivered msgs/s: {self.msgs_per_second:,.0f}",
                f"server CPU{counted}: "
                f"{self.server_cpu_seconds:.2f} s "
                f"= {self.cpu_per_million:.2f} CPU-s per 1M deliveries "
                f"({self.server_kernel_seconds / max(self.server_cpu_seconds, 1e-9):.0%} kernel)",
                f"server write syscalls per delivery: {writes}",
                f"latency (REST send start -> frame received): p50 {self.p50_ms:.1f} ms, "
                f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms",
                f"server CPU per REST send: {self.server_cpu_seconds / self.messages * 1e3:.2f} ms",
                f"load generator CPU: clients {self.client_cpu_seconds:.2f} s, "
                f"sender {self.sender_cpu_seconds:.2f} s",
                f"machine CPU in the window: {self.machine_busy_seconds:.1f} of "
                f"{self.machine_total_seconds:.1f} CPU-s busy; other processes "
                f"{self.other_cpu_seconds:.1f} CPU-s",
                f"server RSS per idle connection: {self.rss_per_connection / 1024:.1f} KiB",
                "table row: "
                f"| {self.clients} | {self.size} B | {self.messages} | {pacing} "
                f"| {self.msgs_per_second:,.0f} | {self.cpu_per_million:.2f} "
                f"| {self.p50_ms:.1f} | {self.p99_ms:.1f} |",
            ]
        )


async def run(args: argparse.Namespace, nodes: int = 1) -> Report:
    """One run: ``nodes`` service processes (more than one: joined through a Redis of the
    benchmark's own); server CPU is summed over them and Redis."""
    from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

    ctx = mp.get_context("spawn")
    deadline = time.monotonic() + float(args.timeout)

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    redis = RedisProcess() if nodes > 1 else None
    cli: tuple[asyncio.subprocess.Process, asyncio.Task[None]] | None = None
    server_pipes: list[Pipe] = []
    procs: list[mp.process.BaseProcess] = []
    pipes: list[Pipe] = []
    pids: list[int] = []
    endpoints: list[str] = []

    def start_node(i: int, public_endpoint: str | None) -> Pipe:
        server_pipe, child_pipe = ctx.Pipe()
        redis_url = redis.url if redis is not None else None
        server = ctx.Process(
            target=serve,
            args=(
                child_pipe,
                args.gc_threshold,
                redis_url,
                f"bench{i}",
                public_endpoint,
                args.observe,
            ),
            daemon=True,
        )
        server.start()
        procs.append(server)
        server_pipes.append(server_pipe)
        return server_pipe

    try:
        if args.workers:
            proc, connection_string, pids, drainer = await start_cli(
                nodes, redis.url if redis is not None else None, left()
            )
            cli = (proc, drainer)
            # One port: the kernel spreads the connections (and REST calls) over the workers.
            endpoints = [connection_string.split(";")[0].removeprefix("Endpoint=")] * nodes
        else:
            first = start_node(0, None)
            pid, connection_string = await recv(first, left())
            pids.append(pid)
            endpoints.append(connection_string.split(";")[0].removeprefix("Endpoint="))
            # Behind a load balancer every node has one public endpoint: here, the first's.
            others = [start_node(i, endpoints[0]) for i in range(1, nodes)]
            for pipe in others:
                other_pid, other_cs = await recv(pipe, left())
                pids.append(other_pid)
                endpoints.append(other_cs.split(";")[0].removeprefix("Endpoint="))
        # Write syscalls are read of one node process (none for the workers).
        syscall_pid = None if args.workers else pids[0]
        watched = [*pids, *([redis.proc.pid] if redis is not None else [])]
        sdk = WebPubSubServiceClient.from_connection_string(connection_string, hub=HUB)
        async with sdk:
            token = await sdk.get_client_access_token(minutes_to_expire=120)
            url = token["url"]
            rss0 = sum(rss_bytes(p) for p in pids)

            shares = [
                args.clients // args.client_procs + (i < args.clients % args.client_procs)
                for i in range(args.client_procs)
            ]
            for i, share in enumerate(shares):
                parent, child = ctx.Pipe()
                # Client process i connects to node i % nodes; REST goes to the first node.
                node_url = url.replace(
                    endpoints[0].removeprefix("http://"),
                    endpoints[i % nodes].removeprefix("http://"),
                )
                client_proc = ctx.Process(
                    target=clients,
                    args=(child, node_url, share, args.messages, args.warmup, left()),
                    daemon=True,
                )
                client_proc.start()
                procs.append(client_proc)
                pipes.append(parent)
            for pipe in pipes:
                assert (await recv(pipe, left()))[0] == "ready"
            rss1 = sum(rss_bytes(p) for p in pids)

            payload_pad = b"x" * (args.size - HEADER.size)

            async def send(seq: int) -> None:
                body = HEADER.pack(seq, time.monotonic_ns()) + payload_pad
                await sdk.send_to_all(io.BytesIO(body), content_type="application/octet-stream")

            for seq in range(args.warmup):
                await send(seq)
            for pipe in pipes:
                assert (await recv(pipe, left()))[0] == "warm"

            user0, sys0 = map(sum, zip(*(cpu_seconds(p) for p in watched), strict=True))
            writes0 = write_syscalls(syscall_pid) if syscall_pid else None
            sender0 = own_cpu_seconds()
            busy0, total0 = machine_cpu()
            gate = asyncio.Semaphore(args.concurrency)
            start_ns = time.monotonic_ns()

            async def paced_send(i: int) -> None:
                async with gate:
                    if args.rate:
                        due = start_ns + int(i * 1e9 / args.rate)
                        delay = (due - time.monotonic_ns()) / 1e9
                        if delay > 0:
                            await asyncio.sleep(delay)
                    await send(args.warmup + i)

            if args.concurrency == 1:
                for i in range(args.messages):
                    await paced_send(i)
            else:
                await asyncio.gather(*(paced_send(i) for i in range(args.messages)))
            sent_ns = time.monotonic_ns()

            results: list[ClientResult] = []
            for pipe in pipes:
                kind, result = await recv(pipe, left())
                assert kind == "done"
                results.append(result)
            user1, sys1 = map(sum, zip(*(cpu_seconds(p) for p in watched), strict=True))
            writes1 = write_syscalls(syscall_pid) if syscall_pid else None
            sender1 = own_cpu_seconds()
            busy1, total1 = machine_cpu()
    finally:
        for pipe in [*server_pipes, *pipes]:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        if cli is not None:
            await stop_cli(*cli)
        if redis is not None:
            redis.stop()

    latencies = array("q")
    for r in results:
        latencies.frombytes(r.latencies_ns)
    ordered = array("q", sorted(latencies))
    delivered = sum(r.received for r in results)
    last_ns = max(r.last_receive_ns for r in results)
    wall = max(1e-9, (last_ns - start_ns) / 1e9)
    server_cpu = (user1 + sys1) - (user0 + sys0)
    writes = (
        (writes1 - writes0) / delivered
        if writes0 is not None and writes1 is not None and delivered
        else None
    )
    return Report(
        command=args.command,
        nodes=nodes,
        workers=bool(args.workers),
        clients=args.clients,
        messages=args.messages,
        size=args.size,
        rate=args.rate,
        concurrency=args.concurrency,
        client_procs=args.client_procs,
        expected=args.clients * args.messages,
        delivered=delivered,
        out_of_order=sum(r.out_of_order for r in results),
        failed_clients=sum(r.failed for r in results),
        send_seconds=(sent_ns - start_ns) / 1e9,
        wall_seconds=wall,
        msgs_per_second=delivered / wall,
        server_cpu_seconds=server_cpu,
        server_kernel_seconds=sys1 - sys0,
        cpu_per_million=server_cpu / delivered * 1e6 if delivered else float("nan"),
        server_writes_per_delivery=writes,
        p50_ms=percentile(ordered, 0.50) / 1e6,
        p99_ms=percentile(ordered, 0.99) / 1e6,
        max_ms=percentile(ordered, 1.0) / 1e6,
        client_cpu_seconds=sum(r.cpu_seconds for r in results),
        sender_cpu_seconds=sender1 - sender0,
        machine_busy_seconds=busy1 - busy0,
        machine_total_seconds=total1 - total0,
        rss_per_connection=(rss1 - rss0) / args.clients,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Broadcast benchmark of the webpubsub service on loopback: N WebSocket clients, "
            "M messages of S bytes sent to all with the official SDK's send_to_all. Reports "
            "delivered msgs/s, server CPU-seconds (per 1M deliveries), p50/p99 latency."
        )
    )
    parser.add_argument("--clients", type=int, default=1000, help="WebSocket clients (1000)")
    parser.add_argument("--messages", type=int, default=200, help="measured messages (200)")
    parser.add_argument(
        "--size", type=int, default=100, help=f"message size in bytes, >= {HEADER.size} (100)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="send rate in messages/s; 0 = unpaced: each send starts when a previous one "
        "has returned its 202 (0)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="REST sends in flight at once; with 1, messages arrive in send order (1)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=1, help="processes the clients are spread over (1)"
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=0,
        help="the server's collector: 0 as `webpubsub serve` sets it up (frozen start-up, "
        "raised thresholds), -1 Python's defaults, N > 0 generation 0's threshold (0)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="uncounted warm-up messages (5)")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="service processes joined through Redis, clients spread over them; with more "
        "than 1, a single-node run goes first, as the baseline of the same invocation (1)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run `webpubsub serve --workers N --redis URL` (one port), after a single "
        "`webpubsub serve` as the baseline of the same invocation; instead of --nodes (0)",
    )
    parser.add_argument(
        "--observers",
        action="store_true",
        help="compare what observing costs: runs with "
        + "; ".join(f"{k}: {v}" for k, v in OBSERVER_SETUPS.items())
        + ", interleaved, --repeats times each, in one invocation; one node only",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs of each setup with --observers (3)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="upper bound for the whole run, s (300)"
    )
    args = parser.parse_args(argv)
    if args.size < HEADER.size:
        parser.error(f"--size must be at least {HEADER.size} (the timestamp header)")
    if not 1 <= args.clients <= 20_000:
        parser.error("--clients must be within 1..20000")
    if not 1 <= args.messages <= 1_000_000:
        parser.error("--messages must be within 1..1000000")
    if not 1 <= args.client_procs <= min(args.clients, 8):
        parser.error("--client-procs must be within 1..min(clients, 8)")
    if not 1 <= args.nodes <= min(args.clients, 8):
        parser.error("--nodes must be within 1..min(clients, 8)")
    if args.workers and (args.nodes > 1 or not 2 <= args.workers <= min(args.clients, 8)):
        parser.error("--workers must be within 2..min(clients, 8), and not with --nodes")
    if args.concurrency < 1 or args.rate < 0 or args.warmup < 0 or args.timeout <= 0:
        parser.error("--concurrency >= 1, --rate >= 0, --warmup >= 0, --timeout > 0")
    if args.gc_threshold < -1:
        parser.error("--gc-threshold must be -1, 0 or positive")
    if args.observers and (args.nodes > 1 or args.workers):
        parser.error("--observers runs one node: not with --nodes or --workers")
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats must be within 1..20")
    args.observe = "default"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.command = command_line(argv)
    raise_fd_limit()
    import uvloop

    nodes = args.workers or args.nodes
    if args.observers:
        compare_observers(args)
        return
    if nodes == 1:
        print(uvloop.run(run(args)).text())
        return
    args.client_procs = max(args.client_procs, nodes)
    single = uvloop.run(run(args, 1))
    print(single.text())
    cluster = uvloop.run(run(args, nodes))
    print(cluster.text())
    print(
        f"cross-node CPU per delivery: {cluster.cpu_per_million / single.cpu_per_million:.2f}x "
        f"the single node's ({cluster.cpu_per_million:.2f} vs {single.cpu_per_million:.2f} "
        "CPU-s per 1M deliveries)"
    )


def compare_observers(args: argparse.Namespace) -> None:
    """Each setup of :data:`OBSERVER_SETUPS` ``--repeats`` times, interleaved (so that a
    drift of the machine's load hits every setup alike); the median of each, as a ratio
    to ``none``."""
    import statistics

    import uvloop

    results: dict[str, list[Report]] = {name: [] for name in OBSERVER_SETUPS}
    for _ in range(args.repeats):
        for name in OBSERVER_SETUPS:
            args.observe = name
            report = uvloop.run(run(args))
            print(f"[{name}: {OBSERVER_SETUPS[name]}]")
            print(report.text())
            results[name].append(report)
    base = statistics.median(r.cpu_per_million for r in results["none"])
    print(f"command: {args.command}")
    print("| setup | CPU-s per 1M deliveries (runs) | median | vs none | p99 ms |")
    print("|---|---|---|---|---|")
    for name, reports in results.items():
        cpu = [r.cpu_per_million for r in reports]
        mid = statistics.median(cpu)
        p99 = statistics.median(r.p99_ms for r in reports)
        runs = ", ".join(f"{c:.2f}" for c in cpu)
        change = f"{mid / base - 1:+.1%}"
        print(f"| {OBSERVER_SETUPS[name]} | {runs} | {mid:.2f} | {change} | {p99:.1f} |")


if __name__ == "__main__":
    main()
