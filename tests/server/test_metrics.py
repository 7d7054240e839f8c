"""``GET /metrics`` on a real service: after a known sequence of operations (clients of
every protocol, a join, group messages, a REST broadcast through the official SDK, user
events answered and refused by a real handler, a close code, a slow client) the
scrape, parsed with ``prometheus_client.parser``, holds exactly what happened; the
token guards it; ``[metrics] enabled = false`` removes it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web
from azure.core.exceptions import HttpResponseError
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ACCESS_KEY, StartService, make_config
from tests.support.cluster import service_at
from tests.support.handler import EventHandlerApp, Recorded, default_responder, refuse_connect
from tests.support.protobuf_client import PROTOBUF, PROTOBUF_RELIABLE
from tests.support.redis_server import RedisServer
from tests.support.service import chat_hub, json_client, sdk
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.config import MetricsSettings
from webpubsub.core.connection import Connection
from webpubsub.core.hub import Hub
from webpubsub.core.permissions import Permissions
from webpubsub.core.reliable import ReliableBuffer
from webpubsub.core.settings import HubSettings
from webpubsub.node.observe import Exchange, RestCall
from webpubsub.protocol.backplane import Send, Target
from webpubsub.protocol.cloudevents import UpstreamRequest, UpstreamResponse
from webpubsub.protocol.frames import ClientProtocol, DataMessage
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.tokens import issue_client_token
from webpubsub.server import metrics as metrics_module
from webpubsub.server.app import ServiceRunner
from webpubsub.server.metrics import LATENCY_BUCKETS, PUBLISH_BUCKETS, REST_BUCKETS, Metrics

WAIT = 10.0
TOKEN = "metrics-token-0123456789"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait for state that has no event to wait on (a connection gone from its hub)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling: there is no event to await
            await asyncio.sleep(0.005)


def client_url(runner: ServiceRunner, hub: str, user: str | None = None) -> str:
    base = f"ws://127.0.0.1:{runner.port}/client/hubs/{hub}"
    token = issue_client_token(
        ACCESS_KEY,
        audience=f"http://127.0.0.1:{runner.port}/client/hubs/{hub}",
        now=time.time(),
        user_id=user,
        roles=("webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"),
    )
    return f"{base}?access_token={token}"


async def scrape(
    http: aiohttp.ClientSession, runner: ServiceRunner, token: str | None = None
) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.get(f"http://127.0.0.1:{runner.port}/metrics", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 if the scrape has none (a counter never incremented)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def handler_responses(req: Recorded) -> web.StreamResponse:
    if req.event_name == "ok":
        return web.Response(text="echo", content_type="text/plain")
    if req.event_name == "bad":
        return web.Response(status=500, text="no")
    return default_responder(req)


async def acked(ws: aiohttp.ClientWebSocketResponse, ack_id: int) -> dict[str, object]:
    """Frames up to the ack of ``ack_id``; returns that ack."""
    async with asyncio.timeout(WAIT):
        while True:
            frame = orjson.loads((await ws.receive()).data)
            if frame.get("type") == "ack" and frame.get("ackId") == ack_id:
                return dict(frame)


async def test_a_known_sequence_is_counted_exactly(
    start_service: StartService, handler_app: EventHandlerApp, http: aiohttp.ClientSession
) -> None:
    handler_app.responder = handler_responses
    runner = await start_service(
        chat_hub(handler_app.url), HubSettings(name="slow"), outbox_max_bytes=65536
    )
    assert runner.node is not None
    before = await scrape(http, runner)
    assert value(before, "webpubsub_connections", hub="chat", protocol="json") == 0

    # 2 JSON clients and a simple client
    alice, _ = await json_client(http, client_url(runner, "chat", "alice"))
    bob, _ = await json_client(http, client_url(runner, "chat", "bob"))
    plain = await http.ws_connect(client_url(runner, "chat", "carol"))
    await wait_until(lambda: len(runner.node.hub("chat") or ()) == 3)  # type: ignore[union-attr]

    # a join each, then 3 group messages from alice (both members get each)
    sent: list[str] = []
    for i, ws in enumerate((alice, bob), start=1):
        frame = orjson.dumps({"type": "joinGroup", "group": "g", "ackId": i}).decode()
        await ws.send_str(frame)
        sent.append(frame)
        assert (await acked(ws, i))["success"] is True
    to_group = []
    for i in range(3):
        frame = orjson.dumps(
            {
                "type": "sendToGroup",
                "group": "g",
                "dataType": "text",
                "data": f"m{i}",
                "ackId": 10 + i,
            }
        ).decode()
        await alice.send_str(frame)
        to_group.append(frame)
        assert (await acked(alice, 10 + i))["success"] is True
    for _ in range(3):
        assert (await bob.receive_json(timeout=WAIT))["data"].startswith("m")

    # a REST broadcast with the official SDK: 3 recipients
    async with sdk(runner, "chat") as service:
        await service.send_to_all("hi all", content_type="text/plain")
    assert (await plain.receive(timeout=WAIT)).data == "hi all"

    # user events: one answered (its reply goes back), one the handler fails
    events = [
        orjson.dumps(
            {"type": "event", "event": "ok", "dataType": "text", "data": "x", "ackId": 20}
        ),
        orjson.dumps(
            {"type": "event", "event": "bad", "dataType": "text", "data": "y", "ackId": 21}
        ),
    ]
    await alice.send_bytes(events[0])  # a binary frame carries JSON alike
    assert (await acked(alice, 20))["success"] is True
    await alice.send_bytes(events[1])
    assert (await acked(alice, 21))["success"] is False

    # bob leaves with code 4001
    await bob.close(code=4001)
    await wait_until(lambda: len(runner.node.hub("chat") or ()) == 2)  # type: ignore[union-attr]

    # a slow client: two 40 KiB messages offered in one loop turn overflow its 64 KiB
    slow_ws = await http.ws_connect(client_url(runner, "slow"))
    await wait_until(lambda: runner.node.hub("slow") is not None)  # type: ignore[union-attr]
    (slow,) = runner.node.hub("slow").connections()  # type: ignore[union-attr]
    big = DataMessage(Payload.binary(b"z" * 40_000))
    for _ in range(2):
        runner.node.apply(Send("slow", Target.connection(slow.connection_id), big))
    assert slow.close_reason == "SlowClient"
    await slow_ws.close()
    await wait_until(lambda: runner.node.hub("slow") is None)  # type: ignore[union-attr]

    m = await scrape(http, runner)
    # connections now, and what came and went
    assert value(m, "webpubsub_connections", hub="chat", protocol="json") == 1
    assert value(m, "webpubsub_connections", hub="chat", protocol="simple") == 1
    assert total(m, "webpubsub_connections", hub="slow") == 0
    assert value(m, "webpubsub_connects_total", hub="chat", protocol="json") == 2
    assert value(m, "webpubsub_connects_total", hub="chat", protocol="simple") == 1
    assert value(m, "webpubsub_connects_total", hub="slow", protocol="simple") == 1
    client_code = value(m, "webpubsub_disconnects_total", hub="chat", code="4xxx")
    assert client_code == 1  # the client closed with 4001
    assert total(m, "webpubsub_disconnects_total", hub="chat") == 1
    assert value(m, "webpubsub_disconnects_total", hub="slow", code="1008") == 1
    assert value(m, "webpubsub_slow_client_closes_total", hub="slow") == 1
    assert total(m, "webpubsub_slow_client_closes_total", hub="chat") == 0

    # frames in, by kind
    assert value(m, "webpubsub_received_messages_total", hub="chat", kind="group") == 2
    assert value(m, "webpubsub_received_bytes_total", hub="chat", kind="group") == sum(
        len(f) for f in sent
    )
    assert value(m, "webpubsub_received_messages_total", hub="chat", kind="sendToGroup") == 3
    assert value(m, "webpubsub_received_bytes_total", hub="chat", kind="sendToGroup") == sum(
        len(f) for f in to_group
    )
    assert value(m, "webpubsub_received_messages_total", hub="chat", kind="event") == 2
    assert value(m, "webpubsub_received_bytes_total", hub="chat", kind="event") == sum(
        len(e) for e in events
    )

    # deliveries: recipients, and payload bytes times recipients
    assert value(m, "webpubsub_delivered_messages_total", hub="chat", kind="group") == 6
    assert value(m, "webpubsub_delivered_bytes_total", hub="chat", kind="group") == 6 * 2
    assert value(m, "webpubsub_delivered_messages_total", hub="chat", kind="all") == 3
    assert value(m, "webpubsub_delivered_bytes_total", hub="chat", kind="all") == 3 * 6
    assert value(m, "webpubsub_delivered_messages_total", hub="chat", kind="reply") == 1
    assert value(m, "webpubsub_delivered_bytes_total", hub="chat", kind="reply") == 4
    assert value(m, "webpubsub_delivered_messages_total", hub="slow", kind="connection") == 2
    assert value(m, "webpubsub_delivered_bytes_total", hub="slow", kind="connection") == 80_000

    # REST: one SendToAll, answered 202
    assert value(m, "webpubsub_rest_requests_total", operation="SendToAll", status="202") == 1
    assert total(m, "webpubsub_rest_requests_total") == 1
    assert value(m, "webpubsub_rest_request_duration_seconds_count", operation="SendToAll") == 1

    # CloudEvents: the abuse-protection probe, the answered and the failed user event
    ok, bad = "azure.webpubsub.user.ok", "azure.webpubsub.user.bad"
    assert value(m, "webpubsub_cloudevent_requests_total", event_type=ok, outcome="success") == 1
    assert value(m, "webpubsub_cloudevent_requests_total", event_type=bad, outcome="failed") == 1
    assert (
        value(m, "webpubsub_cloudevent_requests_total", event_type="validation", outcome="success")
        == 1
    )
    assert total(m, "webpubsub_cloudevent_requests_total") == 3
    assert value(m, "webpubsub_cloudevent_request_duration_seconds_count", event_type=bad) == 1

    # the backplane: the 3 group messages and the broadcast were published, none failed
    assert value(m, "webpubsub_backplane_publish_duration_seconds_count") == 4
    assert value(m, "webpubsub_backplane_publish_errors_total") == 0

    # state read at scrape time
    assert value(m, "webpubsub_reliable_buffered_bytes") == 0
    assert value(m, "webpubsub_detached_connections") == 0
    assert value(m, "webpubsub_events_queued") == 0
    assert value(m, "webpubsub_event_retries_total") == 0
    await alice.close()
    await plain.close()


async def test_reliable_buffers_are_summed_at_scrape_time(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    """Two reliable clients that acknowledge nothing: the sum and the largest of their
    unacknowledged bytes (each data frame as the service keeps it)."""
    runner = await start_service(HubSettings(name="r"))
    assert runner.node is not None
    clients = []
    for _ in range(2):
        ws = await http.ws_connect(
            client_url(runner, "r"), protocols=("json.reliable.webpubsub.azure.v1",)
        )
        assert (await ws.receive_json(timeout=WAIT))["event"] == "connected"
        clients.append(ws)
    hub = runner.node.hub("r")
    assert hub is not None
    first, second = hub.connections()
    runner.node.apply(Send("r", Target.all(), DataMessage(Payload.text("a" * 100))))
    runner.node.apply(
        Send("r", Target.connection(first.connection_id), DataMessage(Payload.text("b")))
    )
    assert first.reliable is not None and second.reliable is not None
    sizes = (first.reliable.buffered_bytes, second.reliable.buffered_bytes)
    assert sizes[0] > sizes[1] > 100
    m = await scrape(http, runner)
    assert value(m, "webpubsub_reliable_buffered_bytes") == sum(sizes)
    assert value(m, "webpubsub_reliable_largest_buffered_bytes") == max(sizes)
    assert value(m, "webpubsub_connections", hub="r", protocol="json.reliable") == 2
    for ws in clients:
        await ws.close()


async def test_protobuf_connections_are_counted_by_their_protocol(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    runner = await start_service(HubSettings(name="p"))
    clients = []
    for protocol in (PROTOBUF, PROTOBUF_RELIABLE, PROTOBUF_RELIABLE, "json.webpubsub.azure.v1"):
        ws = await http.ws_connect(client_url(runner, "p"), protocols=(protocol,))
        assert (await ws.receive(timeout=WAIT)).type in (aiohttp.WSMsgType.BINARY,
                                                          aiohttp.WSMsgType.TEXT)  # fmt: skip
        clients.append(ws)
    m = await scrape(http, runner)
    assert value(m, "webpubsub_connections", hub="p", protocol="protobuf") == 1
    assert value(m, "webpubsub_connections", hub="p", protocol="protobuf.reliable") == 2
    assert value(m, "webpubsub_connections", hub="p", protocol="json") == 1
    assert value(m, "webpubsub_connects_total", hub="p", protocol="protobuf.reliable") == 2
    for ws in clients:
        await ws.close()


async def test_the_token_guards_the_scrape(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    config = make_config()
    config = dataclasses.replace(config, metrics=MetricsSettings(token=TOKEN))
    runner = await start_service(config=config)
    url = f"http://127.0.0.1:{runner.port}/metrics"
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": TOKEN},
    ):
        async with http.get(url, headers=headers) as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            body = await resp.json()
            assert body["code"] == "Error.Unauthorized"
            assert TOKEN not in await resp.text()
    m = await scrape(http, runner, TOKEN)
    assert ("webpubsub_events_queued", ()) in m


async def test_disabled_metrics_are_not_served(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    config = dataclasses.replace(make_config(), metrics=MetricsSettings(enabled=False))
    runner = await start_service(config=config)
    assert runner.metrics is None
    async with http.get(f"http://127.0.0.1:{runner.port}/metrics") as resp:
        assert resp.status == 404


async def test_two_services_in_one_process_keep_their_own_counts(
    start_service: StartService, http: aiohttp.ClientSession
) -> None:
    one = await start_service(HubSettings(name="a"))
    two = await start_service(HubSettings(name="a"))
    ws = await http.ws_connect(client_url(one, "a"))
    assert one.node is not None
    await wait_until(lambda: one.node.hub("a") is not None)  # type: ignore[union-attr]
    assert (
        value(await scrape(http, one), "webpubsub_connects_total", hub="a", protocol="simple") == 1
    )
    assert (
        value(await scrape(http, two), "webpubsub_connects_total", hub="a", protocol="simple") == 0
    )
    await ws.close()


def test_hubs_past_the_cap_are_counted_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """Label values stay bounded: hub 4 of a cap of 3 is ``_other``, and the cache of
    labelled children does not grow for it."""
    from webpubsub.server import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MAX_HUBS", 3)
    m = metrics_module.Metrics()
    message = DataMessage(Payload.text("hey"))
    for i in range(6):
        m.delivered(f"h{i}", Target.all(), message, 2)
    samples = _parse(m.render())
    assert value(samples, "webpubsub_delivered_messages_total", hub="h2", kind="all") == 2
    assert value(samples, "webpubsub_delivered_messages_total", hub="_other", kind="all") == 6
    assert value(samples, "webpubsub_delivered_bytes_total", hub="_other", kind="all") == 18
    assert len(m._out) == 3


def _exchange(event_type: str | None, status: int = 200) -> Exchange:
    headers = (("ce-type", event_type),) if event_type is not None else ()
    request = UpstreamRequest("POST" if headers else "OPTIONS", "http://127.0.0.1/h", headers, b"")
    return Exchange(request, UpstreamResponse(status, (), b""), None, 0.01)


def test_clients_cannot_push_system_event_types_into_other() -> None:
    """200 distinct user events first: the service's own event types and the validation
    probe are still named; user events past the cap are one ``user._other``."""
    from webpubsub.server import metrics as metrics_module

    m = metrics_module.Metrics()
    for i in range(200):
        m.cloud_event(_exchange(f"azure.webpubsub.user.e{i}"))
    for name in ("connect", "connected", "disconnected"):
        m.cloud_event(_exchange(f"azure.webpubsub.sys.{name}"))
    for name in ("joined", "left"):
        m.cloud_event(_exchange(f"azure.webpubsub.group.{name}"))
    m.cloud_event(_exchange(None))  # OPTIONS: validation
    m.cloud_event(_exchange("forged.by.a.replay"))
    samples = _parse(m.render())
    name = "webpubsub_cloudevent_requests_total"
    for event in ("connect", "connected", "disconnected"):
        et = f"azure.webpubsub.sys.{event}"
        assert value(samples, name, event_type=et, outcome="success") == 1
    for event in ("joined", "left"):
        et = f"azure.webpubsub.group.{event}"
        assert value(samples, name, event_type=et, outcome="success") == 1
    assert value(samples, name, event_type="validation", outcome="success") == 1
    cap = metrics_module.MAX_USER_EVENTS
    assert value(samples, name, event_type=f"azure.webpubsub.user.e{cap - 1}", outcome="success")
    assert not value(samples, name, event_type=f"azure.webpubsub.user.e{cap}", outcome="success")
    other = "azure.webpubsub.user._other"
    assert value(samples, name, event_type=other, outcome="success") == 200 - cap
    assert value(samples, name, event_type="_other", outcome="success") == 1
    labels = {dict(ls)["event_type"] for n, ls in samples if n == name}
    assert len(labels) == cap + 8


def test_clients_cannot_push_the_services_close_codes_into_other() -> None:
    """100 client codes first: the protocol's codes stay named, client codes fold into
    ``3xxx`` / ``4xxx``, anything else is ``other``."""
    from webpubsub.server.metrics import Metrics

    m = Metrics()
    c = Connection("c", "chat", None, ClientProtocol.JSON, "", None, Permissions())
    for code in range(3000, 3100):
        m.disconnected(c, code, "")
    for code in (4000, 4999, 1008, 1011, 1000, 1006, 2000, 5000, None):
        m.disconnected(c, code, "")
    samples = _parse(m.render())
    name = "webpubsub_disconnects_total"
    assert value(samples, name, hub="chat", code="3xxx") == 100
    assert value(samples, name, hub="chat", code="4xxx") == 2
    for code in ("1008", "1011", "1000", "1006", "none"):
        assert value(samples, name, hub="chat", code=code) == 1
    assert value(samples, name, hub="chat", code="other") == 2
    assert len([1 for n, _ in samples if n == name]) == 8


def test_a_scrape_has_no_created_series() -> None:
    """``prometheus_client`` adds a ``*_created`` sample per labelled child: left out."""
    from webpubsub.server.metrics import Metrics

    m = Metrics()
    m.cloud_event(_exchange("azure.webpubsub.sys.connected"))
    text = m.render().decode()
    assert "webpubsub_cloudevent_requests_total{" in text
    assert "_created" not in text


def test_handovers_are_counted_out_and_in_beside_connects_and_disconnects() -> None:
    """A connection that moves is counted out on its old node and in on the new one:
    per node, connects + handovers in - handovers out - disconnects stays the live
    connections."""
    from webpubsub.server.metrics import Metrics

    c = Connection("r", "Chat", None, ClientProtocol.JSON_RELIABLE, "", None, Permissions())
    old, new = Metrics(), Metrics()
    old.connected(c)
    old.moved(c, "b")
    new.adopted(c, "a")
    new.disconnected(c, 1000, "bye")
    before, after = _parse(old.render()), _parse(new.render())
    name = "webpubsub_handovers_total"
    assert value(before, name, hub="Chat", direction="out") == 1
    assert value(before, name, hub="Chat", direction="in") == 0
    assert value(after, name, hub="Chat", direction="in") == 1
    assert value(after, "webpubsub_connects_total", hub="Chat", protocol="json.reliable") == 0
    assert value(after, "webpubsub_disconnects_total", hub="Chat", code="1000") == 1


def test_a_scrape_before_the_node_starts_renders() -> None:
    """Nothing watched yet (before the node starts): the scrape still renders."""
    from webpubsub.server.metrics import Metrics

    samples = _parse(Metrics().render())
    assert value(samples, "webpubsub_reliable_buffered_bytes") == 0
    assert ("webpubsub_events_queued", ()) not in samples


def _parse(text: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest.mark.e2e
async def test_redis_publishes_are_timed_and_a_failed_one_counted(
    start_service: StartService, tmp_path: Path, redis_prefix: str
) -> None:
    """On the Redis backplane: a REST send that is published, then one Redis refuses
    (stopped): two publishes timed, one error, and the 503 among the REST statuses."""
    own = RedisServer(tmp_path).start()
    try:
        runner = await start_service(
            backplane=RedisBackplane(own.url, prefix=redis_prefix, node_id="m")
        )
        async with service_at(runner) as rest, aiohttp.ClientSession() as http:
            await rest.send_to_all("one", content_type="text/plain")
            own.stop()
            with pytest.raises(HttpResponseError) as raised:
                await rest.send_to_all("two", content_type="text/plain")
            assert raised.value.status_code == 503
            m = await scrape(http, runner)
    finally:
        own.stop()
    assert value(m, "webpubsub_backplane_publish_duration_seconds_count") == 2
    assert value(m, "webpubsub_backplane_publish_errors_total") == 1
    assert value(m, "webpubsub_rest_requests_total", operation="SendToAll", status="202") == 1
    assert value(m, "webpubsub_rest_requests_total", operation="SendToAll", status="503") == 1


def test_a_scrape_looks_at_a_bounded_number_of_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the budget a hub is counted whole, protocol ``unknown``, and said so."""
    from webpubsub.server import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "MAX_SCANNED_CONNECTIONS", 2)
    small, big = Hub("small"), Hub("big")
    for hub, n in ((small, 1), (big, 2)):
        for i in range(n):
            hub.add(
                Connection(
                    f"{hub.key}{i}",
                    hub.key,
                    None,
                    ClientProtocol.JSON_RELIABLE,
                    None,
                    None,
                    Permissions.from_roles(()),
                    reliable=ReliableBuffer(),
                )
            )
    m = metrics_module.Metrics()
    m.watch(lambda: (small, big), None)
    samples = _parse(m.render())
    assert value(samples, "webpubsub_connections", hub="small", protocol="json.reliable") == 1
    assert value(samples, "webpubsub_connections", hub="big", protocol="unknown") == 2
    assert value(samples, "webpubsub_unscanned_connections") == 2
    assert value(samples, "webpubsub_detached_connections") == 1


