"""The JavaScript service SDK ``@azure/web-pubsub`` for the REST operations only it
exposes: ``addConnectionsToGroups`` / ``removeConnectionsFromGroups`` by OData filter,
``messageTtlSeconds`` on sends, ``listConnections`` with ``maxPageSize`` (following
``nextLink`` verbatim), plus sends to all with a filter.

``tests/js/rest_ops.mjs`` drives the SDK and three raw JSON-subprotocol clients and
prints what each client received; a marker after every step makes the per-client
sequences below exact.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import StartService, tls_files
from tests.integration.test_js_clients import node, of, run_node
from tests.support.cluster import TOPOLOGIES, start_nodes
from webpubsub.devcert import DevCert
from webpubsub.server.app import ServiceRunner

__all__ = ["node"]  # the session fixture, shared with test_js_clients

pytestmark = pytest.mark.e2e


def text(data: str, group: str | None = None) -> tuple[Any, ...]:
    return (group, "text", data)


def received(obs: list[dict[str, Any]], client: str) -> list[tuple[Any, ...]]:
    """(group or None, dataType, data) of every message ``client`` got, in order.

    Every one is a REST message: from the server or a group, with no publisher.
    """
    result = []
    for o in of(obs, "message", client=client):
        frame = dict(o["frame"])
        assert frame.pop("type") == "message"
        assert frame.pop("fromUserId", None) is None
        origin = frame.pop("from")
        group = frame.pop("group", None)
        assert (origin == "group") == (group is not None), o
        assert frame.keys() == {"dataType", "data"}, o
        result.append((group, frame["dataType"], frame["data"]))
    return result


@pytest.fixture(params=TOPOLOGIES)
async def nodes(
    request: pytest.FixtureRequest, start_service: StartService, dev_cert: DevCert
) -> list[ServiceRunner]:
    """One node, or three over Redis (REST to the first, the clients to the others)."""
    return await start_nodes(request, start_service, **tls_files(dev_cert))


async def test_js_service_sdk_bulk_groups_ttl_filters_and_paging(
    node: str, nodes: list[ServiceRunner], dev_cert: DevCert
) -> None:
    runner = nodes[0]
    hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes[1:])
    args = (hosts,) if hosts else ()
    obs = await run_node(
        node, "rest_ops.mjs", runner.connection_string, "chat", *args, trust=dev_cert.ca_cert
    )

    ids = {o["client"]: o["connectionId"] for o in of(obs, "connected")}
    alice1, alice2, bob = ids["alice1"], ids["alice2"], ids["bob"]
    marker = [text(f"marker {i}") for i in range(7)]
    weird = "my group/ä?#'()!*~"
    assert received(obs, "alice1") == [
        text("to gb", "gb"),
        marker[1],
        text("to gb again", "gb"),
        marker[2],
        ("gc", "json", {"to": "gc"}),
        marker[3],
        marker[4],
        text("ttl all"),
        ("gb", "json", {"ttl": 0}),
        text("ttl connection"),
        marker[5],
        marker[6],
    ]
    assert received(obs, "alice2") == [
        text("to gb", "gb"),
        marker[1],
        text("to ga", "ga"),
        text("to gb again", "gb"),
        marker[2],
        ("gc", "json", {"to": "gc"}),
        marker[3],
        marker[4],
        text("ttl all"),
        ("gb", "json", {"ttl": 0}),
        text("gb minus alice1", "gb"),
        marker[5],
        marker[6],
    ]
    assert received(obs, "bob") == [
        marker[1],
        marker[2],
        ("gc", "json", {"to": "gc"}),
        marker[3],
        text("gc without gb", "gc"),
        marker[4],
        text("ttl all"),
        text("ttl user"),
        text("not alice"),
        marker[5],
        text("to weird group", weird),
        text("upper hub"),
        marker[6],
    ]

    pages = {o["label"]: o["pages"] for o in of(obs, "pages")}
    first, second = sorted([alice1, alice2])
    assert pages == {
        "ga by 1": [[[first, "alice"]], [[second, "alice"]]],  # nextLink followed
        "ga top 1": [[[first, "alice"]]],
        "gc": [[[bob, "bob"]]],
    }
    assert [(o["group"], o["exists"]) for o in of(obs, "exists")] == [
        ("ga", True),
        ("gd", False),
        ("gb", True),
        (weird, True),
        (weird, False),
    ]

    assert of(obs, "accepted") == []
    rejected = {o["op"]: o for o in of(obs, "rejected")}
    assert rejected.keys() == {
        "addConnectionsToGroups(userId eq)",
        "removeConnectionsFromGroups(xor)",
        "sendToAll ttl 1.5",
        "sendToUser ttl 1.5",
        "sendToAll bad filter",
    }
    # Validation errors are problem+json, as Azure sends them: the SDK does not parse
    # that body into code and message, but reports it whole as the message.
    for o in rejected.values():
        assert (o["statusCode"], o["code"]) == (400, None), o
        assert json.loads(o["message"])["code"] == "Error.BadRequest"
    assert "position 9:" in rejected["addConnectionsToGroups(userId eq)"]["message"]
    assert "position 18:" in rejected["removeConnectionsFromGroups(xor)"]["message"]
    assert "position 8:" in rejected["sendToAll bad filter"]["message"]
    assert "messageTtlSeconds" in rejected["sendToAll ttl 1.5"]["message"]
