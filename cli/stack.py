"""The local stack: the four domain services and the coordinator as supervised child processes.

``sagawire up`` runs it in the foreground; ``sagawire demo`` runs the same :class:`Stack`
in the background of its own command. The supervisor

- starts the services, waits until each reports SERVING through the standard gRPC health
  service, then starts the coordinator (when it is installed) and waits for it too;
- relays every child's output, one prefixed line at a time, to a :class:`StackLog`;
- on a stop request (Ctrl-C, SIGTERM) stops the coordinator first, then the services:
  SIGTERM, a grace period, then SIGKILL for a child that did not stop;
- reports a child that dies, and either stops the whole stack (exit status 1) or, with
  ``restart``, starts it again with exponential backoff.

Children run in their own process groups, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops them in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import socket
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cli.child import Child, StackError, StackLog, describe_exit
from common.certs import OPERATOR, ensure_certs
from common.config import (
    ADMIN_PORT_OFFSET,
    DEFAULT_PORTS,
    SERVICE_NAMES,
    BadSetting,
    ServiceSettings,
    TlsSettings,
    load,
    replicas_target,
)
from common.tls import Identity

__all__ = [
    "COORDINATOR",
    "ConsoleLog",
    "Mode",
    "Stack",
    "StackError",
    "StackLog",
    "StackOptions",
    "busy_ports",
    "coordinator_installed",
    "default_names",
    "describe_exit",
    "free_ports",
    "install_stop_signals",
    "ports_from_base",
    "stack_table",
    "up",
    "with_admin_ports",
]

COORDINATOR = "coordinator"
_T = TypeVar("_T")
# Restart backoff: 0.5 s, 1 s, 2 s, ... up to 10 s; a child that stayed up this long
# is considered healthy again and its next restart starts from the shortest delay.
_BACKOFF_FIRST, _BACKOFF_MAX, _BACKOFF_RESET_AFTER = 0.5, 10.0, 30.0


class Mode(StrEnum):
    """How sagas run; exported to every child as ``SAGAWIRE_MODE``."""

    orchestration = "orchestration"
    choreography = "choreography"


_COLOURS = {
    COORDINATOR: "magenta",
    "order": "cyan",
    "inventory": "green",
    "payment": "yellow",
    "shipping": "blue",
}
_LEVEL = re.compile(r"level=(\w+)")
_LEVEL_STYLE = {"ERROR": "red", "CRITICAL": "bold red", "WARNING": "yellow"}


class ConsoleLog:
    """Prefixed, colour-coded lines on a rich console (``sagawire up``)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._width = max(len(n) for n in (*_COLOURS, "sagawire"))

    def _print(self, prefix: str, prefix_style: str, text: str, style: str = "") -> None:
        out = Text(f"{prefix:<{self._width}} | ", style=prefix_style)
        out.append(text, style=style)
        self.console.print(out, soft_wrap=True, highlight=False, markup=False)

    def line(self, name: str, text: str) -> None:
        level = _LEVEL.search(text)
        style = _LEVEL_STYLE.get(level.group(1), "") if level else ""
        self._print(name, _COLOURS.get(name, "white"), text, style)

    def note(self, text: str, *, error: bool = False) -> None:
        self._print("sagawire", "bold", text, "bold red" if error else "")


def coordinator_installed() -> bool:
    """True once ``coordinator/__main__.py`` exists (``python -m coordinator`` can run)."""
    spec = importlib.util.find_spec(COORDINATOR)
    locations = spec.submodule_search_locations if spec else None
    return any((Path(loc) / "__main__.py").is_file() for loc in locations or ())


# A service's replica r listens this far above the service's port, times r - 1.
REPLICA_PORT_STEP = 100


def module_of(name: str) -> str:
    """What ``python -m`` runs for a process of the stack."""
    return COORDINATOR if name == COORDINATOR else f"services.{name}"


def default_names() -> tuple[str, ...]:
    """The processes of the local stack, in start order: services, then the coordinator."""
    return (*SERVICE_NAMES, *((COORDINATOR,) if coordinator_installed() else ()))


def ports_from_base(base_port: int | None) -> dict[str, int]:
    """Each process's port: the defaults (50050-50054), or the same offsets from ``base_port``."""
    if base_port is None:
        return dict(DEFAULT_PORTS)
    first = DEFAULT_PORTS[COORDINATOR]
    return {name: base_port + port - first for name, port in DEFAULT_PORTS.items()}


def free_ports(names: Sequence[str]) -> dict[str, int]:
    """Ports the OS reports free right now, one per name (for a stack beside others)."""
    with contextlib.ExitStack() as stack:
        sockets = {n: stack.enter_context(socket.socket()) for n in names}
        for sock in sockets.values():
            sock.bind(("127.0.0.1", 0))
        return {n: int(s.getsockname()[1]) for n, s in sockets.items()}