async def test_a_refused_handshake_is_traced_and_counted_without_its_token(
    start_service: StartService, http: aiohttp.ClientSession, handler_app: EventHandlerApp
) -> None:
    """A bad token, an expired one, an anonymous client where none is allowed and a
    ``connect`` handler that says no: each a ``refused`` record (hub, status, reason:
    never the token) and one ``webpubsub_handshakes_refused_total{hub,status}``."""

    handler_app.responder = refuse_connect
    runner = await start_service(
        chat_hub(), chat_hub(handler_app.url, name="locked", system=frozenset({"connect"}))
    )
    ws = await http.ws_connect(client_url(runner, "chat"))  # "chat" now has a hub label
    base = f"ws://127.0.0.1:{runner.port}/client/hubs"
    forged = issue_client_token(
        "not-the-key-" * 4, audience=f"http://127.0.0.1:{runner.port}/client/hubs/chat",
        now=time.time(),
    )  # fmt: skip
    expired = issue_client_token(
        ACCESS_KEY, audience=f"http://127.0.0.1:{runner.port}/client/hubs/chat",
        now=time.time() - 7200, ttl_seconds=60,
    )  # fmt: skip
    attempts = [
        (f"{base}/chat?access_token={forged}", 401),
        (f"{base}/chat?access_token={expired}", 401),
        (f"{base}/nobody", 401),  # anonymous, not allowed
        (client_url(runner, "locked"), 401),  # the connect handler refuses
    ]
    for url, status in attempts:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == status

    assert runner.trace is not None
    records = [r for r in runner.trace.after(0, 100) if r["type"] == "refused"]
    assert [(r["hub"], r["status"]) for r in records] == [
        ("chat", 401), ("chat", 401), ("nobody", 401), ("locked", 401),
    ]  # fmt: skip
    assert all(isinstance(r["reason"], str) and r["reason"] for r in records)
    shown = orjson.dumps(records).decode()
    assert forged not in shown and expired not in shown and "access_token" not in shown
    samples = await scrape(http, runner)
    name = "webpubsub_handshakes_refused_total"
    assert value(samples, name, hub="chat", status="401") == 2
    # Hubs no connection named yet: clients choose them, so they do not get a label.
    assert value(samples, name, hub="_other", status="401") == 2
    await ws.close()


