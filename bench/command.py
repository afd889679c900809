"""``sagawire bench``: place_order sagas in closed loop, per mode, against the raw floor.

For each mode and each concurrency: a warm-up, then a measured closed-loop run for a
duration or a saga count. Modes:

- ``bare``: the same calls as raw, to participants that do nothing
  (:mod:`bench.bare_server`): the physical floor of the call graph on this machine;
- ``raw``: the bench calls the participants itself (the floor, see :mod:`bench.drivers`);
- ``orchestration`` / ``choreography``: ``PlaceOrder`` with ``wait`` on a coordinator
  running sagas in that mode;
- ``choreography-direct``: choreography started at the order service and observed on its
  event stream, with no coordinator at all (a diagnostic).

With ``--events nats://...`` and/or ``--store postgresql://...`` every mode runs again on
a second own stack, the one of "beyond one machine": the services' events on NATS
JetStream (a stream of its own, deleted after), their stores on PostgreSQL (schemas of
their own, dropped after), and with ``--saga-log`` the coordinator's log there too; its
rows labelled ``<mode>/<variant>``, e.g. ``orchestration/nats+pgstores+pglog``. Bare never runs
there (its participants keep nothing), nor raw with ``--events`` alone (the default
stack's raw stays the floor). With ``--store``, ``--replicas N`` runs that stack with N
replicas of each service (and of the coordinator, with ``--saga-log``), the variant ending
``+xN``. With ``--plaintext`` every mode runs again, right after itself, on a second own
stack started with ``SAGAWIRE_TLS=off``, its rows labelled ``<mode>/plaintext``: what mutual
TLS costs, in the same run and under the same load. Every run's ratios to bare and raw,
and issue 19's targets, are printed after the tables (:mod:`bench.ratios`).

After a mode's runs the services' records are checked against the reported outcomes
(:mod:`bench.consistency`). ``--soak`` and ``--recovery`` replace the sweep with the
long-run checks of :mod:`bench.long_runs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from bench import long_runs, ratios
from bench.backends import check_backend_options
from bench.closed_loop import Placed, ProcessWatch, Stop, closed_loop
from bench.consistency import Snapshot, snapshot, verify
from bench.drivers import (
    CoordinatorDriver,
    DirectChoreographyDriver,
    Driver,
    Mix,
    RawDriver,
)
from bench.ratios import BARE, PLAINTEXT, RAW
from bench.report import (
    ProgressBars,
    RunRow,
    machine,
    markdown,
    plot,
    print_report,
    row_of,
    write_json,
)
from bench.stack_under_test import BenchError, BenchStack, child_env
from cli.stack import Mode
from common.certs import OPERATOR
from common.config import EventSettings
from common.nats_events import delete_stream
from common.pg_store import drop_schemas
from common.tls import Identity
from coordinator.log.postgres import drop_schema

ORCHESTRATION, CHOREOGRAPHY, DIRECT = "orchestration", "choreography", "choreography-direct"
MODES = (BARE, RAW, ORCHESTRATION, CHOREOGRAPHY, DIRECT)
_DEFAULT_MODES = (BARE, RAW, ORCHESTRATION, CHOREOGRAPHY)
_COORDINATED = {ORCHESTRATION: Mode.orchestration, CHOREOGRAPHY: Mode.choreography}


@dataclass(frozen=True)
class BenchConfig:
    """Everything ``sagawire bench`` was asked to do."""

    modes: tuple[str, ...]
    concurrencies: tuple[int, ...]
    stop: Stop
    mix: Mix
    warmup: float = 1.0
    target: str | None = None
    verify: bool = True
    traces: bool = True
    data_dir: Path | None = None
    soak_sagas: int = 0
    recovery: int = 0
    saga_timeout: float = 60.0
    progress: bool = True
    # PlaceOrder's ``saga`` per mode, for a target whose definitions select the mode.
    definitions: dict[str, str] = field(default_factory=dict)
    # A PostgreSQL saga log: the coordinated modes run again on it, with each of these
    # numbers of coordinator replicas (own stack only).
    saga_log: str = ""
    replicas: tuple[int, ...] = (1,)
    # NATS servers (nats://...) and a PostgreSQL URL for the services' stores: every mode
    # but bare runs again on a stack with the services' events on NATS JetStream and / or
    # their stores on PostgreSQL (own stack only; raw only when the stores move).
    events: str = ""
    store: str = ""
    # Every mode runs again on an own stack with SAGAWIRE_TLS=off (TLS's cost).
    plaintext: bool = False


@dataclass
class BenchResult:
    rows: list[RunRow] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.ok for r in self.rows)


def _driver(stack: BenchStack, mode: str, config: BenchConfig, bare: dict[str, str]) -> Driver:
    if mode == BARE:
        return RawDriver(bare, rpc_timeout=config.saga_timeout, label=BARE)
    if mode == RAW:
        return RawDriver(stack.addresses(), rpc_timeout=config.saga_timeout)
    if mode == DIRECT:
        return DirectChoreographyDriver(stack.addresses(), rpc_timeout=config.saga_timeout)
    return CoordinatorDriver(
        mode,
        stack.coordinator_addresses,
        token=stack.token,
        saga=config.definitions.get(mode, ""),
        rpc_timeout=config.saga_timeout,
    )


@contextlib.asynccontextmanager
async def _mode_driver(stack: BenchStack, mode: str, config: BenchConfig) -> AsyncIterator[Driver]:
    """The driver of ``mode``, with the coordinator it needs running (and no other), or
    bare mode's participants."""
    if mode in _COORDINATED:
        await stack.use_coordinator(_COORDINATED[mode])
    else:
        await stack.stop_coordinator()
    bare = await stack.use_bare() if mode == BARE else {}
    driver = _driver(stack, mode, config, bare)
    try:
        yield driver
    finally:
        await driver.close()
        await stack.stop_bare()


