"""Permission model: roles, runtime grants and wildcard patterns (Azure's JSON subprotocol
reference, permissions)."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from webpubsub.core.permissions import Permission, Permissions, compile_group_pattern
from webpubsub.errors import BadRequest

SEND = Permission.SEND_TO_GROUP
JOIN = Permission.JOIN_LEAVE_GROUP


# -- Permission names (rest-api permissions/{permission}) ------------------------------


def test_permission_values_are_the_rest_names() -> None:
    assert SEND == "sendToGroup"
    assert JOIN == "joinLeaveGroup"


@pytest.mark.parametrize(
    ("text", "perm"),
    [
        ("sendToGroup", SEND),
        ("SENDTOGROUP", SEND),
        ("joinleavegroup", JOIN),
        ("JoinLeaveGroup", JOIN),
    ],
)
def test_parse_is_case_insensitive(text: str, perm: Permission) -> None:
    assert Permission.parse(text) is perm


@pytest.mark.parametrize("text", ["", "send", "sendToGroups", "joinGroup", " sendToGroup"])
def test_parse_rejects_unknown_names(text: str) -> None:
    with pytest.raises(BadRequest):
        Permission.parse(text)


# -- roles (Azure docs: JSON subprotocol, permissions) ---------------------------------------------


def test_no_roles_grant_nothing() -> None:
    p = Permissions.from_roles([])
    assert not p.allows(SEND, "g") and not p.allows(JOIN, "g")
    assert p.roles() == ()


def test_all_groups_roles() -> None:
    p = Permissions.from_roles(["webpubsub.joinLeaveGroup"])
    assert p.allows(JOIN, "any") and p.allows(JOIN, "a.b.c")
    assert not p.allows(SEND, "any")  # joining does not grant publishing
    assert p.has(JOIN, None) and not p.has(SEND, None)


def test_exact_group_role_takes_everything_after_the_prefix() -> None:
    p = Permissions.from_roles(["webpubsub.sendToGroup.a.b", "webpubsub.sendToGroup.chat-*"])
    assert p.allows(SEND, "a.b")
    assert not p.allows(SEND, "a")
    assert p.allows(SEND, "chat-*")  # exact roles are literal, not patterns
    assert not p.allows(SEND, "chat-1")
    assert not p.has(SEND, None)


def test_roles_are_case_sensitive() -> None:
    p = Permissions.from_roles(
        ["webpubsub.SendToGroup", "WebPubSub.joinLeaveGroup", "webpubsub.sendToGroup.G1"]
    )
    assert not p.allows(SEND, "x")
    assert not p.allows(JOIN, "x")
    assert not p.allows(SEND, "g1")
    assert p.allows(SEND, "G1")


@pytest.mark.parametrize(
    "role",
    [
        "admin",
        "webpubsub",
        "webpubsub.",
        "webpubsub.sendToGroup.",
        "webpubsub.sendToGroups.",
        "webpubsub.sendToGroupx",
        "webpubsub.publish",
        "webpubsub.sendToGroups.a\\b",  # invalid escape
        "webpubsub.sendToGroups.***.***",  # six stars
    ],
)
def test_unknown_or_invalid_roles_are_ignored(role: str) -> None:
    p = Permissions.from_roles([role])
    assert p.roles() == ()
    assert not p.allows(SEND, "a") and not p.allows(SEND, "ab") and not p.allows(SEND, "x.y")


def test_non_string_roles_are_ignored() -> None:
    p = Permissions.from_roles([1, None, "webpubsub.sendToGroup"])  # type: ignore[list-item]
    assert p.roles() == ("webpubsub.sendToGroup",)


# -- wildcard patterns (Azure docs: JSON subprotocol, permissions and its examples) ----------------


@pytest.mark.parametrize(
    ("pattern", "matches", "rejects"),
    [
        ("chat-*", ["chat-1", "chat-room", "chat-"], ["chat.1", "xchat-1", "chat"]),
        (
            "clientA.*",
            ["clientA.alpha", "clientA.1", "clientA."],
            ["clientA.alpha.room1", "clientB.alpha"],
        ),
        (
            "clientA.**",
            ["clientA.alpha", "clientA.alpha.room1", "clientA."],
            ["clientB.anything", "clientA"],
        ),
        ("a.**", ["a.b.c", "a.b"], ["ab.c"]),
        (
            "clientA.rooms.?1",
            ["clientA.rooms.a1", "clientA.rooms.11"],
            ["clientA.rooms.1", "clientA.rooms.a.1"],
        ),
        ("rooms.?1", ["rooms.a1"], ["rooms.1", "rooms..1"]),
        ("literal\\*star", ["literal*star"], ["literalXstar", "literal\\*star"]),
        ("project\\*123", ["project*123"], ["projectX123"]),
        ("q\\?", ["q?"], ["qx"]),
        ("back\\\\slash", ["back\\slash"], ["back\\\\slash", "backslash"]),
        ("**", ["", "a", "a.b.c"], []),
        ("*", ["", "abc"], ["a.b"]),
        ("a+b(c)[d]$", ["a+b(c)[d]$"], ["aab(c)[d]$", "a+b(c)[d]"]),  # regex metachars are literal
        ("x*y", ["xy", "x\ny"], ["x.y"]),
    ],
)
def test_pattern_roles(pattern: str, matches: list[str], rejects: list[str]) -> None:
    for perm, prefix in ((SEND, "webpubsub.sendToGroups."), (JOIN, "webpubsub.joinLeaveGroups.")):
        p = Permissions.from_roles([prefix + pattern])
        other = SEND if perm is JOIN else JOIN
        for group in matches:
            assert p.allows(perm, group), (pattern, group)
            assert not p.allows(other, group)
        for group in rejects:
            assert not p.allows(perm, group), (pattern, group)
        assert not p.has(perm, None)


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [
        ("*a*a*a*a*", True),  # five stars
        ("**.**.*", True),  # ** counts as two: 5
        ("**.**.**", False),  # 6
        ("*a*a*a*a*a*", False),  # 6
        ("\\*\\*\\*\\*\\*\\*", True),  # escaped stars are literals and do not count
        ("a\\", False),  # dangling escape
        ("a\\.", False),  # only \\, \* and \? may be escaped
        ("", False),
    ],
)
def test_star_limit_and_escapes(pattern: str, valid: bool) -> None:
    assert (compile_group_pattern(pattern) is not None) is valid
    p = Permissions.from_roles(["webpubsub.sendToGroups." + pattern])
    assert (p.roles() != ()) is valid


def test_literal_and_pattern_roles_mix() -> None:
    p = Permissions.from_roles(["webpubsub.sendToGroup.lobby", "webpubsub.sendToGroups.room.*"])
    assert p.allows(SEND, "lobby") and p.allows(SEND, "room.1")
    assert not p.allows(SEND, "room.1.x") and not p.allows(SEND, "lobby2")


# -- runtime grants (Azure docs: JSON subprotocol, permissions) ------------------------------------


def test_grant_and_revoke_a_group() -> None:
    p = Permissions()
    p.grant(JOIN, "g1")
    assert p.allows(JOIN, "g1") and p.has(JOIN, "g1")
    assert not p.allows(JOIN, "g2") and not p.has(JOIN, None)
    p.revoke(JOIN, "g1")
    assert not p.allows(JOIN, "g1")
    assert p.roles() == ()


def test_grant_all_then_revoke_one_group_records_an_exclusion() -> None:
    p = Permissions.from_roles(["webpubsub.sendToGroup"])
    p.revoke(SEND, "g1")
    assert not p.allows(SEND, "g1") and not p.has(SEND, "g1")
    assert p.allows(SEND, "g2")
    assert not p.has(SEND, None)  # no longer every group
    p.grant(SEND, "g1")
    assert p.allows(SEND, "g1")
    assert p.has(SEND, None)


def test_grant_all_clears_exclusions() -> None:
    p = Permissions()
    p.grant(SEND, None)
    p.revoke(SEND, "a")
    p.revoke(SEND, "b")
    p.grant(SEND, None)
    assert p.allows(SEND, "a") and p.allows(SEND, "b") and p.has(SEND, None)


def test_revoke_one_group_covered_by_a_pattern() -> None:
    p = Permissions.from_roles(["webpubsub.joinLeaveGroups.room.*"])
    p.revoke(JOIN, "room.1")
    assert not p.allows(JOIN, "room.1")
    assert p.allows(JOIN, "room.2")


def test_revoke_all_removes_every_grant_of_that_permission_only() -> None:
    p = Permissions.from_roles(
        [
            "webpubsub.sendToGroup",
            "webpubsub.sendToGroup.g",
            "webpubsub.sendToGroups.r.*",
            "webpubsub.joinLeaveGroup.g",
        ]
    )
    p.revoke(SEND, "x")
    p.revoke(SEND, None)
    assert not p.allows(SEND, "g") and not p.allows(SEND, "r.1") and not p.allows(SEND, "y")
    assert not p.has(SEND, None)
    assert p.allows(JOIN, "g")
    assert p.roles() == ("webpubsub.joinLeaveGroup.g",)
    p.grant(SEND, None)
    assert p.allows(SEND, "x")  # the old exclusion is gone too


def test_roles_introspection_is_sorted_and_round_trips() -> None:
    roles = [
        "webpubsub.joinLeaveGroups.b.**",
        "webpubsub.sendToGroup.z",
        "webpubsub.sendToGroup.a",
        "webpubsub.sendToGroup",
        "webpubsub.joinLeaveGroup.g",
    ]
    p = Permissions.from_roles(roles)
    assert p.roles() == (
        "webpubsub.sendToGroup",
        "webpubsub.sendToGroup.a",
        "webpubsub.sendToGroup.z",
        "webpubsub.joinLeaveGroup.g",
        "webpubsub.joinLeaveGroups.b.**",
    )
    assert Permissions.from_roles(p.roles()).roles() == p.roles()
    assert "webpubsub.sendToGroup.a" in repr(p)


def test_connections_do_not_share_state() -> None:
    a = Permissions()
    b = Permissions()
    a.grant(SEND, None)
    assert not b.allows(SEND, "g")


def test_a_connection_without_roles_holds_no_grant_structures() -> None:
    """Memory per idle connection: nothing is made for a permission never granted, and
    reading or revoking one never writes to the shared empty grants."""
    p = Permissions.from_roles(["not.a.role"])
    assert p._grants == {}
    assert not p.allows(SEND, "g") and not p.has(SEND, None) and p.roles() == ()
    p.revoke(SEND, "g")
    p.revoke(JOIN, None)
    assert p._grants == {}
    assert p.snapshot()["sendToGroup"] == {
        "all": False,
        "groups": [],
        "patterns": [],
        "excluded": [],
    }
    p.grant(SEND, "g")
    assert list(p._grants) == [SEND]
    assert p.allows(SEND, "g") and not Permissions().allows(SEND, "g")
    p.revoke(SEND, None)
    assert not p.allows(SEND, "g")


# -- property tests -------------------------------------------------------------------------


def _reference_match(pattern: str, text: str) -> bool | None:
    """A slow, obviously-correct matcher of role patterns; None if the pattern is invalid."""
    tokens: list[str] = []  # "?", "*", "**" or "=<literal char>"
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 == len(pattern) or pattern[i + 1] not in "\\*?":
                return None
            tokens.append("=" + pattern[i + 1])
            i += 2
        elif pattern.startswith("**", i):
            tokens.append("**")
            i += 2
        elif pattern[i] in "*?":
            tokens.append(pattern[i])
            i += 1
        else:
            tokens.append("=" + pattern[i])
            i += 1
    if not pattern or sum(len(t) for t in tokens if t in ("*", "**")) > 5:
        return None

    @functools.cache
    def match(t: int, s: int) -> bool:
        if t == len(tokens):
            return s == len(text)
        token = tokens[t]
        if token == "**":
            return any(match(t + 1, k) for k in range(s, len(text) + 1))
        if token == "*":
            k = s
            while True:
                if match(t + 1, k):
                    return True
                if k == len(text) or text[k] == ".":
                    return False
                k += 1
        if s == len(text):
            return False
        if token == "?":
            return text[s] != "." and match(t + 1, s + 1)
        return text[s] == token[1] and match(t + 1, s + 1)

    return match(0, 0)


@given(
    pattern=st.text(alphabet="ab.*?\\", max_size=10),
    groups=st.lists(st.text(alphabet="ab.*?", max_size=8), min_size=1, max_size=10),
)
def test_pattern_matching_agrees_with_a_reference_matcher(pattern: str, groups: list[str]) -> None:
    compiled = compile_group_pattern(pattern)
    p = Permissions.from_roles(["webpubsub.sendToGroups." + pattern])
    for group in groups:
        expected = _reference_match(pattern, group)
        if expected is None:
            assert compiled is None
            assert not p.allows(SEND, group)
        else:
            assert compiled is not None
            assert compiled.fullmatch(group) is expected, (pattern, group)
            assert p.allows(SEND, group) is expected


_ops = st.lists(
    st.tuples(st.sampled_from(["grant", "revoke"]), st.sampled_from([None, "a", "b", "c"])),
    max_size=12,
)


@given(_ops)
def test_grant_revoke_sequences_follow_a_set_model(ops: list[tuple[str, str | None]]) -> None:
    """Model: the set of allowed groups over a small universe, updated operation by operation."""
    universe = {"a", "b", "c", "d"}
    allowed: set[str] = set()
    p = Permissions()
    for op, target in ops:
        getattr(p, op)(JOIN, target)
        targets = universe if target is None else {target}
        allowed = allowed | targets if op == "grant" else allowed - targets
        for group in universe:
            assert p.allows(JOIN, group) is (group in allowed), (ops, group)
        assert not p.allows(SEND, "a")


@pytest.mark.timeout(10)
def test_hostile_group_names_are_matched_in_linear_time() -> None:
    """A backtracking matcher takes hours here; group names come from clients."""
    p = Permissions.from_roles(["webpubsub.sendToGroups.*-*-*-*-*"])
    hostile = "-" * 1023 + "."
    for _ in range(20):
        assert not p.allows(SEND, hostile)
    assert p.allows(SEND, "a-b-c-d-e")
    double = Permissions.from_roles(["webpubsub.joinLeaveGroups.**a**b*"])
    assert not double.allows(Permission.JOIN_LEAVE_GROUP, "a" * 1024)
    assert double.allows(Permission.JOIN_LEAVE_GROUP, "x.a.y.bz")
