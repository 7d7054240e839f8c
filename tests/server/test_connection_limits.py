"""What one client may cost the service (issue 10): nesting depth and exact numbers in
JSON data, groups per connection, inbound rate and fairness, and the closes the
WebSocket library makes, on the wire with raw aiohttp clients."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from azure.core.exceptions import HttpResponseError

from tests.conftest import StartService
from tests.server.test_json_protocol import WAIT, disconnected_then_closed, recv
from tests.support.service import chat_hub, client_url, json_client, sdk
from webpubsub.server.app import ServiceRunner

ROLES = ("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(ws: aiohttp.ClientWebSocketResponse, frame: str | dict[str, Any]) -> dict[str, Any]:
    """Send a request; its ack (which must be the next message)."""
    await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
    return await recv(ws)


async def pong(ws: aiohttp.ClientWebSocketResponse) -> None:
    assert await call(ws, {"type": "ping"}) == {"type": "pong"}


@pytest.fixture
async def runner(start_service: StartService) -> ServiceRunner:
    return await start_service(chat_hub())


# -- issue 10.8: deeply nested JSON data -----------------------------------------------


@pytest.mark.parametrize("depth", [255, 1023])
async def test_deeply_nested_data_gets_a_bad_request_ack_not_a_traceback(
    runner: ServiceRunner,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    depth: int,
) -> None:
    ws, _ = await json_client(http, await client_url(runner, roles=ROLES))
    data = "[" * depth + "1" + "]" * depth
    frame = '{"type":"sendToGroup","group":"g","ackId":7,"data":' + data + "}"
    with caplog.at_level(logging.WARNING):
        ack = await call(ws, frame)
    assert ack["ackId"] == 7 and ack["success"] is False
    assert ack["error"]["name"] == "BadRequest" and "nested" in ack["error"]["message"]
    await pong(ws)  # still connected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_deeply_nested_data_without_an_ack_id_closes_with_a_reason(
    runner: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    ws, _ = await json_client(http, await client_url(runner, roles=ROLES))
    await ws.send_str('{"type":"sendToGroup","group":"g","data":' + "[" * 300 + "]" * 300 + "}")
    reason, code = await disconnected_then_closed(ws)
    assert code == 1008 and "nested" in reason


# -- issue 10.15: big integers ----------------------------------------------------------


async def test_big_integers_in_client_json_arrive_exactly(
    runner: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    url = await client_url(runner, roles=ROLES)
    sender, _ = await json_client(http, url)
    receiver, _ = await json_client(http, url)
    assert (await call(receiver, {"type": "joinGroup", "group": "g", "ackId": 1}))["success"]
    big = "123456789012345678901234567890"
    await sender.send_str('{"type":"sendToGroup","group":"g","data":{"n":' + big + "}}")
    msg = await receiver.receive(timeout=WAIT)
    assert msg.type is WSMsgType.TEXT
    assert '"data":{"n":' + big + "}" in msg.data


# -- issue 10.1: groups per connection ----------------------------------------------------


@pytest.fixture
async def few_groups(start_service: StartService) -> ServiceRunner:
    return await start_service(dataclasses.replace(chat_hub(), max_groups_per_connection=3))


async def test_a_join_past_the_group_limit_gets_a_bad_request_ack(
    few_groups: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    ws, _ = await json_client(http, await client_url(few_groups, roles=ROLES))
    for i in range(3):
        ack = await call(ws, {"type": "joinGroup", "group": f"g{i}", "ackId": i + 1})
        assert ack["success"], ack
    ack = await call(ws, {"type": "joinGroup", "group": "one-too-many", "ackId": 9})
    assert ack["success"] is False and ack["error"]["name"] == "BadRequest"
    assert "3 groups" in ack["error"]["message"]
    async with sdk(few_groups) as service:
        assert not await service.group_exists("one-too-many")
        assert await service.group_exists("g2")


async def test_a_rest_add_past_the_group_limit_is_a_400_with_a_json_error(
    few_groups: ServiceRunner, http: aiohttp.ClientSession
) -> None:
    ws, cid = await json_client(http, await client_url(few_groups))
    async with sdk(few_groups) as service:
        for i in range(3):
            await service.add_connection_to_group(f"g{i}", cid)
        await service.add_connection_to_group("g0", cid)  # a member already: fine
        with pytest.raises(HttpResponseError) as caught:
            await service.add_connection_to_group("one-too-many", cid)
        assert caught.value.status_code == 400
        assert caught.value.response.json()["code"] == "Error.BadRequest"
        assert "3 groups" in caught.value.response.json()["message"]
        assert not await service.group_exists("one-too-many")
        # Adds that cannot answer per connection skip the full one.
        await few_groups.operations.add_connections_to_groups(
            "chat", ["by-filter"], filter=f"connectionId eq '{cid}'"
        )
        assert not await service.group_exists("by-filter")
        await service.remove_connection_from_group("g0", cid)
        await service.add_connection_to_group("one-too-many", cid)
        assert await service.group_exists("one-too-many")
    await pong(ws)
