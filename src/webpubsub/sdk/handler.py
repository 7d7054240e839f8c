"""The event handler: CloudEvents from the service in, the app's answers out.

:class:`WebPubSubEventHandler` is framework-free. Give it an
:class:`~webpubsub.sdk.http.HttpRequest`; it answers the abuse-protection probe,
checks ``ce-signature``, parses the event, calls the app's handler (sync or
async) and builds the :class:`~webpubsub.sdk.http.HttpResponse`. Requests for
another path or hub are not its business (:meth:`~WebPubSubEventHandler.matches`
is ``False``) and belong to the rest of the app.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from webpubsub.protocol.cloudevents import host_of, signature
from webpubsub.protocol.connection_string import parse_connection_string
from webpubsub.sdk.events import (
    ConnectedRequest,
    ConnectionContext,
    ConnectRequest,
    ConnectResponse,
    DisconnectedRequest,
    EventHandlerError,
    MalformedEvent,
    UserEventRequest,
    UserEventResponse,
    parse_connect,
    parse_disconnected,
    parse_user_event,
)
from webpubsub.sdk.http import Headers, HttpRequest, HttpResponse
from webpubsub.sdk.state import STATE_HEADER, ConnectionState

__all__ = [
    "ConnectHandler",
    "ConnectedHandler",
    "DisconnectedHandler",
    "UserEventHandler",
    "WebPubSubEventHandler",
]

log = logging.getLogger("webpubsub.sdk")

_SYS = "azure.webpubsub.sys."
_USER = "azure.webpubsub.user."
_ORIGIN = "webhook-request-origin"
_TEXT = (("Content-Type", "text/plain; charset=utf-8"),)

ConnectHandler = Callable[
    [ConnectRequest], ConnectResponse | Awaitable[ConnectResponse | None] | None
]
"""Returns a :class:`ConnectResponse` or ``None`` (accept as the token says)."""
ConnectedHandler = Callable[[ConnectedRequest], object]
UserEventHandler = Callable[[UserEventRequest], object]
"""Returns ``None``, ``str``, ``bytes``, ``dict``/``list`` or a :class:`UserEventResponse`."""
DisconnectedHandler = Callable[[DisconnectedRequest], object]

_C = TypeVar("_C", bound=ConnectHandler)
_CD = TypeVar("_CD", bound=ConnectedHandler)
_U = TypeVar("_U", bound=UserEventHandler)
_D = TypeVar("_D", bound=DisconnectedHandler)


def _text(status: int, message: str, *extra: tuple[str, str]) -> HttpResponse:
    return HttpResponse(status, _TEXT + extra, message.encode("utf-8"))


@dataclass(frozen=True, slots=True)
class _Call:
    """A handler to call with ``event``, and how to turn its result into a response."""

    func: Callable[[Any], object]
    event: Any
    finish: Callable[[object], HttpResponse]


class WebPubSubEventHandler:
    """Handles the service's events for one hub at ``path``.

    * ``path``: where the hub's event handler URL points. Sub-paths match too, so
      ``/eventhandler`` serves the template ``http://app/eventhandler/{hub}/{event}``.
    * ``keys``: the service's access keys. With keys, every event must carry a
      ``ce-signature`` made with one of them (``verify_signature`` defaults to on);
      forged or unsigned events are answered 401.
    * ``allowed_origins``: service hosts (``"pubsub.example.com"``, or URLs) allowed
      to send events, or ``"*"`` for any. The abuse-protection probe of another
      host is refused (403), and so are its events.
    * ``on_connect``, ``on_connected``, ``on_event``, ``on_disconnected``: the
      handlers, plain or ``async`` functions; they can also be registered later
      with the decorators of the same names. ``on_event`` gets every user event.

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
        on_connect: ConnectHandler | None = None,
        on_connected: ConnectedHandler | None = None,
        on_event: UserEventHandler | None = None,
        on_disconnected: DisconnectedHandler | None = None,
    ) -> None:
        if not hub:
            raise ValueError("hub must not be empty")
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        self.hub = hub
        self.path = path.rstrip("/") or "/"
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
        self._on_connect = on_connect
        self._on_connected = on_connected
        self._on_event = on_event
        self._on_disconnected = on_disconnected

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
        self._on_connect = func
        return func

    def on_connected(self, func: _CD) -> _CD:
        """Decorator: handle ``connected`` (the return value is ignored)."""
        self._on_connected = func
        return func

    def on_event(self, func: _U) -> _U:
        """Decorator: handle every user event; return the reply to the client or ``None``."""
        self._on_event = func
        return func

    def on_disconnected(self, func: _D) -> _D:
        """Decorator: handle ``disconnected`` (the return value is ignored)."""
        self._on_disconnected = func
        return func

    # -- routing ----------------------------------------------------------------

    def matches(self, method: str, path: str, headers: Headers) -> bool:
        """Whether this request is for this handler (decided before reading the body).

        ``OPTIONS`` on the path is (the probe); ``GET`` only as a probe, with
        ``WebHook-Request-Origin``; ``POST`` unless its ``ce-hub`` names another hub.
        """
        if path != self.path and not path.startswith(self.path.rstrip("/") + "/"):
            return False
        method = method.upper()
        if method == "OPTIONS":
            return True
        if method == "GET":
            return _ORIGIN in headers
        if method == "POST":
            hub = headers.get("ce-hub")
            return hub is None or hub.lower() == self.hub.lower()
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
        """The response to a request that :meth:`matches`.

        ``async def`` handlers are awaited; plain functions run in a worker
        thread so that blocking calls do not stall the event loop.
        """
        step = self._prepare(request)
        if isinstance(step, HttpResponse):
            return step
        try:
            if inspect.iscoroutinefunction(step.func):
                result = await step.func(step.event)
            else:
                result = await asyncio.to_thread(step.func, step.event)
                if inspect.isawaitable(result):
                    result = await result
            return step.finish(result)
        except Exception as exc:
            return _failure(exc, step.event)

    def process_sync(self, request: HttpRequest) -> HttpResponse:
        """:meth:`process` without an event loop; an awaitable result is run to completion."""
        step = self._prepare(request)
        if isinstance(step, HttpResponse):
            return step
        try:
            result = step.func(step.event)
            if inspect.isawaitable(result):
                result = asyncio.run(_wait(result))
            return step.finish(result)
        except Exception as exc:
            return _failure(exc, step.event)

    # -- the protocol -----------------------------------------------------------

    def _prepare(self, request: HttpRequest) -> HttpResponse | _Call:
        method = request.method.upper()
        if method in ("OPTIONS", "GET"):
            return self._validate(request.headers)
        try:
            return self._event(request)
        except MalformedEvent as exc:
            return _text(400, str(exc))

    def _origin_allowed(self, origin: str) -> bool:
        return self._any_origin or (bool(origin) and host_of(origin) in self._allowed_hosts)

    def _validate(self, headers: Headers) -> HttpResponse:
        """Abuse protection (event-handler.md §2): opt in for allowed origins only."""
        origin = headers.get(_ORIGIN, "").strip()
        if not origin:
            return _text(400, "missing WebHook-Request-Origin header")
        if self._any_origin:
            return HttpResponse(200, (("WebHook-Allowed-Origin", "*"),))
        if self._origin_allowed(origin):
            return HttpResponse(200, (("WebHook-Allowed-Origin", origin),))
        return _text(403, "origin not allowed")

    def _signature_valid(self, connection_id: str, header: str) -> bool:
        """Any ``sha256=<hex>`` entry made with any key (case-insensitive hex, §4)."""
        expected = [signature(connection_id, (key,)) for key in self._keys]
        for item in header.split(","):
            candidate = item.strip().lower().encode("utf-8", "replace")
            for sig in expected:
                if hmac.compare_digest(candidate, sig.encode("ascii")):
                    return True
        return False

    def _event(self, request: HttpRequest) -> HttpResponse | _Call:
        if request.method.upper() != "POST":
            return _text(405, "method not allowed")
        headers = request.headers
        event_type = headers.get("ce-type", "")
        if not event_type:
            raise MalformedEvent("missing ce-type header")
        if not event_type.startswith((_SYS, _USER)):
            raise MalformedEvent(f"not a Web PubSub event type: {event_type!r}")
        connection_id = headers.get("ce-connectionId", "")
        if not connection_id:
            raise MalformedEvent("missing ce-connectionId header")
        hub = headers.get("ce-hub", "")
        if not hub:
            raise MalformedEvent("missing ce-hub header")
        sig = headers.get("ce-signature", "")
        if self.verify_signature and not self._signature_valid(connection_id, sig):
            return _text(401, "invalid ce-signature")
        origin = headers.get(_ORIGIN, "")
        if not self._origin_allowed(origin):
            return _text(403, "origin not allowed")
        is_system = event_type.startswith(_SYS)
        suffix = event_type[len(_SYS if is_system else _USER) :]
        context = ConnectionContext(
            hub=hub,
            connection_id=connection_id,
            event_name=headers.get("ce-eventName") or suffix,
            event_type=event_type,
            user_id=headers.get("ce-userId") or None,
            subprotocol=headers.get("ce-subprotocol") or None,
            origin=origin,
            signature=sig,
            event_id=headers.get("ce-id", ""),
            states=ConnectionState.from_header(headers.get(STATE_HEADER)),
            headers=headers,
        )
        if not is_system:
            event = parse_user_event(context, headers.get("content-type"), request.body)
            if self._on_event is None:
                return HttpResponse(204)
            return _Call(self._on_event, event, lambda r: _user_event_response(r, context))
        if suffix == "connect":
            connect = parse_connect(context, request.body)
            if self._on_connect is None:
                return HttpResponse(204)
            return _Call(self._on_connect, connect, lambda r: _connect_response(r, context))
        if suffix == "connected":
            if self._on_connected is None:
                return HttpResponse(204)
            return _Call(self._on_connected, ConnectedRequest(context), _no_content)
        if suffix == "disconnected":
            disconnected = parse_disconnected(context, request.body)
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


def _no_content(result: object) -> HttpResponse:
    return HttpResponse(204)


def _failure(exc: Exception, event: Any) -> HttpResponse:
    if isinstance(exc, EventHandlerError):
        return _text(exc.status, exc.message)
    context: ConnectionContext = event.context
    log.exception(
        "the %s handler failed for connection %s", context.event_name, context.connection_id
    )
    return _text(500, "the event handler failed")