async def _sweep(
    stack: BenchStack, mode: str, driver: Driver, config: BenchConfig, bar: ProgressBars
) -> tuple[list[RunRow], list[list[Placed]], list[Placed]]:
    """Warm-up and measured run at each concurrency; returns rows, each run's sagas, all.
    ``mode`` is the rows' label (e.g. ``orchestration/pg2``)."""
    rows: list[RunRow] = []
    per_run: list[list[Placed]] = []
    everything: list[Placed] = []
    number = 0
    for concurrency in config.concurrencies:
        if config.warmup > 0:
            with bar.task(f"{mode} c={concurrency} warm-up", config.warmup) as update:
                warm = await closed_loop(
                    driver,
                    config.mix,
                    concurrency,
                    Stop(seconds=config.warmup),
                    first_number=number,
                    on_progress=update,
                )
            number += len(warm.placed) + concurrency
            everything.extend(warm.placed)
        watch = ProcessWatch(stack.pids())
        with bar.task(f"{mode} c={concurrency}", config.stop.total) as update:
            result = await closed_loop(
                driver,
                config.mix,
                concurrency,
                config.stop,
                first_number=number,
                watch=watch,
                on_progress=update,
            )
        stack.check_alive()
        number += len(result.placed) + concurrency
        everything.extend(result.placed)
        per_run.append(result.placed)
        rows.append(row_of(mode, concurrency, config.mix.value, result))
    return rows, per_run, everything


async def _check(
    stack: BenchStack,
    before: Snapshot | None,
    rows: list[RunRow],
    per_run: list[list[Placed]],
    everything: list[Placed],
    result: BenchResult,
    mode: str,
) -> None:
    if before is None:
        return
    addresses = stack.addresses()
    verdict = await verify(addresses, before, await snapshot(addresses), everything)
    for row, placed in zip(rows, per_run, strict=True):
        bad = sum(1 for p in placed if p.outcome.order_id in verdict.bad_orders)
        row.consistent = verdict.consistent and bad == 0
    result.problems.extend(f"{mode}: {problem}" for problem in verdict.problems)


