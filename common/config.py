"""Settings for every Sagawire process, read from ``SAGAWIRE_*`` environment variables.

Every setting has a default that works with no configuration at all; a bad value
fails at start with a message naming the variable: :class:`BadSetting`, which a process's
entry point prints as one line before it exits with status 2 (:func:`exit_on_bad_settings`).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

SERVICE_NAMES = ("order", "inventory", "payment", "shipping")
DEFAULT_PORTS = {
    "coordinator": 50050,
    "order": 50051,
    "inventory": 50052,
    "payment": 50053,
    "shipping": 50054,
}
_S = TypeVar("_S", bound=BaseSettings)
SEED_FILE = Path(__file__).resolve().parent.parent / "services" / "seed.toml"
# The saga definitions: the coordinator runs them, the services react by them.
DEFINITIONS_FILE = Path(__file__).resolve().parent.parent / "contract" / "sagas.yaml"
ENV_PREFIX = "SAGAWIRE_"
# Exit status of a process refused at start for a bad setting or argument.
BAD_SETTING_STATUS = 2
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


class BadSetting(SystemExit):
    """A setting or command-line option a process cannot start with.

    ``name`` is what the person set: ``SAGAWIRE_FAULTS``, or ``--port``. The exit status is
    2; the entry point prints ``str(error)`` as one line first (:func:`exit_on_bad_settings`).
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(BAD_SETTING_STATUS)
        self.name = name
        self.message = message

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


def env_name(field: str) -> str:
    """The variable of a settings field: ``max_streams`` -> ``SAGAWIRE_MAX_STREAMS``."""
    return f"{ENV_PREFIX}{field}".upper()


def _one_line(text: str) -> str:
    return " ".join(str(text).replace("Value error, ", "").split())


def bad_setting_of(
    error: ValidationError | SettingsError, names: dict[str, str] | None = None
) -> BadSetting:
    """The :class:`BadSetting` of a settings class's failure, naming every bad variable.

    ``names`` maps a field to what the person used instead of its variable (``--port``).
    """
    names = names or {}
    if isinstance(error, SettingsError):
        match = re.search(r'field "(\w+)"', str(error))
        field = match.group(1) if match else ""
        cause = error.__cause__
        detail = f"not valid JSON ({cause})" if isinstance(cause, ValueError) else str(error)
        return BadSetting(names.get(field) or env_name(field or "settings"), _one_line(detail))
    problems = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        where = names.get(field) or env_name(field)
        inner = ".".join(str(p) for p in item["loc"][1:])
        problems.append((where, f"{inner + ': ' if inner else ''}{_one_line(item['msg'])}"))
    first, message = problems[0]
    rest = "; ".join(f"{where}: {text}" for where, text in problems[1:])
    return BadSetting(first, message + (f"; {rest}" if rest else ""))


