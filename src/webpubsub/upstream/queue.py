"""Where ``connected``/``disconnected`` events wait for delivery: an interface and its
SQLite implementation (stdlib ``sqlite3``, WAL); and the record an event travels as to
another node that takes it over (``encode_record``/``decode_record``).

An event is written when it is created (:meth:`EventQueue.add` is durable when it
returns), so neither a crash nor a second signal loses it; it leaves the queue when
its handler took it, or moves to the dead letters when it cannot be delivered.
Each event keeps the request it was built as, ``ce-id`` included, so a redelivery
after a restart is recognisably the same event.

Blocking I/O on the event loop, on purpose: each call is one small statement and a
commit in WAL mode with ``synchronous=NORMAL`` (no fsync per commit; a commit
survives a process crash, the last ones may not survive a power cut). See
``bench/event_queue.py`` for its cost per event. The service waits at most
:data:`BUSY_TIMEOUT` for a lock another process holds (``webpubsub events``, which
writes in short batches), then the call fails with one of :data:`STORAGE_ERRORS`.

The file also keeps the connections open on this node whose ``disconnected`` a
handler expects (:class:`LiveConnection`), written with their ``connected`` event and
removed with their ``disconnected``: what is left of them at a start (after a crash)
ended with the previous run.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import sqlite3
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from webpubsub.errors import ConfigError
from webpubsub.protocol.cloudevents import UpstreamRequest

MEMORY = ":memory:"
Table = Literal["pending", "dead"]
BUSY_TIMEOUT = 0.05
"""Seconds the service waits for a lock held by another process before a call fails."""
BATCH = 200
"""Rows ``replay`` and ``purge`` move per transaction (so the lock is never held long)."""
STORAGE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
"""What a queue call raises when its file is locked elsewhere or failing."""


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """One asynchronous event and how far its delivery got.

    ``chain`` orders delivery (``hub/connectionId``: a connection's ``connected``
    goes before its ``disconnected``); ``validate_url`` is the abuse-protection URL
    to check first (``""``: none); times are wall-clock seconds."""

    chain: str
    event: str
    request: UpstreamRequest
    validate_url: str
    timeout: float
    created: float
    seq: int = 0
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class LiveConnection:
    """A connection open on this node whose handler expects a ``disconnected``: what a
    restart needs to send it (``state`` as the connection got it when it connected)."""

    chain: str
    hub: str
    connection_id: str
    user_id: str | None
    subprotocol: str | None
    state: str


@dataclass(frozen=True, slots=True)
class DeadEvent:
    event: QueuedEvent
    died: float
    reason: str


class EventQueue(Protocol):
    """The persistent queue the dispatcher delivers from (one process at a time)."""

    def add(
        self, event: QueuedEvent, *, opens: LiveConnection | None = None, ends: bool = False
    ) -> QueuedEvent:
        """Store ``event``; durable on return. Returns it with its ``seq``. In the same
        transaction, ``opens`` records a live connection, ``ends`` forgets the one of
        ``event.chain``."""

    def open_live(self, live: LiveConnection) -> None: ...

    def end_live(self, chain: str) -> None: ...

    def live(self) -> list[LiveConnection]:
        """The live connections recorded (at a start: those the last run left)."""

    def has_dead(self, chain: str) -> bool:
        """Whether an event of ``chain`` that its later events follow is among the dead
        letters (not a group presence event: that one is buried alone)."""

    def get(self, seq: int) -> QueuedEvent | None:
        """A pending event (None if it was delivered, buried or purged meanwhile)."""

    def retry_later(self, seq: int, attempts: int, next_at: float, error: str) -> None: ...

    def remove(self, seq: int) -> None:
        """The event was delivered."""

    def bury(self, event: QueuedEvent, died: float, reason: str) -> None:
        """Move ``event`` (pending or not yet stored) to the dead letters."""

    def pending(self, after: int = 0, limit: int | None = None) -> list[QueuedEvent]:
        """Pending events with ``seq > after``, in ``seq`` order."""

    def pending_seqs(self, after: int) -> list[int]:
        """The ``seq`` of every pending event with ``seq > after``, in order."""

    def next_seq(self) -> int:
        """The ``seq`` the next event will get: every lower one was given out here."""

    def epoch(self) -> str:
        """This queue file's own name, made when the file was: a ``seq`` means one
        event only together with it (a new file under the same node id numbers from 1
        again)."""

    def dead(self, limit: int | None = None) -> list[DeadEvent]:
        """Dead letters, oldest first."""

    def count(self, table: Table) -> int: ...

    def trim_dead(self, keep: int) -> int:
        """Delete the oldest dead letters beyond ``keep``; how many went."""

    def replay(self, seqs: Sequence[int] | None, now: float) -> int:
        """Move dead letters (all, or those ``seqs``) back to the queue, as new."""

    def purge(self, table: Table, seqs: Sequence[int] | None) -> int:
        """Delete events of ``table`` (all, or those ``seqs``); how many went."""

    def close(self) -> None: ...


_COLUMNS = (
    "chain, event, method, url, headers, body, validate_url, timeout, created, "
    "attempts, next_at, last_error"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    chain TEXT NOT NULL, event TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL,
    headers BLOB NOT NULL, body BLOB NOT NULL, validate_url TEXT NOT NULL,
    timeout REAL NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL,
    next_at REAL NOT NULL, last_error TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY,
    chain TEXT NOT NULL, event TEXT NOT NULL, method TEXT NOT NULL, url TEXT NOT NULL,
    headers BLOB NOT NULL, body BLOB NOT NULL, validate_url TEXT NOT NULL,
    timeout REAL NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL,
    next_at REAL NOT NULL, last_error TEXT NOT NULL,
    died REAL NOT NULL, reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_chain ON dead (chain);
CREATE TABLE IF NOT EXISTS live (chain TEXT PRIMARY KEY, connection BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('next_seq', 1);
"""
BURIED_ALONE = ("joined", "left")
"""Events whose dead letter leaves the rest of their chain going on (group presence:
a connection's later events do not need it delivered)."""
_HAS_DEAD = "SELECT 1 FROM dead WHERE chain = ? AND event NOT IN (?, ?) LIMIT 1"
SCHEMA_VERSION = 1
"""The layout of a queue file (``PRAGMA user_version``); a file of another is refused."""