async def _confirm_target_mode(stack: BenchStack, mode: str, driver: Driver) -> None:
    """Against a target, whose definitions (not the bench) choose how a saga runs: place
    one saga and check that the target ran it in ``mode``, so no row carries a wrong label."""
    probe = await closed_loop(driver, Mix.happy, 1, Stop(sagas=1))
    saga_id = probe.placed[0].outcome.saga_id if probe.placed else ""
    if not saga_id:
        problem = ", ".join(probe.examples) or "no saga id in the answer"
        raise BenchError(f"{mode}: the target did not run a probe saga: {problem}")
    ran = await stack.saga_mode(saga_id)
    if ran != mode:
        raise BenchError(
            f"{mode}: the target ran the probe saga in {ran} mode. Start it with"
            f" SAGAWIRE_MODE={mode}, or name a {mode} definition with --saga {mode}=NAME."
        )


async def _run_mode(
    stack: BenchStack,
    mode: str,
    config: BenchConfig,
    bar: ProgressBars,
    result: BenchResult,
    label: str = "",
) -> None:
    """Run ``mode``; its rows say ``label`` (default: the mode)."""
    added = len(result.rows)
    await _run_mode_rows(stack, mode, config, bar, result)
    for row in result.rows[added:]:
        row.mode = label or mode


async def _run_mode_rows(
    stack: BenchStack, mode: str, config: BenchConfig, bar: ProgressBars, result: BenchResult
) -> None:
    if mode == BARE:
        # Participants that do nothing cannot say no, nor leave records to check.
        config = dataclasses.replace(config, mix=Mix.happy, verify=False)
    async with _mode_driver(stack, mode, config) as driver:
        if not stack.own and mode in _COORDINATED:
            await _confirm_target_mode(stack, mode, driver)
        before = await snapshot(stack.addresses()) if config.verify else None
        if config.soak_sagas or config.recovery:
            rows: list[RunRow] = []
            per_run: list[list[Placed]] = []
            everything: list[Placed] = []
            if config.soak_sagas:
                row, placed = await long_runs.soak(
                    stack,
                    mode,
                    driver,
                    config.mix,
                    max(config.concurrencies),
                    config.soak_sagas,
                    bar.task,
                )
                rows.append(row)
                per_run.append(placed)
                everything.extend(placed)
            await _check(stack, before, rows, per_run, everything, result, mode)
            result.rows.extend(rows)
            if config.recovery and mode in _COORDINATED:
                check = await long_runs.recovery(stack, mode, config.mix, config.recovery)
                result.checks.append(check)
                if check["unexpected"]:
                    result.problems.append(f"{mode} recovery: {check['unexpected']} unexpected")
            return
        rows, per_run, everything = await _sweep(stack, mode, driver, config, bar)
        await _check(stack, before, rows, per_run, everything, result, mode)
        result.rows.extend(rows)


async def run_bench(config: BenchConfig, console: Console) -> BenchResult:
    """Start (or reach) the stack, run every mode, return the rows."""
    result = BenchResult()
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(_stopped_by_signals())
        data_dir = config.data_dir
        if data_dir is None and config.target is None:
            data_dir = Path(
                cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sagawire-bench-"))
            )
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
        stack = BenchStack(data_dir, target=config.target, env=child_env(config.traces))
        plain = _plaintext_stack(config, data_dir)
        bar = ProgressBars(console, config.progress)
        async with stack, plain or contextlib.nullcontext():
            with bar.progress:
                for mode in config.modes:
                    await _run_mode(stack, mode, config, bar, result)
                    if plain is not None:
                        await _run_in_plaintext(plain, mode, config, bar, result)
                    if config.saga_log and mode in _COORDINATED:
                        await _run_on_postgres(stack, mode, config, bar, result)
        if (config.events or config.store) and data_dir is not None:
            for replicas in config.replicas if config.store else (1,):
                await _run_beyond(config, replicas, data_dir, console, result)
    ratios.add_ratios(result.rows)
    return result


def _plaintext_stack(config: BenchConfig, data_dir: Path | None) -> BenchStack | None:
    """With ``--plaintext``: a second own stack, started with ``SAGAWIRE_TLS=off``. It runs
    beside the TLS one, and each mode runs on one right after the other, so the two rows
    of a mode see the same load on a shared machine."""
    if not config.plaintext or data_dir is None:
        return None
    env = {**child_env(config.traces), "SAGAWIRE_TLS": "off"}
    return BenchStack(data_dir / PLAINTEXT, env=env)


