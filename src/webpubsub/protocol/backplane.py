"""The backplane envelope: what one node asks of every node.

Every REST operation becomes a :data:`Command` (applied by each node to its own
connections) or a :data:`Query` (answered by each node from its own connections).
Messages are frozen dataclasses; a networked backplane carries them with the codec
at the end of this module (``encode_command`` / ``decode_command`` and the same for
queries and answers), which the in-memory backplane can run too. Surveys
(:class:`SurveyRequest` / :class:`SurveyReply`) carry opaque questions to every node
and their answers, for observation only (the operator portal).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar, assert_never

import orjson

from webpubsub.errors import CorruptEnvelope
from webpubsub.protocol.frames import DataMessage, Origin
from webpubsub.protocol.messages import StreamError, StreamInfo
from webpubsub.protocol.payload import DataType, Payload

E = TypeVar("E", bound=enum.Enum)


class Scope(enum.Enum):
    ALL = "all"
    USER = "user"
    GROUP = "group"
    CONNECTION = "connection"


@dataclass(frozen=True, slots=True)
class Target:
    """Which connections of a hub an operation addresses."""

    scope: Scope
    id: str = ""

    @classmethod
    def all(cls) -> Target:
        return cls(Scope.ALL)

    @classmethod
    def user(cls, user_id: str) -> Target:
        return cls(Scope.USER, user_id)

    @classmethod
    def group(cls, group: str) -> Target:
        return cls(Scope.GROUP, group)

    @classmethod
    def connection(cls, connection_id: str) -> Target:
        return cls(Scope.CONNECTION, connection_id)


class GroupAction(enum.Enum):
    ADD = "add"
    REMOVE = "remove"
    REMOVE_ALL = "remove_all"


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver ``message`` to the target's connections, minus ``excluded``, that match
    the OData ``filter`` (the filter's text; empty selects every connection)."""

    hub: str
    target: Target
    message: DataMessage
    excluded: frozenset[str] = frozenset()
    filter: str = ""


@dataclass(frozen=True, slots=True)
class Close:
    hub: str
    target: Target
    reason: str
    excluded: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ChangeGroup:
    """Add/remove the target's connections that match ``filter`` to/from ``groups``.

    ``REMOVE_ALL`` leaves every group and ignores ``groups``.
    """

    hub: str
    target: Target
    action: GroupAction
    groups: tuple[str, ...] = ()
    filter: str = ""


@dataclass(frozen=True, slots=True)
class ChangePermission:
    hub: str
    connection_id: str
    permission: str
    grant: bool
    group: str | None = None


@dataclass(frozen=True, slots=True)
class Handover:
    """Node ``to_node`` asks for reliable connection ``connection_id``: its client
    reconnected there. Published on the command stream, so every node sees it at the
    same place among the other commands: the owner sends the connection's state as of
    this point, the new node holds back later commands until that state has arrived."""

    hub: str
    connection_id: str
    token: str
    subprotocols: tuple[str, ...]
    to_node: str
    request_id: str


Command = Send | Close | ChangeGroup | ChangePermission | Handover


@dataclass(frozen=True, slots=True)
class Exists:
    """Does the target (a connection, a user or a group) have a live connection?"""

    hub: str
    target: Target


@dataclass(frozen=True, slots=True)
class HasPermission:
    hub: str
    connection_id: str
    permission: str
    group: str | None = None


@dataclass(frozen=True, slots=True)
class GroupMember:
    connection_id: str
    user_id: str | None


@dataclass(frozen=True, slots=True)
class ListGroup:
    hub: str
    group: str


@dataclass(frozen=True, slots=True)
class GroupRoom:
    """May connection ``connection_id`` join ``group`` under a limit of ``limit`` groups?
    ``None``: not a live connection here; ``True``: it is a member, or in fewer groups;
    ``False``: it is in ``limit`` groups or more (the asking node's setting: the nodes of
    a cluster share one configuration)."""

    hub: str
    connection_id: str
    group: str
    limit: int


