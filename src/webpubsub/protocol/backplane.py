"""The backplane envelope: what one node asks of every node.

Every REST operation becomes a :data:`Command` (applied by each node to its own
connections) or a :data:`Query` (answered by each node from its own connections).
Messages are frozen dataclasses so that a networked backplane can encode them
losslessly; the in-memory backplane passes them as they are.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from webpubsub.protocol.frames import DataMessage


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


Command = Send | Close | ChangeGroup | ChangePermission


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


Query = Exists | HasPermission | ListGroup
Answer = bool | None | tuple[GroupMember, ...]
