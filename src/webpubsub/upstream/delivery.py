"""At-least-once delivery of ``connected``/``disconnected`` from an :class:`EventQueue`.

* An event is stored when it is created and leaves the queue once its handler
  answered 2xx; it is sent again, with the same request and ``ce-id``, after a
  408, 429, 5xx, a timeout or a network error: first after Azure's 1 s / 3 s / 5 s,
  then after doubling delays up to ``max_delay`` (a 429 or 503 waits its
  ``Retry-After`` instead), until ``horizon`` seconds after it was created; then it
  goes to the dead letters. Another status sends it there at once.
* Events of one chain (one connection) go one at a time, in the order created:
  a connection's ``connected`` before its ``disconnected``. A chain follows its
  first event: once an event of a chain is dead-lettered, the events of that chain
  queued behind it or created later go to the dead letters too (replayed together,
  they keep their order); an event of a chain already queued is queued even when
  the queue is full (so a ``disconnected`` never goes without its ``connected``).
* While an origin fails, one of its waiting events tries again every
  :data:`CANARY_SECONDS`; once one event to an origin is delivered, that origin's
  waiting events are tried again at once.
* Bounded: at most ``max_queued`` events wait, and the later events of the chains
  among them (a new chain's event beyond goes to the dead letters, logged and
  counted), ``max_dead`` dead letters are kept (the oldest go, logged and counted),
  at most ``per_origin`` deliveries run to one handler origin and :data:`MAX_RUNNING`
  in all.
* The node's calls (:meth:`Delivery.add`, :meth:`~Delivery.opened`,
  :meth:`~Delivery.ended`) never raise: when the queue's file is locked elsewhere or
  failing, their writes wait in memory (at most :data:`MAX_UNSAVED`, in order) and are
  written again every :data:`STORE_RETRY_SECONDS`; logged at most once a minute and
  counted (``store_errors``, ``not_stored`` for what did not fit).
* With an event mirror (the Redis backplane), each queued event is also copied where
  the other nodes can take it over should this node die (:class:`EventStore` is how
  the mirror sees this queue): the local queue stays the write-ahead, the copy follows
  (an event waiting in memory is copied once it is written).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from webpubsub.errors import UpstreamError
from webpubsub.node.ports import EventMirrorPort
from webpubsub.protocol.cloudevents import async_outcome
from webpubsub.upstream.http import HttpTransport, safe_url
from webpubsub.upstream.queue import (
    BURIED_ALONE,
    STORAGE_ERRORS,
    CorruptRecord,
    EventQueue,
    LiveConnection,
    QueuedEvent,
    decode_record,
    encode_record,
)

_log = logging.getLogger("webpubsub.upstream")

MAX_RUNNING = 256
CANARY_SECONDS = 1.0
"""While events to an origin wait out their back-off, one of them (the canary) tries again
this often; when it gets through, the others of that origin go at once: a handler that
comes back is noticed within a second or two, not after the longest back-off."""
POLL_SECONDS = 1.0
"""How often the queue is read for events another process put there (``events replay``)."""
_MIN_BACKOFF = 0.05
MAX_UNSAVED = 10_000
"""Writes the node made that wait in memory while the queue's file cannot be written."""
STORE_RETRY_SECONDS = 0.5
"""How often writes waiting in memory are tried again (and a delivery whose outcome
could not be written)."""
STORE_LOG_SECONDS = 60.0
"""At most one warning this often about the queue's file failing."""
FULL = "the event queue was full"
FOLLOWS = "an earlier event of its connection was dead-lettered"
MAX_PRESENCE_WAITING = 100
"""Group presence events (``joined``/``left``) of one connection waiting at most: a
client looping join/leave while its handler is slow cannot grow its chain further."""
PRESENCE_FULL = f"{MAX_PRESENCE_WAITING} group presence events of its connection were waiting"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    delays: tuple[float, ...] = (1.0, 3.0, 5.0)
    """Azure's schedule for the first retries."""
    max_delay: float = 300.0
    horizon: float = 86400.0

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failed attempt (1-based)."""
        if failures <= len(self.delays):
            return self.delays[failures - 1]
        base = max(self.delays[-1] if self.delays else 0.0, _MIN_BACKOFF)
        steps = failures - len(self.delays)
        return min(base * 2.0 ** min(steps, 64), self.max_delay)


@dataclass(slots=True)
class DeliveryStats:
    """Counters since start (also the answer to "was anything dropped?")."""

    delivered: int = 0
    retried: int = 0
    dead_lettered: int = 0
    queue_full: int = 0
    dead_dropped: int = 0
    not_queued: int = 0
    """Events that happened after the queue was closed (at the very end of a shutdown)."""
    store_errors: int = 0
    """Queue calls that failed (the file locked by another process longer than its
    busy timeout, or failing); what the node wrote waited in memory meanwhile."""
    not_stored: int = 0
    """Events lost: the queue's file failed and :data:`MAX_UNSAVED` were waiting."""
    taken_over: int = 0
    """Events of a dead node this node took over (queued here, with their ``ce-id``)."""
    taken_by_others: int = 0
    """Events of this node another took over while it was taken for dead (not sent here)."""
    presence_full: int = 0
    """Group presence events dead-lettered: :data:`MAX_PRESENCE_WAITING` of their
    connection were waiting."""