def with_admin_ports(ports: Mapping[str, int]) -> dict[str, int]:
    """The services' ports and their Admin APIs' (each service's port + the offset)."""
    admin = {
        f"{name} admin": port + ADMIN_PORT_OFFSET
        for name, port in ports.items()
        if not name.startswith(COORDINATOR)
    }
    return {**ports, **admin}


def busy_ports(ports: Mapping[str, int]) -> list[str]:
    """Names whose port someone is listening on already.

    gRPC binds with SO_REUSEPORT, so a second stack on the same ports would start
    "successfully" and share them with the first; a plain bind finds the conflict.
    """
    busy = []
    for name, port in ports.items():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name} ({port})")
    return busy


@dataclass(frozen=True)
class StackOptions:
    """How to run the stack; every field has the ``sagawire up`` default."""

    data_dir: Path = Path(".sagawire")
    ports: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    names: Sequence[str] = field(default_factory=default_names)
    mode: Mode | None = None
    restart: bool = False
    startup_timeout: float = 30.0
    # Longer than the children's own SAGAWIRE_GRACE_SECONDS (5 s), so they can finish.
    grace: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)
    # The stack's CA and certificates (default SAGAWIRE_CERTS_DIR, else <data_dir>/certs),
    # made on first use.
    certs_dir: Path | None = None
    # Where a process is reached when not at 127.0.0.1:<its port>: several replicas of it
    # (an ipv4:h:p1,h:p2 target, common/config.py replicas_target).
    addresses: Mapping[str, str] = field(default_factory=dict)
    # Processes of each service (one store on PostgreSQL, events on NATS): replica r
    # listens REPLICA_PORT_STEP * (r - 1) above the service's port.
    replicas: int = 1

    def replica_ports(self, name: str) -> list[int]:
        """The ports of ``name``'s replicas after the first."""
        if name == COORDINATOR:
            return []
        return [self.ports[name] + REPLICA_PORT_STEP * r for r in range(1, self.replicas)]

    def target(self, name: str) -> str:
        """Where the others reach ``name``: its replicas, round robin, or its one port."""
        given = self.addresses.get(name)
        if given:
            return given
        ports = [self.ports[name], *self.replica_ports(name)]
        return replicas_target([f"127.0.0.1:{port}" for port in ports])

    def tls_settings(self) -> TlsSettings:
        """TLS as the children run it: on unless SAGAWIRE_TLS=off, one certificates dir."""
        env = {**os.environ, **self.env}
        certs = self.certs_dir or Path(env.get("SAGAWIRE_CERTS_DIR") or self.data_dir / "certs")
        given: dict[str, Any] = {"data_dir": self.data_dir.resolve(), "certs_dir": certs.resolve()}
        if (tls := env.get("SAGAWIRE_TLS")) is not None:
            given["tls"] = tls
        return TlsSettings(**given)

    def operator(self) -> Identity:
        """The supervisor's client identity; makes the CA and certificates when missing."""
        settings = self.tls_settings()
        if settings.tls:
            ensure_certs(settings.certs_directory)
        return Identity(OPERATOR, settings)

    def child_env(self, name: str) -> dict[str, str]:
        """The environment of one child: the caller's, plus where everyone listens."""
        env = {**os.environ, **self.env}
        for own in ("CA_FILE", "CERT_FILE", "KEY_FILE", "IDENTITY", "CLIENT_AUTH"):
            env.pop(f"SAGAWIRE_TLS_{own}", None)  # each child uses its own certificate
        env.update({f"SAGAWIRE_{n.upper()}_ADDR": self.target(n) for n in DEFAULT_PORTS})
        env.update(
            PYTHONUNBUFFERED="1",
            SAGAWIRE_PORT=str(self.ports[name]),
            SAGAWIRE_DATA_DIR=str(self.data_dir.resolve()),
            SAGAWIRE_CERTS_DIR=str(self.tls_settings().certs_directory),
            # The local stack is a developer's stack: fault injection is on.
            SAGAWIRE_ADMIN_ENABLED="true",
        )
        if self.mode is not None:
            env["SAGAWIRE_MODE"] = self.mode.value
        return env


