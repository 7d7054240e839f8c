"""The official JavaScript SDKs, unmodified, under Node against the real service.

``@azure/web-pubsub-client`` (client SDK) and ``@azure/web-pubsub`` (service SDK),
pinned in ``tests/js/package-lock.json``.  Each test starts the service (and, when
needed, a recording event-handler app), runs one script of ``tests/js`` with
``node`` and asserts the observations it prints (one JSON object per line).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import SECOND_KEY, StartService, tls_files
from tests.support.handler import EventHandlerApp, Recorded, default_responder
from tests.support.proxy import TcpProxy
from tests.support.redis_server import RedisServer
from tests.support.service import sdk
from webpubsub.backplane.redis import RedisBackplane
from webpubsub.core.settings import EventHandlerSettings, HubSettings
from webpubsub.devcert import DevCert
from webpubsub.server.app import ServiceRunner

pytestmark = pytest.mark.e2e

JS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE_TIMEOUT = 30.0
"""Upper bound for one script; each script also has its own, shorter deadline."""
NPM_CI_TIMEOUT = 300.0

Observation = dict[str, Any]


def _node_modules_current() -> bool:
    """``node_modules`` exists and is not older than ``package-lock.json``."""
    marker = JS_DIR / "node_modules" / ".package-lock.json"
    lock = JS_DIR / "package-lock.json"
    return marker.is_file() and marker.stat().st_mtime >= lock.stat().st_mtime


@pytest.fixture(scope="session")
def node() -> Iterator[str]:
    """The ``node`` executable, with ``tests/js/node_modules`` installed (``npm ci``)."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "Node.js (node and npm) is needed for the JavaScript SDK tests: "
            "run scripts/setup.sh --dev, or apt-get install nodejs npm"
        )
    # One lock per checkout, so two xdist workers do not run npm ci at once.
    digest = hashlib.sha256(str(JS_DIR).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"webpubsub-npm-ci-{digest}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not _node_modules_current():
                result = subprocess.run(  # noqa: S603 - fixed command
                    [npm, "ci", "--no-audit", "--no-fund"],
                    cwd=JS_DIR,
                    capture_output=True,
                    text=True,
                    timeout=NPM_CI_TIMEOUT,
                    check=False,
                )
                if result.returncode != 0:
                    pytest.fail(f"npm ci in {JS_DIR} failed:\n{result.stdout}\n{result.stderr}")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    yield node


async def run_node(
    node: str, script: str, *args: str, trust: Path | None = None, timeout: float = NODE_TIMEOUT
) -> list[Observation]:
    """Run ``tests/js/<script>``; its observations, asserting it succeeded.

    ``trust`` is a CA file Node adds to its trusted CAs (``NODE_EXTRA_CA_CERTS``), as a
    user of the development certificate does.
    """
    env = dict(os.environ)
    env.pop("NODE_EXTRA_CA_CERTS", None)
    if trust is not None:
        env["NODE_EXTRA_CA_CERTS"] = str(trust)
    proc = await asyncio.create_subprocess_exec(
        node,
        str(JS_DIR / script),
        *args,
        cwd=JS_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"{script} did not finish in {timeout} s:\n{out.decode()}\n{err.decode()}")
    report = f"{script} exited with {proc.returncode}:\n{out.decode()}\nstderr:\n{err.decode()}"
    try:
        observations = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    except json.JSONDecodeError:
        pytest.fail(f"not one JSON object per line: {report}")
    assert proc.returncode == 0, report
    assert observations and observations[-1] == {"kind": "done"}, report
    return observations


def of(observations: list[Observation], kind: str, **match: Any) -> list[Observation]:
    """The observations of ``kind`` whose fields equal ``match``."""
    return [
        o
        for o in observations
        if o["kind"] == kind and all(o.get(k) == v for k, v in match.items())
    ]


def index(observations: list[Observation], kind: str, **match: Any) -> int:
    found = of(observations, kind, **match)
    assert len(found) == 1, (kind, match, observations)
    return observations.index(found[0])


def messages(observations: list[Observation], client: str) -> list[tuple[Any, ...]]:
    """What ``client`` received, in order: (from, group, fromUserId, dataType, data)."""
    return [
        (o["kind"], o.get("group"), o.get("fromUserId"), o["dataType"], o["data"])
        for o in observations
        if o["kind"] in ("group-message", "server-message") and o["client"] == client
    ]


def assert_sequenced(received: list[Observation]) -> None:
    """Reliable-protocol messages carry sequenceIds 1, 2, 3, ... in order."""
    assert [o["sequenceId"] for o in received] == list(range(1, len(received) + 1))


# -- @azure/web-pubsub-client ----------------------------------------------------------


async def test_client_sdk_groups_rest_sends_and_an_event_with_the_handler_reply(
    node: str, start_service: StartService, handler_app: EventHandlerApp, dev_cert: DevCert
) -> None:
    def responder(req: Recorded) -> web.StreamResponse:
        if req.method == "POST" and req.event_name == "echo":
            return web.Response(text="reply:" + req.body.decode(), content_type="text/plain")
        return default_responder(req)

    handler_app.responder = responder
    handler = EventHandlerSettings(url_template=handler_app.url, user_event_pattern="*")
    runner = await start_service(
        HubSettings(name="chat", event_handlers=(handler,)), **tls_files(dev_cert)
    )

    obs = await run_node(
        node, "client_flow.mjs", runner.connection_string, "chat", trust=dev_cert.ca_cert
    )

    alice, bob = of(obs, "connected", client="alice"), of(obs, "connected", client="bob")
    assert [o["userId"] for o in alice + bob] == ["alice", "bob"]
    assert alice[0]["connectionId"] and alice[0]["connectionId"] != bob[0]["connectionId"]
    acks = [(o["client"], o["op"], o["isDuplicated"]) for o in of(obs, "ack")]
    assert acks == [
        ("alice", "joinGroup", False),
        ("bob", "joinGroup", False),
        ("alice", "sendToGroup", False),
        ("alice", "sendToGroup", False),
        ("bob", "sendToGroup", False),
        ("alice", "sendEvent", False),
        ("bob", "leaveGroup", False),
    ]
    assert all(isinstance(o["ackId"], int) for o in of(obs, "ack"))

    binary = {"base64": "AAH+/w=="}
    assert messages(obs, "alice") == [
        ("group-message", "g1", "alice", "text", "hello"),
        ("group-message", "g1", "bob", "binary", binary),
        ("group-message", "g1", None, "text", "rest-to-group"),
        ("server-message", None, None, "json", {"rest": "all"}),
        ("server-message", None, None, "text", "reply:question"),
        ("group-message", "g1", None, "text", "after-leave"),
        ("server-message", None, None, "text", "marker"),
    ]
    assert messages(obs, "bob") == [
        ("group-message", "g1", "alice", "text", "hello"),
        ("group-message", "g1", "alice", "json", {"n": 1}),
        ("group-message", "g1", "bob", "binary", binary),
        ("group-message", "g1", None, "text", "rest-to-group"),
        ("server-message", None, None, "json", {"rest": "all"}),
        ("server-message", None, None, "text", "rest-to-bob"),
        ("server-message", None, None, "text", "marker"),
    ]
    for client in ("alice", "bob"):
        assert_sequenced(
            [o for o in obs if o["kind"].endswith("-message") and o["client"] == client]
        )
        assert len(of(obs, "stopped", client=client)) == 1

    # The handler's reply is sent before the ack of the event.
    reply = index(obs, "server-message", client="alice", data="reply:question")
    assert reply < index(obs, "ack", client="alice", op="sendEvent")
    event = await handler_app.next_event("user.echo")
    assert event.headers["ce-userId"] == "alice"
    assert event.headers["Content-Type"].startswith("text/plain")
    assert event.body == b"question"


async def test_client_sdk_keepalive_pings_are_answered_with_pongs(
    node: str, start_service: StartService, dev_cert: DevCert
) -> None:
    runner = await start_service(**tls_files(dev_cert))

    obs = await run_node(
        node, "keepalive.mjs", runner.connection_string, "chat", trust=dev_cert.ca_cert
    )

    raw = [(o["subprotocol"], o["frame"]) for o in of(obs, "raw-pong")]
    assert raw == [
        ("json.webpubsub.azure.v1", {"type": "pong"}),
        ("json.reliable.webpubsub.azure.v1", {"type": "pong"}),
    ]
    # Pinging every 100 ms with a 600 ms idle timeout, the SDK client kept its
    # socket for 15 pongs (it would have closed it without them).
    [sdk] = of(obs, "sdk-pongs")
    assert sdk == {
        "kind": "sdk-pongs",
        "count": 15,
        "sameSocket": True,
        "closes": 0,
        "disconnected": 0,
    }


@pytest.mark.parametrize(
    ("topology", "hops"), [("one node", 1), ("one node", 5), ("two nodes over Redis", 50)]
)
async def test_client_sdk_recovers_a_dropped_socket_without_loss_or_duplicates(
    node: str,
    start_service: StartService,
    dev_cert: DevCert,
    topology: str,
    hops: int,
    request: pytest.FixtureRequest,
) -> None:
    """With two nodes the client reaches them through a proxy that sends each new
    connection to the other node: every recovery lands on the node that did not hold it."""
    runner = await start_service(**tls_files(dev_cert))
    host = ""
    proxy: TcpProxy | None = None
    if topology != "one node":
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix: str = request.getfixturevalue("redis_prefix")
        await runner.stop()
        runner = await start_service(
            backplane=RedisBackplane(server.url, prefix=prefix, node_id="first"),
            **tls_files(dev_cert),
        )
        second = await start_service(
            backplane=RedisBackplane(server.url, prefix=prefix, node_id="second"),
            public_endpoint=runner.endpoint,
            **tls_files(dev_cert),
        )
        proxy = await TcpProxy(runner.port).start()
        proxy.alternate(runner.port, second.port)
        host = f"127.0.0.1:{proxy.port}"
    try:
        obs = await run_node(
            node,
            "recovery.mjs",
            runner.connection_string,
            "chat",
            host,
            str(hops),
            trust=dev_cert.ca_cert,
            timeout=NODE_TIMEOUT + hops,
        )
    finally:
        if proxy is not None:
            await proxy.stop()
    if proxy is not None:
        # The connection, then each recovery, alternately on the other node.
        assert proxy.accepted == hops + 1

    # Each time two messages reached the dropped socket but not the SDK: only a replay
    # can deliver them.
    assert of(obs, "dropped") == [
        {"kind": "dropped", "hop": hop, "closeCode": 1006, "lost": [f"m{n}", f"m{n + 1}"]}
        for hop, n in zip(range(1, hops + 1), range(1, 5 * hops, 5), strict=True)
    ]
    recovered = index(obs, "recovered")
    assert obs[recovered] == {
        "kind": "recovered",
        "sameConnectionId": True,
        "newSocket": True,
    }
    # Recovered, not reconnected: the SDK reports neither a disconnect nor a new connection.
    assert len(of(obs, "connected")) == 1
    assert of(obs[:recovered], "disconnected") == []
    received = of(obs, "group-message")
    assert [o["data"] for o in received] == [f"m{i}" for i in range(5 * hops + 2)]
    assert_sequenced(received)


# -- @azure/web-pubsub -----------------------------------------------------------------


async def test_service_sdk_token_url_is_accepted_and_send_to_all_arrives(
    node: str, start_service: StartService, dev_cert: DevCert
) -> None:
    runner: ServiceRunner = await start_service(**tls_files(dev_cert))

    obs = await run_node(
        node,
        "service_sdk.mjs",
        runner.connection_string,
        "chat",
        SECOND_KEY,
        trust=dev_cert.ca_cert,
    )

    [token] = of(obs, "token")
    assert token["url"].startswith(f"wss://127.0.0.1:{runner.port}/client/hubs/chat?access_token=")
    [connected] = of(obs, "connected")
    assert connected["frame"]["userId"] == "node-user"
    assert [o["frame"] for o in of(obs, "message")] == [
        {"type": "message", "from": "server", "dataType": "text", "data": "hello from node"},
        {"type": "message", "from": "server", "dataType": "json", "data": {"from": "node"}},
    ]
    # The URL is accepted because of its signature: the same SDK with another key is refused.
    assert of(obs, "refused") == [{"kind": "refused", "status": 401}]


@pytest.mark.parametrize("topology", ["one node", "two nodes over Redis"])
async def test_client_sdk_invoke_event_answers_fails_and_aborts(
    node: str,
    start_service: StartService,
    handler_app: EventHandlerApp,
    request: pytest.FixtureRequest,
    topology: str,
) -> None:
    """``invokeEvent`` of @azure/web-pubsub-client: the handler's answer is the result,
    its failure an InvocationError, an aborted invocation's handler call is cancelled by
    the service (``cancelInvocation``) while the connection goes on, and so is the call
    of an invocation whose transport dropped (reliable recovery). Over Redis the
    recovery reaches the other node, which answers the next invocation."""
    reached = asyncio.Event()
    reached2 = asyncio.Event()
    release = asyncio.Event()

    async def responder(req: Recorded) -> web.StreamResponse:
        if req.method != "POST":
            return default_responder(req)
        if req.event_name == "add":
            body = json.loads(req.body)
            return web.json_response({"sum": body["a"] + body["b"]})
        if req.event_name == "echo":
            return web.Response(text="echo:" + req.body.decode(), content_type="text/plain")
        if req.event_name == "fail":
            return web.Response(status=500, text="the handler broke")
        if req.event_name in ("hang", "hang2"):
            (reached if req.event_name == "hang" else reached2).set()
            await release.wait()  # set when the test ends
        return default_responder(req)

    handler_app.responder = responder
    handler = EventHandlerSettings(url_template=handler_app.url, user_event_pattern="*")
    hub = HubSettings(name="chat", event_handlers=(handler,))
    other: ServiceRunner | None = None
    if topology == "one node":
        runner = await start_service(hub)
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        prefix: str = request.getfixturevalue("redis_prefix")
        runner = await start_service(
            hub, backplane=RedisBackplane(redis.url, prefix=prefix, node_id="a")
        )
        other = await start_service(
            hub,
            backplane=RedisBackplane(redis.url, prefix=prefix, node_id="b"),
            public_endpoint=runner.endpoint,
        )

    async def tell_when_reached() -> None:
        async with sdk(runner) as service:
            await reached.wait()
            await service.send_to_all("abort-now", content_type="text/plain")
            await reached2.wait()
            await service.send_to_all("drop-now", content_type="text/plain")

    teller = asyncio.create_task(tell_when_reached())
    try:
        if other is None:
            obs = await run_node(node, "invoke.mjs", runner.connection_string, "chat")
        else:
            async with TcpProxy(runner.port) as proxy:
                proxy.alternate(runner.port, other.port)  # the recovery: the other node
                via = f"{runner.port}:{proxy.port}"
                obs = await run_node(node, "invoke.mjs", runner.connection_string, "chat", via)
                assert proxy.accepted == 2
            assert other.node is not None and other.node.connection_count() == 1
    finally:
        teller.cancel()
        release.set()

    results = [(o["event"], o["dataType"], o["data"]) for o in of(obs, "result")]
    assert results == [("add", "json", {"sum": 3}), ("echo", "text", "echo:hi")]
    [failure] = of(obs, "failure")
    assert failure["name"] == "InvocationError"
    assert failure["errorDetail"] == {
        "name": "InternalServerError",
        "message": "The event handler failed (status 500).",
    }
    [aborted] = of(obs, "aborted")
    assert aborted["name"] == "InvocationError" and "abort" in aborted["message"]
    # Answered although "hang" is still held by the handler: the service cancelled that
    # call (else the next invocation would wait behind it, and the script time out).
    assert of(obs, "after-abort") == [
        {"kind": "after-abort", "dataType": "text", "data": "echo:after"}
    ]
    # A dropped transport fails the pending invocation on the client; the connection
    # recovers and is not stuck behind the call nobody waits for (still held).
    [lost] = of(obs, "lost")
    assert lost["name"] == "InvocationError" and "disconnected" in lost["message"]
    assert of(obs, "after-drop") == [
        {"kind": "after-drop", "data": "echo:again", "sameConnectionId": True}
    ]
    add = await handler_app.next_event("user.add")
    assert add.headers["Content-Type"].startswith("application/json")
    assert json.loads(add.body) == {"a": 1, "b": 2}


@pytest.mark.parametrize("topology", ["one node", "two nodes over Redis"])
async def test_client_sdk_group_streams_publish_recover_time_out_and_refuse(
    node: str, start_service: StartService, request: pytest.FixtureRequest, topology: str
) -> None:
    """``openGroupStream`` / ``onGroupStream`` of @azure/web-pubsub-client: two
    publishers' streams reach a reliable and a plain JSON subscriber whole and in order
    (text, JSON and binary fragments); a publisher whose transport drops mid-stream
    recovers and its stream arrives with nothing lost and nothing twice; an idle stream
    is ended by the service (``IdleTimeout`` to the publisher and the subscribers); an
    aborted one carries the publisher's error as ``UserError``; a start without
    permission to send to the group is refused ``Forbidden``. Over Redis the publisher's
    reconnection reaches the other node: its open stream moves with it."""
    if topology == "one node":
        runner = await start_service(HubSettings(name="chat"))
        obs = await run_node(node, "streams.mjs", runner.connection_string, "chat", timeout=60)
    else:
        redis: RedisServer = request.getfixturevalue("redis_server")
        prefix: str = request.getfixturevalue("redis_prefix")
        runner = await start_service(
            HubSettings(name="chat"),
            backplane=RedisBackplane(redis.url, prefix=prefix, node_id="a"),
        )
        other = await start_service(
            HubSettings(name="chat"),
            backplane=RedisBackplane(redis.url, prefix=prefix, node_id="b"),
            public_endpoint=runner.endpoint,
        )
        async with TcpProxy(runner.port) as proxy:
            proxy.alternate(runner.port, other.port)  # her reconnection: the other node
            via = f"{runner.port}:{proxy.port}"
            obs = await run_node(
                node, "streams.mjs", runner.connection_string, "chat", via, timeout=60
            )
            assert proxy.accepted == 2  # her connection, then its recovery elsewhere
        assert other.node is not None and other.node.connection_count() == 1

    streams = {(o["at"], o["streamId"]): o for o in of(obs, "stream")}
    for at in ("carol", "dave"):
        assert streams[at, "alice-1"]["chunks"] == ["a1", "a2", "a3", "a4", "a5"]
        assert streams[at, "alice-1"]["error"] is None
        assert streams[at, "bob-1"]["chunks"] == [
            {"n": 1},
            {"n": 2},
            {"n": 3},
            {"n": 4},
            {"n": 5},
            {"base64": "AQID"},
        ]
        assert streams[at, "alice-drop"]["chunks"] == ["d1", "d2", "d3", "d4", "d5", "d6"]
        assert streams[at, "alice-drop"]["error"] is None
        assert streams[at, "alice-1"]["group"] == "room"
    assert of(obs, "dropped") == [{"kind": "dropped", "sameConnectionId": True}]
    [metadata] = of(obs, "group-message")  # the first, whichever publisher's it was
    publisher = metadata["fromUserId"]
    assert metadata["stream"] == {"streamId": f"{publisher}-1", "streamSequenceId": 1}

    [idle_error] = of(obs, "publisher-error")
    assert idle_error["name"] == "IdleTimeout" and "300 ms" in idle_error["message"]
    idle = streams["carol", "bob-idle"]
    assert idle["chunks"] == ["only"] and idle["error"]["name"] == "IdleTimeout"

    aborted = streams["carol", "bob-abort"]
    assert aborted["chunks"] == ["partial"]
    assert aborted["error"] == {
        "name": "UserError",
        "message": "the source failed",
        "userErrorCode": "E42",
    }
    [forbidden] = of(obs, "forbidden")
    assert forbidden["refused"] is True and forbidden["name"] == "Forbidden"