async def _run_in_plaintext(
    stack: BenchStack, mode: str, config: BenchConfig, bar: ProgressBars, result: BenchResult
) -> None:
    """``mode`` on the plaintext stack; rows labelled ``<mode>/plaintext``. The bench's own
    clients take TLS from the environment, as every command of the CLI does, so the
    variable is set here too while it runs."""
    with _environment("SAGAWIRE_TLS", "off"):
        await _run_mode(stack, mode, config, bar, result, label=f"{mode}/{PLAINTEXT}")


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def beyond_variant(config: BenchConfig, replicas: int) -> str:
    """The rows' label after the slash for the stack of :func:`_run_beyond`: what it moved
    off the machine (``nats``, ``pgstores``, ``pglog``) and ``xN`` for replicas."""
    parts = [
        *(["nats"] if config.events else []),
        *(["pgstores"] if config.store else []),
        *(["pglog"] if config.saga_log else []),
        *([f"x{replicas}"] if replicas > 1 else []),
    ]
    return "+".join(parts)


async def _run_beyond(
    config: BenchConfig, replicas: int, data_dir: Path, console: Console, result: BenchResult
) -> None:
    """Every mode but bare again, on a stack of its own whose services carry their events
    on NATS JetStream (a stream of its own, deleted after) and / or keep their stores on
    PostgreSQL (schemas of their own, dropped after), ``replicas`` processes of each, the
    coordinator on the PostgreSQL saga log with ``--saga-log``; rows labelled
    ``<mode>/<variant>`` (:func:`beyond_variant`). Raw runs there only when the stores
    moved (as before the stores could: on NATS alone the default stack's raw is the floor)."""
    variant = beyond_variant(config, replicas)
    prefix = f"bench_{uuid.uuid4().hex[:12]}"
    events = EventSettings(events=config.events or "grpc", events_prefix=prefix)
    env = child_env(config.traces)
    if config.events:
        env.update(SAGAWIRE_EVENTS=events.events, SAGAWIRE_EVENTS_PREFIX=prefix)
    if config.store:
        env.update(SAGAWIRE_STORE=config.store, SAGAWIRE_STORE_PREFIX=prefix)
    stack = BenchStack(data_dir / variant, env=env, service_replicas=replicas)
    if config.saga_log:
        stack.use_saga_log(
            {"SAGAWIRE_SAGA_LOG": config.saga_log, "SAGAWIRE_SAGA_LOG_SCHEMA": prefix}, replicas
        )
    skipped = {BARE} if config.store else {BARE, RAW}
    bar = ProgressBars(console, config.progress)
    try:
        async with stack:
            with bar.progress:
                for mode in config.modes:
                    if mode not in skipped:
                        await _run_mode(stack, mode, config, bar, result, f"{mode}/{variant}")
    finally:
        if config.events:
            await delete_stream(events, Identity.from_env(OPERATOR))
        if config.store:
            await drop_schemas(config.store, prefix)
        if config.saga_log:
            await drop_schema(config.saga_log, prefix)


