"""Connection state: a small dict that travels with every event of a connection.

The service stores one opaque string per connection: it is set by the
``ce-connectionState`` response header of a blocking event (``connect``, user
events) and sent back as the ``ce-connectionState`` request header on every later
event (Azure docs: CloudEvents). Like ``@azure/web-pubsub-express``, the SDK keeps a
JSON object there, base64-encoded: ``{"key":"a"}`` is ``eyJrZXkiOiJhIn0=``, so
apps written with either SDK can share a hub's state.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import orjson

from webpubsub.protocol.cloudevents import MAX_STATE_BYTES

STATE_HEADER = "ce-connectionState"


def encode_state(values: Mapping[str, Any]) -> str:
    """The header value for ``values``: base64 of their compact UTF-8 JSON.

    Raises :class:`TypeError` if a value cannot be serialised to JSON, and
    :class:`ValueError` if the header would be longer than the service keeps
    (``MAX_STATE_BYTES``, 8 KiB: the event would fail there).
    """
    try:
        raw = orjson.dumps(dict(values))
    except orjson.JSONEncodeError as exc:
        raise TypeError(f"connection state is not JSON-serialisable: {exc}") from None
    header = base64.b64encode(raw).decode("ascii")
    if len(header) > MAX_STATE_BYTES:
        raise ValueError(
            f"connection state is {len(header)} bytes encoded; the service keeps at most "
            f"{MAX_STATE_BYTES} bytes ({STATE_HEADER})"
        )
    return header


def decode_state(header: str) -> dict[str, Any]:
    """The JSON object in a ``ce-connectionState`` header; ``{}`` if there is none.

    Lenient like the express SDK: a value that is not base64 of a JSON object
    (state set by another kind of handler) reads as empty.
    """
    text = header.strip()
    if not text:
        return {}
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        value = orjson.loads(raw)
    except (binascii.Error, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class ConnectionState(MutableMapping[str, Any]):
    """The state of one connection, read from the request and changed by handlers.

    Use it like a dict (``state["room"] = "r1"``, ``del state["room"]``,
    ``state.clear()``). Changes made while handling ``connect`` or a user event
    are sent back to the service; on ``connected`` and ``disconnected`` they are
    ignored, as the service ignores them. ``raw`` is the header as received.

    Only assigning, deleting and clearing keys count as changes: changing a value in
    place (``state["list"].append(x)``) is not detected and is lost. Reassign the
    key instead (``state["list"] = [*state["list"], x]``).
    """

    __slots__ = ("_modified", "_values", "raw")

    def __init__(self, values: Mapping[str, Any] | None = None, *, raw: str = "") -> None:
        self._values: dict[str, Any] = dict(values or {})
        self._modified = False
        self.raw = raw

    @classmethod
    def from_header(cls, header: str | None) -> ConnectionState:
        return cls(decode_state(header or ""), raw=header or "")

    @property
    def modified(self) -> bool:
        """Whether a handler changed the state (then it is sent back)."""
        return self._modified

    def encode(self) -> str:
        """The ``ce-connectionState`` header value for the current content."""
        return encode_state(self._values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._values[key] = value
        self._modified = True

    def __delitem__(self, key: str) -> None:
        del self._values[key]
        self._modified = True

    def clear(self) -> None:
        self._values.clear()
        self._modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ConnectionState({self._values!r})"
