"""Breaking a running stack as the schedule says, through its own doors only.

Faults go through each service's Admin API (``SetFaults``, ``CutStreams``); kills are
SIGKILLs of the processes of the chaos run's own stack, each followed by a restart on
the same port and store. A restarted service starts with no faults, so its fault plan
is set again as soon as it is SERVING.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

import grpc

from bench.stack_under_test import BenchError, BenchStack
from cli.chaos_drive import Progress, open_channel
from cli.chaos_schedule import COORDINATOR, Action, ChaosEvent, fault_plan
from protos.sagawire.v1 import admin_pb2, admin_pb2_grpc

if TYPE_CHECKING:
    from protos.sagawire.v1.admin_pb2_grpc import AdminAsyncStub

_T = TypeVar("_T")
_ADMIN_TIMEOUT = 10.0
# The Admin API of a service that was just started may need a moment to answer.
_ADMIN_RETRY_FOR = 15.0


@dataclass(frozen=True)
class Blow:
    """An event that was carried out."""

    event: ChaosEvent
    settled: int  # sagas settled when it fired
    # Seconds from the kill until the process was SERVING again (0 for a cut); or the
    # number of streams a cut ended.
    seconds: float = 0.0
    streams: int = 0

    def describe(self) -> str:
        what = f"{self.event.what} at {self.settled} settled"
        if self.event.action is Action.cut_streams:
            return f"{what}: {self.streams} streams ended"
        return f"{what}: SERVING again after {self.seconds:.2f}s"


class Saboteur:
    """Sets faults on a stack's services and carries out a schedule of kills and cuts."""

    def __init__(
        self,
        stack: BenchStack,
        seed: int,
        fault_rate: float,
        on_blow: Callable[[Blow], None] | None = None,
    ) -> None:
        self._stack = stack
        self._seed = seed
        self._rate = fault_rate
        self._on_blow = on_blow
        self._faulty = False
        self.blows: list[Blow] = []

    async def _admin(
        self, service: str, call: Callable[[AdminAsyncStub], Awaitable[_T]]
    ) -> list[_T]:
        """``call`` on the Admin API of each of the service's replicas."""
        addresses = self._stack.admin_addresses(service)
        return list(await asyncio.gather(*(self._admin_at(a, service, call) for a in addresses)))

    async def _admin_at(
        self, address: str, service: str, call: Callable[[AdminAsyncStub], Awaitable[_T]]
    ) -> _T:
        """``call`` on one Admin API, retried while it is not reachable yet."""
        until = time.monotonic() + _ADMIN_RETRY_FOR
        async with open_channel(address, service) as channel:
            stub = cast("AdminAsyncStub", admin_pb2_grpc.AdminStub(channel))
            while True:
                try:
                    return await call(stub)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                        raise BenchError(
                            f"{service} does not serve the Admin API: start it with "
                            "SAGAWIRE_ADMIN_ENABLED=true (sagawire up does)"
                        ) from None
                    if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > until:
                        raise BenchError(f"{service} Admin: {error.details()}") from None
                await asyncio.sleep(0.1)

    async def _set_faults(self, service: str, plan: admin_pb2.FaultPlan) -> None:
        await self._admin(service, lambda stub: stub.SetFaults(plan, timeout=_ADMIN_TIMEOUT))

    async def inject(self) -> None:
        """Every service fails its participant calls and reactions at the fault rate."""
        self._faulty = True
        await asyncio.gather(
            *(self._set_faults(s, fault_plan(self._seed, s, self._rate)) for s in self._services)
        )

    async def clear(self) -> None:
        """No more faults anywhere."""
        self._faulty = False
        await asyncio.gather(*(self._set_faults(s, admin_pb2.FaultPlan()) for s in self._services))

    @property
    def _services(self) -> Mapping[str, str]:
        return self._stack.addresses()

    async def _cut(self, service: str) -> int:
        request = admin_pb2.CutStreamsRequest()
        replies = await self._admin(
            service, lambda stub: stub.CutStreams(request, timeout=_ADMIN_TIMEOUT)
        )
        return sum(int(reply.streams) for reply in replies)

    async def _kill(self, event: ChaosEvent) -> float:
        """SIGKILL the target, keep it down for the event's downtime, start it again;
        returns seconds from the kill until it was SERVING."""
        killed = time.perf_counter()
        if event.target == COORDINATOR:
            self._stack.kill_coordinator()
        else:
            self._stack.kill_service(event.target)
        # A deliberate outage, part of the drill (not a wait for a condition).
        await asyncio.sleep(event.downtime)
        if event.target == COORDINATOR:
            await self._stack.restart_coordinator()
        else:
            await self._stack.restart_service(event.target)
            if self._faulty:
                await self._set_faults(
                    event.target, fault_plan(self._seed, event.target, self._rate)
                )
        return time.perf_counter() - killed

    async def carry_out(self, schedule: tuple[ChaosEvent, ...], progress: Progress) -> None:
        """Each event once its number of sagas settled, in order; the events the run
        never reached (it finished first) are skipped."""
        for event in schedule:
            if not await progress.reach(event.after):
                return
            settled = progress.settled
            if event.action is Action.cut_streams:
                blow = Blow(event, settled, streams=await self._cut(event.target))
            else:
                blow = Blow(event, settled, seconds=await self._kill(event))
            self.blows.append(blow)
            if self._on_blow is not None:
                self._on_blow(blow)
