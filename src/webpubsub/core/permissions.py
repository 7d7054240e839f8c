"""Per-connection group permissions and the role strings that grant them.

(Azure docs: JSON subprotocol, permissions.)

Roles (case-sensitive; unknown ones are ignored):

* ``webpubsub.joinLeaveGroup`` / ``webpubsub.sendToGroup`` — every group;
* ``webpubsub.joinLeaveGroup.<group>`` / ``webpubsub.sendToGroup.<group>`` — exactly
  ``<group>`` (everything after the prefix, dots included);
* ``webpubsub.joinLeaveGroups.<pattern>`` / ``webpubsub.sendToGroups.<pattern>`` —
  groups matching a wildcard pattern (see :func:`compile_group_pattern`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from webpubsub.errors import BadRequest

MAX_PATTERN_STARS = 5
"""Most unescaped ``*`` characters a pattern may hold (``**`` counts as two)."""

_ROLE_PREFIX = "webpubsub."


class Permission(enum.StrEnum):
    """A group permission, named as in the REST ``permissions/{permission}`` path."""

    SEND_TO_GROUP = "sendToGroup"
    JOIN_LEAVE_GROUP = "joinLeaveGroup"

    @classmethod
    def parse(cls, s: str) -> Permission:
        """The permission named ``s`` (case-insensitive); ``BadRequest`` if there is none."""
        wanted = s.lower()
        for permission in cls:
            if permission.value.lower() == wanted:
                return permission
        raise BadRequest(
            "unknown permission: expected sendToGroup or joinLeaveGroup", target="permission"
        )


_LITERAL, _ANY, _STAR, _DOUBLE_STAR = range(4)


class GroupPattern:
    """A compiled wildcard group pattern, matched in time linear in the group's length.

    The pattern is a sequence of tokens (a literal character, ``?``, ``*``, ``**``)
    run as a bit-parallel NFA: bit ``i`` of the state says "the first ``i`` tokens
    matched".  A backtracking regex would take exponential time on hostile group
    names (``*-*-*-*-*`` against ``"-" * 1000``), and group names come from clients.
    """

    __slots__ = ("_accept", "_char_masks", "_dot_stays", "_other_mask", "_star_bits", "_stays")

    def __init__(self, tokens: list[tuple[int, str]]) -> None:
        char_masks: dict[str, int] = {}
        any_one = stays = dot_stays = 0
        star_bits: list[int] = []
        for i, (kind, char) in enumerate(tokens):
            bit = 1 << i
            if kind == _LITERAL:
                char_masks[char] = char_masks.get(char, 0) | bit
            elif kind == _ANY:
                any_one |= bit
            else:
                star_bits.append(bit)
                stays |= bit
                if kind == _DOUBLE_STAR:
                    dot_stays |= bit
        # "?" matches any character but "."; literals match themselves.
        self._char_masks = {c: m | (any_one if c != "." else 0) for c, m in char_masks.items()}
        self._char_masks.setdefault(".", 0)
        self._other_mask = any_one
        self._stays = stays  # stars consume any character but "."
        self._dot_stays = dot_stays  # only "**" consumes "."
        self._star_bits = star_bits
        self._accept = 1 << len(tokens)

    def _closure(self, state: int) -> int:
        for bit in self._star_bits:  # in order, so consecutive stars chain
            if state & bit:
                state |= bit << 1
        return state

    def fullmatch(self, text: str) -> bool:
        state = self._closure(1)
        for char in text:
            mask = self._char_masks.get(char, self._other_mask)
            stay = state & (self._dot_stays if char == "." else self._stays)
            state = self._closure(((state & mask) << 1) | stay)
            if not state:
                return False
        return bool(state & self._accept)


def compile_group_pattern(pattern: str) -> GroupPattern | None:
    """Compile a wildcard group pattern; ``None`` if it is invalid.

    ``?`` is one character other than ``.``, ``*`` zero or more characters other than
    ``.``, ``**`` zero or more of any character, ``\\`` escapes ``\\``, ``*`` and ``?``;
    everything else is literal.  A pattern is invalid when it is empty, holds more than
    :data:`MAX_PATTERN_STARS` unescaped ``*`` or a ``\\`` not followed by ``\\``, ``*``
    or ``?``.  Escaped ``*`` do not count towards the limit.
    """
    if not pattern:
        return None
    tokens: list[tuple[int, str]] = []
    stars = 0
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if i + 1 >= len(pattern) or pattern[i + 1] not in "\\*?":
                return None
            tokens.append((_LITERAL, pattern[i + 1]))
            i += 2
        elif c == "*":
            double = pattern.startswith("**", i)
            tokens.append((_DOUBLE_STAR if double else _STAR, ""))
            stars += 2 if double else 1
            i += 2 if double else 1
        else:
            tokens.append((_ANY, "") if c == "?" else (_LITERAL, c))
            i += 1
    if stars > MAX_PATTERN_STARS:
        return None
    return GroupPattern(tokens)


@dataclass(slots=True)
class _Grants:
    """What one connection holds for one permission."""

    all_groups: bool = False
    groups: set[str] = field(default_factory=set)
    patterns: dict[str, GroupPattern] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)

    def allows(self, group: str) -> bool:
        if group in self.excluded:
            return False
        return (
            self.all_groups
            or group in self.groups
            or any(p.fullmatch(group) for p in self.patterns.values())
        )

    def broadly_allows(self, group: str) -> bool:
        """Whether a grant other than the exact one for ``group`` covers it."""
        return self.all_groups or any(p.fullmatch(group) for p in self.patterns.values())


_NONE = _Grants()
"""What a connection holds for a permission it was never granted: read, never written."""


class Permissions:
    """The mutable group permissions of one connection.

    Grants are: all groups, exact groups and wildcard patterns.  Revoking one group
    removes its exact grant and, when an all-groups or pattern grant still covers it,
    records an explicit exclusion, so ``allows`` answers ``False`` for that group until
    it is granted again (by name or by an all-groups grant, which clears exclusions).
    Revoking with no target removes every grant and exclusion of that permission.
    """

    __slots__ = ("_grants",)

    def __init__(self) -> None:
        self._grants: dict[Permission, _Grants] = {}
        """Only the permissions something was ever granted for (most connections hold
        none: an empty dict costs less than one :class:`_Grants` per permission)."""

    def _held(self, perm: Permission) -> _Grants:
        """What is held for ``perm`` (the shared empty grants if nothing: never mutated)."""
        return self._grants.get(perm, _NONE)

    def _writable(self, perm: Permission) -> _Grants:
        grants = self._grants.get(perm)
        if grants is None:
            grants = self._grants[perm] = _Grants()
        return grants

    @classmethod
    def from_roles(cls, roles: Iterable[str]) -> Permissions:
        """Permissions granted by role strings; unknown or invalid roles are ignored."""
        permissions = cls()
        for role in roles:
            permissions._apply_role(role)
        return permissions

    def _apply_role(self, role: str) -> None:
        if not isinstance(role, str) or not role.startswith(_ROLE_PREFIX):
            return
        rest = role[len(_ROLE_PREFIX) :]
        for permission in Permission:
            name = permission.value
            if rest == name:
                self.grant(permission, None)
            elif rest.startswith(name + ".") and len(rest) > len(name) + 1:
                self.grant(permission, rest[len(name) + 1 :])
            elif rest.startswith(name + "s.") and len(rest) > len(name) + 2:
                pattern = rest[len(name) + 2 :]
                compiled = compile_group_pattern(pattern)
                if compiled is not None:
                    self._writable(permission).patterns[pattern] = compiled

    def allows(self, perm: Permission, group: str) -> bool:
        """Whether the connection may use ``perm`` on ``group``."""
        return self._held(perm).allows(group)

    def grant(self, perm: Permission, target: str | None) -> None:
        """Grant ``perm`` on group ``target``, or on every group when ``target`` is None."""
        grants = self._writable(perm)
        if target is None:
            grants.all_groups = True
            grants.excluded.clear()
        else:
            grants.groups.add(target)
            grants.excluded.discard(target)

    def revoke(self, perm: Permission, target: str | None) -> None:
        """Revoke ``perm`` on group ``target``, or every grant of ``perm`` when None."""
        grants = self._grants.get(perm)
        if grants is None:  # nothing held: nothing to revoke
            return
        if target is None:
            del self._grants[perm]
            return
        grants.groups.discard(target)
        if grants.broadly_allows(target):
            grants.excluded.add(target)

    def has(self, perm: Permission, target: str | None) -> bool:
        """Whether ``perm`` is held on ``target``; for None: all groups, with no exclusion."""
        grants = self._held(perm)
        if target is None:
            return grants.all_groups and not grants.excluded
        return grants.allows(target)

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Everything held, exclusions included, as JSON-ready data (:meth:`restore`)."""
        return {
            permission.value: {
                "all": grants.all_groups,
                "groups": sorted(grants.groups),
                "patterns": sorted(grants.patterns),
                "excluded": sorted(grants.excluded),
            }
            for permission in Permission
            for grants in (self._held(permission),)
        }

    @classmethod
    def restore(cls, data: object) -> Permissions:
        """The permissions of a :meth:`snapshot`; malformed parts are ignored."""
        permissions = cls()
        if not isinstance(data, dict):
            return permissions
        for permission in Permission:
            item = data.get(permission.value)
            if not isinstance(item, dict):
                continue
            grants = permissions._writable(permission)
            grants.all_groups = item.get("all") is True
            grants.groups = {g for g in item.get("groups", ()) if isinstance(g, str)}
            grants.excluded = {g for g in item.get("excluded", ()) if isinstance(g, str)}
            for pattern in item.get("patterns", ()):
                compiled = compile_group_pattern(pattern) if isinstance(pattern, str) else None
                if compiled is not None:
                    grants.patterns[pattern] = compiled
        return permissions

    def roles(self) -> tuple[str, ...]:
        """The grants as role strings (exclusions are not expressible and are left out)."""
        result: list[str] = []
        for permission in Permission:
            grants = self._held(permission)
            prefix = _ROLE_PREFIX + permission.value
            if grants.all_groups:
                result.append(prefix)
            result.extend(f"{prefix}.{group}" for group in sorted(grants.groups))
            result.extend(f"{prefix}s.{pattern}" for pattern in sorted(grants.patterns))
        return tuple(result)

    def __repr__(self) -> str:
        return f"Permissions(roles={self.roles()!r})"
