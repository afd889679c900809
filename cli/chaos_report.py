"""What a chaos run reports: counts per mode and pass, latency under faults against the
fault-free run, the blows dealt, and every violation with its saga id — as tables on
the terminal and as JSON for machines."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.closed_loop import percentile
from cli.chaos_check import Verdict, Violation
from cli.chaos_drive import Placement
from cli.chaos_faults import Blow
from cli.chaos_plan import COMPENSATED, COMPLETED, Plan

REFERENCE, CHAOS = "fault-free", "chaos"
# Violations shown per kind on the terminal (the JSON has them all).
_SHOWN = 5


@dataclass
class PassResult:
    """One pass of a plan over a stack: fault-free (the reference) or under chaos."""

    label: str
    mode: str
    placements: list[Placement]
    verdict: Verdict
    drive_seconds: float
    settle_seconds: float
    settled: bool
    blows: list[Blow] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return sorted(p.latency for p in self.placements if p.latency is not None)

    def latency_ms(self, q: float) -> float:
        return round(percentile(self.latencies, q) * 1000, 1)

    def statuses(self) -> Counter[str]:
        return Counter(status or "no saga" for status in self.verdict.outcomes.values())

    def as_json(self) -> dict[str, Any]:
        statuses = self.statuses()
        return {
            "pass": self.label,
            "placed": len(self.placements),
            "accepted": sum(1 for p in self.placements if p.accepted),
            "completed": statuses[COMPLETED],
            "compensated": statuses[COMPENSATED],
            "not_terminal": {
                s: n for s, n in statuses.items() if s not in (COMPLETED, COMPENSATED)
            },
            # What the client was told at the end of its PlaceOrder calls ("none": nothing).
            "answers": dict(Counter(p.told or "none" for p in self.placements)),
            "place_order_calls": sum(p.calls for p in self.placements),
            # Orders the client was told STALLED (and asked again until the outcome came).
            "told_stalled": sum(1 for p in self.placements if p.stalled_answers),
            "drive_s": round(self.drive_seconds, 3),
            "settle_s": round(self.settle_seconds, 3),
            "all_settled": self.settled,
            "p50_ms": self.latency_ms(50),
            "p99_ms": self.latency_ms(99),
            "max_ms": round(max(self.latencies, default=0.0) * 1000, 1),
            "blows": [b.describe() for b in self.blows],
            "compensated_for_another_reason": len(self.verdict.other_reason),
            "compensated_for_another_reason_examples": self.verdict.other_reason[:_SHOWN],
        }


@dataclass
class ModeResult:
    """A mode's passes, and every violation found in them."""

    mode: str
    plan: Plan
    chaos: PassResult
    reference: PassResult | None = None
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def p99_ratio(self) -> float | None:
        if self.reference is None or not self.reference.latencies:
            return None
        floor = self.reference.latency_ms(99)
        return round(self.chaos.latency_ms(99) / floor, 2) if floor > 0 else None

    def as_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "plan": dict(self.plan.kinds()),
            "expected_completed": len(self.plan.expected_completed),
            "reference": self.reference.as_json() if self.reference else None,
            "chaos": self.chaos.as_json(),
            "p99_vs_fault_free": self.p99_ratio(),
            "violation_counts": dict(Counter(v.kind for v in self.violations)),
            "violations": [
                {"kind": v.kind, "detail": v.detail, "saga_id": v.saga_id} for v in self.violations
            ],
            "ok": self.ok,
        }


def write_json(path: Path, settings: dict[str, Any], results: list[ModeResult]) -> None:
    document = {
        **settings,
        "modes": [r.as_json() for r in results],
        "ok": all(r.ok for r in results),
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def print_report(console: Console, results: list[ModeResult]) -> None:
    table = Table(title="sagawire chaos", title_justify="left")
    for column in (
        "mode",
        "pass",
        "placed",
        "completed",
        "compensated",
        "not terminal",
        "p50 ms",
        "p99 ms",
        "p99 vs fault-free",
        "violations",
    ):
        table.add_column(column, justify="left" if column in ("mode", "pass") else "right")
    for result in results:
        expected = len(result.plan.expected_completed)
        for run in filter(None, (result.reference, result.chaos)):
            statuses = run.statuses()
            stuck = sum(n for s, n in statuses.items() if s not in (COMPLETED, COMPENSATED))
            ratio = result.p99_ratio() if run is result.chaos else None
            count = len(run.verdict.violations)
            if run is result.chaos:
                count = len(result.violations)
            table.add_row(
                result.mode,
                run.label,
                str(len(run.placements)),
                f"{statuses[COMPLETED]} / {expected}",
                str(statuses[COMPENSATED]),
                str(stuck),
                f"{run.latency_ms(50):,.0f}",
                f"{run.latency_ms(99):,.0f}",
                f"{ratio:.2f}x" if ratio is not None else "-",
                f"[{'red' if count else 'green'}]{count}[/]",
            )
    console.print(table)
    console.print(
        "[dim]completed: of the orders the plan completes by construction; "
        "violations on the chaos row: every violation of the mode[/]"
    )
    for result in results:
        for blow in result.chaos.blows:
            console.print(f"  {result.mode}: {blow.describe()}")
        for run in filter(None, (result.reference, result.chaos)):
            if stalled := sum(1 for p in run.placements if p.stalled_answers):
                console.print(
                    f"  [yellow]{result.mode} {run.label}: {stalled} orders were answered "
                    "STALLED before their outcome[/]"
                )
        if not result.chaos.settled:
            console.print(f"  [red]{result.mode}: not every saga was terminal by the deadline[/]")
        if result.chaos.verdict.other_reason:
            console.print(
                f"  [yellow]{result.mode}: {len(result.chaos.verdict.other_reason)} planned "
                "refusals compensated for another reason[/] (e.g. "
                f"{result.chaos.verdict.other_reason[0]})"
            )
        by_kind: dict[str, list[Violation]] = {}
        for violation in result.violations:
            by_kind.setdefault(violation.kind, []).append(violation)
        for kind, found in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
            console.print(f"  [bold red]{result.mode}: {len(found)} x {kind}[/]")
            for violation in found[:_SHOWN]:
                saga = f"saga {violation.saga_id}: " if violation.saga_id else ""
                console.print(f"    {saga}{violation.detail}", soft_wrap=True)
            if len(found) > _SHOWN:
                console.print(f"    … {len(found) - _SHOWN} more (--json has them all)")
