"""WebSocket keep-alive for every client connection, in one timer per interval.

What aiohttp's ``heartbeat`` does with a timer (and a callback per chunk received)
for each connection, done here by one sweep for all the connections of a hub's
``keepalive_seconds``: a connection silent for an interval is pinged; one still
silent half an interval after the ping is taken for dead and closed (1006).

The sweep runs ``TICKS`` times per interval. A member counts the ticks it stayed
silent: it is pinged at ``PING_TICK`` (after 1 to 1.25 intervals of silence, as
the ticks fall) and expires at ``EXPIRE_TICK``, half an interval after its ping.
A dead client is closed 1.5 to 1.75 intervals after it last sent anything
(aiohttp: 1.5). Any bytes from the client count as an answer, as in aiohttp.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger("webpubsub.server")

TICKS = 4
"""Sweeps per interval."""

PING_TICK = TICKS
"""Silent ticks after which a member is pinged: one interval."""

EXPIRE_TICK = PING_TICK + TICKS // 2
"""Silent ticks after which a member is closed: half an interval after its ping."""


class Beat(Protocol):
    """What the sweep needs of a connection."""

    heard: bool
    """Set by the connection's reader on anything received; cleared by each sweep."""
    silent: int
    """Sweeps since it was last heard (the sweep's own count)."""

    @property
    def gone(self) -> bool:
        """The connection is closed (or closing): nothing more to watch."""
        ...

    def ping(self) -> None: ...

    def expire(self) -> None:
        """Close the connection: its client did not answer the ping."""
        ...


class KeepAlive:
    """Every watched connection, swept once per ``interval / TICKS`` of its interval."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._sweeps: dict[float, Sweep] = {}

    def watch(self, member: Beat, interval: float) -> None:
        sweep = self._sweeps.get(interval)
        if sweep is None:
            sweep = self._sweeps[interval] = Sweep(interval, self._loop)
        sweep.add(member)

    def forget(self, member: Beat) -> None:
        for sweep in self._sweeps.values():  # one per distinct interval: a few
            sweep.discard(member)

    @property
    def watched(self) -> int:
        return sum(len(sweep.members) for sweep in self._sweeps.values())

    def close(self) -> None:
        for sweep in self._sweeps.values():
            sweep.close()
        self._sweeps.clear()


class Sweep:
    """The members of one interval and the timer that sweeps them (armed while any)."""

    def __init__(self, interval: float, loop: asyncio.AbstractEventLoop) -> None:
        self.interval = interval
        self.members: dict[Beat, None] = {}
        """A dict, not a set: less memory per member, in the order they came."""
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None

    def add(self, member: Beat) -> None:
        # Heard as it joins (its handshake): the next sweep, however soon, starts its count.
        member.heard, member.silent = True, 0
        self.members[member] = None
        if self._timer is None:
            self._arm()

    def discard(self, member: Beat) -> None:
        self.members.pop(member, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.members.clear()

    def _arm(self) -> None:
        self._timer = self._loop.call_later(self.interval / TICKS, self.run)

    def run(self) -> None:
        """One sweep (called by the timer, which it re-arms while there are members)."""
        self._timer = None
        gone: list[Beat] = []
        # A copy: a member's ping or close may end other connections meanwhile.
        for member in tuple(self.members):
            if member.gone:
                gone.append(member)
            elif member.heard:
                member.heard, member.silent = False, 0
            else:
                member.silent += 1
                try:
                    if member.silent == PING_TICK:
                        member.ping()
                    elif member.silent >= EXPIRE_TICK:
                        gone.append(member)
                        member.expire()
                except Exception:  # one broken connection must not stop the sweep
                    log.exception("the keep-alive of a connection failed")
        for member in gone:
            self.members.pop(member, None)
        if self.members and self._timer is None:
            self._arm()
