"""The benchmark's output: progress bars, then one row per run as tables, JSON, Markdown, a plot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.closed_loop import BENCH_PROCESS, LoadResult, percentile

RAW = "raw"
_MB = 1024 * 1024
# Column order of processes in the resources table.
PROCESS_ORDER = (BENCH_PROCESS, "coordinator", "order", "inventory", "payment", "shipping")


def machine() -> str:
    """One line describing where the numbers come from."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{psutil.cpu_count(logical=True)} CPUs ({psutil.cpu_count(logical=False)} cores), "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"grpcio {grpc.__version__}, {platform.system()} {platform.machine()}, "
        f"load average {load}"
    )


class ProgressBars:
    """A rich progress bar per run, or nothing when not on a terminal."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[sagas]:>7} sagas"),
            TextColumn("{task.fields[rate]:>8} sagas/s"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )

    @contextlib.contextmanager
    def task(self, description: str, total: float) -> Iterator[Callable[[float, int], None]]:
        task = self.progress.add_task(description, total=total, sagas=0, rate="-")
        loop = asyncio.get_running_loop()
        begin = loop.time()

        def update(done: float, sagas: int) -> None:
            elapsed = loop.time() - begin
            rate = f"{sagas / elapsed:,.0f}" if elapsed > 0 else "-"
            self.progress.update(task, completed=done, sagas=sagas, rate=rate)

        yield update


@dataclass
class RunRow:
    """One measured run. The first ten fields are the JSON keys issue 6 requires."""

    mode: str
    concurrency: int
    mix: str
    sagas: int
    seconds: float
    sagas_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    ratio_to_raw: float | None = None
    p50_ratio_to_raw: float | None = None
    # Throughput against bare mode's at the same concurrency (bench/ratios.py).
    ratio_to_bare: float | None = None
    mean_ms: float = 0.0
    max_ms: float = 0.0
    # Sagas that did not end as expected, in total and by what happened instead.
    unexpected: int = 0
    unexpected_kinds: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    cpu_s_per_saga: dict[str, float] = field(default_factory=dict)
    cpu_s_per_saga_total: float = 0.0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    # End state checked against the services' own records (None: not checked).
    consistent: bool | None = None
    kind: str = "run"
    # Soak runs: RSS (MB) of every process at each checkpoint (saga count).
    rss_mb_at: dict[str, dict[str, float]] = field(default_factory=dict)
    # Soak runs: RSS growth (fraction) from the first checkpoint to the last.
    rss_growth: dict[str, float] = field(default_factory=dict)
    # Soak runs: size (MB, the file and its WAL) of every store at each checkpoint.
    store_mb_at: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.unexpected == 0 and self.consistent is not False


def row_of(mode: str, concurrency: int, mix: str, result: LoadResult, kind: str = "run") -> RunRow:
    """Summarise one closed-loop run."""
    ordered = sorted(result.latencies)
    sagas = len(ordered)
    seconds = result.seconds
    cpu = {name: u.cpu_seconds / sagas for name, u in result.usage.items()} if sagas else {}
    return RunRow(
        mode=mode,
        concurrency=concurrency,
        mix=mix,
        sagas=sagas,
        seconds=round(seconds, 3),
        sagas_per_s=round(sagas / seconds, 1) if seconds > 0 else 0.0,
        p50_ms=round(percentile(ordered, 50) * 1000, 2),
        p95_ms=round(percentile(ordered, 95) * 1000, 2),
        p99_ms=round(percentile(ordered, 99) * 1000, 2),
        mean_ms=round(sum(ordered) / sagas * 1000, 2) if sagas else 0.0,
        max_ms=round(ordered[-1] * 1000, 2) if sagas else 0.0,
        unexpected=sum(result.unexpected.values()),
        unexpected_kinds=dict(result.unexpected),
        examples=list(result.examples),
        cpu_s_per_saga={n: round(v, 6) for n, v in cpu.items()},
        cpu_s_per_saga_total=round(sum(cpu.values()), 6),
        peak_rss_mb={n: round(u.peak_rss_bytes / _MB, 1) for n, u in result.usage.items()},
        kind=kind,
        rss_mb_at={
            str(count): {n: round(b / _MB, 1) for n, b in sizes.items()}
            for count, sizes in sorted(result.rss_at.items())
        },
        store_mb_at={
            str(count): {n: round(b / _MB, 2) for n, b in sizes.items()}
            for count, sizes in sorted(result.store_bytes_at.items())
        },
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _consistent(value: bool | None) -> str:
    return {None: "-", True: "yes", False: "[red]NO[/]"}[value]


def results_table(rows: Sequence[RunRow], title: str = "Sagawire bench") -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("mode", "conc", "mix", "sagas", "sagas/s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column in ("mode", "mix") else "right")
    table.add_column("sagas/s vs bare", justify="right")
    table.add_column("sagas/s vs raw", justify="right")
    table.add_column("p50 vs raw", justify="right")
    table.add_column("unexpected", justify="right")
    table.add_column("consistent", justify="right")
    for r in rows:
        table.add_row(
            r.mode,
            str(r.concurrency),
            r.mix,
            str(r.sagas),
            f"{r.sagas_per_s:,.1f}",
            f"{r.p50_ms:.1f}",
            f"{r.p95_ms:.1f}",
            f"{r.p99_ms:.1f}",
            _ratio(r.ratio_to_bare),
            _ratio(r.ratio_to_raw),
            _ratio(r.p50_ratio_to_raw),
            str(r.unexpected) if not r.unexpected else f"[red]{r.unexpected}[/]",
            _consistent(r.consistent),
        )
    return table


def _processes(rows: Sequence[RunRow]) -> list[str]:
    seen = {name for r in rows for name in r.cpu_s_per_saga}
    return [n for n in PROCESS_ORDER if n in seen] + sorted(seen - set(PROCESS_ORDER))


def resources_table(rows: Sequence[RunRow]) -> Table:
    """CPU milliseconds per saga and peak RSS (MB), per process."""
    table = Table(title="CPU ms per saga · peak RSS MB, per process", title_justify="left")
    table.add_column("mode")
    table.add_column("conc", justify="right")
    names = _processes(rows)
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("total CPU ms/saga", justify="right")
    for r in rows:
        cells = []
        for name in names:
            cpu = r.cpu_s_per_saga.get(name)
            rss = r.peak_rss_mb.get(name)
            cells.append("-" if cpu is None else f"{cpu * 1000:.2f} · {rss or 0:.0f}")
        table.add_row(r.mode, str(r.concurrency), *cells, f"{r.cpu_s_per_saga_total * 1000:.2f}")
    if names == [BENCH_PROCESS]:
        table.caption = "bench only: a --target stack is not measured"
    return table


def print_report(console: Console, rows: Sequence[RunRow]) -> None:
    """The tables, then every unexpected outcome by kind."""
    runs = [r for r in rows if r.kind != "recovery"]
    if not runs:
        return
    console.print(results_table(runs))
    if any(r.cpu_s_per_saga for r in runs):
        console.print(resources_table(runs))
    for r in rows:
        for kind, count in sorted(r.unexpected_kinds.items(), key=lambda kv: -kv[1]):
            console.print(f"[red]{r.mode} c={r.concurrency}: {count} x {kind}[/]")
        for example in r.examples:
            console.print(f"  e.g. {example}")


def write_json(path: Path, rows: Sequence[RunRow], extra: Sequence[dict[str, Any]] = ()) -> None:
    """A JSON list: one object per run (and per long-run check in ``extra``)."""
    objects: list[dict[str, Any]] = [asdict(r) for r in rows]
    objects.extend(extra)
    path.write_text(json.dumps(objects, indent=2) + "\n")


def plot(path: Path, rows: Sequence[RunRow], title: str = "") -> None:
    """Throughput and p99 latency against concurrency, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in rows if r.kind == "run"]
    modes = list(dict.fromkeys(r.mode for r in runs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in modes:
        mine = sorted((r for r in runs if r.mode == mode), key=lambda r: r.concurrency)
        xs = [r.concurrency for r in mine]
        left.plot(xs, [r.sagas_per_s for r in mine], marker="o", label=mode)
        right.plot(xs, [r.p99_ms for r in mine], marker="o", label=mode)
    for axis, label in ((left, "sagas/s"), (right, "p99 latency (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (closed loop)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
        axis.legend()
        concurrencies = sorted({r.concurrency for r in runs})
        axis.set_xticks(concurrencies, [str(c) for c in concurrencies])
    left.set_ylim(bottom=0)
    right.set_ylim(bottom=0)
    left.set_title("Throughput")
    right.set_title("p99 latency")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(rows: Sequence[RunRow]) -> str:
    """The results and the per-process resources as Markdown tables (for the README)."""
    runs = [r for r in rows if r.kind != "recovery"]
    names = _processes(runs)
    lines = [
        "| mode | conc | mix | sagas | sagas/s | p50 ms | p95 ms | p99 ms | sagas/s vs bare "
        "| sagas/s vs raw | p50 vs raw | unexpected | consistent |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r.mode} | {r.concurrency} | {r.mix} | {r.sagas} | {r.sagas_per_s:,.1f} "
            f"| {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {_ratio(r.ratio_to_bare)} "
            f"| {_ratio(r.ratio_to_raw)} "
            f"| {_ratio(r.p50_ratio_to_raw)} | {r.unexpected} "
            f"| {_consistent(r.consistent).replace('[red]', '').replace('[/]', '')} |"
        )
    lines += [
        "",
        "| mode | conc | " + " | ".join(names) + " | total |",
        "|---|--:|" + "--:|" * (len(names) + 1),
    ]
    for r in runs:
        cells = [
            "-"
            if name not in r.cpu_s_per_saga
            else f"{r.cpu_s_per_saga[name] * 1000:.2f} ms · {r.peak_rss_mb.get(name, 0):.0f} MB"
            for name in names
        ]
        lines.append(
            f"| {r.mode} | {r.concurrency} | "
            + " | ".join(cells)
            + f" | {r.cpu_s_per_saga_total * 1000:.2f} ms |"
        )
    return "\n".join(lines) + "\n"
