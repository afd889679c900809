"""One set of options for every way a process of the stack is started.

``sagawire serve PROCESS``, ``python -m services.<name>`` and ``python -m coordinator``
take the same options, defined once here, and start the process through the same entry
function (:func:`start`). A bad option or setting ends the process with one line naming
it and exit status 2::

    $ python -m services.order --port 99999
    order: --port: 99999 is not in the range 0<=x<=65535.
    $ SAGAWIRE_FAULTS='{not json' sagawire serve payment
    payment: SAGAWIRE_FAULTS: not valid JSON (Expecting property name ...)
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cli.oneline import OneLineTyper
from common.config import exit_on_bad_settings


class ServiceName(StrEnum):
    """A process ``sagawire serve`` runs."""

    coordinator = "coordinator"
    order = "order"
    inventory = "inventory"
    payment = "payment"
    shipping = "shipping"


PortOption = Annotated[
    int | None,
    typer.Option(
        min=0, max=65535, help="Port (0: any free port). Default: SAGAWIRE_PORT, else its own."
    ),
]
DataOption = Annotated[
    Path | None,
    typer.Option(help="Directory of its store and local files. Default: SAGAWIRE_DATA_DIR."),
]


def start(process: str, port: int | None, data: Path | None) -> None:
    """Check the settings, then serve ``process`` in the foreground until SIGTERM / Ctrl-C."""
    with exit_on_bad_settings(process):
        if process == ServiceName.coordinator:
            from coordinator.app import main as run_coordinator

            run_coordinator(port=port, data_dir=data)
            return
        from services.launcher import main as run_service

        run_service(process, port=port, data_dir=data)


def serve(
    service: Annotated[ServiceName, typer.Argument(help="Which process to run.")],
    port: PortOption = None,
    data: DataOption = None,
) -> None:
    """Run one process of the stack (a service or the coordinator) in the foreground."""
    start(service.value, port, data)


def run_module(process: str) -> None:
    """``python -m services.<name>`` / ``python -m coordinator``: ``sagawire serve``'s
    options for one process, and the same start."""

    def command(port: PortOption = None, data: DataOption = None) -> None:
        start(process, port, data)

    command.__doc__ = f"Run {process} in the foreground (as `sagawire serve {process}`)."
    app = OneLineTyper(add_completion=False)
    app.command()(command)
    module = "coordinator" if process == ServiceName.coordinator else f"services.{process}"
    app(args=sys.argv[1:], prog_name=f"python -m {module}")
