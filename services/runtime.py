"""Assembles a domain service process from its parts: store, actions, queries, events.

Each service supplies its schema, seed loader, action table and query servicer;
this module wires them to the barrier, the outbox, the event stream, fault
injection and the common server bootstrap.
"""

from __future__ import annotations

import sqlite3
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from common import barrier, outbox
from common.admin import AdminServicer
from common.config import ServiceSettings
from common.faults import FaultInjector
from common.participant import Action, ActionRunner, ParticipantServicer
from common.store import Database
from protos.sagawire.v1 import admin_pb2_grpc, participant_pb2_grpc

_SEED_SCHEMA = """
CREATE TABLE IF NOT EXISTS seed_loaded (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL);
"""


@dataclass(frozen=True)
class ServiceSpec:
    """Everything that makes one domain service itself."""

    name: str
    schema: str
    actions: Sequence[Action[Any]]
    # Loads this service's section of the seed file; runs once, at first start.
    load_seed: Callable[[sqlite3.Connection, Mapping[str, Any]], None]
    # Full gRPC name and registration of the service's query API.
    query_service_name: str
    register_queries: Callable[[grpc.aio.Server, Database], None]
    # Extra apps started with the service (the choreography consumers).
    extra_service_names: Sequence[str] = field(default_factory=tuple)


class DomainService:
    """A running domain service: implements :class:`common.server.App`."""

    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.db = Database(
            settings.data_dir / f"{spec.name}.db",
            schema=barrier.SCHEMA + outbox.SCHEMA + _SEED_SCHEMA + spec.schema,
            synchronous=settings.sqlite_synchronous,
        )
        self.outbox = outbox.Outbox(self.db, source=spec.name)
        self.faults = FaultInjector(settings.faults)
        actions: Mapping[str, Action[Message]] = {a.name: a for a in spec.actions}
        self.runner = ActionRunner(self.db, self.outbox, actions)
        self.service_names: list[str] = [
            "sagawire.v1.Participant",
            spec.query_service_name,
            *(["sagawire.v1.Admin"] if settings.admin_enabled else []),
        ]

    def register(self, server: grpc.aio.Server) -> None:
        participant_pb2_grpc.add_ParticipantServicer_to_server(
            ParticipantServicer(self.runner, self.faults), server
        )
        self.spec.register_queries(server, self.db)
        if self.settings.admin_enabled:
            admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(self.faults), server)

    async def start(self) -> None:
        await self.db.open()
        with self.settings.seed_file.open("rb") as f:
            seed = tomllib.load(f)
        await self.db.transaction(lambda conn: self._seed_once(conn, seed))

    def _seed_once(self, conn: sqlite3.Connection, seed: Mapping[str, Any]) -> None:
        if conn.execute("SELECT 1 FROM seed_loaded").fetchone():
            return
        self.spec.load_seed(conn, seed)
        conn.execute("INSERT INTO seed_loaded (id, at) VALUES (1, datetime('now'))")

    async def stop(self) -> None:
        await self.outbox.close()
        await self.db.close()
