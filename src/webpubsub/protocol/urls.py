"""URLs: their redaction for logs and error messages, and the WebSocket base of an
HTTP one."""

from __future__ import annotations


def redacted(url: str) -> str:
    """``url`` without what may hold a secret: its user info (a password may contain
    ``/`` or ``@`` when it is not percent-encoded, so everything up to the last ``@``
    goes), its query and its fragment (``?...`` says one was there)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        before, _, after = rest.rpartition("@")
        if "?" in before or "#" in before:
            # The @ may be in a query or a fragment as well as in a password: with no way
            # to tell, nothing after the scheme is shown.
            return f"{scheme}{sep}***?..."
        rest = "***@" + after
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        rest = rest[:cut] + "?..."
    return f"{scheme}{sep}{rest}"


def websocket_base(http_base: str) -> str:
    """The ``ws://`` (``wss://`` for ``https://``) URL of an ``http(s)://`` base, where
    clients connect."""
    if http_base.startswith("https"):
        return "wss" + http_base[5:]
    return "ws" + http_base[4:]
