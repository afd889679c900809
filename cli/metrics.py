"""``sagawire metrics``: the current metrics of a local stack, without a collector.

Each process of a stack that runs without an OTLP endpoint keeps its current metrics
in ``<data>/metrics-<process>.json`` (:mod:`common.metrics_file`, rewritten every few
seconds). This prints them, one line per metric and attribute set::

    SERVICE      METRIC                    ATTRIBUTES                        VALUE
    coordinator  sagas_completed           saga.mode=orchestration ...       12
    payment      sagawire.action.duration  saga.action=charge ...            count=12 sum=0.03 s

Counters are totals since the process started, gauges their last value, histograms
their count and sum. With a collector (compose), read them in Prometheus instead.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.client import ExitCode
from cli.output import Output, OutputOption
from common.metrics_file import metrics_files, read_metrics_file

# A file older than this belongs to a process that has stopped (or hangs).
STALE_SECONDS = 60.0


@dataclass(frozen=True)
class MetricLine:
    """One metric of one process, for one set of attributes."""

    service: str
    metric: str
    unit: str
    kind: str
    attributes: Mapping[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None

    def shown(self) -> str:
        unit = f" {self.unit}" if self.unit and not self.unit.startswith("{") else ""
        if self.count is not None:
            return f"count={self.count} sum={_number(self.sum or 0)}{unit}"
        return f"{_number(self.value or 0)}{unit}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


def lines_of(document: Mapping[str, Any], process: str) -> list[MetricLine]:
    """The lines of one metrics file."""
    service = str(document.get("service") or process)
    found = []
    for metric in document.get("metrics") or []:
        for point in metric.get("points") or []:
            found.append(
                MetricLine(
                    service=service,
                    metric=str(metric.get("name", "")),
                    unit=str(metric.get("unit", "")),
                    kind=str(metric.get("kind", "")),
                    attributes=dict(point.get("attributes") or {}),
                    value=point.get("value"),
                    count=point.get("count"),
                    sum=point.get("sum"),
                )
            )
    return found


def render(lines: Sequence[MetricLine]) -> str:
    """The lines as an aligned table, by service, metric and attributes."""
    ordered = sorted(
        lines, key=lambda m: (m.service, m.metric, sorted(m.attributes.items(), key=str))
    )
    rows = [
        (
            m.service,
            m.metric,
            " ".join(f"{k}={v}" for k, v in sorted(m.attributes.items())),
            m.shown(),
        )
        for m in ordered
    ]
    header = ("SERVICE", "METRIC", "ATTRIBUTES", "VALUE")
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header[:3], widths, strict=True)) + "  VALUE"]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)]
        out.append("  ".join(cells) + "  " + row[3])
    return "\n".join(out)


def _wanted(line: MetricLine, services: Iterable[str], match: str) -> bool:
    wanted = set(services)
    return (not wanted or line.service in wanted) and match in line.metric


def metrics(
    data: Annotated[
        Path,
        typer.Option(
            envvar="SAGAWIRE_DATA_DIR", help="Data directory holding the local metrics files."
        ),
    ] = Path(".sagawire"),
    service: Annotated[
        list[str] | None, typer.Option("--service", "-s", help="Only this process (repeatable).")
    ] = None,
    match: Annotated[str, typer.Option(help="Only metrics whose name contains this.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --output json.")] = False,
    output: OutputOption = Output.table,
) -> None:
    """Print the current metrics of the local stack's processes (from DATA/metrics-*.json)."""
    as_json = as_json or output is Output.json
    files = metrics_files(data)
    lines: list[MetricLine] = []
    now = time.time_ns()
    for path in files:
        document = read_metrics_file(path)
        if document is None:
            continue
        process = path.stem.removeprefix("metrics-")
        age = (now - int(document.get("time_ns") or 0)) / 1e9
        if age > STALE_SECONDS and not as_json:
            typer.echo(f"{process}: last written {age:.0f} s ago (stopped?)", err=True)
        lines.extend(m for m in lines_of(document, process) if _wanted(m, service or (), match))
    if not lines:
        typer.echo(f"no metrics found in {data}/metrics-*.json", err=True)
        raise typer.Exit(ExitCode.NOT_FOUND)
    if as_json:
        for line in lines:
            typer.echo(json.dumps({k: v for k, v in asdict(line).items() if v is not None}))
        return
    typer.echo(render(lines))
