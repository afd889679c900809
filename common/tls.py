"""Transport security of every Sagawire connection: mutual TLS unless asked otherwise by name.

Every process has an identity — a certificate from the stack's CA naming it
(``spiffe://sagawire/<name>``, see common/certs.py) — and every connection is mutual
TLS: a server presents its certificate and requires the caller's, a client presents
its own and verifies the server's against the same CA. Who may call what is then
decided per method by common/authz.py.

Settings (``SAGAWIRE_*``)::

    TLS            on (default) | off: off is the only way to plaintext, and every
                   process started that way logs a loud warning
    CERTS_DIR      where the CA and the certificates are (default <DATA_DIR>/certs)
    TLS_CA_FILE    the CA certificate            (default <CERTS_DIR>/ca.crt)
    TLS_CERT_FILE  this process's certificate    (default <CERTS_DIR>/<identity>.crt)
    TLS_KEY_FILE   this process's private key    (default <CERTS_DIR>/<identity>.key)
    TLS_CLIENT_AUTH  require (default) | none: "none" makes a server ask for no client
                   certificate (TLS authenticates the server only), for the coordinator's
                   public port when callers hold only a bearer token. gRPC Python cannot
                   ask for an optional certificate, so it is one or the other.
    TLS_IDENTITY   the identity a command-line client presents (default operator)

A server started with the default paths makes the CA and every certificate on first
use when they are missing (common.certs.ensure_certs: never overwrites); a client
never does, since certificates of a new CA would not be trusted by a running stack.

Clients open channels through an :class:`Identity` (``aio_channel`` / ``sync_channel``).
Given the name of the process they expect (``peer``), they accept only a server whose
certificate names it (the TLS host name check runs against ``peer``, a DNS name in its
certificate), so the coordinator sends ``Execute`` only to the real payment service and a
reaction follows only the producer its definition names. Without ``peer`` the server is
checked by the address's host (every certificate names localhost, 127.0.0.1 and ::1).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.certs import IDENTITIES, CertFiles, ensure_certs
from common.config import BadSetting, TlsSettings

log = logging.getLogger(__name__)

PLAINTEXT_WARNING = (
    "PLAINTEXT MODE (SAGAWIRE_TLS=off): no encryption and no identities; every caller "
    "that reaches this process is trusted to call anything. Use only on a network you "
    "trust completely."
)

ChannelOptions = Sequence[tuple[str, str | int]]


class TlsError(Exception):
    """The TLS material is missing or unreadable; the message says what to do.

    ``setting`` names the variable that points at it (``SAGAWIRE_CERTS_DIR``, or the
    ``SAGAWIRE_TLS_*_FILE`` given explicitly).
    """

    def __init__(self, message: str, setting: str = "SAGAWIRE_CERTS_DIR") -> None:
        super().__init__(message)
        self.setting = setting


def _setting_of(settings: TlsSettings, path: Path) -> str:
    """The variable that put ``path`` where it is."""
    for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if getattr(settings, name) == path:
            return f"SAGAWIRE_{name.upper()}"
    return "SAGAWIRE_CERTS_DIR" if settings.certs_dir is not None else "SAGAWIRE_DATA_DIR"


@dataclass(frozen=True)
class Material:
    """One identity's PEM bytes, as gRPC takes them."""

    ca: bytes
    cert: bytes
    key: bytes


def load_material(settings: TlsSettings, identity: str, *, create: bool = False) -> Material:
    """Read ``identity``'s CA, certificate and key.

    With ``create`` (servers) and the default paths, missing files are made first.
    Raises :class:`TlsError` naming what is missing and how to make it.
    """
    files = CertFiles(*settings.files(identity))
    if files.missing() and create and settings.default_paths:
        try:
            written = ensure_certs(settings.certs_directory, IDENTITIES)
        except OSError as error:
            raise TlsError(
                f"cannot create the certificates: {error}",
                _setting_of(settings, settings.certs_directory),
            ) from None
        if written:
            log.info("certificates created dir=%s files=%d", settings.certs_directory, len(written))
    if missing := files.missing():
        raise TlsError(
            f"no TLS material for {identity!r}: missing {', '.join(map(str, missing))}. "
            f"Run `sagawire certs --dir {settings.certs_directory}` (or start the stack "
            "once), or set SAGAWIRE_TLS=off to run in plaintext",
            _setting_of(settings, missing[0]),
        )
    try:
        return Material(files.ca.read_bytes(), files.cert.read_bytes(), files.key.read_bytes())
    except OSError as error:
        where = Path(error.filename) if error.filename else files.cert
        raise TlsError(
            f"cannot read TLS material for {identity!r}: {error}", _setting_of(settings, where)
        ) from None


