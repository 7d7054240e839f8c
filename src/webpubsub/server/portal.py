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

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import quote

from aiohttp import web

from webpubsub.config import DEFAULT_HUB
from webpubsub.core.settings import EventHandlerSettings, HubSettings
from webpubsub.errors import (
    InvalidParameter,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from webpubsub.protocol.names import hub_key, validate_hub
from webpubsub.protocol.payload import Payload
from webpubsub.protocol.tokens import issue_portal_token, issue_rest_token, verify_portal_token
from webpubsub.protocol.urls import websocket_base
from webpubsub.server import portal_auth as auth
from webpubsub.server.context import SERVICE, ServiceContext
from webpubsub.server.origin import caller_origin, public_base
from webpubsub.server.portal_core import (
    MAX_BODY_BYTES,
    PORTAL,
    SECURITY_HEADERS,
    Portal,
    Session,
    ask,
    json_object,
    json_response,
    no_content,
    partial,
)
from webpubsub.server.portal_trace import record, replay, stream, trace
from webpubsub.server.portal_view import Json
from webpubsub.upstream.http import safe_url

STATIC_FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
"""The only files served from ``portal_static`` (``/portal`` is ``index.html``)."""
MAX_TOKEN_MINUTES = 24 * 60
REST_TOKEN_SECONDS = 300
REST_METHODS = ("GET", "POST", "PUT", "DELETE", "HEAD")
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
"""The page's CSP: nothing inline, no ``data:``; ``connect-src 'self'`` covers the test
client's WebSocket to this service (CSP 3: 'self' matches ws/wss of the same host)."""


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
        raise NotFound("There is no such portal file.")
    return _file(name)


def _file(name: str) -> web.Response:
    body = _static(name)
    if body is None:
        raise NotFound(f"No portal file {name!r}.")
    headers = dict(SECURITY_HEADERS, **{"Cache-Control": "no-cache"})
    if name == "index.html":
        headers["Content-Security-Policy"] = _PAGE_POLICY
    content_type = STATIC_FILES[name]
    charset = None if content_type.startswith("image/") else "utf-8"
    return web.Response(body=body, content_type=content_type, charset=charset, headers=headers)


async def login(request: web.Request) -> web.StreamResponse:
    """``{"key": "<access key>"}``: 204 and the session cookie; 401 for a wrong key."""
    ctx, portal = request.app[SERVICE], request.app[PORTAL]
    auth.check_fetch_metadata(request)
    auth.check_origin(request, _own_origins(request, ctx))
    body = await json_object(request, ctx, MAX_BODY_BYTES)
    given = body.get("key")
    key = auth.key_matches(given, ctx.access_keys) if isinstance(given, str) else None
    if key is None:
        portal.login_failed(request.remote)
        raise Unauthorized("That is not an access key of this service.")
    response = web.Response(status=204, headers=SECURITY_HEADERS)
    session = auth.new_session(key, portal.clock())
    auth.set_session_cookie(response, session, secure=_secure(request, ctx, portal))
    return response


async def token_login(request: web.Request) -> web.StreamResponse:
    """``?token=<admin token>``: 303 to ``/portal`` with the session cookie."""
    ctx, portal = request.app[SERVICE], request.app[PORTAL]
    token = request.query.get("token", "")
    if not token or len(token) > 4096:
        raise Unauthorized("The portal link needs its admin token.")
    now = portal.clock()
    verify_portal_token(token, keys=ctx.access_keys, now=now)
    response = web.Response(status=303, headers=dict(SECURITY_HEADERS, Location="/portal"))
    # The key that signed the admin token signs the session: dropping it ends both.
    signer = next(k for k in ctx.access_keys if _signs(token, k, now))
    session = auth.new_session(signer, now)
    auth.set_session_cookie(response, session, secure=_secure(request, ctx, portal))
    return response


def _secure(request: web.Request, ctx: ServiceContext, portal: Portal) -> bool:
    """The cookie is ``Secure`` when the service serves https, or the caller reached it
    over https (a TLS terminator among ``server.trusted_proxies``)."""
    return portal.secure or caller_origin(request, ctx.trusted_proxies).startswith("https:")


def _signs(token: str, key: str, now: float) -> bool:
    try:
        verify_portal_token(token, keys=(key,), now=now)
    except Unauthorized:
        return False
    return True


# -- the guarded API -----------------------------------------------------------------

Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]


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
        auth.check_fetch_metadata(request)
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
    auth.check_fetch_metadata(request)
    _session(request)
    raise NotFound("There is no such portal API.")


