"""Azure's benchmark scenarios, measured Azure's way, against webpubsub and python-socketio.

One run: one stack (``webpubsub`` or ``socketio``), one scenario, N connections::

    .venv/bin/python bench/scenarios.py --scenario broadcast --connections 1000
    .venv/bin/python bench/scenarios.py --all --connections 1000,5000

Scenarios (Azure's "Performance guide for Azure Web PubSub": 2,048-byte messages, the
capacity is the highest rate whose p99 latency stays under 1 s):

- ``broadcast``: REST ``sendToAll`` to N connections;
- ``big-groups``: 10 groups of N/10, REST group sends (round-robin over the groups);
- ``small-groups``: N/10 groups of 10, every client publishes to its own group
  (``sendToGroup`` on ``json.webpubsub.azure.v1``; socket.io: an event the server
  emits to the client's room); the sender receives its own message, as Azure counts;
- ``echo-upstream``: simple WebSocket clients send; an event handler built on
  ``webpubsub.sdk`` in its own process (HTTP/1.1 keep-alive; ``--handler-server``: the
  SDK's ASGI middleware under uvicorn with httptools, or aiohttp wired to the SDK's
  core) answers each ``message`` event with the same body, which the service sends
  back to the client;
- ``send-to-user``: REST sends to single users (each connection its own user),
  round-robin over the users, ``--concurrency`` requests in flight (1: sequential);
- ``idle``: N idle connections: the connect rate, RSS per connection, idle CPU.

Processes, all on 127.0.0.1: the server (the real ``ServiceRunner`` on uvloop, or a
python-socketio ``AsyncServer`` on aiohttp + uvloop written for this benchmark, with a
``POST /emit`` endpoint as its REST API), the echo handler, ``--generator-procs``
load generators (uvloop, aiohttp WebSocket clients; socket.io spoken raw over a
WebSocket, see bench/README.md), and this orchestrator, which only coordinates and reads
``/proc``. Each message starts with a text stamp (sequence, *scheduled* send time
``time.monotonic_ns()``): latency runs from when the message was due, so a generator or
server that falls behind shows as latency, not as a lower offered rate.

Every loop is bounded; ``--timeout`` caps the whole invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import sys
import time
from array import array
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from harness import (
    ACCESS_KEY,
    HUB,
    RateSearch,
    command_line,
    machine_cpu,
    quantile_with_lost,
    raise_fd_limit,
    recv,
    rss_bytes,
    serve,
    total_cpu,
)
from loadgen import NS, ClientSpec, ConnectReport, GeneratorSpec, StepReport, generator
from servers import HANDLER_SERVERS, echo_handler, sio_server

JSON_PROTOCOL = "json.webpubsub.azure.v1"
STACKS = ("webpubsub", "socketio")
GROUPS_BIG = 10
GROUP_SIZE_SMALL = 10
RESULTS = Path(__file__).with_name("results.jsonl")


@dataclass(frozen=True)
class Scenario:
    name: str
    stacks: tuple[str, ...]
    sends: str
    """``rest``, ``publish`` (clients send), or ``none`` (idle)."""
    description: str

    def fanout(self, connections: int) -> int:
        """Deliveries of one send."""
        return {
            "broadcast": connections,
            "big-groups": connections // GROUPS_BIG,
            "small-groups": GROUP_SIZE_SMALL,
        }.get(self.name, 1)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("broadcast", STACKS, "rest", "REST sendToAll"),
        Scenario("big-groups", STACKS, "rest", f"{GROUPS_BIG} groups of N/{GROUPS_BIG}"),
        Scenario("small-groups", STACKS, "publish", f"groups of {GROUP_SIZE_SMALL}"),
        Scenario("echo-upstream", ("webpubsub",), "publish", "echo via the event handler"),
        Scenario("send-to-user", ("webpubsub",), "rest", "REST send to one user"),
        Scenario("idle", STACKS, "none", "idle connections"),
    )
}


# -- what each client and sender does -------------------------------------------------------


def plan(
    stack: str, scenario: Scenario, n: int, endpoint: str
) -> tuple[list[ClientSpec], list[str], str | None]:
    """The clients, the REST target URLs and the REST signing key of one run."""
    if stack == "socketio":
        return _plan_sio(scenario, n, endpoint)
    from webpubsub.protocol.tokens import issue_client_token

    audience = f"{endpoint}/client/hubs/{HUB}"
    ws_base = endpoint.replace("http://", "ws://", 1) + f"/client/hubs/{HUB}?access_token="
    now = time.time()

    def url(**claims: Any) -> str:
        return ws_base + issue_client_token(
            ACCESS_KEY, audience=audience, now=now, ttl_seconds=86400, **claims
        )

    api = f"{endpoint}/api/hubs/{HUB}"
    version = "?api-version=2024-01-01"
    name = scenario.name
    if name == "big-groups":
        urls = [url(groups=[f"g{k}"]) for k in range(GROUPS_BIG)]
        clients = [ClientSpec(urls[i % GROUPS_BIG]) for i in range(n)]
        return clients, [f"{api}/groups/g{k}/:send{version}" for k in range(GROUPS_BIG)], ACCESS_KEY
    if name == "small-groups":
        clients = []
        for j in range(n // GROUP_SIZE_SMALL):
            g = f"g{j}"
            u = url(groups=[g], roles=[f"webpubsub.sendToGroup.{g}"])
            prefix = f'{{"type":"sendToGroup","group":"{g}","dataType":"text","data":"'
            frame = (prefix, '"}')
            clients += [ClientSpec(u, JSON_PROTOCOL, frame=frame)] * GROUP_SIZE_SMALL
        return clients, [], None
    if name == "send-to-user":
        clients = [ClientSpec(url(user_id=f"u{i}")) for i in range(n)]
        return clients, [f"{api}/users/u{i}/:send{version}" for i in range(n)], ACCESS_KEY
    one = url()
    clients = [ClientSpec(one) for _ in range(n)]  # broadcast, echo-upstream, idle
    return clients, [f"{api}/:send{version}"], ACCESS_KEY


def _plan_sio(
    scenario: Scenario, n: int, endpoint: str
) -> tuple[list[ClientSpec], list[str], None]:
    ws = endpoint.replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"
    frame = ('42["pub","', '"]')
    if scenario.name == "big-groups":
        clients = [ClientSpec(ws, sio_auth=json.dumps({"group": f"g{i % 10}"})) for i in range(n)]
        return clients, [f"{endpoint}/emit?to=g{k}" for k in range(GROUPS_BIG)], None
    if scenario.name == "small-groups":
        clients = [
            ClientSpec(ws, sio_auth=json.dumps({"group": f"g{i // GROUP_SIZE_SMALL}"}), frame=frame)
            for i in range(n)
        ]
        return clients, [], None
    return [ClientSpec(ws, sio_auth="") for _ in range(n)], [f"{endpoint}/emit"], None


# -- the orchestrator -------------------------------------------------------------------------


@dataclass
class Step:
    rate: float
    ok: bool
    why: str
    out_per_second: float
    in_per_second: float
    p50_ms: float
    p99_ms: float
    lost: int
    send_errors: int
    server_core: float
    """Server CPU-seconds per second while the step sends (1.0 = one core busy)."""
    handler_core: float
    generator_cores: list[float]
    machine_busy: float
    """Busy cores of the whole machine."""
    other_cores: float
    """Busy cores not ours (other load on the machine)."""
    cpu_per_million: float
    lag_p99_ms: float


@dataclass
class RunResult:
    command: str
    stack: str
    scenario: str
    connections: int
    size: int
    generator_procs: int
    concurrency: int
    when: str
    connected: int
    connect_per_second: float
    rss_mib: float
    rss_per_connection_kib: float
    max_rate: float | None = None
    """Sends per second (REST calls, or client messages) at the best passing step."""
    best: Step | None = None
    steps: list[Step] = field(default_factory=list)
    limited_by: str = ""
    idle_server_core: float | None = None
    generator_connect_cpu: float = 0.0
    handler_server: str = ""
    """echo-upstream: what serves the event handler (``--handler-server``)."""
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        inflight = f", {self.concurrency} REST calls in flight" if self.concurrency else ""
        served = f", handler on {self.handler_server}" if self.handler_server else ""
        lines = [
            f"== {self.stack} {self.scenario}, {self.connections} connections{inflight}{served} =="
        ]
        lines.append(
            f"connected {self.connected}/{self.connections} at "
            f"{self.connect_per_second:,.0f}/s; server RSS {self.rss_mib:.1f} MiB, "
            f"{self.rss_per_connection_kib:.1f} KiB per connection"
        )
        if self.idle_server_core is not None:
            lines.append(f"idle server CPU: {self.idle_server_core:.3f} core")
        b = self.best
        if b is not None:
            lines.append(
                f"max rate at p99 < 1 s: {self.max_rate:g} sends/s = in {b.in_per_second:,.0f}/s, "
                f"out {b.out_per_second:,.0f}/s; p50 {b.p50_ms:.1f} ms, p99 {b.p99_ms:.1f} ms; "
                f"server CPU {b.cpu_per_million:.2f} s per 1M deliveries ({b.server_core:.2f} "
                f"core); generator {'+'.join(f'{c:.2f}' for c in b.generator_cores)} core"
            )
        elif self.scenario != "idle":
            lines.append("no step passed")
        if self.limited_by:
            lines.append(f"limited by: {self.limited_by}")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"command: {self.command}")
        return "\n".join(lines)


class Stack:
    """The processes of one run; ``stop`` ends every one of them."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.procs: list[mp.process.BaseProcess] = []
        self.pipes: list[Pipe] = []

    def start(self, target: Any, *args: Any) -> Pipe:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=target, args=(child, *args), daemon=True)
        proc.start()
        self.procs.append(proc)
        self.pipes.append(parent)
        return parent

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def shares(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``parts`` lists (every generator gets members of
    every group)."""
    return [items[i::parts] for i in range(parts)]


async def run_one(args: argparse.Namespace, stack: str, scenario: Scenario, n: int) -> RunResult:
    deadline = time.monotonic() + args.run_timeout

    def left() -> float:
        return max(1.0, deadline - time.monotonic())

    procs = Stack()
    try:
        handler_pids: list[int] = []
        if stack == "socketio":
            server_pid, port = await recv(procs.start(sio_server), left())
            endpoint = f"http://127.0.0.1:{port}"
        else:
            handler_url = None
            if scenario.name == "echo-upstream":
                handler = procs.start(echo_handler, args.handler_server)
                handler_pid, handler_port = await recv(handler, left())
                handler_pids.append(handler_pid)
                handler_url = f"http://127.0.0.1:{handler_port}/eventhandler/{{event}}"
            pipe = procs.start(serve, 0, None, None, None, "default", handler_url)
            server_pid, connection_string = await recv(pipe, left())
            endpoint = connection_string.split(";")[0].removeprefix("Endpoint=")
        who = f", handler pid {handler_pids[0]}" if handler_pids else ""
        print(f"  server pid {server_pid}{who} (to profile: py-spy record -p PID)", flush=True)
        clients, rest_urls, key = plan(stack, scenario, n, endpoint)
        gens = max(1, min(args.generator_procs, n))
        senders = gens if scenario.sends != "rest" else min(gens, args.concurrency)
        concurrency = max(1, args.concurrency // senders)
        gen_pipes = []
        for g, share in enumerate(shares(clients, gens)):
            spec = GeneratorSpec(
                index=g,
                clients=share,
                size=args.size,
                sends=scenario.sends if g < senders else "none",
                rest_urls=rest_urls if g < senders else [],
                rest_key=key,
                concurrency=concurrency,
                senders=senders,
            )
            gen_pipes.append(procs.start(generator, spec))
        await asyncio.sleep(0.5)  # the generators import and start their loops
        rss0 = rss_bytes(server_pid)
        for p in gen_pipes:
            p.send(("connect",))
        connects: list[ConnectReport] = [(await recv(p, left()))[1] for p in gen_pipes]
        rss1 = rss_bytes(server_pid)
        connected = sum(c.connected for c in connects)
        span = (max(c.end_ns for c in connects) - min(c.start_ns for c in connects)) / NS
        result = RunResult(
            command=args.command,
            stack=stack,
            scenario=scenario.name,
            connections=n,
            size=args.size,
            generator_procs=gens,
            concurrency=args.concurrency if scenario.sends == "rest" else 0,
            when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            connected=connected,
            connect_per_second=connected / span if span > 0 else 0.0,
            rss_mib=rss1 / 2**20,
            rss_per_connection_kib=(rss1 - rss0) / max(1, connected) / 1024,
            generator_connect_cpu=sum(c.cpu_seconds for c in connects),
            handler_server=args.handler_server if handler_pids else "",
        )
        failed = [c for c in connects if c.failed]
        if failed:
            result.notes.append(
                f"{sum(c.failed for c in failed)} clients failed to connect: {failed[0].error}"
            )
        server_pids = [server_pid]
        if scenario.sends == "none":
            await _idle(args, result, server_pids, gen_pipes, left)
        else:
            await _search(
                args, result, scenario, n, server_pids, handler_pids, gen_pipes, senders, left
            )
        return result
    finally:
        procs.stop()


async def _idle(
    args: argparse.Namespace,
    result: RunResult,
    server_pids: list[int],
    pipes: list[Pipe],
    left: Any,
) -> None:
    await asyncio.sleep(1.0)  # the connect's last work done
    cpu0, t0 = total_cpu(server_pids), time.monotonic()
    await asyncio.sleep(min(args.idle_seconds, left()))
    result.idle_server_core = (total_cpu(server_pids) - cpu0) / (time.monotonic() - t0)
    rss = rss_bytes(server_pids[0])
    result.rss_mib = rss / 2**20


async def _settle(server_pids: list[int], within: float) -> None:
    """Until the server is quiet (under 5 % of a core over 0.3 s), at most ``within`` s."""
    end = time.monotonic() + within
    while time.monotonic() < end:  # bounded by ``within``
        cpu0 = total_cpu(server_pids)
        await asyncio.sleep(0.3)
        if total_cpu(server_pids) - cpu0 < 0.015:
            return


async def _search(
    args: argparse.Namespace,
    result: RunResult,
    scenario: Scenario,
    n: int,
    server_pids: list[int],
    handler_pids: list[int],
    pipes: list[Pipe],
    senders: int,
    left: Any,
) -> None:
    fanout = scenario.fanout(n)
    start = args.start_rate or max(1.0, round(args.start_deliveries / fanout, 1))
    search = RateSearch(
        start=start, max_steps=args.max_steps, resolution=args.resolution, ceiling=args.max_rate
    )
    step_time = args.step_seconds + args.drain + 10  # + settling, + collecting
    while (rate := search.next_rate()) is not None:  # bounded: max_steps
        if left() < step_time:
            result.notes.append(f"--timeout reached before the step at {rate:g}/s")
            break
        await _settle(server_pids, args.settle_seconds)
        step = await _one_step(args, rate, fanout, server_pids, handler_pids, pipes, senders)
        result.steps.append(step)
        search.record(rate, step.ok)
        print(
            f"  step {len(search.steps)}: {rate:g} sends/s -> out {step.out_per_second:,.0f}/s, "
            f"p50 {step.p50_ms:.1f} ms, p99 {step.p99_ms:.1f} ms, lost {step.lost}, "
            f"server {step.server_core:.2f} core, "
            + (f"handler {step.handler_core:.2f} core, " if handler_pids else "")
            + "generator "
            f"{'+'.join(f'{c:.2f}' for c in step.generator_cores)} core, other "
            f"{step.other_cores:.2f} core: {'pass' if step.ok else 'FAIL ' + step.why}",
            flush=True,
        )
        if "closed" in step.why:
            result.notes.append("clients were closed: the search stopped there")
            break
    result.max_rate = search.best
    result.best = next((s for s in result.steps if s.ok and s.rate == search.best), None)
    result.limited_by = limited_by(result.steps, search, args)


def limited_by(steps: list[Step], search: RateSearch, args: argparse.Namespace) -> str:
    """What the lowest failing step says stopped the rate (a reading, not a proof)."""
    failures = [s for s in steps if not s.ok]
    if not failures:
        if search.best is not None and search.best >= args.max_rate:
            return "the search's ceiling (--max-rate)"
        return "the step budget (--max-steps) or the timeout, not a failure"
    f = min(failures, key=lambda s: s.rate)
    if max(f.generator_cores, default=0) > 0.85:
        return f"the generator (a process at {max(f.generator_cores):.2f} core)"
    if f.server_core > 0.85:
        return f"server CPU ({f.server_core:.2f} core at {f.rate:g}/s)"
    if f.handler_core > 0.85:
        return f"the event handler's CPU ({f.handler_core:.2f} core)"
    if f.machine_busy > 1.8:
        return f"the machine ({f.machine_busy:.2f} of 2 cores busy, {f.other_cores:.2f} not ours)"
    return f"{f.why} without a saturated process (at {f.rate:g}/s)"


async def _one_step(
    args: argparse.Namespace,
    rate: float,
    fanout: int,
    server_pids: list[int],
    handler_pids: list[int],
    pipes: list[Pipe],
    senders: int,
) -> Step:
    duration = int(args.step_seconds * NS)
    warm = int(args.step_warmup * NS)
    drain = int(args.drain * NS)
    t0 = time.monotonic_ns() + NS // 5
    for pipe in pipes:
        pipe.send(("step", rate / senders, t0, duration, warm, drain))
    # The load while sending (t0 .. t0 + duration), read here; the CPU per delivery
    # spans the whole step (the drain included), read once every generator reported.
    await asyncio.sleep(max(0.0, (t0 - time.monotonic_ns()) / NS))
    server0, handler0 = total_cpu(server_pids), total_cpu(handler_pids)
    busy0, _ = machine_cpu()
    await asyncio.sleep(max(0.0, (t0 + duration - time.monotonic_ns()) / NS))
    seconds = (time.monotonic_ns() - t0) / NS
    server_sending = total_cpu(server_pids) - server0
    handler_sending = total_cpu(handler_pids) - handler0
    busy1, _ = machine_cpu()
    within = args.step_seconds + args.drain + 15
    reports: list[StepReport] = [(await recv(p, within))[1] for p in pipes]
    server = total_cpu(server_pids) - server0
    latencies = array("q")
    for r in reports:
        latencies.frombytes(r.latencies_ns)
    ordered = sorted(latencies)
    scheduled = sum(r.scheduled for r in reports)
    expected = scheduled * fanout
    received = sum(r.received for r in reports)
    lost = max(0, expected - received)
    p50 = quantile_with_lost(ordered, lost, 0.50) / 1e6
    p99 = quantile_with_lost(ordered, lost, 0.99) / 1e6
    errors = sum(r.send_errors for r in reports)
    closed = sum(r.closed for r in reports)
    machine_busy = (busy1 - busy0) / seconds
    gen_cpu = [r.cpu_sending / seconds for r in reports]
    ours = (server_sending + handler_sending) / seconds + sum(gen_cpu)
    why = []
    if closed:
        why.append(f"{closed} clients closed")
    if errors:
        first = next(r.first_error for r in reports if r.first_error)
        why.append(f"{errors} send errors (first: {first})")
    if not p99 < args.p99_bound * 1e3:
        why.append(f"p99 {p99:.0f} ms >= {args.p99_bound * 1e3:.0f} ms")
    measured = (duration - warm) / NS
    all_received = sum(r.received_all for r in reports)
    return Step(
        rate=rate,
        ok=not why,
        why=", ".join(why),
        out_per_second=received / measured,
        in_per_second=scheduled / measured,
        p50_ms=p50,
        p99_ms=p99,
        lost=lost,
        send_errors=errors,
        server_core=server_sending / seconds,
        handler_core=handler_sending / seconds,
        generator_cores=gen_cpu,
        machine_busy=machine_busy,
        other_cores=max(0.0, machine_busy - ours),
        cpu_per_million=server / all_received * 1e6 if all_received else math.nan,
        lag_p99_ms=max(r.lag_p99_ns for r in reports) / 1e6,
    )


# -- the table ----------------------------------------------------------------------------


def table(results: list[RunResult]) -> str:
    """Azure's format: scenario × connections → max rate at p99 < 1 s, p99, CPU, RSS."""
    rows = [
        "| scenario | connections | stack | max rate at p99 < 1 s (sends/s) | in/s | out/s "
        "| p50 ms | p99 ms | server CPU-s per 1M deliveries | RSS MiB (KiB/conn) | limited by |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b = r.best
        if r.scenario == "idle":
            rate = f"connect {r.connect_per_second:,.0f}/s"
            rest = "| – | – | – | – | – "
        elif b is None:
            rate, rest = "none passed", "| – | – | – | – | – "
        else:
            rate = f"{r.max_rate:g}"
            rest = (
                f"| {b.in_per_second:,.0f} | {b.out_per_second:,.0f} | {b.p50_ms:.1f} "
                f"| {b.p99_ms:.1f} | {b.cpu_per_million:.2f} "
            )
        rows.append(
            f"| {r.scenario}{f' ({r.concurrency} in flight)' if r.concurrency else ''} "
            f"| {r.connections:,} | {r.stack} | {rate} {rest}"
            f"| {r.rss_mib:.0f} ({r.rss_per_connection_kib:.1f}) | {r.limited_by or '–'} |"
        )
    return "\n".join(rows)


def record(path: Path, result: RunResult) -> None:
    line = asdict(result)
    line["machine"] = {"nproc": os.cpu_count(), "python": sys.version.split()[0]}
    with path.open("a") as f:
        f.write(json.dumps(line, default=str) + "\n")


async def main_async(args: argparse.Namespace) -> list[RunResult]:
    deadline = time.monotonic() + args.timeout
    runs: list[tuple[str, Scenario, int, int]] = []
    names = list(SCENARIOS) if args.all else [args.scenario]
    for n in args.connections:
        for name in names:
            scenario = SCENARIOS[name]
            # --all: send-to-user sequentially (1 in flight) and with --concurrency.
            levels = [1, args.concurrency] if args.all and name == "send-to-user" else []
            for stack in (s for s in args.stacks if s in scenario.stacks):
                runs += [(stack, scenario, n, c) for c in levels or [args.concurrency]]
    results = []
    for stack, scenario, n, concurrency in runs:  # bounded: the list
        remaining = deadline - time.monotonic()
        if remaining < 20:
            print(f"--timeout: skipped {stack} {scenario.name} at {n}", flush=True)
            continue
        args.run_timeout = remaining
        args.concurrency = concurrency
        print(f"-- {stack} {scenario.name}, {n} connections", flush=True)
        result = await run_one(args, stack, scenario, n)
        print(result.text(), flush=True)
        record(args.results, result)
        results.append(result)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Azure's Web PubSub benchmark scenarios (2 KB messages, the highest "
        "rate at p99 < 1 s) against webpubsub and python-socketio, on loopback."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--scenario", choices=list(SCENARIOS))
    what.add_argument("--all", action="store_true", help="every scenario, every stack")
    parser.add_argument(
        "--connections",
        default="1000",
        help="connections; a comma-separated list runs each (1000)",
    )
    parser.add_argument(
        "--stacks",
        default=",".join(STACKS),
        help="comma-separated, of: " + ", ".join(STACKS) + " (both; each where it applies)",
    )
    parser.add_argument("--size", type=int, default=2048, help="message size, bytes (2048)")
    parser.add_argument(
        "--handler-server",
        choices=HANDLER_SERVERS,
        default=HANDLER_SERVERS[0],
        help="echo-upstream: what serves the SDK's event handler: uvicorn (its ASGI "
        "middleware, httptools, uvloop) or aiohttp (its core wired by hand) "
        f"({HANDLER_SERVERS[0]})",
    )
    parser.add_argument(
        "--generator-procs", type=int, default=1, help="load generator processes (1)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="REST requests in flight at most, over all generators; 1: sequential (16)",
    )
    parser.add_argument("--step-seconds", type=float, default=10.0, help="one step, s (10)")
    parser.add_argument(
        "--step-warmup", type=float, default=2.0, help="unmeasured start of each step, s (2)"
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=2.0,
        help="after a step's last send, how long deliveries still count, s; at least "
        "--p99-bound (2)",
    )
    parser.add_argument("--p99-bound", type=float, default=1.0, help="the p99 bound, s (1)")
    parser.add_argument(
        "--start-rate",
        type=float,
        default=0.0,
        help="first step's sends/s (0: --start-deliveries / fan-out)",
    )
    parser.add_argument(
        "--start-deliveries",
        type=float,
        default=1000.0,
        help="first step's deliveries/s when --start-rate is 0 (1000)",
    )
    parser.add_argument("--max-rate", type=float, default=1e6, help="search ceiling, sends/s")
    parser.add_argument("--max-steps", type=int, default=12, help="steps per search (12)")
    parser.add_argument(
        "--resolution",
        type=float,
        default=1.15,
        help="bisect until the failing rate is within this factor of the passing one (1.15)",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=10.0,
        help="before a step, wait at most this long for the server to go quiet (10)",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0, help="idle: how long to hold, s (5)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON lines ({RESULTS})")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="upper bound of the invocation, s (3600)"
    )
    args = parser.parse_args(argv)
    try:
        args.connections = [int(c) for c in args.connections.split(",")]
    except ValueError:
        parser.error("--connections: integers separated by commas")
    args.stacks = [s.strip() for s in args.stacks.split(",") if s.strip()]
    if not args.stacks or any(s not in STACKS for s in args.stacks):
        parser.error(f"--stacks: of {', '.join(STACKS)}")
    if any(not 10 <= n <= 60_000 or n % 10 for n in args.connections):
        parser.error("--connections: multiples of 10 within 10..60000")
    if args.size < 64:
        parser.error("--size must be at least 64")
    if not 1 <= args.generator_procs <= 8:
        parser.error("--generator-procs within 1..8")
    if args.drain < args.p99_bound:
        parser.error("--drain must be at least --p99-bound (a later delivery is a loss)")
    if not 0 <= args.step_warmup < args.step_seconds:
        parser.error("--step-warmup within 0..--step-seconds")
    if args.concurrency < 1 or args.max_steps < 1 or args.resolution <= 1 or args.timeout <= 0:
        parser.error("--concurrency >= 1, --max-steps >= 1, --resolution > 1, --timeout > 0")
    if args.handler_server == "uvicorn" and (args.all or args.scenario == "echo-upstream"):
        try:
            import httptools  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            parser.error(
                "--handler-server uvicorn needs uvicorn and httptools: pip install '.[bench]' "
                "(or --handler-server aiohttp)"
            )
    if "socketio" in args.stacks:
        try:
            import socketio  # noqa: F401
        except ImportError:
            parser.error("the socketio stack needs python-socketio: pip install '.[bench]'")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.command = command_line(argv)
    raise_fd_limit()
    import uvloop

    results = uvloop.run(main_async(args))
    if len(results) > 1:
        print(table(results))
        print(f"command: {args.command}")


if __name__ == "__main__":
    main()
