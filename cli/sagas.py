"""``sagawire order`` / ``saga`` / ``breakers``: orders and sagas, via the Coordinator API.

A thin client of ``sagawire.v1.Coordinator`` (where, as whom, and the exit statuses: see
cli/client.py). ``order place`` and ``saga watch`` exit with the saga's outcome: 0
completed, 3 compensated, 4 needs attention or stalled. Every read verb takes
``--output json`` (cli/output.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

import typer
from rich.text import Text

from cli.client import ExitCode, coordinator_api, outcome_code
from cli.output import (
    UNKNOWN,
    Output,
    OutputOption,
    clock,
    console,
    duration,
    message_dict,
    print_json,
    seconds_text,
    table,
    when,
    zone,
)
from cli.tokens import TokenOption
from common.config import check_address
from common.money import format_money
from contract.limits import MAX_PAGE_SIZE
from protos.sagawire.v1 import common_pb2, coordinator_pb2_grpc, order_saga_pb2, participant_pb2
from protos.sagawire.v1 import coordinator_pb2 as pb

order_app = typer.Typer(no_args_is_help=True, help="Place and return orders.")
saga_app = typer.Typer(no_args_is_help=True, help="See, watch and retry sagas.")

_COLORS = {
    "completed": "green",
    "compensated": "yellow",
    "needs_attention": "bold red",
    "running": "cyan",
    "compensating": "magenta",
    "stalled": "red",
    "succeeded": "green",
    "rejected": "red",
    "failed": "red",
    "pending": "dim",
}
_SETTLED = frozenset(
    {
        pb.SAGA_STATUS_COMPLETED,
        pb.SAGA_STATUS_COMPENSATED,
        pb.SAGA_STATUS_NEEDS_ATTENTION,
        pb.SAGA_STATUS_STALLED,
    }
)


class Status(StrEnum):
    running = "running"
    compensating = "compensating"
    completed = "completed"
    compensated = "compensated"
    needs_attention = "needs_attention"
    stalled = "stalled"


# Before the global option: ``sagawire --address HOST:PORT saga list`` is the way now.
CoordinatorOption = Annotated[
    str | None, typer.Option("--coordinator", hidden=True, help="Same as sagawire --address.")
]


def register(app: typer.Typer) -> None:
    """Add the order, saga and breakers verbs to the ``sagawire`` command."""
    app.add_typer(order_app, name="order")
    app.add_typer(saga_app, name="saga")
    app.command("breakers")(breakers)


@contextmanager
def _coordinator(
    address: str | None, token: str | None
) -> Iterator[coordinator_pb2_grpc.CoordinatorStub]:
    """The coordinator's API (``address`` overrides ``--address`` for this verb)."""
    if address:
        os.environ["SAGAWIRE_COORDINATOR_ADDR"] = check_address(address)
    with coordinator_api(token) as api:
        yield api


def _name(enum_name: str) -> str:
    """SAGA_STATUS_NEEDS_ATTENTION -> needs_attention."""
    for prefix in ("SAGA_STATUS_", "STEP_STATUS_", "SAGA_MODE_"):
        enum_name = enum_name.removeprefix(prefix)
    return enum_name.lower()


def _styled(name: str) -> Text:
    return Text(name, style=_COLORS.get(name, ""))


def _status(status: pb.SagaStatus.ValueType) -> str:
    return _name(pb.SagaStatus.Name(status))


def _item(value: str) -> common_pb2.LineItem:
    sku, sep, quantity = value.rpartition(":")
    if not sep or not sku or not quantity.isdigit() or int(quantity) < 1:
        raise typer.BadParameter(f"{value!r}: expected SKU:QUANTITY, e.g. SKU-MUG:2")
    return common_pb2.LineItem(sku=sku, quantity=int(quantity))


def _failure(failure: pb.Failure) -> str:
    if not failure.code:
        return ""
    where = f"{failure.step}: " if failure.step else ""
    return f"{where}{failure.reason or failure.code} ({failure.message})"


def _took(saga: pb.Saga) -> str:
    """How long a saga took, or has been running for (its end is not known yet)."""
    if saga.status in _SETTLED or when(saga.finished_at) is not None:
        return f"took {duration(saga.created_at, saga.finished_at)}"
    started = when(saga.created_at)
    if started is None:
        return "running"
    return f"running for {seconds_text((datetime.now(UTC) - started).total_seconds())}"