def _check_version(db: sqlite3.Connection, path: str) -> None:
    """Refuse a queue file written by a build with another layout (its events would be
    misread), naming the file; a new, empty file is fine."""
    (version,) = db.execute("PRAGMA user_version").fetchone()
    (tables,) = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()
    if version != SCHEMA_VERSION and (version or tables):
        raise ConfigError(
            [
                f"the event queue {path} has another layout (version {version}; this build "
                f"reads version {SCHEMA_VERSION}): deliver its events with the build that "
                "wrote it, or move the file away"
            ]
        )


_OPEN_LIVE = "INSERT OR REPLACE INTO live VALUES (?,?)"
_END_LIVE = "DELETE FROM live WHERE chain = ?"
# Built from the constant column list only (no value is ever formatted into SQL).
_INSERT = f"INSERT INTO pending (seq, {_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_GET = f"SELECT {_COLUMNS} FROM pending WHERE seq = ?"  # noqa: S608
_PENDING = f"SELECT seq, {_COLUMNS} FROM pending WHERE seq > ? ORDER BY seq LIMIT ?"  # noqa: S608
_BURY = (
    f"INSERT OR REPLACE INTO dead (seq, {_COLUMNS}, died, reason) "  # noqa: S608
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_DEAD = f"SELECT seq, {_COLUMNS}, died, reason FROM dead ORDER BY seq LIMIT ?"  # noqa: S608
_Row = tuple[str, str, str, str, bytes, bytes, str, float, float, int, float, str]


def _values(event: QueuedEvent) -> _Row:
    r = event.request
    # The stdlib's json: it escapes a lone surrogate (a token's claim may hold one), orjson refuses.
    headers = json.dumps([list(h) for h in r.headers]).encode("ascii")
    return (
        event.chain,
        event.event,
        r.method,
        r.url,
        headers,
        r.body,
        event.validate_url,
        event.timeout,
        event.created,
        event.attempts,
        event.next_at,
        event.last_error,
    )


def _event(seq: int, row: Sequence[Any]) -> QueuedEvent:
    chain, event, method, url, headers, body, validate_url, timeout, created = row[:9]
    attempts, next_at, last_error = row[9:12]
    pairs = tuple((str(k), str(v)) for k, v in json.loads(headers))
    request = UpstreamRequest(str(method), str(url), pairs, bytes(body))
    return QueuedEvent(
        chain=str(chain),
        event=str(event),
        request=request,
        validate_url=str(validate_url),
        timeout=float(timeout),
        created=float(created),
        seq=seq,
        attempts=int(attempts),
        next_at=float(next_at),
        last_error=str(last_error),
    )


RECORD_VERSION = 1
_RECORD_HEAD = struct.Struct(">BI")
"""A record: a version byte, the JSON header's length, the header, then the body raw."""
_TEXT_FIELDS = ("chain", "event", "method", "url", "validate_url", "last_error")


class CorruptRecord(ValueError):
    """Bytes that are not a queued event of this version (from another node's mirror)."""


def encode_record(event: QueuedEvent) -> bytes:
    """``event`` as one value another node can take over (its ``seq`` and schedule stay
    here; the request, ``ce-id`` included, travels byte for byte)."""
    r = event.request
    header = {
        "chain": event.chain,
        "event": event.event,
        "method": r.method,
        "url": r.url,
        "headers": [list(h) for h in r.headers],
        "validate_url": event.validate_url,
        "timeout": event.timeout,
        "created": event.created,
        "attempts": event.attempts,
        "last_error": event.last_error,
    }
    # The stdlib's json, as for the queue's rows: it escapes a lone surrogate.
    raw = json.dumps(header, separators=(",", ":")).encode("ascii")
    return _RECORD_HEAD.pack(RECORD_VERSION, len(raw)) + raw + r.body


def decode_record(data: bytes) -> QueuedEvent:
    """The event :func:`encode_record` made (``seq`` 0, due now); raises only
    :class:`CorruptRecord`."""
    if len(data) < _RECORD_HEAD.size:
        raise CorruptRecord("a queued event record is shorter than its header")
    version, length = _RECORD_HEAD.unpack_from(data)
    if version != RECORD_VERSION:
        raise CorruptRecord(f"a queued event record of version {version}")
    end = _RECORD_HEAD.size + length
    if end > len(data):
        raise CorruptRecord("a queued event record ends inside its header")
    try:
        header = json.loads(data[_RECORD_HEAD.size : end])
    except (ValueError, RecursionError):
        raise CorruptRecord("a queued event record's header is not JSON") from None
    if not isinstance(header, dict):
        raise CorruptRecord("a queued event record's header is not an object")
    text = {name: header.get(name) for name in _TEXT_FIELDS}
    headers = header.get("headers")
    timeout, created, attempts = (header.get(k) for k in ("timeout", "created", "attempts"))
    if (
        not all(isinstance(v, str) for v in text.values())
        or not isinstance(headers, list)
        or not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(v, str) for v in h)
            for h in headers
        )
        or not _finite(timeout)
        or not _finite(created)
        or type(attempts) is not int
        or attempts < 0
    ):
        raise CorruptRecord("a queued event record has a missing or mistyped field")
    request = UpstreamRequest(
        str(text["method"]), str(text["url"]), tuple((k, v) for k, v in headers), data[end:]
    )
    return QueuedEvent(
        chain=str(text["chain"]),
        event=str(text["event"]),
        request=request,
        validate_url=str(text["validate_url"]),
        timeout=float(timeout),  # type: ignore[arg-type]
        created=float(created),  # type: ignore[arg-type]
        attempts=attempts,
        last_error=str(text["last_error"]),
    )


