"""The delivery scheduler of queued events (``upstream/delivery.py``): deliveries per
origin bounded, and none of them waiting forever; against real handler apps."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.handler import EventHandlerApp, Recorded, default_responder
from webpubsub.protocol.cloudevents import UpstreamRequest
from webpubsub.upstream.delivery import MAX_PRESENCE_WAITING, PRESENCE_FULL, Delivery, RetryPolicy
from webpubsub.upstream.http import HttpTransport
from webpubsub.upstream.queue import (
    MEMORY,
    EventQueue,
    QueuedEvent,
    SqliteEventQueue,
    encode_record,
)

WAIT = 5.0


class Clock:
    """Wall time, which a test can move forward (a back-off passing at once)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def event(handler: EventHandlerApp, name: str, kind: str = "connected") -> QueuedEvent:
    request = UpstreamRequest(
        "POST",
        f"{handler.url}/{kind}",
        (("ce-connectionId", name), ("ce-eventName", kind)),
        b"",
    )
    return QueuedEvent(
        chain=f"hub=chat connection={name}",
        event=kind,
        request=request,
        validate_url="",
        timeout=WAIT,
        created=time.time(),
    )


async def no_validation(url: str) -> None:
    """The events here have no validation URL."""


MakeDelivery = Callable[..., Delivery]


@pytest.fixture
async def make_delivery() -> AsyncIterator[MakeDelivery]:
    made: list[tuple[Delivery, HttpTransport]] = []

    def make(
        clock: Callable[[], float] = time.time, queue: EventQueue | None = None, **kwargs: object
    ) -> Delivery:
        options: dict[str, object] = {"retry": RetryPolicy(delays=(0.0,), max_delay=0.02)}
        options.update(kwargs)
        transport = HttpTransport()
        delivery = Delivery(
            queue or SqliteEventQueue(MEMORY),
            transport,
            no_validation,
            clock=clock,
            **options,  # type: ignore[arg-type]
        )
        delivery.start()
        made.append((delivery, transport))
        return delivery

    yield make
    for delivery, transport in made:
        await delivery.aclose(0)
        await transport.close()


@pytest.fixture
async def other_handler() -> AsyncIterator[EventHandlerApp]:
    app = EventHandlerApp()
    await app.start()
    yield app
    await app.stop()


def answer_when_released(handler_app: EventHandlerApp) -> asyncio.Event:
    """The handler holds every answer until the event returned is set."""
    release = asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        await release.wait()
        return default_responder(req)

    handler_app.responder = responder
    return release


async def drained(delivery: Delivery) -> None:
    async with asyncio.timeout(WAIT):
        await delivery.wait_until(lambda: len(delivery) == 0)


def connection(req: Recorded) -> str:
    return req.headers.get("ce-connectionId", "")


