"""The scheme and host a caller reached the service at, and the base URL to hand out.

Behind a TLS terminator the service sees ``http://internal:8080``; the caller used
``https://pubsub.example.com``.  The base URL in links and tokens the service
returns (``nextLink``, ``:generateToken``) is therefore, in this order:

1. ``server.public_endpoint`` when configured;
2. else ``X-Forwarded-Proto`` / ``X-Forwarded-Host``, only from a peer listed in
   ``server.trusted_proxies`` (the value the nearest proxy set: the last one);
3. else the request's own scheme and ``Host``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from aiohttp import web

from webpubsub.errors import BadRequest

_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::[0-9]{1,5})?")


MAX_CACHED_HOST = 256
"""The longest host whose verdict :func:`_is_host` keeps (a DNS name has at most 253
characters, a port 6 more)."""


@functools.lru_cache(maxsize=64)
def _is_short_host(text: str) -> bool:
    """:data:`_HOST`'s verdict on ``text``, kept for the last 64 hosts."""
    return _HOST.fullmatch(text) is not None


def _is_host(text: str) -> bool:
    """Whether ``text`` is a host with an optional port; the short ones, the same few on
    every request, are checked once (a cache of a few: any Host may be sent)."""
    if len(text) <= MAX_CACHED_HOST:
        return _is_short_host(text)
    return _HOST.fullmatch(text) is not None


def caller_origin(request: web.Request, trusted_proxies: Sequence[str] = ()) -> str:
    """``scheme://host[:port]`` of the URL the caller used.

    For an absolute-form request target the authority is the target's (RFC 9112
    §3.2.2): aiohttp's ``request.host`` then drops the port.
    """
    scheme, host = request.scheme, request.host
    if not request.raw_path.startswith("/"):
        authority = urlsplit(request.raw_path).netloc
        if authority:
            host = authority
    if not _is_host(host):  # e.g. a Host that smuggles a path, query or fragment
        raise BadRequest("The Host header (or the request target's authority) is not a host.")
    if trusted_proxies and _is_trusted(request.remote, trusted_proxies):
        proto = _last(request.headers.get("X-Forwarded-Proto"))
        if proto is not None and proto.lower() in ("http", "https"):
            scheme = proto.lower()
        forwarded_host = _last(request.headers.get("X-Forwarded-Host"))
        if forwarded_host is not None and _is_host(forwarded_host):
            host = forwarded_host
    return f"{scheme}://{host}"


def public_base(
    request: web.Request, public_endpoint: str | None, trusted_proxies: Sequence[str] = ()
) -> str:
    """The base URL of links and tokens handed to this caller (see the module docs)."""
    return public_endpoint or caller_origin(request, trusted_proxies)


def _last(value: str | None) -> str | None:
    if value is None:
        return None
    item = value.rsplit(",", 1)[-1].strip()
    return item or None


def _is_trusted(peer: str | None, trusted: Sequence[str]) -> bool:
    if "*" in trusted:
        return True
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(net, strict=False) for net in trusted)
