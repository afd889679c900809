"""Helpers for coordinator tests: the four services plus a real coordinator, over gRPC.

``running_stack`` starts the services in-process and the coordinator in-process
(or, with :func:`start_coordinator_process`, as a subprocess that tests can
SIGKILL). Definitions are the shipped ``contract/sagas.yaml`` with timings
shrunk for tests by :func:`write_definitions`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from common.config import Endpoints
from common.server import RunningServer, start_server
from common.tokens import Role, TokenSettings, local_token, with_token
from contract.definitions import DEFAULT_FILE
from coordinator.app import CoordinatorApp
from coordinator.settings import CoordinatorSettings
from protos.sagawire.v1 import (
    admin_pb2,
    common_pb2,
    coordinator_pb2_grpc,
    inventory_pb2,
    order_pb2,
    payment_pb2,
)
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.support import Cluster, Process, open_channel, start_cluster, wait_until

SETTLED = frozenset(
    {pb.SAGA_STATUS_COMPLETED, pb.SAGA_STATUS_COMPENSATED, pb.SAGA_STATUS_NEEDS_ATTENTION}
)
FINAL = frozenset({pb.SAGA_STATUS_COMPLETED, pb.SAGA_STATUS_COMPENSATED})

# Budgets of attempts only (no time half), so tests can count attempts.
FAST_RETRY = {
    "max_attempts": 3,
    "initial_backoff": "10ms",
    "max_backoff": "40ms",
    "jitter": "5ms",
    "retry_for": "0s",
}
FAST_COMPENSATION = {
    "max_attempts": 5,
    "initial_backoff": "10ms",
    "max_backoff": "40ms",
    "jitter": "5ms",
    "retry_for": "0s",
}


def write_definitions(
    path: Path,
    *,
    retry: Mapping[str, Any] | None = None,
    compensation_retry: Mapping[str, Any] | None = None,
    deadline: str = "20s",
    step_deadline: str = "2s",
    steps: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """The shipped definitions with test timings (every saga's); ``steps`` overrides keys
    of named steps (step names are not shared between the shipped sagas)."""
    raw = yaml.safe_load(DEFAULT_FILE.read_text())
    for saga in raw["sagas"].values():
        saga["retry"] = {**FAST_RETRY, **(retry or {})}
        saga["compensation_retry"] = {**FAST_COMPENSATION, **(compensation_retry or {})}
        saga["deadline"] = deadline
        saga["step_deadline"] = step_deadline
        for step in saga["steps"]:
            step.update((steps or {}).get(step["name"], {}))
    path.write_text(yaml.safe_dump(raw))
    return path


def coordinator_settings(
    data_dir: Path, definitions: Path, **overrides: Any
) -> CoordinatorSettings:
    base: dict[str, Any] = {
        "port": 0,
        "data_dir": data_dir,
        "definitions_file": definitions,
        "grace_seconds": 1.0,
        "drain_seconds": 0.5,
        "breaker_minimum_calls": 50,
        "breaker_reset_timeout": 1.0,
        "sqlite_synchronous": "NORMAL",
    }
    return CoordinatorSettings(**{**base, **overrides})


def endpoints_of(cluster: Cluster) -> Endpoints:
    return Endpoints(**{f"{n}_addr": cluster.address(n) for n in cluster.servers})


def api_token(role: Role = Role.OPERATOR, subject: str = "test-operator") -> str:
    """A bearer token for the coordinator's API, signed with the session's key (conftest)."""
    return local_token(TokenSettings(), role, subject, ttl_seconds=3600)


def line(sku: str, quantity: int) -> common_pb2.LineItem:
    return common_pb2.LineItem(sku=sku, quantity=quantity)


@dataclass
class Stack:
    """The services (in-process) and a coordinator reachable at ``address``."""

    cluster: Cluster
    address: str
    coordinator: RunningServer | None = None
    app: CoordinatorApp | None = None
    _channel: grpc.aio.Channel | None = field(default=None, repr=False)
    _operator_token: str = field(default_factory=lambda: api_token(), repr=False)

    @property
    def api(self) -> coordinator_pb2_grpc.CoordinatorStub:
        """The coordinator's API, called as an operator."""
        return self.api_as(self._operator_token)

    def api_as(self, token: str | None) -> coordinator_pb2_grpc.CoordinatorStub:
        """The coordinator's API, called with ``token`` (None: with no token)."""
        if self._channel is None:
            self._channel = open_channel(self.address)
        return with_token(coordinator_pb2_grpc.CoordinatorStub(self._channel), token)

    async def reconnect(self, address: str) -> None:
        """Talk to a restarted coordinator."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        self.address = address

    async def place(
        self,
        customer: str = "alice",
        items: Iterable[tuple[str, int]] = (("SKU-MUG", 2),),
        to: str = "Berlin",
        wait: bool = True,
        key: str = "",
        timeout: float = 30.0,
    ) -> pb.PlaceOrderResponse:
        request = pb.PlaceOrderRequest(
            customer_id=customer,
            items=[line(sku, qty) for sku, qty in items],
            destination=to,
            wait=wait,
            idempotency_key=key,
        )
        reply: pb.PlaceOrderResponse = await self.api.PlaceOrder(request, timeout=timeout)
        return reply

    async def return_order(
        self, order_id: str, customer: str = "alice", wait: bool = True, key: str = ""
    ) -> pb.ReturnOrderResponse:
        request = pb.ReturnOrderRequest(
            order_id=order_id, customer_id=customer, wait=wait, idempotency_key=key
        )
        reply: pb.ReturnOrderResponse = await self.api.ReturnOrder(request, timeout=30)
        return reply

    async def saga(self, saga_id: str) -> pb.Saga:
        found: pb.Saga = await self.api.GetSaga(pb.GetSagaRequest(saga_id=saga_id), timeout=10)
        return found

    async def settled(
        self, saga_id: str, statuses: frozenset[int] = SETTLED, timeout: float = 30.0
    ) -> pb.Saga:
        """Wait (polling GetSaga) until the saga is in one of ``statuses``."""

        async def check() -> pb.Saga | None:
            saga = await self.saga(saga_id)
            return saga if saga.status in statuses else None

        found: pb.Saga = await wait_until(check, timeout=timeout, message=f"saga {saga_id}")
        return found

    async def faults(self, service: str, **actions: tuple[int, int]) -> None:
        """Replace a service's faults: action=(fail_next, latency_ms)."""
        plan = admin_pb2.FaultPlan(
            actions=[
                admin_pb2.ActionFault(action=name, fail_next=fail, latency_ms=latency)
                for name, (fail, latency) in actions.items()
            ]
        )
        await self.cluster.admin(service).SetFaults(plan)

    async def calls(self, service: str) -> dict[str, int]:
        counts = await self.cluster.admin(service).GetCallCounts(admin_pb2.GetCallCountsRequest())
        return dict(counts.calls)

    async def stock(self, sku: str) -> tuple[int, int]:
        level = await self.cluster.inventory.GetStock(inventory_pb2.GetStockRequest(sku=sku))
        return level.available, level.reserved

    async def balance(self, customer: str) -> int:
        account = await self.cluster.payment.GetAccount(
            payment_pb2.GetAccountRequest(customer_id=customer)
        )
        return int(account.balance.amount_minor)

    async def order(self, order_id: str) -> order_pb2.OrderRecord:
        record: order_pb2.OrderRecord = await self.cluster.order.GetOrder(
            order_pb2.GetOrderRequest(order_id=order_id)
        )
        return record

    async def stop_coordinator(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self.coordinator is not None:
            await self.coordinator.stop()
            self.coordinator = None


async def start_coordinator(
    cluster: Cluster, data_dir: Path, definitions: Path, **settings: Any
) -> tuple[RunningServer, CoordinatorApp]:
    """A coordinator in this process, on an ephemeral port, talking to ``cluster``."""
    config = coordinator_settings(data_dir, definitions, **settings)
    app = CoordinatorApp(config, endpoints_of(cluster))
    return await start_server(app, config), app


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    *,
    definitions: Path | None = None,
    in_process: bool = True,
    services: Mapping[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Stack]:
    """The four services and (unless ``in_process`` is False) a coordinator, all in-process,
    the services following the same definitions as the coordinator.

    ``services``: settings every service gets; ``settings``: the coordinator's.
    """
    definitions = definitions or write_definitions(tmp_path / "sagas.yaml")
    cluster = await start_cluster(
        tmp_path / "services", overrides={"definitions_file": definitions, **(services or {})}
    )
    stack = Stack(cluster, address="")
    try:
        if in_process:
            running, app = await start_coordinator(
                cluster, tmp_path / "coordinator", definitions, **settings
            )
            stack.coordinator, stack.app, stack.address = running, app, running.address
        yield stack
    finally:
        await stack.stop_coordinator()
        await cluster.stop()


def start_coordinator_process(
    cluster: Cluster,
    data_dir: Path,
    definitions: Path,
    crash_at: str = "",
    env: Mapping[str, str] | None = None,
) -> Process:
    """The coordinator as its own process (``python -m coordinator``) on a free port."""
    base = {
        "SAGAWIRE_PORT": "0",
        "SAGAWIRE_DATA_DIR": str(data_dir),
        "SAGAWIRE_DEFINITIONS_FILE": str(definitions),
        "SAGAWIRE_GRACE_SECONDS": "1",
        "SAGAWIRE_DRAIN_SECONDS": "0.5",
        "SAGAWIRE_SQLITE_SYNCHRONOUS": "NORMAL",
        "SAGAWIRE_BREAKER_MINIMUM_CALLS": "50",
        "SAGAWIRE_CRASH_AT": crash_at,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        **{f"SAGAWIRE_{n.upper()}_ADDR": cluster.address(n) for n in cluster.servers},
    }
    return Process(["-m", "coordinator"], env={**base, **(env or {})})


async def reap(process: Process) -> None:
    """Once the process has ended: let its output reader finish, close the pipe."""
    await asyncio.to_thread(process.proc.wait)
    await asyncio.to_thread(process._reader.join, 10)
    if process.proc.stdout is not None:
        process.proc.stdout.close()


async def wait_exit(process: Process, timeout: float = 20.0) -> int:
    """Wait for a process to end by itself (e.g. its crash hook fired)."""
    code = await asyncio.to_thread(process.proc.wait, timeout)
    await reap(process)
    return int(code)


async def kill_process(process: Process) -> None:
    """SIGKILL: no shutdown code runs, like a crash."""
    await asyncio.to_thread(process.kill)
    await reap(process)


async def stop_process(process: Process) -> int:
    """SIGTERM and wait (SIGKILL if it hangs)."""
    code = await asyncio.to_thread(process.stop)
    await reap(process)
    return code
