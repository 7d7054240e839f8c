"""Soak: minutes of connect/disconnect churn plus traffic against a service of its own.

Processes (all on 127.0.0.1):

- the service: the real ``webpubsub serve --port 0`` in a subprocess, whose resident
  memory (``VmRSS`` in ``/proc/<pid>/status``) and open file descriptors (the entries of
  ``/proc/<pid>/fd``) are sampled every ``--interval`` seconds;
- this process (uvloop), the load:

  - ``--steady`` long-lived ``json.webpubsub.azure.v1`` clients in group ``soak``, which
    receive everything below for the whole run;
  - ``--churners`` tasks that connect and disconnect, ``--connects-per-second`` in all:
    three connections in four use the JSON subprotocol (``connected``, ``joinGroup``, a
    ``sendToGroup`` to ``soak`` awaiting its ack, ``leaveGroup``, a close handshake), the
    fourth is a raw WebSocket upgrade whose TCP connection is then aborted (no close frame);
  - one REST sender (the official SDK's aio client), ``--rest-per-second`` calls in turn:
    send to all, to group ``soak``, to a steady user, add a steady user to a group and
    remove it again, user exists.

At the end the load stops, every client closes, and the service's descriptors are
sampled once more: with no client left they should be back where they were before the
first one.  Every wait is bounded (``--minutes`` plus a fixed grace, a timeout on every
step); a step that fails is counted and reported, not retried.

Run ``python bench/soak.py --help`` for the flags.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from broadcast import cpu_seconds, raise_fd_limit, rss_bytes, start_cli, stop_cli

HUB = "soak"
GROUP = "soak"
PROTOCOL = "json.webpubsub.azure.v1"
STEP_TIMEOUT = 10.0
"""Seconds any one step (a connect, an ack, a REST call) may take."""
SETTLE_TIMEOUT = 10.0
"""Seconds the service gets, after the last client closed, to release its descriptors."""
SETTLE_POLL = 0.2
MAX_FAILURES_SHOWN = 10


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Counters:
    connects: int = 0
    """Connections that completed their handshake (churn only)."""
    graceful: int = 0
    aborted: int = 0
    acks: int = 0
    """``sendToGroup`` messages of churning clients acknowledged by the service."""
    rest_calls: int = 0
    received: int = 0
    """Data messages the steady clients received."""
    failures: int = 0
    failure_kinds: dict[str, int] = field(default_factory=dict)

    def fail(self, what: str, error: BaseException | str) -> None:
        self.failures += 1
        kind = f"{what}: {error if isinstance(error, str) else type(error).__name__}"
        self.failure_kinds[kind] = self.failure_kinds.get(kind, 0) + 1


@dataclass
class Sample:
    elapsed: float
    rss: int
    fds: int
    cpu: float
    live: int
    connects: int
    rest_calls: int
    received: int


class Load:
    """The clients and the REST sender, and what they counted."""

    def __init__(self, args: argparse.Namespace, endpoint: str, sdk: Any) -> None:
        import aiohttp

        self.args, self.endpoint, self.sdk = args, endpoint, sdk
        self.counters = Counters()
        self.live = 0
        self.stop = asyncio.Event()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=STEP_TIMEOUT),
        )

    async def url(self, user: str, groups: list[str] | None = None) -> str:
        roles = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"]
        token = await self.sdk.get_client_access_token(
            user_id=user, roles=roles, groups=groups or []
        )
        return str(token["url"])

    async def connect(self, user: str, groups: list[str] | None = None) -> Any:
        """A JSON-subprotocol client, once its ``connected`` message came."""
        ws = await self.session.ws_connect(await self.url(user, groups), protocols=(PROTOCOL,))
        try:
            connected = await ws.receive_json(timeout=STEP_TIMEOUT)
            if connected.get("event") != "connected":
                raise RuntimeError(f"first message {connected!r}")
        except BaseException:
            await ws.close()
            raise
        self.live += 1
        return ws

    # -- steady clients ----------------------------------------------------------------

    async def steady(self, index: int, ready: asyncio.Queue[None]) -> None:
        import aiohttp

        try:
            ws = await self.connect(f"steady-{index}", [GROUP])
        except Exception as exc:
            self.counters.fail("steady connect", exc)
            await ready.put(None)
            return
        await ready.put(None)
        try:
            while not self.stop.is_set():  # bounded: the run's end closes the socket
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    if not self.stop.is_set():
                        self.counters.fail("steady client", f"got {msg.type.name}")
                    break
                if json.loads(msg.data).get("type") == "message":
                    self.counters.received += 1
        finally:
            await ws.close()
            self.live -= 1

    # -- churn -------------------------------------------------------------------------

    async def churn(self, index: int, deadline: float) -> None:
        period = self.args.churners / self.args.connects_per_second
        started = time.monotonic()
        for n in itertools.count():
            if time.monotonic() >= deadline:
                return
            try:
                async with asyncio.timeout(STEP_TIMEOUT * 3):
                    if n % 4 == 3:
                        await self.aborted(f"churn-{index}")
                    else:
                        await self.graceful(f"churn-{index}", n)
            except Exception as exc:
                self.counters.fail("churn", exc)
            pause = started + (n + 1) * period - time.monotonic()
            if pause > 0:  # pacing, not synchronisation
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))

    async def graceful(self, user: str, n: int) -> None:
        ws = await self.connect(user)
        try:
            self.counters.connects += 1
            own = f"{user}-{n % 3}"
            await ws.send_json({"type": "joinGroup", "group": own, "ackId": 1})
            await ws.send_json(
                {
                    "type": "sendToGroup",
                    "group": GROUP,
                    "dataType": "text",
                    "data": f"{user} #{n}",
                    "ackId": 2,
                }
            )
            await ws.send_json({"type": "leaveGroup", "group": own, "ackId": 3})
            acked = 0
            while acked < 3:  # bounded by the caller's timeout
                frame = await ws.receive_json()
                if frame.get("type") == "ack":
                    if not frame.get("success"):
                        raise RuntimeError(f"nack {frame!r}")
                    acked += 1
            self.counters.acks += 1
        finally:
            await ws.close()
            self.live -= 1
        self.counters.graceful += 1

    async def aborted(self, user: str) -> None:
        """A raw WebSocket upgrade, then the TCP connection aborted (no close frame)."""
        target = (await self.url(user)).split("//", 1)[1]
        host, _, path = target.partition("/")
        name, _, port = host.rpartition(":")
        reader, writer = await asyncio.open_connection(name, int(port))
        self.live += 1
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101 "):
                raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
            self.counters.connects += 1
        finally:
            writer.transport.abort()
            self.live -= 1
        self.counters.aborted += 1

    # -- REST --------------------------------------------------------------------------

    async def rest(self, deadline: float) -> None:
        text = {"content_type": "text/plain"}
        calls: list[Callable[[int], Awaitable[object]]] = [
            lambda n: self.sdk.send_to_all(f"all #{n}", **text),
            lambda n: self.sdk.send_to_group(GROUP, f"group #{n}", **text),
            lambda n: self.sdk.send_to_user(self.steady_user(n), f"user #{n}", **text),
            lambda n: self.sdk.add_user_to_group("rest", self.steady_user(n)),
            lambda n: self.sdk.remove_user_from_group("rest", self.steady_user(n)),
            lambda n: self.sdk.user_exists(self.steady_user(n)),
        ]
        started = time.monotonic()
        for n in itertools.count():
            if time.monotonic() >= deadline:
                return
            try:
                async with asyncio.timeout(STEP_TIMEOUT):
                    await calls[n % len(calls)](n)
                self.counters.rest_calls += 1
            except Exception as exc:
                self.counters.fail("REST", exc)
            pause = started + (n + 1) / self.args.rest_per_second - time.monotonic()
            if pause > 0:
                await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))

    def steady_user(self, n: int) -> str:
        return f"steady-{n % max(1, self.args.steady)}"


def sample(pid: int, started: float, load: Load) -> Sample:
    user, system = cpu_seconds(pid)
    return Sample(
        elapsed=time.monotonic() - started,
        rss=rss_bytes(pid),
        fds=open_fds(pid),
        cpu=user + system,
        live=load.live,
        connects=load.counters.connects,
        rest_calls=load.counters.rest_calls,
        received=load.counters.received,
    )


async def sampler(
    pid: int, started: float, load: Load, samples: list[Sample], deadline: float
) -> None:
    interval = load.args.interval
    for n in itertools.count(1):
        due = started + n * interval
        if due > deadline:
            return
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        samples.append(sample(pid, started, load))


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60 * cov / var if var else 0.0


def report(
    args: argparse.Namespace,
    pid: int,
    before: Sample,
    samples: list[Sample],
    after: Sample,
    counters: Counters,
) -> str:
    mib = 1024 * 1024
    lines = [
        f"command: {args.command}",
        f"service: webpubsub serve (pid {pid}) on 127.0.0.1, hub {HUB}; load: {args.steady} "
        f"steady clients, {args.churners} churners at {args.connects_per_second} connects/s, "
        f"{args.rest_per_second} REST calls/s, for {args.minutes} min",
        "",
        f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'CPU s':>7} {'live':>5} {'connects':>9} "
        f"{'REST':>7} {'received':>9}",
    ]
    for s in [before, *samples, after]:
        lines.append(
            f"{s.elapsed:7.0f} {s.rss / mib:8.1f} {s.fds:5d} {s.cpu:7.1f} {s.live:5d} "
            f"{s.connects:9d} {s.rest_calls:7d} {s.received:9d}"
        )
    warm = [s for s in samples if s.elapsed >= args.warmup] or samples[-1:]
    first, last = warm[0], samples[-1]
    rss_slope = slope_per_minute([(s.elapsed, s.rss / 1024) for s in warm])
    fd_slope = slope_per_minute([(s.elapsed, s.fds) for s in warm])
    loaded = [s.fds for s in samples]
    half = [s for s in samples if s.elapsed >= samples[-1].elapsed / 2] or samples[-1:]
    c = counters
    lines += [
        "",
        f"connects: {c.connects} ({c.graceful} with a close handshake, {c.aborted} aborted); "
        f"churn messages acked: {c.acks}; REST calls: {c.rest_calls}; "
        f"messages received by steady clients: {c.received}; failed steps: {c.failures}",
    ]
    for kind, count in sorted(c.failure_kinds.items())[:MAX_FAILURES_SHOWN]:
        lines.append(f"  {count} x {kind}")
    lines += [
        f"RSS: {before.rss / mib:.1f} MiB before any client, {first.rss / mib:.1f} MiB at "
        f"t={first.elapsed:.0f} s (after the {args.warmup:.0f} s warm-up), "
        f"{last.rss / mib:.1f} MiB at t={last.elapsed:.0f} s: "
        f"{(last.rss - first.rss) / 1024:+.0f} KiB after the warm-up, "
        f"slope {rss_slope:+.1f} KiB/min; over the second half (from t={half[0].elapsed:.0f} s) "
        f"{(last.rss - half[0].rss) / 1024:+.0f} KiB; {after.rss / mib:.1f} MiB once every "
        "client closed",
        f"open fds: {before.fds} before any client, {min(loaded)}-{max(loaded)} under load "
        f"(slope after warm-up {fd_slope:+.2f}/min), {after.fds} once every client closed "
        f"({after.fds - before.fds:+d})",
        f"server CPU: {after.cpu - before.cpu:.1f} s over {after.elapsed - before.elapsed:.0f} s",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> str:
    from azure.messaging.webpubsubservice.aio import WebPubSubServiceClient

    proc, connection_string, pids, drainer = await start_cli(1, None, within=30)
    pid = pids[0]
    try:
        sdk = WebPubSubServiceClient.from_connection_string(connection_string, hub=HUB)
        endpoint = connection_string.split(";", 1)[0].removeprefix("Endpoint=")
        load = Load(args, endpoint, sdk)
        started = time.monotonic()
        before = sample(pid, started, load)
        ready: asyncio.Queue[None] = asyncio.Queue()
        steady = [asyncio.create_task(load.steady(i, ready)) for i in range(args.steady)]
        async with asyncio.timeout(STEP_TIMEOUT * 3):
            for _ in steady:
                await ready.get()
        deadline = started + args.minutes * 60
        samples: list[Sample] = []
        work = [asyncio.create_task(load.churn(i, deadline)) for i in range(args.churners)]
        work.append(asyncio.create_task(load.rest(deadline)))
        work.append(asyncio.create_task(sampler(pid, started, load, samples, deadline)))
        async with asyncio.timeout(args.minutes * 60 + STEP_TIMEOUT * 6):
            await asyncio.gather(*work)
            load.stop.set()
            for task in steady:  # each closes its socket once it sees the stop
                task.cancel()
            await asyncio.gather(*steady, return_exceptions=True)
            await load.session.close()
            await sdk.close()
        for _ in range(int(SETTLE_TIMEOUT / SETTLE_POLL)):  # another process: poll /proc
            if open_fds(pid) <= before.fds:
                break
            await asyncio.sleep(SETTLE_POLL)
        after = sample(pid, started, load)
        return report(args, pid, before, samples, after, load.counters)
    finally:
        await stop_cli(proc, drainer)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="load duration (3)")
    parser.add_argument("--steady", type=int, default=50, help="long-lived clients (50)")
    parser.add_argument("--churners", type=int, default=20, help="churning tasks (20)")
    parser.add_argument(
        "--connects-per-second", type=float, default=50.0, help="churn rate, in all (50)"
    )
    parser.add_argument(
        "--rest-per-second", type=float, default=50.0, help="REST calls per second (50)"
    )
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=30.0, help="seconds before growth is measured (30)"
    )
    args = parser.parse_args(argv)
    for name in ("minutes", "connects_per_second", "rest_per_second", "interval"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.steady < 0 or args.churners < 1:
        parser.error("--steady must be >= 0 and --churners >= 1")
    if args.warmup >= args.minutes * 60:
        parser.error("--warmup must be shorter than the run")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    words = sys.argv if argv is None else [sys.argv[0], *argv]
    args.command = shlex.join([os.path.relpath(sys.executable), *words])
    raise_fd_limit()
    import uvloop

    print(uvloop.run(run(args)))


if __name__ == "__main__":
    main()
