"""The cost per event of the SQLite event queue (upstream/queue.py) on this machine.

    PYTHONPATH=src .venv/bin/python bench/event_queue.py [--events N] [--dir DIR]

Times, per event, what the service does on the event loop: ``add`` (one INSERT and a
commit, when a connected/disconnected event is created), ``get`` (one SELECT, when it is
sent) and ``remove`` (one DELETE, when the handler took it), on a file in WAL mode with
``synchronous=NORMAL`` and on ``:memory:``. Prints microseconds per event (median of
``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from webpubsub.protocol.cloudevents import EventContext, disconnected_request
from webpubsub.upstream.queue import MEMORY, QueuedEvent, SqliteEventQueue

KEY = "bench-access-key-0123456789-abcdefghijklmnop"


def events(count: int) -> list[QueuedEvent]:
    out = []
    for i in range(count):
        ctx = EventContext("chat", f"{i:032x}", "alice", None, "", "2", "localhost")
        url = "http://127.0.0.1:5000/eventhandler"
        request = disconnected_request(ctx, url, [KEY], time.time(), "bye")
        out.append(QueuedEvent(f"hub=chat connection={i}", "disconnected", request, url, 5.0, 0.0))
    return out


def run(path: str, batch: list[QueuedEvent]) -> tuple[float, float, float]:
    queue = SqliteEventQueue(path)
    started = time.perf_counter()
    stored = [queue.add(e) for e in batch]
    added = time.perf_counter()
    for e in stored:
        queue.get(e.seq)
    got = time.perf_counter()
    for e in stored:
        queue.remove(e.seq)
    removed = time.perf_counter()
    queue.close()
    n = len(batch) / 1e6
    return (added - started) / n, (got - added) / n, (removed - got) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the file goes (default: a temp dir)")
    args = parser.parse_args()
    batch = events(args.events)
    print(f"{args.events} disconnected events, {len(batch[0].request.body)} B body")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, path in (("file (WAL, NORMAL)", str(Path(tmp) / "q.sqlite3")), (MEMORY, MEMORY)):
            runs = [run(path, batch) for _ in range(args.repeat)]
            add, get, remove = (statistics.median(r[i] for r in runs) for i in range(3))
            print(f"{name:20} add {add:6.1f} µs  get {get:6.1f} µs  remove {remove:6.1f} µs")


if __name__ == "__main__":
    main()