@order_app.command("place")
def place(
    customer: Annotated[str, typer.Option(help="Customer id, e.g. alice.")],
    item: Annotated[list[str], typer.Option(help="SKU:QUANTITY; repeat for more lines.")],
    to: Annotated[str, typer.Option(help="Destination.")],
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return once logged (exit 0, whatever follows).")
    ] = False,
    key: Annotated[str, typer.Option(help="Idempotency key: same key, same saga.")] = "",
    output: OutputOption = Output.table,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Place an order: start a place_order saga and wait for its outcome.

    Exit status: 0 completed, 3 compensated, 4 needs attention (see `sagawire --help`).
    """
    request = pb.PlaceOrderRequest(
        customer_id=customer,
        items=[_item(i) for i in item],
        destination=to,
        idempotency_key=key,
        wait=not no_wait,
    )
    with _coordinator(coordinator, token) as api:
        reply = api.PlaceOrder(request, timeout=120)
        saga = (
            None if no_wait else api.GetSaga(pb.GetSagaRequest(saga_id=reply.saga_id), timeout=10)
        )
    _started(reply, saga, output)


def _started(
    reply: pb.PlaceOrderResponse | pb.ReturnOrderResponse, saga: pb.Saga | None, output: Output
) -> None:
    """What a verb that starts a saga prints, then its exit status: the saga's outcome when
    it waited for it (``saga``), else 0."""
    if output is Output.json:
        print_json({**message_dict(reply), **({"saga": message_dict(saga)} if saga else {})})
    else:
        out = console()
        again = " (existing saga for this key)" if reply.existing else ""
        line = Text(f"saga {reply.saga_id}  order {reply.order_id}  ")
        line.append(_styled(_status(reply.status)))
        out.print(line + Text(again))
        if reply.failure.code:
            out.print(f"  failed at {_failure(reply.failure)}", markup=False)
        if saga is not None:
            _show(saga)
    raise typer.Exit(outcome_code(reply.status) if saga is not None else ExitCode.OK)


@order_app.command("return")
def return_order(
    order_id: Annotated[str, typer.Argument(help="The order to return (it must be approved).")],
    customer: Annotated[str, typer.Option(help="The customer who placed it, e.g. alice.")],
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return once logged (exit 0, whatever follows).")
    ] = False,
    key: Annotated[str, typer.Option(help="Idempotency key: same key, same saga.")] = "",
    output: OutputOption = Output.table,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Return a completed order: start a return_order saga (refund, restock, close) and
    wait for its outcome.

    Exit status: 0 completed, 3 compensated, 4 needs attention (see `sagawire --help`).
    """
    request = pb.ReturnOrderRequest(
        order_id=order_id, customer_id=customer, idempotency_key=key, wait=not no_wait
    )
    with _coordinator(coordinator, token) as api:
        reply = api.ReturnOrder(request, timeout=120)
        saga = (
            None if no_wait else api.GetSaga(pb.GetSagaRequest(saga_id=reply.saga_id), timeout=10)
        )
    _started(reply, saga, output)