Query = Exists | HasPermission | ListGroup | GroupRoom
Answer = bool | None | tuple[GroupMember, ...]


# -- the wire codec ----------------------------------------------------------------------
#
# A networked backplane carries commands, queries and answers as bytes:
#
#     version (1 byte) | header length (4 bytes, big-endian) | header (JSON) | data
#
# ``data`` is a Send's payload, raw (no base64, no copy into the JSON); every other
# envelope has none. Decoding checks everything and raises only CorruptEnvelope.

WIRE_VERSION = 1
_HEAD = struct.Struct(">BI")
MAX_HEADER_BYTES = 1 << 20
"""Ids, names and filters are bounded far below this; a longer header is corrupt."""


def encode_command(command: Command) -> bytes:
    """``command`` as bytes for another node (:func:`decode_command` reads it back)."""
    data = b""
    match command:
        case Send():
            message = command.message
            header: dict[str, object] = {
                "k": "send",
                "h": command.hub,
                "t": _target(command.target),
                "dt": message.payload.data_type.value,
                "o": message.origin.value,
                "g": message.group,
                "u": message.from_user_id,
                "x": sorted(command.excluded),
                "f": command.filter,
            }
            if message.stream is not None:
                header["s"] = _stream(message.stream)
            data = message.payload.data
        case Close():
            header = {
                "k": "close",
                "h": command.hub,
                "t": _target(command.target),
                "r": command.reason,
                "x": sorted(command.excluded),
            }
        case ChangeGroup():
            header = {
                "k": "group",
                "h": command.hub,
                "t": _target(command.target),
                "a": command.action.value,
                "gs": list(command.groups),
                "f": command.filter,
            }
        case ChangePermission():
            header = {
                "k": "perm",
                "h": command.hub,
                "c": command.connection_id,
                "p": command.permission,
                "y": command.grant,
                "g": command.group,
            }
        case Handover():
            header = {
                "k": "handover",
                "h": command.hub,
                "c": command.connection_id,
                "tk": command.token,
                "sp": list(command.subprotocols),
                "to": command.to_node,
                "rq": command.request_id,
            }
        case _:
            assert_never(command)
    return _pack(header, data)


def _stream(info: StreamInfo) -> list[object]:
    error = info.error
    errors = None if error is None else [error.name, error.message, error.user_error_code]
    return [info.stream_id, info.sequence_id, info.end, errors]


def _read_stream(value: object) -> StreamInfo:
    """The ``stream`` of a group message from its header (see :func:`_stream`)."""
    if not (isinstance(value, list) and len(value) == 4):
        raise CorruptEnvelope("'s' must be [id, sequence id, end, error]")
    r = _Reader(dict(zip(("i", "n", "e", "r"), value, strict=True)))
    error = None
    if value[3] is not None:
        if not (isinstance(value[3], list) and len(value[3]) == 3):
            raise CorruptEnvelope("a stream error must be [name, message, code]")
        er = _Reader(dict(zip(("n", "m", "c"), value[3], strict=True)))
        error = StreamError(er.text("n"), er.text("m"), er.opt_text("c"))
    return StreamInfo(r.text("i"), r.count("n"), r.flag("e"), error)


def decode_command(raw: bytes) -> Command:
    header, data = _unpack(raw)
    r = _Reader(header)
    kind = r.text("k")
    if kind == "send":
        message = DataMessage(
            Payload(r.choice("dt", DataType), data),
            r.choice("o", Origin),
            r.opt_text("g"),
            r.opt_text("u"),
            _read_stream(header["s"]) if "s" in header else None,
        )
        return Send(r.text("h"), r.target("t"), message, frozenset(r.texts("x")), r.text("f"))
    if data:
        raise CorruptEnvelope(f"a {kind!r} command carries no data")
    if kind == "close":
        return Close(r.text("h"), r.target("t"), r.text("r"), frozenset(r.texts("x")))
    if kind == "group":
        return ChangeGroup(
            r.text("h"),
            r.target("t"),
            r.choice("a", GroupAction),
            tuple(r.texts("gs")),
            r.text("f"),
        )
    if kind == "perm":
        return ChangePermission(r.text("h"), r.text("c"), r.text("p"), r.flag("y"), r.opt_text("g"))
    if kind == "handover":
        return Handover(
            r.text("h"), r.text("c"), r.text("tk"), tuple(r.texts("sp")), r.text("to"), r.text("rq")
        )
    raise CorruptEnvelope(f"unknown command {kind!r}")