class Stack:
    """The supervised processes of one local stack. Use as ``async with Stack(...)``."""

    def __init__(self, options: StackOptions, log: StackLog) -> None:
        self.options = options
        self.log = log
        self.identity = options.operator()
        self.children = {
            name: Child(
                name,
                module_of(name),
                options.ports[name],
                options.child_env(name),
                log,
                self.identity,
            )
            for name in options.names
        }
        for name in options.names:
            for number, port in enumerate(options.replica_ports(name), 2):
                env = {**options.child_env(name), "SAGAWIRE_PORT": str(port)}
                replica = Child(f"{name}-{number}", module_of(name), port, env, log, self.identity)
                self.children[replica.name] = replica
        self.failure: str | None = None
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []
        self._stopped: asyncio.Task[bool] | None = None

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested.is_set()

    def request_stop(self, failure: str | None = None) -> None:
        """Ask the stack to stop (from a signal handler, or because something failed)."""
        if failure and self.failure is None:
            self.failure = failure
        self._stop_requested.set()

    async def start(self) -> None:
        """Start the services, then the coordinator, each once the previous group is SERVING.

        On any failure every child is stopped and :class:`StackError` is raised.
        """
        services = [c for n, c in self.children.items() if n != COORDINATOR]
        groups = [services, [c for n, c in self.children.items() if n == COORDINATOR]]
        try:
            for group in (g for g in groups if g):
                for child in group:
                    async with child.lock:
                        if self._stop_requested.is_set():
                            raise StackError("stopped during startup")
                        await child.spawn()
                timeout = self.options.startup_timeout
                await asyncio.gather(
                    *(c.wait_serving(timeout, self._stop_requested) for c in group)
                )
                for child in group:
                    self.log.note(f"{child.name} is SERVING on {child.address}")
        except BaseException as error:
            if isinstance(error, StackError) and not self._stop_requested.is_set():
                self.failure = str(error)
                self.log.note(self.failure, error=True)
            await self.stop()
            raise
        self._watchers = [asyncio.create_task(self._watch(c)) for c in self.children.values()]

    async def _watch(self, child: Child) -> None:
        """Report a child that dies; stop the stack, or restart the child with backoff."""
        failures = 0
        while True:
            code = await child.wait()
            if self._stopping:
                return
            lived = asyncio.get_running_loop().time() - child.started_at
            self.log.note(f"{child.name} {describe_exit(code)}", error=True)
            if not self.options.restart:
                self.request_stop(f"{child.name} {describe_exit(code)}")
                return
            failures = 1 if lived >= _BACKOFF_RESET_AFTER else failures + 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (failures - 1))
            self.log.note(f"restarting {child.name} in {delay:g}s (restart #{failures})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)
            async with child.lock:
                if self._stop_requested.is_set():
                    return
                await child.spawn()
            try:
                await child.wait_serving(self.options.startup_timeout, self._stop_requested)
            except StackError as error:
                self.log.note(str(error), error=True)
                child.kill()  # hung at start: treat it as dead, the loop restarts it
                continue
            self.log.note(f"{child.name} is SERVING again on {child.address}")

    async def stop(self) -> bool:
        """Stop every child (coordinator first); idempotent. True if all exited cleanly."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop())
        return await asyncio.shield(self._stopped)

    async def _stop(self) -> bool:
        self._stopping = True
        self._stop_requested.set()
        grace = self.options.grace
        first = [c for c in self.children.values() if c.name == COORDINATOR]
        rest = [c for c in self.children.values() if c.name != COORDINATOR]
        codes: dict[str, int | None] = {}
        for group in (first, rest):
            results = await asyncio.gather(*(c.stop(grace) for c in group))
            codes.update(zip((c.name for c in group), results, strict=True))
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        # A process stopped before it was SERVING may not handle SIGTERM yet: dying of
        # it is a clean stop then. Once SERVING, it must shut down and exit 0.
        unclean = {
            name: code
            for name, code in codes.items()
            if code not in (0, None)
            and not (code == -signal.SIGTERM and not self.children[name].serving)
        }
        for name, code in unclean.items():
            self.log.note(f"{name} {describe_exit(code or 0)} on shutdown", error=True)
        self.log.note("stack stopped" + (" cleanly" if not unclean else " (not cleanly)"))
        return not unclean

    def kill(self) -> None:
        """SIGKILL every child at once (a second Ctrl-C)."""
        self.log.note("killing every process", error=True)
        for child in self.children.values():
            child.kill()

    async def guard(self, work: Awaitable[_T]) -> _T:
        """Run ``work``; cancel it and raise StackError if the stack fails or is stopped."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise StackError(self.failure or "the stack was stopped")
        return task.result()

    async def run(self) -> int:
        """Foreground mode: start, run until a stop request, stop. Returns the exit status."""
        try:
            await self.start()
        except StackError:
            return 0 if self.failure is None else 1  # None: Ctrl-C during startup
        self.log.note("stack is up (Ctrl-C to stop)")
        await self._stop_requested.wait()
        if self.failure:
            self.log.note(f"stopping the stack: {self.failure}", error=True)
        clean = await self.stop()
        return 0 if clean and self.failure is None else 1


def install_stop_signals(stack: Stack) -> None:
    """SIGINT/SIGTERM/SIGHUP: the first stops the stack in order, a second kills everything.

    SIGHUP (the terminal closed) matters because the children, in their own process
    groups, would not get it and would outlive the supervisor.
    """
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stack.stop_requested:
            stack.kill()
        else:
            stack.log.note(f"{sig.name}: stopping the stack")
            stack.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal, sig)


