"""Event-handler settings of a hub, and which handler an event goes to.

Mirrors the Azure portal's per-hub settings (Azure docs: CloudEvents): handlers are
tried in order and the first whose pattern matches an event gets it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
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
    def _regex(self) -> re.Pattern[str] | None:
        if not self.group_filters:
            return None
        alternatives = (
            "\\A" + ".*".join(map(re.escape, f.split("*"))) + "\\Z" for f in self.group_filters
        )
        return re.compile("|".join(alternatives), re.DOTALL)

    def matches(self, event: str, group: str) -> bool:
        if event not in self.event_names:
            return False
        regex = self._regex
        return regex is None or regex.match(group) is not None


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
        return self.url_template.replace("{hub}", quote(hub, safe="")).replace(
            "{event}", quote(event, safe="")
        )


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