async def _run_on_postgres(
    stack: BenchStack, mode: str, config: BenchConfig, bar: ProgressBars, result: BenchResult
) -> None:
    """``mode`` again with the saga log on PostgreSQL (a schema of its own, dropped after),
    once per number of replicas asked for; rows labelled ``<mode>/pg<replicas>``."""
    for replicas in config.replicas:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        stack.use_saga_log(
            {"SAGAWIRE_SAGA_LOG": config.saga_log, "SAGAWIRE_SAGA_LOG_SCHEMA": schema}, replicas
        )
        try:
            await _run_mode(stack, mode, config, bar, result, label=f"{mode}/pg{replicas}")
        finally:
            stack.use_saga_log({})
            await stack.stop_coordinator()
            await drop_schema(config.saga_log, schema)


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the bench as Ctrl-C does: the run is cancelled and its
    own stack stopped on the way out (its children are in their own process group, so
    no signal sent to the bench reaches them)."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    signals = (signal.SIGTERM, signal.SIGHUP)
    for sig in signals:
        loop.add_signal_handler(sig, main.cancel)
    try:
        yield
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _csv(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise typer.BadParameter(f"give at least one {what}")
    return items


def bench(
    mode: Annotated[
        str | None,
        typer.Option(
            help=f"Comma-separated modes: {', '.join(MODES)} (default: bare, raw, "
            "orchestration, choreography; without bare with --target)."
        ),
    ] = None,
    concurrency: Annotated[
        str, typer.Option(help="Comma-separated closed-loop concurrencies.")
    ] = "1,8,32,64",
    duration: Annotated[
        float | None, typer.Option(min=0.1, help="Seconds per measured run (default 10).")
    ] = None,
    sagas: Annotated[
        int | None, typer.Option(min=1, help="Sagas per measured run (instead of --duration).")
    ] = None,
    mix: Annotated[Mix, typer.Option(help="happy, compensate (declined at payment), mixed.")] = (
        Mix.happy
    ),
    warmup: Annotated[float, typer.Option(min=0, help="Warm-up seconds before each run.")] = 1.0,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Write the rows to this JSON file.")
    ] = None,
    plot_file: Annotated[
        Path | None, typer.Option("--plot", help="Draw throughput and p99 to this PNG.")
    ] = None,
    markdown_file: Annotated[
        Path | None, typer.Option("--markdown", help="Write the tables as Markdown here.")
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="A running coordinator HOST:PORT instead of an own stack; raw mode then "
            "reaches the services at SAGAWIRE_<NAME>_ADDR."
        ),
    ] = None,
    soak: Annotated[
        bool, typer.Option("--soak", help="Instead of the sweep: 100,000 sagas, RSS at 10k/100k.")
    ] = False,
    soak_sagas: Annotated[int, typer.Option(min=10, help="Sagas of a --soak run.")] = 100_000,
    recovery: Annotated[
        int,
        typer.Option(
            min=0, help="Instead of the sweep: start K sagas, SIGKILL the coordinator, restart it."
        ),
    ] = 0,
    verify_records: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check the services' records after.")
    ] = True,
    traces: Annotated[
        bool,
        typer.Option(
            "--traces/--no-traces", help="Own stack: trace (as shipped), or make no spans at all."
        ),
    ] = True,
    data: Annotated[
        Path | None, typer.Option(help="Own stack: keep its stores here (default: a temp dir).")
    ] = None,
    saga: Annotated[
        list[str] | None,
        typer.Option(help="MODE=DEFINITION: the PlaceOrder saga to use for a mode (--target)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a saga may take before it counts as failed.")
    ] = 60.0,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: tty).")
    ] = None,
    saga_log: Annotated[
        str,
        typer.Option(
            help="A PostgreSQL URL (postgresql://...): the coordinated modes run again with "
            "the saga log there (a fresh schema, dropped after), beside SQLite."
        ),
    ] = "",
    replicas: Annotated[
        str,
        typer.Option(
            help="Comma-separated numbers of replicas: of the coordinator with --saga-log,"
            " and of each service on the --store stack (with --events)."
        ),
    ] = "1",
    events: Annotated[
        str,
        typer.Option(
            help="NATS servers (nats://host:4222): every mode but raw runs again with the "
            "services' events on NATS JetStream (own stack, a fresh stream, deleted after)."
        ),
    ] = "",
    store: Annotated[
        str,
        typer.Option(
            help="A PostgreSQL URL (postgresql://...): every mode but bare runs again with "
            "the services' stores there (own stack, fresh schemas, dropped after), on NATS "
            "with --events and the saga log on PostgreSQL with --saga-log."
        ),
    ] = "",
    plaintext: Annotated[
        bool,
        typer.Option(
            "--plaintext",
            help="Own stack: every mode runs again with SAGAWIRE_TLS=off (TLS's cost, same run).",
        ),
    ] = False,
) -> None:
    """Benchmark place_order sagas: bare and raw floors vs orchestration vs choreography."""
    console = Console()
    if not console.is_terminal:  # a file or a pipe: keep the tables whole
        console = Console(width=max(console.width, 180))
    if mode is None:
        mode = ",".join(m for m in _DEFAULT_MODES if target is None or m != BARE)
    modes = tuple(_csv(mode, "mode"))
    if unknown := [m for m in modes if m not in MODES]:
        raise typer.BadParameter(f"unknown mode {', '.join(unknown)}", param_hint="--mode")
    try:
        concurrencies = tuple(int(c) for c in _csv(concurrency, "concurrency"))
    except ValueError:
        raise typer.BadParameter("integers, e.g. 1,8,32", param_hint="--concurrency") from None
    if any(c < 1 or c > 4096 for c in concurrencies):
        raise typer.BadParameter("between 1 and 4096", param_hint="--concurrency")
    if duration is not None and sagas is not None:
        raise typer.BadParameter("give --duration or --sagas, not both")
    if target is not None and (BARE in modes or plaintext):
        raise typer.BadParameter("bare mode and --plaintext need the bench's own stack")
    if target is not None and recovery:
        raise typer.BadParameter("needs the bench's own stack (it kills the coordinator)")
    try:
        replica_counts = tuple(int(n) for n in _csv(replicas, "replica count"))
    except ValueError:
        raise typer.BadParameter("integers, e.g. 1,2", param_hint="--replicas") from None
    if any(n < 1 or n > 8 for n in replica_counts):
        raise typer.BadParameter("between 1 and 8", param_hint="--replicas")
    check_backend_options(
        own=target is None,
        whose="the bench's own stack",
        events=events,
        saga_log=saga_log,
        store=store,
        replicated=replica_counts != (1,),
    )
    definitions = dict(s.partition("=")[::2] for s in saga or ())
    config = BenchConfig(
        modes=modes,
        concurrencies=concurrencies,
        stop=Stop(sagas=sagas) if sagas is not None else Stop(seconds=duration or 10.0),
        mix=mix,
        warmup=warmup,
        target=target,
        verify=verify_records,
        traces=traces,
        data_dir=data,
        soak_sagas=soak_sagas if soak else 0,
        recovery=recovery,
        saga_timeout=timeout,
        progress=console.is_terminal if progress is None else progress,
        definitions=definitions,
        saga_log=saga_log,
        replicas=replica_counts,
        events=events,
        store=store,
        plaintext=plaintext,
    )
    console.print(f"[dim]machine: {machine()}[/]")
    try:
        result = _run(config, console)
    except BenchError as error:
        console.print(f"[bold red]bench failed:[/] {error}")
        raise typer.Exit(2) from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("[yellow]bench stopped; its stack was stopped[/]")
        raise typer.Exit(130) from None
    print_report(console, result.rows)
    if any(r.kind == "run" for r in result.rows):
        console.print(ratios.targets_table(ratios.judge(result.rows)))
    if costs := ratios.tls_costs(result.rows):
        console.print(ratios.tls_table(costs))
    for row in result.rows:
        if row.kind == "soak":
            long_runs.print_soak(console, row)
    for check in result.checks:
        long_runs.print_check(console, check)
    for problem in result.problems:
        console.print(f"[bold red]inconsistent:[/] {problem}")
    if json_file is not None:
        write_json(json_file, result.rows, result.checks)
        console.print(f"wrote {json_file}")
    if markdown_file is not None:
        markdown_file.write_text(markdown(result.rows) + "\n" + ratios.markdown(result.rows))
        console.print(f"wrote {markdown_file}")
    if plot_file is not None and result.rows:
        plot(plot_file, result.rows, title=machine())
        console.print(f"wrote {plot_file}")
    if not result.ok:
        console.print("[bold red]some sagas did not end as expected (see above)[/]")
        raise typer.Exit(1)


def _run(config: BenchConfig, console: Console) -> BenchResult:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_bench(config, console))
    result: BenchResult = uvloop.run(run_bench(config, console))
    return result
