"""The coordinator process: the saga log, the engine, recovery and the public API, wired.

``CoordinatorApp`` plugs into :func:`common.server.start_server` like every
domain service. In tests::

    settings = CoordinatorSettings(port=0, data_dir=tmp_path)
    running = await start_server(CoordinatorApp(settings, endpoints), settings)
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import grpc

from common.breakers import BreakerBoard, BreakerSettings
from common.bulkhead import Bulkheads
from common.certs import COORDINATOR
from common.config import (
    DEFAULT_PORTS,
    BadSetting,
    Endpoints,
    load,
    override_names,
    readable_file,
    usable_directory,
)
from common.event_transport import event_transport
from common.gc_policy import settle_for_serving
from common.logs import setup_logging
from common.policy import CallPolicy
from common.retention import Retention
from common.server import serve_until_signal, server_options, start_server
from common.telemetry import saga_metrics, setup_telemetry
from common.tls import Identity, check_server_material
from common.tokens import TokenKeyError, ensure_signing_key
from contract.definitions import DefinitionError, Definitions, SagaMode, load_definitions
from coordinator.api import service as api
from coordinator.api.auth import ApiAuth
from coordinator.choreography.observer import Observer
from coordinator.engine.crash import CrashHook
from coordinator.engine.finished import FinishedNotifier, saga_log_task
from coordinator.engine.participants import Participants
from coordinator.engine.recovery import recover
from coordinator.engine.replicas import ReplicaDuties
from coordinator.engine.runner import SagaRunner
from coordinator.engine.scheduler import Redrive, SagaEngine
from coordinator.engine.telemetry import CarriedSpans, breaker_changed
from coordinator.log.postgres import PostgresOffsets, PostgresSagaLog
from coordinator.log.saga_log import SagaLog
from coordinator.log.sqlite import SqliteSagaLog
from coordinator.settings import CoordinatorSettings

log = logging.getLogger(__name__)

LOG_FILE = "coordinator.db"


class CoordinatorApp:
    """The coordinator as a :class:`common.server.App`."""

    identity = COORDINATOR
    service_names: Sequence[str] = (api.SERVICE_NAME,)

    def __init__(
        self,
        settings: CoordinatorSettings,
        endpoints: Endpoints | None = None,
        saga_log: SagaLog | None = None,
        client_interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        definitions: Definitions | None = None,
    ) -> None:
        self.settings = settings
        self.definitions = definitions or load_definitions(settings.definitions_file, settings.mode)
        participants = participants_of(self.definitions)
        # Every call out presents the coordinator's certificate (mutual TLS).
        self.tls = Identity(self.identity, settings)
        self.participants = Participants(
            endpoints or Endpoints(), participants, client_interceptors, self.tls
        )
        self.breakers = BreakerBoard(
            BreakerSettings(
                failure_rate=settings.breaker_failure_rate,
                minimum_calls=settings.breaker_minimum_calls,
                window=settings.breaker_window,
                reset_timeout=settings.breaker_reset_timeout,
            )
        )
        unknown = sorted(set(settings.bulkheads) - set(participants))
        if unknown:
            raise ValueError(f"SAGAWIRE_BULKHEADS names unknown participants: {unknown}")
        self.bulkheads = Bulkheads(settings.bulkhead, settings.bulkheads)
        for name in participants:
            self.breakers.breaker(name)  # listed (closed) before their first call
            saga_metrics().breaker_changed(name, "closed")
        # Breaker changes are logged by the board; telemetry adds a metric and a span event.
        self.breakers.add_listener(breaker_changed)
        self.log = saga_log or saga_log_of(settings)
        self.crash = CrashHook(settings.crash_at)
        self.log.crash = self.crash  # "transition#N": between any two transitions
        # Choreographed sagas' spans: the runner hands them over, the observer ends them.
        carried = CarriedSpans()
        self.runner = SagaRunner(
            self.log,
            self.definitions,
            self.participants,
            CallPolicy(self.breakers, self.bulkheads),
            self.crash,
            carried=carried,
        )
        self.engine = SagaEngine(
            self.log,
            self.definitions,
            self.runner,
            max_concurrent=settings.max_concurrent_sagas,
            max_pending=settings.max_pending_sagas,
            redrive=Redrive(settings.redrive_first_wait, settings.redrive_attempts),
        )
        # Choreographed sagas are followed through the services' event streams.
        choreographed = any(
            d.mode is SagaMode.CHOREOGRAPHY for d in self.definitions.sagas.values()
        )
        self.observer = (
            Observer(
                self.log,
                endpoints or Endpoints(),
                settings.data_dir,
                synchronous=settings.sqlite_synchronous,
                channel_options=server_options(settings),
                stall_check_seconds=settings.stall_check_seconds,
                carried=carried,
                identity=self.tls,
                definitions=self.definitions,
                offsets=PostgresOffsets(self.log)
                if isinstance(self.log, PostgresSagaLog)
                else None,
                transport=event_transport(settings, self.tls, server_options(settings)),
            )
            if choreographed
            else None
        )
        # Replicas sharing a PostgreSQL log: leases renewed and taken over, one observer.
        self.replicas = (
            ReplicaDuties(self.log, self.engine, self.observer)
            if isinstance(self.log, PostgresSagaLog)
            else None
        )
        self.servicer = api.CoordinatorServicer(
            self.engine,
            self.log,
            self.definitions,
            self.breakers,
            self.bulkheads,
            ApiAuth.from_settings(settings),
            shed_at_door=settings.shed_at_door,
            addresses={name: self.participants.address(name) for name in participants},
        )
        # Retention: participants hear which sagas finished; finished sagas leave the log.
        self.finished = FinishedNotifier(
            self.log, self.definitions, self.participants, participants
        )
        self.retention = Retention(
            [saga_log_task(self.log, settings.retention_sagas)],
            settings.retention_interval,
            settings.retention_batch,
        )
        self._stopped = False

    def register(self, server: grpc.aio.Server) -> None:
        api.register(server, self.servicer)

    async def start(self) -> None:
        await self.log.open()
        if self.crash.armed:
            log.warning("crash hook armed at=%s (test only)", self.settings.crash_at)
        resumed = await recover(self.log, self.engine, self.crash)
        if self.replicas is not None:
            await self.replicas.start()  # the observer, when this replica holds its role
        elif self.observer is not None:
            await self.observer.start()
        if self.settings.retention_enabled:
            self.finished.start()
            self.retention.start()
        log.info("coordinator ready sagas_resumed=%d", resumed)

    async def drain(self) -> None:
        """Shutdown has begun: take no new sagas, end WatchSaga streams and outcome waits."""
        self.engine.drain()

    async def stop(self) -> None:
        """Drain (or leave to recovery) running sagas, then close clients and the log."""
        if self._stopped:
            return
        self._stopped = True
        await self.retention.stop()
        await self.finished.stop()
        await self.engine.close(self.settings.drain_seconds)
        if self.replicas is not None:
            await self.replicas.stop()
        elif self.observer is not None:
            await self.observer.stop()
        await self.participants.close()
        await self.log.close()


def saga_log_of(settings: CoordinatorSettings) -> SagaLog:
    """The saga log the settings name: SQLite in the data dir, or shared PostgreSQL."""
    if settings.saga_log:
        return PostgresSagaLog(
            settings.saga_log,
            schema=settings.saga_log_schema,
            replica=settings.replica_id,
            lease_seconds=settings.lease_seconds,
        )
    return SqliteSagaLog(settings.data_dir / LOG_FILE, synchronous=settings.sqlite_synchronous)


def participants_of(definitions: Definitions) -> list[str]:
    """Every participant some saga calls, by name."""
    return sorted({s.participant for d in definitions.sagas.values() for s in d.steps})


async def run(settings: CoordinatorSettings, definitions: Definitions) -> None:
    """Serve until SIGTERM/SIGINT; traces and metrics are flushed on the way out."""
    telemetry = setup_telemetry(
        "coordinator", settings.data_dir, trace_file_max_bytes=settings.trace_file_max_mb << 20
    )
    app = CoordinatorApp(
        settings, client_interceptors=telemetry.client_interceptors(), definitions=definitions
    )
    running = await start_server(app, settings, telemetry=telemetry)
    settle_for_serving()  # common/gc_policy.py: start-up is never scanned again
    await serve_until_signal(running)


def configure(
    port: int | None = None, data_dir: Path | None = None
) -> tuple[CoordinatorSettings, Definitions]:
    """The coordinator's settings and definitions, every one checked as far as it can be
    before serving (``port`` and ``data_dir``: the command line's ``--port``, ``--data``).

    Raises:
        BadSetting: naming the variable (or option) the coordinator cannot start with.
    """
    if port is None and "SAGAWIRE_PORT" not in os.environ:
        port = DEFAULT_PORTS["coordinator"]
    names = override_names(port, data_dir)
    settings = load(CoordinatorSettings, names=names, port=port, data_dir=data_dir)
    endpoints = load(Endpoints)
    usable_directory(settings.data_dir, names.get("data_dir", "SAGAWIRE_DATA_DIR"))
    readable_file(settings.events_credentials, "SAGAWIRE_EVENTS_CREDENTIALS")
    try:
        definitions = load_definitions(settings.definitions_file, settings.mode)
    except DefinitionError as error:
        raise BadSetting(
            "SAGAWIRE_DEFINITIONS_FILE", f"{settings.definitions_file}: {'; '.join(error.problems)}"
        ) from None
    participants = participants_of(definitions)
    try:
        Participants(endpoints, participants)  # every participant has an address
    except ValueError as error:
        raise BadSetting("SAGAWIRE_DEFINITIONS_FILE", str(error)) from None
    if unknown := sorted(set(settings.bulkheads) - set(participants)):
        raise BadSetting(
            "SAGAWIRE_BULKHEADS",
            f"unknown participants {', '.join(map(repr, unknown))}"
            f" (the definitions call {', '.join(participants)})",
        )
    if settings.auth and settings.local_key:
        try:
            ensure_signing_key(settings.key_path)
        except (TokenKeyError, OSError) as error:
            variable = "SAGAWIRE_TOKEN_KEY_FILE" if settings.token_key_file else "SAGAWIRE_DATA_DIR"
            raise BadSetting(variable, str(error)) from None
    check_server_material(settings, COORDINATOR)
    return settings, definitions


def main(port: int | None = None, data_dir: Path | None = None) -> None:
    """Entry point shared by ``python -m coordinator`` and ``sagawire serve coordinator``."""
    settings, definitions = configure(port, data_dir)
    setup_logging("coordinator", settings.log_level)
    try:
        import uvloop

        uvloop.run(run(settings, definitions))
    except ImportError:
        asyncio.run(run(settings, definitions))
