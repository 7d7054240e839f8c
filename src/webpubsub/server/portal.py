"""The operator portal at ``/portal``: its page, its JSON API and the live trace stream.

Open: the page and its static files, ``POST /portal/api/login`` (the access key) and
``GET /portal/login?token=`` (an admin token, :func:`admin_link`). Every other route
under ``/portal/api/`` needs the session cookie (401 without); a write (POST) needs
the session's CSRF header as well and, when the request has an ``Origin``, the
service's own origin (403 otherwise). docs/reference/portal-api.md lists the routes.

Live data comes from every node through backplane surveys (``portal_view``); what a
route changes goes through :class:`~webpubsub.node.operations.Operations`, like REST.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import quote

import orjson
from aiohttp import web

from webpubsub.config import DEFAULT_HUB
from webpubsub.core.settings import HubSettings
from webpubsub.errors import (
    BadRequest,
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    UpstreamError,
    WebPubSubError,
)
from webpubsub.node.observe import Exchange
from webpubsub.protocol.cloudevents import UpstreamRequest
from webpubsub.protocol.names import hub_key, validate_hub
from webpubsub.protocol.payload import Payload, media_type
from webpubsub.protocol.tokens import issue_portal_token, issue_rest_token, verify_portal_token
from webpubsub.server import portal_auth as auth
from webpubsub.server.context import SERVICE, ServiceContext
from webpubsub.server.origin import caller_origin, public_base
from webpubsub.server.portal_view import Json, NodeView, Survey, ask_nodes
from webpubsub.server.trace import Record, TraceRing, exchange_fields, mask_value
from webpubsub.upstream.dispatcher import Upstream
from webpubsub.upstream.http import safe_url

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
"""The only files served from ``portal_static`` (``/portal`` is ``index.html``)."""
MAX_BODY_BYTES = 64 * 1024
"""A portal request's JSON body (a replay's may be up to ``server.max_message_bytes``)."""
MAX_AFTER_CHARS = 8192
MAX_NODES = 256
MAX_HEADERS = 100
MAX_HEADER_VALUE = 8192
MAX_STREAMS = 16
"""Trace streams open at once on one node (one more is answered 503)."""
KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 0.5
"""How often an open stream asks the other nodes for their new records."""
MAX_TOKEN_MINUTES = 24 * 60
REST_TOKEN_SECONDS = 300
REST_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")
SEQ_MAX = 2**53

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)


@dataclass(slots=True)
class Portal:
    """What the portal's handlers share (built by the composition root)."""

    view: NodeView
    survey: Survey
    upstream: Upstream
    hubs: Mapping[str, HubSettings]
    """The configured hubs, by key."""
    hub_settings: Callable[[str], HubSettings]
    replay_timeout: float
    secure: bool
    """The service serves https: the cookie is ``Secure``."""
    clock: Callable[[], float] = time.time
    streams: int = 0
    closing: bool = False
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    async def shut(self, _app: web.Application) -> None:
        """``on_shutdown``: end the open streams."""
        self.closing = True
        self._stopped.set()
        if self.view.trace is not None:
            self.view.trace.wake()


PORTAL = web.AppKey("webpubsub.portal", Portal)


def admin_link(endpoint: str, key: str, *, now: float | None = None) -> str:
    """The URL that logs a browser in to the portal of the service at ``endpoint``
    (an admin token signed with ``key``, good for 24 hours)."""
    token = issue_portal_token(key, now=time.time() if now is None else now)
    return f"{endpoint.rstrip('/')}/portal/login?token={quote(token, safe='')}"


# -- the open part -------------------------------------------------------------------


