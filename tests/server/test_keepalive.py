"""The service-wide keep-alive: a silent connection is pinged after an interval and closed
half an interval later if it stays silent; anything the client sends keeps it alive."""

from __future__ import annotations

import asyncio
import gc
import logging

import aiohttp
import pytest

from tests.conftest import StartService
from tests.support.service import client_url
from webpubsub.core.settings import HubSettings
from webpubsub.server.app import ServiceRunner
from webpubsub.server.keepalive import EXPIRE_TICK, PING_TICK, TICKS, KeepAlive, Sweep
from webpubsub.server.websocket import ClientSocket

HUB = "h"
WAIT = 10.0
"""Upper bound for anything that should happen promptly (never a timing assertion)."""


class Member:
    def __init__(self, *, fail: bool = False) -> None:
        self.heard = False
        self.silent = 0
        self.gone = False
        self.pings = 0
        self.expired = 0
        self.fail = fail

    def ping(self) -> None:
        self.pings += 1
        if self.fail:
            raise OSError("broken transport")

    def expire(self) -> None:
        self.expired += 1
        self.gone = True


def sweeps(sweep: Sweep, count: int, *, heard: tuple[Member, ...] = ()) -> None:
    for _ in range(count):
        for member in heard:
            member.heard = True
        sweep.run()


async def test_a_silent_member_is_pinged_after_an_interval_and_expires_half_one_later() -> None:
    sweep = Sweep(20.0, asyncio.get_running_loop())
    member = Member()
    sweep.add(member)
    sweeps(sweep, PING_TICK)  # the first notes it joined (heard); PING_TICK - 1 silent
    assert member.pings == 0
    sweep.run()
    assert (member.pings, member.expired) == (1, 0)
    sweeps(sweep, EXPIRE_TICK - PING_TICK - 1)
    assert (member.pings, member.expired) == (1, 0)
    sweep.run()
    assert (member.pings, member.expired) == (1, 1)
    assert member not in sweep.members
    assert EXPIRE_TICK - PING_TICK == TICKS // 2  # half an interval after the ping
    sweep.close()


async def test_a_member_heard_is_never_pinged_and_an_answer_to_a_ping_keeps_it() -> None:
    sweep = Sweep(20.0, asyncio.get_running_loop())
    chatty, answers = Member(), Member()
    sweep.add(chatty)
    sweep.add(answers)
    sweeps(sweep, 3 * TICKS, heard=(chatty,))
    assert chatty.pings == 0
    assert answers.expired == 1  # never heard: closed
    quiet = Member()
    sweep.add(quiet)
    sweeps(sweep, PING_TICK + 1)
    assert quiet.pings == 1
    quiet.heard = True  # its pong (or anything) arrives before the next sweep
    sweeps(sweep, PING_TICK)  # that sweep notes it; PING_TICK - 1 silent ones follow
    assert (quiet.pings, quiet.expired) == (1, 0)
    sweeps(sweep, 1)
    assert quiet.pings == 2  # silent again for an interval: pinged again
    sweep.close()


async def test_a_gone_member_is_dropped_and_the_timer_runs_only_while_there_are_members() -> None:
    sweep = Sweep(20.0, asyncio.get_running_loop())
    member = Member()
    sweep.add(member)
    assert sweep._timer is not None
    member.gone = True
    sweep.run()
    assert member.pings == 0 and not sweep.members
    assert sweep._timer is None
    sweep.add(member)
    sweep.discard(member)
    sweep.run()
    assert sweep._timer is None


async def test_one_failing_ping_does_not_stop_the_sweep(caplog: pytest.LogCaptureFixture) -> None:
    sweep = Sweep(20.0, asyncio.get_running_loop())
    broken, fine = Member(fail=True), Member()
    sweep.add(broken)
    sweep.add(fine)
    with caplog.at_level(logging.ERROR):
        sweeps(sweep, PING_TICK + 1)
    assert (broken.pings, fine.pings) == (1, 1)
    assert "keep-alive" in caplog.text
    sweep.close()


async def test_the_timer_sweeps_each_interval_by_itself() -> None:
    keepalive = KeepAlive()
    member = Member()
    keepalive.watch(member, 0.04)
    async with asyncio.timeout(WAIT):
        while not member.expired:  # noqa: ASYNC110 - the sweep's effects have no event
            await asyncio.sleep(0.01)
    assert member.pings == 1
    assert keepalive.watched == 0
    keepalive.close()


# -- the service ----------------------------------------------------------------------


def watched(runner: ServiceRunner) -> int:
    assert runner._keepalive is not None
    return runner._keepalive.watched


def hub_size(runner: ServiceRunner) -> int:
    assert runner.node is not None
    hub = runner.node.hub(HUB)
    return len(hub.connections()) if hub is not None else 0


async def test_a_client_that_stops_answering_pings_is_closed(
    start_service: StartService,
) -> None:
    """The client reads the service's pings but never answers (nor sends anything): the
    service closes it (1006: the transport) within 1.5 to 1.75 intervals, and the
    connection is gone from its hub."""
    runner = await start_service(HubSettings(name=HUB, keepalive_seconds=1))
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(await client_url(runner, HUB), autoping=False)
        connected = loop.time()
        kinds: list[aiohttp.WSMsgType] = []
        async with asyncio.timeout(WAIT):
            while not ws.closed:
                msg = await ws.receive()
                kinds.append(msg.type)
        closed = loop.time() - connected
    assert kinds[0] is aiohttp.WSMsgType.PING and kinds.count(aiohttp.WSMsgType.PING) == 1
    assert kinds[-1] is aiohttp.WSMsgType.CLOSED  # the transport closed: no close frame
    assert closed >= 1.5  # never before an interval of silence and half one after the ping
    async with asyncio.timeout(WAIT):
        while hub_size(runner):  # noqa: ASYNC110 - detaching has no event to wait on
            await asyncio.sleep(0.01)
    assert watched(runner) == 0


async def test_a_client_that_answers_pings_stays_connected(
    start_service: StartService,
) -> None:
    """Pinged after each silent interval; its pongs keep it: after its third ping (more
    than two intervals after it last sent anything else) it is still connected."""
    runner = await start_service(HubSettings(name=HUB, keepalive_seconds=1))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(await client_url(runner, HUB), autoping=False)
        pings = 0
        async with asyncio.timeout(WAIT):
            while pings < 3:
                msg = await ws.receive()
                assert msg.type is aiohttp.WSMsgType.PING
                pings += 1
                await ws.pong(msg.data)
        assert not ws.closed
        assert hub_size(runner) == 1 and watched(runner) == 1
        await ws.close()


async def test_aiohttp_keeps_no_heartbeat_timer_per_connection(
    start_service: StartService,
) -> None:
    runner = await start_service(HubSettings(name=HUB, keepalive_seconds=1))
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(await client_url(runner, HUB), autoping=False)
        async with asyncio.timeout(WAIT):
            assert (await ws.receive()).type is aiohttp.WSMsgType.PING  # ours
        (socket_,) = _alive(ClientSocket)
        assert socket_._heartbeat is None and socket_._heartbeat_cb is None
        assert socket_._req is not None and socket_._req.protocol._data_received_cb is None
        await ws.close()


def _alive(kind: type[ClientSocket]) -> list[ClientSocket]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, kind)]