@contextmanager
def exit_on_bad_settings(process: str) -> Iterator[None]:
    """Around a process's start: a bad setting or argument ends it with one line on stderr,
    ``<process>: <SETTING>: <what is wrong>``, and exit status 2."""
    try:
        yield
    except BadSetting as error:
        print(f"{process}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(BAD_SETTING_STATUS) from None
    except (ValidationError, SettingsError) as error:
        print(f"{process}: {bad_setting_of(error)}", file=sys.stderr, flush=True)
        raise SystemExit(BAD_SETTING_STATUS) from None


def usable_directory(path: Path, name: str) -> Path:
    """``path`` as a directory this process can write to, made if missing; else BadSetting."""
    if path.exists() and not path.is_dir():
        raise BadSetting(name, f"{os.fspath(path)} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise BadSetting(name, f"cannot create {os.fspath(path)}: {error.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise BadSetting(name, f"{os.fspath(path)} is not writable by this process")
    return path


def override_names(port: int | None, data_dir: Path | None) -> dict[str, str]:
    """What a process's command line calls the settings it gave (``--port``, ``--data``),
    for :func:`load`'s messages."""
    return {
        **({"port": "--port"} if port is not None else {}),
        **({"data_dir": "--data"} if data_dir is not None else {}),
    }


def readable_file(path: Path | None, name: str) -> None:
    """A file a setting names must be there and readable (None: not set, nothing to read)."""
    if path is None:
        return
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise BadSetting(name, f"cannot read {os.fspath(path)}: {error.strerror}") from None


def check_host(value: str) -> str:
    """An IP address or a host name (what a server may listen on)."""
    try:
        ipaddress.ip_address(value.strip("[]"))
        return value
    except ValueError:
        pass
    if not _HOST_NAME.fullmatch(value) or value.replace(".", "").isdigit():
        raise ValueError(f"expected an IP address or a host name, got {value!r}")
    return value


class ActionFaultConfig(BaseModel):
    """Faults for one action: fail the next N calls (-1: always), added latency."""

    fail_next: int = Field(default=0, ge=-1)
    latency_ms: int = Field(default=0, ge=0, le=600_000)


class FaultConfig(BaseModel):
    """Fault injection, off by default. Deterministic when ``seed`` is non-zero."""

    unavailable_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: int = Field(default=0, ge=0, le=600_000)
    seed: int = 0
    actions: dict[str, ActionFaultConfig] = Field(default_factory=dict)


class Endpoints(BaseSettings):
    """Where each process listens, as ``host:port``; shared by clients of the stack."""

    model_config = SettingsConfigDict(env_prefix="SAGAWIRE_", extra="ignore")

    coordinator_addr: str = f"127.0.0.1:{DEFAULT_PORTS['coordinator']}"
    order_addr: str = f"127.0.0.1:{DEFAULT_PORTS['order']}"
    inventory_addr: str = f"127.0.0.1:{DEFAULT_PORTS['inventory']}"
    payment_addr: str = f"127.0.0.1:{DEFAULT_PORTS['payment']}"
    shipping_addr: str = f"127.0.0.1:{DEFAULT_PORTS['shipping']}"

    def of(self, name: str) -> str:
        """The address of the named process."""
        return str(getattr(self, f"{name}_addr"))

    @field_validator("*")
    @classmethod
    def _host_port(cls, value: str) -> str:
        return check_target(value)


REPLICAS_SCHEME = "ipv4:"


def replicas_target(addresses: Sequence[str]) -> str:
    """One gRPC target for several replicas of a process (``ipv4:h:p1,h:p2``); a channel
    to it spreads calls over them, round robin (common/tls.py)."""
    if len(addresses) == 1:
        return addresses[0]
    return REPLICAS_SCHEME + ",".join(addresses)


# A name whose every address is a replica (compose's ``deploy.replicas``), e.g.
# dns:///order-scale:50051: called round robin too.
DNS_SCHEME = "dns:///"


def check_target(value: str) -> str:
    """``host:port``, ``ipv4:host:port,host:port`` or ``dns:///host:port`` (replicas);
    else ValueError."""
    if value.startswith(DNS_SCHEME):
        check_address(value.removeprefix(DNS_SCHEME))
        return value
    if value.startswith(REPLICAS_SCHEME):
        for address in value.removeprefix(REPLICAS_SCHEME).split(","):
            check_address(address)
        return value
    return check_address(value)


def check_address(value: str) -> str:
    """``host:port``, as clients dial it; else ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    check_host(host)
    return value


class TlsSettings(BaseSettings):
    """Whether TLS is on and where a process finds its CA, certificate and key.

    Used by common/tls.py, which describes every variable; servers read it as part of
    :class:`ServerSettings`, command-line clients on its own.
    """

    model_config = SettingsConfigDict(env_prefix="SAGAWIRE_", extra="ignore")

    # SAGAWIRE_TLS=off is the only way to plaintext.
    tls: bool = True
    data_dir: Path = Path(".sagawire")
    # Default: <data_dir>/certs.
    certs_dir: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # A server requires a client certificate, or (none) asks for none at all.
    tls_client_auth: Literal["require", "none"] = "require"
    # The certificate a command-line client presents.
    tls_identity: str = "operator"

    @property
    def certs_directory(self) -> Path:
        return self.certs_dir if self.certs_dir is not None else self.data_dir / "certs"

    def files(self, identity: str) -> tuple[Path, Path, Path]:
        """The CA, certificate and key ``identity`` uses: explicit paths, else the defaults."""
        directory = self.certs_directory
        return (
            self.tls_ca_file or directory / "ca.crt",
            self.tls_cert_file or directory / f"{identity}.crt",
            self.tls_key_file or directory / f"{identity}.key",
        )

    @property
    def default_paths(self) -> bool:
        return self.tls_ca_file is self.tls_cert_file is self.tls_key_file is None


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}
_DAY = 86_400.0


def seconds(value: object) -> object:
    """A duration as seconds: a number, or a string with a unit (``90s``, ``15m``, ``12h``,
    ``7d``). Anything else is passed on for the field's own validation to refuse."""
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.lower())
        if match is None:
            raise ValueError(f"expected seconds or a duration (90s, 15m, 12h, 7d), got {value!r}")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


class RetentionSettings(BaseSettings):
    """What each process keeps, and for how long (common/retention.py prunes the rest).

    Every window is a duration: seconds, or a number with a unit (``7d``, ``12h``).
    """

    model_config = SettingsConfigDict(env_prefix="SAGAWIRE_", extra="ignore")

    retention_enabled: bool = True
    # Seconds between two pruning passes, and rows deleted per transaction in a pass.
    retention_interval: float = Field(default=60.0, gt=0, le=_DAY)
    retention_batch: int = Field(default=500, ge=1, le=100_000)
    # A finished saga's barrier rows are kept this long after the coordinator said it
    # finished; a request of a saga created longer ago than this, for a step the barrier
    # holds no row of, is refused (common/barrier.py).
    retention_barrier: float = Field(default=7 * _DAY, gt=0)
    # Added to the barrier window before rows go: how far the coordinator's clock (saga
    # ids carry its time) may run ahead of a service's.
    retention_clock_skew: float = Field(default=300.0, ge=0, le=_DAY)
    # Outbox events older than this go once every consumer heard from within it has
    # been sent past them (never the newest event: it holds the stream's position).
    retention_outbox: float = Field(default=7 * _DAY, gt=0)
    # Inbox rows (event ids a consumer processed), by age.
    retention_inbox: float = Field(default=7 * _DAY, gt=0)
    # Events a consumer could not process and skipped (ListPoisonEvents), by age.
    retention_poison: float = Field(default=30 * _DAY, gt=0)
    # Finished (completed or compensated) sagas in the coordinator's saga log, once the
    # participants were told they finished; history is what operators read.
    retention_sagas: float = Field(default=30 * _DAY, gt=0)

    @field_validator(
        "retention_interval",
        "retention_barrier",
        "retention_clock_skew",
        "retention_outbox",
        "retention_inbox",
        "retention_poison",
        "retention_sagas",
        mode="before",
    )
    @classmethod
    def _duration(cls, value: object) -> object:
        return seconds(value)


# A JetStream stream name and the first token of its subjects.
_EVENTS_PREFIX = r"^[A-Za-z0-9_-]{1,32}$"


class EventSettings(BaseSettings):
    """How events travel between processes (common/event_transport.py picks the transport).

    ``grpc`` (the default): each service serves its outbox over ``Subscribe`` streams.
    ``nats://host:4222`` (or ``tls://``, several comma-separated): a relay in each service
    publishes its outbox to NATS JetStream and consumers are durable JetStream consumers
    (common/nats_events.py). Every process of a stack must be given the same value.
    """

    model_config = SettingsConfigDict(env_prefix="SAGAWIRE_", extra="ignore")

    events: str = "grpc"
    # The JetStream stream's name and its subjects' first token ("<prefix>.<producer>...."):
    # stacks sharing a NATS server keep apart by prefix.
    events_prefix: str = Field(default="sagawire", pattern=_EVENTS_PREFIX)
    # A message delivered this many times without being acknowledged (its consumer died
    # or hung on it each time) is recorded as a poison event and terminated.
    events_max_deliver: int = Field(default=20, ge=2, le=10_000)
    # How long the stream keeps a message (the outbox stays the source of truth).
    events_max_age: float = Field(default=7 * _DAY, gt=0)
    # A NATS credentials file (user JWT and NKey seed) for an account with permissions.
    events_credentials: Path | None = None

    @field_validator("events_max_age", mode="before")
    @classmethod
    def _max_age(cls, value: object) -> object:
        return seconds(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: str) -> str:
        if value in ("", "grpc"):
            return "grpc"
        for url in value.split(","):
            scheme, sep, rest = url.strip().partition("://")
            if scheme not in ("nats", "tls") or not sep or not rest:
                raise ValueError(f"expected grpc or nats://host:port (tls://...), got {value!r}")
        return value

    @property
    def events_on_nats(self) -> bool:
        return self.events != "grpc"


class ServerSettings(TlsSettings, RetentionSettings, EventSettings):
    """How a Sagawire gRPC process serves: address, TLS, limits, storage, logging."""

    model_config = SettingsConfigDict(env_prefix="SAGAWIRE_", extra="ignore")

    host: str = "127.0.0.1"
    # 0 asks the OS for a free port (tests); the CLI passes each service's default.
    port: int = Field(default=0, ge=0, le=65535)
    data_dir: Path = Path(".sagawire")
    grace_seconds: float = Field(default=5.0, ge=0, le=300)
    max_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    # Unary calls (Execute, PlaceOrder, health checks...) handled at once. Streams have
    # their own cap below and never take these slots (common/limits.py).
    max_concurrent_rpcs: int = Field(default=2000, ge=1, le=100_000)
    # Streams (Subscribe, WatchSaga, health Watch, reflection) open at once: in all, and
    # per caller (its certificate's identity; its IP address when it has none). An idle
    # event stream still wakes on every commit of its producer, so each one open costs
    # the saga path a little: a stack needs a handful per caller.
    max_streams: int = Field(default=256, ge=1, le=100_000)
    max_streams_per_peer: int = Field(default=32, ge=1, le=100_000)
    # TCP connections held at once; more are closed as they arrive.
    max_connections: int = Field(default=1000, ge=1, le=100_000)
    # A connection with no call for this long is closed (clients reconnect on their next
    # call); any connection is asked to go after ``connection_age_seconds`` and closed
    # ``connection_age_grace_seconds`` later, its streams with it (subscribers resume).
    connection_idle_seconds: float = Field(default=300.0, ge=1, le=2_000_000)
    connection_age_seconds: float = Field(default=3600.0, ge=1, le=2_000_000)
    connection_age_grace_seconds: float = Field(default=300.0, ge=0, le=2_000_000)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # FULL survives power loss; NORMAL (WAL) survives process crashes only.
    sqlite_synchronous: Literal["NORMAL", "FULL"] = "FULL"
    # The local trace file is moved aside at this size (one older file is kept).
    trace_file_max_mb: int = Field(default=100, ge=1, le=1_000_000)
    # gRPC server reflection (what grpcurl lists); it describes the API, never data.
    reflection: bool = True

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return check_host(value)


# A service's Admin API listens this far above the service's port (SAGAWIRE_ADMIN_PORT).
ADMIN_PORT_OFFSET = 10


def admin_addresses(service_target: str) -> list[str]:
    """Where a service's Admin API is by default, for each replica the target names: the
    replica's host, its port + ADMIN_PORT_OFFSET."""
    found = []
    for address in service_target.removeprefix(REPLICAS_SCHEME).split(","):
        host, _, port = address.removeprefix(DNS_SCHEME).rpartition(":")
        found.append(f"{host}:{int(port) + ADMIN_PORT_OFFSET}")
    return found


class ServiceSettings(ServerSettings):
    """Settings of a domain service (order, inventory, payment, shipping)."""

    seed_file: Path = SEED_FILE
    # The same saga definitions as the coordinator's: which events the actions publish,
    # and how the service follows the others' in choreography.
    definitions_file: Path = DEFINITIONS_FILE
    admin_enabled: bool = False
    # The Admin API (fault injection, for the operator) listens on a port of its own,
    # never the service's, on loopback unless told otherwise. Unset: the service's port
    # + ADMIN_PORT_OFFSET (0, for a service on a port the OS picks: one the OS picks).
    admin_host: str = "127.0.0.1"
    admin_port: int | None = Field(default=None, ge=0, le=65535)
    # Follow other services' event streams and react (choreography). The reactions
    # act only on sagas started in choreography mode, so this is on by default.
    reactions_enabled: bool = True
    # SAGAWIRE_MODE, as the coordinator reads it. "orchestration" turns the reactions
    # off: no saga of the stack is choreographed, so no event may carry one on.
    mode: Literal["", "orchestration", "choreography"] = ""
    faults: FaultConfig = Field(default_factory=FaultConfig)
    # The store: "" keeps it in a SQLite file of the data dir; "postgresql://host/db"
    # keeps it in PostgreSQL, in the schema <store_prefix>_<service> (common/pg_store.py),
    # which several replicas of the service may share (with SAGAWIRE_EVENTS on NATS).
    store: str = ""
    store_prefix: str = Field(default="sagawire", pattern=r"^[a-z][a-z0-9_]{0,40}$")
    # Connections (and threads running transactions) of a service on PostgreSQL.
    store_pool: int = Field(default=4, ge=1, le=64)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be empty (SQLite in the data dir) or a postgresql:// URL")
        return value

    @property
    def store_on_postgres(self) -> bool:
        return bool(self.store)

    def store_schema(self, service: str) -> str:
        """The PostgreSQL schema of ``service``'s store."""
        return f"{self.store_prefix}_{service}"

    @property
    def reacts(self) -> bool:
        """Whether the service follows the others' events (choreography)."""
        return self.reactions_enabled and self.mode != "orchestration"

    @field_validator("admin_host")
    @classmethod
    def _admin_host(cls, value: str) -> str:
        return check_host(value)

    @property
    def admin_listen_port(self) -> int:
        """The Admin API's port: SAGAWIRE_ADMIN_PORT, else the service's + the offset."""
        if self.admin_port is not None:
            return self.admin_port
        return self.port + ADMIN_PORT_OFFSET if self.port else 0


def load(cls: type[_S], names: dict[str, str] | None = None, **overrides: object) -> _S:
    """Build settings; a bad value is a :class:`BadSetting` naming its variable (or, for an
    override, what ``names`` calls it, e.g. ``{"port": "--port"}``)."""
    try:
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return cls(**given)
    except (ValidationError, SettingsError) as error:
        raise bad_setting_of(error, names) from None