def _own_origins(request: web.Request, ctx: ServiceContext) -> list[str]:
    own = [caller_origin(request, ctx.trusted_proxies), *ctx.endpoints]
    if ctx.public_endpoint:
        own.append(ctx.public_endpoint)
    return own


async def logout(request: web.Request, s: Session) -> web.StreamResponse:
    response = no_content()
    auth.clear_session_cookie(response, secure=_secure(request, s.ctx, s.portal))
    return response


async def session_info(request: web.Request, s: Session) -> web.StreamResponse:
    answers = await ask(s, {"op": "nodes"})
    return json_response(
        partial(
            answers,
            {
                "csrf": auth.csrf_token(s.key, s.value),
                "node": s.portal.view.node_id,
                "endpoint": public_base(request, s.ctx.public_endpoint, s.ctx.trusted_proxies),
                "nodes": [node for node, _ in answers],
            },
        )
    )


async def hubs(request: web.Request, s: Session) -> web.StreamResponse:
    """Every hub with its settings and counts: ``connections`` summed over the nodes
    (exact), ``users`` and ``groups`` the sums of each node's distinct counts (a user
    on two nodes counts twice; merging exactly would mean shipping every id)."""
    counts: dict[str, list[int]] = {}
    answers = await ask(s, {"op": "hubs"})
    for _, answer in answers:
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
    return json_response(partial(answers, {"hubs": listed}))


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
                "groupPresenceEvents": _presence(h),
                "timeoutSeconds": h.timeout_seconds,
            }
            for h in hs.event_handlers
        ],
    }


def _presence(h: EventHandlerSettings) -> Json | None:
    presence = h.group_presence_events
    if presence is None:
        return None
    return {
        "eventNames": sorted(presence.event_names),
        "groupFilters": list(presence.group_filters),
    }


def _hub(request: web.Request) -> str:
    return hub_key(validate_hub(request.match_info["hub"]))


async def connections(request: web.Request, s: Session) -> web.StreamResponse:
    hub = _hub(request)
    q = request.query.get("q", "")
    listed: list[object] = []
    truncated = False
    answers = await ask(s, {"op": "connections", "hub": hub, "q": q})
    for _, answer in answers:
        if isinstance(answer, dict):
            found = answer.get("connections")
            listed.extend(found if isinstance(found, list) else [])
            truncated = truncated or answer.get("truncated") is True
    return json_response(partial(answers, {"connections": listed, "truncated": truncated}))


async def connection(request: web.Request, s: Session) -> web.StreamResponse:
    hub, cid = _hub(request), request.match_info["id"]
    for _, answer in await ask(s, {"op": "connection", "hub": hub, "id": cid}):
        if isinstance(answer, dict):
            return json_response(answer)
    raise NotFound.of("Connection", cid, "Error.Connection.NotExisted")


async def close(request: web.Request, s: Session) -> web.StreamResponse:
    body = await json_object(request, s.ctx, MAX_BODY_BYTES, optional=True)
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise InvalidParameter("'reason' must be a string.", target="reason")
    await s.ctx.operations.close_connection(_hub(request), request.match_info["id"], reason)
    return no_content()


async def send(request: web.Request, s: Session) -> web.StreamResponse:
    body = await json_object(request, s.ctx, s.ctx.max_message_bytes + MAX_BODY_BYTES)
    data, content_type = body.get("data"), body.get("contentType", "text/plain")
    if not isinstance(data, str):
        raise InvalidParameter("'data' must be a string.", target="data")
    if content_type not in ("text/plain", "application/json"):
        raise InvalidParameter(
            "'contentType' must be text/plain or application/json.", target="contentType"
        )
    encoded = data.encode()
    if len(encoded) > s.ctx.max_message_bytes:  # as the REST send refuses it
        raise PayloadTooLarge(f"A message is at most {s.ctx.max_message_bytes} bytes.")
    payload = Payload.from_rest_body(content_type, encoded)
    await s.ctx.operations.send_to_connection(_hub(request), request.match_info["id"], payload)
    return no_content()


