"""The one error tree of webpubsub.

Every error the service can report carries a stable ``code`` (used as the REST
``x-ms-error-code`` and in logs).  Each boundary maps these errors exactly once:

* REST: :attr:`WebPubSubError.http_status` + a JSON ``ErrorDetail`` body;
* WebSocket handshake: the HTTP status before the upgrade;
* WebSocket session: a close code or a failure ack;
* upstream: the handler's status mapped to accept / reject.

Messages are written for the client: they never contain secrets or internals.
"""

from __future__ import annotations


class WebPubSubError(Exception):
    """Base class: a failure with a stable code and an HTTP status."""

    code: str = "InternalServerError"
    http_status: int = 500

    def __init__(self, message: str, *, target: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target

    def to_error_detail(self) -> dict[str, object]:
        """The REST ``ErrorDetail`` JSON object for this error."""
        detail: dict[str, object] = {"code": self.code, "message": self.message}
        if self.target is not None:
            detail["target"] = self.target
        return detail


class BadRequest(WebPubSubError):
    """The request is malformed: bad name, bad parameter, bad body."""

    code = "BadRequest"
    http_status = 400


class InvalidName(BadRequest):
    """A hub, group, user, connection or event name breaks its rules."""

    code = "InvalidName"


class Unauthorized(WebPubSubError):
    """A token is missing, malformed, expired, for another audience or badly signed."""

    code = "Unauthorized"
    http_status = 401


class Forbidden(WebPubSubError):
    """The caller is authenticated but not allowed to do this."""

    code = "Forbidden"
    http_status = 403


class NotFound(WebPubSubError):
    """The addressed connection, user, group or route does not exist."""

    code = "NotFound"
    http_status = 404


class MethodNotAllowed(WebPubSubError):
    code = "MethodNotAllowed"
    http_status = 405


class PayloadTooLarge(WebPubSubError):
    code = "PayloadTooLarge"
    http_status = 413


class UnsupportedMediaType(BadRequest):
    """The body's Content-Type is not one the operation accepts (answered with 400)."""

    code = "UnsupportedMediaType"


class ConfigError(WebPubSubError):
    """The service configuration is invalid; ``problems`` lists every finding."""

    code = "InvalidConfiguration"
    http_status = 500

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems) if problems else "invalid configuration")
        self.problems = problems


class UpstreamError(WebPubSubError):
    """The event handler failed: unreachable, timed out, non-2xx or unusable answer.

    ``status`` is the handler's HTTP status when it answered at all.
    """

    code = "UpstreamError"
    http_status = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NoEventHandler(UpstreamError):
    """No event handler of the hub subscribes to this user event."""

    def __init__(self, event: str) -> None:
        super().__init__(f"No event handler accepts '{event}' events.")
        self.event = event


class ConnectRejected(WebPubSubError):
    """The ``connect`` handler refused the client; the handshake answers ``status``."""

    code = "ConnectRejected"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.http_status = status


class SlowClient(WebPubSubError):
    """A connection's outbox overflowed: the client does not read fast enough."""

    code = "SlowClient"
    http_status = 503


class ServiceUnavailable(WebPubSubError):
    code = "ServiceUnavailable"
    http_status = 503
