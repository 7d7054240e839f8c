"""The SQLite event queue: durable across a reopen, ordered, bounded by its owner, one
process at a time; and the ``webpubsub events`` commands that look into it."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.cli import main
from webpubsub.errors import ConfigError
from webpubsub.protocol.cloudevents import UpstreamRequest
from webpubsub.upstream.queue import (
    BATCH,
    MEMORY,
    RECORD_VERSION,
    CorruptRecord,
    LiveConnection,
    QueuedEvent,
    SqliteEventQueue,
    decode_record,
    encode_record,
    queue_file,
)


def event(connection: str, name: str = "connected", ce_id: str = "1") -> QueuedEvent:
    request = UpstreamRequest(
        "POST",
        f"http://127.0.0.1:9/api/{name}?code=secret",
        (("ce-id", ce_id), ("ce-connectionId", connection)),
        b'{"reason":"bye"}' if name == "disconnected" else b"",
    )
    return QueuedEvent(
        chain=f"hub=chat connection={connection}",
        event=name,
        request=request,
        validate_url="http://127.0.0.1:9/api/validate",
        timeout=5.0,
        created=1000.0,
    )


@pytest.fixture
def path(tmp_path: Path) -> str:
    return queue_file(str(tmp_path / "data"), None)


def test_events_survive_a_reopen_in_order_with_their_request(path: str) -> None:
    queue = SqliteEventQueue(path)
    first = queue.add(event("c1"))
    second = queue.add(event("c1", "disconnected", "2"))
    queue.retry_later(first.seq, 3, 2000.0, "status 503")
    queue.close()
    again = SqliteEventQueue(path)
    loaded = again.pending()
    assert [e.seq for e in loaded] == [first.seq, second.seq]
    assert loaded[1] == second
    assert (loaded[0].attempts, loaded[0].next_at, loaded[0].last_error) == (
        3,
        2000.0,
        "status 503",
    )
    assert again.pending(after=first.seq) == [second]
    again.remove(first.seq)
    assert again.get(first.seq) is None and again.count("pending") == 1
    again.close()


def test_a_queue_file_keeps_its_epoch_and_a_new_file_gets_a_later_one(tmp_path: Path) -> None:
    """A seq means one event only with its file's epoch: the file keeps it across a
    reopen; a new file at the same path (its volume lost) numbers from 1 again under a
    new epoch, which sorts after the old one."""
    path = queue_file(str(tmp_path / "data"), "a")
    first = SqliteEventQueue(path)
    epoch = first.epoch()
    first.close()
    reopened = SqliteEventQueue(path)
    assert reopened.epoch() == epoch
    reopened.close()
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)
    time.sleep(0.002)  # not a synchronisation: two epochs a millisecond apart
    new = SqliteEventQueue(path)
    assert new.epoch() > epoch and len(new.epoch()) == len(epoch)
    assert new.next_seq() == 1
    new.close()


def test_dead_letters_are_kept_bounded_and_replayed_with_their_ce_id() -> None:
    queue = SqliteEventQueue(MEMORY)
    stored = queue.add(event("c1"))
    queue.bury(stored, 1500.0, "status 400")
    queue.bury(event("c2"), 1501.0, "the event queue was full")  # never queued
    queue.bury(event("c3"), 1502.0, "status 410")
    assert queue.count("pending") == 0
    assert queue.trim_dead(2) == 1  # the oldest goes
    assert [d.reason for d in queue.dead()] == ["the event queue was full", "status 410"]
    assert queue.replay(None, now=3000.0) == 2
    replayed = queue.pending()
    assert [e.chain.rsplit("=", 1)[1] for e in replayed] == ["c2", "c3"]
    assert all(e.created == 3000.0 and e.attempts == 0 for e in replayed)
    assert replayed[0].request == event("c2").request  # same headers: same ce-id
    assert replayed[0].seq > stored.seq  # sequence numbers are never reused
    assert queue.purge("pending", [replayed[0].seq]) == 1
    assert queue.purge("pending", None) == 1 and queue.count("dead") == 0


def test_one_process_at_a_time_owns_a_queue_file(path: str) -> None:
    owner = SqliteEventQueue(path)
    with pytest.raises(ConfigError, match="in use by another process"):
        SqliteEventQueue(path)
    beside = SqliteEventQueue(path, exclusive=False)  # the CLI, next to the service
    beside.add(event("c9"))
    assert [e.chain for e in owner.pending()] == ["hub=chat connection=c9"]
    beside.close()
    owner.close()
    SqliteEventQueue(path).close()  # free again


def test_a_queue_file_of_another_layout_is_refused_by_name(path: str) -> None:
    """A file written by a build with other tables (here: an older ``live`` table) would be
    misread: it is refused, naming the file, and left as it was."""
    Path(path).parent.mkdir(parents=True)
    with sqlite3.connect(path) as old:
        old.execute("CREATE TABLE live (chain TEXT PRIMARY KEY, ctx TEXT NOT NULL)")
    with pytest.raises(ConfigError, match="has another layout") as refused:
        SqliteEventQueue(path)
    assert path in str(refused.value)
    SqliteEventQueue(path + ".new").close()  # a new file is fine, and is stamped
    with sqlite3.connect(path + ".new") as new:
        assert new.execute("PRAGMA user_version").fetchone() == (1,)
    SqliteEventQueue(path + ".new").close()  # and reopens


def test_a_queue_file_is_readable_by_its_owner_only(path: str) -> None:
    """Queued events hold handler URLs with their ``?code=`` keys."""
    queue = SqliteEventQueue(path)
    queue.add(event("c1"))
    modes = {p.name: p.stat().st_mode & 0o777 for p in Path(path).parent.iterdir()}
    queue.close()
    assert modes[Path(path).name] == 0o600
    assert modes[Path(path).name + "-wal"] == 0o600
    assert Path(path).parent.stat().st_mode & 0o777 == 0o700


def test_queue_files_are_per_node_id() -> None:
    assert queue_file("/d", None) == "/d/events.sqlite3"
    assert queue_file("/d", "host-a-1") == "/d/events-host-a-1.sqlite3"
    assert queue_file(MEMORY, "x") == MEMORY


def test_the_events_command_lists_replays_and_purges(tmp_path: Path, path: str) -> None:
    queue = SqliteEventQueue(path)
    queue.add(event("c1"))
    queue.bury(event("c2", "disconnected", "7"), 1500.0, "status 400")
    queue.close()
    cli = CliRunner()
    base = ["events", "--data-dir", str(tmp_path / "data")]

    listed = cli.invoke(main, [*base, "pending"])
    assert listed.exit_code == 0, listed.output
    assert "connected\thub=chat connection=c1\tce-id=1" in listed.output
    assert "1 pending, 1 dead" in listed.output
    assert "secret" not in listed.output  # a handler URL's query is never shown

    dead = cli.invoke(main, [*base, "dead"])
    assert "disconnected\thub=chat connection=c2\tce-id=7" in dead.output
    assert "status 400" in dead.output and "1 dead" in dead.output

    assert cli.invoke(main, [*base, "replay"]).exit_code == 2  # SEQ... or --all
    replayed = cli.invoke(main, [*base, "replay", "--all"])
    assert "1 event(s) queued again" in replayed.output
    assert "2 pending, 0 dead" in cli.invoke(main, [*base, "pending"]).output

    purged = cli.invoke(main, [*base, "purge", "pending", "--all"])
    assert "2 pending event(s) deleted" in purged.output

    missing = cli.invoke(main, ["events", "--data-dir", str(tmp_path / "none"), "pending"])
    assert missing.exit_code == 1 and "No event queue" in missing.output


def test_the_cli_replays_in_short_batches_next_to_a_busy_service(tmp_path: Path, path: str) -> None:
    """The service waits 50 ms at most for the file's lock: a replay of thousands of
    dead letters must let go of it often, and must not fail for the service's writes."""
    service = SqliteEventQueue(path)
    count = 5 * BATCH
    for i in range(count):
        service.bury(event(f"c{i}"), 1000.0, "status 400")
    outcome: list[Result] = []

    def replay() -> None:
        command = ["events", "--data-dir", str(tmp_path / "data"), "replay", "--all"]
        outcome.append(CliRunner().invoke(main, command))

    thread = threading.Thread(target=replay)
    thread.start()
    added = failed = 0
    deadline = time.monotonic() + 60.0
    while thread.is_alive() and time.monotonic() < deadline:  # the service, meanwhile
        try:
            service.add(event("new"))
            added += 1
        except sqlite3.OperationalError:
            failed += 1
    thread.join(timeout=60.0)
    [result] = outcome
    assert result.exit_code == 0, result.output
    assert f"{count} event(s) queued again" in result.output
    assert failed == 0 and added > 0
    assert service.count("pending") == count + added and service.count("dead") == 0
    service.close()


