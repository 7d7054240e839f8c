"""WSGI middleware: the event handler in front of any WSGI app (Flask, Django, ...).

Only a translation: the environ's method, path and headers go to the core, which
reads ``wsgi.input`` through this module only once the headers pass its checks,
and no more of it than it asks for; the core's
:class:`~webpubsub.sdk.http.HttpResponse` goes to ``start_response``. Everything
the handler does not claim goes to the wrapped app untouched (body unread)::

    app = Flask(__name__)
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, handler)

``async def`` handlers work too: each call runs in a fresh event loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from webpubsub.sdk.handler import WebPubSubEventHandler
from webpubsub.sdk.http import Headers

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["WSGIMiddleware"]


class WSGIMiddleware:
    """Serves ``handler``'s requests; passes every other request to ``app``."""

    def __init__(self, app: WSGIApplication, handler: WebPubSubEventHandler) -> None:
        self.app = app
        self.handler = handler

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        # PEP 3333: PATH_INFO holds the raw bytes decoded as latin-1.
        path = environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8", "replace")
        headers = Headers.from_raw(_headers(environ))
        if not self.handler.matches(method, path, headers):
            return self.app(environ, start_response)

        def read_body(limit: int) -> bytes:
            return _read_body(environ, limit)

        response = self.handler.process_stream_sync(method, path, headers, read_body)
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        # PEP 3333: header values are str holding bytes as ISO-8859-1.
        raw_headers = [(k, v.encode("utf-8").decode("latin-1")) for k, v in response.headers]
        raw_headers.append(("Content-Length", str(len(response.body))))
        start_response(f"{response.status} {reason}", raw_headers)
        return [response.body]


def _headers(environ: WSGIEnvironment) -> Iterable[tuple[bytes, bytes]]:
    """The request headers as bytes (PEP 3333 keeps them as ISO-8859-1 str)."""
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key
        else:
            continue
        yield name.replace("_", "-").lower().encode("latin-1"), value.encode("latin-1")


def _read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """The body, or its first ``limit`` bytes: never more than ``limit`` are read."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        length = -1
    if length >= 0:
        remaining = min(length, limit)
    elif environ.get("wsgi.input_terminated"):  # e.g. chunked: read up to the end
        remaining = limit
    else:
        return b""
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    while remaining > 0:
        chunk = bytes(stream.read(remaining))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
