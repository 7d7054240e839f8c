"""The typed events an app receives and the answers it gives.

One class per CloudEvent the service sends (Azure docs: CloudEvents): every event
carries a :class:`ConnectionContext`; ``connect`` adds what the client presented,
user events add their data, ``disconnected`` its reason, the group presence events
(``joined``, ``left``) their group. A ``connect`` handler
answers with a :class:`ConnectResponse` (or ``None``), a user-event handler with
a :class:`UserEventResponse`, ``str``, ``bytes``, a JSON ``dict``/``list`` (or
``None``); any handler refuses with :class:`EventHandlerError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from webpubsub.protocol.payload import DataType, media_type
from webpubsub.sdk.http import Headers
from webpubsub.sdk.state import ConnectionState

__all__ = [
    "ClientCertificate",
    "ConnectRequest",
    "ConnectResponse",
    "ConnectedRequest",
    "ConnectionContext",
    "DataType",
    "DisconnectedRequest",
    "EventHandlerError",
    "GroupJoinedRequest",
    "GroupLeftRequest",
    "UserEventRequest",
    "UserEventResponse",
]


class EventHandlerError(Exception):
    """Raise from a handler to answer the event with ``status`` and ``message``.

    On ``connect`` this rejects the client: 401, 403 and other 4xx reach the
    client as the handshake's status, 5xx as 500. On a user event it fails the
    event (a simple client is disconnected, a subprotocol client gets an error
    ack). ``status`` must be 400–599.
    """

    def __init__(self, status: int, message: str = "") -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), not {status}")
        super().__init__(message or f"event handler failed with {status}")
        self.status = status
        self.message = message


class MalformedEvent(Exception):
    """The request is not a well-formed Web PubSub event (answered 400)."""


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What every event says about its connection (the ``ce-*`` headers).

    ``hub`` is as the service sent it (lower-cased by Azure); ``user_id`` and
    ``subprotocol`` are ``None`` when the connection has none (``subprotocol`` is
    never known on ``connect``); ``origin`` is the service's host
    (``WebHook-Request-Origin``); ``signature`` the raw ``ce-signature``;
    ``states`` the connection state (see :class:`ConnectionState`); ``headers``
    every header of the HTTP request.
    """

    hub: str
    connection_id: str
    event_name: str
    event_type: str
    user_id: str | None
    subprotocol: str | None
    origin: str
    signature: str
    event_id: str
    states: ConnectionState
    headers: Headers


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate of an mTLS connection: SHA-1 ``thumbprint`` and PEM ``content``."""

    thumbprint: str
    content: str


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """The blocking ``connect`` event, sent before the client's WebSocket is accepted.

    ``claims``, ``query`` and ``headers`` map a name to all its values
    (``request.query["id"][0]``); ``subprotocols`` are the ones the client offered,
    in order.
    """

    context: ConnectionContext
    claims: Mapping[str, tuple[str, ...]]
    query: Mapping[str, tuple[str, ...]]
    headers: Mapping[str, tuple[str, ...]]
    subprotocols: tuple[str, ...]
    client_certificates: tuple[ClientCertificate, ...]


@dataclass(frozen=True, slots=True)
class ConnectedRequest:
    """The ``connected`` event: the client's WebSocket is open (answer is ignored)."""

    context: ConnectionContext


@dataclass(frozen=True, slots=True)
class DisconnectedRequest:
    """The ``disconnected`` event: the connection has ended (answer is ignored)."""

    context: ConnectionContext
    reason: str


@dataclass(frozen=True, slots=True)
class GroupJoinedRequest:
    """The ``joined`` group presence event: the connection joined ``group`` (by its own
    request, by REST, or by its token or ``connect`` response); answer is ignored."""

    context: ConnectionContext
    group: str


@dataclass(frozen=True, slots=True)
class GroupLeftRequest:
    """The ``left`` group presence event: the connection left ``group`` (by its own
    request or by REST; not by disconnecting); answer is ignored."""

    context: ConnectionContext
    group: str


