"""``sagawire certs``: make (or rotate) the stack's CA and one certificate per process.

The files go to ``--dir`` (default ``SAGAWIRE_CERTS_DIR``, else ``<SAGAWIRE_DATA_DIR>/certs``,
i.e. ``.sagawire/certs``). Existing files are kept; ``--force`` replaces all of them, the
CA included, after which every process must be restarted to pick up the new ones.
``--export OUT`` also copies each identity's certificate, key and the CA certificate to
``OUT/<identity>/``, so each process can be given its own key only (docker-compose.yml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from common.certs import IDENTITIES, ensure_certs, expiry, export, files_of, spiffe_id
from common.config import TlsSettings


def certs(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Where to write them (default: SAGAWIRE_CERTS_DIR or .sagawire/certs)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace every file, CA included (rotation).")
    ] = False,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host", help="Another DNS name or IP address for every certificate (repeatable)."
        ),
    ] = None,
    export_to: Annotated[
        Path | None,
        typer.Option("--export", help="Also copy each identity's own files to EXPORT/<identity>/."),
    ] = None,
) -> None:
    """Create the local CA and a certificate per process (mutual TLS); keep existing ones."""
    target = directory or TlsSettings().certs_directory
    written = ensure_certs(target, force=force, extra_hosts=host or ())
    if export_to is not None:
        export(target, export_to)
    console = Console()
    table = Table(title=f"certificates in {target.resolve()}", title_justify="left")
    for column in ("identity", "certificate", "expires"):
        table.add_column(column)
    for name in ("ca", *IDENTITIES):
        path = target / "ca.crt" if name == "ca" else files_of(target, name).cert
        label = "ca (the stack's CA)" if name == "ca" else spiffe_id(name)
        table.add_row(label, path.name, f"{expiry(path):%Y-%m-%d}")
    console.print(table)
    if written:
        console.print(f"wrote {len(written)} files" + (": restart every process" if force else ""))
    else:
        console.print("every file was there already (--force replaces them)")
