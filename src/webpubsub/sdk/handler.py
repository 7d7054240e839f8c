"""The event handler: CloudEvents from the service in, the app's answers out.

:class:`WebPubSubEventHandler` is framework-free. Give it an
:class:`~webpubsub.sdk.http.HttpRequest`; it answers the abuse-protection probe,
checks ``ce-signature``, parses the event, calls the app's handler (sync or
async) and builds the :class:`~webpubsub.sdk.http.HttpResponse`. Requests for
another path or hub are not its business (:meth:`~WebPubSubEventHandler.matches`
is ``False``) and belong to the rest of the app.

Everything that can be decided from the request line and headers (the probe, the
event's ``ce-*`` headers, the signature, the origin, a ``Content-Length`` over
``max_body_bytes``) is decided before the body is read: with
:meth:`~WebPubSubEventHandler.process_stream`, the adapter's ``read_body`` is only
called for a request that passed those checks, and asked for at most
``max_body_bytes + 1`` bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, NamedTuple, TypeVar

from webpubsub.protocol.cloudevents import host_of, signature_entries
from webpubsub.protocol.connection_string import parse_connection_string
from webpubsub.sdk.events import (
    ConnectedRequest,
    ConnectionContext,
    ConnectRequest,
    ConnectResponse,
    DisconnectedRequest,
    EventHandlerError,
    GroupJoinedRequest,
    GroupLeftRequest,
    MalformedEvent,
    UserEventRequest,
    UserEventResponse,
    parse_connect,
    parse_disconnected,
    parse_group_presence,
    parse_user_event,
)
from webpubsub.sdk.http import Headers, HttpRequest, HttpResponse
from webpubsub.sdk.state import STATE_HEADER, ConnectionState

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ConnectHandler",
    "ConnectedHandler",
    "DisconnectedHandler",
    "GroupJoinedHandler",
    "GroupLeftHandler",
    "ReadBody",
    "ReadBodySync",
    "UserEventHandler",
    "WebPubSubEventHandler",
]

log = logging.getLogger("webpubsub.sdk")

_PREFIX = "azure.webpubsub."
_SYS = "azure.webpubsub.sys."
_USER = "azure.webpubsub.user."
_GROUP_PRESENCE = frozenset({"joined", "left"})
"""``ce-eventName`` of a group presence event: its ``ce-type`` is neither a system nor a
user event type (``azure.webpubsub.group.joined`` from webpubsub; any other
``azure.webpubsub.`` type with these names is taken as one too, docs/compatibility.md)."""
_ORIGIN = "webhook-request-origin"
_STATE = STATE_HEADER.lower()
_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024 + 64 * 1024
"""The service's 1 MiB message limit, plus room for a ``connect`` event's headers and claims."""

ReadBody = Callable[[int], Awaitable[bytes | None]]
"""``await read_body(limit)``: the body, reading at most ``limit`` bytes (more only if
already received); ``None`` if the client went away."""
ReadBodySync = Callable[[int], bytes]
"""``read_body(limit)``: the body, reading at most ``limit`` bytes."""

ConnectHandler = Callable[
    [ConnectRequest], ConnectResponse | Awaitable[ConnectResponse | None] | None
]
"""Returns a :class:`ConnectResponse` or ``None`` (accept as the token says)."""
ConnectedHandler = Callable[[ConnectedRequest], object]
UserEventHandler = Callable[[UserEventRequest], object]
"""Returns ``None``, ``str``, ``bytes``, ``dict``/``list`` or a :class:`UserEventResponse`."""
DisconnectedHandler = Callable[[DisconnectedRequest], object]
GroupJoinedHandler = Callable[[GroupJoinedRequest], object]
GroupLeftHandler = Callable[[GroupLeftRequest], object]

_C = TypeVar("_C", bound=ConnectHandler)
_CD = TypeVar("_CD", bound=ConnectedHandler)
_U = TypeVar("_U", bound=UserEventHandler)
_D = TypeVar("_D", bound=DisconnectedHandler)
_GJ = TypeVar("_GJ", bound=GroupJoinedHandler)
_GL = TypeVar("_GL", bound=GroupLeftHandler)


def _lowered(headers: Headers) -> Mapping[str, str]:
    """``headers`` by lower-cased name, the first value of each (what ``headers.get``
    answers, without lower-casing each name asked for)."""
    if isinstance(headers, Headers):
        return headers._first
    if isinstance(headers, Mapping):  # a plain mapping passed for Headers
        return Headers(headers)._first
    items = getattr(headers, "items", None)  # e.g. http.server's HTTPMessage
    if callable(items):
        return Headers(list(items()))._first
    raise TypeError(f"headers must be webpubsub.sdk.Headers, not {type(headers).__name__}")


SIGNED_KEPT = 4096
"""Connections whose expected ``ce-signature`` entries are remembered (the newest)."""
_signed: dict[tuple[str, tuple[str, ...]], tuple[bytes, ...]] = {}
"""The ``sha256=<hex>`` entry of each key, as bytes, by (connection id, keys): every event
of a connection carries the same one. Only a connection whose signature matched is kept, so
a forged event's connection id (any size) never stays in memory."""