@dataclass(frozen=True, slots=True)
class UserEventRequest:
    """A user event: a simple client's frame (``message``) or a subprotocol ``event``.

    ``data_type`` comes from the request's Content-Type: ``text/plain`` is
    :attr:`DataType.TEXT` (``data`` is a ``str``), ``application/json`` is
    :attr:`DataType.JSON` (``data`` is the parsed value), ``application/octet-stream``
    (or none) is :attr:`DataType.BINARY` and ``application/x-protobuf`` is
    :attr:`DataType.PROTOBUF` (``data`` is ``bytes``). ``body`` is always the raw bytes.
    """

    context: ConnectionContext
    data_type: DataType
    data: Any
    body: bytes

    @property
    def text(self) -> str:
        """The body as UTF-8 text (raises :class:`UnicodeDecodeError` for other bytes)."""
        return self.body.decode("utf-8")


@dataclass(frozen=True, slots=True)
class ConnectResponse:
    """Accept a connection and shape it; fields left ``None`` keep the token's values.

    ``user_id`` replaces the token's subject, ``groups`` are joined right away,
    ``roles`` replace the token's permissions, ``subprotocol`` must be one the
    client offered. ``groups`` and ``roles`` are lists of names: a single ``str``
    raises :class:`TypeError` (it would otherwise be split into characters).
    """

    user_id: str | None = None
    groups: Sequence[str] | None = None
    roles: Sequence[str] | None = None
    subprotocol: str | None = None

    def __post_init__(self) -> None:
        for name in ("groups", "roles"):
            value = getattr(self, name)
            if isinstance(value, str | bytes):
                raise TypeError(
                    f"ConnectResponse {name} must be a list of names, not a "
                    f"{type(value).__name__} (write {name}=[{value!r}])"
                )

    def to_json(self) -> bytes:
        body: dict[str, object] = {}
        if self.user_id is not None:
            body["userId"] = self.user_id
        if self.groups is not None:
            body["groups"] = list(self.groups)
        if self.roles is not None:
            body["roles"] = list(self.roles)
        if self.subprotocol is not None:
            body["subprotocol"] = self.subprotocol
        return orjson.dumps(body)


_REPLY_CONTENT_TYPES = {
    DataType.TEXT: "text/plain; charset=utf-8",
    DataType.JSON: "application/json",
    DataType.BINARY: "application/octet-stream",
}


