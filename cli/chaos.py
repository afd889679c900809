"""``sagawire chaos``: a seeded chaos run that checks faults cost latency, never orders.

For each mode: draw N orders from the seed (:mod:`cli.chaos_plan`), place them on a
fresh stack with no faults (the reference, ``--reference run``), then on another
fresh stack while every service fails calls at the fault rate and the coordinator and
the services are SIGKILLed and restarted — and, in choreography, event streams cut —
on a seeded schedule (:mod:`cli.chaos_schedule`, :mod:`cli.chaos_faults`). Then the
faults are cleared, every saga is given until a deadline to become terminal, and what
the stack holds is read through its public APIs only (:mod:`cli.chaos_state`) and
checked (:mod:`cli.chaos_check`): one terminal saga per order, records that match,
stock and money conserved, and the same completed orders as the fault-free run.

The stacks are the benchmark's (:class:`bench.stack_under_test.BenchStack`): the same
processes as ``sagawire up``, on free ports, in a temporary directory, seeded with
``cli/chaos_seed.toml``. ``--target`` runs the chaos pass against a running stack
instead (faults and stream cuts through its Admin API, no kills).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from bench.backends import check_backend_options
from bench.command import _stopped_by_signals
from bench.report import ProgressBars, machine
from bench.stack_under_test import BenchError, BenchStack, child_env
from cli.chaos_check import REFERENCE_DIFFERS, Violation, check_run, compare
from cli.chaos_drive import Progress, drive
from cli.chaos_faults import Blow, Saboteur
from cli.chaos_plan import CHAOS_SEED_FILE, Catalog, Plan, PlanError, draw_plan, shortfalls
from cli.chaos_report import CHAOS, REFERENCE, ModeResult, PassResult, print_report, write_json
from cli.chaos_schedule import ChaosEvent, draw_schedule
from cli.chaos_state import Holdings, read_end_state, read_holdings, wait_settled
from cli.stack import Mode
from common.certs import OPERATOR
from common.config import EventSettings
from common.nats_events import delete_stream
from common.pg_store import drop_schemas
from common.tls import Identity
from contract.modes import wire_mode
from coordinator.log.postgres import drop_schema

_T = TypeVar("_T")


class Reference(StrEnum):
    """What the completed set is compared with."""

    run = "run"  # a fault-free pass on a fresh stack, itself checked against the plan
    plan = "plan"  # the plan's construction only (no second pass, no latency baseline)


@dataclass(frozen=True)
class ChaosConfig:
    """Everything ``sagawire chaos`` was asked to do."""

    modes: tuple[Mode, ...]
    seed: int = 1
    sagas: int = 1000
    concurrency: int = 32
    open_loop: bool = False
    fault_rate: float = 0.2
    kills_coordinator: int = 3
    kills_participant: int = 2
    stream_cuts: int = 1
    reference: Reference = Reference.run
    target: str | None = None
    order_timeout: float = 120.0
    settle_timeout: float = 120.0
    traces: bool = True
    data_dir: Path | None = None
    progress: bool = False
    # Own stacks: the services' events on NATS JetStream (nats://...; a fresh stream per
    # pass, deleted after), or on their gRPC streams ("").
    events: str = ""
    # A PostgreSQL saga log shared by this many coordinator replicas (own stacks: a fresh
    # schema per pass, dropped after); the kills hit the first replica.
    saga_log: str = ""
    replicas: int = 1
    # The services' stores on PostgreSQL (own stacks: fresh schemas per pass, dropped
    # after), each service run as ``replicas`` replicas on its schema (events on NATS).
    store: str = ""

    def settings(self) -> dict[str, Any]:
        """The run's settings, as the JSON report states them."""
        values = asdict(self)
        values["modes"] = [m.value for m in self.modes]
        values["reference"] = self.reference.value
        values["data_dir"] = str(self.data_dir) if self.data_dir else None
        values.pop("progress")
        values["events"] = "nats" if self.events else "grpc"  # no credentials
        values["saga_log"] = "postgresql" if self.saga_log else "sqlite"  # no credentials
        values["store"] = "postgresql" if self.store else "sqlite"
        return values


