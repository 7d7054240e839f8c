"""The portal's trace routes: pages of every node's trace, its event stream, one record,
and the webhook debugger's replay of a traced CloudEvent."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import time

import orjson
from aiohttp import web

from webpubsub.errors import (
    BadRequest,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamError,
)
from webpubsub.node.observe import Exchange
from webpubsub.protocol.cloudevents import UpstreamRequest
from webpubsub.server import portal_auth as auth
from webpubsub.server.portal_core import (
    MAX_BODY_BYTES,
    SECURITY_HEADERS,
    Session,
    ask,
    json_object,
    json_response,
    partial,
)
from webpubsub.server.portal_poll import Feed, page_of, sse_event, sse_raw
from webpubsub.server.portal_view import MAX_RECORDS, Json
from webpubsub.server.trace import TraceRing, catching_replays, exchange_fields, shown_value

MAX_AFTER_CHARS = 8192
MAX_NODES = 256
MAX_HEADERS = 100
MAX_HEADER_VALUE = 8192
MAX_STREAMS = 16
"""Trace streams open at once on one node (one more is answered 503)."""
MAX_SESSION_STREAMS = 4
"""Trace streams one session may have open at once (one more is answered 503)."""
WRITE_TIMEOUT = 10.0
"""How long one write to a trace stream may wait for its reader; past it the stream
ends (its slot is free again)."""
KEEPALIVE_SECONDS = 15.0
WRITE_MAX_BYTES = 256 * 1024
"""Serialized events one write to a trace stream carries, at most (the rest: next turn)."""
SEQ_MAX = 2**53

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")

# -- the trace -----------------------------------------------------------------------


def parse_after(raw: str | None) -> dict[str, int]:
    """The ``after`` cursor: a JSON object ``{"node": seq}`` (absent or empty: none).
    Raises only :class:`InvalidParameter`."""
    if not raw:
        return {}
    if len(raw) > MAX_AFTER_CHARS:
        raise InvalidParameter(f"'after' is at most {MAX_AFTER_CHARS} characters.", target="after")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidParameter("'after' must be a JSON object.", target="after") from None
    if not isinstance(value, dict) or len(value) > MAX_NODES:
        raise InvalidParameter(
            f"'after' must be a JSON object of at most {MAX_NODES} nodes.", target="after"
        )
    cursor: dict[str, int] = {}
    for node, seq in value.items():
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= SEQ_MAX:
            raise InvalidParameter(
                "'after' maps node ids to sequence numbers (integers >= 0).", target="after"
            )
        cursor[node] = seq
    return cursor


async def trace(request: web.Request, s: Session) -> web.StreamResponse:
    after = parse_after(request.query.get("after"))
    records: list[object] = []
    cursor: dict[str, int] = {}
    answers = await ask(s, {"op": "trace", "after": after})
    for node, answer in answers:
        page = page_of(answer)
        if page is None:
            if node in after:
                cursor[node] = after[node]
            continue
        found, _, last = page
        records.extend(found)
        cursor[node] = _last_seq(found, after.get(node, 0) if found else last)
    records.sort(key=_record_time)
    return json_response(partial(answers, {"records": records, "cursor": cursor}))


def _last_seq(records: list[object], default: int) -> int:
    if records and isinstance(records[-1], dict):
        seq = records[-1].get("seq")
        if isinstance(seq, int):
            return seq
    return default


def _record_time(record: object) -> float:
    value = record.get("time") if isinstance(record, dict) else None
    return float(value) if isinstance(value, int | float) else 0.0


async def record(request: web.Request, s: Session) -> web.StreamResponse:
    node, seq = request.match_info["node"], parse_seq(request.match_info["seq"])
    found = await _record_of(s, node, seq)
    if found is None:
        raise NotFound(f"Trace record {node}/{seq} is no longer kept.")
    return json_response(found)


def parse_seq(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        raise InvalidParameter("A record's seq is a number.", target="seq")
    return int(raw)


async def _record_of(s: Session, node: str, seq: int) -> object:
    view = s.portal.view
    if node == view.node_id:
        return view.trace.get(seq) if view.trace is not None else None
    for answered, answer in await ask(s, {"op": "record", "node": node, "seq": seq}):
        if answered == node:  # (the other nodes answer null at once)
            return answer
    return None


async def stream(request: web.Request, s: Session) -> web.StreamResponse:
    """Server-Sent Events: every kept record of every node, then each new one (this
    node's from its ring, the others' through the process's one poller)."""
    portal = s.portal
    if portal.streams >= MAX_STREAMS:
        raise ServiceUnavailable(f"{MAX_STREAMS} trace streams are open already.")
    mine = portal.session_streams.get(s.value, 0)
    if mine >= MAX_SESSION_STREAMS:
        raise ServiceUnavailable(
            f"This session has {MAX_SESSION_STREAMS} trace streams open already."
        )
    portal.streams += 1
    portal.session_streams[s.value] = mine + 1
    feed = portal.poller.join()
    try:
        response = web.StreamResponse(
            headers={
                **SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away
            await _Stream(s, response, request, feed).run()
        return response
    finally:
        portal.poller.leave(feed)
        portal.streams -= 1
        left = portal.session_streams.pop(s.value, 1) - 1
        if left > 0:
            portal.session_streams[s.value] = left


class _Stream:
    def __init__(
        self, s: Session, response: web.StreamResponse, request: web.Request, feed: Feed
    ) -> None:
        self._s = s
        self._response = response
        self._request = request
        self._feed = feed
        self._cursor: dict[str, int] = {}
        """This node's last seq sent."""

    async def run(self) -> None:
        portal = self._s.portal
        local = portal.view.trace
        own = portal.view.node_id
        feed = self._feed
        loop = asyncio.get_running_loop()
        keepalive_at = loop.time() + KEEPALIVE_SECONDS
        while not portal.closing and not self._gone():
            left = self._session_left()
            if left <= 0:  # the session expired (or its key was dropped): the stream too
                return
            feed.wake.clear()
            chunk: list[bytes] = []
            used = 0
            if local is not None:
                used = local_records(local, self._cursor, own, chunk, WRITE_MAX_BYTES)
            chunk.extend(feed.take(max(1, WRITE_MAX_BYTES - used)))
            if chunk or loop.time() >= keepalive_at:
                if not await self._write(b"".join(chunk) or b": keep-alive\n\n"):
                    return
                keepalive_at = loop.time() + KEEPALIVE_SECONDS
            if feed.pending or (local is not None and self._cursor.get(own, 0) < local.last_seq):
                continue  # more to send now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(keepalive_at - loop.time(), left))):
                    await feed.wake.wait()

    def _session_left(self) -> float:
        """Seconds the stream's session has left (0 once it no longer verifies)."""
        s = self._s
        now = s.portal.clock()
        if auth.session_key(s.value, s.ctx.access_keys, now) is None:
            return 0.0
        return auth.session_expiry(s.value) - now

    def _gone(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    async def _write(self, data: bytes) -> bool:
        """Write ``data``; False (the connection closed) when the reader did not take
        it within :data:`WRITE_TIMEOUT`."""
        try:
            async with asyncio.timeout(WRITE_TIMEOUT):
                await self._response.write(data)
        except TimeoutError:
            transport = self._request.transport
            if transport is not None:
                transport.abort()
            return False
        return True


def local_records(
    local: TraceRing, cursor: dict[str, int], own: str, chunk: list[bytes], budget: int
) -> int:
    """Append this node's records after its cursor to ``chunk`` as events, at most
    ``budget`` bytes of them (at least one; a gap event first if some were missed);
    the bytes appended."""
    seen = cursor.get(own)
    used = 0
    if seen is None or seen > local.last_seq:
        seen = local.first_seq - 1
    elif seen < local.first_seq - 1:
        gap = sse_event("gap", {"node": own, "missed": local.first_seq - 1 - seen})
        chunk.append(gap)
        used += len(gap)
        seen = local.first_seq - 1
    found = local.after_raw(seen, MAX_RECORDS, budget - used)
    for raw in found:
        event = sse_raw("record", raw)
        chunk.append(event)
        used += len(event)
    cursor[own] = seen + len(found)
    return used


# -- the webhook debugger, tokens ------------------------------------------------------


async def replay(request: web.Request, s: Session) -> web.StreamResponse:
    """Send a traced CloudEvent again, edited, to its original URL (never the client's)."""
    body = await json_object(request, s.ctx, s.ctx.max_message_bytes * 2 + MAX_BODY_BYTES)
    node, seq = body.get("node"), body.get("seq")
    if not isinstance(node, str) or isinstance(seq, bool) or not isinstance(seq, int):
        raise InvalidParameter("'node' (a string) and 'seq' (a number) are required.", target="seq")
    original, traced = await _original(s, node, seq)
    headers = replay_headers(body.get("headers"), original.headers)
    data = _replay_body(body, original.body, traced, s.ctx.max_message_bytes)
    started = time.monotonic()
    error: UpstreamError | None = None
    response = None
    with catching_replays() as caught:  # this replay's own record, exactly
        try:
            response = await s.portal.upstream.replay(
                original.url, headers, data, method=original.method, timeout=s.portal.replay_timeout
            )
        except UpstreamError as exc:
            error = exc
    new = caught[-1] if caught else None
    if new is None:
        if error is not None:
            raise error
        sent = UpstreamRequest(original.method, original.url, tuple(headers), data)
        exchange = Exchange(sent, response, None, time.monotonic() - started, replay=True)
        new = {"type": "cloudevent", "node": s.portal.view.node_id, **exchange_fields(exchange)}
    return json_response({"original": traced, "replay": new})


async def _original(s: Session, node: str, seq: int) -> tuple[UpstreamRequest, Json]:
    """The full request of CloudEvent record ``(node, seq)`` and the record."""
    view = s.portal.view
    traced: object = None
    request: UpstreamRequest | None = None
    if node == view.node_id:
        if view.trace is not None:
            traced, request = view.trace.get(seq), view.trace.original(seq)
    else:
        traced, request = await _remote_original(s, node, seq)
    if not isinstance(traced, dict):
        raise NotFound(f"Trace record {node}/{seq} is no longer kept.")
    if traced.get("type") != "cloudevent":
        raise BadRequest(f"Trace record {node}/{seq} is not a CloudEvent.")
    if request is None:
        raise NotFound(f"The request of trace record {node}/{seq} is no longer kept.")
    return request, traced


async def _remote_original(
    s: Session, node: str, seq: int
) -> tuple[object, UpstreamRequest | None]:
    """Record ``(node, seq)`` and its full request, asked of that node part by part
    (each answer carries a part of the body; the other nodes answer null at once)."""
    traced: object = None
    body = bytearray()
    limit = s.ctx.max_message_bytes * 2 + MAX_BODY_BYTES
    while True:  # bounded: each pass adds a part, at most ``limit`` bytes in all
        asked = {"op": "original", "node": node, "seq": seq, "offset": len(body)}
        answer = next((a for n, a in await ask(s, asked) if n == node), None)
        if not isinstance(answer, dict):
            return traced, None
        if not body:
            traced = answer.get("record")
        shown = answer.get("request")
        if not isinstance(shown, dict):
            return traced, None
        size = shown.get("size")
        try:
            part = base64.b64decode(str(shown.get("body", "")), validate=True)
            if not isinstance(size, int) or size > limit or shown.get("offset") != len(body):
                return traced, None
            body += part
            if len(body) >= size or not part:
                return traced, UpstreamRequest(
                    method=str(shown["method"]),
                    url=str(shown["url"]),
                    headers=tuple((str(k), str(v)) for k, v in shown["headers"]),
                    body=bytes(body),
                ) if len(body) == size else None  # fmt: skip
        except (KeyError, TypeError, ValueError, binascii.Error):
            return traced, None


def replay_headers(given: object, original: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The client's headers; a value shown masked in the trace is the original's again."""
    if given is None:
        return list(original)
    if not isinstance(given, list) or len(given) > MAX_HEADERS:
        raise InvalidParameter(
            f"'headers' must be a list of at most {MAX_HEADERS} [name, value] pairs.",
            target="headers",
        )
    masked = {(k.lower(), shown_value(k, v)): v for k, v in original}
    headers: list[tuple[str, str]] = []
    for item in given:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not all(isinstance(x, str) for x in item)
            or not _HEADER_NAME.fullmatch(item[0])
            or len(item[1]) > MAX_HEADER_VALUE
            or any(c in item[1] for c in "\r\n\0")
        ):
            raise InvalidParameter(
                "Each header is a [name, value] pair of a token and a one-line value.",
                target="headers",
            )
        name, value = str(item[0]), str(item[1])
        headers.append((name, masked.get((name.lower(), value), value)))
    return headers


def _replay_body(body: Json, original: bytes, traced: Json, limit: int) -> bytes:
    """The body to send: the client's, or the original's bytes when the client sent the
    body back as the trace shows it (cut at 16 KiB, or base64), or none."""
    given = body.get("body")
    if given is None:
        return original
    if not isinstance(given, str):
        raise InvalidParameter("'body' must be a string.", target="body")
    shown = traced.get("request")
    if isinstance(shown, dict) and given == shown.get("body"):
        return original
    if body.get("bodyEncoding") == "base64":
        try:
            data = base64.b64decode(given, validate=True)
        except (ValueError, binascii.Error):
            raise InvalidParameter("'body' is not base64.", target="body") from None
    else:
        data = given.encode()
    if len(data) > limit:
        raise PayloadTooLarge(f"A replayed body is at most {limit} bytes.")
    return data
