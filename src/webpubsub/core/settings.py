"""Event-handler settings of a hub, and which handler an event goes to.

Mirrors the Azure portal's per-hub settings (Azure docs: CloudEvents): handlers are
tried in order and the first whose pattern matches an event gets it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from urllib.parse import quote

SYSTEM_EVENTS = frozenset({"connect", "connected", "disconnected"})
GROUP_PRESENCE_EVENTS = frozenset({"joined", "left"})
"""A connection joined a group, or left one (Azure's hub settings: ``groupPresenceEvents``)."""


@dataclass(frozen=True)
class GroupPresenceEvents:
    """Which group presence events a handler gets: ``event_names`` (``joined``,
    ``left``; none: no event) for the groups matching one of ``group_filters`` (none:
    every group). A filter is a group name in which ``*`` stands for any run of
    characters (``room-*``, ``*``); names compare case-sensitively, as group names do.
    """

    event_names: frozenset[str] = frozenset()
    group_filters: tuple[str, ...] = ()

    @cached_property
    def _globs(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(f.split("*")) for f in self.group_filters)

    def matches(self, event: str, group: str) -> bool:
        if event not in self.event_names:
            return False
        return not self.group_filters or any(_glob_matches(g, group) for g in self._globs)


def _glob_matches(pieces: tuple[str, ...], name: str) -> bool:
    """Whether ``name`` matches the filter split on ``*`` into ``pieces``, in linear
    time (a client chooses group names: no backtracking): it starts with the first
    piece, ends with the last, and holds the middle ones in order; for ``*``-only
    globs the leftmost match of each middle piece is always as good as any.
    """
    if len(pieces) == 1:
        return name == pieces[0]
    first, *middle, last = pieces
    if len(name) < len(first) + len(last):
        return False
    if not (name.startswith(first) and name.endswith(last)):
        return False
    at, end = len(first), len(name) - len(last)
    for piece in middle:
        found = name.find(piece, at, end)
        if found < 0:
            return False
        at = found + len(piece)
    return True


@dataclass(frozen=True, slots=True)
class EventHandlerSettings:
    """One ``[[hubs.NAME.event_handlers]]`` entry.

    ``user_event_pattern``: ``"*"`` (all), ``"a,b"`` (a list), ``"message"`` (one
    name) or ``""`` (none); names compare case-insensitively, items trimmed.
    """

    url_template: str
    user_event_pattern: str = ""
    system_events: frozenset[str] = field(default_factory=frozenset)
    timeout_seconds: float = 20.0
    group_presence_events: GroupPresenceEvents | None = None

    def handles_group_presence(self, event: str, group: str) -> bool:
        presence = self.group_presence_events
        return presence is not None and presence.matches(event, group)

    def handles_user_event(self, name: str) -> bool:
        items = [p.strip().lower() for p in self.user_event_pattern.split(",")]
        items = [p for p in items if p]
        return "*" in items or name.lower() in items

    def handles_system_event(self, name: str) -> bool:
        return name in self.system_events

    def url_for(self, hub: str, event: str) -> str:
        """The template with ``{hub}`` and ``{event}`` substituted, URL-escaped."""
        return _url_for(self.url_template, hub, event)


@lru_cache(maxsize=1024)
def _url_for(template: str, hub: str, event: str) -> str:
    """Every event of a hub asks for the same few URLs (its event and ``validate``)."""
    return template.replace("{hub}", quote(hub, safe="")).replace("{event}", quote(event, safe=""))


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Settings of one hub. ``name`` is the key as configured (compared lower-cased)."""

    name: str
    anonymous_connect: bool = False
    keepalive_seconds: int = 20
    max_groups_per_connection: int = 1000
    """Groups one connection may be in at once: a join past it is refused."""
    client_messages_per_second: int = 1000
    """Messages (data, WebSocket pings) one connection may send per second, with a burst
    of one second's worth: past it the connection is closed (``TooManyRequests``)."""
    client_bytes_per_second: int = 4_194_304
    """Bytes one connection may send per second, with a burst of one second's worth (at
    least one message of ``server.max_message_bytes``)."""
    event_handlers: tuple[EventHandlerSettings, ...] = ()

    def handler_for_system_event(self, name: str) -> EventHandlerSettings | None:
        return _first(self.event_handlers, lambda h: h.handles_system_event(name))

    def handler_for_user_event(self, name: str) -> EventHandlerSettings | None:
        return _first(self.event_handlers, lambda h: h.handles_user_event(name))

    def handler_for_group_presence(self, event: str, group: str) -> EventHandlerSettings | None:
        """The first handler taking ``event`` (``joined``/``left``) of ``group``."""
        if not self.wants_group_presence:
            return None
        return _first(self.event_handlers, lambda h: h.handles_group_presence(event, group))

    @property
    def wants_group_presence(self) -> bool:
        """Whether any handler takes a group presence event (a fast check per join)."""
        return any(h.group_presence_events is not None for h in self.event_handlers)


def _first(
    handlers: Sequence[EventHandlerSettings], pred: Callable[[EventHandlerSettings], bool]
) -> EventHandlerSettings | None:
    for h in handlers:
        if pred(h):
            return h
    return None
