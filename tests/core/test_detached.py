"""The bounds on what detached reliable connections hold: per user and service-wide,
the connection detached longest ended first."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from webpubsub.core.connection import Connection
from webpubsub.core.detached import DetachedSessions
from webpubsub.core.permissions import Permissions
from webpubsub.core.reliable import ReliableBuffer
from webpubsub.protocol.frames import ClientProtocol


def reliable(cid: str, user: str | None) -> Connection:
    return Connection(
        connection_id=cid,
        hub="h",
        user_id=user,
        protocol=ClientProtocol.JSON_RELIABLE,
        subprotocol="json.reliable.webpubsub.azure.v1",
        sink=None,
        permissions=Permissions.from_roles(()),
        reliable=ReliableBuffer(),
    )


def test_a_user_over_its_cap_loses_its_oldest_connection_first() -> None:
    sessions = DetachedSessions(max_bytes=10_000, user_max_bytes=250)
    a1, a2, b1 = reliable("a1", "alice"), reliable("a2", "alice"), reliable("b1", "bob")
    for conn in (a1, b1, a2):
        assert sessions.add(conn) == []
    assert sessions.grew(a1, 100) == [] and sessions.grew(b1, 200) == []
    assert sessions.grew(a2, 100) == []
    [(ended, reason)] = sessions.grew(a2, 100)  # alice: 300 > 250
    assert ended is a1 and "one user" in reason and "250 bytes" in reason
    assert (sessions.user_bytes("alice"), sessions.user_bytes("bob")) == (200, 200)
    assert a1 not in sessions and b1 in sessions and len(sessions) == 2


def test_the_service_wide_bound_ends_the_oldest_of_anyone_anonymous_included() -> None:
    sessions = DetachedSessions(max_bytes=300, user_max_bytes=10_000)
    anon, bob, carol = reliable("x", None), reliable("b", "bob"), reliable("c", "carol")
    for conn in (anon, bob, carol):
        sessions.add(conn)
        sessions.grew(conn, 100)
    ended = sessions.grew(carol, 150)  # 450 > 300: the anonymous one, then bob
    assert [(c.connection_id, "all detached connections" in r) for c, r in ended] == [
        ("x", True),
        ("b", True),
    ]
    assert sessions.total_bytes == 250
    sessions.remove(carol)
    sessions.remove(carol)  # twice: a no-op
    assert (sessions.total_bytes, len(sessions), sessions.user_bytes("carol")) == (0, 0, 0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "grow", "remove"]), st.integers(0, 7), st.integers(0, 90)
        ),
        max_size=60,
    )
)
def test_the_bounds_always_hold_and_the_totals_add_up(ops: list[tuple[str, int, int]]) -> None:
    conns = [reliable(f"c{i}", None if i == 0 else f"u{i % 3}") for i in range(8)]
    sessions = DetachedSessions(max_bytes=200, user_max_bytes=120)
    sizes: dict[Connection, int] = {}
    for op, index, size in ops:
        conn = conns[index]
        if op == "add":
            if conn not in sessions:
                sizes[conn] = 0
            ended = sessions.add(conn)
        elif op == "grow":
            ended = sessions.grew(conn, size)
            if conn in sizes:
                sizes[conn] += size
        else:
            sessions.remove(conn)
            sizes.pop(conn, None)
            ended = []
        for victim, _ in ended:
            sizes.pop(victim)
        assert sessions.total_bytes == sum(sizes.values()) <= 200
        for user in ("u0", "u1", "u2"):
            held = sum(s for c, s in sizes.items() if c.user_id == user)
            assert sessions.user_bytes(user) == held <= 120
