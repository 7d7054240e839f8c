"""Queued ``connected``/``disconnected`` events over Redis: a node that dies, is cut off or
stops with events its handler has not taken leaves them to a survivor, which delivers
each with its ``ce-id``; the mirror of a node's queue converges after a Redis outage.

Real nodes (in-process services, and a ``webpubsub serve`` subprocess where a node must
die by SIGKILL), a real redis-server and a real event-handler app that answers 503
while it is "down".
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from tests.conftest import StartService, make_config
from tests.support.cluster import service_at, spawn_node
from tests.support.handler import EventHandlerApp, Recorded, default_responder
from tests.support.proxy import TcpProxy, closed_port
from tests.support.redis_server import RedisServer, wait_for_hash_size
from tests.support.service import chat_hub, json_client
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.node.node import reaped_event_id
from webpubsub.server.app import ServiceRunner
from webpubsub.upstream.queue import decode_record

pytestmark = pytest.mark.e2e

WAIT = 15.0
HEARTBEAT = 1.0
EVENTS = frozenset({"connected", "disconnected"})


class Handler:
    """The event handler's answers: 503 to the events while ``down``, else 204; what it
    took (2xx), in order, as (connection id, event name, ce-id)."""

    def __init__(self, app: EventHandlerApp) -> None:
        self.down = True
        self.took: list[tuple[str, str, str]] = []
        self.refuse: set[str] = set()
        """User ids whose events get 503 even when the handler is up."""
        app.responder = self.respond
        self._app = app

    def respond(self, req: Recorded) -> web.StreamResponse:
        if req.method == "POST":
            if self.down or req.headers.get("ce-userId") in self.refuse:
                return web.Response(status=503)
            self.took.append((req.headers["ce-connectionId"], req.event_name, req.headers["ce-id"]))
        return default_responder(req)

    def took_once_each(self, cid: str) -> None:
        """The connection's two events were taken once each, in order, and none was ever
        sent with a second ce-id."""
        assert [(c, name) for c, name, _ in self.took] == [
            (cid, "connected"),
            (cid, "disconnected"),
        ]
        assert all(len(ids) == 1 for ids in self.seen().values()), self.seen()

    def seen(self) -> dict[tuple[str, str], set[str]]:
        """Every ce-id each (connection, event) was sent with, taken or not."""
        ids: dict[tuple[str, str], set[str]] = {}
        for r in self._app.requests:
            if r.method == "POST":
                key = (r.headers["ce-connectionId"], r.event_name)
                ids.setdefault(key, set()).add(r.headers["ce-id"])
        return ids


def plane(url: str, prefix: str, node_id: str) -> RedisBackplane:
    return RedisBackplane(url, prefix=prefix, node_id=node_id, heartbeat_timeout=HEARTBEAT)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis_client = aioredis.Redis.from_url(redis_server.url)
    yield redis_client
    await redis_client.aclose()


async def delivered(node: ServiceRunner, count: int) -> None:
    """Wait until ``node`` has delivered ``count`` events (bounded)."""
    assert node.upstream is not None
    upstream = node.upstream
    async with asyncio.timeout(WAIT):
        await upstream.wait_until(lambda: upstream.stats.delivered >= count)


def event_id(record: bytes) -> tuple[str, str]:
    """(ce-connectionId, ce-id) of a queued event's record: what identifies it."""
    headers = dict(decode_record(record).request.headers)
    return headers["ce-connectionId"], headers["ce-id"]


async def mirrored(client: aioredis.Redis, key: str) -> list[tuple[str, str]]:
    """The events a node's mirror holds, in its queue's order."""
    fields = await client.hgetall(key)  # type: ignore[misc]
    return [event_id(fields[f]) for f in sorted(fields, key=field_order)]


def field_order(field: bytes) -> tuple[bytes, int]:
    """A mirror field ``{epoch}:{seq}`` as it sorts: by its queue file, then its seq."""
    epoch, _, seq = field.rpartition(b":")
    return epoch, int(seq)


def queued_here(node: ServiceRunner) -> list[tuple[str, str]]:
    """The events a node's own queue holds, in order."""
    assert node.upstream is not None
    pending = node.upstream.store.records(node.upstream.store.pending_seqs())
    return [event_id(r) for _, r in pending]


