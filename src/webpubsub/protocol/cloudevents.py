"""CloudEvents requests to event handlers and the meaning of their answers.

Sans-I/O: this module builds :class:`UpstreamRequest` values (binary content
mode, attributes in ``ce-*`` headers, Azure docs: CloudEvents) and turns
:class:`UpstreamResponse` values into decisions.  Sending them
is the job of ``webpubsub.upstream``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson

from webpubsub.errors import ConnectRejected, UpstreamError
from webpubsub.protocol.payload import Payload

AWPS_VERSION = "1.0"
SPEC_VERSION = "1.0"
SYSTEM_TYPE_PREFIX = "azure.webpubsub.sys."
USER_TYPE_PREFIX = "azure.webpubsub.user."
GROUP_PRESENCE_TYPE_PREFIX = "azure.webpubsub.group."
"""``ce-type`` of a group presence event is this and its ``ce-eventName`` (``joined`` or
``left``): a third kind beside system and user events, as the .NET and JavaScript
handler SDKs have it; the prefix itself is our choice (docs/compatibility.md)."""
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
MAX_STATE_BYTES = 8 * 1024
"""Largest ``ce-connectionState`` a handler may set (Azure docs: CloudEvents)."""

_STATE = "ce-connectionstate"
_STATE_SIZE = len(_STATE)
_TYPE_SIZE = len("content-type")
_ALLOWED_ORIGIN = "webhook-allowed-origin"


@dataclass(frozen=True, slots=True)
class EventContext:
    """What every event of one connection says about it.

    ``hub`` is lower-cased by the caller; ``state`` is ``""`` when the connection
    has none; ``origin`` is the service host name, without scheme and port.
    """

    hub: str
    connection_id: str
    user_id: str | None
    subprotocol: str | None
    state: str
    event_id: str
    origin: str


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    """A handler's answer; ``headers`` keep their order and repetitions."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]


@dataclass(frozen=True, slots=True)
class ConnectDecision:
    """The ``connect`` handler's verdict on an accepted connection.

    ``None`` fields were not given (keep the token's values).  ``user_id_set``
    tells a ``userId`` key apart from its absence.  ``state`` is ``None`` when the
    ``ce-connectionState`` header was absent; ``""`` clears the state.
    ``body_ignored`` is set when a 2xx body was not a JSON object and was ignored.
    """

    user_id: str | None = None
    user_id_set: bool = False
    groups: tuple[str, ...] | None = None
    roles: tuple[str, ...] | None = None
    subprotocol: str | None = None
    state: str | None = None
    body_ignored: bool = False


@dataclass(frozen=True, slots=True)
class EventReply:
    """A user-event handler's answer: data for the client and a new state."""

    payload: Payload | None
    state: str | None


def signature(connection_id: str, keys: Sequence[str]) -> str:
    """``ce-signature``: ``sha256=<hex>`` per access key, joined with ``,``."""
    return _signature(connection_id, tuple(keys))


@functools.lru_cache(maxsize=4096)
def _signature(connection_id: str, keys: tuple[str, ...]) -> str:
    """Every event of a connection carries the same signature: it is computed once
    per connection (and key set) while the connection is among the recent ones."""
    return ",".join(signature_entries(connection_id, keys))


def signature_entries(connection_id: str, keys: Sequence[str]) -> tuple[str, ...]:
    """The ``sha256=<hex>`` entry of ``ce-signature`` for each access key (not cached:
    a receiver checks connection ids it has not verified yet)."""
    message = connection_id.encode("utf-8")
    return tuple(
        "sha256=" + hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()
        for key in keys
    )


def format_time(now: float) -> str:
    """``ce-time``: ISO-8601 UTC to the whole second, e.g. ``2024-05-01T10:00:00Z``."""
    return _format_second(int(now))


@functools.lru_cache(maxsize=4)
def _format_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- building -------------------------------------------------------------------


def _headers(
    ctx: EventContext,
    keys: Sequence[str],
    now: float,
    *,
    content_type: str,
    ce_type: str,
    event_name: str,
    with_subprotocol: bool,
) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = [
        ("Content-Type", content_type),
        ("ce-specversion", SPEC_VERSION),
        ("ce-type", ce_type),
        ("ce-source", f"/hubs/{ctx.hub}/client/{ctx.connection_id}"),
        ("ce-id", ctx.event_id),
        ("ce-time", format_time(now)),
        ("ce-awpsversion", AWPS_VERSION),
        ("ce-hub", ctx.hub),
        ("ce-connectionId", ctx.connection_id),
        ("ce-eventName", event_name),
    ]
    if ctx.user_id:
        headers.append(("ce-userId", ctx.user_id))
    if with_subprotocol and ctx.subprotocol:
        headers.append(("ce-subprotocol", ctx.subprotocol))
    if ctx.state:
        headers.append(("ce-connectionState", ctx.state))
    if keys:
        headers.append(("ce-signature", signature(ctx.connection_id, keys)))
    headers.append(("WebHook-Request-Origin", ctx.origin))
    return tuple(headers)


