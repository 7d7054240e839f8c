"""Connection strings: ``Endpoint=...;AccessKey=...;Version=1.0;`` (Azure: REST auth).

Parsing follows the Python service SDK (Azure docs: REST authentication) so that a string accepted
here means the same thing to the app server's SDK: segments split on ``;``, each
non-empty segment split at its first ``=``, keys case-insensitive, the first
occurrence of a key wins, and a non-empty ``Port`` is appended to the endpoint as
``endpoint.rstrip('/') + ':' + port``.  Beyond the SDK, the endpoint must be an
``http(s)`` URL with a host and a valid port, and surrounding whitespace of the
whole string is ignored.  Error messages never contain the access key.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from webpubsub.errors import BadRequest

ACCESS_KEY_BYTES = 32
"""Random bytes in a generated key (PyJWT warns about HMAC keys below 32 bytes)."""


@dataclass(frozen=True, slots=True)
class ConnectionString:
    """A parsed connection string; ``endpoint`` already includes any ``Port=``."""

    endpoint: str
    access_key: str = field(repr=False)


def parse_connection_string(s: str) -> ConnectionString:
    """Parse a connection string the way the Python SDK does; raise ``BadRequest`` if unusable."""
    fields: dict[str, str] = {}
    for segment in s.strip().split(";"):
        if not segment:
            continue
        key, sep, value = segment.partition("=")
        if not sep:
            raise BadRequest("malformed connection string: every segment must be 'key=value'")
        fields.setdefault(key.lower(), value)
    endpoint = fields.get("endpoint")
    if not endpoint:
        raise BadRequest("connection string has no Endpoint")
    access_key = fields.get("accesskey")
    if not access_key:
        raise BadRequest("connection string has no AccessKey")
    port = fields.get("port")
    if port:
        endpoint = endpoint.rstrip("/") + ":" + port
    _check_endpoint(endpoint)
    return ConnectionString(endpoint=endpoint, access_key=access_key)


def _check_endpoint(endpoint: str) -> None:
    """Raise ``BadRequest`` unless ``endpoint`` is an http(s) base URL with a host."""
    if not endpoint.lower().startswith(("http://", "https://")):
        raise BadRequest("connection string Endpoint must start with http:// or https://")
    if any(c.isspace() for c in endpoint):
        raise BadRequest("connection string Endpoint must not contain whitespace")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a bad or doubled port
    except ValueError:
        raise BadRequest("connection string Endpoint has an invalid host or port") from None
    if not parts.hostname:
        raise BadRequest("connection string Endpoint has no host")
    if parts.query or parts.fragment or "?" in endpoint or "#" in endpoint:
        raise BadRequest("connection string Endpoint must not have a query or fragment")


def format_connection_string(endpoint: str, access_key: str) -> str:
    """Format ``Endpoint={endpoint};AccessKey={access_key};Version=1.0;``.

    Any port belongs inside ``endpoint``: no ``Port=`` key is written, because the
    Python SDK appends ``Port`` to the endpoint and breaks if both carry one.
    """
    if ";" in endpoint or ";" in access_key:
        raise BadRequest("endpoint and access key must not contain ';'")
    return f"Endpoint={endpoint};AccessKey={access_key};Version=1.0;"


def generate_access_key() -> str:
    """A fresh random access key: 32 random bytes as 43 URL-safe base64 characters."""
    return secrets.token_urlsafe(ACCESS_KEY_BYTES)