@dataclass(frozen=True, slots=True)
class StreamSession:
    """An open group stream of a connection being handed over (its publisher recovers
    on the node it moves to and goes on from ``expected``)."""

    stream_id: str
    group: str
    no_echo: bool
    idle_timeout: float
    """Seconds (as :attr:`~webpubsub.core.streams.GroupStream.idle_timeout`)."""
    idle_left: float
    """Seconds left before it would time out, as of the handover."""
    expected: int
    carried: int


@dataclass(frozen=True, slots=True)
class SessionState:
    """A reliable connection, as its owner hands it to the node its client moved to."""

    hub: str
    connection_id: str
    user_id: str | None
    subprotocol: str
    state: str
    groups: tuple[str, ...]
    permissions: Mapping[str, object]
    """``Permissions.snapshot()``."""
    reconnection_token: str
    ack_ids: tuple[int, ...]
    next_sequence_id: int
    frames: tuple[tuple[int, bytes], ...]
    """The unacknowledged frames with their sequence ids, in order."""
    events_sent: int = 0
    """How many events were sent for it (its next ``ce-id`` follows)."""
    from_node: str | None = None
    """The node that hands it over (None from a node that does not say)."""
    connected_at: float | None = None
    """When it connected (epoch seconds; None from a node that does not say)."""
    messages_in: int = 0
    """Frames its client sent so far (as :attr:`Connection.messages_in`)."""
    messages_out: int = 0
    """Messages sent to it so far (as :attr:`Connection.messages_out`)."""
    streams: tuple[StreamSession, ...] = ()
    """The group streams it has open."""


def encode_session(request_id: str, session: SessionState | str) -> bytes:
    """The owner's answer to a :class:`Handover`: the state, or why it cannot be had."""
    if isinstance(session, str):
        return _pack({"k": "refused", "rq": request_id, "why": session}, b"")
    header: dict[str, object] = {
        "k": "session",
        "rq": request_id,
        "h": session.hub,
        "c": session.connection_id,
        "u": session.user_id,
        "sp": session.subprotocol,
        "st": session.state,
        "gs": list(session.groups),
        "pm": session.permissions,
        "tk": session.reconnection_token,
        "ak": list(session.ack_ids),
        "nx": session.next_sequence_id,
        "fr": [[seq, len(frame)] for seq, frame in session.frames],
        "ev": session.events_sent,
    }
    if session.from_node is not None:
        header["fn"] = session.from_node
    if session.connected_at is not None:
        header["ca"] = session.connected_at
    if session.messages_in or session.messages_out:
        header["mi"], header["mo"] = session.messages_in, session.messages_out
    if session.streams:
        header["ss"] = [
            [s.stream_id, s.group, s.no_echo, s.idle_timeout, s.idle_left, s.expected, s.carried]
            for s in session.streams
        ]
    return _pack(header, b"".join(frame for _, frame in session.frames))


def decode_session(raw: bytes) -> tuple[str, SessionState | str]:
    """(request id, the state or the refusal's reason); :class:`CorruptEnvelope` else."""
    return _session(*_unpack(raw))


