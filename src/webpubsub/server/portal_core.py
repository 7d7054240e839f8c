"""What the portal's routes share: its context, the session, JSON in and out.

(server/portal.py registers the routes; server/portal_trace.py serves the trace.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from webpubsub.core.settings import HubSettings
from webpubsub.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from webpubsub.protocol.payload import media_type
from webpubsub.server.context import ServiceContext
from webpubsub.server.portal_poll import TracePoller
from webpubsub.server.portal_view import Json, NodeView, Survey, ask_nodes
from webpubsub.server.rest import BODY_DEADLINE_FACTOR
from webpubsub.upstream.dispatcher import Upstream

MAX_BODY_BYTES = 64 * 1024
"""A portal request's JSON body (a replay's may be up to ``server.max_message_bytes``)."""

LOGIN_LOG_SECONDS = 10.0
"""Refused portal logins are logged at most once per this many seconds."""

_log = logging.getLogger("webpubsub.portal")

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


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
    session_streams: dict[str, int] = field(default_factory=dict)
    """Open trace streams by session."""
    closing: bool = False
    failed_logins: int = 0
    """Logins refused (a wrong key) since the service started."""
    _unlogged_failures: int = 0
    _failure_logged_at: float = float("-inf")
    poller: TracePoller = field(init=False)
    """The one poller of the other nodes' traces, shared by every open stream."""

    def __post_init__(self) -> None:
        self.poller = TracePoller(self.survey, lambda: self.view.node_id, self.view.trace)

    def login_failed(self, peer: str | None) -> None:
        """Count a refused login and log it (never the key), one warning per
        :data:`LOGIN_LOG_SECONDS` at most: a guessing client cannot flood the log."""
        self.failed_logins += 1
        self._unlogged_failures += 1
        now = time.monotonic()
        if now - self._failure_logged_at >= LOGIN_LOG_SECONDS:
            _log.warning(
                "portal login refused from %s: not an access key (%d refused since the last "
                "warning, %d in all)",
                peer or "an unknown address",
                self._unlogged_failures,
                self.failed_logins,
            )
            self._unlogged_failures = 0
            self._failure_logged_at = now

    async def shut(self, _app: web.Application) -> None:
        """``on_shutdown``: end the open streams."""
        self.closing = True
        self.poller.wake_all()
        if self.view.trace is not None:
            self.view.trace.wake()
        await self.poller.stop()


PORTAL = web.AppKey("webpubsub.portal", Portal)


@dataclass(frozen=True, slots=True)
class Session:
    """A request's verified session: its cookie value and the key that signed it."""

    value: str
    key: str
    ctx: ServiceContext
    portal: Portal


def json_response(value: object, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(value),
        content_type="application/json",
        charset="utf-8",
        headers=SECURITY_HEADERS,
    )


def no_content() -> web.Response:
    return web.Response(status=204, headers=SECURITY_HEADERS)


class Answers(list[tuple[str, object]]):
    """Every node's answer to a portal request; ``partial`` when only this node's (the
    backplane could not survey: Redis down, too many surveys in flight)."""

    partial = False


async def ask(s: Session, request: Json) -> Answers:
    """Every node's answer to ``request`` (``portal_view``); when the backplane cannot
    survey, this node's own answer alone (``partial``): the portal stays usable, and
    shows what this node holds, exactly when the backplane is down."""
    try:
        return Answers(await ask_nodes(s.portal.survey, request))
    except ServiceUnavailable:
        view = s.portal.view
        raw = await view.answer(orjson.dumps(request))
        answers = Answers([(view.node_id, orjson.loads(raw))])
        answers.partial = True
        return answers


def partial(answers: Answers, body: Json) -> Json:
    """``body``, marked ``"partial": true`` when ``answers`` are this node's alone."""
    if answers.partial:
        body["partial"] = True
    return body


async def json_object(
    request: web.Request, ctx: ServiceContext, limit: int, *, optional: bool = False
) -> Json:
    """The request's JSON object body (``application/json``), bounded in size and time."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(ctx.request_timeout * BODY_DEADLINE_FACTOR):
            while chunk := await request.content.readany():  # bounded by the limit
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"The body exceeds {limit} bytes.")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout("The body did not arrive in time.") from None
    raw = b"".join(chunks)
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
