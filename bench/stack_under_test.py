"""The stack a benchmark runs against: its own on free ports, or a running one.

The bench's own stack runs the same processes as ``sagawire up`` with the same
environment (:meth:`cli.stack.StackOptions.child_env`): the four services start once,
in a temporary data directory, and a coordinator is started for each mode that needs
one (``SAGAWIRE_MODE`` set accordingly) and stopped after it, so no mode pays for
another's coordinator — an idle choreography coordinator still follows all four event
streams. Children's output is kept (the last lines per process) to explain a failure.

The children are started with :class:`subprocess.Popen` rather than the supervisor's
asyncio subprocesses: the bench client runs on uvloop, whose ``subprocess_exec`` does
not take ``process_group``.

For ``bare`` mode the stack also runs one :mod:`bench.bare_server` per service, on
ports of their own, with the service's certificate (:meth:`BenchStack.use_bare`); while
they run they are the processes measured under the services' names.

``sagawire chaos`` runs on the same stacks: it kills and restarts the coordinator and
the services (:meth:`BenchStack.kill_service`, :meth:`BenchStack.restart_service`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli.stack import (
    COORDINATOR,
    Mode,
    StackOptions,
    coordinator_installed,
    describe_exit,
    free_ports,
)
from cli.tokens import cli_token, stack_token
from common.config import (
    SERVICE_NAMES,
    Endpoints,
    TlsSettings,
    admin_addresses,
    replicas_target,
)
from common.tls import Identity
from common.tokens import with_token
from protos.sagawire.v1 import coordinator_pb2, coordinator_pb2_grpc, participant_pb2

_KEPT_LINES = 200
_STARTUP_TIMEOUT = 60.0
_GRACE = 10.0


class BenchError(Exception):
    """The benchmark cannot run as asked."""


class Child:
    """One process of the bench's stack: ``python -m <module>``, output kept, not shown."""

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        address: str,
        identity: Identity,
        command: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.address = address
        self._identity = identity  # the bench's certificate, for health checks
        module = COORDINATOR if name == COORDINATOR else f"services.{name}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *(command or [module])],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            process_group=0,  # a Ctrl-C reaches the bench, which stops its children
        )
        self.lines: collections.deque[str] = collections.deque(maxlen=_KEPT_LINES)
        self._reader = threading.Thread(target=self._read, name=f"bench-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, count: int = 20) -> str:
        return "\n".join(list(self.lines)[-count:])

    async def wait_serving(self, within: float = _STARTUP_TIMEOUT) -> None:
        """Poll the standard health service until SERVING; BenchError if it dies or hangs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        request = health_pb2.HealthCheckRequest(service="")
        async with self._identity.aio_channel(self.address, peer=self.name) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if (code := self.proc.poll()) is not None:
                    raise BenchError(f"{self.name} {describe_exit(code)}:\n{self.tail()}")
                with contextlib.suppress(grpc.aio.AioRpcError):
                    reply = await health.Check(request, timeout=1.0)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                if loop.time() > deadline:
                    raise BenchError(f"{self.name} not SERVING within {within:g}s:\n{self.tail()}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def stop(self, grace: float = _GRACE) -> int:
        """SIGTERM, up to ``grace`` seconds, then SIGKILL; returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, grace)
            except subprocess.TimeoutExpired:
                self.kill()
        code = await asyncio.to_thread(self.proc.wait)
        await asyncio.to_thread(self._reader.join, 5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


class BenchStack:
    """Where the bench sends its sagas, and which processes it measures."""

    def __init__(
        self,
        data_dir: Path | None,
        *,
        target: str | None = None,
        env: Mapping[str, str] | None = None,
        service_replicas: int = 1,
    ) -> None:
        self.target = target
        self._env = dict(env or {})
        self._data_dir = data_dir
        self._services: dict[str, Child] = {}
        # bare mode's do-nothing participants, by the service they stand in for.
        self._bare: dict[str, Child] = {}
        self._coordinator: Child | None = None
        self.coordinator_mode: Mode | None = None
        # The coordinator's saga log (environment for it: none is SQLite in the data dir),
        # how many replicas share it, and the replicas after the first (own ports).
        self._log_env: dict[str, str] = {}
        self._replicas = 1
        self._running_log: tuple[tuple[tuple[str, str], ...], int] | None = None
        self._more: list[Child] = []
        # Each service's replicas after the first (one store, events on NATS): their ports,
        # and the children once started. The coordinator calls them all, round robin.
        self._replica_ports: dict[str, list[int]] = {}
        self._service_replicas: list[Child] = []
        # Each service process's Admin port, by the process's own port, and bare mode's
        # participants' ports, by service (own stack: picked with the others below).
        self._admin_ports: dict[int, int] = {}
        self._bare_ports: dict[str, int] = {}
        if target is not None:
            self.endpoints = Endpoints(coordinator_addr=target)
            self.ports: dict[str, int] = {}
        else:
            # Every port the stack will use, taken in one go so no two are the same: ports
            # picked one by one, each released before the next pick, may repeat, and the
            # second process to bind one then fails to start ("port ... is taken").
            replicas = range(2, service_replicas + 1)
            processes = [f"{n}-{r}" for n in SERVICE_NAMES for r in (1, *replicas)]
            picked = free_ports(
                [
                    COORDINATOR,
                    *processes,
                    *(f"{p} admin" for p in processes),
                    *(f"bare-{n}" for n in SERVICE_NAMES),
                ]
            )
            self.ports = {COORDINATOR: picked[COORDINATOR]}
            self.ports.update({n: picked[f"{n}-1"] for n in SERVICE_NAMES})
            self._replica_ports = {n: [picked[f"{n}-{r}"] for r in replicas] for n in SERVICE_NAMES}
            self._admin_ports = {picked[p]: picked[f"{p} admin"] for p in processes}
            self._bare_ports = {n: picked[f"bare-{n}"] for n in SERVICE_NAMES}
            self.endpoints = Endpoints(
                **{f"{name}_addr": self._target(name, port) for name, port in self.ports.items()}
            )

    def _target(self, name: str, port: int) -> str:
        ports = [port, *self._replica_ports.get(name, [])]
        return replicas_target([f"127.0.0.1:{p}" for p in ports])

    @property
    def own(self) -> bool:
        """True when the bench started this stack (and may kill its processes)."""
        return self.target is None

    def _spawn(self, name: str, mode: Mode | None = None, port: int = 0) -> Child:
        assert self._data_dir is not None
        # Certificates where the bench's own clients find them (SAGAWIRE_CERTS_DIR or
        # .sagawire/certs), made on first use.
        options = StackOptions(
            data_dir=self._data_dir,
            ports={**self.ports, name: port or self.ports[name]},
            names=(name,),
            mode=mode,
            env=self._env,
            certs_dir=TlsSettings().certs_directory,
            addresses=self._addresses(),
        )
        port = port or self.ports[name]
        env = options.child_env(name)
        if name != COORDINATOR:  # the Admin API on a free port too, the same after a restart
            env["SAGAWIRE_ADMIN_PORT"] = str(self._admin_port(port))
        return Child(name, env, f"127.0.0.1:{port}", options.operator())

    def _admin_port(self, port: int) -> int:
        if port not in self._admin_ports:
            self._admin_ports[port] = free_ports([f"admin-{port}"])[f"admin-{port}"]
        return self._admin_ports[port]

    def admin_addresses(self, service: str) -> list[str]:
        """Where each replica of ``service`` serves the Admin API (own stack: the ports it
        gave them; a target: SAGAWIRE_<NAME>_ADDR's ports + the offset)."""
        if not self.own:
            return admin_addresses(self.endpoints.of(service))
        ports = [self.ports[service], *self._replica_ports.get(service, [])]
        return [f"127.0.0.1:{self._admin_port(port)}" for port in ports]

    def _addresses(self) -> dict[str, str]:
        return {n: self.endpoints.of(n) for n in SERVICE_NAMES if self._replica_ports.get(n)}

    async def use_bare(self) -> dict[str, str]:
        """Start a do-nothing participant per service (own stack only); their addresses."""
        if not self.own or self._data_dir is None:
            raise BenchError("bare mode needs the bench's own stack (not --target)")
        if not self._bare:
            for name in SERVICE_NAMES:
                port = self._bare_ports[name]
                options = StackOptions(
                    data_dir=self._data_dir,
                    ports={**self.ports, name: port},
                    names=(name,),
                    env=self._env,
                    certs_dir=TlsSettings().certs_directory,
                )
                self._bare[name] = Child(
                    name,
                    options.child_env(name),
                    f"127.0.0.1:{port}",
                    options.operator(),
                    command=("bench.bare_server", name),
                )
            await asyncio.gather(*(c.wait_serving() for c in self._bare.values()))
        return {name: child.address for name, child in self._bare.items()}

    async def stop_bare(self) -> None:
        children, self._bare = list(self._bare.values()), {}
        await asyncio.gather(*(c.stop() for c in children))

    async def __aenter__(self) -> BenchStack:
        if self.own:
            try:
                for name in SERVICE_NAMES:
                    self._services[name] = self._spawn(name)
                    for port in self._replica_ports.get(name, []):
                        self._service_replicas.append(self._spawn(name, port=port))
                children = [*self._services.values(), *self._service_replicas]
                await asyncio.gather(*(c.wait_serving() for c in children))
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the coordinator, then the services."""
        await self.stop_coordinator()
        await self.stop_bare()
        children, self._services = list(self._services.values()), {}
        children += self._service_replicas
        self._service_replicas = []
        await asyncio.gather(*(c.stop() for c in children))

    def check_alive(self) -> None:
        """BenchError if a process of the bench's own stack has died."""
        running = [
            *self._services.values(),
            *self._service_replicas,
            *self._bare.values(),
            *self._more,
        ]
        for child in [*running, *filter(None, [self._coordinator])]:
            if (code := child.proc.poll()) is not None:
                raise BenchError(f"{child.name} {describe_exit(code)}:\n{child.tail()}")

    def addresses(self) -> dict[str, str]:
        """Each service's address (own stack, or SAGAWIRE_<NAME>_ADDR for a target)."""
        return {name: self.endpoints.of(name) for name in SERVICE_NAMES}

    @property
    def coordinator_address(self) -> str:
        return self.endpoints.coordinator_addr

    @property
    def token(self) -> str | None:
        """The operator token the bench's calls to the coordinator carry: made with its own
        stack's key, or for a target, found as every CLI command finds one."""
        if self.own and self._data_dir is not None:
            return stack_token(self._data_dir)
        return cli_token()

    async def saga_mode(self, saga_id: str) -> str:
        """How the coordinator ran a saga: "orchestration" or "choreography"."""
        async with Identity.from_env().aio_channel(self.coordinator_address) as channel:
            stub = with_token(coordinator_pb2_grpc.CoordinatorStub(channel), self.token)
            saga = await stub.GetSaga(coordinator_pb2.GetSagaRequest(saga_id=saga_id), timeout=10)
        return participant_pb2.SagaMode.Name(saga.mode).removeprefix("SAGA_MODE_").lower()

    def use_saga_log(self, env: Mapping[str, str], replicas: int = 1) -> None:
        """The saga log the next coordinators start on (``SAGAWIRE_SAGA_LOG...``; empty:
        SQLite in the data dir), and how many replicas share it (each on its own port)."""
        self._log_env, self._replicas = dict(env), replicas

    @property
    def coordinator_addresses(self) -> list[str]:
        """Every coordinator replica's address (one unless the log is shared)."""
        if not self.own:
            return [self.coordinator_address]
        return [self.coordinator_address, *(c.address for c in self._more)]

    async def use_coordinator(self, mode: Mode) -> None:
        """Make sure a coordinator runs sagas in ``mode`` (own stack: start one if needed),
        on the log and with the replicas :meth:`use_saga_log` asked for."""
        wanted = (tuple(sorted(self._log_env.items())), self._replicas)
        if not self.own or (
            self.coordinator_mode is mode
            and self._coordinator is not None
            and self._running_log == wanted
        ):
            return
        if not coordinator_installed():
            raise BenchError("the coordinator is not installed (no coordinator/__main__.py)")
        await self.stop_coordinator()
        env = self._env
        try:
            self._env = self._replica_env(1)
            self._coordinator = self._spawn(COORDINATOR, mode)
            self._running_log = wanted
            names = [f"{COORDINATOR}-{n}" for n in range(2, self._replicas + 1)]
            for number, port in enumerate(free_ports(names).values(), 2):
                self._env = self._replica_env(number)
                self._more.append(self._spawn_replica(mode, port))
        finally:
            self._env = env
        self.coordinator_mode = mode
        await asyncio.gather(*(c.wait_serving() for c in [self._coordinator, *self._more]))

    def _replica_env(self, number: int) -> dict[str, str]:
        """The environment of coordinator replica ``number``: the log's, and on a shared
        log a stable name, so a replica restarted after a kill takes its sagas back at once."""
        if not self._log_env:
            return dict(self._env)
        return {**self._env, **self._log_env, "SAGAWIRE_REPLICA_ID": f"{COORDINATOR}-{number}"}

    def _spawn_replica(self, mode: Mode, port: int) -> Child:
        """Another coordinator on the same log and data dir, on its own port."""
        assert self._data_dir is not None
        options = StackOptions(
            data_dir=self._data_dir,
            ports={**self.ports, COORDINATOR: port},
            names=(COORDINATOR,),
            mode=mode,
            env=self._env,
            certs_dir=TlsSettings().certs_directory,
            addresses=self._addresses(),
        )
        return Child(
            COORDINATOR, options.child_env(COORDINATOR), f"127.0.0.1:{port}", options.operator()
        )

    async def stop_coordinator(self) -> None:
        more, self._more = self._more, []
        if self._coordinator is not None:
            child, self._coordinator = self._coordinator, None
            self.coordinator_mode = None
            self._running_log = None
            await asyncio.gather(child.stop(), *(c.stop() for c in more))

    def kill_coordinator(self) -> None:
        """SIGKILL the coordinator: no shutdown code runs, like a crash."""
        if self._coordinator is None:
            raise BenchError("no coordinator to kill")
        self._coordinator.kill()

    async def restart_coordinator(self) -> None:
        """After :meth:`kill_coordinator`: start it again on the same port and store.
        With replicas, only the first (the one killed) restarts; the others go on."""
        mode = self.coordinator_mode
        if mode is None:
            raise BenchError("no coordinator to restart")
        if not self._more:
            await self.stop_coordinator()  # reaps the killed process
            await self.use_coordinator(mode)
            return
        if self._coordinator is not None:
            await self._coordinator.stop()  # reaps the killed process
        env, self._env = self._env, self._replica_env(1)
        try:
            self._coordinator = self._spawn(COORDINATOR, mode)
        finally:
            self._env = env
        await self._coordinator.wait_serving()

    def kill_service(self, name: str) -> None:
        """SIGKILL one domain service (its first replica) of the own stack: no shutdown code
        runs, like a crash."""
        child = self._services.get(name)
        if child is None:
            raise BenchError(f"no {name} service to kill")
        child.kill()

    async def restart_service(self, name: str) -> None:
        """After :meth:`kill_service`: start it again on the same port and store, and wait
        until it is SERVING."""
        child = self._services.get(name)
        if child is None:
            raise BenchError(f"no {name} service to restart")
        await child.stop()  # reaps the killed process
        self._services[name] = self._spawn(name)
        await self._services[name].wait_serving()

    def store_sizes(self) -> dict[str, int]:
        """Bytes of each SQLite store of the own stack (the file and its WAL), by file
        name (empty for a target: its stores are not ours to look at)."""
        if not self.own or self._data_dir is None:
            return {}
        sizes: dict[str, int] = {}
        for store in sorted(self._data_dir.glob("*.db")):
            wal = store.with_name(store.name + "-wal")
            sizes[store.name] = store.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        return sizes

    def pids(self) -> dict[str, int]:
        """The processes to measure, by name (empty for a target: they are not ours).
        While bare mode's participants run, they are measured under the services' names."""
        services = self._bare or self._services
        children = [*services.values(), *filter(None, [self._coordinator])]
        pids = {c.name: c.pid for c in children if c.running}
        # Replicas past the first (same name, the coordinator's certificate) by number.
        pids.update({f"{c.name}-{n}": c.pid for n, c in enumerate(self._more, 2) if c.running})
        for child in self._service_replicas:
            if child.running:
                pids[f"{child.name}-{child.address.rpartition(':')[2]}"] = child.pid
        return pids


def child_env(traces: bool) -> dict[str, str]:
    """Extra environment for the bench's own stack: tracing on (as shipped) or off.

    Off means no spans at all (OTEL_SDK_DISABLED), not spans made and dropped: the
    figure then shows the whole cost of tracing."""
    if traces:
        return {}
    return {
        "OTEL_SDK_DISABLED": "true",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