async def test_a_killed_nodes_pending_events_are_delivered_by_a_survivor_with_their_ce_id(
    start_service: StartService,
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """The handler is down while node "victim" queues three events (two connections'
    ``connected``, one's ``disconnected``); the victim is SIGKILLed; the handler comes
    back. The survivor delivers every one of them, with the ce-id the victim sent, each
    connection's ``connected`` before its ``disconnected``, and the other connection's
    end after them; no event goes out with a second ce-id."""
    handler = Handler(handler_app)
    survivor = await start_service(
        chat_hub(handler_app.url, system=EVENTS),
        backplane=plane(redis_server.url, redis_prefix, "survivor"),
    )
    proc, endpoint = await spawn_node(
        tmp_path, redis_server, redis_prefix, handler_app.url, system_events=sorted(EVENTS)
    )
    try:
        async with service_at(endpoint) as on_victim:
            url = (await on_victim.get_client_access_token(user_id="gone"))["url"]
            gone, gone_id = await json_client(http, url, WAIT)
            await gone.close()
            url = (await on_victim.get_client_access_token(user_id="stays"))["url"]
            stays, stays_id = await json_client(http, url, WAIT)
            first = await handler_app.next_event(".connected", timeout=WAIT)
            second = await handler_app.next_event(".connected", timeout=WAIT)
            tried = {r.headers["ce-connectionId"]: r.headers["ce-id"] for r in (first, second)}
            assert set(tried) == {gone_id, stays_id}  # tried once each, refused (503)
            await wait_for_hash_size(client, f"{redis_prefix}:events:victim", 3, WAIT)

            proc.send_signal(signal.SIGKILL)  # no goodbye: only the heartbeat tells
            await proc.wait()
            handler.down = False  # from now on only the survivor can deliver
            await wait_for_hash_size(client, f"{redis_prefix}:events:victim", 0, WAIT)
            await delivered(survivor, 4)
            await stays.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    took = handler.took
    assert len(took) == 4
    ce_id = {(c, name): ce for c, name, ce in took}
    assert ce_id[(gone_id, "connected")] == tried[gone_id]  # the ce-id the victim sent
    assert ce_id[(stays_id, "connected")] == tried[stays_id]
    for cid in (gone_id, stays_id):
        assert [name for c, name, _ in took if c == cid] == ["connected", "disconnected"]
    # Not one event sent with a second ce-id (by the victim before, or the survivor after).
    assert all(len(ids) == 1 for ids in handler.seen().values()), handler.seen()
    assert survivor.upstream is not None
    assert survivor.upstream.stats.taken_over == 3
    assert survivor.upstream.queued() == 0
    health = await (await http.get(f"{survivor.endpoint}/api/health")).json()
    assert health["events"]["takenOver"] == 3
    # The mirror is gone, and what was taken is marked for the victim, should it return.
    assert not await client.exists(f"{redis_prefix}:events:victim")
    assert await client.scard(f"{redis_prefix}:taken:victim") == 3  # type: ignore[misc]


async def test_a_node_cut_off_and_taken_for_dead_does_not_send_what_was_taken_over(
    start_service: StartService,
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    http: aiohttp.ClientSession,
) -> None:
    """Node a's link to Redis goes down for longer than the heartbeat timeout while its
    handler is down: b takes a's queued events over. When a reaches Redis again it drops
    them from its own queue; once the handler is back each is taken once, from b."""
    handler = Handler(handler_app)
    hub = chat_hub(handler_app.url, system=EVENTS)
    link = await TcpProxy(redis_server.port).start()
    cut_off = plane(f"redis://127.0.0.1:{link.port}/0", redis_prefix, "a")
    a = await start_service(hub, backplane=cut_off)
    b = await start_service(hub, backplane=plane(redis_server.url, redis_prefix, "b"))
    assert a.upstream is not None and b.upstream is not None
    try:
        async with service_at(a) as on_a:
            url = (await on_a.get_client_access_token(user_id="away"))["url"]
            ws, cid = await json_client(http, url, WAIT)
            await ws.close()
            await wait_for_hash_size(client, f"{redis_prefix}:events:a", 2, WAIT)
            assert a.upstream.queued() == 2

            link.retarget(closed_port())
            await link.cut()
            async with asyncio.timeout(WAIT):
                await cut_off.lost()
            await wait_for_hash_size(client, f"{redis_prefix}:events:a", 0, WAIT)  # b took them
            assert b.upstream.stats.taken_over == 2

            link.retarget(redis_server.port)  # a learns what was taken, and drops it
            async with asyncio.timeout(WAIT):
                await cut_off.synced()
                await cut_off.mirror_flushed()
            assert a.upstream.stats.taken_by_others == 2
            assert a.upstream.queued() == 0

            handler.down = False
            await delivered(b, 2)
    finally:
        await link.stop()
    handler.took_once_each(cid)
    assert a.upstream.stats.delivered == 0


async def test_the_mirror_follows_the_queue_through_redis_restarts_and_a_cut_link(
    start_service: StartService,
    handler_app: EventHandlerApp,
    tmp_path: Path,
    redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    """Redis restarted empty: the node copies its queue into it again. Its link cut: an
    event delivered meanwhile leaves the mirror and one queued meanwhile enters it once
    the link is back."""
    own = RedisServer(tmp_path).start()
    link = await TcpProxy(own.port).start()
    handler = Handler(handler_app)
    node_plane = plane(f"redis://127.0.0.1:{link.port}/0", redis_prefix, "a")
    key = f"{redis_prefix}:events:a"
    check = aioredis.Redis.from_url(own.url)
    try:
        a = await start_service(chat_hub(handler_app.url, system=EVENTS), backplane=node_plane)
        async with service_at(a) as on_a:
            url = (await on_a.get_client_access_token(user_id="first"))["url"]
            first, _ = await json_client(http, url, WAIT)
            await wait_for_hash_size(check, key, 1, WAIT)
            queued = queued_here(a)
            assert await mirrored(check, key) == queued and len(queued) == 1

            own.stop()
            async with asyncio.timeout(WAIT):
                await node_plane.lost()
            own.start(own.port)  # empty: nothing was persisted
            async with asyncio.timeout(WAIT):
                await node_plane.synced()
                await node_plane.mirror_flushed()
            await check.aclose()
            check = aioredis.Redis.from_url(own.url)
            assert await mirrored(check, key) == queued

            link.retarget(closed_port())
            await link.cut()
            async with asyncio.timeout(WAIT):
                await node_plane.lost()
            handler.refuse = {"second"}
            handler.down = False
            await delivered(a, 1)  # first's connected, while the mirror cannot hear of it
            second = await http.ws_connect(  # no subprotocol: it needs no presence written
                (await on_a.get_client_access_token(user_id="second"))["url"]
            )
            await handler_app.next_request(
                lambda r: r.headers.get("ce-userId") == "second", timeout=WAIT
            )
            now = queued_here(a)
            assert len(now) == 1 and now != queued
            assert await mirrored(check, key) == queued  # stale while cut off

            link.retarget(own.port)
            async with asyncio.timeout(WAIT):
                await node_plane.synced()
                await node_plane.mirror_flushed()
            assert await mirrored(check, key) == now == queued_here(a)
            await first.close()
            await second.close()
    finally:
        await check.aclose()
        await link.stop()
        own.stop()


async def test_a_node_stopped_with_events_left_hands_them_to_a_survivor_and_not_again(
    start_service: StartService,
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """SIGTERM-like stop while the handler is down: what a could not deliver within its
    shutdown timeout stays in its queue file and its mirror, b takes it over; when a
    starts again with the same file it does not send those events a second time."""
    handler = Handler(handler_app)
    hub = chat_hub(handler_app.url, system=EVENTS)
    data = str(tmp_path / "a-data")
    b = await start_service(hub, backplane=plane(redis_server.url, redis_prefix, "b"))
    a = ServiceRunner(
        make_config(hub, data_dir=data),
        backplane=plane(redis_server.url, redis_prefix, "a"),
        advertised_host="127.0.0.1",
    )
    await a.start()
    async with service_at(a) as on_a:
        url = (await on_a.get_client_access_token(user_id="left"))["url"]
        ws, cid = await json_client(http, url, WAIT)
    await ws.close()
    await wait_for_hash_size(client, f"{redis_prefix}:events:a", 2, WAIT)
    await a.stop()  # the handler still down: both stay queued
    await wait_for_hash_size(client, f"{redis_prefix}:events:a", 0, WAIT)  # b took them
    assert b.upstream is not None
    assert b.upstream.stats.taken_over == 2

    again = ServiceRunner(
        make_config(hub, data_dir=data),
        backplane=plane(redis_server.url, redis_prefix, "a"),
        advertised_host="127.0.0.1",
    )
    await again.start()
    try:
        assert again.upstream is not None
        assert again.upstream.stats.taken_by_others == 2
        assert again.upstream.queued() == 0
        handler.down = False
        await delivered(b, 2)
    finally:
        await again.stop()
    handler.took_once_each(cid)


async def test_a_node_restarted_without_its_queue_file_takes_its_copied_events_back(
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """A lone node stops with two events its handler has not taken and starts again
    under the same node id with an empty data_dir (a container without its volume): it
    queues them again from its copy in Redis and delivers them with their ce-id."""
    handler = Handler(handler_app)
    hub = chat_hub(handler_app.url, system=EVENTS)

    def node(data: str) -> ServiceRunner:
        return ServiceRunner(
            make_config(hub, data_dir=str(tmp_path / data)),
            backplane=plane(redis_server.url, redis_prefix, "a"),
            advertised_host="127.0.0.1",
        )

    first = node("lost-volume")
    await first.start()
    async with service_at(first) as on_a:
        url = (await on_a.get_client_access_token(user_id="kept"))["url"]
        ws, cid = await json_client(http, url, WAIT)
    await ws.close()
    await wait_for_hash_size(client, f"{redis_prefix}:events:a", 2, WAIT)
    left = queued_here(first)
    await first.stop()  # the handler still down: both stay queued, and copied

    again = node("new-volume")
    handler.down = False
    await again.start()
    try:
        await delivered(again, 2)
        assert again.upstream is not None and again.upstream.stats.taken_over == 2
    finally:
        await again.stop()
    handler.took_once_each(cid)
    assert [(c, ce) for c, _, ce in handler.took] == left


async def test_a_killed_node_restarted_without_its_file_sends_connected_then_disconnected(
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Node "victim" is SIGKILLed with a connection open whose ``connected`` its handler
    has not taken, and starts again under its node id with an empty data_dir. Its start
    ends the previous run's connection (a ``disconnected`` queued in the new file at
    seq 1, the copied ``connected``'s seq too): the copied event is queued first, and
    both go out, in order, with the copy emptied."""
    handler = Handler(handler_app)
    proc, endpoint = await spawn_node(
        tmp_path, redis_server, redis_prefix, handler_app.url, system_events=sorted(EVENTS)
    )
    try:
        async with service_at(endpoint) as on_victim:
            url = (await on_victim.get_client_access_token(user_id="u"))["url"]
            ws, cid = await json_client(http, url, WAIT)
            await wait_for_hash_size(client, f"{redis_prefix}:events:victim", 1, WAIT)
            copied = await mirrored(client, f"{redis_prefix}:events:victim")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await ws.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    again = ServiceRunner(
        make_config(chat_hub(handler_app.url, system=EVENTS), data_dir=str(tmp_path / "new")),
        backplane=plane(redis_server.url, redis_prefix, "victim"),
        advertised_host="127.0.0.1",
    )
    handler.down = False
    await again.start()
    try:
        await delivered(again, 2)
        assert isinstance(again.backplane, RedisBackplane)
        async with asyncio.timeout(WAIT):
            await again.backplane.mirror_flushed()
        assert await mirrored(client, f"{redis_prefix}:events:victim") == []
    finally:
        await again.stop()
    handler.took_once_each(cid)
    assert [(c, ce) for c, name, ce in handler.took if name == "connected"] == copied


async def test_a_cut_off_nodes_queued_disconnected_goes_once_its_end_was_reported(
    start_service: StartService,
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    """A client leaves node a while a is cut off from Redis and the handler is down: a
    queues its ``disconnected``, and b, taking a for dead, reports the connection's end
    with its own ce-id (the same whichever survivor does). When a reaches Redis again it
    reads that the end was reported and drops its own: the handler takes one
    ``disconnected``."""
    handler = Handler(handler_app)
    handler.down = False
    hub = chat_hub(handler_app.url, system=EVENTS)
    link = await TcpProxy(redis_server.port).start()
    cut_off = plane(f"redis://127.0.0.1:{link.port}/0", redis_prefix, "a")
    a = await start_service(hub, backplane=cut_off)
    b = await start_service(hub, backplane=plane(redis_server.url, redis_prefix, "b"))
    assert a.upstream is not None and b.upstream is not None
    up_a, up_b = a.upstream, b.upstream
    try:
        async with service_at(a) as on_a:
            url = (await on_a.get_client_access_token(user_id="x"))["url"]
            ws, cid = await json_client(http, url, WAIT)
            await delivered(a, 1)
            async with asyncio.timeout(WAIT):
                await cut_off.synced()
                # The delivered connected's removal has reached Redis: otherwise b takes
                # it over as still queued and sends it again (at least once, same ce-id).
                await cut_off.mirror_flushed()
            handler.down = True
            link.retarget(closed_port())
            await link.cut()
            async with asyncio.timeout(WAIT):
                await cut_off.lost()
            await ws.close()  # the client leaves during the cut
            async with asyncio.timeout(WAIT):
                await up_a.wait_until(lambda: up_a.queued() == 1)
                await up_b.wait_until(lambda: up_b.queued() == 1)  # b reaped a
            link.retarget(redis_server.port)
            async with asyncio.timeout(WAIT):
                await cut_off.synced()
                await up_a.wait_until(lambda: up_a.queued() == 0)
            assert up_a.stats.taken_by_others == 1
            handler.down = False
            await delivered(b, 1)
    finally:
        await link.stop()
    assert [(c, name) for c, name, _ in handler.took] == [(cid, "connected"), (cid, "disconnected")]
    assert handler.took[1][2] == reaped_event_id("chat", cid)
    assert up_a.stats.delivered == 1


async def test_a_node_stopping_with_its_mirror_behind_brings_it_in_step_before_it_leaves(
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    client: aioredis.Redis,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Node a's copy holds a ``connected`` when its link to Redis goes down; a delivers it
    meanwhile (the copy must be made anew) and stops; Redis answers again once its
    queue is closing. It brings the copy in step before it leaves: nothing is left there
    for a survivor to send a second time, and a is no longer listed."""
    handler = Handler(handler_app)
    link = await TcpProxy(redis_server.port).start()
    cut_off = plane(f"redis://127.0.0.1:{link.port}/0", redis_prefix, "a")
    a = ServiceRunner(
        make_config(chat_hub(handler_app.url, system=EVENTS), data_dir=str(tmp_path / "a")),
        backplane=cut_off,
        advertised_host="127.0.0.1",
    )
    await a.start()
    try:
        async with service_at(a) as on_a:
            url = (await on_a.get_client_access_token(user_id="x"))["url"]
            ws, cid = await json_client(http, url, WAIT)
            await wait_for_hash_size(client, f"{redis_prefix}:events:a", 1, WAIT)
            link.retarget(closed_port())
            await link.cut()
            async with asyncio.timeout(WAIT):
                await cut_off.lost()
            handler.down = False
            await delivered(a, 1)
            # Redis answers again only once the node is stopping (its queue closing).
            closing, reached = cut_off.closing, asyncio.Event()

            async def spy() -> None:
                reached.set()
                await closing()

            cut_off.closing = spy  # type: ignore[method-assign]
            stopping = asyncio.create_task(a.stop())  # the client's disconnected goes too
            async with asyncio.timeout(WAIT):
                await asyncio.wait(
                    [stopping, asyncio.create_task(reached.wait())],
                    return_when=asyncio.FIRST_COMPLETED,
                )
            link.retarget(redis_server.port)
            async with asyncio.timeout(WAIT):
                await stopping
            await ws.close()
    finally:
        await a.stop()
        await link.stop()
    assert [(c, name) for c, name, _ in handler.took] == [(cid, "connected"), (cid, "disconnected")]
    assert not await client.exists(f"{redis_prefix}:events:a")
    assert not await client.sismember(f"{redis_prefix}:nodes", "a")  # type: ignore[misc]
