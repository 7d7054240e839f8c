"""A local development certificate authority, like ``mkcert``.

``webpubsub dev-cert`` (and ``serve --tls`` / ``demo --tls`` without a certificate)
creates, once, in a per-user data directory:

* ``ca.pem`` / ``ca-key.pem`` — a private CA, valid for 10 years, whose name
  constraints restrict it to ``localhost`` and loopback addresses, so that even a
  leaked CA key cannot vouch for any other site;
* ``cert.pem`` / ``key.pem`` — a server certificate for ``localhost``,
  ``127.0.0.1`` and ``::1`` signed by that CA, renewed when it nears its end.

Clients trust the CA, not the server certificate: ``NODE_EXTRA_CA_CERTS`` for
Node.js, ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` for Python, or the system store.
Private keys are written with mode 0600 and never printed.

This module sits beside :mod:`webpubsub.cli`: it reads the file system and the
clock, which the layers below do not.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)
"""The longest server-certificate lifetime Apple's platforms accept."""
RENEW_BEFORE = datetime.timedelta(days=30)
"""A server certificate with less than this left is issued anew."""
DIR_ENV = "WEBPUBSUB_DEV_CERT_DIR"
LOCAL_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
"""The names every development certificate covers."""


@dataclass(frozen=True, slots=True)
class DevCert:
    """Where the development CA and server certificate live."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"


def default_directory(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """The per-user data directory: ``$WEBPUBSUB_DEV_CERT_DIR``, else the platform's."""
    env = os.environ if environ is None else environ
    if env.get(DIR_ENV):
        return Path(env[DIR_ENV]).expanduser()
    if sys.platform == "win32":
        base = Path(env.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(env.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "webpubsub" / "dev-cert"


def ensure(
    directory: Path | None = None, *, now: datetime.datetime | None = None
) -> tuple[DevCert, list[str]]:
    """The development certificate in ``directory``, created or renewed as needed.

    Returns it with what was done (``"created the CA"``, ``"issued a server
    certificate"``), empty when everything was already in place.
    """
    when = now or datetime.datetime.now(datetime.UTC)
    dev = DevCert(directory or default_directory())
    done: list[str] = []
    dev.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = _load_ca(dev, when)
    if ca is None:
        ca = create_ca(when)
        _write_key(dev.ca_key, ca[1])
        _write(dev.ca_cert, ca[0].public_bytes(serialization.Encoding.PEM))
        done.append("created the CA")
    if done or not _leaf_is_current(dev, ca[0], when):
        cert, key = issue_server_cert(ca, LOCAL_NAMES, not_before=when)
        _write_key(dev.key, key)
        _write(dev.cert, cert.public_bytes(serialization.Encoding.PEM))
        done.append("issued a server certificate")
    return dev, done


def create_ca(
    now: datetime.datetime, *, validity: datetime.timedelta = CA_VALIDITY
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new CA certificate and key, constrained to local names."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "webpubsub development CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"webpubsub dev CA {_user_and_host()}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=[
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
                    x509.IPAddress(ipaddress.ip_network("::1/128")),
                ],
                excluded_subtrees=None,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_server_cert(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    names: Sequence[str],
    *,
    not_before: datetime.datetime,
    validity: datetime.timedelta = LEAF_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A server certificate for ``names`` (DNS names or IP addresses) signed by ``ca``."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - datetime.timedelta(minutes=5))
        .not_valid_after(not_before + validity)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def trust_instructions(dev: DevCert) -> list[str]:
    """How to make clients trust the CA, one line each, for this platform."""
    ca = str(dev.ca_cert)
    lines = [
        f"  Node.js:  export NODE_EXTRA_CA_CERTS={ca}",
        f"  Python:   export SSL_CERT_FILE={ca} REQUESTS_CA_BUNDLE={ca}",
        "            (these replace Python's default CA list in that shell;"
        " the system store keeps both)",
    ]
    if sys.platform == "darwin":
        lines.append(
            "  System:   sudo security add-trusted-cert -d -r trustRoot"
            f" -k /Library/Keychains/System.keychain {ca}"
        )
    elif sys.platform == "win32":
        lines.append(f"  System:   certutil -addstore -user Root {ca}")
    else:
        lines += [
            f"  System:   sudo cp {ca} /usr/local/share/ca-certificates/webpubsub-dev-ca.crt"
            " && sudo update-ca-certificates",
            "  Chrome/Chromium on Linux (NSS):"
            f" certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n webpubsub-dev-ca -i {ca}",
        ]
    return lines


# -- internals ---------------------------------------------------------------------


def _load_ca(
    dev: DevCert, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The stored CA if both files are there, match and are valid for another year."""
    try:
        cert = x509.load_pem_x509_certificate(dev.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(dev.ca_key.read_bytes(), password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return None
    if cert.not_valid_after_utc - now < datetime.timedelta(days=365):
        return None
    return cert, key


def _leaf_is_current(dev: DevCert, ca: x509.Certificate, now: datetime.datetime) -> bool:
    """The stored server certificate is the CA's, matches its key and has time left."""
    try:
        cert = x509.load_pem_x509_certificate(dev.cert.read_bytes())
        key = serialization.load_pem_private_key(dev.key.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca)
    except (OSError, ValueError, TypeError, InvalidSignature):
        return False
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        return False
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write(path, pem_key(key), mode=0o600)


def _write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (a temp file of its own, renamed over it),
    with ``mode``: processes running this at once each write whole files."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _user_and_host() -> str:
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER") or os.environ.get("USERNAME") or "user"
    return f"{user}@{os.uname().nodename if hasattr(os, 'uname') else 'localhost'}"
