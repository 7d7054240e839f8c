"""The messages of the service's client protocols, whatever their encoding (sans-I/O).

The JSON subprotocols (:mod:`webpubsub.protocol.json_protocol`) and the protobuf
ones (:mod:`webpubsub.protocol.protobuf_protocol`) decode client frames into these
frozen dataclasses, so that everything after decoding (routing, permissions, streams)
is one code path (Azure docs: client protocols; docs/compatibility.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from webpubsub.errors import BadRequest
from webpubsub.protocol.payload import Payload

MAX_STREAM_ID = 128
"""The longest ``streamId`` accepted (characters); longer is refused for that stream."""
MAX_IDLE_TIMEOUT_MS = 2**32 - 1
"""The largest ``idleTimeoutMs`` of a stream (the protobuf schema's ``uint32``)."""
MAX_STREAM_ERROR = 4096
"""The longest error a publisher may end its stream with (message and code, characters)."""


def checked_stream_id(value: object, name: str) -> str:
    """A stream id as a codec read it from its field ``name``: a non-empty string of at
    most :data:`MAX_STREAM_ID` characters, else a :class:`ProtocolViolation`."""
    if not isinstance(value, str) or not value:
        raise ProtocolViolation(f"'{name}' must be a non-empty string.")
    if len(value) > MAX_STREAM_ID:
        raise ProtocolViolation(f"'{name}' is longer than {MAX_STREAM_ID} characters.")
    return value


def stream_end(stream_id: str, message: str | None, code: str | None) -> StreamEnd | StreamProblem:
    """The publisher ends ``stream_id`` with an error (either part may be None), bounded
    by :data:`MAX_STREAM_ERROR`."""
    if len(message or "") + len(code or "") > MAX_STREAM_ERROR:
        return StreamProblem(stream_id, f"'error' is longer than {MAX_STREAM_ERROR} characters.")
    return StreamEnd(stream_id, StreamEndError(message, code))


class ProtocolViolation(BadRequest):
    """A client message the service cannot accept.

    ``ack_id`` is the request's ackId when one could be read (the service then
    answers with a ``BadRequest`` ack); ``invocation_id`` is an ``invoke``'s id when
    one could be read (answered with a failed ``invokeResponse``); ``fatal`` means the
    frame was not a request at all (not JSON, not an object, no type), which closes
    the connection.
    """

    def __init__(
        self,
        message: str,
        *,
        ack_id: int | None = None,
        fatal: bool = False,
        invocation_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.ack_id = ack_id
        self.fatal = fatal
        self.invocation_id = invocation_id


@dataclass(frozen=True, slots=True)
class JoinGroup:
    group: str
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class LeaveGroup:
    group: str
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class SendToGroup:
    group: str
    payload: Payload
    no_echo: bool = False
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class SendEvent:
    event: str
    payload: Payload
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class SequenceAck:
    sequence_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Invoke:
    """A request for the event handler's answer to user event ``event``
    (``target: "event"``); no ``data`` is an empty binary payload."""

    invocation_id: str
    event: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class CancelInvocation:
    """The client no longer waits for invocation ``invocation_id``."""

    invocation_id: str


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A well-formed request of a type this service does not implement."""

    type: str
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class StreamStart:
    """A ``sendToGroup`` carrying ``stream`` start metadata and no data: opens stream
    ``stream_id`` to ``group`` (``idle_timeout_ms`` None: the service default)."""

    group: str
    stream_id: str
    idle_timeout_ms: int | None = None
    no_echo: bool = False
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class StreamData:
    """A fragment of stream ``stream_id``; ``sequence_id`` and ``payload`` both None: a
    keep-alive (nothing is delivered)."""

    stream_id: str
    sequence_id: int | None = None
    payload: Payload | None = None


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The publisher ends stream ``stream_id``; with ``error`` set (an application error:
    its message and code, either may be None) subscribers see a ``UserError``."""

    stream_id: str
    error: StreamEndError | None = None


@dataclass(frozen=True, slots=True)
class StreamEndError:
    message: str | None = None
    user_error_code: str | None = None


@dataclass(frozen=True, slots=True)
class StreamProblem:
    """A stream message the service cannot accept (no such field, a bad id, a payload
    without its sequence id): answered with ``streamClosed`` ``BadRequest`` for
    ``stream_id``, the connection stays open."""

    stream_id: str
    message: str
    start: bool = False
    """A refused *start*: an open stream of that id (if any) is not touched."""


def ack_id_in(decode: Callable[[str | bytes], ClientMessage], frame: str | bytes) -> int | None:
    """The ack id of ``frame`` as ``decode`` (a codec's decoder) reads it, if it has a valid
    one, whatever else is wrong with it (a failed ack can then name it)."""
    try:
        msg = decode(frame)
    except ProtocolViolation as exc:
        return exc.ack_id
    ack_id: int | None = getattr(msg, "ack_id", None)
    return ack_id


ClientMessage = (
    JoinGroup
    | LeaveGroup
    | SendToGroup
    | SendEvent
    | Invoke
    | CancelInvocation
    | SequenceAck
    | Ping
    | StreamStart
    | StreamData
    | StreamEnd
    | StreamProblem
    | Unsupported
)


# -- service → client: what a stream's group messages and answers carry ----------------


@dataclass(frozen=True, slots=True)
class StreamError:
    """Why a stream ended or was refused: ``name`` is the service's classification
    (``UserError`` for an error the publisher sent, else ``IdleTimeout``, ``Forbidden``,
    ``BadRequest``, ``StreamNotFound``, ``Cancelled``, ``InternalServerError``)."""

    name: str
    message: str = ""
    user_error_code: str | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """The ``stream`` metadata of a group message that belongs to a stream: its id,
    the fragment's sequence id, and on the terminal message ``end`` (and ``error``)."""

    stream_id: str
    sequence_id: int
    end: bool = False
    error: StreamError | None = None