def _session(header: dict[str, object], data: bytes) -> tuple[str, SessionState | str]:
    r = _Reader(header)
    kind, request_id = r.text("k"), r.text("rq")
    if kind == "refused":
        return request_id, r.text("why")
    if kind != "session":
        raise CorruptEnvelope(f"not a session: {kind!r}")
    sizes, acks, permissions = header.get("fr"), header.get("ak"), header.get("pm")
    if (
        not isinstance(sizes, list)
        or not isinstance(acks, list)
        or not isinstance(permissions, dict)
    ):
        raise CorruptEnvelope("a session needs frames, ack ids and permissions")
    frames: list[tuple[int, bytes]] = []
    offset = 0
    for item in sizes:
        if not (isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item)):
            raise CorruptEnvelope("a frame is [sequence id, length]")
        seq, length = item
        if length < 0 or offset + length > len(data):
            raise CorruptEnvelope("the frames run past the data")
        frames.append((seq, data[offset : offset + length]))
        offset += length
    if offset != len(data) or not all(type(a) is int for a in acks):
        raise CorruptEnvelope("a session's data and ack ids do not match its header")
    next_id, events, from_node = header.get("nx"), header.get("ev", 0), header.get("fn")
    if type(next_id) is not int or type(events) is not int:
        raise CorruptEnvelope("'nx' and 'ev' must be integers")
    if from_node is not None and not isinstance(from_node, str):
        raise CorruptEnvelope("'fn' must be a string")
    connected_at, m_in, m_out = header.get("ca"), header.get("mi", 0), header.get("mo", 0)
    if connected_at is not None and (
        isinstance(connected_at, bool)
        or not isinstance(connected_at, int | float)
        or not math.isfinite(connected_at)
    ):
        raise CorruptEnvelope("'ca' must be a number")
    if type(m_in) is not int or type(m_out) is not int or m_in < 0 or m_out < 0:
        raise CorruptEnvelope("'mi' and 'mo' must be counts")
    return request_id, SessionState(
        hub=r.text("h"),
        connection_id=r.text("c"),
        user_id=r.opt_text("u"),
        subprotocol=r.text("sp"),
        state=r.text("st"),
        groups=tuple(r.texts("gs")),
        permissions=permissions,
        reconnection_token=r.text("tk"),
        ack_ids=tuple(acks),
        next_sequence_id=next_id,
        frames=tuple(frames),
        events_sent=events,
        from_node=from_node,
        connected_at=float(connected_at) if connected_at is not None else None,
        messages_in=m_in,
        messages_out=m_out,
        streams=_read_streams(header.get("ss", [])),
    )


def _read_streams(value: object) -> tuple[StreamSession, ...]:
    """A session's open streams (see :func:`encode_session`)."""
    if not isinstance(value, list):
        raise CorruptEnvelope("'ss' must be a list")
    streams = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 7):
            raise CorruptEnvelope("a stream is [id, group, no echo, timeout, left, next, bytes]")
        r = _Reader(dict(zip(("i", "g", "e", "t", "l", "n", "b"), item, strict=True)))
        timeout, left = item[3], item[4]
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in (timeout, left)
        ):
            raise CorruptEnvelope("a stream's timeouts must be non-negative numbers")
        streams.append(
            StreamSession(
                r.text("i"),
                r.text("g"),
                r.flag("e"),
                float(timeout),
                float(left),
                r.count("n"),
                r.count("b"),
            )
        )
    return tuple(streams)


# -- surveys: opaque questions to every node, for observation only ---------------------

MAX_SURVEY_REQUEST_BYTES = 64 * 1024
"""The largest survey request body; a longer one is refused before it is sent."""
MAX_SURVEY_ANSWER_BYTES = 1024 * 1024
"""The largest answer body; a node's longer answer is dropped (it counts as no answer).
A request may ask for less (:attr:`SurveyRequest.limit`)."""
MAX_SURVEY_TIMEOUT = 30.0
"""The longest a survey may wait for its answers, in seconds."""


