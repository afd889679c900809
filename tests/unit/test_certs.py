"""The local CA and the processes' certificates: names, idempotence, rotation."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

from cryptography import x509

from common.certs import IDENTITIES, ensure_certs, files_of, identities_in, identity_of_uri


def _san(path: Path) -> x509.SubjectAlternativeName:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_one_ca_and_a_certificate_per_process_naming_it(tmp_path: Path) -> None:
    written = ensure_certs(tmp_path)
    assert len(written) == 2 + 2 * len(IDENTITIES)
    assert set(IDENTITIES) == {
        "coordinator",
        "order",
        "inventory",
        "payment",
        "shipping",
        "operator",
    }
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    for name in IDENTITIES:
        files = files_of(tmp_path, name)
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        cert.verify_directly_issued_by(ca)
        san = _san(files.cert)
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            f"spiffe://sagawire/{name}"
        ]
        assert {name, "localhost"} <= set(san.get_values_for_type(x509.DNSName))
        assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
        assert identities_in(files.cert.read_bytes()) == [name]
        assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_existing_files_are_kept_and_force_replaces_them_all(tmp_path: Path) -> None:
    ensure_certs(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.crt")}
    assert ensure_certs(tmp_path) == []
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.crt")} == before

    (tmp_path / "payment.crt").unlink()
    assert ensure_certs(tmp_path) == [tmp_path / "payment.crt", tmp_path / "payment.key"]
    assert (tmp_path / "ca.crt").read_bytes() == before["ca.crt"]

    ensure_certs(tmp_path, force=True)
    after = {p.name: p.read_bytes() for p in tmp_path.glob("*.crt")}
    assert all(after[name] != before[name] for name in before)


def test_extra_hosts_join_every_certificate(tmp_path: Path) -> None:
    ensure_certs(tmp_path, ["order"], extra_hosts=["sagawire.internal", "10.0.0.7"])
    san = _san(tmp_path / "order.crt")
    assert "sagawire.internal" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.0.0.7") in san.get_values_for_type(x509.IPAddress)


def test_only_sagawire_spiffe_uris_are_identities() -> None:
    assert identity_of_uri("spiffe://sagawire/payment") == "payment"
    assert identity_of_uri("spiffe://other/payment") is None
    assert identity_of_uri("spiffe://sagawire/") is None
    assert identity_of_uri("spiffe://sagawire/a/b") is None
