"""The reliable connections waiting for their clients, and the memory they hold.

A detached reliable connection keeps its unacknowledged buffer, and everything
sent to it meanwhile, for the whole recovery window.  Each one is bounded by its
own budget (:class:`~webpubsub.core.reliable.ReliableBuffer`), but a client that
opens and abandons many of them must not hold that budget many times over: the
bytes they hold together are bounded per user and service-wide.  Past a bound,
the connections detached longest (of that user, or of the whole service) are
the ones to end, oldest first, until the bounds hold again.
"""

from __future__ import annotations

from webpubsub.core.connection import Connection

#: Bytes all detached connections may hold together, by default (256 MiB).
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
#: Bytes the detached connections of one user may hold together, by default (64 MiB).
DEFAULT_USER_MAX_BYTES = 64 * 1024 * 1024


class DetachedSessions:
    """Detached connections in the order they were detached, with their sizes.

    Anonymous connections (no user id) count against the service-wide bound only.
    """

    def __init__(
        self, *, max_bytes: int = DEFAULT_MAX_BYTES, user_max_bytes: int = DEFAULT_USER_MAX_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.user_max_bytes = user_max_bytes
        self._sizes: dict[Connection, int] = {}  # oldest first
        self._users: dict[str, dict[Connection, None]] = {}  # each oldest first
        self._user_bytes: dict[str, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._sizes)

    def __contains__(self, conn: Connection) -> bool:
        return conn in self._sizes

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def user_bytes(self, user_id: str) -> int:
        return self._user_bytes.get(user_id, 0)

    def add(self, conn: Connection) -> list[tuple[Connection, str]]:
        """Count ``conn`` (just detached, holding its buffer); returns the connections to
        end to stay within the bounds, oldest first, each with its reason."""
        if conn in self._sizes:
            return []
        size = conn.reliable.buffered_bytes if conn.reliable is not None else 0
        self._sizes[conn] = 0
        if conn.user_id is not None:
            self._users.setdefault(conn.user_id, {})[conn] = None
        return self.grew(conn, size)

    def grew(self, conn: Connection, size: int) -> list[tuple[Connection, str]]:
        """``conn`` buffered ``size`` more bytes; returns the connections to end, as
        :meth:`add` does (``conn`` itself among them if it is the oldest)."""
        if conn not in self._sizes:
            return []
        self._sizes[conn] += size
        self._bytes += size
        user = conn.user_id
        if user is not None:
            self._user_bytes[user] = self._user_bytes.get(user, 0) + size
        ended: list[tuple[Connection, str]] = []
        if user is not None:
            while self._user_bytes.get(user, 0) > self.user_max_bytes:
                oldest = next(iter(self._users[user]))
                self.remove(oldest)
                ended.append(
                    (oldest, _over("the detached connections of one user", self.user_max_bytes))
                )
        while self._bytes > self.max_bytes:
            oldest = next(iter(self._sizes))
            self.remove(oldest)
            ended.append((oldest, _over("all detached connections", self.max_bytes)))
        return ended

    def remove(self, conn: Connection) -> None:
        """Stop counting ``conn`` (recovered, moved or ended); a no-op if not counted."""
        size = self._sizes.pop(conn, None)
        if size is None:
            return
        self._bytes -= size
        user = conn.user_id
        if user is None:
            return
        peers = self._users.get(user)
        if peers is not None:
            peers.pop(conn, None)
            if not peers:
                del self._users[user]
        left = self._user_bytes.get(user, 0) - size
        if left > 0:
            self._user_bytes[user] = left
        else:
            self._user_bytes.pop(user, None)


def _over(whom: str, limit: int) -> str:
    return (
        f"The connection ended while its client was away: {whom} may hold at most "
        f"{limit} bytes of undelivered messages, and it was the oldest of them."
    )
