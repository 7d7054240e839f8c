"""What one node tells the portal: its hubs, connections and trace, as JSON.

:meth:`NodeView.answer` is this node's answerer to backplane surveys (an opaque
request in, an answer out, both JSON bytes); the portal asks every node through
:func:`ask_nodes` and merges what comes back. Answers are bounded, serialized, by
:data:`MAX_ANSWER_BYTES` (well below the backplane's limit on an answer): at most
:data:`MAX_LISTED` connections and :data:`MAX_RECORDS` records, fewer when that many
would be larger (the answer says ``truncated``, a trace page's cursor continues).
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from webpubsub.core.connection import Connection
from webpubsub.node.node import Node
from webpubsub.server.trace import TraceRing, protocol_name

MAX_LISTED = 500
"""Connections one node lists per request."""
MAX_RECORDS = 500
"""Trace records one node sends per request."""
MAX_ANSWER_BYTES = 256 * 1024
"""A survey answer's size, serialized, at most (a trace page, a list of connections)."""
MAX_GROUPS_BYTES = 16 * 1024
"""A described connection's groups (and, apart, its permissions), serialized, at most
(the rest cut: ``groupsTruncated`` / ``permissionsTruncated``)."""
MAX_HUBS = 2000
"""Hubs one node counts per answer (those with the most connections)."""
ORIGINAL_CHUNK = 128 * 1024
"""Body bytes of an original request one answer carries (base64: 171 KiB)."""
MAX_QUERY_CHARS = 256
SURVEY_TIMEOUT = 1.0

Json = dict[str, object]
Survey = Callable[[bytes], Awaitable[list[tuple[str, bytes | None]]]]
"""Ask every node (this one included): ``Backplane.survey``."""


