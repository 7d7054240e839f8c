"""What observing one REST broadcast costs: the trace ring and the metrics, per call.

A REST send to all reaches the observers twice (the REST call, and one fan-out report
with its number of recipients), never once per recipient; so does a client's
``sendToGroup`` (the frame, and the fan-out). This prints the time of those
calls for the trace, the metrics and both (as the service joins them), next to the
in-process fan-out they observe (``Hub.deliver`` of one message to N connections with
sinks that only count, so no socket work: the cheapest the delivery itself can be), in
the same run, and the ratio.

    .venv/bin/python bench/observers.py [--recipients 1000] [--calls 100000]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import timeit

from webpubsub.core.connection import Connection
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permissions
from webpubsub.node.observe import Exchange, Observers, RestCall
from webpubsub.protocol.backplane import Target
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse
from webpubsub.protocol.frames import ClientProtocol, DataMessage
from webpubsub.protocol.payload import Payload
from webpubsub.server.metrics import Metrics
from webpubsub.server.trace import TraceRing


class CountingSink:
    """A sink that keeps nothing: the fan-out's own cost, without a transport."""

    def __init__(self) -> None:
        self.offered = 0

    def offer(self, frame: bytes) -> None:
        self.offered += 1

    def close(self, code: int, reason: str) -> None:
        pass

    @property
    def buffered_bytes(self) -> int:
        return 0

    async def drained(self) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1000, help="connections (1000)")
    parser.add_argument("--calls", type=int, default=100_000, help="timed calls (100000)")
    args = parser.parse_args(argv)
    if not 1 <= args.recipients <= 100_000 or not 1 <= args.calls <= 10_000_000:
        parser.error("--recipients within 1..100000, --calls within 1..10000000")
    words = sys.argv if argv is None else [sys.argv[0], *argv]
    print(f"command: {shlex.join([os.path.relpath(sys.executable), *words])}")

    hub = Hub("bench")
    for i in range(args.recipients):
        hub.add(
            Connection(
                connection_id=f"c{i}",
                hub="bench",
                user_id=f"u{i}",
                protocol=ClientProtocol.SIMPLE,
                subprotocol=None,
                sink=CountingSink(),
                permissions=Permissions.from_roles(()),
            )
        )
    message = DataMessage(Payload.text("x" * 100))
    target = Target.all()
    connections = hub.connections()
    call = RestCall("bench", "SendToAll", "POST", "/api/hubs/bench/:send", 202, 3e-4, "127.0.0.1")
    trace = TraceRing(1000, "n1")
    metrics = Metrics()
    both = Observers([metrics, trace])

    def per_call(fn: object, number: int) -> float:
        return timeit.timeit(fn, number=number) / number  # type: ignore[arg-type]

    fan_out = per_call(lambda: hub.deliver(connections, message), max(1, args.calls // 1000))
    print(f"fan-out of one message to {args.recipients} connections: {fan_out * 1e6:.1f} µs")
    sender = connections[0]
    frame = '{"type":"sendToGroup","group":"g","dataType":"text","data":"' + "x" * 100 + '"}'
    for name, observer in (("trace", trace), ("metrics", metrics), ("trace + metrics", both)):

        def observe(o: object = observer) -> None:
            o.rest_call(call)  # type: ignore[attr-defined]
            o.delivered("bench", target, message, args.recipients)  # type: ignore[attr-defined]

        def client_send(o: object = observer) -> None:
            o.received(sender, frame, "sendToGroup")  # type: ignore[attr-defined]
            o.delivered("bench", target, message, args.recipients)  # type: ignore[attr-defined]

        cost = per_call(observe, args.calls)
        print(
            f"{name}: {cost * 1e6:.2f} µs per REST broadcast = "
            f"{cost / fan_out:.2%} of the fan-out it observes"
        )
        cost = per_call(client_send, args.calls)
        print(
            f"{name}: {cost * 1e6:.2f} µs per client sendToGroup = "
            f"{cost / fan_out:.2%} of the fan-out it observes"
        )
    exchange = _message_event()
    cost = per_call(lambda: trace.cloud_event(exchange), max(1, args.calls // 10))
    print(f"trace: {cost * 1e6:.2f} µs per CloudEvent (a 2 KB message event and its 2 KB answer)")


def message_event_headers(ce_id: str = "17") -> tuple[tuple[str, str], ...]:
    """The headers the service sends with a simple client's ``message`` event."""
    return (
        ("Content-Type", "text/plain"),
        ("ce-specversion", "1.0"),
        ("ce-type", "azure.webpubsub.user.message"),
        ("ce-source", "/client/c1"),
        ("ce-id", ce_id),
        ("ce-time", "2026-12-01T00:00:00Z"),
        ("ce-signature", "sha256=" + "a" * 64),
        ("ce-userId", "u1"),
        ("ce-connectionId", "c1"),
        ("ce-hub", "bench"),
        ("ce-eventName", "message"),
        ("WebHook-Request-Origin", "localhost"),
        ("ce-awpsversion", "1.0"),
    )


def _message_event() -> Exchange:
    """A user ``message`` event with the headers the service sends, answered in kind."""
    headers = message_event_headers()
    request = UpstreamRequest("POST", "http://127.0.0.1:8080/eventhandler", headers, b"x" * 2048)
    answer = UpstreamResponse(200, (("Content-Type", "text/plain"),), b"x" * 2048)
    return Exchange(request, answer, None, 0.001)


if __name__ == "__main__":
    main()