# -- the scrape is what prometheus_client's Counter and Histogram rendered ----------------

SCRAPE = Path(__file__).with_name("metrics_scrape.txt")
"""The scrape after :func:`_drive`, as the service rendered it with
``prometheus_client``'s ``Counter`` and ``Histogram`` (before it counted in floats of
its own): names, help, types, label sets, their order and values, byte for byte."""


def _drive(m: Metrics) -> None:
    c = Connection("c", "Chat", "u", ClientProtocol.JSON, "", None, Permissions())
    m.connected(c)
    m.received(c, "héllo", "message")
    m.received(c, b"\x00" * 7, "event")
    m.delivered("Chat", Target.group("g"), DataMessage(Payload.text("abc")), 4)
    m.replied(c, DataMessage(Payload.binary(b"12345")))
    m.rest_call(RestCall("Chat", "SendToAll", "POST", "/x", 202, 0.0123, "::1"))
    m.rest_call(RestCall("Chat", "SendToAll", "POST", "/x", 202, 0.075, "::1"))
    request = UpstreamRequest("POST", "http://h/", (("ce-type", "azure.webpubsub.user.m"),), b"")
    m.cloud_event(Exchange(request, UpstreamResponse(200, (), b""), None, 0.25))
    m.cloud_event(Exchange(request, None, "refused", 7.0))
    m.published(0.0003, None)
    m.published(2.0, "TimeoutError")
    m.slow_client(c)
    m.moved(c, "n2")
    m.refused("Chat", 401, "no")
    m.disconnected(c, 4001, "bye")


