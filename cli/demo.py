"""``sagawire demo``: start the local stack, place the orders that show every saga outcome, and
return some of them (the second saga type, return_order).

The demo is a client like any other: it starts the stack with the same supervisor as
``sagawire up`` (in the background of this command, children's logs going to files),
then talks only gRPC — the coordinator's public API to place orders and read sagas, the
services' query APIs to read what they hold, and their Admin API to inject faults. Each
scenario is judged against what it must show; the command exits 0 only when every one
did and the stack stopped cleanly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, TextIO, TypeVar

import grpc
import typer
from rich.console import Console

from cli import demo_view as view
from cli import trace
from cli.demo_scenarios import SCENARIOS, Fault, Holdings, Scenario, ScenarioResult, Status, judge
from cli.stack import (
    COORDINATOR,
    Mode,
    Stack,
    StackError,
    StackOptions,
    busy_ports,
    coordinator_installed,
    default_names,
    free_ports,
    install_stop_signals,
    ports_from_base,
    stack_table,
    with_admin_ports,
)
from cli.tokens import stack_token
from common.config import SERVICE_NAMES, admin_addresses
from common.grpc_errors import parse_rpc_error
from common.paging import every_page
from common.tls import Identity
from common.tokens import with_token
from protos.sagawire.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
    participant_pb2,
    payment_pb2,
    payment_pb2_grpc,
    shipping_pb2,
    shipping_pb2_grpc,
)

_T = TypeVar("_T")
_COMPENSATED = Status.SAGA_STATUS_COMPENSATED
# Where a saga stays without outside help (a saga needing attention waits for an operator).
_SETTLED = frozenset(
    {Status.SAGA_STATUS_COMPLETED, _COMPENSATED, Status.SAGA_STATUS_NEEDS_ATTENTION}
)
_SAGA_DEADLINE = 45.0
_MARKER = ".sagawire-demo"
_INTERRUPTED = 130  # the shell's status for a command ended by Ctrl-C
# How long the demo waits for the services' spans of a choreographed saga's attempts.
_ATTEMPTS_WAIT = 5.0
# The demo's processes export their spans at once (the SDK's default batches every 5 s),
# so the services' attempts of a choreographed saga can be shown as it ends.
_DEMO_ENV = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


class Clients:
    """gRPC stubs for the coordinator's public API and the services' query and Admin APIs."""

    def __init__(self, addresses: Mapping[str, str], identity: Identity, token: str | None) -> None:
        # The demo is an operator: mutual TLS with the operator's certificate.
        self._channels = {n: identity.aio_channel(a, peer=n) for n, a in addresses.items()}
        # ...and calls the coordinator with an operator token.
        self.coordinator = with_token(
            coordinator_pb2_grpc.CoordinatorStub(self._channels[COORDINATOR]), token
        )
        self.order = order_pb2_grpc.OrderStub(self._channels["order"])
        self.inventory = inventory_pb2_grpc.InventoryStub(self._channels["inventory"])
        self.payment = payment_pb2_grpc.PaymentStub(self._channels["payment"])
        self.shipping = shipping_pb2_grpc.ShippingStub(self._channels["shipping"])
        # Each service's Admin API, on its own port.
        self._admin = {
            n: identity.aio_channel(admin_addresses(a)[0], peer=n)
            for n, a in addresses.items()
            if n in SERVICE_NAMES
        }

    def admin(self, service: str) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self._admin[service])

    async def close(self) -> None:
        for channel in [*self._channels.values(), *self._admin.values()]:
            await channel.close()


async def read_holdings(clients: Clients, skus: list[str], customers: list[str]) -> Holdings:
    stock, balances, currency = {}, {}, ""
    for sku in skus:
        reply = await clients.inventory.GetStock(inventory_pb2.GetStockRequest(sku=sku))
        stock[sku] = (reply.available, reply.reserved)
    for customer in customers:
        account = await clients.payment.GetAccount(
            payment_pb2.GetAccountRequest(customer_id=customer)
        )
        balances[customer] = account.balance.amount_minor
        currency = account.balance.currency
    return Holdings(stock, balances, currency)


def one_line(error: grpc.aio.AioRpcError) -> str:
    remote = parse_rpc_error(error)
    reason = f" {remote.reason}" if remote.reason else ""
    return f"{remote.code.name}{reason}: {remote.message}"


async def _maybe(call: Callable[[], Awaitable[_T]]) -> _T | None:
    """The reply, or None when the service says NOT_FOUND (nothing was recorded)."""
    try:
        return await call()
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def _set_faults(clients: Clients, faults: tuple[Fault, ...], clear: bool = False) -> None:
    for service in sorted({f.service for f in faults}):
        actions = [
            admin_pb2.ActionFault(action=f.action, fail_next=f.fail_next, latency_ms=f.latency_ms)
            for f in faults
            if f.service == service and not clear
        ]
        await clients.admin(service).SetFaults(admin_pb2.FaultPlan(actions=actions))


async def _call_counts(clients: Clients, faults: tuple[Fault, ...]) -> dict[str, int]:
    """Calls each faulted action has received so far, keyed "service.action"."""
    counts: dict[str, int] = {}
    for f in faults:
        reply = await clients.admin(f.service).GetCallCounts(admin_pb2.GetCallCountsRequest())
        counts[f"{f.service}.{f.action}"] = reply.calls[f.action]
    return counts


async def wait_ended(clients: Clients, saga_id: str) -> coordinator_pb2.Saga:
    """GetSaga until the saga is settled (or the deadline passes)."""
    deadline = time.monotonic() + _SAGA_DEADLINE
    request = coordinator_pb2.GetSagaRequest(saga_id=saga_id)
    while True:
        saga: coordinator_pb2.Saga = await clients.coordinator.GetSaga(request, timeout=10)
        if saga.status in _SETTLED or time.monotonic() > deadline:
            return saga
        await asyncio.sleep(0.05)


async def _start(
    clients: Clients, scenario: Scenario, key: str, placed: Mapping[str, ScenarioResult]
) -> tuple[str, str]:
    """Start the scenario's saga and wait for it: an order placed, or an earlier one
    returned. Its saga id and order id."""
    if scenario.returns:
        order = placed[scenario.returns].order
        assert order is not None  # the order scenario it returns found its order
        returned = await clients.coordinator.ReturnOrder(
            coordinator_pb2.ReturnOrderRequest(
                order_id=order.order_id,
                customer_id=scenario.customer,
                idempotency_key=key,
                wait=True,
            ),
            timeout=_SAGA_DEADLINE,
        )
        return returned.saga_id, order.order_id
    request = coordinator_pb2.PlaceOrderRequest(
        customer_id=scenario.customer,
        items=[common_pb2.LineItem(sku=s, quantity=q) for s, q in scenario.items],
        destination=scenario.destination,
        idempotency_key=key,
        wait=True,
    )
    reply = await clients.coordinator.PlaceOrder(request, timeout=_SAGA_DEADLINE)
    return reply.saga_id, reply.order_id


async def play_scenario(
    clients: Clients,
    scenario: Scenario,
    run_id: str,
    skus: list[str],
    customers: list[str],
    mode: Mode | None,
    placed: Mapping[str, ScenarioResult],
) -> ScenarioResult:
    outcome = ScenarioResult(scenario, await read_holdings(clients, skus, customers))
    try:
        calls_before = await _call_counts(clients, scenario.faults)
        await _set_faults(clients, scenario.faults)
        try:
            saga_id, order_id = await _start(
                clients, scenario, f"demo-{run_id}-{scenario.name}", placed
            )
        finally:
            await _set_faults(clients, scenario.faults, clear=True)
        outcome.saga = saga = await wait_ended(clients, saga_id)
        calls_after = await _call_counts(clients, scenario.faults)
        outcome.calls = {k: calls_after[k] - calls_before[k] for k in calls_after}
        outcome.order = await _maybe(
            lambda: clients.order.GetOrder(order_pb2.GetOrderRequest(order_id=order_id))
        )
        # What the order's own saga reserved and charged (a return acts on those).
        if scenario.returns:
            outcome.placed_by = placed[scenario.returns].saga
        placing = outcome.placed_by or saga
        outcome.reservation = await _maybe(
            lambda: clients.inventory.GetReservation(
                inventory_pb2.GetReservationRequest(saga_id=placing.saga_id)
            )
        )
        outcome.charges = await every_page(
            lambda token: clients.payment.ListCharges(
                payment_pb2.ListChargesRequest(saga_id=placing.saga_id, page_token=token)
            ),
            lambda reply: reply.charges,
        )
        outcome.shipment = await _maybe(
            lambda: clients.shipping.GetShipmentBySaga(
                shipping_pb2.GetShipmentBySagaRequest(saga_id=placing.saga_id)
            )
        )
        outcome.after = await read_holdings(clients, skus, customers)
    except grpc.aio.AioRpcError as error:
        outcome.error = one_line(error)
        return outcome
    outcome.checks = judge(outcome, mode)
    return outcome


async def reaction_attempts(data_dir: Path, saga: coordinator_pb2.Saga) -> list[trace.SpanRecord]:
    """The services' attempts at a choreographed saga's steps, from the local trace files
    (not in the saga log: the coordinator only sees their events). Spans are written in
    batches, so they are waited for until every step the services ran (each succeeded
    step but the first, which the coordinator's call runs) has a successful attempt, for a
    few seconds at most."""
    succeeded = coordinator_pb2.STEP_STATUS_SUCCEEDED
    ran = {step.name for step in saga.steps if step.status == succeeded and step.after}
    deadline = time.monotonic() + _ATTEMPTS_WAIT
    while True:
        spans = await asyncio.to_thread(trace.load_local, data_dir, saga.saga_id)
        attempts = sorted(
            (
                s
                for s in spans
                if s.service != COORDINATOR
                and s.attributes.get("saga.phase") == "execute"
                and isinstance(s.attributes.get("saga.attempt"), int)
            ),
            key=lambda s: s.start_ns,
        )
        done = {s.attributes.get("saga.step") for s in attempts if s.status_label == "ok"}
        if ran <= done or time.monotonic() >= deadline:
            return attempts
        await asyncio.sleep(0.1)


async def play(
    console: Console,
    clients: Clients,
    scenarios: tuple[Scenario, ...],
    mode: Mode | None,
    data_dir: Path | None = None,
) -> list[ScenarioResult]:
    """Run every scenario in turn, printing each saga, then the services' final state."""
    skus = sorted({sku for s in scenarios for sku, _ in s.items})
    customers = sorted({s.customer for s in scenarios})
    run_id = uuid.uuid4().hex[:8]
    start = await read_holdings(clients, skus, customers)
    outcomes: list[ScenarioResult] = []
    for number, scenario in enumerate(scenarios, 1):
        view.scenario_header(console, number, scenario.title, scenario.story)
        placed = {o.scenario.name: o for o in outcomes}
        outcome = await play_scenario(clients, scenario, run_id, skus, customers, mode, placed)
        view.print_outcome(console, outcome)
        saga = outcome.saga
        choreographed = saga is not None and saga.mode == participant_pb2.SAGA_MODE_CHOREOGRAPHY
        if saga is not None and choreographed and data_dir and "retried" in scenario.shows:
            # The retries happened in the services: show each attempt, the failed ones too.
            view.print_reaction_attempts(
                console, await reaction_attempts(data_dir, saga), saga.saga_id
            )
        outcomes.append(outcome)
    end = await read_holdings(clients, skus, customers)
    view.print_final_state(console, start, end, outcomes)
    return outcomes


class FileLog:
    """Children's output to ``<dir>/<name>.log``; the supervisor's errors also on the console."""

    def __init__(self, directory: Path, console: Console) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._console = console
        self._files: dict[str, TextIO] = {}
        self.tails: dict[str, deque[str]] = {}

    def _write(self, name: str, text: str) -> None:
        if name not in self._files:
            self._files[name] = (self.directory / f"{name}.log").open("a", encoding="utf-8")
            self.tails[name] = deque(maxlen=15)
        self._files[name].write(text + "\n")
        self._files[name].flush()
        self.tails[name].append(text)

    def line(self, name: str, text: str) -> None:
        self._write(name, text)

    def note(self, text: str, *, error: bool = False) -> None:
        self._write("stack", text)
        if error:
            self._console.print(f"[bold red]stack:[/] {text}", highlight=False)

    def close(self) -> None:
        for f in self._files.values():
            f.close()


def fresh_data_dir(data: Path) -> None:
    """Start every demo from the seed: wipe ``data`` if an earlier demo made it."""
    if data.exists() and any(data.iterdir()):
        if not (data / _MARKER).exists():
            raise SystemExit(
                f"{data} holds data the demo did not make; choose an empty --data directory"
            )
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    (data / _MARKER).write_text("made by `sagawire demo`; wiped at its next run\n")


async def run_demo(options: StackOptions, console: Console) -> int:
    log = FileLog(options.data_dir / "logs", console)
    stack = Stack(options, log)
    install_stop_signals(stack)
    view.banner(console, options)
    try:
        with console.status("starting the stack..."):
            await stack.start()
    except StackError as error:
        log.close()
        if stack.failure is None:  # Ctrl-C / SIGTERM while starting
            console.print("[bold]interrupted[/]: the stack stopped")
            return _INTERRUPTED
        view.failed_start(console, str(error), log.tails, log.directory)
        return 1
    console.print(stack_table(stack))
    # The stack's coordinator made its signing key in the data directory at its start.
    token = stack_token(options.data_dir)
    clients = Clients({n: c.address for n, c in stack.children.items()}, stack.identity, token)
    outcomes: list[ScenarioResult] | None = None
    interrupted = False
    try:
        outcomes = await stack.guard(
            play(console, clients, SCENARIOS, options.mode, options.data_dir)
        )
    except StackError as error:
        interrupted = stack.failure is None
        console.print(f"[bold red]demo stopped:[/] {error}", highlight=False)
    except grpc.aio.AioRpcError as error:
        console.print(f"[bold red]demo failed:[/] {one_line(error)}", highlight=False)
    finally:
        await clients.close()
        with console.status("stopping the stack..."):
            clean = await stack.stop()
        log.close()
    if interrupted:
        return _INTERRUPTED
    # Spans are flushed when each process stops: the trace is complete only now.
    show_trace(console, options.data_dir, outcomes or [])
    return view.verdict(console, outcomes, clean, log.directory)


def show_trace(console: Console, data_dir: Path, outcomes: list[ScenarioResult]) -> None:
    """Draw the trace of the most eventful saga (the last compensated order) as a waterfall."""
    compensated = [
        o for o in outcomes if o.saga and o.saga.status == _COMPENSATED and not o.scenario.returns
    ]
    if not compensated:
        return
    saga = compensated[-1].saga
    assert saga is not None
    console.print()
    console.rule(f"[bold]Trace of saga {saga.saga_id} ({compensated[-1].scenario.name})")
    if not trace.trace_files(data_dir):
        where = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "the OTLP endpoint")
        console.print(f"no local trace file: spans went to {where}")
        return
    spans = trace.load_local(data_dir, saga.trace_id or saga.saga_id)
    if not spans:
        console.print(f"no spans of this saga in {data_dir}/*.jsonl")
        return
    console.print(trace.render(spans), markup=False, highlight=False, soft_wrap=True)
    console.print(f"(again later: sagawire trace {saga.saga_id} --data {data_dir})", style="dim")