def stack_table(stack: Stack) -> Table:
    """The processes of a running stack: name, address, pid."""
    table = Table(title="Sagawire local stack", title_justify="left")
    for column in ("process", "address", "pid"):
        table.add_column(column)
    for child in stack.children.values():
        pid = str(child.proc.pid) if child.proc else "-"
        table.add_row(Text(child.name, style=_COLOURS.get(child.name, "")), child.address, pid)
    return table


async def _up(options: StackOptions, console: Console) -> int:
    stack = Stack(options, ConsoleLog(console))
    install_stop_signals(stack)
    mode = options.mode.value if options.mode else os.environ.get("SAGAWIRE_MODE", "per definition")
    tls = options.tls_settings()
    security = f"mutual TLS, certificates in {tls.certs_directory}" if tls.tls else "PLAINTEXT"
    stack.log.note(f"data={options.data_dir.resolve()} mode={mode} transport={security}")
    if COORDINATOR not in options.names:
        stack.log.note("coordinator not installed yet: starting the four services only")
    return await stack.run()


_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def _address_port() -> int | None:
    """The coordinator's port from ``--address`` / ``SAGAWIRE_COORDINATOR_ADDR``, if set:
    the stack this machine runs is then the one the other verbs reach."""
    address = os.environ.get("SAGAWIRE_COORDINATOR_ADDR")
    if not address:
        return None
    host, _, port = address.rpartition(":")
    if host not in _LOCAL_HOSTS or not port.isdigit() or not 1 <= int(port) <= 65531:
        raise BadSetting(
            "SAGAWIRE_COORDINATOR_ADDR",
            f"{address}: sagawire up runs the stack on this machine, on 127.0.0.1 and a port"
            " up to 65531 (or pass --base-port)",
        )
    return int(port)


def up(
    data: Annotated[
        Path,
        typer.Option(envvar="SAGAWIRE_DATA_DIR", help="Directory for every process's store."),
    ] = Path(".sagawire"),
    base_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65531,
            help="Coordinator's port; the services take the next four (default: the port of"
            " --address, else 50050).",
        ),
    ] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="Saga mode for every process (sets SAGAWIRE_MODE).")
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="Restart a child that dies (with backoff).")
    ] = False,
    startup_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds each process has to become SERVING.")
    ] = 30.0,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds between SIGTERM and SIGKILL on stop.")
    ] = 10.0,
    replicas: Annotated[
        int,
        typer.Option(
            min=1,
            max=8,
            help="Processes of each service, sharing its store: needs SAGAWIRE_STORE="
            "postgresql://... and SAGAWIRE_EVENTS=nats://...",
        ),
    ] = 1,
) -> None:
    """Run the whole stack locally (four services + coordinator), supervised, until Ctrl-C."""
    console = Console()
    ports = ports_from_base(base_port if base_port is not None else _address_port())
    names = default_names()
    if busy := busy_ports(with_admin_ports({n: ports[n] for n in names})):
        console.print(
            f"[bold red]port already in use:[/] {', '.join(busy)} — is another stack running? "
            "Stop it or pass --base-port.",
            soft_wrap=True,
        )
        raise typer.Exit(1)
    if replicas > 1:
        check_replicas_settings()
    data.mkdir(parents=True, exist_ok=True)
    options = StackOptions(
        data_dir=data,
        ports=ports,
        names=names,
        mode=mode,
        restart=restart,
        startup_timeout=startup_timeout,
        grace=grace,
        replicas=replicas,
    )
    replica_ports = {f"{n} ({p})": p for n in names for p in options.replica_ports(n)}
    if busy := busy_ports(with_admin_ports(replica_ports)):
        console.print(f"[bold red]port already in use:[/] {', '.join(busy)}", soft_wrap=True)
        raise typer.Exit(1)
    raise typer.Exit(asyncio.run(_up(options, console)))


def check_replicas_settings() -> None:
    """Replicas of a service share its store, and hear events through NATS (a gRPC stream
    serves one replica's commits): refused, naming the settings, without both."""
    settings = load(ServiceSettings)
    if not settings.store_on_postgres or not settings.events_on_nats:
        raise BadSetting(
            "--replicas",
            "replicas of a service need SAGAWIRE_STORE=postgresql://... (one store they share)"
            " and SAGAWIRE_EVENTS=nats://... (each event to one of them)",
        )