def _finite(value: object) -> bool:
    return type(value) in (int, float) and math.isfinite(value)  # type: ignore[arg-type]


def _live_values(live: LiveConnection) -> tuple[str, bytes]:
    # JSON as for the requests' headers: a user id or state may hold a lone surrogate.
    fields = [live.hub, live.connection_id, live.user_id, live.subprotocol, live.state]
    return live.chain, json.dumps(fields).encode("ascii")


def _live(chain: str, data: bytes) -> LiveConnection:
    hub, connection_id, user_id, subprotocol, state = json.loads(data)
    return LiveConnection(chain, hub, connection_id, user_id, subprotocol, state)


def queue_file(data_dir: str, node_id: str | None) -> str:
    """The queue file in ``data_dir`` (``:memory:`` stays so): one per node id."""
    if data_dir == MEMORY:
        return MEMORY
    name = f"events-{node_id}.sqlite3" if node_id else "events.sqlite3"
    return str(Path(data_dir) / name)


class SqliteEventQueue:
    """:class:`EventQueue` in one SQLite file (or ``:memory:``).

    ``exclusive`` (the service) takes a lock beside the file so that two processes
    never deliver the same queue; the CLI opens it without, next to a running service.
    ``busy_timeout``: how long a call waits for a lock another process holds (opening
    waits up to 5 s); ``batch_pause``: how long ``replay`` and ``purge`` let go of the
    lock between two batches (the CLI's, so that the service's writes get through).
    """

    def __init__(
        self,
        path: str,
        *,
        exclusive: bool = True,
        busy_timeout: float = BUSY_TIMEOUT,
        batch_pause: float = 0.0,
    ) -> None:
        self.path = path
        self._lock_fd: int | None = None
        self._batch_pause = batch_pause
        if path != MEMORY:
            Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if exclusive:
                self._lock_fd = _lock(path + ".lock")
            # The events hold handler URLs (``?code=`` keys) and signatures: the file is
            # the owner's only (SQLite gives its -wal and -shm files the same mode).
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        try:
            _check_version(self._db, path)
        except ConfigError:
            self.close()
            raise
        if path != MEMORY:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.execute(f"PRAGMA busy_timeout = {round(busy_timeout * 1000)}")
        # Milliseconds since the epoch, then random bits: later files sort later.
        made = (time.time_ns() // 1_000_000) << 20 | secrets.randbits(20)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)", (made,))
        (value,) = self._db.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        self._epoch = f"{int(value):016x}"

    def _next_seq(self) -> int:
        """Sequence numbers never reused, pending or dead (replay keeps ``ce-id``)."""
        (seq,) = self._db.execute(
            "UPDATE meta SET value = value + 1 WHERE key = 'next_seq' RETURNING value - 1"
        ).fetchone()
        return int(seq)

    def next_seq(self) -> int:
        (seq,) = self._db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
        return int(seq)

    def epoch(self) -> str:
        return self._epoch

    def add(
        self, event: QueuedEvent, *, opens: LiveConnection | None = None, ends: bool = False
    ) -> QueuedEvent:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._next_seq()
            self._db.execute(_INSERT, (seq, *_values(event)))
            if opens is not None:
                self._db.execute(_OPEN_LIVE, _live_values(opens))
            if ends:
                self._db.execute(_END_LIVE, (event.chain,))
        return replace(event, seq=seq)

    def open_live(self, live: LiveConnection) -> None:
        self._db.execute(_OPEN_LIVE, _live_values(live))

    def end_live(self, chain: str) -> None:
        self._db.execute(_END_LIVE, (chain,))

    def live(self) -> list[LiveConnection]:
        rows = self._db.execute("SELECT chain, connection FROM live ORDER BY rowid")
        return [_live(str(chain), bytes(data)) for chain, data in rows.fetchall()]

    def has_dead(self, chain: str) -> bool:
        row = self._db.execute(_HAS_DEAD, (chain, *BURIED_ALONE))
        return row.fetchone() is not None

    def get(self, seq: int) -> QueuedEvent | None:
        row = self._db.execute(_GET, (seq,)).fetchone()
        return None if row is None else _event(seq, row)

    def retry_later(self, seq: int, attempts: int, next_at: float, error: str) -> None:
        self._db.execute(
            "UPDATE pending SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ?",
            (attempts, next_at, error, seq),
        )

    def remove(self, seq: int) -> None:
        self._db.execute("DELETE FROM pending WHERE seq = ?", (seq,))

    def bury(self, event: QueuedEvent, died: float, reason: str) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq = event.seq or self._next_seq()
            self._db.execute("DELETE FROM pending WHERE seq = ?", (seq,))
            self._db.execute(_BURY, (seq, *_values(event), died, reason))

    def pending(self, after: int = 0, limit: int | None = None) -> list[QueuedEvent]:
        rows = self._db.execute(_PENDING, (after, -1 if limit is None else limit)).fetchall()
        return [_event(row[0], row[1:]) for row in rows]

    def pending_seqs(self, after: int) -> list[int]:
        rows = self._db.execute("SELECT seq FROM pending WHERE seq > ? ORDER BY seq", (after,))
        return [int(seq) for (seq,) in rows.fetchall()]

    def dead(self, limit: int | None = None) -> list[DeadEvent]:
        rows = self._db.execute(_DEAD, (-1 if limit is None else limit,)).fetchall()
        return [DeadEvent(_event(row[0], row[1:13]), row[13], row[14]) for row in rows]

    def count(self, table: Table) -> int:
        sql = "SELECT count(*) FROM pending" if table == "pending" else "SELECT count(*) FROM dead"
        (n,) = self._db.execute(sql).fetchone()
        return int(n)

    def trim_dead(self, keep: int) -> int:
        cursor = self._db.execute(
            "DELETE FROM dead WHERE seq IN "
            "(SELECT seq FROM dead ORDER BY seq DESC LIMIT -1 OFFSET ?)",
            (keep,),
        )
        return cursor.rowcount

    def replay(self, seqs: Sequence[int] | None, now: float) -> int:
        moved = 0
        for batch in self._batches("dead", seqs):
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                for seq in batch:
                    row = self._db.execute(
                        f"SELECT {_COLUMNS} FROM dead WHERE seq = ?",  # noqa: S608
                        (seq,),
                    ).fetchone()
                    if row is None:
                        continue
                    again = replace(
                        _event(seq, row), attempts=0, next_at=0.0, created=now, last_error=""
                    )
                    self._db.execute(_INSERT, (self._next_seq(), *_values(again)))
                    self._db.execute("DELETE FROM dead WHERE seq = ?", (seq,))
                    moved += 1
        return moved

    def purge(self, table: Table, seqs: Sequence[int] | None) -> int:
        name = "pending" if table == "pending" else "dead"
        gone = 0
        for batch in self._batches(table, seqs):
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                gone += sum(
                    self._db.execute(f"DELETE FROM {name} WHERE seq = ?", (s,)).rowcount  # noqa: S608
                    for s in batch
                )
        return gone

    def _batches(self, table: Table, seqs: Sequence[int] | None) -> Iterator[list[int]]:
        """``seqs`` (or every ``seq`` of ``table``, in order) by :data:`BATCH`, pausing
        ``batch_pause`` between two: each batch is one short transaction."""
        if seqs is None:
            sql = "SELECT seq FROM pending" if table == "pending" else "SELECT seq FROM dead"
            seqs = [int(seq) for (seq,) in self._db.execute(sql + " ORDER BY seq").fetchall()]
        for start in range(0, len(seqs), BATCH):
            if start and self._batch_pause > 0:
                time.sleep(self._batch_pause)
            yield list(seqs[start : start + BATCH])

    def close(self) -> None:
        self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(
            [f"the event queue {path.removesuffix('.lock')} is in use by another process"]
        ) from None
    return fd