def demo(
    mode: Annotated[
        Mode | None, typer.Option(help="Saga mode for every process (sets SAGAWIRE_MODE).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Directory for the demo's stores and logs, wiped each run (default: demo/"
            " under --data, .sagawire/demo).",
            show_default=False,
        ),
    ] = None,
    base_port: Annotated[
        int | None,
        typer.Option(min=1, max=65531, help="Coordinator's port (default: any free ports)."),
    ] = None,
    startup_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each process has to become SERVING.")
    ] = 60.0,
) -> None:
    """Start the stack, place orders that complete, are rejected and are compensated; stop."""
    console = view.make_console()
    if not coordinator_installed():
        console.print("[bold red]the coordinator is not installed[/] (no coordinator/__main__.py)")
        raise typer.Exit(1)
    names = default_names()
    ports = ports_from_base(base_port) if base_port else free_ports(names)
    if busy := busy_ports(with_admin_ports({n: ports[n] for n in names})):
        console.print(f"[bold red]port already in use:[/] {', '.join(busy)}", soft_wrap=True)
        raise typer.Exit(1)
    data = data or Path(os.environ.get("SAGAWIRE_DATA_DIR") or ".sagawire") / "demo"
    fresh_data_dir(data)
    options = StackOptions(
        data_dir=data,
        ports=ports,
        names=names,
        mode=mode,
        startup_timeout=startup_timeout,
        env={k: v for k, v in _DEMO_ENV.items() if k not in os.environ},
    )
    raise typer.Exit(asyncio.run(run_demo(options, console)))