@dataclass(frozen=True, slots=True)
class UserEventResponse:
    """Data sent back to the client that raised the event, with its type.

    Handlers may also return a ``str`` (text), ``bytes`` (binary) or a ``dict``/``list``
    (JSON) directly; use :meth:`json` for other JSON values such as a string.
    """

    body: bytes
    data_type: DataType

    @classmethod
    def text(cls, value: str) -> UserEventResponse:
        return cls(value.encode("utf-8"), DataType.TEXT)

    @classmethod
    def json(cls, value: Any) -> UserEventResponse:
        return cls(orjson.dumps(value), DataType.JSON)

    @classmethod
    def binary(cls, value: bytes | bytearray | memoryview) -> UserEventResponse:
        return cls(bytes(value), DataType.BINARY)

    @property
    def content_type(self) -> str:
        return _REPLY_CONTENT_TYPES.get(self.data_type, "application/octet-stream")

    @classmethod
    def of(cls, value: object) -> UserEventResponse | None:
        """The response for a handler's return value; ``None`` means no content."""
        if value is None or isinstance(value, UserEventResponse):
            return value
        if isinstance(value, str):
            return cls.text(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return cls.binary(value)
        if isinstance(value, dict | list):
            return cls.json(value)
        raise TypeError(
            "a user-event handler must return None, str, bytes, dict, list or "
            f"UserEventResponse, not {type(value).__name__}"
        )


# -- parsing --------------------------------------------------------------------


def _load_object(body: bytes, event: str) -> dict[str, Any]:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedEvent(f"the {event} event body is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedEvent(f"the {event} event body must be a JSON object")
    return value


def _multi_map(value: object, field: str) -> dict[str, tuple[str, ...]]:
    """A JSON ``{name: [values]}`` field, read leniently.

    A single value counts as one item; numbers and booleans become their JSON text
    (``1714557600``, ``true``), nulls are dropped (a name whose value is ``null`` is
    left out). Nested objects and arrays are refused.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedEvent(f"connect field '{field}' must be an object")
    result: dict[str, tuple[str, ...]] = {}
    for name, values in value.items():
        if values is None:
            continue
        items = values if isinstance(values, list) else [values]
        texts = []
        for item in items:
            if item is None:
                continue
            text = _scalar_text(item)
            if text is None:
                raise MalformedEvent(f"connect field '{field}.{name}' must be a list of strings")
            texts.append(text)
        result[name] = tuple(texts)
    return result


def _scalar_text(value: object) -> str | None:
    """A JSON string, number or boolean as text (as the service writes claims); else ``None``."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


def _certificates(value: object) -> tuple[ClientCertificate, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise MalformedEvent("connect field 'clientCertificates' must be an array")
    certs = []
    for item in value:
        if not isinstance(item, dict):
            raise MalformedEvent("each client certificate must be an object")
        thumbprint, content = item.get("thumbprint", ""), item.get("content", "")
        if not isinstance(thumbprint, str) or not isinstance(content, str):
            raise MalformedEvent("client certificate fields must be strings")
        certs.append(ClientCertificate(thumbprint, content))
    return tuple(certs)


def parse_connect(context: ConnectionContext, body: bytes) -> ConnectRequest:
    fields = _load_object(body, "connect")
    subprotocols = fields.get("subprotocols") or []
    if isinstance(subprotocols, str):
        subprotocols = [subprotocols]
    if not isinstance(subprotocols, list) or not all(isinstance(s, str) for s in subprotocols):
        raise MalformedEvent("connect field 'subprotocols' must be a list of strings")
    return ConnectRequest(
        context=context,
        claims=_multi_map(fields.get("claims"), "claims"),
        query=_multi_map(fields.get("query"), "query"),
        headers=_multi_map(fields.get("headers"), "headers"),
        subprotocols=tuple(subprotocols),
        client_certificates=_certificates(fields.get("clientCertificates")),
    )


def parse_disconnected(context: ConnectionContext, body: bytes) -> DisconnectedRequest:
    fields = _load_object(body, "disconnected") if body.strip() else {}
    reason = fields.get("reason") or ""
    if not isinstance(reason, str):
        raise MalformedEvent("disconnected field 'reason' must be a string")
    return DisconnectedRequest(context=context, reason=reason)


def parse_group_presence(
    context: ConnectionContext, event: str, body: bytes
) -> GroupJoinedRequest | GroupLeftRequest:
    """``joined`` or ``left``, from the body ``{"group": "..."}``."""
    group = _load_object(body, event).get("group")
    if not isinstance(group, str) or not group:
        raise MalformedEvent(f"{event} field 'group' must be a non-empty string")
    if event == "joined":
        return GroupJoinedRequest(context=context, group=group)
    return GroupLeftRequest(context=context, group=group)


def parse_user_event(
    context: ConnectionContext, content_type: str | None, body: bytes
) -> UserEventRequest:
    kind = media_type(content_type)
    data: Any
    if kind == "text/plain":
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent("a text/plain event body must be UTF-8") from None
        data_type = DataType.TEXT
    elif kind == "application/json":
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise MalformedEvent("an application/json event body must be valid JSON") from None
        data_type = DataType.JSON
    elif kind in ("application/octet-stream", ""):
        data, data_type = bytes(body), DataType.BINARY
    elif kind == "application/x-protobuf":
        data, data_type = bytes(body), DataType.PROTOBUF
    else:
        raise MalformedEvent(f"unsupported event content type {content_type!r}")
    return UserEventRequest(context=context, data_type=data_type, data=data, body=bytes(body))
