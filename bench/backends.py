"""The options that move an own stack off the embedded defaults, checked once for the
bench and the chaos run: events on NATS, the saga log and the services' stores on
PostgreSQL, and replicas (which share a log or a store)."""

from __future__ import annotations

import typer

from common.config import EventSettings
from coordinator.log.postgres import is_postgres_url


def check_backend_options(
    *, own: bool, whose: str, events: str, saga_log: str, store: str, replicated: bool
) -> None:
    """Refuse a combination the own stacks cannot run (typer.BadParameter naming the
    option). ``own``: the command starts its own stacks; ``whose`` says whose, in the
    message ("the bench's own stack")."""
    if events:
        try:
            on_nats = EventSettings(events=events).events_on_nats
        except ValueError:
            on_nats = False
        if not own or not on_nats:
            raise typer.BadParameter(
                f"nats://host:port (several comma-separated), with {whose}",
                param_hint="--events",
            )
    for value, hint in ((saga_log, "--saga-log"), (store, "--store")):
        if value and (not own or not is_postgres_url(value)):
            raise typer.BadParameter(f"a postgresql:// URL, with {whose}", param_hint=hint)
    if replicated and not (saga_log or store):
        raise typer.BadParameter(
            "replicas share a --saga-log or a --store", param_hint="--replicas"
        )
    if replicated and store and not events:
        raise typer.BadParameter(
            "replicas of a service need --events nats://... (a gRPC stream serves one"
            " replica's commits only)",
            param_hint="--replicas",
        )
