"""Client access tokens and REST bearer tokens: HS256 JWTs over the AccessKey.

(Azure docs: client tokens; REST authentication.)

The HMAC key is the UTF-8 encoding of the AccessKey *string* (not base64-decoded).
Only ``HS256`` is accepted.  With several keys (rotation) the first one signs and any
one verifies.  Time is passed in as ``now`` (unix seconds); nothing here reads a clock.

Failures raise :class:`~webpubsub.errors.Unauthorized` with a short reason that never
contains a key or the token; an invalid group or user id in an otherwise valid client
token raises :class:`~webpubsub.errors.BadRequest` (the handshake answers 400).
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import hmac
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_to_bytes, urlsplit

import jwt
import orjson

from webpubsub.errors import BadRequest, Unauthorized
from webpubsub.protocol.names import validate_group, validate_user_id

ALGORITHM = "HS256"
USER_ID_CLAIMS = (
    "sub",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier",
    "nameid",
)
"""Claims carrying the user id, in order of preference."""
ROLE_CLAIMS = ("role", "http://schemas.microsoft.com/ws/2008/06/identity/claims/role")
"""Claims carrying roles; their values are combined."""
GROUP_CLAIM = "webpubsub.group"
"""Claim listing the groups a client joins on connect."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """Who a verified client token says the client is.

    ``claims`` holds every claim of the token as claim type → string values, the
    shape of the ``connect`` webhook body (Azure docs: CloudEvents).  Numbers become
    their decimal string, booleans ``true``/``false``, list items are flattened and
    nested objects become compact JSON.  Treat it as read-only.
    """

    user_id: str | None = None
    roles: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    claims: dict[str, list[str]] = field(default_factory=dict)


def bearer_token(authorization_header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    if not authorization_header:
        return None
    if authorization_header.startswith("Bearer "):  # as every SDK spells it: the same, short
        return authorization_header[7:].strip() or None
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# -- issuing ---------------------------------------------------------------------------


def issue_client_token(
    key: str,
    *,
    audience: str,
    now: float,
    ttl_seconds: int = 3600,
    user_id: str | None = None,
    roles: Sequence[str] = (),
    groups: Sequence[str] = (),
) -> str:
    """A client access token with the Python SDK's claim layout (Azure docs: client tokens).

    ``aud``, ``iat``, ``exp``, then ``sub``, ``role`` and ``webpubsub.group`` only
    when non-empty.
    """
    issued_at = math.floor(now)
    payload: dict[str, Any] = {"aud": audience, "iat": issued_at, "exp": issued_at + ttl_seconds}
    if user_id:
        payload["sub"] = user_id
    if roles:
        payload["role"] = list(roles)
    if groups:
        payload[GROUP_CLAIM] = list(groups)
    return jwt.encode(payload, key.encode(), algorithm=ALGORITHM)


def issue_rest_token(key: str, *, audience: str, now: float, ttl_seconds: int = 60) -> str:
    """A REST bearer token ``{"aud", "exp"}`` exactly as the SDK makes it (Azure: REST auth)."""
    payload = {"aud": audience, "exp": math.floor(now) + ttl_seconds}
    return jwt.encode(payload, key.encode(), algorithm=ALGORITHM)


# -- verifying -------------------------------------------------------------------------


def verify_client_token(
    token: str,
    *,
    keys: Sequence[str],
    hub: str,
    endpoints: Sequence[str],
    now: float,
    leeway: float = 300.0,
) -> ClientIdentity:
    """Verify a client access token for ``hub`` and return the identity it carries.

    The ``aud`` must be ``{endpoint}/client/hubs/{hub}`` or the legacy
    ``{endpoint}/client/?hub={hub}`` for one of ``endpoints`` (base URLs).  Both
    sides are compared percent-decoded and case-insensitively, ignoring a trailing
    ``/`` and default ports.
    """
    payload = _decode(token, keys=keys, now=now, leeway=leeway)
    if not any(_is_client_audience(aud, hub, endpoints) for aud in _audiences(payload)):
        raise Unauthorized("audience mismatch")
    return ClientIdentity(
        user_id=_user_id(payload),
        roles=_strings_of(payload, ROLE_CLAIMS),
        groups=_groups(payload),
        claims={name: _claim_strings(value) for name, value in payload.items()},
    )


def verify_rest_token(
    token: str,
    *,
    keys: Sequence[str],
    method_url: str,
    endpoints: Sequence[str],
    now: float,
    leeway: float = 300.0,
) -> None:
    """Verify a REST bearer token for the request at ``method_url`` (Azure: REST auth).

    ``aud`` must be the request URL, as the SDKs sign it (docs/compatibility.md).
    ``method_url`` is the absolute request URL with the raw (percent-encoded) path
    and query.  The ``aud`` origin must be the request's or one of ``endpoints``
    (scheme and host case-insensitive, default ports filled in).  Path and query are
    compared as the router reads them, case-sensitively: the path split on ``/``
    before each segment is percent-decoded (so ``%2F`` is no ``/``), the query as the
    ordered list of its decoded ``key=value`` pairs.  Only spelling that cannot change
    what is routed may differ (``%40`` or ``@``, ``%2f`` or ``%2F``, ``+`` or ``%20``
    in the query), as HTTP clients re-escape URLs after the SDK signed them.  The
    method is not in ``aud``: a token is good for every method on its URL.
    """
    payload = _decode(token, keys=keys, now=now, leeway=leeway)
    if payload.get("aud") == method_url and "#" not in method_url:
        return  # the SDKs sign the very URL (a string equal to it is a good "aud")
    audiences = _audiences(payload)
    if method_url in audiences and "#" not in method_url:
        return  # the SDKs sign the very URL: it is the request's own origin, path and query
    request = _Url.parse(method_url)
    if request is None or request.fragment or "#" in method_url:
        raise Unauthorized("invalid request URL")  # a request has no fragment
    origins = {request.origin, *_origins(tuple(endpoints))}
    path, query = _routed_path(request.raw_path), _routed_query(request.query)
    for aud in audiences:
        target = _Url.parse(aud)
        if (
            target is not None
            and not target.fragment
            and target.origin in origins
            and _routed_path(target.raw_path) == path
            and _routed_query(target.query) == query
        ):
            return
    raise Unauthorized("audience mismatch")


@functools.lru_cache(maxsize=16)
def _origins(endpoints: tuple[str, ...]) -> frozenset[tuple[str, str, int | None]]:
    """The origins of the service's endpoints (the same few on every request: parsed once)."""
    return frozenset(parsed.origin for parsed in map(_Url.parse, endpoints) if parsed is not None)


