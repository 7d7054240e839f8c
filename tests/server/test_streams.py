"""Group streams on the wire: raw JSON-subprotocol and simple clients against a real
service (one node, and two nodes over Redis), frame for frame."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from tests.conftest import StartService
from tests.server import test_json_protocol as wire
from tests.server.test_json_protocol import (
    ALL_ROLES,
    JSON,
    RELIABLE,
    WAIT,
    Client,
    Connect,
    chat_hub,
    minted_url,
)
from tests.support.redis_server import RedisServer
from webpubsub.backplane.redis import RedisBackplane

http = wire.http  # the raw-client fixtures of the JSON-subprotocol tests
connect = wire.connect

START = {"type": "sendToGroup", "group": "g", "stream": {"streamId": "s"}}


def fragment(seq: int, text: str) -> dict[str, Any]:
    return {
        "type": "streamData",
        "streamId": "s",
        "streamSequenceId": seq,
        "dataType": "text",
        "data": text,
    }


async def publisher(connect: Connect, url: str) -> Client:
    client = await connect(url, JSON)
    await client.send(START)
    assert await client.recv() == {"type": "streamAck", "streamId": "s", "expectedSequenceId": 1}
    return client


async def subscriber(connect: Connect, url: str) -> Client:
    client = await connect(url, RELIABLE)
    ack = await client.ack({"type": "joinGroup", "group": "g", "ackId": 1})
    assert ack["success"] is True
    return client


async def test_a_stream_reaches_json_and_simple_subscribers_then_ends(
    start_service: StartService, connect: Connect, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(chat_hub())
    sub = await subscriber(connect, minted_url(runner, roles=ALL_ROLES))
    simple = await http.ws_connect(minted_url(runner, groups=["g"]))
    pub = await publisher(connect, minted_url(runner, roles=ALL_ROLES, user_id="ann"))

    await pub.send(fragment(1, "a"))
    assert await pub.recv() == {"type": "streamAck", "streamId": "s", "expectedSequenceId": 2}
    assert await sub.recv() == {
        "sequenceId": 1,
        "type": "message",
        "from": "group",
        "group": "g",
        "fromUserId": "ann",
        "dataType": "text",
        "data": "a",
        "stream": {"streamId": "s", "streamSequenceId": 1},
    }
    raw = await simple.receive(timeout=WAIT)
    assert (raw.type, raw.data) == (WSMsgType.TEXT, "a")  # a raw client gets the fragment

    await pub.send({"type": "streamEnd", "streamId": "s"})
    assert await pub.recv() == {"type": "streamClosed", "streamId": "s"}
    assert await sub.recv() == {
        "sequenceId": 2,
        "type": "message",
        "from": "group",
        "group": "g",
        "fromUserId": "ann",
        "dataType": "binary",
        "data": "",
        "stream": {"streamId": "s", "streamSequenceId": 2, "endOfStream": True},
    }
    # The empty terminal message is not sent to the raw client: the next frame it gets
    # is the next group message.
    send = {"type": "sendToGroup", "group": "g", "ackId": 9, "dataType": "text", "data": "after"}
    await pub.call(send)
    raw = await simple.receive(timeout=WAIT)
    assert (raw.type, raw.data) == (WSMsgType.TEXT, "after")
    await simple.close()


async def test_the_publisher_leaving_ends_its_streams_cancelled(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    sub = await subscriber(connect, minted_url(runner, roles=ALL_ROLES))
    pub = await publisher(connect, minted_url(runner, roles=ALL_ROLES))
    await pub.send(fragment(1, "a"))
    assert (await sub.recv())["data"] == "a"
    await pub.ws.close()
    end = await sub.recv()
    assert end["stream"] == {
        "streamId": "s",
        "streamSequenceId": 2,
        "endOfStream": True,
        "error": {"name": "Cancelled", "message": "The client closed the connection."},
    }


async def test_an_idle_stream_is_ended_for_the_publisher_and_the_subscribers(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    sub = await subscriber(connect, minted_url(runner, roles=ALL_ROLES))
    pub = await connect(minted_url(runner, roles=ALL_ROLES), JSON)
    await pub.send({**START, "stream": {"streamId": "s", "idleTimeoutMs": 200}})
    assert (await pub.recv())["type"] == "streamAck"
    await pub.send(fragment(1, "a"))
    assert (await pub.recv())["expectedSequenceId"] == 2
    assert (await sub.recv())["data"] == "a"
    closed = await pub.recv()  # nothing more sent: the stream times out
    assert closed == {
        "type": "streamClosed",
        "streamId": "s",
        "error": {"name": "IdleTimeout", "message": "No data or keep-alive within 200 ms."},
    }
    end = await sub.recv()
    assert end["stream"]["endOfStream"] is True
    assert end["stream"]["error"]["name"] == "IdleTimeout"
    await pub.send(fragment(2, "b"))  # too late: told again why it is gone
    assert await pub.recv() == closed


async def test_a_stream_crosses_nodes_over_redis(
    start_service: StartService,
    connect: Connect,
    redis_server: RedisServer,
    redis_prefix: str,
) -> None:
    """The publisher on one node, the subscriber on another: the backplane carries each
    fragment's stream metadata and the terminal message's error."""
    a = await start_service(
        chat_hub(), backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="a")
    )
    b = await start_service(
        chat_hub(),
        backplane=RedisBackplane(redis_server.url, prefix=redis_prefix, node_id="b"),
        public_endpoint=a.endpoint,
    )
    sub = await subscriber(connect, minted_url(a, port=b.port, roles=ALL_ROLES))
    assert isinstance(b.backplane, RedisBackplane)
    await b.backplane.flushed()
    pub = await publisher(connect, minted_url(a, roles=ALL_ROLES))
    await pub.send(fragment(1, "a"))
    assert (await pub.recv())["expectedSequenceId"] == 2
    got = await sub.recv()
    assert (got["data"], got["stream"]) == ("a", {"streamId": "s", "streamSequenceId": 1})
    end = {"type": "streamEnd", "streamId": "s", "error": {"message": "m", "userErrorCode": "E"}}
    await pub.send(end)
    assert await pub.recv() == {"type": "streamClosed", "streamId": "s"}
    assert (await sub.recv())["stream"] == {
        "streamId": "s",
        "streamSequenceId": 2,
        "endOfStream": True,
        "error": {"name": "UserError", "message": "m", "userErrorCode": "E"},
    }


async def test_duplicates_are_dropped_gaps_nacked_and_keep_alives_keep_a_stream_open(
    start_service: StartService, connect: Connect
) -> None:
    runner = await start_service(chat_hub())
    sub = await subscriber(connect, minted_url(runner, roles=ALL_ROLES))
    pub = await connect(minted_url(runner, roles=ALL_ROLES), JSON)
    await pub.send({**START, "stream": {"streamId": "s", "idleTimeoutMs": 400}})
    assert (await pub.recv())["type"] == "streamAck"
    await pub.send(fragment(1, "a"))
    await pub.send(fragment(1, "a"))  # a duplicate: acknowledged, not delivered again
    await pub.send(fragment(3, "c"))  # a gap
    assert [await pub.recv() for _ in range(3)] == [
        {"type": "streamAck", "streamId": "s", "expectedSequenceId": 2},
        {"type": "streamAck", "streamId": "s", "expectedSequenceId": 2},
        {
            "type": "streamNack",
            "streamId": "s",
            "expectedSequenceId": 2,
            "name": "InvalidSequenceId",
            "message": "Expected fragment 2, got 3.",
        },
    ]
    # Keep-alives every 200 ms keep the stream past its 400 ms idle timeout (the sleeps
    # are the stimulus: time passing without data), with nothing sent back.
    for _ in range(4):
        await asyncio.sleep(0.2)
        await pub.send({"type": "streamData", "streamId": "s"})
    await pub.send(fragment(2, "b"))
    assert await pub.recv() == {"type": "streamAck", "streamId": "s", "expectedSequenceId": 3}
    assert [(await sub.recv())["data"] for _ in range(2)] == ["a", "b"]  # "a" once
    closed = await pub.recv()  # then silence: it times out
    assert closed["type"] == "streamClosed" and closed["error"]["name"] == "IdleTimeout"
