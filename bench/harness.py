"""What the benchmarks share: /proc readings, the service process, the latency stamp,
the latency summary and the rate search.

Everything above the service process is standard library only and pure where it can
be (``tests/bench/test_harness.py`` tests the stamp, the summary and the search);
the benchmarks import this module as ``harness`` (they run as ``python bench/X.py``).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

HUB = "bench"
ACCESS_KEY = "bench-access-key-0123456789-abcdefghijklmnop"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc readings --------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime, stime) of ``pid`` (all its threads) in seconds, from ``/proc/<pid>/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def total_cpu(pids: Sequence[int]) -> float:
    """utime + stime of every process of ``pids``, summed, in seconds."""
    return sum(sum(cpu_seconds(p)) for p in pids)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def write_syscalls(pid: int) -> int | None:
    """``syscw`` from ``/proc/<pid>/io``: write-family system calls made so far."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("syscw:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole machine so far, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def command_line(argv: list[str] | None) -> str:
    """The exact command of this run, to print beside its figures."""
    import shlex
    import sys

    words = sys.argv if argv is None else [sys.argv[0], *argv]
    return shlex.join([os.path.relpath(sys.executable), *words])


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


async def recv(pipe: Pipe, within: float) -> Any:
    """The next message on ``pipe`` (bounded), without blocking the event loop."""

    def wait() -> Any:
        if not pipe.poll(within):
            raise TimeoutError(f"no message from a child process within {within:.0f} s")
        return pipe.recv()

    return await asyncio.to_thread(wait)


# -- the service process ---------------------------------------------------------------


def serve(
    pipe: Pipe,
    gc_threshold: int,
    redis_url: str | None = None,
    node_id: str | None = None,
    public_endpoint: str | None = None,
    observers: str = "default",
    handler_url: str | None = None,
) -> None:
    """The real ``ServiceRunner`` on uvloop; sends ``(pid, connection string)`` on ``pipe``
    once it listens and stops on any message (or EOF). With ``handler_url`` hub
    :data:`HUB` sends every user event there (no system events)."""
    raise_fd_limit()
    import uvloop

    uvloop.run(
        _serve(pipe, redis_url, node_id, public_endpoint, observers, handler_url, gc_threshold)
    )


async def _serve(
    pipe: Pipe,
    redis_url: str | None,
    node_id: str | None,
    public_endpoint: str | None,
    observers: str,
    handler_url: str | None,
    gc_threshold: int = 0,
) -> None:
    """``gc_threshold``: 0 sets the collector up as ``webpubsub serve`` does
    (``tune_gc``), -1 keeps Python's defaults, N > 0 sets generation 0's threshold."""
    import dataclasses
    import gc

    from webpubsub.config import MetricsSettings, PortalSettings, default_config
    from webpubsub.core.settings import EventHandlerSettings, HubSettings
    from webpubsub.server.app import ServiceRunner

    config = default_config().with_overrides(
        host="127.0.0.1",
        port=0,
        access_keys=ACCESS_KEY,
        redis_url=redis_url,
        node_id=node_id,
        public_endpoint=public_endpoint,
    )
    config = dataclasses.replace(
        config,
        # The event queue in memory: no file shared with another service on the machine.
        server=dataclasses.replace(config.server, data_dir=":memory:"),
        portal=PortalSettings(enabled=observers != "none"),
        metrics=MetricsSettings(enabled=observers == "default"),
    )
    if handler_url is not None:
        handler = EventHandlerSettings(url_template=handler_url, user_event_pattern="*")
        config = dataclasses.replace(
            config, hubs={HUB: HubSettings(name=HUB, event_handlers=(handler,))}
        )
    runner = ServiceRunner(config, advertised_host="127.0.0.1")
    await runner.start()
    if gc_threshold == 0:
        from webpubsub.server.app import tune_gc

        tune_gc()
    elif gc_threshold > 0:
        gc.set_threshold(gc_threshold, *gc.get_threshold()[1:])
    report = os.environ.get("BENCH_GC_REPORT")  # a file: the collector's time, at the end
    spent = _gc_timer() if report else None
    pipe.send((os.getpid(), runner.connection_string))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)  # any message, or EOF
    await stop.wait()
    if report and spent is not None:
        line = json.dumps({"threshold": gc.get_threshold(), "generations": spent})
        with Path(report).open("a") as out:  # noqa: ASYNC230 - once, at the very end
            out.write(line + "\n")
    await runner.stop()


