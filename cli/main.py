"""The ``sagawire`` command: a thin client of the stack's gRPC APIs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli import bench, certs, chaos, demo, events, health, metrics, sagas, stack, trace
from cli.tokens import token_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def _root() -> None:
    """Sagawire: saga-coordinated gRPC services, orchestrated or choreographed."""


class ServiceName(StrEnum):
    coordinator = "coordinator"
    order = "order"
    inventory = "inventory"
    payment = "payment"
    shipping = "shipping"


@app.command()
def serve(
    service: Annotated[ServiceName, typer.Argument(help="Which service to run.")],
    port: Annotated[int | None, typer.Option(help="Port (0: any free port).")] = None,
    data: Annotated[Path | None, typer.Option(help="Directory for the SQLite file.")] = None,
) -> None:
    """Run one service (or the coordinator) in the foreground until SIGTERM / Ctrl-C."""
    if service is ServiceName.coordinator:
        from coordinator.app import main as run_coordinator

        return run_coordinator(port=port, data_dir=data)
    from services.launcher import main

    main(service.value, port=port, data_dir=data)


app.command()(stack.up)
app.command()(demo.demo)
app.add_typer(events.events_app, name="events")
app.add_typer(token_app, name="token")
app.command()(health.health)
app.command()(certs.certs)
app.command()(trace.trace)
app.command()(metrics.metrics)
app.command()(bench.bench)
app.command()(chaos.chaos)
sagas.register(app)


if __name__ == "__main__":
    app()