def _check_holdings(plan: Plan, catalog: Catalog, before: Holdings) -> None:
    """Refuse a stack that cannot hold every order of the plan at once (a target not
    seeded with the chaos seed file, or one whose stock or money ran low)."""
    available = {sku: stock[0] for sku, stock in before.stock.items()}
    if short := shortfalls(plan, catalog.prices, available, before.balances):
        raise BenchError(
            "the stack cannot hold every order of the plan at once, so outcomes would "
            f"depend on their order: {'; '.join(short[:5])}. Start it with "
            f"SAGAWIRE_SEED_FILE={CHAOS_SEED_FILE} on empty stores."
        )


@contextlib.contextmanager
def _data_dir(config: ChaosConfig, name: str) -> Iterator[Path]:
    if config.data_dir is not None:
        path = config.data_dir / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"sagawire-chaos-{name}-") as temp:
        yield Path(temp)


def _stream_name() -> str:
    return f"chaos_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def _stack(config: ChaosConfig, mode: Mode, label: str) -> AsyncIterator[BenchStack]:
    """A fresh own stack for one pass (or the target, for the chaos pass)."""
    target = config.target if label == CHAOS else None
    env = {**child_env(config.traces), "SAGAWIRE_SEED_FILE": str(CHAOS_SEED_FILE)}
    events = EventSettings(events=config.events or "grpc", events_prefix=_stream_name())
    if events.events_on_nats and target is None:
        env.update(SAGAWIRE_EVENTS=events.events, SAGAWIRE_EVENTS_PREFIX=events.events_prefix)
    schema = f"chaos_{uuid.uuid4().hex[:12]}"
    own_store = bool(config.store) and target is None
    if own_store:
        env.update(SAGAWIRE_STORE=config.store, SAGAWIRE_STORE_PREFIX=schema)
    with _data_dir(config, f"{mode.value}-{label}") as data_dir:
        stack = BenchStack(
            None if target else data_dir,
            target=target,
            env=env,
            service_replicas=config.replicas if own_store else 1,
        )
        if config.saga_log and target is None:
            stack.use_saga_log(
                {"SAGAWIRE_SAGA_LOG": config.saga_log, "SAGAWIRE_SAGA_LOG_SCHEMA": schema},
                config.replicas,
            )
        try:
            async with stack:
                await stack.use_coordinator(mode)
                yield stack
        finally:
            if config.saga_log and target is None:
                await drop_schema(config.saga_log, schema)
            if own_store:
                await drop_schemas(config.store, schema)
            if events.events_on_nats and target is None:
                await delete_stream(events, Identity.from_env(OPERATOR))


async def _beside(driving: Awaitable[_T], blows: Awaitable[None]) -> _T:
    """The drive, with the blows dealt beside it. A blow that fails (a process that does
    not come back) stops the drive at once; the blow under way when the drive ends is
    carried out to the end, so every process is up before the checks."""
    drive_task = asyncio.ensure_future(driving)
    blows_task = asyncio.ensure_future(blows)
    try:
        await asyncio.wait({drive_task, blows_task}, return_when=asyncio.FIRST_EXCEPTION)
        if blows_task.done():
            await blows_task  # raises the failure of a blow that failed
        result = await drive_task
        await blows_task
        return result
    finally:
        for task in (drive_task, blows_task):
            task.cancel()
        await asyncio.gather(drive_task, blows_task, return_exceptions=True)


