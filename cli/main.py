"""The ``sagawire`` command: a thin client of the stack's gRPC APIs."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)


@app.callback()
def _root() -> None:
    """Sagawire: saga-coordinated gRPC services, orchestrated or choreographed."""


class ServiceName(StrEnum):
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
    """Run one domain service in the foreground until SIGTERM / Ctrl-C."""
    from services.launcher import main

    main(service.value, port=port, data_dir=data)


if __name__ == "__main__":
    app()
