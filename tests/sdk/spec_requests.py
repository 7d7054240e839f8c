"""Literal requests of Azure docs: CloudEvents, shared by the SDK tests.

The headers and bodies are the ones the spec shows, with the connection id
and key of its signature example, and the state the express SDK writes.
"""

from __future__ import annotations

# Azure docs: CloudEvents: this key signs connection id ``conn1`` as below.
SPEC_KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
SPEC_SIGNATURE = "sha256=8de7281e588e23b0a30a7180ffa240257b8176e983004c240c9f3f7a7233c993"
OTHER_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvu"
EXPRESS_STATE = "eyJrZXkiOiJhIn0="  # base64('{"key":"a"}'), as @azure/web-pubsub-express sets it

# The connect event, with the connection id of the signature example.
CONNECT_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "ce-specversion": "1.0",
    "ce-type": "azure.webpubsub.sys.connect",
    "ce-source": "/hubs/chat/client/conn1",
    "ce-id": "0",
    "ce-time": "2024-05-01T10:00:00Z",
    "ce-awpsversion": "1.0",
    "ce-hub": "chat",
    "ce-connectionId": "conn1",
    "ce-eventName": "connect",
    "ce-userId": "alice",
    "ce-signature": SPEC_SIGNATURE,
    "WebHook-Request-Origin": "pubsub.example.com",
}
CONNECT_BODY = (
    b'{"claims":{"sub":["alice"],"role":["webpubsub.joinLeaveGroup"],'
    b'"aud":["http://x/client/hubs/chat"],'
    b'"exp":["1714557600"],"custom":["x"]},'
    b'"query":{"id":["alice"],"room":["r1"]},'
    b'"headers":{"User-Agent":["test-agent/1.0"],"Cookie":["a=b"]},'
    b'"subprotocols":["json.reliable.webpubsub.azure.v1","json.webpubsub.azure.v1"],'
    b'"clientCertificates":[{"thumbprint":"ABCDEF0123",'
    b'"content":"-----BEGIN CERTIFICATE-----\\r\\nMIIB\\r\\n-----END CERTIFICATE-----"}]}'
)


def event_headers(
    event: str, *, system: bool = False, content_type: str | None = None, **extra: str
) -> dict[str, str]:
    """The CloudEvents headers of event ``event`` from connection ``conn1`` of user ``alice``."""
    ce_type = ("azure.webpubsub.sys." if system else "azure.webpubsub.user.") + event
    headers = {
        "Content-Type": content_type
        or ("application/json; charset=utf-8" if system else "text/plain"),
        "ce-specversion": "1.0",
        "ce-type": ce_type,
        "ce-source": "/hubs/chat/client/conn1",
        "ce-id": "3",
        "ce-time": "2024-05-01T10:00:05Z",
        "ce-awpsversion": "1.0",
        "ce-hub": "chat",
        "ce-connectionId": "conn1",
        "ce-eventName": event,
        "ce-userId": "alice",
        "ce-subprotocol": "json.webpubsub.azure.v1",
        "ce-signature": SPEC_SIGNATURE,
        "WebHook-Request-Origin": "pubsub.example.com",
    }
    for name, value in extra.items():
        headers[name.replace("_", "-")] = value
    return headers