def test_live_connections_are_written_with_their_events(path: str) -> None:
    queue = SqliteEventQueue(path)
    live = LiveConnection("hub=chat connection=c1", "chat", "c1", "alice", None, "s")
    queue.add(event("c1"), opens=live)
    queue.open_live(dataclasses.replace(live, chain="hub=chat connection=c2", user_id=None))
    queue.add(event("c1", "disconnected", "2"), ends=True)
    queue.close()
    again = SqliteEventQueue(path)
    [left] = again.live()
    assert left == LiveConnection("hub=chat connection=c2", "chat", "c1", None, None, "s")
    again.end_live(left.chain)
    assert again.live() == [] and again.count("pending") == 2
    again.close()


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_events = st.builds(
    QueuedEvent,
    chain=_text,
    event=st.sampled_from(["connected", "disconnected"]),
    request=st.builds(
        UpstreamRequest,
        method=st.sampled_from(["POST", "GET"]),
        url=_text,
        headers=st.lists(st.tuples(_text, st.text(max_size=20)), max_size=5).map(tuple),
        body=st.binary(max_size=200),
    ),
    validate_url=_text,
    timeout=st.floats(0.001, 1e6),
    created=st.floats(0, 4e9),
    attempts=st.integers(0, 10**6),
    next_at=st.floats(0, 4e9),
    last_error=_text,
)


