"""Assembles a domain service process from its parts: store, actions, queries, events.

Each service supplies its schema, seed loader, action table and query servicer;
this module wires them to the barrier, the outbox, the event stream, fault
injection and the common server bootstrap. Events travel over the transport the
settings choose (common/event_transport.py): the service's own gRPC stream, or a
relay to NATS JetStream. The saga definitions (the same file as
the coordinator's, SAGAWIRE_DEFINITIONS_FILE) say which events the actions publish
and how the service reacts to the others' in choreography (services/choreography.py).
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import Message

from common import barrier, inbox, outbox, retention
from common.admin import AdminServicer, StreamCuts
from common.config import BadSetting, Endpoints, ServiceSettings
from common.event_transport import Relay, event_transport
from common.faults import FaultInjector
from common.metrics import StreamPositions
from common.participant import Action, ActionRunner, ParticipantServicer
from common.server import server_options, start_side_server
from common.store import Connection, Database, Store, utc_now
from common.stream import EventStreamServicer
from common.supervisor import Supervisor
from common.telemetry import service_metrics
from common.tls import Identity
from contract.definitions import load_definitions
from protos.sagawire.v1 import admin_pb2_grpc, events_pb2, events_pb2_grpc, participant_pb2_grpc
from services import choreography
from services.choreography import CHOREOGRAPHED_ONLY, Reactions, started_by_events
from services.saga_events import SagaEvents

log = logging.getLogger(__name__)

ADMIN_SERVICE = "sagawire.v1.Admin"

_SEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS seed_loaded (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
"""


_LAST_SEQUENCE = "SELECT COALESCE(MAX(sequence), 0) FROM outbox"


def _store(
    spec: ServiceSpec, settings: ServiceSettings, wake: Callable[[], Awaitable[object]]
) -> Store:
    """The service's store: a SQLite file of the data dir, or its schema on PostgreSQL
    (``SAGAWIRE_STORE``), where ``wake`` is called for every outbox commit of any replica."""
    schema = (
        barrier.SCHEMA
        + outbox.SCHEMA
        + inbox.SCHEMA
        + choreography.SCHEMA
        + _SEED_SCHEMA
        + spec.schema
    )
    if not settings.store_on_postgres:
        return Database(
            settings.data_dir / f"{spec.name}.db",
            schema=schema,
            synchronous=settings.sqlite_synchronous,
        )
    from common import pg_dialect  # only a stack on PostgreSQL needs psycopg
    from common.pg_store import PostgresDatabase

    return PostgresDatabase(
        settings.store,
        settings.store_schema(spec.name),
        pg_dialect.schema(schema) + outbox.POSTGRES_SCHEMA,
        pool_size=settings.store_pool,
        on_notify=wake,
    )


@dataclass(frozen=True)
class ServiceSpec:
    """Everything that makes one domain service itself."""

    name: str
    schema: str
    actions: Sequence[Action[Any]]
    # Loads this service's section of the seed file; runs once, at first start.
    load_seed: Callable[[Connection, Mapping[str, Any]], None]
    # Full gRPC name and registration of the service's query API.
    query_service_name: str
    register_queries: Callable[[grpc.aio.Server, Store], None]
    # Brings a store made by an older version up to date (idempotent), at every start.
    migrate: Callable[[Connection], None] | None = None

    @property
    def action_names(self) -> frozenset[str]:
        """Every action and compensation the service runs: what a fault rule may name."""
        return frozenset(
            name for a in self.actions for name in (a.name, a.compensation) if name is not None
        )


