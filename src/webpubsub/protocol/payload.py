"""Message payloads: the data of one message, typed the way Web PubSub types it.

A payload is what a REST send, a group publish or an upstream reply carries.  It is
kept as raw bytes plus a data type, so that it can be framed once per receiving
protocol (raw frame for simple clients, JSON envelope for subprotocol clients).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import orjson

from webpubsub.errors import BadRequest, UnsupportedMediaType


class DataType(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    BINARY = "binary"
    PROTOBUF = "protobuf"


_CONTENT_TYPES = {
    DataType.TEXT: "text/plain",
    DataType.JSON: "application/json",
    DataType.BINARY: "application/octet-stream",
    DataType.PROTOBUF: "application/x-protobuf",
}
_BY_MEDIA_TYPE = {v: k for k, v in _CONTENT_TYPES.items()}


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header: before ``;``, trimmed, lower-cased."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True, slots=True)
class Payload:
    """``data`` is UTF-8 text for TEXT, JSON text for JSON, raw bytes otherwise."""

    data_type: DataType
    data: bytes

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES[self.data_type]

    @property
    def is_text_frame(self) -> bool:
        """Simple clients receive text and JSON as text frames, the rest as binary."""
        return self.data_type in (DataType.TEXT, DataType.JSON)

    @classmethod
    def text(cls, value: str) -> Payload:
        return cls(DataType.TEXT, value.encode("utf-8"))

    @classmethod
    def binary(cls, value: bytes) -> Payload:
        return cls(DataType.BINARY, bytes(value))

    @classmethod
    def json(cls, raw: bytes) -> Payload:
        """A JSON payload from JSON text; raises :class:`BadRequest` if it is not JSON."""
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest("The body is not valid JSON.") from None
        return cls(DataType.JSON, bytes(raw))

    @classmethod
    def from_rest_body(cls, content_type: str | None, body: bytes) -> Payload:
        """The payload of a REST send: text/plain, application/json or octet-stream."""
        kind = _BY_MEDIA_TYPE.get(media_type(content_type))
        if kind is None or kind is DataType.PROTOBUF:
            raise UnsupportedMediaType(
                "Content-Type must be text/plain, application/json or "
                f"application/octet-stream, not {content_type or 'missing'!r}."
            )
        if kind is DataType.TEXT:
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("A text/plain body must be UTF-8.") from None
            return cls(kind, bytes(body))
        if kind is DataType.JSON:
            return cls.json(body)
        return cls(kind, bytes(body))

    @classmethod
    def from_upstream_reply(cls, content_type: str | None, body: bytes) -> Payload:
        """The payload of an event handler's reply (Azure docs: CloudEvents).

        ``text/plain`` is text, ``application/json`` is JSON (text if it does not
        parse), octet-stream or a missing type is binary; any other type is binary.
        """
        mt = media_type(content_type)
        if mt == "text/plain":
            return cls(DataType.TEXT, bytes(body))
        if mt == "application/json":
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return cls(DataType.TEXT, bytes(body))
            return cls(DataType.JSON, bytes(body))
        return cls(DataType.BINARY, bytes(body))
