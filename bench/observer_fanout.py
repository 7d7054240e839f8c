"""What the observers cost per echo and per REST send, as the service joins them.

An echo (``echo-upstream``: a simple client's 2 KB frame, its ``message`` CloudEvent to
the upstream and the upstream's 2 KB answer sent back) reaches the observers three times:
``received``, ``cloud_event`` and ``replied``. A REST send to one user reaches them three
times too: ``rest_call``, ``delivered`` (one recipient) and ``published`` (the backplane
publish). This times those calls through :class:`Observers` of the metrics and the trace
ring (at capacity, so that every record added evicts one, as in a long run), of each
alone, and of both; each CloudEvent is a new ``Exchange`` with its own ``ce-id`` (as the
service sends), whose construction is timed apart and subtracted.

    .venv/bin/python bench/observer_fanout.py [--calls 10000] [--rounds 15] [--capacity 1000]
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import statistics
import sys
import time

from observers import message_event_headers

from webpubsub.core.connection import Connection
from webpubsub.core.permissions import Permissions
from webpubsub.node.observe import Exchange, Observers, RestCall
from webpubsub.protocol.backplane import Target
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse
from webpubsub.protocol.frames import ClientProtocol, DataMessage
from webpubsub.protocol.payload import Payload
from webpubsub.server.metrics import Metrics
from webpubsub.server.trace import TraceRing

SIZE = 2048


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="timed calls a round (10000)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (15)")
    parser.add_argument("--capacity", type=int, default=1000, help="trace records (1000)")
    args = parser.parse_args(argv)
    words = sys.argv if argv is None else [sys.argv[0], *argv]
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *words])}")
    n = args.calls

    conn = Connection(
        connection_id="c1",
        hub="bench",
        user_id="u1",
        protocol=ClientProtocol.SIMPLE,
        subprotocol=None,
        sink=None,
        permissions=Permissions.from_roles(()),
    )
    frame = "x" * SIZE
    body = frame.encode()
    reply = DataMessage(Payload.text(frame))
    answer = UpstreamResponse(200, (("Content-Type", "text/plain"),), body)
    url = "http://127.0.0.1:8080/eventhandler"
    headers = [message_event_headers(str(i)) for i in range(n)]
    call = RestCall(
        "bench", "SendToUser", "POST", "/api/hubs/bench/users/u1/:send", 202, 3e-4, "127.0.0.1"
    )
    target = Target.user("u1")
    message = DataMessage(Payload.text("x" * 100))

    def exchange(i: int) -> Exchange:
        return Exchange(UpstreamRequest("POST", url, headers[i], body), answer, None, 0.001)

    makings = []
    for _ in range(args.rounds):
        start = time.process_time()
        for i in range(n):
            exchange(i)
        makings.append((time.process_time() - start) / n)
    making = statistics.median(makings)

    for name in ("metrics", "trace", "trace + metrics"):
        observers: list[object] = []
        if "metrics" in name:
            observers.append(Metrics())
        if "trace" in name:
            observers.append(TraceRing(args.capacity, "n1"))
        o = Observers(observers)  # type: ignore[arg-type]
        for _ in range(args.capacity):  # at capacity from the first timed call
            o.received(conn, frame, "message")
        gc.collect()
        gc.freeze()  # the setup's objects: not traversed by every collection
        echoes, rests = [], []
        for _ in range(args.rounds):
            start = time.process_time()
            for i in range(n):
                o.received(conn, frame, "message")
                o.cloud_event(exchange(i))
                o.replied(conn, reply)
            echoes.append((time.process_time() - start) / n - making)
            start = time.process_time()
            for _ in range(n):
                o.rest_call(call)
                o.delivered("bench", target, message, 1)
                o.published(2e-4, None)
            rests.append((time.process_time() - start) / n)
        print(
            f"{name}: {_us(echoes)} µs per echo, {_us(rests)} µs per REST send to a user"
            " (median of the rounds, their least in brackets)"
        )


def _us(seconds: list[float]) -> str:
    return f"{statistics.median(seconds) * 1e6:.2f} ({min(seconds) * 1e6:.2f})"


if __name__ == "__main__":
    main()
