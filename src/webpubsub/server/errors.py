"""The REST boundary's mapping of the error tree: status + ErrorDetail + x-ms-error-code."""

from __future__ import annotations

import logging

import orjson
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.typedefs import Handler

from webpubsub.errors import BadRequest, PayloadTooLarge, RequestTimeout, WebPubSubError

log = logging.getLogger("webpubsub.server")


def error_response(error: WebPubSubError, *, problem: bool = False) -> web.Response:
    """``error`` as Azure answers it: its status, ``x-ms-error-code`` and JSON body.

    ``problem``: a validation error of a request parameter, which Azure sends as
    ``application/problem+json`` (RFC 9457) from operations without a JSON result.
    On a HEAD request aiohttp sends the headers (``Content-Length`` too) without the
    body, as Azure does.
    """
    return web.Response(
        status=error.http_status,
        body=orjson.dumps(error.to_error_detail()),
        content_type="application/problem+json" if problem else "application/json",
        charset="utf-8",
        headers={"x-ms-error-code": error.code},
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestTimeout as exc:
        return _closing(request, error_response(exc))
    except WebPubSubError as exc:
        return error_response(exc)
    except web.HTTPRequestEntityTooLarge:
        return error_response(PayloadTooLarge("The request body is too large."))
    except web.RequestPayloadError as exc:  # a body that does not decode (client input)
        return _closing(request, error_response(BadRequest(_unreadable(exc))))
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(WebPubSubError("An internal error occurred."))


def _closing(request: web.Request, response: web.Response) -> web.Response:
    """``response``, after which the connection closes: the rest of the body is not read."""
    response.force_close()  # where the body ends is unknown: no next request on it
    request.content.feed_eof()  # nor lingering reads of the rest (a stalled body, an error)
    return response


def _unreadable(exc: web.RequestPayloadError) -> str:
    if isinstance(exc.__cause__, ContentEncodingError):
        return "The request body does not decode as its Content-Encoding says."
    return "The request body is malformed (its framing or encoding)."
