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

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import jwt

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

    ``method_url`` is the absolute request URL with the raw (percent-encoded) path
    and query.  The ``aud`` origin must be the request's or one of ``endpoints``;
    its path must equal the request path (percent-decoded, case-insensitive,
    trailing ``/`` ignored); a query in ``aud`` must equal the request query as a
    multiset of decoded key/value pairs, while an ``aud`` without query accepts any.
    """
    payload = _decode(token, keys=keys, now=now, leeway=leeway)
    request = _Url.parse(method_url)
    if request is None:
        raise Unauthorized("invalid request URL")
    origins = {request.origin}
    for endpoint in endpoints:
        parsed = _Url.parse(endpoint)
        if parsed is not None:
            origins.add(parsed.origin)
    for aud in _audiences(payload):
        target = _Url.parse(aud)
        if (
            target is not None
            and target.origin in origins
            and target.path == request.path
            and (not target.query or _query_pairs(target.query) == _query_pairs(request.query))
        ):
            return
    raise Unauthorized("audience mismatch")


def _decode(token: str, *, keys: Sequence[str], now: float, leeway: float) -> dict[str, Any]:
    """Check format, algorithm, signature (any key) and ``exp``/``nbf``; return the claims."""
    if not keys:
        raise Unauthorized("no access key is configured")
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.PyJWTError, ValueError):
        raise Unauthorized("token is not a JWT") from None
    if header.get("alg") != ALGORITHM:
        raise Unauthorized("unsupported token algorithm")
    for key in keys:
        try:
            payload = jwt.decode(
                token,
                key.encode(),
                algorithms=[ALGORITHM],
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError:
            continue
        except (jwt.PyJWTError, ValueError):
            raise Unauthorized("malformed token") from None
        _check_lifetime(payload, now=now, leeway=leeway)
        return payload
    raise Unauthorized("invalid signature")


def _check_lifetime(payload: dict[str, Any], *, now: float, leeway: float) -> None:
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
    query: str  # raw

    @classmethod
    def parse(cls, url: str) -> _Url | None:
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
        return cls(origin=(scheme, parts.hostname.lower(), port), path=path, query=parts.query)


def _query_pairs(query: str) -> Counter[tuple[str, str]]:
    return Counter(parse_qsl(query, keep_blank_values=True))


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
