"""What one REST request costs the service, next to a plain aiohttp handler, in one run.

Issue 13's target for the REST path: a send to a user who is not connected (the request
path alone: HTTP parsing, routing, the token check, the body, the answer) at most 2× a
plain aiohttp handler that reads the body and answers 202, measured in the same run.

Processes (all on 127.0.0.1): the service (the real ``ServiceRunner`` on uvloop, set up as
``webpubsub serve`` is, see bench/harness.py), a plain aiohttp app on uvloop with one route
at the same path, and this one, which sends ``--requests`` signed REST sends
(``POST /api/hubs/{hub}/users/{user}/:send``, a fresh SDK-style token per request: ``aud``
the URL, ``exp`` to the second) with ``--concurrency`` in flight over keep-alive
connections, to each server in turn, ``--repeats`` times interleaved. Server CPU is
utime + stime from ``/proc/<pid>/stat`` around each batch.

    .venv/bin/python bench/rest_cost.py [--requests 5000] [--concurrency 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from multiprocessing.connection import Connection as Pipe

from harness import ACCESS_KEY, HUB, command_line, cpu_seconds, raise_fd_limit, serve
from loadgen import RestPool

from webpubsub.protocol.tokens import issue_rest_token


def plain_server(pipe: Pipe) -> None:
    """A plain aiohttp handler at the REST send's path: reads the body, answers 202."""
    import uvloop

    uvloop.run(_plain(pipe))


async def _plain(pipe: Pipe) -> None:
    import os

    from aiohttp import web

    async def send(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/api/hubs/{hub}/users/{user}/:send", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pipe.send((os.getpid(), f"http://127.0.0.1:{port}"))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(pipe.fileno(), stop.set)
    await stop.wait()
    await runner.cleanup()


async def batch(base: str, requests: int, concurrency: int, sign: bool) -> tuple[float, int]:
    """Send ``requests`` REST sends to ``base``; (wall seconds, failures)."""
    pool = RestPool(concurrency)
    gate = asyncio.Semaphore(concurrency)
    failures = 0

    async def one(i: int) -> None:
        nonlocal failures
        try:
            url = f"{base}/api/hubs/{HUB}/users/nobody{i % 100}/:send?api-version=2024-12-01"
            token = issue_rest_token(ACCESS_KEY, audience=url, now=time.time()) if sign else None
            async with asyncio.timeout(10):
                status = await pool.post(url, "x" * 100, token)
            failures += status != 202
        except Exception:
            failures += 1
        finally:
            gate.release()

    started = time.perf_counter()
    tasks = set()
    for i in range(requests):  # bounded: requests
        await gate.acquire()
        task = asyncio.create_task(one(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    pool.close()
    return time.perf_counter() - started, failures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="per batch (5000)")
    parser.add_argument("--concurrency", type=int, default=16, help="in flight (16)")
    parser.add_argument("--repeats", type=int, default=3, help="batches per server (3)")
    parser.add_argument(
        "--observers",
        choices=("default", "trace", "none"),
        default="default",
        help="the service's portal trace and metrics: both (default), the trace only, none",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 1_000_000 or not 1 <= args.concurrency <= 1000:
        parser.error("--requests within 1..1000000, --concurrency within 1..1000")
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats within 1..20")
    print(f"command: {command_line(argv)}")
    raise_fd_limit()
    ctx = mp.get_context("spawn")
    pipes, procs = [], []
    service_args = (0, None, None, None, args.observers, None)
    for target, extra in ((serve, service_args), (plain_server, ())):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, *extra), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        (service_pid, connection_string), (plain_pid, plain_base) = (p.recv() for p in pipes)
        service_base = connection_string.split("Endpoint=", 1)[1].split(";", 1)[0]
        print(f"service pid {service_pid}, plain aiohttp pid {plain_pid} (for py-spy)", flush=True)
        per_request: dict[str, list[float]] = {"service": [], "plain": []}
        for _ in range(args.repeats):
            for name, pid, base, sign in (
                ("service", service_pid, service_base, True),
                ("plain", plain_pid, plain_base, True),
            ):
                before = sum(cpu_seconds(pid))
                wall, failures = asyncio.run(batch(base, args.requests, args.concurrency, sign))
                used = sum(cpu_seconds(pid)) - before
                per_request[name].append(used / args.requests * 1e3)
                print(
                    f"{name:8} {args.requests} requests in {wall:.2f} s "
                    f"({args.requests / wall:,.0f}/s), server CPU {used:.2f} s = "
                    f"{used / args.requests * 1e3:.3f} ms per request, failures {failures}"
                )
        service = statistics.median(per_request["service"])
        plain = statistics.median(per_request["plain"])
        print(
            f"median server CPU per request: service {service:.3f} ms, plain aiohttp "
            f"{plain:.3f} ms, ratio {service / plain:.2f}x"
        )
    finally:
        for pipe in pipes:
            pipe.send(("stop",))
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()


if __name__ == "__main__":
    sys.exit(main())
