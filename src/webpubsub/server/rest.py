"""The data-plane REST API under ``/api/`` (rest-api.md).

Routing is on the raw, percent-encoded path: it is split on ``/`` first and each
segment decoded after, so ids containing ``/`` (sent as ``%2F``) survive.  Every
request but the health check carries a JWT signed as the official SDKs sign it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
from aiohttp import web

from webpubsub.errors import BadRequest, MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized
from webpubsub.node.operations import Operations
from webpubsub.protocol.names import validate_hub
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.tokens import bearer_token, verify_rest_token
from webpubsub.server.context import SERVICE, ServiceContext
from webpubsub.server.errors import error_response


@dataclass(frozen=True, slots=True)
class Call:
    """One REST request, routed: path parameters, query and body."""

    params: dict[str, str]
    query: list[tuple[str, str]]
    request: web.Request

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
    handler: Handler

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


async def _payload(call: Call) -> Payload:
    ctx = call.request.app[SERVICE]
    length = call.request.content_length
    if length is not None and length > ctx.max_message_bytes:
        raise PayloadTooLarge(f"The body exceeds {ctx.max_message_bytes} bytes.")
    body = await call.request.read()  # bounded by the app's client_max_size
    _check_send_options(call)
    return Payload.from_rest_body(call.request.headers.get("Content-Type"), body)


def _check_send_options(call: Call) -> None:
    ttl = call.arg("messageTtlSeconds")
    if ttl is not None and not (ttl.isdigit() and 0 <= int(ttl) <= 300):
        raise BadRequest("messageTtlSeconds must be an integer from 0 to 300.")
    if call.arg("filter"):
        raise BadRequest("OData filters are not supported by this version of the service.")


# -- handlers ------------------------------------------------------------------------


async def send_to_all(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.send_to_all(call.hub, await _payload(call), excluded=call.args("excluded"))
    return _status(202)


async def send_to_user(ops: Operations, call: Call) -> web.StreamResponse:
    await ops.send_to_user(call.hub, call.params["user"], await _payload(call))
    return _status(202)


async def send_to_group(ops: Operations, call: Call) -> web.StreamResponse:
    payload = await _payload(call)
    await ops.send_to_group(call.hub, call.params["group"], payload, excluded=call.args("excluded"))
    return _status(202)


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
    return _status(200 if await ops.connection_exists(call.hub, call.params["connection"]) else 404)


async def user_exists(ops: Operations, call: Call) -> web.StreamResponse:
    return _status(200 if await ops.user_exists(call.hub, call.params["user"]) else 404)


async def group_exists(ops: Operations, call: Call) -> web.StreamResponse:
    return _status(200 if await ops.group_exists(call.hub, call.params["group"]) else 404)


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
    members = await ops.list_group(call.hub, call.params["group"])
    value = [
        {"connectionId": m.connection_id, **({"userId": m.user_id} if m.user_id else {})}
        for m in members
    ]
    return web.Response(body=orjson.dumps({"value": value}), content_type="application/json")


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
    held = await ops.has_permission(
        call.hub, call.params["permission"], call.params["connection"], call.arg("targetName")
    )
    return _status(200 if held else 404)


H = ("hubs", "{hub}")
ROUTES: tuple[Route, ...] = (
    Route("POST", (*H, ":send"), send_to_all),
    Route("POST", (*H, ":closeConnections"), close_all),
    Route("DELETE", (*H, "connections", "{connection}"), close_connection),
    Route("HEAD", (*H, "connections", "{connection}"), connection_exists),
    Route("POST", (*H, "connections", "{connection}", ":send"), send_to_connection),
    Route(
        "DELETE", (*H, "connections", "{connection}", "groups"), remove_connection_from_all_groups
    ),
    Route("HEAD", (*H, "groups", "{group}"), group_exists),
    Route("POST", (*H, "groups", "{group}", ":closeConnections"), close_group),
    Route("POST", (*H, "groups", "{group}", ":send"), send_to_group),
    Route("GET", (*H, "groups", "{group}", "connections"), list_group_connections),
    Route("PUT", (*H, "groups", "{group}", "connections", "{connection}"), add_connection_to_group),
    Route(
        "DELETE",
        (*H, "groups", "{group}", "connections", "{connection}"),
        remove_connection_from_group,
    ),
    Route(
        "PUT", (*H, "permissions", "{permission}", "connections", "{connection}"), grant_permission
    ),
    Route(
        "DELETE",
        (*H, "permissions", "{permission}", "connections", "{connection}"),
        revoke_permission,
    ),
    Route(
        "HEAD", (*H, "permissions", "{permission}", "connections", "{connection}"), has_permission
    ),
    Route("HEAD", (*H, "users", "{user}"), user_exists),
    Route("POST", (*H, "users", "{user}", ":closeConnections"), close_user),
    Route("POST", (*H, "users", "{user}", ":send"), send_to_user),
    Route("DELETE", (*H, "users", "{user}", "groups"), remove_user_from_all_groups),
    Route("PUT", (*H, "users", "{user}", "groups", "{group}"), add_user_to_group),
    Route("DELETE", (*H, "users", "{user}", "groups", "{group}"), remove_user_from_group),
)


async def health(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


async def api_endpoint(request: web.Request) -> web.StreamResponse:
    """Route ``/api/...`` on the raw path, authenticate, run the operation."""
    ctx = request.app[SERVICE]
    raw_target = _origin_form(request.raw_path)
    raw_path, _, raw_query = raw_target.partition("?")
    segments = [unquote(s) for s in raw_path.split("/")[2:]]  # drop "" and "api"
    if segments and segments[-1] == "":
        segments.pop()
    found: tuple[Route, dict[str, str]] | None = None
    allowed: list[str] = []
    for route in ROUTES:
        params = route.match(segments)
        if params is None:
            continue
        allowed.append(route.method)
        if route.method == request.method:
            found = (route, params)
            break
    if found is None:
        if allowed:
            response = error_response(
                MethodNotAllowed(f"{request.method} is not allowed on {raw_path}.")
            )
            response.headers["Allow"] = ", ".join(allowed)
            return response
        raise NotFound(f"No operation at {raw_path}.")
    _authenticate(request, ctx, raw_target)
    route, params = found
    params["hub"] = validate_hub(params["hub"])
    call = Call(params, parse_qsl(raw_query, keep_blank_values=True), request)
    return await route.handler(ctx.operations, call)


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
        method_url=f"{request.scheme}://{request.host}{raw_target}",
        endpoints=ctx.endpoints,
        now=ctx.clock(),
    )