async def client_token(request: web.Request, s: Session) -> web.StreamResponse:
    body = await json_object(request, s.ctx, MAX_BODY_BYTES)
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
    # The page's own origin, not ``public_endpoint``: its CSP (``connect-src 'self'``)
    # lets it reach nothing else; the WebSocket handshake accepts the caller's origin.
    base = caller_origin(request, s.ctx.trusted_proxies)
    token = s.ctx.operations.generate_client_token(
        hub, endpoint=base, user_id=user_id or None, roles=roles, groups=groups,
        minutes_to_expire=minutes,
    )  # fmt: skip
    ws = websocket_base(base).rstrip("/")
    url = f"{ws}/client/hubs/{quote(hub, safe='')}?access_token={token}"
    return json_response({"url": url, "token": token})


def _strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidParameter(f"'{name}' must be a list of strings.", target=name)
    return [str(v) for v in value]


async def rest_token(request: web.Request, s: Session) -> web.StreamResponse:
    """A REST token for one URL (``aud``), good for every method on it for 5 minutes
    (``method`` is checked, for the console's sake, but not bound)."""
    body = await json_object(request, s.ctx, MAX_BODY_BYTES)
    method, path = body.get("method", "POST"), body.get("path")
    if not isinstance(method, str) or method.upper() not in REST_METHODS:
        raise InvalidParameter(f"'method' is one of {', '.join(REST_METHODS)}.", target="method")
    if (
        not isinstance(path, str)
        or not path.startswith("/api/hubs/")
        or len(path) > 4096
        or any(c.isspace() or c == "#" or ord(c) < 32 for c in path)
        or any(_dot_segment(seg) for seg in path.partition("?")[0].split("/"))
    ):
        raise InvalidParameter(
            "'path' must start with /api/hubs/ (no spaces, fragment or dot segments).",
            target="path",
        )
    # The page's own origin (as for the client token); ``rest._authenticate`` checks
    # ``aud`` against the origin the request came to.
    url = caller_origin(request, s.ctx.trusted_proxies) + path
    token = issue_rest_token(
        s.ctx.access_keys[0], audience=url, now=s.ctx.clock(), ttl_seconds=REST_TOKEN_SECONDS
    )
    # A REST token binds its URL only (``aud``, as on Azure), never a method: the
    # answer names none so as not to suggest one.
    return json_response({"token": token, "url": url})


# -- helpers ---------------------------------------------------------------------------


def _dot_segment(segment: str) -> bool:
    """``.`` or ``..``, percent-encoded or not (a REST token's URL has none)."""
    return segment.lower().replace("%2e", ".") in (".", "..")


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


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer under ``/portal`` (errors too) carries the portal's security headers."""
    if not request.rel_url.path_safe.startswith("/portal"):
        return  # (the router's decoded path, at hand: /api's answers pass here for nothing)
    path = request.path  # (differs from path_safe in %2F and %25 only: not in "/portal")
    if path == "/portal" or path.startswith("/portal/"):
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)


def add_routes(app: web.Application, portal: Portal) -> None:
    """Serve the portal on ``app`` (the composition root calls this when it is on)."""
    app[PORTAL] = portal
    app.on_shutdown.append(portal.shut)
    app.on_response_prepare.append(_security_headers)
    router = app.router
    router.add_get("/portal", page, allow_head=False)
    router.add_get("/portal/", page, allow_head=False)
    router.add_get("/portal/static/{name}", static_file, allow_head=False)
    router.add_get("/portal/login", token_login, allow_head=False)
    router.add_post("/portal/api/login", login)
    for route in API_ROUTES:
        router.add_route(route.method, route.path, guarded(route))
    router.add_route("*", "/portal/api/{tail:.*}", unknown)
