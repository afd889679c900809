"""How ``sagawire demo`` draws sagas, the services' state and its verdict (rich tables)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.drivers import status_name
from common.money import format_money as money
from protos.sagawire.v1 import (
    coordinator_pb2,
    inventory_pb2,
    order_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)

if TYPE_CHECKING:
    from cli.demo_scenarios import Holdings, ScenarioResult
    from cli.stack import StackOptions
    from cli.trace import SpanRecord

_STATUS_STYLE = {
    "COMPLETED": "bold green",
    "COMPENSATED": "bold yellow",
    "SUCCEEDED": "green",
    "COMPENSATED_STEP": "yellow",
    "REJECTED": "red",
    "FAILED": "red",
    "NEEDS_ATTENTION": "bold red",
    "STALLED": "bold red",
}
_OUTCOME_STYLE = {"ok": "green", "rejected": "red", "transient": "yellow", "breaker_open": "red"}


def make_console() -> Console:
    """A console; when output is not a terminal, wide enough for the step tables."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, width=140)
    return console


def _enum(name: str, prefix: str) -> str:
    return name.removeprefix(prefix).lower()


def _ms(ts: Timestamp) -> int | None:
    return ts.ToMilliseconds() if ts.seconds or ts.nanos else None


def banner(console: Console, options: StackOptions) -> None:
    mode = options.mode.value if options.mode else os.environ.get("SAGAWIRE_MODE", "")
    console.rule("[bold]Sagawire demo")
    console.print(
        f"mode: [bold]{mode or 'as each saga definition says'}[/]   "
        f"data and logs: {options.data_dir.resolve()}"
    )


def failed_start(
    console: Console, error: str, tails: Mapping[str, Sequence[str]], logs: Path
) -> None:
    console.print(f"[bold red]the stack did not start:[/] {error}")
    for name, lines in tails.items():
        if name != "stack" and name in error:
            console.print(f"[bold]last lines of {name}:[/]")
            for line in lines:
                console.print(f"  {line}", markup=False)
    console.print(f"logs: {logs}")


def scenario_header(console: Console, number: int, title: str, story: str) -> None:
    console.print()
    console.rule(f"[bold]{number}. {title}", align="left")
    console.print(story, style="dim")


def steps_table(saga: coordinator_pb2.Saga) -> Table:
    """One row per attempt: step, call, status, attempt, outcome, error, start, duration."""
    t0 = _ms(saga.created_at) or 0
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("step", "call", "step status", "#", "outcome", "error / events"):
        table.add_column(column)
    table.add_column("start", justify="right")
    table.add_column("took", justify="right")
    for step in saga.steps:
        status = _enum(coordinator_pb2.StepStatus.Name(step.status), "STEP_STATUS_")
        style = _STATUS_STYLE.get(status.upper(), "")
        if status == "compensated":
            style = _STATUS_STYLE["COMPENSATED_STEP"]
        status_text = Text(status, style=style)
        if not step.attempts:
            detail = ", ".join(step.events) if step.events else "not run"
            call = f"{step.participant}.{step.action}"
            table.add_row(step.name, call, status_text, "", "", detail)
            continue
        for i, attempt in enumerate(step.attempts):
            call = f"{step.participant}.{step.action}"
            if attempt.phase != "execute":
                call = f"↩ {step.participant}.{step.compensation}"
            started, finished = _ms(attempt.started_at), _ms(attempt.finished_at)
            error = " ".join(x for x in (attempt.error_code, attempt.error_reason) if x)
            outcome = attempt.outcome or "running"
            table.add_row(
                step.name if i == 0 else "",
                call,
                status_text if i == 0 else "",
                str(attempt.number),
                Text(outcome, style=_OUTCOME_STYLE.get(outcome, "")),
                error,
                f"+{started - t0} ms" if started is not None else "",
                f"{finished - started} ms" if started is not None and finished else "",
            )
    return table


def _saga_line(saga: coordinator_pb2.Saga) -> Text:
    status = status_name(saga.status)
    mode = _enum(participant_pb2.SagaMode.Name(saga.mode), "SAGA_MODE_")
    line = Text(f"saga {saga.saga_id} · {saga.saga} · {mode} · ")
    line.append(status, style=_STATUS_STYLE.get(status, "bold"))
    start, end = _ms(saga.created_at), _ms(saga.finished_at)
    if start is not None and end is not None:
        line.append(f" in {end - start} ms")
    if saga.failure.step or saga.failure.reason:
        f = saga.failure
        line.append(f" · failed at {f.step}: {f.code} {f.reason}".rstrip(), style="red")
    if saga.trace_id:
        line.append(f" · trace {saga.trace_id}", style="dim")
    return line