def _gc_timer() -> dict[int, list[float]]:
    """Collections and seconds spent in them, by generation, from now on."""
    import gc

    spent: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
    started = [0.0]

    def timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            entry = spent[info["generation"]]
            entry[0] += 1
            entry[1] += time.perf_counter() - started[0]

    gc.callbacks.append(timing)
    return spent


# -- the latency stamp -----------------------------------------------------------------

STAMP_MARK = "@S"
STAMP_SIZE = len(STAMP_MARK) + 8 + 16
"""``@S``, the sequence number (8 hex digits), the scheduled send time (16 hex digits,
``time.monotonic_ns()``): text, so it travels unchanged as a WebSocket text frame, inside
a JSON string (``json.webpubsub.azure.v1``, socket.io) and as a binary body."""


def stamp(seq: int, sent_ns: int) -> str:
    """The stamp that starts a message: see :data:`STAMP_SIZE`."""
    return f"{STAMP_MARK}{seq & 0xFFFFFFFF:08x}{sent_ns & 0xFFFFFFFFFFFFFFFF:016x}"


def payload(seq: int, sent_ns: int, size: int) -> str:
    """A message of ``size`` characters (ASCII, so also bytes): the stamp, then padding."""
    return stamp(seq, sent_ns).ljust(size, "x")


def read_stamp(frame: str) -> tuple[int, int] | None:
    """(sequence, send time) of the first stamp in ``frame`` (whatever wraps it), or
    ``None`` when it carries none or a malformed one (a system message, an ack)."""
    at = frame.find(STAMP_MARK)
    if at < 0 or len(frame) < at + STAMP_SIZE:
        return None
    digits = frame[at + len(STAMP_MARK) : at + STAMP_SIZE]
    try:
        return int(digits[:8], 16), int(digits[8:], 16)
    except ValueError:
        return None


# -- latency summary -------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile of ``sorted_values`` (``nan`` when empty)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return float(sorted_values[index])


def quantile_with_lost(sorted_values: Sequence[float], lost: int, q: float) -> float:
    """The ``q``-quantile of the received latencies plus ``lost`` messages counted as
    infinitely late (a message that never arrived is later than any bound)."""
    n = len(sorted_values) + max(0, lost)
    if n == 0:
        return float("nan")
    index = min(n - 1, max(0, math.ceil(q * n) - 1))
    return float(sorted_values[index]) if index < len(sorted_values) else math.inf


# -- the rate search -------------------------------------------------------------------


@dataclass
class RateSearch:
    """The highest offered rate that passes, found with a bounded number of steps.

    Doubling from ``start`` while steps pass (up to ``ceiling``); after the first failure,
    bisection (geometric mean) between the highest pass and the lowest failure until
    their ratio is at most ``resolution`` or ``max_steps`` steps were run in all. A
    failure at ``start`` halves downwards (at most to ``floor``). The answer,
    :attr:`best`, is the highest rate that passed (``None``: none did).
    """

    start: float
    max_steps: int = 10
    resolution: float = 1.15
    ceiling: float = math.inf
    floor: float = 1.0
    passed: float | None = None
    failed: float | None = None
    steps: list[tuple[float, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.max_steps >= 1 and self.resolution > 1):
            raise ValueError("start > 0, max_steps >= 1 and resolution > 1 are required")
        self.start = min(self.start, self.ceiling)

    @property
    def best(self) -> float | None:
        return self.passed

    def next_rate(self) -> float | None:
        """The rate of the next step, or ``None`` when the search is over."""
        if len(self.steps) >= self.max_steps:
            return None
        if not self.steps:
            return self.start
        lo, hi = self.passed, self.failed
        if hi is None:  # everything passed so far: go up
            assert lo is not None
            return None if lo >= self.ceiling else min(lo * 2, self.ceiling)
        if lo is None:  # everything failed so far: go down
            return None if hi <= self.floor else max(hi / 2, self.floor)
        if hi / lo <= self.resolution:
            return None
        return math.sqrt(lo * hi)

    def record(self, rate: float, ok: bool) -> None:
        self.steps.append((rate, ok))
        if ok:
            self.passed = rate if self.passed is None else max(self.passed, rate)
        else:
            self.failed = rate if self.failed is None else min(self.failed, rate)