def test_the_scrape_is_byte_for_byte_what_prometheus_client_rendered() -> None:
    m = Metrics()
    _drive(m)
    assert m.render() == SCRAPE.read_bytes()


BOUNDS = st.sampled_from([LATENCY_BUCKETS, PUBLISH_BUCKETS, REST_BUCKETS])
AMOUNTS = st.one_of(
    st.floats(min_value=0, max_value=100, allow_nan=False),
    st.sampled_from([0.0, 0.005, 0.0001, 1.0, 60.0, float("inf")]),  # on a bound
)
LABELS = st.sampled_from(["a", "b", 'q"\\\n', "é"])


@given(
    BOUNDS,
    st.lists(st.tuples(LABELS, AMOUNTS), max_size=60),
    st.lists(st.tuples(LABELS, st.integers(min_value=0, max_value=2**40)), max_size=60),
)
def test_the_counts_render_as_prometheus_client_s_counter_and_histogram(
    buckets: tuple[float, ...], observed: list[tuple[str, float]], added: list[tuple[str, int]]
) -> None:
    """Whatever is counted (any label values, amounts on and between the bounds, large
    sums of floats), the text is the one ``prometheus_client`` renders, ``_created``
    aside."""
    ours: list[metrics_module._Family] = []
    counter = metrics_module._Counter(ours, "x_things", "Things.\\ counted\n", ("k",))
    histogram = metrics_module._Histogram(ours, "x_seconds", "Time.", ("k",), buckets=buckets)
    plain = metrics_module._Histogram(ours, "x_plain_seconds", "Plain.", buckets=buckets)
    registry = CollectorRegistry(auto_describe=False)
    their_counter = Counter("x_things", "Things.\\ counted\n", ("k",), registry=registry)
    their_histogram = Histogram("x_seconds", "Time.", ("k",), buckets=buckets, registry=registry)
    their_plain = Histogram("x_plain_seconds", "Plain.", buckets=buckets, registry=registry)
    for label, amount in observed:
        metrics_module._observe(histogram.labels(label), histogram.bounds, amount)
        metrics_module._observe(plain.labels(), plain.bounds, amount)
        their_histogram.labels(label).observe(amount)
        their_plain.observe(amount)
    for label, n in added:
        counter.labels(label)[0] += n
        their_counter.labels(label).inc(n)
    mine = CollectorRegistry(auto_describe=False)
    mine.register(metrics_module._Counts(ours))
    theirs = b"".join(
        line + b"\n" for line in generate_latest(registry).splitlines() if b"_created" not in line
    )
    assert generate_latest(mine) == theirs


def test_a_nan_is_summed_into_no_bucket_as_prometheus_client_does() -> None:
    ours: list[metrics_module._Family] = []
    histogram = metrics_module._Histogram(ours, "x_seconds", "Time.", buckets=(1.0,))
    metrics_module._observe(histogram.labels(), histogram.bounds, float("nan"))
    metrics_module._observe(histogram.labels(), histogram.bounds, 0.5)
    cell = histogram.labels()
    assert cell[:2] == [1.0, 0.0] and cell[2] != cell[2]  # the sum is NaN, one bucket


def test_a_wrong_label_call_fails_at_once_and_the_scrape_stays_whole() -> None:
    metrics = Metrics()
    family = metrics._connects
    with pytest.raises(ValueError, match="label values"):
        family.labels("only-one")
    with pytest.raises(TypeError, match="strings"):
        family.labels(*([1] * len(family.labelnames)))  # type: ignore[arg-type]
    assert b"webpubsub_" in metrics.render()
