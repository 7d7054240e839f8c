"""What one connection may send: token buckets over messages and bytes (no clock read).

Each inbound message (a data frame, or a WebSocket ping) takes one token from the
message bucket and its size from the byte bucket; the buckets refill at their rate
and hold one second's worth (the byte bucket at least one largest message, so that
any message the service accepts can pass).  The caller passes the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from webpubsub.core.settings import HubSettings


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; starts full."""

    rate: float
    capacity: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, capacity: float, now: float) -> TokenBucket:
        return cls(rate, capacity, capacity, now)

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens at time ``now``; False (nothing taken) if too few."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class InboundLimit:
    """The inbound budget of one connection of a hub."""

    __slots__ = ("_bytes", "_messages")

    def __init__(self, settings: HubSettings, max_message_bytes: int, now: float) -> None:
        # The buckets keep the rates: no reference to ``settings`` (for a hub with no
        # settings of its own, a copy made for this connection).
        messages = settings.client_messages_per_second
        octets = settings.client_bytes_per_second
        self._messages = TokenBucket.full(messages, messages, now)
        self._bytes = TokenBucket.full(octets, max(octets, max_message_bytes), now)

    def admit(self, size: int, now: float) -> str | None:
        """Count one message of ``size`` bytes; the reason it is refused, if it is."""
        if not self._messages.take(1, now):
            return (
                "TooManyRequests: the client sent more than "
                f"{self._messages.rate} messages per second."
            )
        if not self._bytes.take(size, now):
            return (
                f"TooManyRequests: the client sent more than {self._bytes.rate} bytes per second."
            )
        return None