def _static(name: str) -> bytes | None:
    try:
        return resources.files("webpubsub.server").joinpath("portal_static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


async def page(request: web.Request) -> web.StreamResponse:
    return _file("index.html")


async def static_file(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise NotFound(f"No portal file {name!r}.")
    return _file(name)


def _file(name: str) -> web.Response:
    body = _static(name)
    if body is None:
        raise NotFound(f"No portal file {name!r}.")
    headers = dict(_SECURITY_HEADERS, **{"Cache-Control": "no-cache"})
    if name == "index.html":
        headers["Content-Security-Policy"] = _PAGE_POLICY
    content_type = STATIC_FILES[name]
    charset = None if content_type.startswith("image/") else "utf-8"
    return web.Response(body=body, content_type=content_type, charset=charset, headers=headers)


async def login(request: web.Request) -> web.StreamResponse:
    """``{"key": "<access key>"}``: 204 and the session cookie; 401 for a wrong key."""
    ctx, portal = request.app[SERVICE], request.app[PORTAL]
    auth.check_origin(request, _own_origins(request, ctx))
    body = await _json_object(request, ctx, MAX_BODY_BYTES)
    given = body.get("key")
    key = auth.key_matches(given, ctx.access_keys) if isinstance(given, str) else None
    if key is None:
        raise Unauthorized("That is not an access key of this service.")
    response = web.Response(status=204, headers=_SECURITY_HEADERS)
    auth.set_session_cookie(response, auth.new_session(key, portal.clock()), secure=portal.secure)
    return response


async def token_login(request: web.Request) -> web.StreamResponse:
    """``?token=<admin token>``: 303 to ``/portal`` with the session cookie."""
    ctx, portal = request.app[SERVICE], request.app[PORTAL]
    token = request.query.get("token", "")
    if not token or len(token) > 4096:
        raise Unauthorized("The portal link needs its admin token.")
    now = portal.clock()
    verify_portal_token(token, keys=ctx.access_keys, now=now)
    response = web.Response(status=303, headers=dict(_SECURITY_HEADERS, Location="/portal"))
    # The first key signs the session: an admin token says nothing about its key.
    signer = next(k for k in ctx.access_keys if _signs(token, k, now))
    auth.set_session_cookie(response, auth.new_session(signer, now), secure=portal.secure)
    return response


def _signs(token: str, key: str, now: float) -> bool:
    try:
        verify_portal_token(token, keys=(key,), now=now)
    except Unauthorized:
        return False
    return True


# -- the guarded API -----------------------------------------------------------------

Handler = Callable[[web.Request, "Session"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Session:
    value: str
    key: str
    ctx: ServiceContext
    portal: Portal


@dataclass(frozen=True, slots=True)
class ApiRoute:
    method: str
    path: str
    handler: Handler

    @property
    def writes(self) -> bool:
        return self.method != "GET"


def guarded(route: ApiRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``route``'s handler behind the session check (and, for a write, CSRF + Origin)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        session = _session(request)
        if route.writes:
            auth.check_origin(request, _own_origins(request, session.ctx))
            auth.check_csrf(request, session.key, session.value)
        return await route.handler(request, session)

    handle.__name__ = route.handler.__name__
    return handle


def _session(request: web.Request) -> Session:
    ctx, portal = request.app[SERVICE], request.app[PORTAL]
    value, key = auth.authenticate(request, ctx.access_keys, portal.clock())
    return Session(value, key, ctx, portal)


async def unknown(request: web.Request) -> web.StreamResponse:
    """Any other path under ``/portal/api/``: 401 without a session, else 404."""
    _session(request)
    raise NotFound(f"No portal API at {request.path}.")


def _own_origins(request: web.Request, ctx: ServiceContext) -> list[str]:
    own = [caller_origin(request, ctx.trusted_proxies), *ctx.endpoints]
    if ctx.public_endpoint:
        own.append(ctx.public_endpoint)
    return own


def _json(value: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(value),
        content_type="application/json",
        charset="utf-8",
        headers=_SECURITY_HEADERS,
    )


def _no_content() -> web.Response:
    return web.Response(status=204, headers=_SECURITY_HEADERS)


async def logout(request: web.Request, s: Session) -> web.StreamResponse:
    response = _no_content()
    auth.clear_session_cookie(response, secure=s.portal.secure)
    return response


async def session_info(request: web.Request, s: Session) -> web.StreamResponse:
    nodes = [node for node, _ in await _ask(s, {"op": "nodes"})]
    return _json(
        {
            "csrf": auth.csrf_token(s.key, s.value),
            "node": s.portal.view.node_id,
            "endpoint": public_base(request, s.ctx.public_endpoint, s.ctx.trusted_proxies),
            "nodes": nodes,
        }
    )


async def hubs(request: web.Request, s: Session) -> web.StreamResponse:
    counts: dict[str, list[int]] = {}
    for _, answer in await _ask(s, {"op": "hubs"}):
        if not isinstance(answer, dict):
            continue
        for key, values in answer.items():
            if isinstance(values, list) and len(values) == 3:
                total = counts.setdefault(key, [0, 0, 0])
                for i, value in enumerate(values):
                    total[i] += value if isinstance(value, int) else 0
    configured = {key: hs for key, hs in s.portal.hubs.items() if key != DEFAULT_HUB}
    listed = []
    for key in sorted(set(configured) | set(counts)):
        settings = configured.get(key) or s.portal.hub_settings(key)
        c = counts.get(key, [0, 0, 0])
        listed.append(
            {
                "name": settings.name,
                "configured": key in configured,
                "settings": _settings(settings),
                "counts": {"connections": c[0], "users": c[1], "groups": c[2]},
            }
        )
    return _json({"hubs": listed})


def _settings(hs: HubSettings) -> Json:
    return {
        "anonymousConnect": hs.anonymous_connect,
        "keepaliveSeconds": hs.keepalive_seconds,
        "maxGroupsPerConnection": hs.max_groups_per_connection,
        "clientMessagesPerSecond": hs.client_messages_per_second,
        "clientBytesPerSecond": hs.client_bytes_per_second,
        "eventHandlers": [
            {
                "urlTemplate": safe_url(h.url_template),
                "userEventPattern": h.user_event_pattern,
                "systemEvents": sorted(h.system_events),
                "timeoutSeconds": h.timeout_seconds,
            }
            for h in hs.event_handlers
        ],
    }


def _hub(request: web.Request) -> str:
    return hub_key(validate_hub(request.match_info["hub"]))


async def connections(request: web.Request, s: Session) -> web.StreamResponse:
    hub = _hub(request)
    q = request.query.get("q", "")
    listed: list[object] = []
    truncated = False
    for _, answer in await _ask(s, {"op": "connections", "hub": hub, "q": q}):
        if isinstance(answer, dict):
            found = answer.get("connections")
            listed.extend(found if isinstance(found, list) else [])
            truncated = truncated or answer.get("truncated") is True
    return _json({"connections": listed, "truncated": truncated})


async def connection(request: web.Request, s: Session) -> web.StreamResponse:
    hub, cid = _hub(request), request.match_info["id"]
    for _, answer in await _ask(s, {"op": "connection", "hub": hub, "id": cid}):
        if isinstance(answer, dict):
            return _json(answer)
    raise NotFound.of("Connection", cid, "Error.Connection.NotExisted")


async def close(request: web.Request, s: Session) -> web.StreamResponse:
    body = await _json_object(request, s.ctx, MAX_BODY_BYTES, optional=True)
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidParameter("'reason' must be a string.", target="reason")
    await s.ctx.operations.close_connection(_hub(request), request.match_info["id"], reason)
    return _no_content()


async def send(request: web.Request, s: Session) -> web.StreamResponse:
    body = await _json_object(request, s.ctx, s.ctx.max_message_bytes + MAX_BODY_BYTES)
    data, content_type = body.get("data"), body.get("contentType", "text/plain")
    if not isinstance(data, str):
        raise InvalidParameter("'data' must be a string.", target="data")
    if content_type not in ("text/plain", "application/json"):
        raise InvalidParameter(
            "'contentType' must be text/plain or application/json.", target="contentType"
        )
    payload = Payload.from_rest_body(content_type, data.encode())
    await s.ctx.operations.send_to_connection(_hub(request), request.match_info["id"], payload)
    return _no_content()


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
    for node, answer in await _ask(s, {"op": "trace", "after": after}):
        page = _page(answer)
        if page is None:
            if node in after:
                cursor[node] = after[node]
            continue
        found, _, last = page
        records.extend(found)
        cursor[node] = _last_seq(found, after.get(node, 0) if found else last)
    records.sort(key=_record_time)
    return _json({"records": records, "cursor": cursor})


def _page(answer: object) -> tuple[list[object], int, int] | None:
    """(records, first, last) of a node's trace page."""
    if not isinstance(answer, dict):
        return None
    found, first, last = answer.get("records"), answer.get("first"), answer.get("last")
    if not isinstance(found, list) or not isinstance(first, int) or not isinstance(last, int):
        return None
    return found, first, last


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
    node, seq = request.match_info["node"], _seq(request.match_info["seq"])
    found = await _record_of(s, node, seq)
    if found is None:
        raise NotFound(f"Trace record {node}/{seq} is no longer kept.")
    return _json(found)


def _seq(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 16:
        raise InvalidParameter("A record's seq is a number.", target="seq")
    return int(raw)


async def _record_of(s: Session, node: str, seq: int) -> object:
    view = s.portal.view
    if node == view.node_id:
        return view.trace.get(seq) if view.trace is not None else None
    for answered, answer in await _ask(s, {"op": "record", "seq": seq}):
        if answered == node:
            return answer
    return None


async def stream(request: web.Request, s: Session) -> web.StreamResponse:
    """Server-Sent Events: every kept record of every node, then each new one."""
    portal = s.portal
    if portal.streams >= MAX_STREAMS:
        raise ServiceUnavailable(f"{MAX_STREAMS} trace streams are open already.")
    portal.streams += 1
    try:
        response = web.StreamResponse(
            headers={
                **_SECURITY_HEADERS,
                "Content-Type": "text/event-stream",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, RuntimeError):  # the client went away
            await _Stream(s, response, request).run()
        return response
    finally:
        portal.streams -= 1


class _Stream:
    def __init__(self, s: Session, response: web.StreamResponse, request: web.Request) -> None:
        self._s = s
        self._response = response
        self._request = request
        self._cursor: dict[str, int] = {}

    async def run(self) -> None:
        portal = self._s.portal
        local = portal.view.trace
        own = portal.view.node_id
        loop = asyncio.get_running_loop()
        keepalive_at = loop.time() + KEEPALIVE_SECONDS
        poll_at = loop.time()
        while not portal.closing and not self._gone():
            chunk: list[bytes] = []
            if local is not None:
                self._local(local_records(local, self._cursor, own, chunk), chunk)
            if loop.time() >= poll_at:
                await self._poll(own, chunk)
                poll_at = loop.time() + POLL_SECONDS
            if chunk:
                await self._response.write(b"".join(chunk))
                keepalive_at = loop.time() + KEEPALIVE_SECONDS
            elif loop.time() >= keepalive_at:
                await self._response.write(b": keep-alive\n\n")
                keepalive_at = loop.time() + KEEPALIVE_SECONDS
            wait = max(0.0, min(poll_at, keepalive_at) - loop.time())
            if local is not None:
                await local.wait(self._cursor.get(own, 0), wait)
            else:
                await _wait(portal, wait)

    def _gone(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    def _local(self, records: list[Record], chunk: list[bytes]) -> None:
        for item in records:
            chunk.append(_event("record", item))

    async def _poll(self, own: str, chunk: list[bytes]) -> None:
        try:
            answers = await _ask(self._s, {"op": "trace", "after": self._cursor})
        except WebPubSubError:  # no survey now (Redis down): try again next time
            return
        for node, answer in answers:
            page = _page(answer)
            if node == own or page is None:
                continue
            found, first, last = page
            seen = self._cursor.get(node)
            if seen is not None and seen > last:  # the node restarted
                seen = None
            if seen is not None and found and seen < first - 1:
                chunk.append(_event("gap", {"node": node, "missed": first - 1 - seen}))
            for item in found:
                chunk.append(_event("record", item))
            self._cursor[node] = _last_seq(found, seen if seen is not None else last)


def local_records(
    local: TraceRing, cursor: dict[str, int], own: str, chunk: list[bytes]
) -> list[Record]:
    """This node's records after its cursor (a gap event first if some were missed)."""
    seen = cursor.get(own)
    if seen is None or seen > local.last_seq:
        seen = local.first_seq - 1
    elif seen < local.first_seq - 1:
        chunk.append(_event("gap", {"node": own, "missed": local.first_seq - 1 - seen}))
        seen = local.first_seq - 1
    found = local.after(seen, 500)
    cursor[own] = seen + len(found)
    return found


async def _wait(portal: Portal, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            await portal._stopped.wait()
    except TimeoutError:
        pass


def _event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


# -- the webhook debugger, tokens ------------------------------------------------------


async def replay(request: web.Request, s: Session) -> web.StreamResponse:
    """Send a traced CloudEvent again, edited, to its original URL (never the client's)."""
    body = await _json_object(request, s.ctx, s.ctx.max_message_bytes * 2 + MAX_BODY_BYTES)
    node, seq = body.get("node"), body.get("seq")
    if not isinstance(node, str) or isinstance(seq, bool) or not isinstance(seq, int):
        raise InvalidParameter("'node' (a string) and 'seq' (a number) are required.", target="seq")
    original, traced = await _original(s, node, seq)
    headers = _replay_headers(body.get("headers"), original.headers)
    data = _replay_body(body, original.body, s.ctx.max_message_bytes)
    trace = s.portal.view.trace
    mark = trace.last_seq if trace is not None else 0
    started = time.monotonic()
    error: UpstreamError | None = None
    response = None
    try:
        response = await s.portal.upstream.replay(
            original.url, headers, data, method=original.method, timeout=s.portal.replay_timeout
        )
    except UpstreamError as exc:
        error = exc
    new = _replayed(trace, mark, original.url)
    if new is None:
        if error is not None:
            raise error
        sent = UpstreamRequest(original.method, original.url, tuple(headers), data)
        exchange = Exchange(sent, response, None, time.monotonic() - started, replay=True)
        new = {"type": "cloudevent", "node": s.portal.view.node_id, **exchange_fields(exchange)}
    return _json({"original": traced, "replay": new})


async def _original(s: Session, node: str, seq: int) -> tuple[UpstreamRequest, Json]:
    """The full request of CloudEvent record ``(node, seq)`` and the record."""
    view = s.portal.view
    answer: object = None
    if node == view.node_id:
        answer = view.original(seq)
    else:
        for answered, value in await _ask(s, {"op": "original", "seq": seq}):
            if answered == node:
                answer = value
    if not isinstance(answer, dict):
        raise NotFound(f"Trace record {node}/{seq} is no longer kept.")
    traced = answer.get("record")
    request = answer.get("request")
    if not isinstance(traced, dict):
        raise NotFound(f"Trace record {node}/{seq} is no longer kept.")
    if traced.get("type") != "cloudevent" or not isinstance(request, dict):
        raise BadRequest(f"Trace record {node}/{seq} is not a CloudEvent.")
    try:
        return (
            UpstreamRequest(
                method=str(request["method"]),
                url=str(request["url"]),
                headers=tuple((str(k), str(v)) for k, v in request["headers"]),
                body=base64.b64decode(request["body"]),
            ),
            traced,
        )
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise NotFound(f"Trace record {node}/{seq} is no longer kept.") from None


def _replay_headers(given: object, original: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The client's headers; a value shown masked in the trace is the original's again."""
    if given is None:
        return list(original)
    if not isinstance(given, list) or len(given) > MAX_HEADERS:
        raise InvalidParameter(
            f"'headers' must be a list of at most {MAX_HEADERS} [name, value] pairs.",
            target="headers",
        )
    masked = {(k.lower(), mask_value(k, v)): v for k, v in original}
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


def _replay_body(body: Json, original: bytes, limit: int) -> bytes:
    given = body.get("body")
    if given is None:
        return original
    if not isinstance(given, str):
        raise InvalidParameter("'body' must be a string.", target="body")
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


def _replayed(trace: TraceRing | None, mark: int, url: str) -> Json | None:
    if trace is None:
        return None
    shown = safe_url(url)
    for item in reversed(trace.after(mark, 10_000)):
        if (
            item.get("type") == "cloudevent"
            and item.get("replay") is True
            and (item.get("url") == shown)
        ):
            return item
    return None


async def client_token(request: web.Request, s: Session) -> web.StreamResponse:
    body = await _json_object(request, s.ctx, MAX_BODY_BYTES)
    hub = body.get("hub")
    user_id = body.get("userId")
    roles, groups = body.get("roles", []), body.get("groups", [])
    minutes = body.get("minutes", 60)
    if not isinstance(hub, str):
        raise InvalidParameter("'hub' is required.", target="hub")
    if user_id is not None and not isinstance(user_id, str):
        raise InvalidParameter("'userId' must be a string.", target="userId")
    roles, groups = _strings(roles, "roles"), _strings(groups, "groups")
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise InvalidParameter("'minutes' must be a number.", target="minutes")
    if not 1 <= minutes <= MAX_TOKEN_MINUTES:
        raise InvalidParameter(f"'minutes' is 1 to {MAX_TOKEN_MINUTES}.", target="minutes")
    base = public_base(request, s.ctx.public_endpoint, s.ctx.trusted_proxies)
    token = s.ctx.operations.generate_client_token(
        hub, endpoint=base, user_id=user_id or None, roles=roles, groups=groups,
        minutes_to_expire=minutes,
    )  # fmt: skip
    ws = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
    url = f"{ws.rstrip('/')}/client/hubs/{quote(hub, safe='')}?access_token={token}"
    return _json({"url": url, "token": token})


def _strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"'{name}' must be a list of strings.", target=name)
    return [str(v) for v in value]


async def rest_token(request: web.Request, s: Session) -> web.StreamResponse:
    body = await _json_object(request, s.ctx, MAX_BODY_BYTES)
    method, path = body.get("method", "POST"), body.get("path")
    if not isinstance(method, str) or method.upper() not in REST_METHODS:
        raise InvalidParameter(f"'method' is one of {', '.join(REST_METHODS)}.", target="method")
    if (
        not isinstance(path, str)
        or not path.startswith("/api/hubs/")
        or len(path) > 4096
        or any(c.isspace() or c == "#" or ord(c) < 32 for c in path)
    ):
        raise InvalidParameter(
            "'path' must start with /api/hubs/ (no spaces, no fragment).", target="path"
        )
    base = public_base(request, s.ctx.public_endpoint, s.ctx.trusted_proxies).rstrip("/")
    url = base + path
    token = issue_rest_token(
        s.ctx.access_keys[0], audience=url, now=s.ctx.clock(), ttl_seconds=REST_TOKEN_SECONDS
    )
    return _json({"token": token, "url": url, "method": method.upper()})


# -- helpers ---------------------------------------------------------------------------


async def _ask(s: Session, request: Json) -> list[tuple[str, object]]:
    return await ask_nodes(s.portal.survey, request)


async def _json_object(
    request: web.Request, ctx: ServiceContext, limit: int, *, optional: bool = False
) -> Json:
    """The request's JSON object body (``application/json``), bounded in size and time."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
    try:
        async with asyncio.timeout(ctx.request_timeout * 6):
            raw = await request.content.read(limit + 1)
    except TimeoutError:
        raise RequestTimeout("The body did not arrive in time.") from None
    if len(raw) > limit:
        raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
    if not raw and optional:
        return {}
    if media_type(request.headers.get("Content-Type")) != "application/json":
        raise UnsupportedMediaType("The body must be application/json.")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("The body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise BadRequest("The body must be a JSON object.")
    return value


API_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("POST", "/portal/api/logout", logout),
    ApiRoute("GET", "/portal/api/session", session_info),
    ApiRoute("GET", "/portal/api/hubs", hubs),
    ApiRoute("GET", "/portal/api/hubs/{hub}/connections", connections),
    ApiRoute("GET", "/portal/api/hubs/{hub}/connections/{id}", connection),
    ApiRoute("POST", "/portal/api/hubs/{hub}/connections/{id}/close", close),
    ApiRoute("POST", "/portal/api/hubs/{hub}/connections/{id}/send", send),
    ApiRoute("GET", "/portal/api/trace", trace),
    ApiRoute("GET", "/portal/api/trace/stream", stream),
    ApiRoute("GET", "/portal/api/trace/{node}/{seq}", record),
    ApiRoute("POST", "/portal/api/replay", replay),
    ApiRoute("POST", "/portal/api/token", client_token),
    ApiRoute("POST", "/portal/api/rest-token", rest_token),
)
"""Every route that needs the session (tests check each refuses without one)."""


def add_routes(app: web.Application, portal: Portal) -> None:
    """Serve the portal on ``app`` (the composition root calls this when it is on)."""
    app[PORTAL] = portal
    app.on_shutdown.append(portal.shut)
    router = app.router
    router.add_get("/portal", page, allow_head=False)
    router.add_get("/portal/", page, allow_head=False)
    router.add_get("/portal/static/{name}", static_file, allow_head=False)
    router.add_get("/portal/login", token_login, allow_head=False)
    router.add_post("/portal/api/login", login)
    for route in API_ROUTES:
        router.add_route(route.method, route.path, guarded(route))
    router.add_route("*", "/portal/api/{tail:.*}", unknown)