async def test_deliveries_to_one_origin_stay_within_per_origin_and_all_arrive(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    running = 0
    most = 0
    release = asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 2:
            release.set()  # both slots taken: from now on they go as they come
        await release.wait()
        running -= 1
        return default_responder(req)

    handler_app.responder = responder
    delivery = make_delivery(per_origin=2)
    for i in range(8):
        delivery.add(event(handler_app, f"c{i}"))
    await drained(delivery)
    assert most == 2
    assert sorted(connection(r) for r in handler_app.requests) == [f"c{i}" for i in range(8)]
    assert delivery.stats.delivered == 8


async def test_a_chain_blocked_twice_by_a_full_origin_does_not_swallow_anothers_wake_up(
    handler_app: EventHandlerApp, other_handler: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    """The origin comes back while its slot is taken: the chains waiting out a back-off
    are due at once, their old back-off entries come due later with the slot still
    taken; each finished delivery must still wake a chain that can go (here D)."""
    clock = Clock()
    down = True
    held = {name: asyncio.Event() for name in "BC"}
    arrived = {name: asyncio.Event() for name in "BC"}

    async def responder(req: Recorded) -> web.StreamResponse:
        name = connection(req)
        if down:
            return web.Response(status=503)
        if name in held:
            arrived[name].set()
            await held[name].wait()
        return default_responder(req)

    handler_app.responder = responder
    delivery = make_delivery(
        clock, per_origin=1, retry=RetryPolicy(delays=(30.0,), max_delay=30.0, horizon=3600.0)
    )
    for name in "ABC":
        delivery.add(event(handler_app, name))
    async with asyncio.timeout(WAIT):
        # A fails first (the origin's canary: again in a second), then B, C (in 30 s).
        await delivery.wait_until(lambda: delivery.stats.retried == 3)
    down = False
    async with asyncio.timeout(WAIT):
        await arrived["B"].wait()  # A got through: B and C are due now, B takes the slot
    clock.offset += 60.0  # B's and C's old back-off entries are due, the slot still taken
    delivery.add(event(other_handler, "E"))  # a turn of the scheduler, seen by E arriving
    await other_handler.next_event("", timeout=WAIT)
    delivery.add(event(handler_app, "D"))  # waits for the slot too
    held["B"].set()
    async with asyncio.timeout(WAIT):
        await arrived["C"].wait()
    held["C"].set()
    await drained(delivery)
    assert [connection(r) for r in handler_app.requests][-4:] == ["A", "B", "C", "D"]


# -- a chain follows its first event ----------------------------------------------------


def delivered(handler: EventHandlerApp) -> list[tuple[str, str]]:
    return [(connection(r), r.event_name) for r in handler.requests if r.method == "POST"]


def buried(queue: EventQueue) -> list[tuple[str, str, str]]:
    return [(d.event.chain.rsplit("=", 1)[1], d.event.event, d.reason) for d in queue.dead()]


async def test_with_the_queue_full_a_connection_keeps_its_events_together(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    release = answer_when_released(handler_app)
    queue = SqliteEventQueue(MEMORY)
    delivery = make_delivery(queue=queue, max_queued=1)
    delivery.add(event(handler_app, "A"))
    await handler_app.next_event("", timeout=WAIT)  # A's connected is being delivered
    delivery.add(event(handler_app, "B"))  # full: dead-lettered
    delivery.add(event(handler_app, "A", "disconnected"))  # follows its connected
    release.set()
    await drained(delivery)
    delivery.add(event(handler_app, "B", "disconnected"))  # room now: follows B's connected
    assert delivered(handler_app) == [("A", "connected"), ("A", "disconnected")]
    assert buried(queue) == [
        ("B", "connected", "the event queue was full"),
        ("B", "disconnected", "an earlier event of its connection was dead-lettered"),
    ]
    assert delivery.stats.queue_full == 1 and len(delivery) == 0


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (400, RetryPolicy(delays=(0.0,), max_delay=0.02)),  # refused for good
        (503, RetryPolicy(delays=(0.0,), max_delay=0.02, horizon=0.0)),  # past the horizon
    ],
)
async def test_a_dead_connected_takes_its_disconnected_to_the_dead_letters(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery, status: int, retry: RetryPolicy
) -> None:
    release = asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connected":
            await release.wait()
            return web.Response(status=status)
        return default_responder(req)

    handler_app.responder = responder
    queue = SqliteEventQueue(MEMORY)
    delivery = make_delivery(queue=queue, retry=retry)
    delivery.add(event(handler_app, "Y"))
    delivery.add(event(handler_app, "Z"))
    delivery.add(event(handler_app, "Y", "disconnected"))  # queued behind Y's connected
    release.set()
    await drained(delivery)
    delivery.add(event(handler_app, "Z", "disconnected"))  # after Z's connected died
    # Two chains at once: their requests may arrive in either order.
    assert sorted(delivered(handler_app)) == [("Y", "connected"), ("Z", "connected")]
    follows = "an earlier event of its connection was dead-lettered"
    assert sorted(buried(queue)) == [
        ("Y", "connected", f"status {status}"),
        ("Y", "disconnected", follows),
        ("Z", "connected", f"status {status}"),
        ("Z", "disconnected", follows),
    ]
    assert queue.replay(None, time.time()) == 4  # replayed together: in their order
    await drained(delivery)  # picked up by the next poll, within a second


# -- a queue file locked by another process ---------------------------------------------


async def test_a_locked_queue_file_neither_blocks_the_node_nor_loses_its_events(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery, tmp_path: Path
) -> None:
    path = str(tmp_path / "events.sqlite3")
    queue = SqliteEventQueue(path)
    delivery = make_delivery(queue=queue)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. `webpubsub events replay` in another process
    started = time.monotonic()
    delivery.add(event(handler_app, "A"))
    delivery.add(event(handler_app, "A", "disconnected"))
    assert time.monotonic() - started < 1.0  # one busy timeout, not 5 s per event
    assert delivery.stats.store_errors == 1 and delivery.unsaved == 2 and len(delivery) == 2
    other.execute("ROLLBACK")
    other.close()
    await drained(delivery)  # written, then delivered, in order
    assert delivered(handler_app) == [("A", "connected"), ("A", "disconnected")]
    assert delivery.unsaved == 0 and delivery.stats.not_stored == 0


# -- events taken over from another node (the Redis backplane's takeover) ------------------


async def test_events_taken_over_while_the_queue_file_is_locked_are_left_not_held_in_memory(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery, tmp_path: Path
) -> None:
    """The takeover removes from the dead node's copy what ``adopt`` reports queued: an
    event waiting in memory (and lost if this node stops) must not be reported so."""
    path = str(tmp_path / "events.sqlite3")
    queue = SqliteEventQueue(path)
    delivery = make_delivery(queue=queue)
    records = [encode_record(event(handler_app, "T", kind)) for kind in ("connected", "gone")]
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    delivery.add(event(handler_app, "own"))  # the node's own write waits in memory
    assert delivery.adopt(records) == []  # none taken: they stay in the other's copy
    assert delivery.unsaved == 1 and delivery.stats.taken_over == 0
    other.execute("ROLLBACK")
    other.close()
    assert delivery.adopt(records) == [2, 3]  # the node's own write went first
    assert delivery.unsaved == 0 and delivery.stats.taken_over == 2
    await drained(delivery)
    assert sorted(delivered(handler_app)) == [
        ("T", "connected"),
        ("T", "gone"),
        ("own", "connected"),
    ]
    assert delivered(handler_app).index(("T", "connected")) < delivered(handler_app).index(
        ("T", "gone")
    )


async def test_a_taken_over_event_of_a_connection_with_a_dead_letter_follows_it(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    """Taken over, an event is this node's own: a chain follows its first event here too."""

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "connected":
            return web.Response(status=400)
        return default_responder(req)

    handler_app.responder = responder
    queue = SqliteEventQueue(MEMORY)
    delivery = make_delivery(queue=queue)
    assert delivery.adopt([encode_record(event(handler_app, "X"))]) == [1]
    await drained(delivery)
    assert delivery.adopt([encode_record(event(handler_app, "X", "disconnected"))]) == [0]
    assert buried(queue) == [
        ("X", "connected", "status 400"),
        ("X", "disconnected", "an earlier event of its connection was dead-lettered"),
    ]
    assert delivery.stats.taken_over == 1  # queued here; the other went to the dead letters


async def test_events_taken_over_by_a_full_queue_stay_in_the_other_nodes_copy(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    """The queue has room for two: of five new connections' events taken over, two are
    queued (and counted) and the rest are not taken (left in the dead node's copy), not
    dead-lettered here without one attempt; a ``disconnected`` of a chain queued here
    still goes in, as the node's own do (a ``joined`` does not)."""
    release = answer_when_released(handler_app)
    queue = SqliteEventQueue(MEMORY)
    delivery = make_delivery(queue=queue, max_queued=2)
    records = [encode_record(event(handler_app, f"c{i}")) for i in range(5)]
    assert delivery.adopt(records) == [1, 2]
    assert buried(queue) == [] and delivery.stats.taken_over == 2
    joined = encode_record(event(handler_app, "c0", "joined"))
    assert delivery.adopt([joined]) == []  # a presence event is bounded on its chain too
    follows = encode_record(event(handler_app, "c0", "disconnected"))
    assert delivery.adopt([follows, records[2]]) == [3]
    assert buried(queue) == [] and delivery.stats.taken_over == 3
    release.set()
    await drained(delivery)


async def test_events_adopted_on_hold_are_sent_only_once_released(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    """A survivor holds what it adopts until the dead node's copy lets it go: a held
    event is not sent (an own event queued after it goes first, one at a time to the
    origin); handed back it is never sent; released, it is."""
    delivery = make_delivery(per_origin=1)
    kept, handed_back = (encode_record(event(handler_app, name)) for name in ("K", "H"))
    assert delivery.adopt([kept, handed_back], hold=True) == [1, 2]
    delivery.add(event(handler_app, "own"))
    async with asyncio.timeout(WAIT):
        await delivery.wait_until(lambda: delivery.stats.delivered >= 1)
    assert delivered(handler_app) == [("own", "connected")]
    assert delivery.drop([2], handed_back=True) == 1
    delivery.release([1])
    await drained(delivery)
    assert delivered(handler_app) == [("own", "connected"), ("K", "connected")]
    assert delivery.stats.taken_over == 1


# -- group presence events: buried alone, and bounded --------------------------------


@pytest.mark.parametrize("behind", [True, False], ids=["queued-behind", "queued-after"])
async def test_a_dead_presence_event_is_buried_alone_and_its_chain_goes_on(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery, behind: bool
) -> None:
    release = asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.event_name == "joined":
            await release.wait()
            return web.Response(status=404)  # refused for good
        return default_responder(req)

    handler_app.responder = responder
    queue = SqliteEventQueue(MEMORY)
    delivery = make_delivery(queue=queue)
    delivery.add(event(handler_app, "A"))
    delivery.add(event(handler_app, "A", "joined"))
    if behind:  # waiting behind the joined when it dies
        delivery.add(event(handler_app, "A", "left"))
        delivery.add(event(handler_app, "A", "disconnected"))
    release.set()
    await drained(delivery)
    if not behind:  # queued after the joined died: a new chain
        delivery.add(event(handler_app, "A", "left"))
        delivery.add(event(handler_app, "A", "disconnected"))
        await drained(delivery)
    assert delivered(handler_app) == [
        ("A", "connected"),
        ("A", "joined"),
        ("A", "left"),
        ("A", "disconnected"),
    ]
    assert buried(queue) == [("A", "joined", "status 404")]


async def test_a_connections_presence_events_are_bounded_by_the_queue(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    release = answer_when_released(handler_app)
    queue = SqliteEventQueue(MEMORY)
    delivery = make_delivery(queue=queue, max_queued=10)
    delivery.add(event(handler_app, "A"))
    await handler_app.next_event("", timeout=WAIT)  # A's connected is being delivered
    for _ in range(1000):  # a client's join/leave loop while its handler is slow
        delivery.add(event(handler_app, "A", "joined"))
    assert len(delivery) == 10
    delivery.add(event(handler_app, "A", "disconnected"))  # queued all the same
    assert len(delivery) == 11 and delivery.stats.queue_full == 991
    release.set()
    await drained(delivery)
    assert delivered(handler_app) == [
        ("A", "connected"),
        *[("A", "joined")] * 9,
        ("A", "disconnected"),
    ]
    assert set(buried(queue)) == {("A", "joined", "the event queue was full")}


async def test_a_connection_has_at_most_its_cap_of_presence_events_waiting(
    handler_app: EventHandlerApp, make_delivery: MakeDelivery
) -> None:
    release = answer_when_released(handler_app)
    queue = SqliteEventQueue(MEMORY)
    delivery = make_delivery(queue=queue)
    delivery.add(event(handler_app, "A"))
    delivery.add(event(handler_app, "B"))
    await handler_app.next_event("", timeout=WAIT)
    for _ in range(MAX_PRESENCE_WAITING + 50):
        delivery.add(event(handler_app, "A", "joined"))
    delivery.add(event(handler_app, "B", "left"))  # another connection's own cap
    delivery.add(event(handler_app, "A", "disconnected"))
    assert len(delivery) == 2 + MAX_PRESENCE_WAITING + 2
    assert [reason for *_, reason in buried(queue)] == [PRESENCE_FULL] * 50
    release.set()
    await drained(delivery)
    mine = [e for e in delivered(handler_app) if e[0] == "A"]
    assert mine == [
        ("A", "connected"),
        *[("A", "joined")] * MAX_PRESENCE_WAITING,
        ("A", "disconnected"),
    ]
