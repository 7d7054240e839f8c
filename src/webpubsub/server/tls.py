"""TLS for the service's one port: ``https://`` and ``wss://`` side by side.

The server context is built once and kept for the life of the listener; a reload
(SIGHUP) loads the new certificate chain into that same context, so new
handshakes present it while established connections carry on untouched.  A
reload is tried on a scratch context first, so a bad or half-written file never
leaves the live context with a certificate that does not match its key.
"""

from __future__ import annotations

import ssl

from webpubsub.errors import ConfigError


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` (PEM chain) and ``key``; :class:`ConfigError` if unusable."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    _load(context, cert, key)
    return context


def reload(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load ``cert``/``key`` into the live ``context``; on any problem leave it as it was."""
    server_context(cert, key)  # raises before the live context is touched
    _load(context, cert, key)


def _load(context: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = (exc.reason or "not a PEM certificate chain and its private key").lower()
        reason = reason.replace("_", " ")  # OpenSSL's KEY_VALUES_MISMATCH: key values mismatch
        raise ConfigError(
            [f"TLS: cannot use certificate {cert} with key {key}: {reason}"]
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([f"TLS: cannot read {exc.filename or cert}: {reason}"]) from None