class DomainService:
    """A running domain service: implements :class:`common.server.App`."""

    def __init__(
        self, spec: ServiceSpec, settings: ServiceSettings, endpoints: Endpoints | None = None
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.endpoints = endpoints or Endpoints()
        self.definitions = load_definitions(settings.definitions_file)
        self.db: Store = _store(spec, settings, wake=lambda: self.outbox.notify())
        self.outbox = outbox.Outbox(self.db, source=spec.name)
        self.stream_positions = StreamPositions(head=self._outbox_head)
        self.faults = FaultInjector(settings.faults)
        self.stream_cuts = StreamCuts(wake=self.outbox.notify)
        self.transport = event_transport(
            settings, Identity(spec.name, settings), server_options(settings)
        )
        # What publishes the outbox when the transport is not the service's own stream.
        self.relay: Relay | None = self.transport.relay(
            spec.name, self.outbox, self.db, self.stream_cuts
        )
        actions: Mapping[str, Action[Message]] = {a.name: a for a in spec.actions}
        self.runner = ActionRunner(
            self.db,
            self.outbox,
            actions,
            retention.barrier_horizon(settings),
            announce=SagaEvents(spec.name, self.definitions),
        )
        self.reactions = Reactions(spec.name, self.definitions, self.runner)
        self.retention = retention.Retention(
            [
                *retention.service_tasks(self.db, self.outbox, settings),
                choreography.pruning(self.db, settings),
            ],
            settings.retention_interval,
            settings.retention_batch,
        )
        self.consumers = (
            [
                inbox.Consumer(
                    self.db,
                    inbox.Subscription(
                        producer,
                        self.endpoints.of(producer),
                        reactions,
                        CHOREOGRAPHED_ONLY,
                        steps=self.reactions.steps_of(producer),
                        step_of=self.reactions.step_of,
                    ),
                    consumer_name=spec.name,
                    on_commit=self.outbox.notify,
                    before_apply=self._inject_faults,
                    transport=self.transport,
                )
                for producer, reactions in self.reactions.by_producer().items()
            ]
            if settings.reacts
            else []
        )
        # The followers and the relay: an unexpected error restarts one, never ends it.
        self._tasks = Supervisor()
        # The Admin API's own server, when enabled (start); its address once bound.
        self._admin: grpc.aio.Server | None = None
        self.admin_address = ""
        self.service_names: list[str] = [
            "sagawire.v1.Participant",
            "sagawire.v1.EventStream",
            spec.query_service_name,
        ]

    @property
    def identity(self) -> str:
        """The service's name: its certificate names it (mutual TLS)."""
        return self.spec.name

    def _outbox_head(self) -> int:
        """The last committed event's sequence (read on the metric reader's thread, from a
        connection of its own: WAL readers never wait for the writer)."""
        if isinstance(self.db, Database):
            uri = f"file:{self.db.path}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True)) as lite:
                return int(lite.execute(_LAST_SEQUENCE).fetchone()[0])
        import psycopg

        options = f"-c search_path={self.settings.store_schema(self.spec.name)}"
        with psycopg.connect(self.settings.store, options=options) as pg:
            row = pg.execute(_LAST_SEQUENCE).fetchone()
        return int(row[0]) if row else 0

    async def _inject_faults(self, event: events_pb2.Event) -> None:
        """A reaction is a call of its action, as a participant call is: faults apply,
        drawn for each event, for each action it calls."""
        for action in await self.reactions.actions_for(self.db, event):
            await self.faults.before_call(action)

    def register(self, server: grpc.aio.Server) -> None:
        participant_pb2_grpc.add_ParticipantServicer_to_server(
            ParticipantServicer(
                self.runner, self.faults, started_by_events(self.definitions, self.spec.name)
            ),
            server,
        )
        self.spec.register_queries(server, self.db)
        events_pb2_grpc.add_EventStreamServicer_to_server(
            EventStreamServicer(self.outbox, self.db, self.stream_cuts, self.stream_positions),
            server,
        )

    async def start(self) -> None:
        # Consumer lag and outbox backlog, from the positions the event stream reports
        # (or, on NATS, from JetStream's consumers).
        service_metrics().watch_streams(
            self.spec.name, self.stream_positions if self.relay is None else self.relay.lags
        )
        await self.db.open()
        if isinstance(self.db, Database):  # a file made by an older version
            await self.db.transaction(barrier.migrate)
            if self.spec.migrate is not None:
                await self.db.transaction(self.spec.migrate)
        elif not self.settings.events_on_nats and not await self.db.claim("event-stream"):
            raise BadSetting(
                "SAGAWIRE_EVENTS",
                f"another replica of {self.spec.name} serves events from this store"
                f" ({self.settings.store_schema(self.spec.name)}); replicas of a service on"
                " SAGAWIRE_STORE need SAGAWIRE_EVENTS=nats://... (each serves only its own"
                " commits on a gRPC stream)",
            )
        with self.settings.seed_file.open("rb") as f:
            seed = tomllib.load(f)
        await self.db.transaction(lambda conn: self._seed_once(conn, seed))
        await self.transport.open()
        if self.relay is not None:
            # One replica of the service relays its outbox (common/pg_store.py).
            self._tasks.start("relay", partial(self.db.while_leader, "relay", self.relay.run))
        for consumer in self.consumers:
            self._tasks.start(f"consume-{consumer.producer}", consumer.run)
        if self.settings.admin_enabled:
            await self._serve_admin()
        if self.settings.retention_enabled:
            self.retention.start()

    def _seed_once(self, conn: Connection, seed: Mapping[str, Any]) -> None:
        if self.db.dialect == "postgresql":
            # Replicas starting together: one seeds, the others wait and then see it (the
            # lock comes before the transaction's snapshot, so they do).
            conn.execute("LOCK TABLE seed_loaded IN EXCLUSIVE MODE")
        if conn.execute("SELECT 1 FROM seed_loaded").fetchone():
            return
        self.spec.load_seed(conn, seed)
        conn.execute("INSERT INTO seed_loaded (id, at) VALUES (1, ?)", (utc_now().isoformat(),))

    async def drain(self) -> None:
        """Before the server stops: end open event streams so shutdown need not wait."""
        await self.outbox.close()

    async def _serve_admin(self) -> None:
        """Fault injection for the operator, on a port of its own (loopback by default)."""
        settings = self.settings
        servicer = AdminServicer(self.faults, self.stream_cuts, self.spec.action_names)
        self._admin, port = await start_side_server(
            self.identity,
            [ADMIN_SERVICE],
            partial(admin_pb2_grpc.add_AdminServicer_to_server, servicer),
            settings,
            settings.admin_host,
            settings.admin_listen_port,
            "SAGAWIRE_ADMIN_PORT",
        )
        self.admin_address = f"{settings.admin_host}:{port}"
        log.info("admin address=%s", self.admin_address)

    async def stop(self) -> None:
        if self._admin is not None:
            await self._admin.stop(self.settings.grace_seconds)
        await self.retention.stop()
        await self._tasks.stop()
        await self.transport.close()
        await self.outbox.close()
        await self.db.close()
