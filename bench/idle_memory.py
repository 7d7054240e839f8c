"""Where an idle connection's bytes go: a ``tracemalloc`` diff in the service process.

The real ``ServiceRunner`` (uvloop, portal and metrics on, as ``webpubsub serve``) runs in
this process with ``tracemalloc`` on; a child process connects 20 clients (uncounted,
so one-off caches are in the baseline), then ``N`` idle simple clients (``rawws``). The
service's RSS and traced memory are read before and after, and the growth is printed
per connection, grouped by file and by line (``TB=K`` adds the K largest tracebacks).
``tracemalloc`` inflates RSS itself: the RSS per connection of the ``idle`` scenario is
``bench/scenarios.py --scenario idle``'s, not this one's.

    PYTHONPATH=src:bench .venv/bin/python bench/idle_memory.py 2000
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import linecache
import multiprocessing as mp
import os
import sys
import time
import tracemalloc
from multiprocessing.connection import Connection as Pipe

from harness import ACCESS_KEY, HUB, raise_fd_limit

FRAMES = int(os.environ.get("FRAMES", "12"))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def clients(port: int, n: int, pipe: Pipe) -> None:
    raise_fd_limit()
    import uvloop

    uvloop.run(_clients(port, n, pipe))


async def _clients(port: int, n: int, pipe: Pipe) -> None:
    from rawws import RawWebSocket

    from webpubsub.protocol.tokens import issue_client_token

    url = f"ws://127.0.0.1:{port}/client/hubs/{HUB}"
    token = issue_client_token(ACCESS_KEY, audience=url.replace("ws:", "http:"), now=time.time())
    held = []
    for i in range(0, n, 100):
        held += await asyncio.gather(
            *(
                RawWebSocket.connect(
                    f"{url}?access_token={token}", None, lambda *a: None, lambda: None
                )
                for _ in range(min(100, n - i))
            )
        )
    pipe.send("up")
    pipe.recv()


async def connect(port: int, n: int) -> tuple[Pipe, mp.process.BaseProcess]:
    ours, theirs = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=clients, args=(port, n, theirs))
    proc.start()
    for _ in range(6000):  # bounded: 10 minutes
        if ours.poll():
            break
        await asyncio.sleep(0.1)
    ours.recv()
    return ours, proc


async def main(n: int) -> None:
    from webpubsub.config import MetricsSettings, PortalSettings, default_config
    from webpubsub.server.app import ServiceRunner, tune_gc

    config = default_config().with_overrides(host="127.0.0.1", port=0, access_keys=ACCESS_KEY)
    config = dataclasses.replace(
        config,
        server=dataclasses.replace(config.server, data_dir=":memory:"),
        portal=PortalSettings(enabled=True),
        metrics=MetricsSettings(enabled=True),
    )
    runner = ServiceRunner(config, advertised_host="127.0.0.1")
    await runner.start()
    tune_gc()
    pipe, proc = await connect(runner.port, 20)
    pipe.send("go")
    proc.join()
    await asyncio.sleep(0.5)
    gc.collect()
    r0, s0, t0 = rss(), tracemalloc.take_snapshot(), tracemalloc.get_traced_memory()[0]
    pipe, proc = await connect(runner.port, n)
    await asyncio.sleep(1.0)
    gc.collect()
    r1, s1, t1 = rss(), tracemalloc.take_snapshot(), tracemalloc.get_traced_memory()[0]
    print(
        f"N={n} RSS {(r1 - r0) / n / 1024:.2f} KiB, traced {(t1 - t0) / n / 1024:.2f} KiB per conn"
    )
    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    s0, s1 = s0.filter_traces(own), s1.filter_traces(own)
    for key in ("filename", "lineno"):
        print(f"--- by {key}")
        for st in s1.compare_to(s0, key)[: int(os.environ.get("TOP", "30"))]:
            frame = st.traceback[0]
            code = linecache.getline(frame.filename, frame.lineno).strip()[:80]
            where = frame.filename.split("site-packages/")[-1]
            print(
                f"{st.size_diff / n:8.0f} B {st.count_diff / n:6.2f} blocks"
                f"  {where}:{frame.lineno}  {code}"
            )
    for st in s1.compare_to(s0, "traceback")[: int(os.environ.get("TB", "0"))]:
        print(f"{st.size_diff / n:8.0f} B {st.count_diff / n:6.2f} blocks")
        for line in st.traceback.format()[-16:]:
            print("    " + line)
    pipe.send("go")
    proc.join()
    await runner.stop()


if __name__ == "__main__":
    raise_fd_limit()
    tracemalloc.start(FRAMES)
    import uvloop

    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
