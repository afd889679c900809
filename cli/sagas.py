"""``sagawire order`` / ``saga`` / ``breakers``: orders and sagas, via the Coordinator API.

A thin client of ``sagawire.v1.Coordinator`` (address: ``--coordinator`` or
``SAGAWIRE_COORDINATOR_ADDR``; bearer token: ``--token``, ``SAGAWIRE_TOKEN`` or the
local stack's key, see cli/tokens.py). Server errors print as one line and exit 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import grpc
import typer
from google.protobuf import timestamp_pb2
from rich.console import Console
from rich.table import Table

from cli.tokens import TokenOption, cli_token
from common.config import Endpoints
from common.errors import parse_rpc_error
from common.money import format_money
from common.paging import MAX_PAGE_SIZE
from common.tls import Identity, TlsError
from common.tokens import with_token
from protos.sagawire.v1 import common_pb2, coordinator_pb2_grpc, order_saga_pb2, participant_pb2
from protos.sagawire.v1 import coordinator_pb2 as pb

console = Console()
errors = Console(stderr=True)

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


class Status(StrEnum):
    running = "running"
    compensating = "compensating"
    completed = "completed"
    compensated = "compensated"
    needs_attention = "needs_attention"
    stalled = "stalled"


CoordinatorOption = Annotated[
    str | None,
    typer.Option(
        "--coordinator",
        help="Coordinator address host:port (default: SAGAWIRE_COORDINATOR_ADDR or :50050).",
    ),
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
    target = address or Endpoints().coordinator_addr
    try:
        channel = Identity.from_env().sync_channel(target)
    except TlsError as error:
        errors.print(f"error: {error}")
        raise typer.Exit(1) from None
    with channel:
        try:
            yield with_token(coordinator_pb2_grpc.CoordinatorStub(channel), cli_token(token))
        except grpc.RpcError as error:
            remote = parse_rpc_error(error)
            if remote.code == grpc.StatusCode.UNAVAILABLE:
                errors.print(f"error: cannot reach the coordinator at {target} (is it running?)")
            elif remote.code == grpc.StatusCode.UNAUTHENTICATED:
                errors.print(
                    f"error: UNAUTHENTICATED: {remote.message}; give a token with --token or"
                    " SAGAWIRE_TOKEN (`sagawire token issue` where the stack's key is)"
                )
            else:
                field = f" ({remote.field})" if remote.field else ""
                reason = f" [{remote.reason}]" if remote.reason else ""
                errors.print(f"error: {remote.code.name}{reason}{field}: {remote.message}")
            raise typer.Exit(1) from None


def _name(enum_name: str) -> str:
    """SAGA_STATUS_NEEDS_ATTENTION -> needs_attention."""
    for prefix in ("SAGA_STATUS_", "STEP_STATUS_", "SAGA_MODE_"):
        enum_name = enum_name.removeprefix(prefix)
    return enum_name.lower()


def _styled(name: str) -> str:
    color = _COLORS.get(name)
    return f"[{color}]{name}[/]" if color else name


def _time(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    return stamp.ToDatetime() if stamp.seconds or stamp.nanos else None


def _ms(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> str:
    begin, finish = _time(start), _time(end)
    if begin is None or finish is None:
        return ""
    return f"{(finish - begin).total_seconds() * 1000:.0f}"


def _clock(stamp: timestamp_pb2.Timestamp) -> str:
    when = _time(stamp)
    return when.strftime("%H:%M:%S.%f")[:-3] if when else ""


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


@order_app.command("place")
def place(
    customer: Annotated[str, typer.Option(help="Customer id, e.g. alice.")],
    item: Annotated[list[str], typer.Option(help="SKU:QUANTITY; repeat for more lines.")],
    to: Annotated[str, typer.Option(help="Destination.")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once logged.")] = False,
    key: Annotated[str, typer.Option(help="Idempotency key: same key, same saga.")] = "",
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Place an order: start a place_order saga (and by default wait for its outcome)."""
    request = pb.PlaceOrderRequest(
        customer_id=customer,
        items=[_item(i) for i in item],
        destination=to,
        idempotency_key=key,
        wait=not no_wait,
    )
    with _coordinator(coordinator, token) as api:
        reply = api.PlaceOrder(request, timeout=120)
        status = _name(pb.SagaStatus.Name(reply.status))
        again = " (existing saga for this key)" if reply.existing else ""
        console.print(f"saga {reply.saga_id}  order {reply.order_id}  {_styled(status)}{again}")
        if reply.failure.code:
            console.print(f"  failed at {_failure(reply.failure)}")
        if not no_wait:
            _show(api.GetSaga(pb.GetSagaRequest(saga_id=reply.saga_id), timeout=10))


