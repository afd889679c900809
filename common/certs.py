"""The stack's local certificate authority and one certificate per process.

``sagawire certs`` (and ``sagawire up`` / ``demo`` / ``bench``, and a server started
with the default paths) calls :func:`ensure_certs`, which writes into one directory::

    ca.crt  ca.key                    the local CA (its key signs, nothing else uses it)
    coordinator.crt  coordinator.key  one pair per identity in IDENTITIES
    ...

Every leaf certificate names its process three ways in the subjectAltName: the SPIFFE
URI ``spiffe://sagawire/<name>`` (the identity the server interceptor reads, see
common/authz.py), the DNS name ``<name>`` (what a client pins when it knows which
process it expects, and the host name in compose), and ``localhost`` / ``127.0.0.1`` /
``::1`` so that a plain client such as grpcurl verifies a local server by its address.

Creation is idempotent and safe when several processes start at once: missing files
are made under an exclusive lock, existing ones are never overwritten (``force``
replaces every file, CA included — every process must then restart). Keys are
ECDSA P-256, written with mode 0600.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.config import SERVICE_NAMES

COORDINATOR = "coordinator"
# The client identity of people and tools: the CLI, grpcurl, the bench.
OPERATOR = "operator"
IDENTITIES: tuple[str, ...] = (COORDINATOR, *SERVICE_NAMES, OPERATOR)
SPIFFE_PREFIX = "spiffe://sagawire/"
CA_NAME = "ca"

_CA_DAYS = 3650
_LEAF_DAYS = 397
_LOCK = ".lock"


@dataclass(frozen=True)
class CertFiles:
    """Where one identity's TLS material lives."""

    ca: Path
    cert: Path
    key: Path

    def missing(self) -> list[Path]:
        return [p for p in (self.ca, self.cert, self.key) if not p.is_file()]


def files_of(directory: Path, identity: str) -> CertFiles:
    """The default file names of ``identity`` in a certificates directory."""
    return CertFiles(
        directory / f"{CA_NAME}.crt", directory / f"{identity}.crt", directory / f"{identity}.key"
    )


def spiffe_id(identity: str) -> str:
    return f"{SPIFFE_PREFIX}{identity}"


def identity_of_uri(uri: str) -> str | None:
    """``spiffe://sagawire/payment`` -> ``payment``; None for any other URI."""
    if not uri.startswith(SPIFFE_PREFIX):
        return None
    name = uri.removeprefix(SPIFFE_PREFIX)
    return name if name and "/" not in name else None


def identities_in(pem: bytes) -> list[str]:
    """The Sagawire identities a PEM certificate's subjectAltName names (normally one)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found = (identity_of_uri(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier))
    return [name for name in found if name is not None]


def ensure_certs(
    directory: Path,
    identities: Iterable[str] = IDENTITIES,
    *,
    force: bool = False,
    extra_hosts: Sequence[str] = (),
) -> list[Path]:
    """Make the CA and each identity's certificate in ``directory`` unless present.

    Returns the files written (empty when everything was there). ``extra_hosts`` are
    added to every leaf's subjectAltName (DNS names or IP addresses), e.g. the host
    name a remote client uses.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory):
        written: list[Path] = []
        ca_cert_path, ca_key_path = directory / f"{CA_NAME}.crt", directory / f"{CA_NAME}.key"
        if force or not (ca_cert_path.is_file() and ca_key_path.is_file()):
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_cert = _ca_certificate(ca_key)
            _write_key(ca_key_path, ca_key)
            _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
            written += [ca_cert_path, ca_key_path]
            force = True  # a new CA makes every leaf stale
        else:
            loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{ca_key_path}: not an EC private key")
            ca_key = loaded
            ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        for identity in identities:
            files = files_of(directory, identity)
            if not force and files.cert.is_file() and files.key.is_file():
                continue
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _leaf_certificate(identity, key, ca_key, ca_cert, extra_hosts)
            _write_key(files.key, key)
            _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
            written += [files.cert, files.key]
        return written


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive lock on the directory, so processes starting together make one CA."""
    with (directory / _LOCK).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sagawire"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Sagawire local CA"),
        ]
    )
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _leaf_certificate(
    identity: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    extra_hosts: Sequence[str],
) -> x509.Certificate:
    hosts = dict.fromkeys([identity, "localhost", "127.0.0.1", "::1", *extra_hosts])
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(spiffe_id(identity)),
        *(_general_name(h) for h in hosts),
    ]
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sagawire"),
                    x509.NameAttribute(NameOID.COMMON_NAME, identity),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
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
        # Every process is a server and a client (the services follow each other's streams).
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write atomically (a reader never sees half a file), with ``mode``."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, 0o600)


def export(directory: Path, out: Path, identities: Iterable[str] = IDENTITIES) -> list[Path]:
    """Copy each identity's own files (and the CA certificate) to ``out/<identity>/``.

    So that each process can be given its own key only (compose mounts one such
    directory per container); the CA's key is never copied.
    """
    written: list[Path] = []
    for identity in identities:
        files = files_of(directory, identity)
        target = out / identity
        target.mkdir(parents=True, exist_ok=True)
        for source, mode in ((files.ca, 0o644), (files.cert, 0o644), (files.key, 0o600)):
            _write(target / source.name, source.read_bytes(), mode)
            written.append(target / source.name)
    return written


def expiry(path: Path) -> datetime.datetime:
    """When the certificate at ``path`` stops being valid."""
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