@dataclass(frozen=True, slots=True)
class SurveyRequest:
    """Node ``from_node`` asks every node ``body`` (opaque bytes), waiting ``timeout``
    seconds for their answers (an answerer still busy after that is cancelled), each
    answer at most ``limit`` bytes (a longer one is not sent: the asker sees None)."""

    request_id: str
    from_node: str
    timeout: float
    body: bytes
    limit: int = MAX_SURVEY_ANSWER_BYTES


@dataclass(frozen=True, slots=True)
class SurveyReply:
    """Node ``node_id``'s answer to survey ``request_id``: ``body``, or ``None`` when it
    has no answer (no answerer, the answerer failed or took too long, or its answer
    was too large)."""

    request_id: str
    node_id: str
    body: bytes | None


def encode_survey_request(request: SurveyRequest) -> bytes:
    """``request`` as bytes: the header, then the body raw (:func:`decode_survey_request`)."""
    header: dict[str, object] = {
        "k": "survey",
        "rq": request.request_id,
        "fr": request.from_node,
        "tm": request.timeout,
        "lm": request.limit,
    }
    return _pack(header, request.body)


def decode_survey_request(raw: bytes) -> SurveyRequest:
    header, data = _unpack(raw)
    r = _Reader(header)
    if r.text("k") != "survey":
        raise CorruptEnvelope("not a survey request")
    timeout = header.get("tm")
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_SURVEY_TIMEOUT
    ):
        raise CorruptEnvelope(f"'tm' must be a number of seconds in (0, {MAX_SURVEY_TIMEOUT}]")
    if len(data) > MAX_SURVEY_REQUEST_BYTES:
        raise CorruptEnvelope("the survey request is too large")
    limit = header.get("lm", MAX_SURVEY_ANSWER_BYTES)  # absent: a node of an older version
    if type(limit) is not int or not 0 < limit <= MAX_SURVEY_ANSWER_BYTES:
        raise CorruptEnvelope(f"'lm' must be a number of bytes in (0, {MAX_SURVEY_ANSWER_BYTES}]")
    return SurveyRequest(r.text("rq"), r.text("fr"), float(timeout), data, limit)


def encode_survey_reply(reply: SurveyReply) -> bytes:
    """``reply`` as bytes for the asker's answer channel (read by :func:`decode_survey_reply`)."""
    header: dict[str, object] = {
        "k": "surveyed",
        "rq": reply.request_id,
        "n": reply.node_id,
        "a": reply.body is not None,
    }
    return _pack(header, reply.body or b"")


def decode_survey_reply(raw: bytes) -> SurveyReply:
    header, data = _unpack(raw)
    r = _Reader(header)
    if r.text("k") != "surveyed":
        raise CorruptEnvelope("not a survey reply")
    answered = r.flag("a")
    if not answered and data:
        raise CorruptEnvelope("a survey reply without an answer carries no data")
    if len(data) > MAX_SURVEY_ANSWER_BYTES:
        raise CorruptEnvelope("the survey answer is too large")
    return SurveyReply(r.text("rq"), r.text("n"), data if answered else None)


def encode_query(query: Query) -> bytes:
    match query:
        case Exists():
            header: dict[str, object] = {"k": "exists", "h": query.hub, "t": _target(query.target)}
        case HasPermission():
            header = {
                "k": "hasperm",
                "h": query.hub,
                "c": query.connection_id,
                "p": query.permission,
                "g": query.group,
            }
        case ListGroup():
            header = {"k": "list", "h": query.hub, "g": query.group}
        case GroupRoom():
            header = {
                "k": "room",
                "h": query.hub,
                "c": query.connection_id,
                "g": query.group,
                "n": query.limit,
            }
        case _:
            assert_never(query)
    return _pack(header, b"")