def _decode(token: str, *, keys: Sequence[str], now: float, leeway: float) -> dict[str, Any]:
    """Check format, algorithm, signature (any key) and ``exp``/``nbf``; return the claims.

    HS256 only, verified here rather than by PyJWT (which makes each token: see
    :func:`issue_client_token`), a third of the REST path's CPU with it (issue 13,
    docs/performance.md): three base64url segments, the header a JSON object whose
    ``alg`` is ``HS256`` (and whose ``kid``, if any, is a string), the signature the
    HMAC-SHA256 of the first two segments under one of ``keys`` (compared in constant
    time), the payload a JSON object. Tests hold it to PyJWT's verdicts.
    """
    if not keys:
        raise Unauthorized("no access key is configured")
    raw = token.encode("ascii") if token.isascii() else b""
    if raw.translate(None, _B64URL_ALPHABET) != b"..":
        raise Unauthorized("token is not a JWT")  # (what _TOKEN matches, at half its cost)
    head, body, signature = token.split(".")
    known = head in _good_headers
    if not known:
        _check_header(head)
    given = raw[len(raw) - len(signature) :]
    signed = raw[: len(raw) - len(signature) - 1]  # head.body
    for key in keys:  # each MAC in its one base64url spelling, against the one sent
        if key and hmac.compare_digest(_b64url_of(_hs256(key, signed)), given):
            break  # (an empty key verifies nothing, as PyJWT refuses one)
    else:
        try:
            _b64url(signature)
        except ValueError:
            raise Unauthorized("malformed token") from None  # (no base64url: no signature)
        raise Unauthorized("invalid signature")
    if not known and len(_good_headers) < GOOD_HEADERS_KEPT:
        _good_headers[head] = None  # (signed: a forger's headers cannot fill the cache)
    try:
        payload = _claims_object(_b64url(body))
    except ValueError:
        raise Unauthorized("malformed token") from None
    _check_lifetime(payload, now=now, leeway=leeway)
    return payload


