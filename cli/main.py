"""The ``sagawire`` command: a thin client of the stack's gRPC APIs.

Exit status: 0 done (a saga: completed), 1 refused or failed, 2 bad argument or setting,
3 compensated, 4 needs attention, 5 not found, 6 cannot reach the stack.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from bench import command as bench_command
from cli import certs, chaos, demo, events, health, metrics, sagas, stack, trace
from cli.console import console
from cli.faults import faults_app
from cli.oneline import OneLineTyper
from cli.serve import ServiceName, serve
from cli.tokens import token_app
from common.config import BadSetting, check_address

__all__ = ["ServiceName", "app"]

app = OneLineTyper(no_args_is_help=True, add_completion=False)


@app.callback()
def _root(
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            metavar="HOST:PORT",
            help="The stack's coordinator (default SAGAWIRE_COORDINATOR_ADDR, else"
            " 127.0.0.1:50050); it tells the CLI where the services are.",
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            metavar="DIR",
            help="The stack's data directory: certificates, token key, trace and metrics"
            " files (default SAGAWIRE_DATA_DIR, else .sagawire).",
        ),
    ] = None,
) -> None:
    """Sagawire: saga-coordinated gRPC services, orchestrated or choreographed.

    Exit status: 0 done (for a saga: completed), 1 refused or failed, 2 bad argument or
    setting, 3 compensated, 4 needs attention, 5 not found, 6 cannot reach the stack.
    """
    # Every verb, and every process a verb starts, reads them as settings.
    if address is not None:
        try:
            os.environ["SAGAWIRE_COORDINATOR_ADDR"] = check_address(address)
        except ValueError as error:
            raise BadSetting("--address", str(error)) from None
    if data is not None:
        if data.exists() and not data.is_dir():
            raise BadSetting("--data", f"{data} is not a directory")
        os.environ["SAGAWIRE_DATA_DIR"] = str(data)


app.command()(serve)
app.command()(stack.up)
app.command()(demo.demo)
app.add_typer(events.events_app, name="events")
app.add_typer(faults_app, name="faults")
app.add_typer(token_app, name="token")
app.command()(health.health)
app.command()(certs.certs)
app.command()(trace.trace)
app.command()(metrics.metrics)
app.command()(bench_command.bench)
app.command()(chaos.chaos)
sagas.register(app)
app.command()(console)


if __name__ == "__main__":
    app()