async def _pass(
    config: ChaosConfig,
    mode: Mode,
    plan: Plan,
    catalog: Catalog,
    label: str,
    console: Console,
    bars: ProgressBars,
) -> PassResult:
    faulty = label == CHAOS
    async with _stack(config, mode, label) as stack:
        addresses = stack.addresses()
        before = await read_holdings(addresses)
        _check_holdings(plan, catalog, before)
        run_id = f"chaos-{config.seed}-{mode.value}-{label}-{time.time_ns()}"
        progress = Progress()

        def tell(blow: Blow) -> None:
            console.print(f"[dim]  {mode.value}: {blow.describe()}[/]")

        # Live, above the progress bar; the report lists the blows again at the end.
        saboteur = Saboteur(
            stack, config.seed, config.fault_rate, on_blow=tell if config.progress else None
        )
        schedule: tuple[ChaosEvent, ...] = ()
        if faulty:
            await saboteur.inject()
            schedule = draw_schedule(
                config.seed,
                len(plan.orders),
                kills_coordinator=config.kills_coordinator,
                kills_participant=config.kills_participant,
                stream_cuts=config.stream_cuts if mode is Mode.choreography else 0,
            )
        begin = time.perf_counter()
        with bars.task(f"{mode.value} {label}", float(len(plan.orders))) as update:
            placements = await _beside(
                drive(
                    stack.coordinator_addresses,
                    stack.token,
                    plan,
                    run_id,
                    None if config.open_loop else config.concurrency,
                    progress,
                    give_up_after=config.order_timeout,
                    on_progress=update,
                ),
                saboteur.carry_out(schedule, progress),
            )
        drove = time.perf_counter()
        if faulty:
            await saboteur.clear()
        if stack.own:
            stack.check_alive()
        settled = await wait_settled(stack.coordinator_address, stack.token, config.settle_timeout)
        settle_seconds = time.perf_counter() - drove
        end = await read_end_state(stack.coordinator_address, stack.token, addresses, run_id)
    wrong_mode = [s.saga_id for s in end.sagas if s.mode != wire_mode(mode.value)]
    if wrong_mode:
        raise BenchError(
            f"{len(wrong_mode)} sagas did not run in {mode.value} mode (e.g. {wrong_mode[0]}): "
            f"start the target with SAGAWIRE_MODE={mode.value}"
        )
    verdict = check_run(plan, placements, before, end, own=stack.own)
    return PassResult(
        label,
        mode.value,
        placements,
        verdict,
        drove - begin,
        settle_seconds,
        settled,
        saboteur.blows,
    )


async def run_mode(
    config: ChaosConfig, mode: Mode, console: Console, bars: ProgressBars
) -> ModeResult:
    """The reference pass (if asked), the chaos pass, and every violation of both."""
    catalog = Catalog.load()
    plan = draw_plan(catalog, config.seed, config.sagas)
    reference = None
    violations: list[Violation] = []
    if config.reference is Reference.run:
        reference = await _pass(config, mode, plan, catalog, REFERENCE, console, bars)
        violations += [
            Violation(f"{REFERENCE}: {v.kind}", v.detail, v.saga_id)
            for v in reference.verdict.violations
        ]
        violations += compare(reference.verdict, plan.expected_completed, REFERENCE_DIFFERS)
    chaos = await _pass(config, mode, plan, catalog, CHAOS, console, bars)
    violations += chaos.verdict.violations
    baseline = reference.verdict.completed if reference else plan.expected_completed
    violations += compare(chaos.verdict, baseline)
    return ModeResult(mode.value, plan, chaos, reference, violations)


async def run_chaos(config: ChaosConfig, console: Console) -> list[ModeResult]:
    """Every mode, one after the other, each on its own fresh stacks."""
    results = []
    with _stopped_by_signals():
        bars = ProgressBars(console, config.progress)
        with bars.progress:
            for mode in config.modes:
                results.append(await run_mode(config, mode, console, bars))
    return results


def _run(config: ChaosConfig, console: Console) -> list[ModeResult]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_chaos(config, console))
    results: list[ModeResult] = uvloop.run(run_chaos(config, console))
    return results


def _modes(value: str) -> tuple[Mode, ...]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    try:
        modes = tuple(Mode(n) for n in names)
    except ValueError:
        raise typer.BadParameter(
            f"modes are {', '.join(m.value for m in Mode)}", param_hint="--mode"
        ) from None
    if not modes:
        raise typer.BadParameter("give at least one mode", param_hint="--mode")
    return modes