_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
"""A JWT segment: base64url without padding (RFC 7515 §2)."""
_TOKEN = re.compile(r"[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
"""A JWT: three such segments (what :func:`_decode` checks, by deleting the alphabet)."""
_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
GOOD_HEADERS_KEPT = 64
_good_headers: dict[str, None] = {}
"""Header segments that passed :func:`_check_header` in a token whose signature
verified (every token of an SDK has the same one), the first :data:`GOOD_HEADERS_KEPT`."""


def _check_header(head: str) -> None:
    """A token's header segment: a JSON object whose ``alg`` is HS256 (and whose
    ``kid``, if any, is a string), without extensions; Unauthorized otherwise."""
    try:
        header = _json_object(_b64url(head))
    except ValueError:
        raise Unauthorized("token is not a JWT") from None
    if "kid" in header and not isinstance(header["kid"], str):
        raise Unauthorized("token is not a JWT")
    if "crit" in header or "b64" in header:  # extensions this verifier does not implement
        raise Unauthorized("unsupported token header")
    if header.get("alg") != ALGORITHM:
        raise Unauthorized("unsupported token algorithm")


_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_SHA256_BLOCK = 64


@functools.lru_cache(maxsize=16)
def _keyed(key: str) -> tuple[Any, Any]:
    """SHA-256 states after ``key``'s inner and outer HMAC pads (RFC 2104): the same
    few keys sign every token, so each is padded and hashed once."""
    raw = key.encode()
    if len(raw) > _SHA256_BLOCK:
        raw = hashlib.sha256(raw).digest()
    raw = raw.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(raw.translate(_IPAD)), hashlib.sha256(raw.translate(_OPAD))


def _hs256(key: str, message: bytes) -> bytes:
    """HMAC-SHA256 of ``message`` under the UTF-8 of ``key`` (``hmac.digest``'s result,
    from the key's hashed pads: one OpenSSL HMAC set-up per token was a tenth of the
    token check)."""
    inner, outer = _keyed(key)
    inner = inner.copy()
    inner.update(message)
    outer = outer.copy()
    outer.update(inner.digest())
    return bytes(outer.digest())


_B64URL_VALUES = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64url(segment: str) -> bytes:
    """A base64url segment without padding (its alphabet checked by the caller), in its
    one canonical spelling (no stray bits in its last character: a token has one form);
    ``ValueError`` otherwise."""
    left = len(segment) % 4
    if left == 1:
        raise ValueError("not base64")
    if left and _B64URL_VALUES.get(segment[-1], 0xFF) & (0x0F if left == 2 else 0x03):
        raise ValueError("not canonical base64")  # bits the decoded bytes do not hold
    data = segment.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(segment) % 4)
    return binascii.a2b_base64(data)


_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64url_of(data: bytes) -> bytes:
    """``data`` in base64url without padding: the one spelling :func:`_b64url` reads."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=")


_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
"""A run of 19 digits may be an integer orjson reads as a float (over 64 bits)."""


def _json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object (``ValueError`` otherwise), every number as the standard
    library reads it: orjson, unless the text holds a run of 19 digits or more (an
    integer over 64 bits, which orjson would turn into a float) or orjson refuses it
    (NaN, another encoding): what PyJWT read."""
    value: object
    try:
        if _LONG_DIGITS in raw.translate(_DIGITS_AS_ZERO):
            raise orjson.JSONDecodeError("long digits", "", 0)
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise ValueError("not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def _claims_object(raw: bytes) -> dict[str, Any]:
    """:func:`_json_object` of a token's claims: orjson's reading when every claim is a
    string or an integer (a REST token's ``aud`` and ``exp``), which is then the standard
    library's too (an integer over 64 bits would be a float: the careful reading)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _json_object(raw)
    if type(value) is dict:
        for claim in value.values():
            kind = type(claim)
            if kind is not str and kind is not int:
                return _json_object(raw)
        return value
    return _json_object(raw)


def _check_lifetime(payload: dict[str, Any], *, now: float, leeway: float) -> None:
    exp = payload.get("exp")
    if type(exp) is int and "nbf" not in payload:  # as the SDKs sign: the checks below, short
        if now - leeway >= exp:
            raise Unauthorized("token expired")
        return
    exp = _time_claim(payload, "exp")
    if exp is None:
        raise Unauthorized("token has no exp claim")
    if now - leeway >= exp:
        raise Unauthorized("token expired")
    nbf = _time_claim(payload, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise Unauthorized("token not yet valid")


def _time_claim(payload: dict[str, Any], name: str) -> int | float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"token claim {name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise Unauthorized(f"token claim {name} is not a number")
    return value


def _audiences(payload: dict[str, Any]) -> list[str]:
    aud = payload.get("aud")
    if aud is None:
        raise Unauthorized("token has no aud claim")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    raise Unauthorized("malformed aud claim")


@dataclass(frozen=True, slots=True)
class _Url:
    """An absolute URL reduced to what audience checks compare."""

    origin: tuple[str, str, int | None]  # scheme, host (lower case), port (default filled in)
    path: str  # percent-decoded, lower-cased, without trailing "/"
    raw_path: str
    query: str  # raw
    fragment: str  # raw

    @classmethod
    def parse(cls, url: str) -> _Url | None:
        if any(c in url for c in "\t\r\n"):  # urlsplit would drop them silently
            return None
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if not scheme or not parts.hostname:
            return None
        if port is None:
            port = _DEFAULT_PORTS.get(scheme)
        path = unquote(parts.path).lower().rstrip("/")
        return cls(
            origin=(scheme, parts.hostname.lower(), port),
            path=path,
            raw_path=parts.path,
            query=parts.query,
            fragment=parts.fragment,
        )


def url_origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an absolute URL as audience checks compare origins
    (lower case, default port filled in); None for anything else."""
    parsed = _Url.parse(url)
    return parsed.origin if parsed is not None else None


def _routed_path(raw_path: str) -> tuple[bytes, ...]:
    """The path's segments as the router reads them: split on ``/``, then decoded."""
    return tuple(unquote_to_bytes(segment) for segment in raw_path.split("/"))


def _routed_query(raw_query: str) -> tuple[tuple[bytes, bytes], ...]:
    """The query's pairs, in order, as ``parse_qsl(keep_blank_values=True)`` reads them
    (``+`` is a space), but as bytes: two spellings match only if they decode alike."""
    pairs = []
    for item in raw_query.split("&"):
        if item:
            name, _, value = item.replace("+", " ").partition("=")
            pairs.append((unquote_to_bytes(name), unquote_to_bytes(value)))
    return tuple(pairs)


def _is_client_audience(aud: str, hub: str, endpoints: Sequence[str]) -> bool:
    target = _Url.parse(aud)
    if target is None:
        return False
    hub_name = unquote(hub).lower()
    for endpoint in endpoints:
        base = _Url.parse(endpoint)
        if base is None or base.origin != target.origin:
            continue
        if not target.query and target.path == f"{base.path}/client/hubs/{hub_name}":
            return True
        if target.path == f"{base.path}/client":
            pairs = [(k.lower(), v.lower()) for k, v in parse_qsl(target.query)]
            if pairs == [("hub", hub_name)]:
                return True
    return False


def _user_id(payload: dict[str, Any]) -> str | None:
    for name in USER_ID_CLAIMS:
        value = payload.get(name)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise Unauthorized(f"malformed {name} claim")
        return validate_user_id(value)
    return None


def _strings_of(payload: dict[str, Any], names: Sequence[str]) -> tuple[str, ...]:
    """The string values of claims ``names`` (each a string or a list of strings), deduplicated."""
    found: dict[str, None] = {}
    for name in names:
        value = payload.get(name)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise Unauthorized(f"malformed {name} claim")
        found.update(dict.fromkeys(values))
    return tuple(found)


def _groups(payload: dict[str, Any]) -> tuple[str, ...]:
    value = payload.get(GROUP_CLAIM)
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    for group in values:
        if not isinstance(group, str):
            raise BadRequest(f"invalid group in the {GROUP_CLAIM} claim", target="group")
        validate_group(group)
    return tuple(dict.fromkeys(values))


def _claim_strings(value: Any) -> list[str]:
    if isinstance(value, list):
        return [s for item in value for s in _scalar_strings(item)]
    return _scalar_strings(value)


def _scalar_strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, int):
        return [str(value)]
    if isinstance(value, float):
        return [str(int(value)) if value.is_integer() else repr(value)]
    return [json.dumps(value, separators=(",", ":"), ensure_ascii=False)]


