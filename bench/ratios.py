"""Comparisons between the rows of one run: ratios to the floors, the targets, TLS's cost.

A run's rows are labelled by mode, and by a variant after a slash when the same mode ran
again on another stack (``orchestration/nats``, ``orchestration/pg2``, ``raw/plaintext``).
A row is compared with the floor of its own variant when that ran (``raw/plaintext`` for
``orchestration/plaintext``), else with the default stack's:

- ``ratio_to_raw``, ``p50_ratio_to_raw``: against ``raw`` at the same concurrency and mix;
- ``ratio_to_bare``: against ``bare`` at the same concurrency (bare always places the
  happy saga: its participants cannot say no).

The targets are issue 19's, judged on the default stack's rows (mutual TLS, tracing and
durability as shipped): both modes within 0.6x of raw's throughput at c = 32, the
orchestrated p50 at c = 1 within 1.3x of raw's, raw within 0.5x of bare at c = 32, and
the stretch, dtm's per-core rate on two cores, 266 orchestrated sagas/s at c = 32.

TLS's cost (issue 14) compares each mode's row with its ``/plaintext`` twin, the same
mode on a stack run with ``SAGAWIRE_TLS=off`` in the same run (``--plaintext``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.table import Table

from bench.report import RunRow

BARE, RAW = "bare", "raw"
PLAINTEXT = "plaintext"
ORCHESTRATION, CHOREOGRAPHY = "orchestration", "choreography"


def variant_of(mode: str) -> str:
    """``orchestration/plaintext`` -> ``plaintext``; ``raw`` -> ``""``."""
    return mode.partition("/")[2]


def _base(rows: Sequence[RunRow], floor: str, row: RunRow, same_mix: bool) -> RunRow | None:
    variant = variant_of(row.mode)
    names = [f"{floor}/{variant}", floor] if variant else [floor]
    for name in names:
        for other in rows:
            if (
                other.kind == "run"
                and other.mode == name
                and other.concurrency == row.concurrency
                and (other.mix == row.mix or not same_mix)
            ):
                return other
    return None


def add_ratios(rows: Sequence[RunRow]) -> None:
    """Fill each run's ratios to raw and to bare; they stay None where the floor did not run."""
    for row in rows:
        if row.kind != "run":
            continue
        raw = _base(rows, RAW, row, same_mix=True)
        if raw is not None:
            if raw.sagas_per_s > 0:
                row.ratio_to_raw = round(row.sagas_per_s / raw.sagas_per_s, 3)
            if raw.p50_ms > 0:
                row.p50_ratio_to_raw = round(row.p50_ms / raw.p50_ms, 3)
        bare = _base(rows, BARE, row, same_mix=False)
        if bare is not None and bare.sagas_per_s > 0:
            row.ratio_to_bare = round(row.sagas_per_s / bare.sagas_per_s, 3)


@dataclass(frozen=True)
class Target:
    """One of issue 19's targets: ``measure`` of ``mode``'s row at ``concurrency``."""

    text: str
    mode: str
    concurrency: int
    measure: Callable[[RunRow], float | None]
    unit: str
    met: Callable[[float, float], bool]
    bound: float
    stretch: bool = False


TARGETS = (
    Target("raw >= 0.5x bare, c=32", RAW, 32, lambda r: r.ratio_to_bare, "x", operator.ge, 0.5),
    Target(
        "orchestration >= 0.6x raw, c=32",
        ORCHESTRATION,
        32,
        lambda r: r.ratio_to_raw,
        "x",
        operator.ge,
        0.6,
    ),
    Target(
        "choreography >= 0.6x raw, c=32",
        CHOREOGRAPHY,
        32,
        lambda r: r.ratio_to_raw,
        "x",
        operator.ge,
        0.6,
    ),
    Target(
        "orchestration p50 <= 1.3x raw p50, c=1",
        ORCHESTRATION,
        1,
        lambda r: r.p50_ratio_to_raw,
        "x",
        operator.le,
        1.3,
    ),
    Target(
        "orchestration >= 266 sagas/s, c=32 (stretch)",
        ORCHESTRATION,
        32,
        lambda r: r.sagas_per_s,
        " sagas/s",
        operator.ge,
        266.0,
        stretch=True,
    ),
)