@saga_app.command("show")
def show(
    saga_id: Annotated[str, typer.Argument(help="The saga id.")],
    output: OutputOption = Output.table,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """A saga's steps, attempts, errors and timings."""
    with _coordinator(coordinator, token) as api:
        saga = api.GetSaga(pb.GetSagaRequest(saga_id=saga_id), timeout=10)
    if output is Output.json:
        print_json(saga)
    else:
        _show(saga)


def _show(saga: pb.Saga) -> None:
    out = console()
    mode = _name(participant_pb2.SagaMode.Name(saga.mode))
    head = Text(f"{saga.saga} ", style="bold") + Text(f"{saga.saga_id}  ")
    out.print(head + _styled(_status(saga.status)) + Text(f"  ({mode}, {_took(saga)})"))
    data = order_saga_pb2.OrderSagaData()
    if saga.data.Unpack(data):
        lines = ", ".join(f"{i.sku} x{i.quantity}" for i in data.items)
        total = (
            format_money(data.total.amount_minor, data.total.currency)
            if data.total.currency
            else UNKNOWN
        )
        order = data.order_id or UNKNOWN
        out.print(
            f"  order {order}: {data.customer_id}, {lines} -> {data.destination}", markup=False
        )
        charge, tracking = data.charge_id or UNKNOWN, data.tracking_number or UNKNOWN
        out.print(f"  total {total}  charge {charge}  tracking {tracking}", markup=False)
        if data.placed_by_saga_id:
            out.print(f"  returns the order placed by saga {data.placed_by_saga_id}")
        if data.placed_by_saga_id:
            out.print(f"  returns the order placed by saga {data.placed_by_saga_id}", markup=False)
    if saga.failure.code:
        out.print(f"  failure: {_failure(saga.failure)}", markup=False)
    if saga.trace_id:
        out.print(f"  trace {saga.trace_id}")
    steps = table(
        "step", "call", "after", "status", "attempts", "last error",
        title="steps", wrap=("call", "after", "last error"),
    )  # fmt: skip
    started = f"started ({zone()})"
    attempts = table(
        "step", "phase", "#", started, "took", "outcome", "error", title="attempts", wrap=("error",)
    )
    for step in saga.steps:
        errors_seen = [a for a in step.attempts if a.error_code]
        last = errors_seen[-1] if errors_seen else None
        undo = f" / {step.compensation}" if step.compensation else ""
        pivot = " (pivot)" if step.pivot else ""
        steps.add_row(
            step.name + pivot,
            f"{step.participant}.{step.action}{undo}",
            ", ".join(step.after) or UNKNOWN,
            _styled(_name(pb.StepStatus.Name(step.status))),
            str(len(step.attempts)),
            f"{last.error_reason or last.error_code}: {last.error_message}" if last else "",
        )
        for a in step.attempts:
            error = f"{a.error_reason or a.error_code} {a.error_message}".strip()
            attempts.add_row(
                step.name, a.phase, str(a.number), clock(a.started_at),
                duration(a.started_at, a.finished_at), a.outcome or "running", error,
            )  # fmt: skip
    out.print(steps)
    out.print(attempts)


@saga_app.command("list")
def list_sagas(
    status: Annotated[Status | None, typer.Option(help="Only sagas in this status.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many, newest first (read page by page).")
    ] = 20,
    output: OutputOption = Output.table,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Sagas, newest first, with their customer, total and failure (one call per page)."""
    request = pb.ListSagasRequest()
    if status is not None:
        request.status = pb.SagaStatus.Value(f"SAGA_STATUS_{status.value.upper()}")
    sagas: list[pb.Saga] = []
    with _coordinator(coordinator, token) as api:
        while len(sagas) < limit:
            request.page_size = min(limit - len(sagas), MAX_PAGE_SIZE)
            reply = api.ListSagas(request, timeout=10)
            sagas.extend(reply.sagas)
            request.page_token = reply.next_page_token
            if not request.page_token:
                break
    if output is Output.json:
        for saga in sagas:
            print_json(saga)
        return
    kinds = sorted({saga.saga for saga in sagas})
    # One definition (the usual case): named in the title, not in a column of its own.
    columns = ["saga id", "saga", "status", "customer", "total", f"created ({zone()})"]
    columns += ["took", "failure"]
    if len(kinds) == 1:
        columns.remove("saga")
    title = f"{kinds[0]} sagas" if len(kinds) == 1 else None
    listed = table(*columns, title=title, wrap=("failure",), right=("total",))
    for saga in sagas:
        total = saga.summary.total
        took = duration(saga.created_at, saga.finished_at)
        cells: list[str | Text] = [
            saga.saga_id,
            saga.saga,
            _styled(_status(saga.status)),
            saga.summary.customer_id or UNKNOWN,
            format_money(total.amount_minor, total.currency) if total.currency else UNKNOWN,
            clock(saga.created_at, with_date=True),
            took if saga.status in _SETTLED else "running",
            _failure(saga.failure),
        ]
        if len(kinds) == 1:
            del cells[1]
        listed.add_row(*cells)
    console().print(listed)


@saga_app.command("watch")
def watch(
    saga_id: Annotated[str, typer.Argument(help="The saga id.")],
    output: OutputOption = Output.table,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Follow a saga's transitions until it is settled; exit with its outcome (0, 3, 4)."""
    out = console()
    last = pb.SAGA_STATUS_UNSPECIFIED
    with _coordinator(coordinator, token) as api:
        if output is Output.table:
            out.print(f"saga {saga_id} (times {zone()})", style="dim")
        for t in api.WatchSaga(pb.WatchSagaRequest(saga_id=saga_id)):
            last = t.status
            if output is Output.json:
                print_json(t)
                continue
            attempt = f"#{t.attempt}" if t.attempt else ""
            line = Text(f"{t.sequence:>4} {clock(t.at)} {t.kind:<28} {t.step:<18} {attempt:<4} ")
            out.print(line + _styled(_status(t.status)) + Text(f" {t.detail}"), soft_wrap=True)
    raise typer.Exit(outcome_code(last) if last in _SETTLED else ExitCode.OK)


@saga_app.command("retry")
def retry(
    saga_id: Annotated[str, typer.Argument(help="The saga id.")],
    output: OutputOption = Output.table,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Resume a saga that needs attention (its compensations run again), or a stalled one."""
    with _coordinator(coordinator, token) as api:
        saga = api.RetrySaga(pb.RetrySagaRequest(saga_id=saga_id), timeout=10)
    if output is Output.json:
        print_json(saga)
        return
    console().print(Text(f"saga {saga.saga_id} resumed: ") + _styled(_status(saga.status)))


def breakers(
    output: OutputOption = Output.table,
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """The coordinator's circuit breakers, one per participant, and where it calls each."""
    with _coordinator(coordinator, token) as api:
        reply = api.ListBreakers(pb.ListBreakersRequest(), timeout=10)
    if output is Output.json:
        for b in reply.breakers:
            print_json(b)
        return
    changed = f"last change ({zone()})"
    shown = table(
        "participant", "address", "state", "failed/calls", "opens at", "waiting", "in flight",
        changed, wrap=("failed/calls", "opens at", changed),
    )  # fmt: skip
    colors = {"closed": "green", "open": "bold red", "half-open": "yellow"}
    for b in reply.breakers:
        last = b.transitions[-1] if b.transitions else None
        change = f"{last.from_state} -> {last.to_state} at {clock(last.at)}" if last else UNKNOWN
        shown.add_row(
            b.participant,
            b.address or UNKNOWN,
            Text(b.state, style=colors.get(b.state, "")),
            f"{b.failure_count}/{b.window_calls} in {b.window_seconds:g}s",
            f"{b.failure_rate_threshold:.0%} of ≥{b.minimum_calls}",
            f"{b.waiting_for_breaker + b.waiting_for_bulkhead}",
            f"{b.in_flight}/{b.bulkhead_limit}",
            change,
        )
    console().print(shown)