@given(st.lists(_events, min_size=1, max_size=5))  # header values: any text, surrogates too
def test_an_event_reads_back_as_it_was_stored(events: list[QueuedEvent]) -> None:
    queue = SqliteEventQueue(MEMORY)
    stored = [queue.add(e) for e in events]
    assert [queue.get(s.seq) for s in stored] == stored
    assert queue.pending() == stored
    assert [dataclasses.replace(s, seq=0) for s in stored] == events
    queue.close()


@given(_events)  # header values: any text, surrogates too; bodies: any bytes
def test_a_record_for_another_node_decodes_to_the_event_due_now(event: QueuedEvent) -> None:
    back = decode_record(encode_record(dataclasses.replace(event, seq=7)))
    assert back == dataclasses.replace(event, seq=0, next_at=0.0)
    assert back.request == event.request  # byte for byte: the same ce-id and signature


@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_are_a_corrupt_record_and_nothing_else(data: bytes, framed: bool) -> None:
    if framed:  # past the version and length checks, into the header
        data = bytes([RECORD_VERSION]) + len(data).to_bytes(4, "big") + data
    with contextlib.suppress(CorruptRecord):
        decode_record(data)


@given(_events, st.binary(max_size=40), st.integers(0, 200))
def test_a_damaged_record_is_a_corrupt_record_or_still_well_typed(
    event: QueuedEvent, noise: bytes, at: int
) -> None:
    raw = encode_record(event)
    at = min(at, len(raw))
    try:
        back = decode_record(raw[:at] + noise + raw[at + len(noise) :])
    except CorruptRecord:
        return
    assert isinstance(back.request.body, bytes) and isinstance(back.attempts, int)


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b'{"chain": 1}',
        b"{not json",
        b'{"chain":"c","event":"e","method":"POST","url":"u","headers":[["a"]],'
        b'"validate_url":"","timeout":1,"created":1,"attempts":0,"last_error":""}',
        b'{"chain":"c","event":"e","method":"POST","url":"u","headers":[],'
        b'"validate_url":"","timeout":NaN,"created":1,"attempts":0,"last_error":""}',
        b'{"chain":"c","event":"e","method":"POST","url":"u","headers":[],'
        b'"validate_url":"","timeout":1,"created":1,"attempts":-1,"last_error":""}',
    ],
)
def test_a_record_with_a_wrong_header_is_named_corrupt(header: bytes) -> None:
    raw = bytes([RECORD_VERSION]) + len(header).to_bytes(4, "big") + header
    with pytest.raises(CorruptRecord):
        decode_record(raw)
    with pytest.raises(CorruptRecord, match="version 2"):
        decode_record(bytes([2]) + raw[1:])


_any_text = st.text(st.characters(blacklist_categories=()), max_size=40)
_lives = st.builds(
    LiveConnection,
    chain=_text,
    hub=_text,
    connection_id=_text,
    user_id=st.none() | _any_text | st.just("\ud800"),  # a lone surrogate (a token's claim)
    subprotocol=st.none() | _text,
    state=_any_text,
)


@given(st.lists(_lives, max_size=5, unique_by=lambda live: live.chain))
def test_a_live_connection_reads_back_as_it_was_stored(lives: list[LiveConnection]) -> None:
    queue = SqliteEventQueue(MEMORY)
    for live in lives:
        queue.open_live(live)
    assert queue.live() == lives
    queue.close()
