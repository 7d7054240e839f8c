"""The live trace's one poller per process: while any trace stream is open, it asks
the other nodes for their new records (one survey at a time, every
:data:`POLL_SECONDS`) and hands each stream's :class:`Feed` what that stream has
not seen; it also wakes the streams when this node's ring gets a record (this
node's records are read from the ring by each stream, never surveyed).

It starts with the first stream and stops with the last. However many streams are
open, the process has at most one survey of its own in flight for them, so streams
can neither crowd out the portal's other requests (the backplane refuses a 17th
survey in flight) nor multiply the work of the other nodes answering.

One survey asks each node for its records after the oldest cursor among the open
streams (so a new stream catches up through the same survey; the others skip
what they have had); a page the node had to cut is followed by the next one at
once. A stream that does not take its feed's records skips ahead: what did not fit
in :data:`FEED_MAX_BYTES` is reported to it as a ``gap`` of that node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import orjson

from webpubsub.errors import WebPubSubError
from webpubsub.server.portal_view import Survey, ask_nodes
from webpubsub.server.trace import TraceRing

POLL_SECONDS = 0.5
"""How often the other nodes are asked for their new records while a stream is open."""
FOLLOW_SECONDS = 0.05
"""The pause before the next page when a node's page was cut (it has more)."""
FEED_MAX_BYTES = 1024 * 1024
"""Serialized events of other nodes waiting in one stream's feed, at most."""


def sse_event(name: str, data: object) -> bytes:
    """One Server-Sent Event (``event:`` and ``data:`` lines)."""
    return sse_raw(name, orjson.dumps(data))


def sse_raw(name: str, data: bytes) -> bytes:
    """One Server-Sent Event whose data is already JSON."""
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


def page_of(answer: object) -> tuple[list[object], int, int] | None:
    """(records, first, last) of a node's trace page (None: not a page)."""
    if not isinstance(answer, dict):
        return None
    found, first, last = answer.get("records"), answer.get("first"), answer.get("last")
    if not isinstance(found, list) or not isinstance(first, int) or not isinstance(last, int):
        return None
    return found, first, last


class Feed:
    """What the poller has for one stream: events of other nodes, in order, bounded."""

    def __init__(self) -> None:
        self.cursor: dict[str, int] = {}
        """The last seq of each other node this stream has been given (or skipped)."""
        self.wake = asyncio.Event()
        self._events: deque[bytes] = deque()
        self._bytes = 0
        self._missed: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Bytes waiting for the stream."""
        return self._bytes

    def take(self, budget: int) -> list[bytes]:
        """The oldest waiting events, at most ``budget`` bytes of them (at least one)."""
        taken: list[bytes] = []
        size = 0
        while self._events and (not taken or size + len(self._events[0]) <= budget):
            event = self._events.popleft()
            size += len(event)
            taken.append(event)
        self._bytes -= size
        return taken

    def offer(self, node: str, records: list[tuple[int, bytes]], first: int, last: int) -> None:
        """A page of ``node``'s records (``(seq, event)``, oldest first); the node keeps
        ``first``..``last``. Takes what this stream has not had, as far as there is room."""
        seen = self.cursor.get(node)
        if seen is not None and seen > last:  # the node restarted: its seqs begin again
            seen = None
        if seen is not None and records and seen < first - 1:
            self._missed[node] = self._missed.get(node, 0) + first - 1 - seen
        for seq, event in records:
            if seen is not None and seq <= seen:
                continue
            if self._bytes + len(event) > FEED_MAX_BYTES:
                self._missed[node] = self._missed.get(node, 0) + 1  # skip ahead
            else:
                self._gap(node)
                self._push(event)
            seen = seq
        self.cursor[node] = last if seen is None else seen  # None: the node keeps none
        self._gap(node)

    def _gap(self, node: str) -> None:
        missed = self._missed.get(node)
        if missed and self._bytes < FEED_MAX_BYTES:
            del self._missed[node]
            self._push(sse_event("gap", {"node": node, "missed": missed}))

    def _push(self, event: bytes) -> None:
        self._events.append(event)
        self._bytes += len(event)
        self.wake.set()


class TracePoller:
    """The process's one poller of the other nodes' traces (see the module)."""

    def __init__(
        self, survey: Survey, own: Callable[[], str], local: TraceRing | None = None
    ) -> None:
        self._survey = survey
        self._own = own
        self._local = local
        self._feeds: set[Feed] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self.surveys = 0
        """Surveys sent so far (tests count them)."""

    def join(self) -> Feed:
        """A new stream's feed (the first starts the poller)."""
        feed = Feed()
        self._feeds.add(feed)
        if not self._tasks:
            self._tasks = [asyncio.create_task(self._poll(), name="portal-trace-poll")]
            if self._local is not None:
                self._tasks.append(asyncio.create_task(self._relay(), name="portal-trace-wake"))
        return feed

    def leave(self, feed: Feed) -> None:
        """A stream ended (the last stops the poller)."""
        self._feeds.discard(feed)
        feed.wake.set()
        if not self._feeds:
            tasks, self._tasks = self._tasks, []
            for task in tasks:
                task.cancel()

    def wake_all(self) -> None:
        for feed in self._feeds:
            feed.wake.set()

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks)

    async def _relay(self) -> None:
        """Wake every stream when this node's ring gets a record."""
        local = self._local
        assert local is not None
        seen = local.last_seq
        while self._feeds:
            await local.wait(seen, POLL_SECONDS * 20)
            if local.last_seq != seen:
                seen = local.last_seq
                self.wake_all()

    async def _poll(self) -> None:
        while self._feeds:
            more = await self.poll_once()
            await asyncio.sleep(FOLLOW_SECONDS if more else POLL_SECONDS)

    async def poll_once(self) -> bool:
        """One survey of the other nodes; True when a node has more than it sent."""
        own = self._own()
        feeds = list(self._feeds)
        if not feeds:
            return False
        nodes = {node for feed in feeds for node in feed.cursor}
        after = {node: min(feed.cursor.get(node, 0) for feed in feeds) for node in nodes}
        self.surveys += 1
        try:
            answers = await ask_nodes(self._survey, {"op": "trace", "after": after, "except": own})
        except WebPubSubError:  # no survey now (Redis down, too many): next time
            return False
        more = False
        for node, answer in answers:
            page = page_of(answer)
            if node == own or page is None:
                continue
            found, first, last = page
            records = [
                (seq, sse_event("record", item))
                for item in found
                if isinstance(item, dict) and isinstance(seq := item.get("seq"), int)
            ]
            for feed in feeds:
                if feed in self._feeds:
                    feed.offer(node, records, first, last)
            more = more or (bool(records) and records[-1][0] < last)
        return more

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
