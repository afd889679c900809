"""Start one domain service process with the common server bootstrap.

:func:`configure` checks every setting before anything is served — a bad one is a
:class:`common.config.BadSetting` naming it — and :func:`main` then runs the service.
``sagawire serve <name>`` and ``python -m services.<name>`` both come here, through the
one set of options of cli/serve.py.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import tomllib
from pathlib import Path

from common.admin import describe_unknown, unknown_actions
from common.config import (
    DEFAULT_PORTS,
    BadSetting,
    Endpoints,
    ServiceSettings,
    load,
    override_names,
    readable_file,
    usable_directory,
)
from common.gc_policy import settle_for_serving
from common.logs import setup_logging
from common.server import serve_until_signal, start_server
from common.telemetry import setup_telemetry
from common.tls import check_server_material
from contract.definitions import DefinitionError, load_definitions
from services.runtime import DomainService, ServiceSpec


def spec_of(name: str) -> ServiceSpec:
    """The ServiceSpec of a service by name ("order", "inventory", ...)."""
    module = importlib.import_module(f"services.{name}")
    spec: ServiceSpec = module.SPEC
    return spec


async def run(name: str, settings: ServiceSettings) -> None:
    """Serve until SIGTERM/SIGINT; traces and metrics are flushed on the way out."""
    try:
        service = DomainService(spec_of(name), settings)
    except DefinitionError as error:
        raise SystemExit(str(error)) from None
    telemetry = setup_telemetry(
        name, settings.data_dir, trace_file_max_bytes=settings.trace_file_max_mb << 20
    )
    running = await start_server(service, settings, telemetry=telemetry)
    settle_for_serving()  # common/gc_policy.py: start-up is never scanned again
    await serve_until_signal(running)


def configure(name: str, port: int | None = None, data_dir: Path | None = None) -> ServiceSettings:
    """The service's settings, every one checked as far as it can be before serving.

    ``port`` and ``data_dir`` are the command line's ``--port`` and ``--data``; they win
    over ``SAGAWIRE_PORT`` and ``SAGAWIRE_DATA_DIR``.

    Raises:
        BadSetting: naming the variable (or option) the service cannot start with.
    """
    if port is None and "SAGAWIRE_PORT" not in os.environ:
        port = DEFAULT_PORTS[name]
    names = override_names(port, data_dir)
    settings = load(ServiceSettings, names=names, port=port, data_dir=data_dir)
    load(Endpoints)  # the producers a reacting service follows
    usable_directory(settings.data_dir, "--data" if data_dir else "SAGAWIRE_DATA_DIR")
    check_seed_file(settings.seed_file)
    readable_file(settings.events_credentials, "SAGAWIRE_EVENTS_CREDENTIALS")
    try:
        load_definitions(settings.definitions_file)  # the service reacts by them
    except DefinitionError as error:
        raise BadSetting(
            "SAGAWIRE_DEFINITIONS_FILE", f"{settings.definitions_file}: {'; '.join(error.problems)}"
        ) from None
    spec = spec_of(name)
    if unknown := unknown_actions(settings.faults, spec.action_names):
        raise BadSetting(
            "SAGAWIRE_FAULTS",
            describe_unknown(unknown, spec.action_names).replace("this service", name),
        )
    check_server_material(settings, name)
    return settings


def check_seed_file(path: Path) -> None:
    """The seed data must be a readable TOML file (it is loaded into an empty store)."""
    try:
        with path.open("rb") as f:
            tomllib.load(f)
    except OSError as error:
        raise BadSetting("SAGAWIRE_SEED_FILE", f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise BadSetting("SAGAWIRE_SEED_FILE", f"{path} is not TOML: {error}") from None


def main(name: str, port: int | None = None, data_dir: Path | None = None) -> None:
    """Entry point shared by ``python -m services.<name>`` and ``sagawire serve``."""
    settings = configure(name, port, data_dir)
    setup_logging(name, settings.log_level)
    try:
        import uvloop

        uvloop.run(run(name, settings))
    except ImportError:
        asyncio.run(run(name, settings))