def _effects_line(o: ScenarioResult) -> str:
    parts = []
    if o.order is not None:
        status = _enum(order_pb2.OrderStatus.Name(o.order.status), "ORDER_STATUS_")
        reason = f" ({o.order.reason})" if o.order.reason else ""
        parts.append(f"order {status}{reason}")
    if o.reservation is not None:
        name = inventory_pb2.ReservationStatus.Name(o.reservation.status)
        parts.append(f"reservation {_enum(name, 'RESERVATION_STATUS_')}")
    else:
        parts.append("no reservation")
    for charge in o.charges:
        name = _enum(payment_pb2.ChargeStatus.Name(charge.status), "CHARGE_STATUS_")
        parts.append(f"charge {money(charge.amount.amount_minor, charge.amount.currency)} {name}")
    if not o.charges:
        parts.append("no charge")
    if o.shipment is not None:
        name = _enum(shipping_pb2.ShipmentStatus.Name(o.shipment.status), "SHIPMENT_STATUS_")
        parts.append(f"shipment {name} {o.shipment.tracking_number}".rstrip())
    else:
        parts.append("no shipment")
    return "services now hold: " + " · ".join(parts)


def print_outcome(console: Console, o: ScenarioResult) -> None:
    if o.saga is not None:
        console.print(_saga_line(o.saga))
        console.print(steps_table(o.saga))
        console.print(_effects_line(o), highlight=False)
    if o.error:
        console.print(f"[bold red]✗ {o.error}[/]", highlight=False)
    for ok, text in o.checks:
        console.print(Text(f"{'✓' if ok else '✗'} {text}", style="green" if ok else "bold red"))


def print_reaction_attempts(console: Console, attempts: Sequence[SpanRecord], saga_id: str) -> None:
    """A choreographed saga's step attempts as the services ran them (from its trace)."""
    if not attempts:
        console.print(
            f"the services' attempts are in the saga's trace: sagawire trace {saga_id}",
            style="dim",
        )
        return
    t0 = min(s.start_ns for s in attempts)
    table = Table(
        title="attempts by the services' event consumers (from the trace)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("service", "step", "#", "outcome", "error"):
        table.add_column(column)
    table.add_column("start", justify="right")
    table.add_column("took", justify="right")
    for span in attempts:
        outcome = str(span.attributes.get("saga.outcome") or "ok")
        table.add_row(
            span.service,
            str(span.attributes.get("saga.step", "")),
            str(span.attributes.get("saga.attempt", "")),
            Text(outcome, style=_OUTCOME_STYLE.get(outcome, "")),
            str(span.attributes.get("saga.error_reason") or ""),
            f"+{(span.start_ns - t0) // 1_000_000} ms",
            f"{(span.end_ns - span.start_ns) // 1_000_000} ms",
        )
    console.print(table)


def print_final_state(
    console: Console, start: Holdings, end: Holdings, outcomes: Sequence[ScenarioResult]
) -> None:
    console.print()
    console.rule("[bold]What the services hold now", align="left")
    stock = Table(title="inventory", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("SKU", "available before", "available now", "reserved before", "reserved now"):
        stock.add_column(column, justify="left" if column == "SKU" else "right")
    for sku, (available, reserved) in end.stock.items():
        was_available, was_reserved = start.stock[sku]
        stock.add_row(
            sku, f"{was_available:,}", f"{available:,}", f"{was_reserved:,}", f"{reserved:,}"
        )
    console.print(stock)
    accounts = Table(title="payment", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("customer", "balance before", "balance now", "change"):
        accounts.add_column(column, justify="left" if column == "customer" else "right")
    for customer, balance in end.balances.items():
        was = start.balances[customer]
        accounts.add_row(
            customer,
            money(was, end.currency),
            money(balance, end.currency),
            money(balance - was, end.currency),
        )
    console.print(accounts)
    orders = Table(title="order", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("scenario", "order id", "customer", "total", "status", "reason"):
        orders.add_column(column, justify="right" if column == "total" else "left")
    for o in outcomes:
        if o.order is None:
            orders.add_row(o.scenario.name, "-", o.scenario.customer, "", "none", "")
            continue
        status = _enum(order_pb2.OrderStatus.Name(o.order.status), "ORDER_STATUS_")
        orders.add_row(
            o.scenario.name,
            o.order.order_id,
            o.order.customer_id,
            money(o.order.total.amount_minor, o.order.total.currency),
            Text(status, style="green" if status == "approved" else "yellow"),
            o.order.reason,
        )
    console.print(orders)


def verdict(
    console: Console, outcomes: Sequence[ScenarioResult] | None, clean: bool, logs: Path
) -> int:
    """The summary table; returns the exit status (0: everything as expected)."""
    console.print()
    table = Table(title="Demo summary", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("scenario", "expected", "saga ended", "result"):
        table.add_column(column)
    for o in outcomes or []:
        expected = status_name(o.scenario.expected)
        if o.scenario.reason:
            expected += f" ({o.scenario.reason})"
        got = status_name(o.saga.status) if o.saga else o.error.partition(":")[0]
        if o.saga is not None and o.saga.failure.reason:
            got += f" ({o.saga.failure.reason})"
        table.add_row(
            o.scenario.name,
            expected,
            got,
            Text("as expected", style="green")
            if o.ok
            else Text("NOT as expected", style="bold red"),
        )
    if outcomes:
        console.print(table)
    console.print(
        f"stack stopped {'cleanly' if clean else '[bold red]NOT cleanly[/]'}; logs: {logs}"
    )
    ok = outcomes is not None and all(o.ok for o in outcomes) and clean
    console.print("[bold green]demo passed[/]" if ok else "[bold red]demo failed[/]")
    return 0 if ok else 1