def _expected_signatures(connection_id: str, keys: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(entry.encode("ascii") for entry in signature_entries(connection_id, keys))


def _text(status: int, message: str, *extra: tuple[str, str]) -> HttpResponse:
    return HttpResponse(status, _TEXT + extra, message.encode("utf-8"))


class _Event(NamedTuple):
    """An event whose headers passed every check; its body is still to be read."""

    context: ConnectionContext
    kind: str  # "sys", "user" or "group" (presence)
    name: str  # the ce-type without its prefix; a presence event's ce-eventName
    content_type: str | None


class _App(NamedTuple):
    """A registered handler, and whether it is an ``async def`` (asked once, not per event)."""

    func: Callable[[Any], Any]
    is_async: bool


def _app(func: Callable[[Any], object] | None) -> _App | None:
    return None if func is None else _App(func, inspect.iscoroutinefunction(func))


class _Call(NamedTuple):
    """A handler to call with ``event``, and how to turn its result into a response."""

    app: _App
    event: Any
    finish: Callable[[object, ConnectionContext], HttpResponse]


class WebPubSubEventHandler:
    """Handles the service's events for one hub at ``path``.

    * ``path``: where the hub's event handler URL points. Sub-paths match too, so
      ``/eventhandler`` serves the template ``http://app/eventhandler/{hub}/{event}``.
    * ``keys``: the service's access keys. With keys, every event must carry a
      ``ce-signature`` made with one of them (``verify_signature`` defaults to on);
      forged or unsigned events are answered 401 before their body is read. The
      signature is the only authentication: it covers the connection id alone.
    * ``allowed_origins``: service hosts (``"pubsub.example.com"``, or URLs) allowed
      to send events, or ``"*"`` for any. The abuse-protection probe of another
      host is refused (403), and so are its events. This is not authentication:
      the caller sets ``WebHook-Request-Origin``.
    * ``max_body_bytes``: larger request bodies are answered 413, and no more than
      this (plus one byte) is ever read.
    * ``on_connect``, ``on_connected``, ``on_event``, ``on_disconnected``,
      ``on_group_joined``, ``on_group_left``: the handlers, plain or ``async``
      functions; they can also be registered later with the decorators of the same
      names. ``on_event`` gets every user event; the group presence handlers get the
      ``joined`` / ``left`` events a hub's ``group_presence_events`` sends.

    Without an ``on_connect`` handler, connections are accepted as the token says;
    without ``on_event``, user events succeed with no reply.
    """

    def __init__(
        self,
        hub: str,
        *,
        path: str = "/eventhandler",
        keys: str | Iterable[str] = (),
        allowed_origins: str | Iterable[str] = "*",
        verify_signature: bool | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        on_connect: ConnectHandler | None = None,
        on_connected: ConnectedHandler | None = None,
        on_event: UserEventHandler | None = None,
        on_disconnected: DisconnectedHandler | None = None,
        on_group_joined: GroupJoinedHandler | None = None,
        on_group_left: GroupLeftHandler | None = None,
    ) -> None:
        if not hub:
            raise ValueError("hub must not be empty")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        self._hub = hub
        self._hub_lower = hub.lower()
        self._path = path.rstrip("/") or "/"
        self._sub_paths = self._path.rstrip("/") + "/"
        self._keys = (keys,) if isinstance(keys, str) else tuple(keys)
        if any(not k for k in self._keys):
            raise ValueError("access keys must not be empty")
        self.verify_signature = bool(self._keys) if verify_signature is None else verify_signature
        if self.verify_signature and not self._keys:
            raise ValueError("verify_signature needs at least one access key")
        origins = [allowed_origins] if isinstance(allowed_origins, str) else list(allowed_origins)
        if not origins:
            raise ValueError("allowed_origins must not be empty (use '*' to allow any)")
        self._any_origin = any(o.strip() == "*" for o in origins)
        self._allowed_hosts = frozenset(host_of(o) for o in origins if o.strip() != "*")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise TypeError("max_body_bytes must be an int")
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, not {max_body_bytes}")
        self.max_body_bytes = max_body_bytes
        self._on_connect = _app(on_connect)
        self._on_connected = _app(on_connected)
        self._on_event = _app(on_event)
        self._on_disconnected = _app(on_disconnected)
        self._on_group_joined = _app(on_group_joined)
        self._on_group_left = _app(on_group_left)

    @classmethod
    def from_connection_string(
        cls, connection_string: str, hub: str, **options: Any
    ) -> WebPubSubEventHandler:
        """A handler that verifies signatures with the connection string's access key."""
        options.setdefault("keys", (parse_connection_string(connection_string).access_key,))
        return cls(hub, **options)

    # -- registration -----------------------------------------------------------

    def on_connect(self, func: _C) -> _C:
        """Decorator: handle ``connect``; return a :class:`ConnectResponse` or ``None``."""
        self._on_connect = _app(func)
        return func

    def on_connected(self, func: _CD) -> _CD:
        """Decorator: handle ``connected`` (the return value is ignored)."""
        self._on_connected = _app(func)
        return func

    def on_event(self, func: _U) -> _U:
        """Decorator: handle every user event; return the reply to the client or ``None``."""
        self._on_event = _app(func)
        return func

    def on_disconnected(self, func: _D) -> _D:
        """Decorator: handle ``disconnected`` (the return value is ignored)."""
        self._on_disconnected = _app(func)
        return func

    def on_group_joined(self, func: _GJ) -> _GJ:
        """Decorator: handle ``joined``, a connection joined a group (return ignored)."""
        self._on_group_joined = _app(func)
        return func

    def on_group_left(self, func: _GL) -> _GL:
        """Decorator: handle ``left``, a connection left a group (return ignored)."""
        self._on_group_left = _app(func)
        return func

    @property
    def hub(self) -> str:
        """The hub whose events this handler takes (as given)."""
        return self._hub

    @property
    def path(self) -> str:
        """The path the service posts to (no trailing ``/``), and its sub-paths."""
        return self._path

    # -- routing ----------------------------------------------------------------

    def matches(self, method: str, path: str, headers: Headers) -> bool:
        """Whether this request is for this handler (decided before reading the body).

        Only the service's requests on the path (or a sub-path) are: ``OPTIONS`` or
        ``GET`` with ``WebHook-Request-Origin`` (the abuse-protection probe and its
        retry), and ``POST`` with a ``ce-type`` starting ``azure.webpubsub.`` and a
        ``ce-hub`` equal to this handler's hub (case-insensitive). Anything else, such
        as an app route under the same path or a CORS preflight, belongs to the app.
        """
        if path != self._path and not path.startswith(self._sub_paths):
            return False
        method = method.upper()
        if method == "POST":
            first = _lowered(headers)
            return (
                first.get("ce-type", "").startswith(_PREFIX)
                and first.get("ce-hub", "").lower() == self._hub_lower
            )
        if method in ("OPTIONS", "GET"):
            return _ORIGIN in headers
        return False

    async def handle(self, request: HttpRequest) -> HttpResponse | None:
        """The response to ``request``, or ``None`` if it is not for this handler."""
        if not self.matches(request.method, request.path, request.headers):
            return None
        return await self.process(request)

    def handle_sync(self, request: HttpRequest) -> HttpResponse | None:
        """:meth:`handle` for synchronous servers (WSGI); async handlers run in a new loop."""
        if not self.matches(request.method, request.path, request.headers):
            return None
        return self.process_sync(request)

    async def process(self, request: HttpRequest) -> HttpResponse:
        """The response to a request that :meth:`matches`, its body already read.

        ``async def`` handlers are awaited; plain functions run in a worker
        thread so that blocking calls do not stall the event loop.
        """
        step = self._check(request.method, request.headers)
        if isinstance(step, _Event):
            return await self._run(self._parse(step, request.body))
        return step

    def process_sync(self, request: HttpRequest) -> HttpResponse:
        """:meth:`process` without an event loop; an awaitable result is run to completion."""
        step = self._check(request.method, request.headers)
        if isinstance(step, _Event):
            return self._run_sync(self._parse(step, request.body))
        return step

    async def process_stream(
        self, method: str, path: str, headers: Headers, read_body: ReadBody
    ) -> HttpResponse | None:
        """:meth:`process` for a request whose body is not read yet (adapters use it).

        The headers are checked first; ``await read_body(max_body_bytes + 1)`` is
        called only if they pass (a probe, an unsigned event or one whose
        ``Content-Length`` is too large is answered without reading its body), and a
        body longer than ``max_body_bytes`` is answered 413. ``None`` if
        ``read_body`` returned ``None`` (the client went away): there is nobody to
        answer.
        """
        step = self._check(method, headers)
        if not isinstance(step, _Event):
            return step
        body = await read_body(self.max_body_bytes + 1)
        if body is None:
            return None
        return await self._run(self._parse(step, body))

    def process_stream_sync(
        self, method: str, path: str, headers: Headers, read_body: ReadBodySync
    ) -> HttpResponse:
        """:meth:`process_stream` for synchronous servers (WSGI)."""
        step = self._check(method, headers)
        if not isinstance(step, _Event):
            return step
        return self._run_sync(self._parse(step, read_body(self.max_body_bytes + 1)))

    async def _run(self, step: HttpResponse | _Call) -> HttpResponse:
        if isinstance(step, HttpResponse):
            return step
        app, event, finish = step
        try:
            if app.is_async:
                result = await app.func(event)
            else:
                result = await asyncio.to_thread(app.func, event)
                if inspect.isawaitable(result):
                    result = await result
            return finish(result, event.context)
        except Exception as exc:
            return _failure(exc, event)

    def _run_sync(self, step: HttpResponse | _Call) -> HttpResponse:
        if isinstance(step, HttpResponse):
            return step
        app, event, finish = step
        try:
            result = app.func(event)
            if inspect.isawaitable(result):
                result = asyncio.run(_wait(result))
            return finish(result, event.context)
        except Exception as exc:
            return _failure(exc, event)

    # -- the protocol -----------------------------------------------------------

    def _check(self, method: str, headers: Headers) -> HttpResponse | _Event:
        """Everything the request line and headers decide, before the body is read."""
        method = method.upper()
        if method == "POST":
            try:
                return self._event_headers(headers)
            except MalformedEvent as exc:
                return _text(400, str(exc))
        if method in ("OPTIONS", "GET"):
            return self._validate(headers)
        return _text(405, "method not allowed")

    def _origin_allowed(self, origin: str) -> bool:
        return self._any_origin or (bool(origin) and host_of(origin) in self._allowed_hosts)

    def _validate(self, headers: Headers) -> HttpResponse:
        """Abuse protection (Azure docs: CloudEvents): opt in for allowed origins only."""
        origin = headers.get(_ORIGIN, "").strip()
        if not origin:
            return _text(400, "missing WebHook-Request-Origin header")
        if self._any_origin:
            return HttpResponse(200, (("WebHook-Allowed-Origin", "*"),))
        if self._origin_allowed(origin):
            return HttpResponse(200, (("WebHook-Allowed-Origin", origin),))
        return _text(403, "origin not allowed")

    def _signature_valid(self, connection_id: str, header: str) -> bool:
        """Any ``sha256=<hex>`` entry made with any key (case-insensitive hex)."""
        known = (connection_id, self._keys)
        expected = _signed.get(known)
        kept = expected is not None
        if expected is None:
            expected = _expected_signatures(connection_id, self._keys)
        for item in header.split(","):
            candidate = item.strip().lower().encode("utf-8", "replace")
            for sig in expected:
                if hmac.compare_digest(candidate, sig):
                    if not kept:
                        if len(_signed) >= SIGNED_KEPT:
                            del _signed[next(iter(_signed))]  # the oldest
                        _signed[known] = expected
                    return True
        return False

    def _too_large(self) -> HttpResponse:
        return _text(413, f"the request body exceeds {self.max_body_bytes} bytes")

    def _event_headers(self, headers: Headers) -> HttpResponse | _Event:
        first = _lowered(headers)
        get = first.get
        event_type = get("ce-type", "")
        if not event_type:
            raise MalformedEvent("missing ce-type header")
        event_name = get("ce-eventname", "")
        if event_type.startswith(_USER):
            kind, name = "user", event_type[len(_USER) :]
        elif event_type.startswith(_SYS):
            kind, name = "sys", event_type[len(_SYS) :]
        elif event_type.startswith(_PREFIX) and event_name in _GROUP_PRESENCE:
            kind, name = "group", event_name
        else:
            raise MalformedEvent(f"not a Web PubSub event type: {event_type!r}")
        connection_id = get("ce-connectionid", "")
        if not connection_id:
            raise MalformedEvent("missing ce-connectionId header")
        hub = get("ce-hub", "")
        if not hub:
            raise MalformedEvent("missing ce-hub header")
        sig = get("ce-signature", "")
        if self.verify_signature and not self._signature_valid(connection_id, sig):
            return _text(401, "invalid ce-signature")
        origin = get(_ORIGIN, "")
        if not self._origin_allowed(origin):
            return _text(403, "origin not allowed")
        length = get("content-length", "").strip()
        if length.isascii() and length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        state = get(_STATE)
        context = ConnectionContext(
            hub=hub,
            connection_id=connection_id,
            event_name=event_name or name,
            event_type=event_type,
            user_id=get("ce-userid") or None,
            subprotocol=get("ce-subprotocol") or None,
            origin=origin,
            signature=sig,
            event_id=get("ce-id", ""),
            states=ConnectionState.from_header(state) if state else ConnectionState(),
            headers=headers,
        )
        return _Event(context, kind, name, get("content-type"))

    def _parse(self, event: _Event, body: bytes) -> HttpResponse | _Call:
        """The handler to call for an event whose headers passed, given its body."""
        if len(body) > self.max_body_bytes:
            return self._too_large()
        try:
            return self._dispatch(event, body)
        except MalformedEvent as exc:
            return _text(400, str(exc))

    def _dispatch(self, event: _Event, body: bytes) -> HttpResponse | _Call:
        context = event.context
        if event.kind == "user":
            user_event = parse_user_event(context, event.content_type, body)
            if self._on_event is None:
                return HttpResponse(204)
            return _Call(self._on_event, user_event, _user_event_response)
        if event.kind == "group":
            presence = parse_group_presence(context, event.name, body)
            app = self._on_group_joined if event.name == "joined" else self._on_group_left
            if app is None:
                return HttpResponse(204)
            return _Call(app, presence, _no_content)
        if event.name == "connect":
            connect = parse_connect(context, body)
            if self._on_connect is None:
                return HttpResponse(204)
            return _Call(self._on_connect, connect, _connect_response)
        if event.name == "connected":
            if self._on_connected is None:
                return HttpResponse(204)
            return _Call(self._on_connected, ConnectedRequest(context), _no_content)
        if event.name == "disconnected":
            disconnected = parse_disconnected(context, body)
            if self._on_disconnected is None:
                return HttpResponse(204)
            return _Call(self._on_disconnected, disconnected, _no_content)
        return HttpResponse(204)  # a newer system event this SDK does not know


async def _wait(awaitable: Awaitable[object]) -> object:
    return await awaitable


def _state_headers(context: ConnectionContext) -> tuple[tuple[str, str], ...]:
    states = context.states
    return ((STATE_HEADER, states.encode()),) if states.modified else ()


def _connect_response(result: object, context: ConnectionContext) -> HttpResponse:
    state = _state_headers(context)
    if result is None:
        return HttpResponse(204, state)
    if not isinstance(result, ConnectResponse):
        raise TypeError(
            f"a connect handler must return ConnectResponse or None, not {type(result).__name__}"
        )
    headers = (("Content-Type", "application/json"), *state)
    return HttpResponse(200, headers, result.to_json())


def _user_event_response(result: object, context: ConnectionContext) -> HttpResponse:
    reply = UserEventResponse.of(result)
    state = _state_headers(context)
    if reply is None:
        return HttpResponse(204, state)
    return HttpResponse(200, (("Content-Type", reply.content_type), *state), reply.body)


def _no_content(result: object, context: ConnectionContext) -> HttpResponse:
    return HttpResponse(204)


def _failure(exc: Exception, event: Any) -> HttpResponse:
    if isinstance(exc, EventHandlerError):
        return _text(exc.status, exc.message)
    context: ConnectionContext = event.context
    log.exception(
        "the %s handler failed for connection %s", context.event_name, context.connection_id
    )
    return _text(500, "the event handler failed")
