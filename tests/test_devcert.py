"""The development CA (``webpubsub dev-cert``): made once, renewed when needed, constrained
to local names, private keys kept private."""

from __future__ import annotations

import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from webpubsub import devcert

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ensure_creates_a_constrained_ca_and_a_localhost_certificate(tmp_path: Path) -> None:
    dev, done = devcert.ensure(tmp_path / "d", now=NOW)
    assert done == ["created the CA", "issued a server certificate"]
    for key in (dev.ca_key, dev.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca, leaf = load(dev.ca_cert), load(dev.cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    permitted = ca.extensions.get_extension_for_class(x509.NameConstraints).value
    assert permitted.permitted_subtrees is not None
    assert set(permitted.permitted_subtrees) == {
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    }
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc - NOW <= devcert.LEAF_VALIDITY


def test_ensure_is_idempotent(tmp_path: Path) -> None:
    dev, _ = devcert.ensure(tmp_path, now=NOW)
    files = [p.read_bytes() for p in (dev.ca_cert, dev.ca_key, dev.cert, dev.key)]
    again, done = devcert.ensure(tmp_path, now=NOW + datetime.timedelta(days=100))
    assert done == []
    assert [p.read_bytes() for p in (again.ca_cert, again.ca_key, again.cert, again.key)] == files


def test_a_certificate_near_its_end_is_issued_anew_by_the_same_ca(tmp_path: Path) -> None:
    dev, _ = devcert.ensure(tmp_path, now=NOW)
    ca, old = dev.ca_cert.read_bytes(), load(dev.cert)
    later = old.not_valid_after_utc - devcert.RENEW_BEFORE + datetime.timedelta(hours=1)
    _, done = devcert.ensure(tmp_path, now=later)
    assert done == ["issued a server certificate"]
    assert dev.ca_cert.read_bytes() == ca
    assert load(dev.cert).serial_number != old.serial_number
    assert load(dev.cert).not_valid_after_utc > old.not_valid_after_utc


@pytest.mark.parametrize("broken", ["cert.pem", "key.pem"])
def test_a_broken_or_foreign_server_certificate_is_replaced(tmp_path: Path, broken: str) -> None:
    dev, _ = devcert.ensure(tmp_path, now=NOW)
    (tmp_path / broken).write_text("garbage")
    _, done = devcert.ensure(tmp_path, now=NOW)
    assert done == ["issued a server certificate"]
    # A certificate of another CA in the directory is not kept either.
    other = devcert.issue_server_cert(devcert.create_ca(NOW), ["localhost"], not_before=NOW)
    (tmp_path / "cert.pem").write_bytes(other[0].public_bytes(devcert.serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(devcert.pem_key(other[1]))
    _, done = devcert.ensure(tmp_path, now=NOW)
    assert done == ["issued a server certificate"]
    load(dev.cert).verify_directly_issued_by(load(dev.ca_cert))


def test_a_lost_ca_key_makes_a_new_ca_and_certificate(tmp_path: Path) -> None:
    dev, _ = devcert.ensure(tmp_path, now=NOW)
    old_ca = dev.ca_cert.read_bytes()
    dev.ca_key.unlink()
    _, done = devcert.ensure(tmp_path, now=NOW)
    assert done == ["created the CA", "issued a server certificate"]
    assert dev.ca_cert.read_bytes() != old_ca
    load(dev.cert).verify_directly_issued_by(load(dev.ca_cert))


def test_default_directory_follows_the_env_then_the_platform(tmp_path: Path) -> None:
    assert devcert.default_directory({devcert.DIR_ENV: str(tmp_path)}) == tmp_path
    xdg = devcert.default_directory({"XDG_DATA_HOME": str(tmp_path)})
    if devcert.sys.platform.startswith("linux"):
        assert xdg == tmp_path / "webpubsub" / "dev-cert"


def test_trust_instructions_name_the_ca_for_node_python_and_the_system(tmp_path: Path) -> None:
    dev = devcert.DevCert(tmp_path)
    text = "\n".join(devcert.trust_instructions(dev))
    assert f"NODE_EXTRA_CA_CERTS={dev.ca_cert}" in text
    assert f"SSL_CERT_FILE={dev.ca_cert}" in text
    assert f"REQUESTS_CA_BUNDLE={dev.ca_cert}" in text
    assert "System:" in text