def chaos(
    mode: Annotated[
        str, typer.Option(help="Comma-separated modes: orchestration, choreography.")
    ] = "orchestration,choreography",
    seed: Annotated[int, typer.Option(min=0, help="Seeds the orders, faults and kills.")] = 1,
    sagas: Annotated[int, typer.Option(min=1, max=1_000_000, help="Orders to place.")] = 1000,
    concurrency: Annotated[
        int, typer.Option(min=1, max=4096, help="Orders in flight (closed loop).")
    ] = 32,
    open_loop: Annotated[
        bool,
        typer.Option("--open-loop", help="Place every order at once, then wait for all of them."),
    ] = False,
    fault_rate: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Share of participant calls failing UNAVAILABLE."),
    ] = 0.2,
    kills_coordinator: Annotated[
        int, typer.Option(min=0, help="SIGKILLs (and restarts) of the coordinator.")
    ] = 3,
    kills_participant: Annotated[
        int, typer.Option(min=0, help="SIGKILLs (and restarts) of a seeded service.")
    ] = 2,
    stream_cuts: Annotated[
        int, typer.Option(min=0, help="Cuts of a service's event streams (choreography).")
    ] = 1,
    reference: Annotated[
        Reference,
        typer.Option(help="run: a fault-free pass first, on a fresh stack; plan: none."),
    ] = Reference.run,
    target: Annotated[
        str | None,
        typer.Option(
            help="A running coordinator HOST:PORT for the chaos pass (services at "
            "SAGAWIRE_<NAME>_ADDR, seeded with cli/chaos_seed.toml, Admin API on; no kills)."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1, help="Seconds the client tries to get one order's outcome.")
    ] = 120.0,
    settle_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds every saga has to become terminal after.")
    ] = 120.0,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the report to this JSON file.")
    ] = None,
    traces: Annotated[
        bool,
        typer.Option("--traces/--no-traces", help="Own stacks: trace (as shipped), or not."),
    ] = True,
    data: Annotated[
        Path | None, typer.Option(help="Own stacks: keep their stores here (default: temp dirs).")
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: tty).")
    ] = None,
    events: Annotated[
        str,
        typer.Option(
            help="Own stacks: the services' events on NATS JetStream (nats://host:4222), a "
            "fresh stream per pass; default: their gRPC streams."
        ),
    ] = "",
    saga_log: Annotated[
        str,
        typer.Option(
            help="Own stacks: the coordinator's saga log in PostgreSQL (postgresql://...), "
            "a fresh schema per pass."
        ),
    ] = "",
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            max=8,
            help="Replicas of the coordinator (with --saga-log) and of each service (with"
            " --store and --events); kills hit the first.",
        ),
    ] = 1,
    store: Annotated[
        str,
        typer.Option(
            help="Own stacks: the services' stores in PostgreSQL (postgresql://...), fresh"
            " schemas per pass."
        ),
    ] = "",
) -> None:
    """Place seeded orders under faults, kills and stream cuts; check nothing was lost."""
    console = Console()
    if not console.is_terminal:  # a file or a pipe: keep the tables whole
        console = Console(width=max(console.width, 160))
    if target is not None and (kills_coordinator or kills_participant):
        raise typer.BadParameter(
            "kills need the run's own stack: add --kills-coordinator 0 --kills-participant 0"
        )
    check_backend_options(
        own=target is None,
        whose="the run's own stacks",
        events=events,
        saga_log=saga_log,
        store=store,
        replicated=replicas > 1,
    )
    config = ChaosConfig(
        modes=_modes(mode),
        seed=seed,
        sagas=sagas,
        concurrency=concurrency,
        open_loop=open_loop,
        fault_rate=fault_rate,
        kills_coordinator=kills_coordinator,
        kills_participant=kills_participant,
        stream_cuts=stream_cuts,
        reference=reference,
        target=target,
        order_timeout=timeout,
        settle_timeout=settle_timeout,
        traces=traces,
        data_dir=data,
        progress=console.is_terminal if progress is None else progress,
        events=events,
        saga_log=saga_log,
        replicas=replicas,
        store=store,
    )
    console.print(f"[dim]machine: {machine()}[/]")
    loop = "open loop" if open_loop else f"closed loop, {concurrency} in flight"
    console.print(
        f"chaos: seed {seed}, {sagas} orders, {loop}, fault rate {fault_rate:g}, "
        f"{kills_coordinator} coordinator kills, {kills_participant} participant kills, "
        f"{stream_cuts} stream cuts (choreography)"
    )
    try:
        results = _run(config, console)
    except (BenchError, PlanError) as error:
        console.print(f"[bold red]chaos failed:[/] {error}")
        raise typer.Exit(2) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]chaos stopped; its stacks were stopped[/]")
        raise typer.Exit(130) from None
    print_report(console, results)
    if json_file is not None:
        write_json(json_file, config.settings(), results)
        console.print(f"wrote {json_file}")
    if not all(r.ok for r in results):
        console.print("[bold red]invariants violated (see above)[/]")
        raise typer.Exit(1)
    console.print("[green]every invariant held[/]")
