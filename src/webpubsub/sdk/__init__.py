"""The app-server SDK: handle Web PubSub events in any Python web app.

A framework-free core (:class:`WebPubSubEventHandler`) with thin adapters for ASGI
(:class:`ASGIMiddleware`: Starlette, FastAPI) and WSGI (:class:`WSGIMiddleware`:
Flask). It answers the abuse-protection probe, verifies ``ce-signature``, parses
each CloudEvent into a typed request, calls your handlers (sync or async) and
builds the answer the service expects::

    handler = WebPubSubEventHandler("chat", keys=[access_key])

    @handler.on_connect
    def connect(request: ConnectRequest) -> ConnectResponse:
        request.context.states["room"] = request.query["room"][0]
        return ConnectResponse(groups=[request.query["room"][0]])

    @handler.on_event
    async def event(request: UserEventRequest) -> str:
        return f"echo: {request.text}"

See ``docs/reference/sdk.md``.
"""

from webpubsub.protocol.payload import DataType
from webpubsub.sdk.asgi import ASGIMiddleware
from webpubsub.sdk.events import (
    ClientCertificate,
    ConnectedRequest,
    ConnectionContext,
    ConnectRequest,
    ConnectResponse,
    DisconnectedRequest,
    EventHandlerError,
    GroupJoinedRequest,
    GroupLeftRequest,
    UserEventRequest,
    UserEventResponse,
)
from webpubsub.sdk.handler import DEFAULT_MAX_BODY_BYTES, WebPubSubEventHandler
from webpubsub.sdk.http import Headers, HttpRequest, HttpResponse
from webpubsub.sdk.state import ConnectionState, decode_state, encode_state
from webpubsub.sdk.wsgi import WSGIMiddleware

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ASGIMiddleware",
    "ClientCertificate",
    "ConnectRequest",
    "ConnectResponse",
    "ConnectedRequest",
    "ConnectionContext",
    "ConnectionState",
    "DataType",
    "DisconnectedRequest",
    "EventHandlerError",
    "GroupJoinedRequest",
    "GroupLeftRequest",
    "Headers",
    "HttpRequest",
    "HttpResponse",
    "UserEventRequest",
    "UserEventResponse",
    "WSGIMiddleware",
    "WebPubSubEventHandler",
    "decode_state",
    "encode_state",
]
