"""The data-plane REST API under ``/api/`` (Azure REST API reference).

Routing is on the raw, percent-encoded path: it is split on ``/`` first and each
segment decoded after, so ids containing ``/`` (sent as ``%2F``) survive.  Every
request but the health check carries a JWT signed as the official SDKs sign it, for
the raw request target as it came (``verify_rest_token`` reads it as this router does).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import orjson
from aiohttp import StreamReader, web

from webpubsub.errors import (
    BadRequest,
    InvalidParameter,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
    WebPubSubError,
)
from webpubsub.node.observe import RestCall
from webpubsub.node.operations import Operations
from webpubsub.protocol.names import validate_hub
from webpubsub.protocol.odata import parse_filter
from webpubsub.protocol.payload import Payload, media_type
from webpubsub.protocol.tokens import bearer_token, verify_rest_token
from webpubsub.server.context import HEALTH, SERVICE, ServiceContext
from webpubsub.server.errors import error_response
from webpubsub.server.origin import caller_origin, public_base

API_VERSION = "2024-12-01"
SOCKET_IO_API_VERSION = "2024-12-01"
"""The first API version whose ``:generateToken`` knows ``clientType=SocketIO``."""
MAX_PAGE_SIZE = 200
INT32_MAX = 2**31 - 1
"""The REST API reference declares the integer query parameters ``int32``."""


class Call(NamedTuple):
    """One REST request, routed: path parameters, query and body."""

    params: dict[str, str]
    query: list[tuple[str, str]]
    request: web.Request
    ctx: ServiceContext
    """The service's, ``request.app[SERVICE]`` (looked up once)."""

    @property
    def hub(self) -> str:
        return self.params["hub"]

    def arg(self, name: str) -> str | None:
        for key, value in self.query:
            if key == name:
                return value
        return None

    def args(self, name: str) -> list[str]:
        return [value for key, value in self.query if key == name]


