"""The invocations one connection has open (``invoke`` on the JSON subprotocols).

An invocation is open from the moment its ``invoke`` arrives until its
``invokeResponse`` is sent or the client cancels it. While open its id may not be
used again (a duplicate is refused), and a connection has at most ``limit`` open
(the next is refused at once, not queued). Each open invocation holds the handle of
its handler call once that started (``None`` while it waits behind the
connection's earlier messages), so a cancel can stop it. No I/O, no asyncio: the
node keeps its tasks here.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from webpubsub.errors import DuplicateInvocation, TooManyInvocations

DEFAULT_MAX_INVOCATIONS = 16
"""Invocations one connection may have open at a time."""

H = TypeVar("H")


class Invocations(Generic[H]):
    """Open invocations by id, each with its call's handle (None: not started)."""

    __slots__ = ("_open", "limit")

    def __init__(self, limit: int = DEFAULT_MAX_INVOCATIONS) -> None:
        self.limit = limit
        self._open: dict[str, H | None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, invocation_id: object) -> bool:
        return invocation_id in self._open

    def open(self, invocation_id: str) -> None:
        """Open ``invocation_id``; raises :class:`DuplicateInvocation` when it is open
        already, :class:`TooManyInvocations` when ``limit`` are."""
        if invocation_id in self._open:
            raise DuplicateInvocation(invocation_id)
        if len(self._open) >= self.limit:
            raise TooManyInvocations(self.limit)
        self._open[invocation_id] = None

    def start(self, invocation_id: str, handle: H) -> bool:
        """Record the call of an open invocation; False when it is not open (cancelled
        while it waited: the call must not be made)."""
        if invocation_id not in self._open:
            return False
        self._open[invocation_id] = handle
        return True

    def close(self, invocation_id: str) -> H | None:
        """Close ``invocation_id`` (answered or cancelled): its call's handle, if any."""
        return self._open.pop(invocation_id, None)

    def close_all(self) -> dict[str, H | None]:
        """Close every invocation (the connection ended or dropped): each id with its
        call's handle (None: not started)."""
        closed, self._open = self._open, {}
        return closed
