"""Start one domain service process with the common server bootstrap."""

from __future__ import annotations

import asyncio
import importlib
import os
from pathlib import Path

from common.config import DEFAULT_PORTS, ServiceSettings, load
from common.logs import setup_logging
from common.server import serve_until_signal, start_server
from common.telemetry import setup_telemetry
from coordinator.definitions import DefinitionError
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
    await serve_until_signal(running)


def main(name: str, port: int | None = None, data_dir: Path | None = None) -> None:
    """Entry point shared by ``python -m services.<name>`` and ``sagawire serve``."""
    if port is None and "SAGAWIRE_PORT" not in os.environ:
        port = DEFAULT_PORTS[name]
    settings = load(ServiceSettings, port=port, data_dir=data_dir)
    setup_logging(name, settings.log_level)
    try:
        import uvloop

        uvloop.run(run(name, settings))
    except ImportError:
        asyncio.run(run(name, settings))
