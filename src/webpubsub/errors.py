"""The one error tree of webpubsub.

Every error the service can report carries a stable ``code`` (used as the REST
``x-ms-error-code`` and in logs), named as Azure names them where a recording of
live Azure traffic shows the name (docs/compatibility.md lists them).  Each
boundary maps these errors exactly once:

* REST: :attr:`WebPubSubError.http_status` + a JSON ``ErrorDetail`` body;
* WebSocket handshake: the HTTP status before the upgrade;
* WebSocket session: a close code or a failure ack;
* upstream: the handler's status mapped to accept / reject.

Messages are written for the client: they never contain secrets or internals.
"""

from __future__ import annotations


class WebPubSubError(Exception):
    """Base class: a failure with a stable code and an HTTP status.

    ``code`` is the REST ``x-ms-error-code``, in Azure's ``Level.Subject.Reason`` form
    (``Error.BadRequest``, ``Warning.User.NotExisted``); an instance may carry a more
    precise code than its class.
    """

    code: str = "Error.InternalServerError"
    http_status: int = 500
    ack_name: str = "InternalServerError"
    """The ``error.name`` of a failed ``ack`` on the JSON subprotocols."""

    def __init__(self, message: str, *, target: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        if code is not None:
            self.code = code

    def to_error_detail(self) -> dict[str, object]:
        """The REST ``ErrorDetail`` JSON object for this error, as Azure writes it."""
        return {
            "code": self.code,
            "message": self.message,
            "target": self.target,
            "details": None,
            "inner": None,
        }


class BadRequest(WebPubSubError):
    """The request is malformed: bad name, bad parameter, bad body."""

    code = "Error.BadRequest"
    http_status = 400
    ack_name = "BadRequest"


class InvalidParameter(BadRequest):
    """A query parameter or body property failed validation (``target`` names it).

    Azure reports these as ASP.NET validation problem details: the ``ErrorDetail``
    keys plus ``errors`` {target: [message]}, ``title``, ``status`` and the other
    RFC 9457 members.
    """

    def __init__(self, message: str, *, target: str) -> None:
        super().__init__(message, target=target)

    def to_error_detail(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "target": self.target,
            "errors": {self.target: [self.message]},
            "type": None,
            "title": "One or more validation errors occurred.",
            "status": self.http_status,
            "detail": None,
            "instance": None,
            "extensions": {},
        }


class InvalidName(BadRequest):
    """A hub, group, user, connection or event name breaks its rules."""


class Unauthorized(WebPubSubError):
    """A token is missing, malformed, expired, for another audience or badly signed."""

    code = "Error.Unauthorized"
    http_status = 401


class Forbidden(WebPubSubError):
    """The caller is authenticated but not allowed to do this."""

    code = "Error.Forbidden"
    http_status = 403
    ack_name = "Forbidden"


class Duplicate(WebPubSubError):
    """A JSON-subprotocol request repeats the ackId of one that already succeeded."""

    code = "Error.Duplicate"
    http_status = 409
    ack_name = "Duplicate"

    def __init__(self, ack_id: int) -> None:
        super().__init__(f"Message with ack-id: {ack_id} has been processed")


class DuplicateInvocation(Duplicate):
    """An ``invoke`` reuses the id of an invocation still open on its connection."""

    def __init__(self, invocation_id: str) -> None:
        WebPubSubError.__init__(self, f"Invocation '{invocation_id}' is already in progress.")


class NotFound(WebPubSubError):
    """The addressed connection, user, group or route does not exist."""

    code = "Error.NotFound"
    http_status = 404

    @classmethod
    def of(cls, kind: str, name: str, code: str) -> NotFound:
        """Azure's answer for a missing ``kind`` (``Connection``, ``User``, ``Group``):
        ``code`` says how the operation rates it (``Warning.User.NotExisted``, ...)."""
        return cls(f"{kind} `{name}` is not found.", target=kind, code=code)


class MethodNotAllowed(WebPubSubError):
    code = "Error.MethodNotAllowed"
    http_status = 405


class RequestTimeout(WebPubSubError):
    """A request did not arrive in full within ``server.header_timeout_seconds``."""

    code = "Error.RequestTimeout"
    http_status = 408


class PayloadTooLarge(WebPubSubError):
    code = "Error.PayloadTooLarge"
    http_status = 413


class UnsupportedMediaType(BadRequest):
    """The body's Content-Type is not one the operation accepts (answered with 400)."""


class ConfigError(WebPubSubError):
    """The service configuration is invalid; ``problems`` lists every finding."""

    code = "Error.InvalidConfiguration"
    http_status = 500

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems) if problems else "invalid configuration")
        self.problems = problems


class UpstreamError(WebPubSubError):
    """The event handler failed: unreachable, timed out, non-2xx or unusable answer.

    ``status`` is the handler's HTTP status when it answered at all.
    """

    code = "Error.Upstream"
    http_status = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def client_message(self) -> str:
        """What a client may be told: no handler URL or internal detail, the status if any."""
        if self.status is not None:
            return f"The event handler failed (status {self.status})."
        return "The event handler failed."


class TooManyEvents(UpstreamError):
    """A connection already has its limit of user events waiting on event handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Too many events in flight for this connection (limit {limit}).")

    @property
    def client_message(self) -> str:
        return self.message


class NoEventHandler(UpstreamError):
    """No event handler of the hub subscribes to this user event."""

    def __init__(self, event: str) -> None:
        super().__init__(f"No event handler accepts '{event}' events.")
        self.event = event

    @property
    def client_message(self) -> str:
        return self.message


class ConnectRejected(WebPubSubError):
    """The ``connect`` handler refused the client; the handshake answers ``status``."""

    code = "Error.ConnectRejected"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.http_status = status


class TooManyRequests(WebPubSubError):
    """A client sent more than its hub allows per second (``hubs.NAME.client_*``)."""

    code = "Error.TooManyRequests"
    http_status = 429
    ack_name = "TooManyRequests"


class TooManyInvocations(TooManyRequests):
    """A connection already has its limit of invocations open (``invoke``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"Too many invocations in progress for this connection (limit {limit}).")


class SlowClient(WebPubSubError):
    """A connection's outbox overflowed: the client does not read fast enough."""

    code = "Error.SlowClient"
    http_status = 503


class CorruptEnvelope(WebPubSubError):
    """Bytes from the backplane that are not a command, query or answer of this version."""

    code = "Error.CorruptEnvelope"


class ServiceUnavailable(WebPubSubError):
    code = "Error.ServiceUnavailable"
    http_status = 503