@dataclass(slots=True)
class _Item:
    """A queued event as the scheduler sees it (the request stays in the queue)."""

    seq: int
    chain: str
    origin: str
    created: float
    attempts: int = 0
    next_at: float = 0.0
    alone: bool = False
    """A group presence event: dead-lettered alone, its chain goes on."""


@dataclass(frozen=True, slots=True)
class _Write:
    """A write the node asked for: an event (with the live connection it opens or
    ends), or only a live connection's record."""

    chain: str
    event: QueuedEvent | None
    opens: LiveConnection | None = None
    ends: bool = False


@dataclass(slots=True)
class _Chain:
    items: deque[_Item] = field(default_factory=deque)
    running: bool = False


def _presence_waiting(chain: _Chain) -> int:
    """The group presence events waiting in ``chain`` (a short scan: the chain holds
    at most MAX_PRESENCE_WAITING of them, and its connected and disconnected)."""
    return sum(item.alone for item in chain.items)


Validate = Callable[[str], Awaitable[None]]
"""Raise :class:`UpstreamError` unless the abuse-protection URL lets us deliver."""


class Delivery:
    """Delivers the queued events; ``clock`` is wall time (times are stored)."""

    def __init__(
        self,
        queue: EventQueue,
        transport: HttpTransport,
        validate: Validate,
        *,
        clock: Callable[[], float],
        retry: RetryPolicy,
        max_queued: int = 100_000,
        max_dead: int = 100_000,
        per_origin: int = 100,
        mirror: EventMirrorPort | None = None,
    ) -> None:
        self.queue = queue
        self._mirror = mirror
        self.stats = DeliveryStats()
        self._transport = transport
        self._validate = validate
        self._clock = clock
        self._retry = retry
        self._max_queued = max_queued
        self._max_dead = max_dead
        self._per_origin = per_origin
        self._chains: dict[str, _Chain] = {}
        self._count = 0
        self._heap: list[tuple[float, int, str]] = []
        self._blocked: dict[str, dict[str, None]] = {}
        """Per origin, the chains whose head is due but found the origin full (in order)."""
        self._origins: Counter[str] = Counter()
        self._waiting: dict[str, dict[str, None]] = {}
        """Per origin, the chains whose head waits out a back-off (in insertion order)."""
        self._canary: dict[str, str] = {}
        """Per origin, the chain whose head retries every CANARY_SECONDS."""
        self._running: set[asyncio.Task[None]] = set()
        self._last_seq = 0
        self._seqs: set[int] = set()
        """The events tracked here (so a look for other processes' events skips them)."""
        self._held: dict[int, str] = {}
        """Events adopted with ``hold`` (their chains): queued, not scheduled until
        released."""
        self._holding = False
        """Whether the event being tracked is held."""
        self._polled = 0
        """Every pending event up to this ``seq`` is tracked."""
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None
        self._pump: asyncio.Task[None] | None = None
        self._progress: asyncio.Event | None = None
        self._closed = False
        self._unsaved: deque[_Write] = deque()
        """Writes waiting for the queue's file to work again, in order."""
        self._store_retry_at = 0.0
        self._store_logged_at = float("-inf")
        self._store_errors_logged = 0

    def __len__(self) -> int:
        """Events waiting or being delivered (those waiting in memory included)."""
        return self._count + sum(1 for w in self._unsaved if w.event is not None)

    @property
    def unsaved(self) -> int:
        """Writes waiting in memory for the queue's file."""
        return len(self._unsaved)

    # -- in ---------------------------------------------------------------------------

    def start(self) -> None:
        """Load what the queue holds (from an earlier run) and start delivering."""
        while batch := self.queue.pending(after=self._last_seq, limit=1000):
            for event in batch:
                self._track(replace(event, next_at=0.0))  # a restart is a new chance
        self._polled = self._last_seq
        if self._count:
            _log.info("%d queued event(s) from an earlier run to deliver", self._count)
        self._ensure_pump()

    def add(
        self, event: QueuedEvent, *, opens: LiveConnection | None = None, ends: bool = False
    ) -> None:
        """Queue ``event`` durably (synchronously), or dead-letter it (the queue full, or
        its chain dead); ``opens``/``ends``: the live connection it starts or ends.
        Never raises: see the module's docstring."""
        if self._closed:
            self.stats.not_queued += 1
            _log.warning(
                "the event queue is closed (the service stopped): %s event of %s not queued",
                event.event,
                event.chain,
            )
            return
        self._write(_Write(event.chain, event, opens, ends))

    def opened(self, live: LiveConnection) -> None:
        """Record a live connection that has no ``connected`` event to queue."""
        if not self._closed:
            self._write(_Write(live.chain, None, opens=live))

    def ended(self, chain: str) -> None:
        """Forget the live connection of ``chain`` (its ``disconnected`` is not sent)."""
        if not self._closed:
            self._write(_Write(chain, None, ends=True))

    def _write(self, write: _Write) -> None:
        if not self._unsaved:
            try:
                self._apply(write)
            except STORAGE_ERRORS as exc:
                self._store_failed(exc)
            except Exception:  # a bug: logged, and the node's work goes on
                self.stats.not_stored += write.event is not None
                _log.exception("queueing a write for %s failed", write.chain)
                return
            else:
                return
        if len(self._unsaved) >= MAX_UNSAVED:
            self.stats.not_stored += write.event is not None
            _log.warning(
                "the event queue cannot be written and %d writes wait in memory: "
                "a write for %s is lost (%d event(s) so far)",
                len(self._unsaved),
                write.chain,
                self.stats.not_stored,
            )
            return
        self._unsaved.append(write)  # after those waiting: the order stays
        self._ensure_pump()
        if self._wake is not None:
            self._wake.set()  # the pump's next wait ends when they are due again

    def _apply(self, write: _Write) -> None:
        event = write.event
        if event is None:
            self._write_live(write)
            return
        reason = ""
        chain = self._chains.get(write.chain)
        presence = event.event in BURIED_ALONE
        # A connected starts its chain: only a later event can follow a dead one.
        if chain is None and event.event != "connected" and self.queue.has_dead(write.chain):
            reason = FOLLOWS
            _log.info("%s event of %s dead-lettered: %s", event.event, event.chain, reason)
        elif (chain is None or presence) and self._count >= self._max_queued:
            reason = FULL  # a disconnected behind its connection's events goes in anyway
            self._log_full(event)
        elif presence and chain is not None and _presence_waiting(chain) >= MAX_PRESENCE_WAITING:
            reason = PRESENCE_FULL
            self._log_presence_full(event)
        if reason:
            self._bury(event, reason)
            self._write_live(write)
            return
        stored = self.queue.add(event, opens=write.opens, ends=write.ends)
        self._track(stored)
        self._mirrored(stored)
        self._ensure_pump()

    def _write_live(self, write: _Write) -> None:
        """The live-connection record of ``write`` alone (its event is not queued)."""
        if write.opens is not None:
            self.queue.open_live(write.opens)
        if write.ends:
            self.queue.end_live(write.chain)

    def _mirrored(self, event: QueuedEvent) -> None:
        if self._mirror is not None:
            self._mirror.queued(event.seq, encode_record(event))

    def _unmirrored(self, seq: int) -> None:
        if self._mirror is not None:
            self._mirror.settled(seq)

    def _log_presence_full(self, event: QueuedEvent) -> None:
        self.stats.presence_full += 1
        if self.stats.presence_full == 1 or self.stats.presence_full % 1000 == 0:
            _log.warning(
                "%s event of %s dead-lettered: %s (%d so far; see `webpubsub events dead`)",
                event.event,
                event.chain,
                PRESENCE_FULL,
                self.stats.presence_full,
            )

    def _log_full(self, event: QueuedEvent) -> None:
        self.stats.queue_full += 1
        if self.stats.queue_full == 1 or self.stats.queue_full % 1000 == 0:
            _log.warning(
                "the event queue is full (%d events): %s event of %s dead-lettered "
                "(%d so far; see `webpubsub events dead`)",
                self._count,
                event.event,
                event.chain,
                self.stats.queue_full,
            )

    def _store_failed(self, exc: Exception) -> None:
        """Count a failed queue call; warn at most once every STORE_LOG_SECONDS."""
        self.stats.store_errors += 1
        now = self._clock()
        self._store_retry_at = now + STORE_RETRY_SECONDS
        if now - self._store_logged_at >= STORE_LOG_SECONDS:
            _log.warning(
                "the event queue %s cannot be written (%s): events wait in memory and are "
                "written again every %g s (%d failure(s) since the last warning)",
                getattr(self.queue, "path", "file"),
                exc,
                STORE_RETRY_SECONDS,
                self.stats.store_errors - self._store_errors_logged,
            )
            self._store_logged_at = now
            self._store_errors_logged = self.stats.store_errors

    def _flush(self) -> None:
        """Write what waits in memory, in order, until done or the file fails again."""
        while self._unsaved:
            write = self._unsaved[0]
            try:
                self._apply(write)
            except STORAGE_ERRORS as exc:
                self._store_failed(exc)
                return
            except Exception:  # a bug: logged, not tried again
                self.stats.not_stored += write.event is not None
                _log.exception("queueing a write for %s failed", write.chain)
            self._unsaved.popleft()

    def _track(self, event: QueuedEvent) -> None:
        self._last_seq = max(self._last_seq, event.seq)
        self._seqs.add(event.seq)
        if self._holding:
            self._held[event.seq] = event.chain
        item = _Item(
            seq=event.seq,
            chain=event.chain,
            origin=_origin(event.request.url),
            created=event.created,
            attempts=event.attempts,
            next_at=event.next_at,
            alone=event.event in BURIED_ALONE,
        )
        chain = self._chains.get(event.chain)
        if chain is None:
            chain = self._chains[event.chain] = _Chain()
        chain.items.append(item)
        self._count += 1
        if len(chain.items) == 1 and not chain.running:
            self._schedule(item)

    def _schedule(self, item: _Item) -> None:
        if item.seq in self._held:
            return  # scheduled by release()
        heapq.heappush(self._heap, (item.next_at, item.seq, item.chain))
        if self._wake is not None:
            self._wake.set()

    # -- the pump -----------------------------------------------------------------------

    def _ensure_pump(self) -> None:
        if self._closed:
            return
        if self._pump is None or self._pump.done():
            self._wake = asyncio.Event()
            self._pump = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._wake is not None
        next_poll = self._clock() + POLL_SECONDS
        while True:
            now = self._clock()
            if self._unsaved and now >= self._store_retry_at:
                self._flush()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                try:
                    self._poll()
                except STORAGE_ERRORS as exc:
                    self._store_failed(exc)
            self._start_due(now)
            wait = next_poll - now
            if self._heap and len(self._running) < MAX_RUNNING:
                wait = min(wait, self._heap[0][0] - now)
            if self._unsaved:
                wait = min(wait, self._store_retry_at - now)
            if wait > 0:
                self._wake.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)

    def _poll(self) -> None:
        """Track the events another process (``webpubsub events replay``) put in the queue.

        Writers are serialised and a ``seq`` is taken in the transaction that stores its
        event, so once ``seq`` N is seen every lower one is visible too."""
        for seq in self.queue.pending_seqs(after=self._polled):
            if seq not in self._seqs:
                if self._count >= self._max_queued:
                    return  # full: looked at again once there is room
                event = self.queue.get(seq)
                if event is not None:
                    self._track(event)
                    self._mirrored(event)
            self._polled = seq

    def _start_due(self, now: float) -> None:
        while self._heap and self._heap[0][0] <= now and len(self._running) < MAX_RUNNING:
            _, seq, name = heapq.heappop(self._heap)
            chain = self._chains.get(name)
            if chain is None or chain.running or not chain.items or chain.items[0].seq != seq:
                continue  # stale
            item = chain.items[0]
            if item.next_at > now:
                continue  # an entry from before a later reschedule: the later one stays
            waiting = self._waiting.get(item.origin)
            if waiting is not None:
                waiting.pop(name, None)
                if not waiting:
                    del self._waiting[item.origin]
            if self._origins[item.origin] >= self._per_origin:
                self._blocked.setdefault(item.origin, {})[name] = None  # once, in order
                continue
            self._unblock(item.origin, name)
            chain.running = True
            self._origins[item.origin] += 1
            task = asyncio.get_running_loop().create_task(self._attempt(item))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _attempt(self, item: _Item) -> None:
        try:
            await self._deliver(item)
        except STORAGE_ERRORS as exc:  # its outcome not recorded: the attempt goes again
            self._store_failed(exc)
            self._again(item, STORE_RETRY_SECONDS)
        except Exception:  # a bug: the chain must not stay stuck
            _log.exception("delivering queued event %d: unexpected error", item.seq)
            try:
                self._failed(item, "unexpected error", None, f"queued event {item.seq}")
            except Exception:
                _log.exception("queued event %d: cannot record the failure", item.seq)
                self._again(item, self._retry.max_delay)
        finally:
            self._origins[item.origin] -= 1
            if not self._origins[item.origin]:
                del self._origins[item.origin]
            self._wake_blocked(item.origin)
            if self._wake is not None:
                self._wake.set()
            if self._progress is not None:
                self._progress.set()

    def _again(self, item: _Item, delay: float) -> None:
        """Try ``item`` again in ``delay`` seconds, its attempt unrecorded."""
        chain = self._chains.get(item.chain)
        if chain is not None and chain.items and chain.items[0] is item:
            chain.running = False
            item.next_at = self._clock() + delay
            self._schedule(item)

    def _unblock(self, origin: str, name: str) -> None:
        blocked = self._blocked.get(origin)
        if blocked is not None:
            blocked.pop(name, None)
            if not blocked:
                del self._blocked[origin]

    def _wake_blocked(self, origin: str) -> None:
        """A slot to ``origin`` is free: the first blocked chain that can go takes it
        (a chain running or gone meanwhile is passed over, not woken in its stead)."""
        blocked = self._blocked.get(origin)
        while blocked:
            name = next(iter(blocked))
            del blocked[name]
            chain = self._chains.get(name)
            if chain is not None and chain.items and not chain.running:
                self._schedule(chain.items[0])
                break
        if blocked is not None and not blocked:
            del self._blocked[origin]

    async def wait_until(self, done: Callable[[], bool]) -> None:
        """Return once ``done()`` holds, checked after each delivery attempt and each
        drop (bound it with ``asyncio.timeout``)."""
        while not done():
            self._progress = progress = self._progress or asyncio.Event()
            progress.clear()
            await progress.wait()

    async def _deliver(self, item: _Item) -> None:
        event = self.queue.get(item.seq)
        if event is None:  # purged meanwhile
            self._unmirrored(item.seq)
            self._finish(item)
            return
        where = f"{event.event} event to {safe_url(event.request.url)} ({event.chain})"
        try:
            if event.validate_url:
                await self._validate(event.validate_url)
            response = await self._transport.send(event.request, timeout=event.timeout)
        except UpstreamError as exc:
            self._failed(item, exc.message, None, where)
            return
        outcome = async_outcome(response, self._clock())
        if outcome.delivered:
            self.queue.remove(item.seq)
            self._unmirrored(item.seq)
            self.stats.delivered += 1
            self._origin_back(item.origin)
            if item.attempts:
                _log.info("%s delivered after %d attempt(s)", where, item.attempts + 1)
            self._finish(item)
        elif outcome.retry:
            self._failed(item, f"status {response.status}", outcome.retry_after, where)
        else:
            _log.warning("%s refused with status %d: dead-lettered", where, response.status)
            self._dead(item, event, f"status {response.status}")

    def _failed(self, item: _Item, error: str, retry_after: float | None, where: str) -> None:
        chain = self._chains.get(item.chain)
        if chain is None or not chain.items or chain.items[0] is not item:
            return  # settled already
        item.attempts += 1
        now = self._clock()
        delay = retry_after if retry_after is not None else self._retry.delay(item.attempts)
        if now + delay > item.created + self._retry.horizon:
            event = self.queue.get(item.seq)
            _log.warning(
                "%s failed %d time(s) over %.0f s (%s): dead-lettered",
                where,
                item.attempts,
                now - item.created,
                error,
            )
            self._dead(item, event, error)
            return
        self.stats.retried += 1
        canary = self._canary.setdefault(item.origin, item.chain)
        if canary == item.chain and retry_after is None:
            delay = min(delay, CANARY_SECONDS)
        else:
            self._waiting.setdefault(item.origin, {})[item.chain] = None
        item.next_at = now + delay
        self.queue.retry_later(item.seq, item.attempts, item.next_at, error)
        level = logging.INFO if item.attempts <= len(self._retry.delays) else logging.WARNING
        _log.log(
            level, "%s attempt %d failed (%s); next in %g s", where, item.attempts, error, delay
        )
        chain.running = False
        self._schedule(item)

    def _origin_back(self, origin: str) -> None:
        """An event to ``origin`` got through: its waiting events go now."""
        self._canary.pop(origin, None)
        waiting = self._waiting.pop(origin, None)
        if not waiting:
            return
        now = self._clock()
        for name in waiting:
            chain = self._chains.get(name)
            if chain is not None and chain.items and not chain.running:
                head = chain.items[0]
                head.next_at = min(head.next_at, now)
                self._schedule(head)

    def _finish(self, item: _Item) -> None:
        if self._canary.get(item.origin) == item.chain:
            del self._canary[item.origin]  # the next failure of that origin takes over
        chain = self._chains[item.chain]
        chain.items.popleft()
        chain.running = False
        self._count -= 1
        self._seqs.discard(item.seq)
        if chain.items:
            self._schedule(chain.items[0])
        else:
            del self._chains[item.chain]
            if not self._chains and self._drained is not None:
                self._drained.set()

    def _dead(self, item: _Item, event: QueuedEvent | None, reason: str) -> None:
        """Dead-letter the head of a chain, then the events queued behind it (a chain
        follows its first event: no ``disconnected`` without its ``connected``); a group
        presence event alone (its connection's later events go on)."""
        if event is not None:
            self._bury(event, reason)
        else:  # purged meanwhile
            self._unmirrored(item.seq)
        chain = self._chains[item.chain]
        while len(chain.items) > 1 and not item.alone:
            behind = chain.items[1]
            queued = self.queue.get(behind.seq)
            if queued is not None:
                _log.info("%s event of %s dead-lettered: %s", queued.event, queued.chain, FOLLOWS)
                self._bury(queued, FOLLOWS)
            else:
                self._unmirrored(behind.seq)
            del chain.items[1]
            self._count -= 1
            self._seqs.discard(behind.seq)
        self._finish(item)

    def _bury(self, event: QueuedEvent, reason: str) -> None:
        self.queue.bury(event, self._clock(), reason)
        if event.seq:
            self._unmirrored(event.seq)
        self.stats.dead_lettered += 1
        try:
            dropped = self.queue.trim_dead(self._max_dead)
        except STORAGE_ERRORS as exc:  # buried: the oldest dead letters go another time
            self._store_failed(exc)
            return
        if dropped:
            self.stats.dead_dropped += dropped
            _log.warning(
                "%d dead letter(s) deleted: more than %d are kept (%d so far)",
                dropped,
                self._max_dead,
                self.stats.dead_dropped,
            )

    # -- the queue as an event mirror sees it (node/ports.EventStore) ---------------------

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError("the event queue is closed")

    def pending_seqs(self) -> list[int]:
        return self.queue.pending_seqs(after=0)  # also while closing: the file is open

    def epoch(self) -> str:
        return self.queue.epoch()

    def records(self, seqs: Sequence[int]) -> list[tuple[int, bytes]]:
        found = (self.queue.get(seq) for seq in seqs)
        return [(event.seq, encode_record(event)) for event in found if event is not None]

    def adopt(self, records: Sequence[bytes], *, hold: bool = False) -> list[int]:
        """Queue the events a dead node left, in their order, with their request and
        ``ce-id`` (attempts and ``created`` kept: the horizon counts from the event);
        each is then this node's own, mirrored as such. Returns, per record, its ``seq``
        here (0: unreadable, or dead-lettered: its connection's earlier event
        dead-lettered here, as for the node's own events). ``stats.taken_over`` counts
        those queued.

        Written at once, never left waiting in memory: when the queue's file cannot be
        written (or the node's own writes still wait for it), or the queue is full for a
        new connection's event, it stops there and the list is shorter than
        ``records``; the rest are not queued (their node's copy keeps them for a later
        try). With ``hold`` none is delivered before :meth:`release` (or :meth:`drop`)."""
        self._open()
        self._flush()  # the node's own writes first
        adopted: list[int] = []
        if self._unsaved:
            return adopted
        for record in records:
            try:
                event = decode_record(record)
            except CorruptRecord as exc:
                _log.warning("an event taken over from another node is unreadable: %s", exc)
                adopted.append(0)
                continue
            bounded = event.chain not in self._chains or event.event in BURIED_ALONE
            if bounded and self._count >= self._max_queued:
                # Full: left in the other node's copy for a later pass, not dead-lettered
                # here without one attempt (a connected/disconnected of a chain queued
                # here still goes in).
                _log.warning(
                    "the event queue is full (%d events): events of another node wait in its copy",
                    self._count,
                )
                break
            before = self._last_seq
            self._holding = hold
            try:
                self._apply(_Write(event.chain, event))
            except STORAGE_ERRORS as exc:
                self._store_failed(exc)
                break
            finally:
                self._holding = False
            queued = self._last_seq > before
            self.stats.taken_over += queued
            adopted.append(self._last_seq if queued else 0)
        return adopted

    def release(self, seqs: Collection[int]) -> None:
        """Deliver these held events (adopted with ``hold``) from now on."""
        for seq in seqs:
            name = self._held.pop(seq, None)
            chain = self._chains.get(name) if name is not None else None
            head = chain.items[0] if chain is not None and chain.items else None
            if chain is not None and head is not None and head.seq == seq and not chain.running:
                self._schedule(head)

    def drop_ended(self, connections: Collection[tuple[str, str]]) -> int:
        """Another node reported the end of these (hub, connection id): each one's
        ``disconnected`` still waiting here, and what follows it, goes (counted as
        taken by others); how many. One whose attempt is under way still goes out."""
        self._open()
        seqs: list[int] = []
        for hub, cid in connections:
            chain = self._chains.get(connection_chain(hub, cid))
            if chain is None:
                continue
            found = False
            for item in chain.items:
                if not found:
                    event = self.queue.get(item.seq)
                    found = event is not None and event.event == "disconnected"
                if found:
                    seqs.append(item.seq)
        return self.drop(seqs)

    def drop(self, seqs: Collection[int], *, handed_back: bool = False) -> int:
        """Another node took these events over (this one was taken for dead), or with
        ``handed_back`` their node kept them after all: they go from the queue, and from
        the schedule unless their attempt is under way."""
        wanted = set(seqs)
        if not wanted:
            return 0
        for seq in wanted:
            self._held.pop(seq, None)
        gone = self.queue.purge("pending", sorted(wanted))
        if handed_back:
            self.stats.taken_over -= gone
        else:
            self.stats.taken_by_others += gone
        for name, chain in list(self._chains.items()):
            keep = deque(
                i
                for n, i in enumerate(chain.items)
                if i.seq not in wanted or (n == 0 and chain.running)
            )
            if len(keep) == len(chain.items):
                continue
            head, kept = chain.items[0], {id(i) for i in keep}
            for item in chain.items:
                if id(item) not in kept:
                    self._count -= 1
                    self._seqs.discard(item.seq)
                    self._unmirrored(item.seq)
            chain.items = keep
            if keep and keep[0] is head:
                continue
            if self._canary.get(head.origin) == name:
                del self._canary[head.origin]
            self._unblock(head.origin, name)
            waiting = self._waiting.get(head.origin)
            if waiting is not None:
                waiting.pop(name, None)
                if not waiting:
                    del self._waiting[head.origin]
            if keep:
                self._schedule(keep[0])
            else:
                del self._chains[name]
        if not self._chains and self._drained is not None:
            self._drained.set()
        if self._progress is not None:
            self._progress.set()
        return gone

    # -- out ----------------------------------------------------------------------------

    async def aclose(self, timeout: float) -> int:  # noqa: ASYNC109 (a grace period)
        """Deliver for up to ``timeout`` seconds, then stop; returns how many events
        are left in the queue (for the next start). Writes still waiting in memory are
        tried once more; what cannot be written then is lost, logged and counted."""
        self._flush()
        if self._chains and timeout > 0:
            self._drained = asyncio.Event()
            try:
                async with asyncio.timeout(timeout):
                    await self._drained.wait()
            except TimeoutError:
                pass
        self._closed = True
        tasks: list[asyncio.Task[None]] = [*self._running]
        if self._pump is not None:
            tasks.append(self._pump)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pump = None
        self._flush()
        if self._mirror is not None:  # the queue changes no more; its file is still open
            await self._mirror.closing()
        if self._unsaved:
            lost = sum(1 for w in self._unsaved if w.event is not None)
            self.stats.not_stored += lost
            _log.warning(
                "%d event(s) lost: the event queue %s could not be written",
                lost,
                getattr(self.queue, "path", "file"),
            )
            self._unsaved.clear()
        return self._count


def connection_chain(hub: str, connection_id: str) -> str:
    """The chain of a connection's events (they go one at a time, in order)."""
    return f"hub={hub} connection={connection_id}"


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}:{parts.port}"
    except ValueError:
        return url