def _system_request(
    ctx: EventContext,
    url: str,
    keys: Sequence[str],
    now: float,
    event: str,
    body: bytes,
    type_prefix: str = SYSTEM_TYPE_PREFIX,
) -> UpstreamRequest:
    headers = _headers(
        ctx,
        keys,
        now,
        content_type=JSON_CONTENT_TYPE,
        ce_type=type_prefix + event,
        event_name=event,
        with_subprotocol=event != "connect",
    )
    return UpstreamRequest("POST", url, headers, body)


def _multi(values: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    return {k: list(v) for k, v in values.items()}


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """What a client's handshake tells the ``connect`` handler: one value, built at the
    handshake and carried unchanged to the webhook."""

    claims: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """The access token's claims, each as a list of strings."""
    query: Mapping[str, Sequence[str]] = field(default_factory=dict)
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()
    client_certificates: tuple[tuple[str, str], ...] = ()
    """``(thumbprint, pem)`` pairs (none while the service has no mutual TLS)."""


def connect_request(
    ctx: EventContext, url: str, keys: Sequence[str], now: float, request: ConnectRequest
) -> UpstreamRequest:
    """The blocking ``connect`` event."""
    body = orjson.dumps(
        {
            "claims": _multi(request.claims),
            "query": _multi(request.query),
            "headers": _multi(request.headers),
            "subprotocols": list(request.subprotocols),
            "clientCertificates": [
                {"thumbprint": thumbprint, "content": content}
                for thumbprint, content in request.client_certificates
            ],
        }
    )
    return _system_request(ctx, url, keys, now, "connect", body)


def connected_request(
    ctx: EventContext, url: str, keys: Sequence[str], now: float
) -> UpstreamRequest:
    """The fire-and-forget ``connected`` event."""
    return _system_request(ctx, url, keys, now, "connected", b"{}")


def disconnected_request(
    ctx: EventContext, url: str, keys: Sequence[str], now: float, reason: str
) -> UpstreamRequest:
    """The fire-and-forget ``disconnected`` event; ``reason`` is always sent."""
    body = orjson.dumps({"reason": reason})
    return _system_request(ctx, url, keys, now, "disconnected", body)


def group_presence_request(
    ctx: EventContext, url: str, keys: Sequence[str], now: float, event: str, group: str
) -> UpstreamRequest:
    """The fire-and-forget ``joined`` / ``left`` event of ``group``: body ``{"group": ...}``."""
    body = orjson.dumps({"group": group})
    return _system_request(ctx, url, keys, now, event, body, GROUP_PRESENCE_TYPE_PREFIX)


def user_event_request(
    ctx: EventContext,
    url: str,
    keys: Sequence[str],
    now: float,
    event_name: str,
    payload: Payload,
) -> UpstreamRequest:
    """A blocking user event; the body is the payload's raw bytes."""
    headers = _headers(
        ctx,
        keys,
        now,
        content_type=payload.content_type,
        ce_type=USER_TYPE_PREFIX + event_name,
        event_name=event_name,
        with_subprotocol=True,
    )
    return UpstreamRequest("POST", url, headers, payload.data)


def validation_request(url: str, origin: str) -> UpstreamRequest:
    """The abuse-protection probe: ``OPTIONS`` with the request origin."""
    headers = (("WebHook-Request-Origin", origin), ("ce-awpsversion", AWPS_VERSION))
    return UpstreamRequest("OPTIONS", url, headers, b"")


# -- parsing --------------------------------------------------------------------


def host_of(value: str) -> str:
    """The host name of ``host``, ``host:port``, ``[v6]:port`` or ``scheme://host/...``."""
    host = value.strip()
    if "://" in host:
        host = host.split("://", 1)[1]
    host = host.split("/", 1)[0].rsplit("@", 1)[-1]
    if host.startswith("["):
        end = host.find("]")
        return host[1:end].lower() if end > 0 else host.lower()
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.lower()


def validation_accepted(response: UpstreamResponse, origin: str) -> bool:
    """Whether a probe's answer lets us deliver events to the handler."""
    if not 200 <= response.status <= 299:
        return False
    ours = host_of(origin)
    for header in response.header_values(_ALLOWED_ORIGIN):
        for item in header.split(","):
            item = item.strip()
            if item == "*" or (item and host_of(item) == ours):
                return True
    return False


def _state_of(response: UpstreamResponse) -> str | None:
    values = response.header_values(_STATE)
    if not values:
        return None
    return _checked_state(values[-1], response.status)


def _checked_state(state: str, status: int) -> str:
    """The last ``ce-connectionState`` a handler sent, if a later event can carry it."""
    try:
        size = len(state.encode("utf-8"))
    except UnicodeEncodeError:  # bytes that were not UTF-8: no later event could carry it
        raise UpstreamError(
            "the event handler set a connection state that is not UTF-8 text",
            status=status,
        ) from None
    if size > MAX_STATE_BYTES:
        raise UpstreamError(
            f"the event handler set a connection state over {MAX_STATE_BYTES} bytes",
            status=status,
        )
    return state


def _string_list(value: object, field: str, status: int) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UpstreamError(
        f"connect response field '{field}' must be an array of strings", status=status
    )


def _optional_string(value: object, field: str, status: int) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise UpstreamError(f"connect response field '{field}' must be a string", status=status)


def parse_connect_response(response: UpstreamResponse) -> ConnectDecision:
    """The verdict of a ``connect`` handler.

    Raises :class:`ConnectRejected` for 4xx (same status) and
    :class:`UpstreamError` for any other non-2xx or an unusable 2xx answer.
    A JSON ``null`` field counts as absent.
    """
    status = response.status
    if 400 <= status <= 499:
        raise ConnectRejected(
            f"the connect event handler rejected the connection with {status}", status=status
        )
    if not 200 <= status <= 299:
        raise UpstreamError(f"the connect event handler answered {status}", status=status)
    state = _state_of(response)
    if status == 204 or not response.body.strip():
        return ConnectDecision(state=state)
    try:
        body = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return ConnectDecision(state=state, body_ignored=True)
    if not isinstance(body, dict):
        return ConnectDecision(state=state, body_ignored=True)
    user_id = _optional_string(body.get("userId"), "userId", status)
    return ConnectDecision(
        user_id=user_id,
        user_id_set=user_id is not None,
        groups=_string_list(body.get("groups"), "groups", status),
        roles=_string_list(body.get("roles"), "roles", status),
        subprotocol=_optional_string(body.get("subprotocol"), "subprotocol", status),
        state=state,
    )


def parse_user_event_response(response: UpstreamResponse) -> EventReply:
    """A user-event handler's answer: data for the client and the new state."""
    status = response.status
    if not 200 <= status <= 299:
        raise UpstreamError(f"the event handler answered {status}", status=status)
    # One pass for both headers (the last state, the first type); a name of another
    # length is neither, and is not lower-cased.
    state = content_type = None
    for name, value in response.headers:
        size = len(name)
        if size == _STATE_SIZE and name.lower() == _STATE:
            state = value
        elif size == _TYPE_SIZE and content_type is None and name.lower() == "content-type":
            content_type = value
    if state is not None:
        state = _checked_state(state, status)
    if status == 204 or not response.body:
        return EventReply(payload=None, state=state)
    return EventReply(Payload.from_upstream_reply(content_type, response.body), state)


MAX_RETRY_AFTER = 86400.0
"""The longest ``Retry-After`` honoured, in seconds."""


@dataclass(frozen=True, slots=True)
class AsyncOutcome:
    """What an answer to ``connected``/``disconnected`` means for its delivery.

    ``retry``: try again (408, 429, 5xx); ``retry_after`` is the handler's
    ``Retry-After`` in seconds when it sent a usable one. Neither ``delivered`` nor
    ``retry``: the handler refused it for good (another status)."""

    delivered: bool
    retry: bool = False
    retry_after: float | None = None


def async_outcome(response: UpstreamResponse, now: float) -> AsyncOutcome:
    """Classify an answer to an asynchronous event (``now``: wall-clock seconds)."""
    status = response.status
    if 200 <= status <= 299:
        return AsyncOutcome(delivered=True)
    if status in (408, 429) or 500 <= status <= 599:
        values = response.header_values("retry-after")
        after = parse_retry_after(values[0], now) if values else None
        return AsyncOutcome(delivered=False, retry=True, retry_after=after)
    return AsyncOutcome(delivered=False)


def parse_retry_after(value: str, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3) as seconds from ``now``: delay-seconds or an
    HTTP-date, clamped to 0..:data:`MAX_RETRY_AFTER`; None when unusable."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(int(text[:12])), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(when.timestamp() - now, 0.0), MAX_RETRY_AFTER)
