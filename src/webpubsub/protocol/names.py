"""Name rules for hubs, groups, users, connections and events (Azure REST API reference).

Every ``validate_*`` function returns its argument unchanged when it is valid and
raises :class:`~webpubsub.errors.InvalidName` (a ``BadRequest``, HTTP 400) otherwise.
Hub names are case-insensitive: :func:`hub_key` gives the canonical lower-case key.
All other names are case-sensitive.
"""

from __future__ import annotations

import functools
import re

from webpubsub.errors import InvalidName

HUB_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_`,.[\]]{0,127}$")
"""The REST spec's hub pattern; always applied with ``fullmatch`` (no trailing newline)."""

EVENT_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")
"""Allowed names of user events sent by subprotocol clients."""

MAX_HUB_LENGTH = 128
"""The longest hub name :data:`HUB_PATTERN` allows."""
MAX_NAME_LENGTH = 1024
"""Upper bound on group names, user ids and connection ids."""


@functools.lru_cache(maxsize=256)
def _is_hub(name: str) -> bool:
    """Whether ``name`` matches :data:`HUB_PATTERN` (the same few hubs on every request:
    each matched once; a REST call checks its hub twice, in the router and the operation)."""
    return HUB_PATTERN.fullmatch(name) is not None


def validate_hub(name: str) -> str:
    """Return ``name`` if it matches :data:`HUB_PATTERN`."""
    if isinstance(name, str) and len(name) <= MAX_HUB_LENGTH:  # (what the cache may keep)
        valid = _is_hub(name)
    else:  # too long (any length may be sent), or no str
        valid = isinstance(name, str) and HUB_PATTERN.fullmatch(name) is not None
    if not valid:
        raise InvalidName(
            "invalid hub name: it must start with a letter and contain at most 128 "
            "characters from A-Z, a-z, 0-9 and _`,.[]",
            target="hub",
        )
    return name


def hub_key(name: str) -> str:
    """The canonical (validated, lower-cased) key of a hub: hubs are case-insensitive."""
    return validate_hub(name).lower()


def validate_group(name: str) -> str:
    """Return ``name`` if it is a valid group name: 1..1024 characters, not only whitespace."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH or name.isspace():
        raise InvalidName(
            "invalid group name: it must be 1 to 1024 characters long and not only whitespace",
            target="group",
        )
    return name


def _validate_id(value: str, what: str, target: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_NAME_LENGTH:
        raise InvalidName(f"invalid {what}: it must be 1 to 1024 characters long", target=target)
    return value


def validate_user_id(user_id: str) -> str:
    """Return ``user_id`` if it is 1..1024 characters long."""
    return _validate_id(user_id, "user id", "userId")


def validate_connection_id(connection_id: str) -> str:
    """Return ``connection_id`` if it is 1..1024 characters long."""
    return _validate_id(connection_id, "connection id", "connectionId")


def validate_event_name(name: str) -> str:
    """Return ``name`` if it matches :data:`EVENT_NAME_PATTERN`."""
    if not isinstance(name, str) or EVENT_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidName(
            "invalid event name: it must start with a letter and contain at most 128 "
            "characters from A-Z, a-z, 0-9 and _.-",
            target="event",
        )
    return name