def decode_query(raw: bytes) -> Query:
    header, data = _unpack(raw)
    if data:
        raise CorruptEnvelope("a query carries no data")
    r = _Reader(header)
    kind = r.text("k")
    if kind == "exists":
        return Exists(r.text("h"), r.target("t"))
    if kind == "hasperm":
        return HasPermission(r.text("h"), r.text("c"), r.text("p"), r.opt_text("g"))
    if kind == "list":
        return ListGroup(r.text("h"), r.text("g"))
    if kind == "room":
        return GroupRoom(r.text("h"), r.text("c"), r.text("g"), r.count("n"))
    raise CorruptEnvelope(f"unknown query {kind!r}")


def encode_answer(answer: Answer) -> bytes:
    """An answer: ``true``/``false``/``null``, or the members ``[[id, user], ...]``."""
    if answer is None or isinstance(answer, bool):
        return _pack({"a": answer}, b"")
    return _pack({"m": [[m.connection_id, m.user_id] for m in answer]}, b"")


def decode_answer(raw: bytes) -> Answer:
    header, data = _unpack(raw)
    if data:
        raise CorruptEnvelope("an answer carries no data")
    if set(header) == {"a"} and (header["a"] is None or isinstance(header["a"], bool)):
        value: bool | None = header["a"]
        return value
    members = header.get("m")
    if set(header) != {"m"} or not isinstance(members, list):
        raise CorruptEnvelope("not an answer")
    out: list[GroupMember] = []
    for item in members:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not (item[1] is None or isinstance(item[1], str))
        ):
            raise CorruptEnvelope("a group member is [connectionId, userId or null]")
        out.append(GroupMember(item[0], item[1]))
    return tuple(out)


def _target(target: Target) -> list[str]:
    return [target.scope.value, target.id]


def _pack(header: dict[str, object], data: bytes) -> bytes:
    head = orjson.dumps(header)
    return _HEAD.pack(WIRE_VERSION, len(head)) + head + data


def _unpack(raw: bytes) -> tuple[dict[str, object], bytes]:
    if len(raw) < _HEAD.size:
        raise CorruptEnvelope("too short")
    version, length = _HEAD.unpack_from(raw)
    if version != WIRE_VERSION:
        raise CorruptEnvelope(f"wire version {version}, expected {WIRE_VERSION}")
    end = _HEAD.size + length
    if length > MAX_HEADER_BYTES or end > len(raw):
        raise CorruptEnvelope("the header length is out of range")
    try:
        header = orjson.loads(raw[_HEAD.size : end])
    except orjson.JSONDecodeError:
        raise CorruptEnvelope("the header is not JSON") from None
    if not isinstance(header, dict):
        raise CorruptEnvelope("the header is not an object")
    return header, raw[end:]


class _Reader:
    """Typed access to a decoded header; any mismatch is a CorruptEnvelope."""

    def __init__(self, header: dict[str, object]) -> None:
        self._h = header

    def _get(self, key: str) -> object:
        if key not in self._h:
            raise CorruptEnvelope(f"missing {key!r}")
        return self._h[key]

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise CorruptEnvelope(f"{key!r} must be a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self._get(key)
        if value is not None and not isinstance(value, str):
            raise CorruptEnvelope(f"{key!r} must be a string or null")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise CorruptEnvelope(f"{key!r} must be true or false")
        return value

    def count(self, key: str) -> int:
        value = self._get(key)
        if type(value) is not int or value < 0:
            raise CorruptEnvelope(f"{key!r} must be a non-negative integer")
        return value

    def texts(self, key: str) -> list[str]:
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CorruptEnvelope(f"{key!r} must be an array of strings")
        return value

    def choice(self, key: str, kind: type[E]) -> E:
        value = self._get(key)
        try:
            return kind(value)
        except ValueError:
            raise CorruptEnvelope(f"{key!r} is not a {kind.__name__}") from None

    def target(self, key: str) -> Target:
        value = self._get(key)
        if not (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], str)
        ):
            raise CorruptEnvelope(f"{key!r} must be [scope, id]")
        try:
            scope = Scope(value[0])
        except ValueError:
            raise CorruptEnvelope(f"unknown scope {value[0]!r}") from None
        return Target(scope, value[1])