def server_credentials(settings: TlsSettings, identity: str) -> grpc.ServerCredentials:
    """A server's credentials: its certificate, and (by default) the caller's required."""
    material = load_material(settings, identity, create=True)
    return grpc.ssl_server_credentials(
        [(material.key, material.cert)],
        root_certificates=material.ca,
        require_client_auth=settings.tls_client_auth == "require",
    )


def check_server_material(settings: TlsSettings, identity: str) -> None:
    """At a server's start: its TLS material is there (made first with the default paths).

    Raises:
        BadSetting: naming the variable that points at what is missing or unreadable.
    """
    if settings.tls:
        try:
            load_material(settings, identity, create=True)
        except TlsError as error:
            raise BadSetting(error.setting, str(error)) from None


def channel_credentials(settings: TlsSettings, identity: str) -> grpc.ChannelCredentials:
    """A client's credentials: the CA to verify servers by, its own certificate and key."""
    material = load_material(settings, identity)
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca,
        private_key=material.key,
        certificate_chain=material.cert,
    )


def _options(
    options: ChannelOptions, peer: str | None, address: str = ""
) -> list[tuple[str, str | int]]:
    pinned: list[tuple[str, str | int]] = [("grpc.ssl_target_name_override", peer)] if peer else []
    if "," in address or address.startswith("dns:"):  # replicas: each call to the next one
        pinned.append(("grpc.lb_policy_name", "round_robin"))
    return [*options, *pinned]


_warned = False


def warn_plaintext() -> None:
    """Say loudly, once per process, that this process runs without TLS."""
    global _warned
    if not _warned:
        _warned = True
        if logging.getLogger().handlers:
            log.warning(PLAINTEXT_WARNING)
        else:  # a command-line client: no logging set up
            print(f"WARNING: {PLAINTEXT_WARNING}", file=sys.stderr)


@dataclass(frozen=True)
class Identity:
    """Who a client is (``name``, e.g. "coordinator") and where its TLS material is.

    Every channel in Sagawire is opened through one of these, so every call presents
    the caller's certificate (or, with ``SAGAWIRE_TLS=off``, none, said loudly once).
    """

    name: str
    settings: TlsSettings

    @classmethod
    def from_env(cls, name: str | None = None) -> Identity:
        """``name`` (default ``SAGAWIRE_TLS_IDENTITY``, operator) with settings from the env."""
        settings = TlsSettings()
        return cls(name or settings.tls_identity, settings)

    def aio_channel(
        self,
        address: str,
        *,
        peer: str | None = None,
        options: ChannelOptions = (),
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> grpc.aio.Channel:
        """An asyncio channel to ``address``; ``peer``: the process expected there."""
        if not self.settings.tls:
            warn_plaintext()
            return grpc.aio.insecure_channel(
                address, options=_options(options, None, address), interceptors=interceptors
            )
        return grpc.aio.secure_channel(
            address,
            channel_credentials(self.settings, self.name),
            options=_options(options, peer, address),
            interceptors=interceptors,
        )

    def sync_channel(
        self, address: str, *, peer: str | None = None, options: ChannelOptions = ()
    ) -> grpc.Channel:
        """A blocking channel (command-line verbs), otherwise as :meth:`aio_channel`."""
        if not self.settings.tls:
            warn_plaintext()
            return grpc.insecure_channel(address, options=_options(options, None, address))
        return grpc.secure_channel(
            address,
            channel_credentials(self.settings, self.name),
            options=_options(options, peer, address),
        )