@order_app.command("return")
def return_order(
    order_id: Annotated[str, typer.Argument(help="The order to return (it must be approved).")],
    customer: Annotated[str, typer.Option(help="The customer who placed it, e.g. alice.")],
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once logged.")] = False,
    key: Annotated[str, typer.Option(help="Idempotency key: same key, same saga.")] = "",
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Return a completed order: start a return_order saga (refund, restock, close) and by
    default wait for its outcome."""
    request = pb.ReturnOrderRequest(
        order_id=order_id, customer_id=customer, idempotency_key=key, wait=not no_wait
    )
    with _coordinator(coordinator, token) as api:
        reply = api.ReturnOrder(request, timeout=120)
        status = _name(pb.SagaStatus.Name(reply.status))
        again = " (existing saga for this key)" if reply.existing else ""
        console.print(f"saga {reply.saga_id}  order {reply.order_id}  {_styled(status)}{again}")
        if reply.failure.code:
            console.print(f"  failed at {_failure(reply.failure)}")
        if not no_wait:
            _show(api.GetSaga(pb.GetSagaRequest(saga_id=reply.saga_id), timeout=10))


@saga_app.command("show")
def show(
    saga_id: Annotated[str, typer.Argument(help="The saga id.")],
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """A saga's steps, attempts, errors and timings."""
    with _coordinator(coordinator, token) as api:
        _show(api.GetSaga(pb.GetSagaRequest(saga_id=saga_id), timeout=10))


def _show(saga: pb.Saga) -> None:
    status = _name(pb.SagaStatus.Name(saga.status))
    mode = _name(participant_pb2.SagaMode.Name(saga.mode))
    took = _ms(saga.created_at, saga.finished_at)
    console.print(f"[bold]{saga.saga}[/] {saga.saga_id}  {_styled(status)}  ({mode}, {took} ms)")
    data = order_saga_pb2.OrderSagaData()
    if saga.data.Unpack(data):
        lines = ", ".join(f"{i.sku} x{i.quantity}" for i in data.items)
        total = (
            format_money(data.total.amount_minor, data.total.currency)
            if data.total.currency
            else "-"
        )
        console.print(f"  order {data.order_id}: {data.customer_id}, {lines} -> {data.destination}")
        charge, tracking = data.charge_id or "-", data.tracking_number or "-"
        console.print(f"  total {total}  charge {charge}  tracking {tracking}")
        if data.placed_by_saga_id:
            console.print(f"  returns the order placed by saga {data.placed_by_saga_id}")
    if saga.failure.code:
        console.print(f"  failure: {_failure(saga.failure)}")
    if saga.trace_id:
        console.print(f"  trace {saga.trace_id}")
    steps = Table(title="steps", title_justify="left")
    for column in ("step", "call", "after", "status", "attempts", "last error"):
        steps.add_column(column)
    attempts = Table(title="attempts", title_justify="left")
    for column in ("step", "phase", "#", "started", "ms", "outcome", "error"):
        attempts.add_column(column)
    for step in saga.steps:
        errors_seen = [a for a in step.attempts if a.error_code]
        last = errors_seen[-1] if errors_seen else None
        undo = f" / {step.compensation}" if step.compensation else ""
        pivot = " (pivot)" if step.pivot else ""
        steps.add_row(
            step.name + pivot,
            f"{step.participant}.{step.action}{undo}",
            ", ".join(step.after),
            _styled(_name(pb.StepStatus.Name(step.status))),
            str(len(step.attempts)),
            f"{last.error_reason or last.error_code}: {last.error_message}" if last else "",
        )
        for a in step.attempts:
            error = f"{a.error_reason or a.error_code} {a.error_message}".strip()
            attempts.add_row(
                step.name, a.phase, str(a.number), _clock(a.started_at),
                _ms(a.started_at, a.finished_at), a.outcome or "running", error,
            )  # fmt: skip
    console.print(steps)
    console.print(attempts)


@saga_app.command("list")
def list_sagas(
    status: Annotated[Status | None, typer.Option(help="Only sagas in this status.")] = None,
    limit: Annotated[
        int, typer.Option(min=1, max=10_000, help="How many, newest first (read page by page).")
    ] = 20,
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
    table = Table()
    table.add_column("saga id", no_wrap=True, min_width=36)
    for column in ("saga", "status", "customer", "total", "created", "ms", "failure"):
        table.add_column(column, justify="right" if column == "total" else "left")
    for saga in sagas:
        created = _time(saga.created_at)
        total = saga.summary.total
        table.add_row(
            saga.saga_id,
            saga.saga,
            _styled(_name(pb.SagaStatus.Name(saga.status))),
            saga.summary.customer_id,
            format_money(total.amount_minor, total.currency) if total.currency else "",
            created.strftime("%Y-%m-%d %H:%M:%S") if created else "",
            _ms(saga.created_at, saga.finished_at),
            _failure(saga.failure),
        )
    console.print(table)


@saga_app.command("watch")
def watch(
    saga_id: Annotated[str, typer.Argument(help="The saga id.")],
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Follow a saga's transitions until it is settled."""
    with _coordinator(coordinator, token) as api:
        for t in api.WatchSaga(pb.WatchSagaRequest(saga_id=saga_id)):
            attempt = f"#{t.attempt}" if t.attempt else ""
            status = _styled(_name(pb.SagaStatus.Name(t.status)))
            console.print(
                f"{t.sequence:>4} {_clock(t.at)} {t.kind:<28} {t.step:<18} {attempt:<4}"
                f" {status} {t.detail}"
            )


@saga_app.command("retry")
def retry(
    saga_id: Annotated[str, typer.Argument(help="The saga id.")],
    coordinator: CoordinatorOption = None,
    token: TokenOption = None,
) -> None:
    """Resume a saga that needs attention (its compensations run again), or a stalled one."""
    with _coordinator(coordinator, token) as api:
        saga = api.RetrySaga(pb.RetrySagaRequest(saga_id=saga_id), timeout=10)
    console.print(f"saga {saga.saga_id} resumed: {_styled(_name(pb.SagaStatus.Name(saga.status)))}")


def breakers(coordinator: CoordinatorOption = None, token: TokenOption = None) -> None:
    """The coordinator's circuit breakers, one per participant."""
    with _coordinator(coordinator, token) as api:
        reply = api.ListBreakers(pb.ListBreakersRequest(), timeout=10)
    table = Table()
    columns = (
        "participant",
        "state",
        "failed/calls",
        "opens at",
        "waiting",
        "in flight",
        "last change",
    )
    for column in columns:
        table.add_column(column)
    colors = {"closed": "green", "open": "bold red", "half-open": "yellow"}
    for b in reply.breakers:
        last = b.transitions[-1] if b.transitions else None
        change = f"{last.from_state} -> {last.to_state} at {_clock(last.at)}" if last else ""
        table.add_row(
            b.participant,
            f"[{colors.get(b.state, 'white')}]{b.state}[/]",
            f"{b.failure_count}/{b.window_calls} in {b.window_seconds:g}s",
            f"{b.failure_rate_threshold:.0%} of ≥{b.minimum_calls}",
            f"{b.waiting_for_breaker + b.waiting_for_bulkhead}",
            f"{b.in_flight}/{b.bulkhead_limit}",
            change,
        )
    console.print(table)
