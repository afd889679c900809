"""``sagawire console``: serve the web console (console/), a client of the coordinator's API."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cli.tokens import TokenOption
from common.config import Endpoints
from common.logs import setup_logging
from common.tls import TlsError
from console.serve import DEFAULT_PORT, ConsoleSettings, PortTaken, run


def console(
    host: Annotated[
        str,
        typer.Option(
            envvar="SAGAWIRE_CONSOLE_HOST",
            help="Address to listen on. Only a loopback address (127.0.0.1, ::1) lets the"
            " console hold an operator credential; elsewhere users sign in with a token.",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(
            envvar="SAGAWIRE_CONSOLE_PORT", min=0, max=65535, help="Port (0: any free port)."
        ),
    ] = DEFAULT_PORT,
    coordinator: Annotated[
        str | None,
        typer.Option(
            "--coordinator",
            help="The coordinator's address host:port (default SAGAWIRE_COORDINATOR_ADDR,"
            " else 127.0.0.1:50050).",
        ),
    ] = None,
    token: TokenOption = None,
    data: Annotated[
        Path,
        typer.Option(
            envvar="SAGAWIRE_DATA_DIR",
            help="The stack's data directory: its trace files, certificates and token key.",
        ),
    ] = Path(".sagawire"),
    jaeger: Annotated[
        str | None,
        typer.Option(
            envvar="SAGAWIRE_JAEGER_URL",
            help="Jaeger's base URL, e.g. http://localhost:16686: read traces from Jaeger.",
        ),
    ] = None,
    jaeger_link: Annotated[
        str | None,
        typer.Option(
            envvar="SAGAWIRE_CONSOLE_JAEGER_LINK",
            help="Jaeger's UI as a browser reaches it (default: --jaeger).",
        ),
    ] = None,
) -> None:
    """Serve the web console: sagas as graphs, live; breakers; traces."""
    setup_logging("console")
    # The stack's data directory also holds the certificates and the token key it uses.
    os.environ["SAGAWIRE_DATA_DIR"] = str(data)
    settings = ConsoleSettings(
        host=host,
        port=port,
        coordinator=coordinator or Endpoints().coordinator_addr,
        data_dir=data,
        jaeger_url=jaeger or "",
        jaeger_link=jaeger_link or jaeger or "",
        token=token,
    )
    try:
        run(settings)
    except (PortTaken, TlsError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