@dataclass(slots=True)
class NodeView:
    """This node's side of the portal."""

    node: Node
    trace: TraceRing | None

    @property
    def node_id(self) -> str:
        return self.node.node_id

    async def answer(self, request: bytes) -> bytes:
        """The answer to one portal request (``{"op": ...}``); ``null`` for one it does
        not know (a node of another version)."""
        try:
            asked = orjson.loads(request)
        except orjson.JSONDecodeError:
            return b"null"
        if not isinstance(asked, dict):
            return b"null"
        op = asked.get("op")
        if op == "trace":
            if asked.get("except") == self.node_id:  # the asker reads its own ring
                return b"null"
            after = asked.get("after")
            mine = after.get(self.node_id) if isinstance(after, dict) else None
            return self.trace_page(_int(mine), MAX_RECORDS)
        result: object = None
        if op == "hubs":
            result = self.hub_counts()
        elif op == "connections":
            result = self.connections(_str(asked.get("hub")), _str(asked.get("q")))
        elif op == "connection":
            result = self.connection(_str(asked.get("hub")), _str(asked.get("id")))
        elif op in ("record", "original") and asked.get("node") != self.node_id:
            result = None  # asked of another node: answered at once, with nothing
        elif op == "record" and self.trace is not None:
            result = self.trace.get(_int(asked.get("seq")) or 0)
        elif op == "original":
            result = self.original(_int(asked.get("seq")) or 0, _int(asked.get("offset")) or 0)
        elif op == "nodes":
            result = {}
        return orjson.dumps(result)

    def hub_counts(self) -> dict[str, list[int]]:
        """``{hub key: [connections, users, groups]}`` of this node (at most
        :data:`MAX_HUBS`: the hubs with the most connections)."""
        counts = [(hub.key, list(hub.counts())) for hub in self.node.hubs()]
        if len(counts) > MAX_HUBS:
            counts = sorted(counts, key=lambda kv: -kv[1][0])[:MAX_HUBS]
        return dict(counts)

    def connections(self, hub: str, query: str) -> Json:
        found = self.node.hub(hub.lower())
        if found is None:
            return {"connections": [], "truncated": False}
        needle = query[:MAX_QUERY_CHARS].lower()
        listed: list[Json] = []
        truncated = False
        size = 0
        for conn in sorted(found.connections(), key=lambda c: c.connected_at):
            if conn.closing or (needle and not _matches(conn, needle)):
                continue
            described = self.describe(conn)
            size += len(orjson.dumps(described)) + 1
            if len(listed) >= MAX_LISTED or size > MAX_ANSWER_BYTES:
                truncated = True
                break
            listed.append(described)
        return {"connections": listed, "truncated": truncated}

    def connection(self, hub: str, connection_id: str) -> Json | None:
        found = self.node.hub(hub.lower())
        conn = found.get(connection_id) if found is not None else None
        if conn is None or conn.closing:
            return None
        described = self.describe(conn)
        permissions = _permissions(conn)
        kept = _within(permissions, MAX_GROUPS_BYTES)
        described["permissions"] = permissions[:kept]
        described["permissionsTruncated"] = kept < len(permissions)
        described["stateBytes"] = len(conn.state.encode())
        recent = self.trace.recent(conn.hub, conn.connection_id) if self.trace else []
        described["recent"] = recent
        return described

    def describe(self, conn: Connection) -> Json:
        groups = sorted(conn.groups)
        kept = _within(groups, MAX_GROUPS_BYTES)
        return {
            "connectionId": conn.connection_id,
            "userId": conn.user_id,
            "protocol": protocol_name(conn),
            "subprotocol": conn.subprotocol,
            "groups": groups[:kept],
            "groupsTruncated": kept < len(groups),
            "node": self.node_id,
            "connectedAt": conn.connected_at,
            "messagesIn": conn.messages_in,
            "messagesOut": conn.messages_out,
            "detached": conn.sink is None,
        }

    def trace_page(self, after: int | None, limit: int) -> bytes:
        """``{"records": [...], "first": seq, "last": seq, "enabled": bool}``: records
        after ``after`` (from the oldest kept when None), oldest first, bounded."""
        trace = self.trace
        if trace is None:
            return b'{"records":[],"first":1,"last":0,"enabled":false}'
        if after is None or after > trace.last_seq:  # from the oldest (or: we restarted)
            after = 0
        parts = trace.after_raw(after, limit, MAX_ANSWER_BYTES - 1024 - limit)
        head = b'{"records":[' + b",".join(parts) + b"]"
        tail = orjson.dumps({"first": trace.first_seq, "last": trace.last_seq, "enabled": True})
        return head + b"," + tail[1:]

    def original(self, seq: int, offset: int = 0) -> Json | None:
        """Record ``seq`` and, for a CloudEvent, its full request: the body (base64)
        from ``offset``, :data:`ORIGINAL_CHUNK` bytes of it at most (``size`` says how
        many there are: the asker asks again from the next offset); the record itself
        only with the first part."""
        if self.trace is None:
            return None
        record = self.trace.get(seq)
        if record is None:
            return None
        request = self.trace.original(seq)
        shown = record if offset == 0 else None
        if request is None:
            return {"record": shown, "request": None}
        part = request.body[max(0, offset) : max(0, offset) + ORIGINAL_CHUNK]
        return {
            "record": shown,
            "request": {
                "method": request.method,
                "url": request.url,
                "headers": [list(h) for h in request.headers],
                "size": len(request.body),
                "offset": offset,
                "body": base64.b64encode(part).decode(),
            },
        }


async def ask_nodes(survey: Survey, request: Json) -> list[tuple[str, object]]:
    """Every node's answer to ``request`` (None from a node that gave none)."""
    answers: list[tuple[str, object]] = []
    for node_id, raw in await survey(orjson.dumps(request)):
        value: object = None
        if raw is not None:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError:
                value = None
        answers.append((node_id, value))
    return answers


def _within(items: list[Any], max_bytes: int) -> int:
    """How many of ``items`` (from the first) fit in ``max_bytes`` serialized."""
    size = 0
    for i, item in enumerate(items):
        size += len(orjson.dumps(item)) + 1
        if size > max_bytes:
            return i
    return len(items)


def _matches(conn: Connection, needle: str) -> bool:
    if needle in conn.connection_id.lower():
        return True
    if conn.user_id is not None and needle in conn.user_id.lower():
        return True
    return any(needle in group.lower() for group in conn.groups)


def _permissions(conn: Connection) -> list[list[str | None]]:
    """``[permission, group or None]`` pairs (None: every group; patterns as written)."""
    held: list[list[str | None]] = []
    for permission, grants in conn.permissions.snapshot().items():
        if grants.get("all") is True:
            held.append([permission, None])
        for key in ("groups", "patterns"):
            names = grants.get(key)
            if isinstance(names, list):
                held.extend([permission, str(name)] for name in names)
    return held


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""
