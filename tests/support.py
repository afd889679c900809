"""Shared test helpers: real servers on 127.0.0.1 (in-process or as subprocesses) and waits.

Nothing here fakes a service: every helper starts the real gRPC server of a
service with its own SQLite file in a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from common.certs import COORDINATOR, OPERATOR
from common.config import SERVICE_NAMES, Endpoints, FaultConfig, ServiceSettings
from common.paging import every_page
from common.server import RunningServer, port_taken, start_server
from common.tls import Identity
from contract.limits import MAX_PAGE_SIZE
from protos.sagawire.v1 import (
    admin_pb2_grpc,
    inventory_pb2_grpc,
    order_pb2_grpc,
    participant_pb2_grpc,
    payment_pb2_grpc,
    shipping_pb2_grpc,
)
from services.launcher import spec_of
from services.runtime import DomainService

ROOT = Path(__file__).resolve().parent.parent


async def wait_until(
    check: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last})")
        await asyncio.sleep(interval)


def open_channel(
    address: str,
    identity: str = OPERATOR,
    peer: str | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
) -> grpc.aio.Channel:
    """A channel presenting ``identity``'s certificate (the session's test CA, see conftest)."""
    return Identity.from_env(identity).aio_channel(address, peer=peer, interceptors=interceptors)


@dataclass
class Cluster:
    """The four domain services running in this test's event loop on ephemeral ports.

    Tests call them as the stack does: participant calls as the coordinator, the read
    and Admin APIs as an operator.
    """

    servers: dict[str, RunningServer]
    channels: dict[tuple[str, str], grpc.aio.Channel] = field(default_factory=dict)

    def address(self, name: str) -> str:
        return self.servers[name].address

    def channel(self, name: str, identity: str = OPERATOR) -> grpc.aio.Channel:
        """A channel to service ``name`` as ``identity`` (kept for the test's length)."""
        key = (name, identity)
        if key not in self.channels:
            self.channels[key] = open_channel(self.address(name), identity, peer=name)
        return self.channels[key]

    def participant(self, name: str) -> participant_pb2_grpc.ParticipantStub:
        return participant_pb2_grpc.ParticipantStub(self.channel(name, COORDINATOR))

    def admin_address(self, name: str) -> str:
        """Where the service serves its Admin API (a port of its own)."""
        app = self.servers[name].app
        assert isinstance(app, DomainService)
        return app.admin_address

    def admin(self, name: str, identity: str = OPERATOR) -> admin_pb2_grpc.AdminStub:
        key = (f"{name}-admin", identity)
        if key not in self.channels:
            self.channels[key] = open_channel(self.admin_address(name), identity, peer=name)
        return admin_pb2_grpc.AdminStub(self.channels[key])

    @property
    def order(self) -> order_pb2_grpc.OrderStub:
        return order_pb2_grpc.OrderStub(self.channel("order"))

    @property
    def inventory(self) -> inventory_pb2_grpc.InventoryStub:
        return inventory_pb2_grpc.InventoryStub(self.channel("inventory"))

    @property
    def payment(self) -> payment_pb2_grpc.PaymentStub:
        return payment_pb2_grpc.PaymentStub(self.channel("payment"))

    @property
    def shipping(self) -> shipping_pb2_grpc.ShippingStub:
        return shipping_pb2_grpc.ShippingStub(self.channel("shipping"))

    def endpoint_env(self) -> dict[str, str]:
        """SAGAWIRE_<NAME>_ADDR variables pointing at these servers."""
        return {f"SAGAWIRE_{n.upper()}_ADDR": self.address(n) for n in self.servers}

    async def stop(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for server in self.servers.values():
            await server.stop()


def service_settings(data_dir: Path, **overrides: object) -> ServiceSettings:
    settings = ServiceSettings(
        port=0, data_dir=data_dir, admin_enabled=True, admin_port=0, grace_seconds=1.0
    )
    return settings.model_copy(update=overrides)


def free_port() -> int:
    """A port that was free a moment ago (for processes that must know each other's ports)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_PORT_CHOICES = 5


async def start_cluster(
    data_dir: Path,
    names: Iterable[str] = SERVICE_NAMES,
    faults: Mapping[str, FaultConfig] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Cluster:
    """Start real domain services in-process, each with its own SQLite file under data_dir.

    Ports are chosen up front so the services can follow each other's event streams.
    ``overrides``: settings every service gets (e.g. shorter retention windows).
    """
    names = list(names)
    for _ in range(_PORT_CHOICES):
        ports = {name: free_port() for name in names}
        endpoints = Endpoints(**{f"{n}_addr": f"127.0.0.1:{p}" for n, p in ports.items()})
        servers: dict[str, RunningServer] = {}
        for name in names:
            # A port free when chosen may have gone since to another process (a client's
            # ephemeral port, another test run): then all again with new ports, checked just
            # before the bind, instead of a server that exits half-made.
            if port_taken("127.0.0.1", ports[name]):
                break
            settings = service_settings(
                data_dir,
                port=ports[name],
                faults=(faults or {}).get(name, FaultConfig()),
                **(overrides or {}),
            )
            app = DomainService(spec_of(name), settings, endpoints)
            servers[name] = await start_server(app, settings)
        else:
            return Cluster(servers)
        for server in servers.values():
            await server.stop()
    raise AssertionError(f"no free ports for {names} in {_PORT_CHOICES} choices")


_SERVING = re.compile(r"serving address=(\S+):(\d+)")


class Process:
    """A Sagawire process started as a real subprocess (``python -m <module>``).

    Its stderr is collected on a thread; the port it bound is read from its
    ``serving address=...`` log line.
    """

    def __init__(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        self.args = args
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def port(self, timeout: float = 20.0) -> int:
        """Block until the process logs its serving address; return the port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := _SERVING.search(line):
                    return int(match.group(2))
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.args} exited early:\n{self.output}")
            time.sleep(0.02)
        raise AssertionError(f"{self.args} did not start within {timeout}s:\n{self.output}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port()}"

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait; SIGKILL if it does not stop in time. Returns the exit code."""
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crash."""
        self.proc.kill()
        self.proc.wait()
        self._close()

    def _close(self) -> None:
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_service_process(
    name: str, data_dir: Path, env: Mapping[str, str] | None = None, port: int = 0
) -> Process:
    """A domain service as its own process on an ephemeral port (or a given one)."""
    base = {
        "SAGAWIRE_DATA_DIR": str(data_dir),
        "SAGAWIRE_ADMIN_ENABLED": "true",
        "SAGAWIRE_GRACE_SECONDS": "2",
        "SAGAWIRE_PORT": str(port),
    }
    return Process(["-m", f"services.{name}"], env={**base, **(env or {})})


async def listing(method: Callable[..., Any], request: Any, field: str) -> list[Any]:
    """Every item of a paged ``List*`` call: ``request`` (its filters) page after page."""

    async def page(token: str) -> Any:
        asked = type(request)()
        asked.CopyFrom(request)
        asked.page_size = MAX_PAGE_SIZE
        asked.page_token = token
        return await method(asked)

    return await every_page(page, lambda reply: getattr(reply, field))
