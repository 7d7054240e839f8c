"""Who may use the portal: the session cookie, its CSRF token and the origin check.

A session is ``{expiry}.{nonce}.{mac}``: the expiry in unix seconds, 16 random bytes
and an HMAC-SHA256 over both keyed with an access key, both in unpadded base64url.
It is checked against every configured key in constant time, so a key rotation
that drops the key ends the sessions it signed. The CSRF token is an HMAC of the
session under the same key: a page that can read ``GET /portal/api/session`` (the
portal's own, same origin) can write; another site cannot.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from aiohttp import web

from webpubsub.errors import Forbidden, Unauthorized
from webpubsub.protocol.tokens import url_origin

COOKIE = "webpubsub_portal"
SESSION_SECONDS = 8 * 3600
"""A session's life. Sessions are stateless: logging out clears the browser's cookie,
but a copy of the cookie stays good until it expires (or its key is dropped)."""
CSRF_HEADER = "X-Portal-CSRF"
MAX_SESSION_CHARS = 128

_SESSION = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")
_SESSION_CONTEXT = b"webpubsub-portal-session:"
_CSRF_CONTEXT = b"webpubsub-portal-csrf:"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _mac(key: str, context: bytes, message: str) -> str:
    return _b64(hmac.new(key.encode(), context + message.encode(), hashlib.sha256).digest())


def new_session(key: str, now: float, seconds: int = SESSION_SECONDS) -> str:
    """A session signed with ``key`` that ends ``seconds`` from ``now``."""
    body = f"{int(now) + seconds}.{_b64(secrets.token_bytes(16))}"
    return f"{body}.{_mac(key, _SESSION_CONTEXT, body)}"


def session_key(value: str | None, keys: Sequence[str], now: float) -> str | None:
    """The key that signed session ``value`` if it is well formed, unexpired and signed
    by one of ``keys`` (every key is tried, each in constant time); else None.
    Never raises, whatever ``value`` is."""
    if not value or len(value) > MAX_SESSION_CHARS:
        return None
    match = _SESSION.fullmatch(value)
    if match is None:
        return None
    expiry, nonce, mac = match.groups()
    body = f"{expiry}.{nonce}"
    found: str | None = None
    for key in keys:
        if hmac.compare_digest(_mac(key, _SESSION_CONTEXT, body), mac) and found is None:
            found = key
    if found is None or int(expiry) <= now:
        return None
    return found


def session_expiry(value: str) -> int:
    """The expiry (unix seconds) of a session that :func:`session_key` verified."""
    return int(value.partition(".")[0])


def csrf_token(key: str, session: str) -> str:
    """The CSRF token of ``session`` (signed with ``key``)."""
    return _mac(key, _CSRF_CONTEXT, session)


def check_csrf(request: web.Request, key: str, session: str) -> None:
    """A write needs :data:`CSRF_HEADER` with the session's CSRF token."""
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode(), csrf_token(key, session).encode()):
        raise Forbidden(f"A portal write needs the {CSRF_HEADER} header of this session.")


def check_origin(request: web.Request, own: Sequence[str]) -> None:
    """A request with an ``Origin`` must come from one of the service's ``own`` origins
    (``scheme://host[:port]``); the browser's ``Sec-Fetch-Site`` is checked before, by
    :func:`check_fetch_metadata`."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    given = normal_origin(origin)
    if given is None or given not in {normal_origin(o) for o in own}:
        raise Forbidden("The request's Origin is not this service's.")


FETCH_SITES = ("same-origin", "none")
"""The ``Sec-Fetch-Site`` values a browser's portal request may carry."""


def check_fetch_metadata(request: web.Request) -> None:
    """Every ``/portal/api/`` request, reads too: a browser's request must come from the
    portal's own page (``Sec-Fetch-Site`` ``same-origin``, or ``none``: typed by the user)
    and not be a ``no-cors`` fetch (an ``<img>``, a ``<script>``). Another port of the
    same host is the same *site*, so the ``SameSite=Strict`` cookie goes with its
    requests: this check is what keeps its pages out. A client that sends no fetch
    metadata (curl, a script) is not a browser and passes."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site.strip().lower() not in FETCH_SITES:
        raise Forbidden("The portal's API answers its own page only (Sec-Fetch-Site).")
    if request.headers.get("Sec-Fetch-Mode", "").strip().lower() == "no-cors":
        raise Forbidden("The portal's API does not answer no-cors requests (Sec-Fetch-Mode).")


def normal_origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an http(s) origin, as token audiences compare them;
    None for anything else (``null``, a malformed value)."""
    origin = url_origin(url)
    return origin if origin is not None and origin[0] in ("http", "https") else None


def authenticate(request: web.Request, keys: Sequence[str], now: float) -> tuple[str, str]:
    """The session cookie of ``request`` and its key; :class:`Unauthorized` without one."""
    value = request.cookies.get(COOKIE)
    key = session_key(value, keys, now)
    if key is None or value is None:
        raise Unauthorized("Log in to the portal with the service's access key.")
    return value, key


def set_session_cookie(response: web.StreamResponse, session: str, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        session,
        max_age=SESSION_SECONDS,
        path="/portal",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def clear_session_cookie(response: web.StreamResponse, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        "",
        max_age=0,
        expires="Thu, 01 Jan 1970 00:00:00 GMT",
        path="/portal",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def key_matches(given: str, keys: Sequence[str]) -> str | None:
    """The configured key equal to ``given``, else None: their SHA-256 digests are
    compared, each in constant time (equal lengths: the key's length does not leak)."""
    digest = hashlib.sha256(given.encode()).digest()
    found: str | None = None
    for key in keys:
        if hmac.compare_digest(digest, hashlib.sha256(key.encode()).digest()) and found is None:
            found = key
    return found