Handler = Callable[[Operations, Call], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: tuple[str, ...]
    operation: str
    """The operation's name in metrics and the trace: its ``operationId`` in Azure's
    REST reference (webpubsub.json, 2024-12-01) without the ``WebPubSub_`` prefix."""
    handler: Handler
    answers_json: bool = False
    """The success body is JSON: validation errors are then ``application/json`` too,
    not ``application/problem+json`` (as Azure's ``:generateToken`` answers them)."""

    def match(self, segments: list[str]) -> dict[str, str] | None:
        if len(segments) != len(self.pattern):
            return None
        params: dict[str, str] = {}
        for part, segment in zip(self.pattern, segments, strict=True):
            if part.startswith("{"):
                if not segment:
                    return None
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params


def _status(code: int) -> web.Response:
    return web.Response(status=code)


def _json(value: object) -> web.Response:
    """A JSON result, typed as Azure types it (``application/json; charset=utf-8``)."""
    return web.Response(body=orjson.dumps(value), content_type="application/json", charset="utf-8")


BODY_DEADLINE_FACTOR = 6
"""A REST body may take this many ``server.header_timeout_seconds`` in all."""


async def _payload(call: Call) -> Payload:
    ctx = call.ctx
    length = call.request.content_length
    if length is not None and length > ctx.max_message_bytes:
        raise PayloadTooLarge(f"The body exceeds {ctx.max_message_bytes} bytes.")
    body = await _body(call, length)
    _int_arg(call, "messageTtlSeconds", low=0, high=300)  # validated; delivery is immediate
    return Payload.from_rest_body(call.request.headers.get("Content-Type"), body)


async def _body(call: Call, length: int | None = None) -> bytes:
    """The whole body, bounded in size (``server.max_message_bytes``) and in time: it must
    keep coming, with no pause longer than ``server.header_timeout_seconds`` (a body that
    stops holds a connection; one that arrives slowly is a slow uplink, not an attack),
    and be complete within :data:`BODY_DEADLINE_FACTOR` times that. ``length``: the
    request's ``Content-Length``, when the caller has read it."""
    ctx = call.ctx
    idle = ctx.request_timeout
    limit = ctx.max_message_bytes
    content = call.request.content
    if length is None:
        length = call.request.content_length
    if length is not None and length <= limit:  # the common case: all of it is here
        data = content.read_nowait(length)
        if len(data) == length and (length == 0 or content.at_eof()):
            return data
        chunks: list[bytes] = [data] if data else []
        size = len(data)
    else:
        chunks, size = [], 0
    try:
        async with asyncio.timeout(idle * BODY_DEADLINE_FACTOR):
            while chunk := await _next_chunk(content, idle):  # bounded by the size limit
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(
            f"The body did not arrive within {idle * BODY_DEADLINE_FACTOR:g} s."
        ) from None
    return b"".join(chunks)


async def _next_chunk(content: StreamReader, idle: float) -> bytes:
    try:
        async with asyncio.timeout(idle):
            return await content.readany()
    except TimeoutError:
        raise RequestTimeout(f"The body stopped arriving: nothing for {idle:g} s.") from None


def _is_digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts e.g. ``²``, which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def _int_arg(call: Call, name: str, *, low: int, high: int = INT32_MAX) -> int | None:
    raw = call.arg(name)
    return None if raw is None else int_param(name, raw, low=low, high=high)


def int_param(name: str, raw: str, *, low: int, high: int = INT32_MAX) -> int:
    """Query parameter ``name``'s ASCII decimal ``raw`` in ``low..high``, else InvalidParameter."""
    # Length first: int() refuses strings of over 4300 digits (and is slow well before).
    digits = raw.lstrip("0") or "0"
    value = int(digits) if _is_digits(raw) and len(digits) <= len(str(high)) else None
    if value is None or not low <= value <= high:
        raise InvalidParameter(f"{name} must be an integer from {low} to {high}.", target=name)
    return value


# -- handlers ------------------------------------------------------------------------


async def send_to_all(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.send_to_all(
        call.hub,
        await _payload(call),
        excluded=call.args("excluded"),
        filter=call.arg("filter") or "",
    )
    return _status(202)


async def send_to_user(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.send_to_user(
        call.hub, call.params["user"], await _payload(call), filter=call.arg("filter") or ""
    )
    return _status(202)


async def send_to_group(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.send_to_group(
        call.hub,
        call.params["group"],
        await _payload(call),
        excluded=call.args("excluded"),
        filter=call.arg("filter") or "",
    )
    return _status(202)


async def _groups_body(call: Call) -> tuple[list[str], str]:
    """The ``{"groups": [...], "filter": "..."}`` body of the bulk group operations."""
    if media_type(call.request.headers.get("Content-Type")) != "application/json":
        raise UnsupportedMediaType("The body must be application/json.")
    try:
        body = orjson.loads(await _body(call))
    except orjson.JSONDecodeError:
        raise BadRequest("The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    groups = body.get("groups")
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise InvalidParameter("'groups' must be an array of group names.", target="groups")
    flt = body.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise InvalidParameter("'filter' must be a string.", target=_BODY_FILTER)
    if flt:
        try:
            parse_filter(flt)
        except InvalidParameter as exc:  # Azure names the body's property, not the query's
            raise InvalidParameter(exc.message, target=_BODY_FILTER) from None
    return groups, flt or ""


_BODY_FILTER = "Filter"
"""How Azure names the ``filter`` of a bulk group body in its errors (a C# property)."""


async def add_connections_to_groups(ops: Operations, call: Call) -> web.StreamResponse:
    groups, flt = await _groups_body(call)
    await ops.add_connections_to_groups(call.hub, groups, filter=flt)
    return _status(200)


async def remove_connections_from_groups(ops: Operations, call: Call) -> web.StreamResponse:
    groups, flt = await _groups_body(call)
    await ops.remove_connections_from_groups(call.hub, groups, filter=flt)
    return _status(200)


async def generate_token(ops: Operations, call: Call) -> web.StreamResponse:
    minutes = _int_arg(call, "minutesToExpire", low=1)
    version = call.arg("api-version")
    token = ops.generate_client_token(
        call.hub,
        endpoint=_public_base(call.request),
        user_id=call.arg("userId") or None,
        roles=call.args("role"),
        groups=call.args("group"),
        minutes_to_expire=60 if minutes is None else minutes,
        client_type=call.arg("clientType") or "Default",
        socket_io=version is None or version >= SOCKET_IO_API_VERSION,
    )
    return _json({"token": token})


async def send_to_connection(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.send_to_connection(call.hub, call.params["connection"], await _payload(call))
    return _status(202)


async def close_all(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.close_all_connections(
        call.hub, excluded=call.args("excluded"), reason=call.arg("reason") or ""
    )
    return _status(204)


async def close_user(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.close_user_connections(
        call.hub,
        call.params["user"],
        excluded=call.args("excluded"),
        reason=call.arg("reason") or "",
    )
    return _status(204)


async def close_group(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.close_group_connections(
        call.hub,
        call.params["group"],
        excluded=call.args("excluded"),
        reason=call.arg("reason") or "",
    )
    return _status(204)


async def close_connection(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.close_connection(call.hub, call.params["connection"], call.arg("reason") or "")
    return _status(204)


async def connection_exists(ops: Operations, call: Call) -> web.StreamResponse:
    connection = call.params["connection"]
    if not await ops.connection_exists(call.hub, connection):
        raise NotFound.of("Connection", connection, "Warning.Connection.NotExisted")
    return _status(200)


async def user_exists(ops: Operations, call: Call) -> web.StreamResponse:
    user = call.params["user"]
    if not await ops.user_exists(call.hub, user):
        raise NotFound.of("User", user, "Warning.User.NotExisted")
    return _status(200)


async def group_exists(ops: Operations, call: Call) -> web.StreamResponse:
    group = call.params["group"]
    if not await ops.group_exists(call.hub, group):
        raise NotFound.of("Group", group, "Warning.Group.NotExisted")
    return _status(200)


async def add_connection_to_group(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.add_connection_to_group(call.hub, call.params["group"], call.params["connection"])
    return _status(200)


async def remove_connection_from_group(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.remove_connection_from_group(
        call.hub, call.params["group"], call.params["connection"]
    )
    return _status(204)


async def remove_connection_from_all_groups(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.remove_connection_from_all_groups(call.hub, call.params["connection"])
    return _status(204)


async def add_user_to_group(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.add_user_to_group(call.hub, call.params["group"], call.params["user"])
    return _status(200)


async def remove_user_from_group(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.remove_user_from_group(call.hub, call.params["group"], call.params["user"])
    return _status(204)


async def remove_user_from_all_groups(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.remove_user_from_all_groups(call.hub, call.params["user"])
    return _status(204)


async def list_group_connections(ops: Operations, call: Call) -> web.StreamResponse:
    """One page of the group's members (Azure REST API reference), ordered by connection id.

    The continuation token is the last connection id of the previous page, so paging
    stays consistent while members come and go; ``nextLink`` carries it with the page
    size and what remains of ``top``.
    """
    page_size = _int_arg(call, "maxpagesize", low=1, high=MAX_PAGE_SIZE) or MAX_PAGE_SIZE
    top = _int_arg(call, "top", low=1)
    after = _continuation(call.arg("continuationToken"))
    members = [
        m for m in await ops.list_group(call.hub, call.params["group"]) if m.connection_id > after
    ]
    take = page_size if top is None else min(page_size, top)
    page, rest = members[:take], members[take:]
    # Azure lists "userId": null for an anonymous connection rather than omitting it.
    value = [{"connectionId": m.connection_id, "userId": m.user_id or None} for m in page]
    body: dict[str, object] = {"value": value}
    remaining = None if top is None else top - len(page)
    if rest and page and (remaining is None or remaining > 0):
        query = [
            ("continuationToken", _token_for(page[-1].connection_id)),
            ("maxpagesize", str(page_size)),
        ]
        if remaining is not None:
            query.append(("top", str(remaining)))
        query.append(("api-version", call.arg("api-version") or API_VERSION))
        path = _origin_form(call.request.raw_path).partition("?")[0]
        body["nextLink"] = f"{_public_base(call.request)}{path}?{urlencode(query)}"
    return _json(body)


def _token_for(connection_id: str) -> str:
    return base64.urlsafe_b64encode(connection_id.encode()).decode().rstrip("=")


def _continuation(token: str | None) -> str:
    if not token:
        return ""
    try:
        padded = token + "=" * (-len(token) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidParameter(
            "continuationToken is not valid.", target="continuationToken"
        ) from None


def _public_base(request: web.Request) -> str:
    """The base of URLs handed back to the caller: the public endpoint, else the caller's."""
    ctx = request.app[SERVICE]
    return public_base(request, ctx.public_endpoint, ctx.trusted_proxies)


async def grant_permission(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.grant_permission(
        call.hub, call.params["permission"], call.params["connection"], call.arg("targetName")
    )
    return _status(200)


async def revoke_permission(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.revoke_permission(
        call.hub, call.params["permission"], call.params["connection"], call.arg("targetName")
    )
    return _status(204)


async def has_permission(ops: Operations, call: Call) -> web.StreamResponse:
    connection = call.params["connection"]
    if not await ops.has_permission(
        call.hub, call.params["permission"], connection, call.arg("targetName")
    ):
        # Azure's one answer for a connection that is not there or lacks the permission.
        raise NotFound.of("Connection", connection, "Info.Connection.NotExisted")
    return _status(200)


H = ("hubs", "{hub}")
ROUTES: tuple[Route, ...] = (
    Route("POST", (*H, ":send"), "SendToAll", send_to_all),
    Route("POST", (*H, ":closeConnections"), "CloseAllConnections", close_all),
    Route("POST", (*H, ":generateToken"), "GenerateClientToken", generate_token, answers_json=True),
    Route("POST", (*H, ":addToGroups"), "AddConnectionsToGroups", add_connections_to_groups),
    Route(
        "POST",
        (*H, ":removeFromGroups"),
        "RemoveConnectionsFromGroups",
        remove_connections_from_groups,
    ),
    Route("DELETE", (*H, "connections", "{connection}"), "CloseConnection", close_connection),
    Route("HEAD", (*H, "connections", "{connection}"), "ConnectionExists", connection_exists),
    Route(
        "POST", (*H, "connections", "{connection}", ":send"), "SendToConnection", send_to_connection
    ),
    Route(
        "DELETE",
        (*H, "connections", "{connection}", "groups"),
        "RemoveConnectionFromAllGroups",
        remove_connection_from_all_groups,
    ),
    Route("HEAD", (*H, "groups", "{group}"), "GroupExists", group_exists),
    Route(
        "POST", (*H, "groups", "{group}", ":closeConnections"), "CloseGroupConnections", close_group
    ),
    Route("POST", (*H, "groups", "{group}", ":send"), "SendToGroup", send_to_group),
    Route(
        "GET",
        (*H, "groups", "{group}", "connections"),
        "ListConnectionsInGroup",
        list_group_connections,
        answers_json=True,
    ),
    Route(
        "PUT",
        (*H, "groups", "{group}", "connections", "{connection}"),
        "AddConnectionToGroup",
        add_connection_to_group,
    ),
    Route(
        "DELETE",
        (*H, "groups", "{group}", "connections", "{connection}"),
        "RemoveConnectionFromGroup",
        remove_connection_from_group,
    ),
    Route(
        "PUT",
        (*H, "permissions", "{permission}", "connections", "{connection}"),
        "GrantPermission",
        grant_permission,
    ),
    Route(
        "DELETE",
        (*H, "permissions", "{permission}", "connections", "{connection}"),
        "RevokePermission",
        revoke_permission,
    ),
    Route(
        "HEAD",
        (*H, "permissions", "{permission}", "connections", "{connection}"),
        "CheckPermission",
        has_permission,
    ),
    Route("HEAD", (*H, "users", "{user}"), "UserExists", user_exists),
    Route("POST", (*H, "users", "{user}", ":closeConnections"), "CloseUserConnections", close_user),
    Route("POST", (*H, "users", "{user}", ":send"), "SendToUser", send_to_user),
    Route(
        "DELETE",
        (*H, "users", "{user}", "groups"),
        "RemoveUserFromAllGroups",
        remove_user_from_all_groups,
    ),
    Route("PUT", (*H, "users", "{user}", "groups", "{group}"), "AddUserToGroup", add_user_to_group),
    Route(
        "DELETE",
        (*H, "users", "{user}", "groups", "{group}"),
        "RemoveUserFromGroup",
        remove_user_from_group,
    ),
)


async def health(request: web.Request) -> web.StreamResponse:
    """200 while the node serves; a GET's body names the node and its backplane's state
    (a HEAD answers as Azure's does: headers only, no Content-Type)."""
    if request.method == "HEAD":
        return _status(200)
    return _json(request.app[HEALTH]())


def _picker(positions: tuple[int, ...]) -> Callable[[list[str]], tuple[str, ...]]:
    """The segments at ``positions``, as a tuple (``itemgetter`` of one gives no tuple)."""
    if len(positions) == 1:
        (only,) = positions
        return lambda segments: (segments[only],)
    return itemgetter(*positions)


@dataclass(frozen=True, slots=True)
class _Shape:
    """The routes with one number of segments and their parameters at the same places,
    by their literal segments (each such route matches only its own literals)."""

    literals: Callable[[list[str]], tuple[str, ...]]
    values: Callable[[list[str]], tuple[str, ...]]
    routes: dict[tuple[str, ...], tuple[tuple[str, ...], tuple[tuple[int, Route], ...]]]
    """Literal segments → the parameters' names and the routes (index in ROUTES)."""
    methods: dict[tuple[str, ...], tuple[tuple[str, ...], dict[str, Route], tuple[str, ...]]]
    """The same by method: the parameters' names, the first route of each method and
    every route's method (in :data:`ROUTES` order)."""


def _shapes(routes: tuple[Route, ...]) -> dict[int, tuple[_Shape, ...]]:
    found: dict[tuple[int, tuple[int, ...]], dict[tuple[str, ...], list[tuple[int, Route]]]] = {}
    for index, r in enumerate(routes):
        params = tuple(i for i, part in enumerate(r.pattern) if part.startswith("{"))
        literal = tuple(part for part in r.pattern if not part.startswith("{"))
        found.setdefault((len(r.pattern), params), {}).setdefault(literal, []).append((index, r))
    shapes: dict[int, list[_Shape]] = {}
    for (length, params), table in found.items():
        named = {
            literal: (tuple(same[0][1].pattern[i][1:-1] for i in params), tuple(same))
            for literal, same in table.items()
        }
        methods = {
            literal: (
                names,
                {r.method: r for _, r in reversed(same)},  # the first of each method wins
                tuple(r.method for _, r in same),
            )
            for literal, (names, same) in named.items()
        }
        shapes.setdefault(length, []).append(
            _Shape(
                literals=_picker(tuple(i for i in range(length) if i not in params)),
                values=_picker(params),
                routes=named,
                methods=methods,
            )
        )
    return {length: tuple(found) for length, found in shapes.items()}


_SHAPES = _shapes(ROUTES)
"""The routes by their number of segments and their parameters' places (every route has
literal segments and parameters)."""


def route(method: str, raw_path: str) -> tuple[Route, dict[str, str]] | list[str]:
    """The route of ``method`` on a raw ``/api/...`` path and its decoded parameters.

    The path is split on ``/`` before each segment is percent-decoded, so ``%2F`` in
    an id stays inside its segment.  When nothing matches, the methods the path does
    allow (empty when no route has that shape). The first of :data:`ROUTES` that
    matches wins (:meth:`Route.match`: its literals, each parameter not empty).
    """
    segments = raw_path.split("/")[2:]  # drop "" and "api"
    if "%" in raw_path:
        segments = [unquote(s) for s in segments]
    if segments and segments[-1] == "":
        segments.pop()
    shapes = _SHAPES.get(len(segments), ())
    if len(shapes) == 1:  # (every number of segments has one shape: no order to settle)
        shape = shapes[0]
        by_method = shape.methods.get(shape.literals(segments))
        if by_method is None:
            return []
        values = shape.values(segments)
        if "" in values:
            return []
        names, first, methods = by_method
        hit = first.get(method)
        if hit is None:
            return list(methods)
        return hit, dict(zip(names, values, strict=True))
    matched: list[tuple[int, Route, dict[str, str]]] = []
    for shape in shapes:
        found = shape.routes.get(shape.literals(segments))
        if found is None:
            continue
        values = shape.values(segments)
        if "" in values:
            continue
        names, candidates = found
        params = dict(zip(names, values, strict=True))
        matched.extend((index, candidate, params) for index, candidate in candidates)
    if len(matched) > 1:
        matched.sort(key=lambda found: found[0])
    for _, candidate, params in matched:
        if candidate.method == method:
            return candidate, params
    return [candidate.method for _, candidate, _ in matched]


async def api_endpoint(request: web.Request) -> web.StreamResponse:
    """Route ``/api/...`` on the raw path, authenticate, run the operation; the
    observers are told of the call (its operation, status and duration)."""
    ctx = request.app[SERVICE]
    raw_target = _origin_form(request.raw_path)
    raw_path, _, raw_query = raw_target.partition("?")
    found = route(request.method, raw_path)
    matched = None if isinstance(found, list) else found[0]
    started = time.monotonic()
    status = 500
    hub: str | None = None
    try:
        if isinstance(found, list):
            if found:
                response = error_response(
                    MethodNotAllowed(f"{request.method} is not allowed on {raw_path}.")
                )
                response.headers["Allow"] = ", ".join(found)
                status = response.status
                return response
            raise NotFound(f"No operation at {raw_path}.")
        _authenticate(request, ctx, raw_target)
        matched, params = found
        hub = params["hub"] = validate_hub(params["hub"])
        call = Call(params, query_pairs(raw_query), request, ctx)
        try:
            answer = await matched.handler(ctx.operations, call)
        except InvalidParameter as exc:
            answer = error_response(exc, problem=not matched.answers_json)
        status = answer.status
        return answer
    except WebPubSubError as exc:
        status = exc.http_status
        raise
    except web.HTTPException as exc:  # the body's size limit, mapped by the middleware
        status = exc.status
        raise
    except web.RequestPayloadError:  # a body that does not decode: the middleware's 400
        status = 400
        raise
    finally:
        if ctx.observer:
            ctx.observer.rest_call(
                RestCall(
                    hub=hub,
                    operation=matched.operation if matched is not None else "Unknown",
                    method=request.method,
                    path=raw_path,
                    status=status,
                    duration=time.monotonic() - started,
                    caller=request.remote or "",
                )
            )


def query_pairs(raw: str) -> list[tuple[str, str]]:
    """``parse_qsl(raw, keep_blank_values=True)``; a query with nothing to decode (no
    ``%``, no ``+``: ``api-version=2024-12-01``) is only split."""
    if "%" in raw or "+" in raw:
        return parse_qsl(raw, keep_blank_values=True)
    pairs: list[tuple[str, str]] = []
    for part in raw.split("&") if raw else ():
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return pairs


def _origin_form(target: str) -> str:
    """``/path?query`` of a request target, also when sent in absolute form (RFC 9112 §3.2.2)."""
    if target.startswith("/"):
        return target
    parts = urlsplit(target)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _authenticate(request: web.Request, ctx: ServiceContext, raw_target: str) -> None:
    token = bearer_token(request.headers.get("Authorization"))
    if not token:
        raise Unauthorized("An Authorization: Bearer token is required.")
    verify_rest_token(
        token,
        keys=ctx.access_keys,
        # the origin the caller used (forwarded headers count from trusted proxies only)
        method_url=f"{caller_origin(request, ctx.trusted_proxies)}{raw_target}",
        endpoints=ctx.endpoints,
        now=ctx.clock(),
    )
