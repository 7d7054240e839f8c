"""Faults of a Redis cluster: a node killed, Redis stopped and restarted empty.

Nodes are real: in-process services, and a ``webpubsub serve`` subprocess where a node
must die by SIGKILL. Each test that stops Redis has a ``redis-server`` of its own.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from azure.core.exceptions import HttpResponseError

from tests.conftest import StartService
from tests.support.cluster import service_at, spawn_node
from tests.support.handler import EventHandlerApp, Recorded, default_responder
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from tests.support.service import chat_hub, json_client, next_data
from webpubsub.backplane.redis import RedisBackplane

pytestmark = pytest.mark.e2e

WAIT = 10.0
HEARTBEAT = 1.0
"""A short heartbeat timeout, so that a dead node is noticed within the test's time."""


def plane(server: RedisServer, prefix: str, node_id: str) -> RedisBackplane:
    return RedisBackplane(server.url, prefix=prefix, node_id=node_id, heartbeat_timeout=HEARTBEAT)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A redis-server this test may stop and restart."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


async def test_a_killed_node_leaves_every_answer_and_a_survivor_sends_disconnected(
    start_service: StartService,
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:

    def set_state(req: Recorded) -> web.StreamResponse:
        if req.event_name == "set":
            return web.Response(status=204, headers={"ce-connectionState": "after-set"})
        return default_responder(req)

    handler_app.responder = set_state
    survivor = await start_service(
        chat_hub(handler_app.url, system=frozenset({"disconnected"})),
        backplane=plane(redis_server, redis_prefix, "survivor"),
    )
    proc, endpoint = await spawn_node(tmp_path, redis_server, redis_prefix, handler_app.url)
    try:
        async with service_at(endpoint) as on_victim, service_at(survivor) as rest:
            url = (
                await on_victim.get_client_access_token(
                    user_id="doomed", groups=["g"], roles=["webpubsub.joinLeaveGroup"]
                )
            )["url"]
            ws, _ = await json_client(http, url, WAIT)
            # The handler gives the connection a new state after it connected ...
            await ws.send_json(
                {"type": "event", "event": "set", "dataType": "text", "data": "x", "ackId": 1}
            )
            assert (await ws.receive_json(timeout=WAIT))["success"] is True
            # ... and a join is acknowledged once the node's presence writes before it
            # (that state among them) are in Redis.
            await ws.send_json({"type": "joinGroup", "group": "g2", "ackId": 2})
            assert (await ws.receive_json(timeout=WAIT))["success"] is True
            assert await rest.user_exists("doomed") and await rest.group_exists("g")

            proc.send_signal(signal.SIGKILL)  # no goodbye: only the heartbeat tells
            await proc.wait()
            event = await handler_app.next_event(".disconnected", timeout=WAIT)
            assert event.headers["ce-userId"] == "doomed"
            # The state as it was when the node died, not as it was at connect.
            assert event.headers["ce-connectionState"] == "after-set"
            assert event.headers["ce-hub"] == "chat"
            assert not await rest.user_exists("doomed")
            assert not await rest.group_exists("g")
            # Traffic goes on for the survivor's own clients.
            local = await http.ws_connect((await rest.get_client_access_token(user_id="ok"))["url"])
            await rest.send_to_all("still here", content_type="text/plain")
            assert (await local.receive(timeout=WAIT)).data == "still here"
            await local.close()
            await ws.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    disconnected = [r for r in handler_app.requests if r.ce_type.endswith(".disconnected")]
    assert [r.headers["ce-userId"] for r in disconnected] == ["doomed", "ok"]


async def test_one_of_three_nodes_killed_while_messages_flow(
    start_service: StartService,
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Two survivors and a victim: a stream of REST sends through one survivor to a client
    of the other never misses a message while the victim dies, both survivors answer for
    its connection within the heartbeat timeout, and its disconnected event comes once."""
    hub = chat_hub(handler_app.url, system=frozenset({"disconnected"}))
    rest_node = await start_service(hub, backplane=plane(redis_server, redis_prefix, "s1"))
    client_node = await start_service(hub, backplane=plane(redis_server, redis_prefix, "s2"))
    proc, endpoint = await spawn_node(tmp_path, redis_server, redis_prefix, handler_app.url)
    sent: list[str] = []
    try:
        async with (
            service_at(endpoint) as on_victim,
            service_at(rest_node) as rest,
            service_at(client_node) as other,
        ):
            token = await on_victim.get_client_access_token(user_id="doomed", groups=["g"])
            doomed, _ = await json_client(http, token["url"], WAIT)
            token = await other.get_client_access_token(user_id="keep")
            keep, _ = await json_client(http, token["url"], WAIT)
            assert await rest.user_exists("doomed") and await other.group_exists("g")
            killed = asyncio.Event()

            async def stream() -> None:
                # Bounded: it ends at a fixed count, and at least 20 sends after the kill.
                after = 0
                for i in range(5000):
                    await rest.send_to_user("keep", f"m{i}", content_type="text/plain")
                    sent.append(f"m{i}")
                    if i == 20:
                        proc.send_signal(signal.SIGKILL)  # no goodbye: only the heartbeat tells
                        killed.set()
                    if killed.is_set():
                        after += 1
                        if after > 20 and disconnected.done():
                            return

            disconnected = asyncio.ensure_future(
                handler_app.next_event(".disconnected", timeout=WAIT)
            )
            await asyncio.wait_for(stream(), 3 * WAIT)
            event = await disconnected
            assert event.headers["ce-userId"] == "doomed"
            for node in (rest, other):
                assert not await node.user_exists("doomed")
                assert not await node.group_exists("g")
            received = [await next_data(keep, WAIT) for _ in sent]
            assert received == sent  # every message, once, in order
            await keep.close()
            await doomed.close()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    ends = [
        r.headers["ce-userId"] for r in handler_app.requests if r.ce_type.endswith(".disconnected")
    ]
    assert ends.count("doomed") == 1


async def test_a_dead_nodes_connection_is_reported_once_however_many_reap(
    redis_server: RedisServer, redis_prefix: str
) -> None:
    """Two survivors reaping the same dead node: the connection is reported by one."""
    client = aioredis.Redis.from_url(redis_server.url)
    p = redis_prefix
    await client.hset(f"{p}:conn:chat:c1", mapping={"n": "ghost", "u": "u1", "s": "", "t": ""})
    await client.sadd(f"{p}:conns:ghost", "chat\x00c1")
    await client.sadd(f"{p}:nodes", "ghost")
    reports: list[str] = []

    class Recorder:
        node_id = "x"

        def apply(self, command: object) -> None:
            pass

        def answer(self, query: object) -> None:
            return None

        def reaped(self, connection: object) -> None:
            reports.append(connection.connection_id)  # type: ignore[attr-defined]

    planes = [plane(redis_server, p, f"reaper{i}") for i in range(2)]
    for each in planes:
        await each.start(Recorder())
        each._reap_after = 0.0  # no grace after joining: reap now
    try:
        await asyncio.gather(*(each._reap(HEARTBEAT / 3) for each in planes))
        await client.delete(f"{p}:reaper")  # the lock, so the second reaper runs too
        await asyncio.gather(*(each._reap(HEARTBEAT / 3) for each in planes))
    finally:
        for each in planes:
            await each.stop()
        await client.aclose()
    assert reports == ["c1"]


async def test_redis_stopped_and_restarted_empty(
    start_service: StartService,
    own_redis: RedisServer,
    redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    a_plane, b_plane = plane(own_redis, redis_prefix, "a"), plane(own_redis, redis_prefix, "b")
    a = await start_service(backplane=a_plane)
    b = await start_service(backplane=b_plane)
    async with service_at(a) as rest, service_at(b) as on_b:
        ws, _ = await json_client(http, (await on_b.get_client_access_token(user_id="u"))["url"])
        assert await rest.user_exists("u")

        own_redis.stop()
        # No silent success: a send that cannot reach the other nodes is a 503 with a body.
        with pytest.raises(HttpResponseError) as raised:
            await rest.send_to_all("lost?", content_type="text/plain")
        assert raised.value.status_code == 503
        assert raised.value.error is not None
        assert raised.value.error.code == "Error.ServiceUnavailable"
        with pytest.raises(HttpResponseError) as raised:
            await rest.user_exists("u")
        assert raised.value.status_code == 503
        # The local client keeps its connection, and health says what is wrong.
        async with asyncio.timeout(WAIT):
            await a_plane.lost()
        health = await (await http.get(f"{a.endpoint}/api/health")).json()
        assert (health["status"], health["redis"]) == ("degraded", "disconnected")
        assert not ws.closed

        own_redis.restart()  # empty: nothing was persisted
        async with asyncio.timeout(WAIT):
            await a_plane.synced()
            await b_plane.synced()
        # The nodes wrote their presence again, and commands flow again.
        assert await rest.user_exists("u")
        await rest.send_to_user("u", "back", content_type="text/plain")
        assert await next_data(ws, WAIT) == "back"
        health = await (await http.get(f"{a.endpoint}/api/health")).json()
        assert (health["status"], health["redis"]) == ("ok", "connected")
        await ws.close()


async def test_a_node_cut_off_alone_and_taken_for_dead_ends_its_clients_without_a_second_event(
    start_service: StartService,
    handler_app: EventHandlerApp,
    redis_server: RedisServer,
    redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    """Only node a loses Redis (its link goes through a proxy), for longer than the
    heartbeat timeout: b takes it for dead and reports its client's end. When a's link
    comes back it closes that client instead of writing it into Redis again, so the
    client's end is reported once, and no node answers for it any more; a client that
    connected to a while it was cut off is written and stays."""
    hub = chat_hub(handler_app.url, system=frozenset({"disconnected"}))
    link = await TcpProxy(redis_server.port).start()
    cut_off = RedisBackplane(
        f"redis://127.0.0.1:{link.port}/0",
        prefix=redis_prefix,
        node_id="a",
        heartbeat_timeout=HEARTBEAT,
    )
    a = await start_service(hub, backplane=cut_off)
    b = await start_service(hub, backplane=plane(redis_server, redis_prefix, "b"))
    try:
        async with service_at(a) as on_a, service_at(b) as on_b:
            ws, _ = await json_client(
                http, (await on_a.get_client_access_token(user_id="cut"))["url"]
            )
            assert await on_b.user_exists("cut")

            with socket.socket() as probe:  # a port where nothing listens
                probe.bind(("127.0.0.1", 0))
                link.retarget(probe.getsockname()[1])
                await link.cut()
                event = await handler_app.next_event(".disconnected", timeout=WAIT)
            assert event.headers["ce-userId"] == "cut"
            assert not await on_b.user_exists("cut")
            # A client that connects to a meanwhile was never reported: it stays.
            late = await http.ws_connect(
                (await on_a.get_client_access_token(user_id="late"))["url"]
            )

            link.retarget(redis_server.port)  # a reaches Redis again, learns it was reaped
            frame = await ws.receive_json(timeout=WAIT)
            assert (frame["type"], frame["event"]) == ("system", "disconnected")
            assert "cut off" in frame["message"]
            assert (await ws.receive(timeout=WAIT)).type is aiohttp.WSMsgType.CLOSE
            async with asyncio.timeout(WAIT):
                await cut_off.synced()
            assert not await on_b.user_exists("cut")
            assert not await on_a.user_exists("cut")
            assert await on_b.user_exists("late") and not late.closed
            await late.close()
        await a.stop()  # while it reaches Redis; its pending events are delivered first
    finally:
        await link.stop()
    ends = [r for r in handler_app.requests if r.ce_type.endswith(".disconnected")]
    assert sorted(r.headers["ce-userId"] for r in ends) == ["cut", "late"]  # once each


async def test_redis_paused_longer_than_the_heartbeat_timeout_reaps_no_one(
    start_service: StartService,
    handler_app: EventHandlerApp,
    own_redis: RedisServer,
    redis_prefix: str,
    http: aiohttp.ClientSession,
) -> None:
    """Redis frozen (SIGSTOP) for three heartbeat timeouts: every node's key lapses at once,
    which must not pass for the death of the nodes. Nobody is reaped, and the client keeps
    its connection and gets messages sent through another node afterwards."""
    hub = chat_hub(handler_app.url, system=frozenset({"disconnected"}))
    a = await start_service(hub, backplane=plane(own_redis, redis_prefix, "a"))
    b_plane = plane(own_redis, redis_prefix, "b")
    b = await start_service(hub, backplane=b_plane)
    async with service_at(a) as on_a, service_at(b) as on_b:
        ws, _ = await json_client(http, (await on_b.get_client_access_token(user_id="u"))["url"])
        own_redis.pause()
        try:
            await asyncio.sleep(3 * HEARTBEAT)  # the length of the outage, not a synchronisation
        finally:
            own_redis.resume()
        async with asyncio.timeout(WAIT):
            await b_plane.synced()
        await on_a.send_to_user("u", "after the pause", content_type="text/plain")
        assert await next_data(ws, WAIT) == "after the pause"
        assert await on_a.user_exists("u")
        await ws.close()
    await b.stop()  # its pending events are delivered before it stops
    ends = [r for r in handler_app.requests if r.ce_type.endswith(".disconnected")]
    assert [r.headers["ce-userId"] for r in ends] == ["u"]  # once: when it closed