# -- the operator portal's admin token -------------------------------------------------

PORTAL_AUDIENCE = "webpubsub-portal"
"""The ``aud`` of an admin token: it opens the portal (``/portal/login?token=``), nothing
else (no REST or client audience is this string, and an admin token is no URL)."""
PORTAL_TOKEN_MAX_SECONDS = 24 * 3600
"""The longest an admin token may live (``exp - iat``, and ``exp`` from now)."""


def issue_portal_token(key: str, *, now: float, ttl_seconds: int = PORTAL_TOKEN_MAX_SECONDS) -> str:
    """An admin token for the portal, signed with ``key`` (the primary access key)."""
    if not 0 < ttl_seconds <= PORTAL_TOKEN_MAX_SECONDS:
        raise ValueError(f"an admin token lives 1 to {PORTAL_TOKEN_MAX_SECONDS} seconds")
    issued_at = math.floor(now)
    payload = {"aud": PORTAL_AUDIENCE, "iat": issued_at, "exp": issued_at + ttl_seconds}
    return jwt.encode(payload, key.encode(), algorithm=ALGORITHM)


def verify_portal_token(token: str, *, keys: Sequence[str], now: float) -> None:
    """Verify an admin token: HS256 by any of ``keys``, ``aud`` exactly
    :data:`PORTAL_AUDIENCE`, not expired (no leeway), ``exp`` at most
    :data:`PORTAL_TOKEN_MAX_SECONDS` ahead. Raises :class:`Unauthorized`."""
    payload = _decode(token, keys=keys, now=now, leeway=0.0)
    if payload.get("aud") != PORTAL_AUDIENCE:
        raise Unauthorized("audience mismatch")
    exp = _time_claim(payload, "exp")
    if exp is None or exp - now > PORTAL_TOKEN_MAX_SECONDS + 60:
        raise Unauthorized("an admin token lives at most 24 hours")