@dataclass(frozen=True)
class Verdict:
    """A target and what this run measured for it (None: the run did not measure it)."""

    target: Target
    value: float | None

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.target.met(self.value, self.target.bound)

    @property
    def measured(self) -> str:
        if self.value is None:
            return "not measured"
        unit = self.target.unit
        return f"{self.value:.2f}{unit}" if unit == "x" else f"{self.value:.1f}{unit}"


def judge(rows: Sequence[RunRow]) -> list[Verdict]:
    """Every target against the default stack's rows of this run."""
    verdicts = []
    for target in TARGETS:
        row = next(
            (
                r
                for r in rows
                if r.kind == "run" and r.mode == target.mode and r.concurrency == target.concurrency
            ),
            None,
        )
        verdicts.append(Verdict(target, None if row is None else target.measure(row)))
    return verdicts


def targets_table(verdicts: Sequence[Verdict]) -> Table:
    table = Table(title="Against issue 19's targets (default stack)", title_justify="left")
    for column in ("target", "measured", "met"):
        table.add_column(column, justify="left" if column == "target" else "right")
    for v in verdicts:
        met = {None: "-", True: "yes", False: "[red]no[/]"}[v.met]
        table.add_row(v.target.text, v.measured, met)
    return table


@dataclass(frozen=True)
class TlsCost:
    """One mode at one concurrency with mutual TLS (as shipped) and in plaintext."""

    mode: str
    concurrency: int
    on: RunRow
    off: RunRow

    @property
    def throughput_ratio(self) -> float:
        """sagas/s with TLS on over sagas/s with it off."""
        return self.on.sagas_per_s / self.off.sagas_per_s if self.off.sagas_per_s else 0.0

    @property
    def cpu_ms_added(self) -> float:
        """CPU milliseconds per saga, all processes, that TLS adds."""
        return (self.on.cpu_s_per_saga_total - self.off.cpu_s_per_saga_total) * 1000


def tls_costs(rows: Sequence[RunRow]) -> list[TlsCost]:
    """Every default-stack run that has a ``/plaintext`` twin."""
    runs = {(r.mode, r.concurrency, r.mix): r for r in rows if r.kind == "run"}
    costs = []
    for (mode, concurrency, mix), on in runs.items():
        off = runs.get((f"{mode}/{PLAINTEXT}", concurrency, mix))
        if off is not None and not variant_of(mode):
            costs.append(TlsCost(mode, concurrency, on, off))
    return costs


def tls_table(costs: Sequence[TlsCost]) -> Table:
    table = Table(title="TLS on (shipped) vs off, same run", title_justify="left")
    for column in (
        "mode",
        "conc",
        "sagas/s on",
        "sagas/s off",
        "on / off",
        "CPU ms/saga on",
        "CPU ms/saga off",
        "TLS adds",
    ):
        table.add_column(column, justify="left" if column == "mode" else "right")
    for c in costs:
        table.add_row(
            c.mode,
            str(c.concurrency),
            f"{c.on.sagas_per_s:,.1f}",
            f"{c.off.sagas_per_s:,.1f}",
            f"{c.throughput_ratio:.2f}x",
            f"{c.on.cpu_s_per_saga_total * 1000:.2f}",
            f"{c.off.cpu_s_per_saga_total * 1000:.2f}",
            f"{c.cpu_ms_added:+.2f} ms",
        )
    return table


def markdown(rows: Sequence[RunRow]) -> str:
    """The targets and TLS's cost as Markdown tables (for the README)."""
    lines = ["| target (issue 19) | measured | met |", "|---|--:|---|"]
    for v in judge(rows):
        met = {None: "-", True: "yes", False: "no"}[v.met]
        lines.append(f"| {v.target.text} | {v.measured} | {met} |")
    if costs := tls_costs(rows):
        lines += [
            "",
            "| mode | conc | sagas/s TLS on | off | on/off | CPU ms/saga on | off | TLS adds |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for c in costs:
            lines.append(
                f"| {c.mode} | {c.concurrency} | {c.on.sagas_per_s:,.1f} "
                f"| {c.off.sagas_per_s:,.1f} | {c.throughput_ratio:.2f}x "
                f"| {c.on.cpu_s_per_saga_total * 1000:.2f} "
                f"| {c.off.cpu_s_per_saga_total * 1000:.2f} | {c.cpu_ms_added:+.2f} ms |"
            )
    return "\n".join(lines) + "\n"
