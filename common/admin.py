"""The Admin servicer: change fault injection at run time, read call counts, cut streams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence

import grpc
from pydantic import ValidationError

from common.config import FaultConfig
from common.errors import InvalidArgument
from common.faults import FaultInjector
from protos.sagawire.v1 import admin_pb2, admin_pb2_grpc


def unknown_actions(config: FaultConfig, known: Collection[str]) -> list[str]:
    """The actions a fault plan names that the service does not run (sorted)."""
    return sorted(set(config.actions) - set(known))


def describe_unknown(unknown: Sequence[str], known: Collection[str]) -> str:
    """E.g. "unknown action 'chrage' (this service runs: charge, refund)"."""
    names = ", ".join(repr(name) for name in unknown)
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown action{plural} {names} (this service runs: {', '.join(sorted(known))})"


def plan_to_config(plan: admin_pb2.FaultPlan, known: Collection[str] | None = None) -> FaultConfig:
    """Validate a FaultPlan from the wire into a FaultConfig; with ``known``, every action a
    rule names must be one of them (an action or compensation the service runs)."""
    config = _validated(plan)
    if known is not None and (unknown := unknown_actions(config, known)):
        raise InvalidArgument(f"actions.{unknown[0]}", describe_unknown(unknown, known))
    return config


def _validated(plan: admin_pb2.FaultPlan) -> FaultConfig:
    try:
        # Validated as one document, so an error's location names the action too.
        return FaultConfig.model_validate(
            {
                "unavailable_rate": plan.unavailable_rate,
                "latency_ms": plan.latency_ms,
                "seed": plan.seed,
                "actions": {
                    a.action: {"fail_next": a.fail_next, "latency_ms": a.latency_ms}
                    for a in plan.actions
                },
            }
        )
    except ValidationError as error:
        first = error.errors()[0]
        raise InvalidArgument(".".join(str(p) for p in first["loc"]), first["msg"]) from None


def config_to_plan(config: FaultConfig) -> admin_pb2.FaultPlan:
    return admin_pb2.FaultPlan(
        unavailable_rate=config.unavailable_rate,
        latency_ms=config.latency_ms,
        seed=config.seed,
        actions=[
            admin_pb2.ActionFault(action=name, fail_next=rule.fail_next, latency_ms=rule.latency_ms)
            for name, rule in config.actions.items()
        ],
    )


class StreamCuts:
    """A service's open event streams, so an operator can cut them all at once.

    Each ``Subscribe`` notes the :attr:`generation` it started in and ends with
    ``UNAVAILABLE`` once the generation moves on; :meth:`cut` moves it and wakes the
    idle streams (``wake``, the outbox's commit signal), so they notice at once.
    """

    def __init__(self, wake: Callable[[], Awaitable[None]] | None = None) -> None:
        self.generation = 0
        self.open = 0
        self._wake = wake

    async def cut(self) -> int:
        """End every open stream; returns how many were open."""
        self.generation += 1
        count = self.open
        if self._wake is not None:
            await self._wake()
        return count


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """``actions``: the actions and compensations the service runs, the only names a fault
    rule may name (None: any name, for tests of the injector alone)."""

    def __init__(
        self,
        faults: FaultInjector,
        streams: StreamCuts | None = None,
        actions: Collection[str] | None = None,
    ) -> None:
        self._faults = faults
        self._streams = streams
        self._actions = actions

    async def SetFaults(
        self, request: admin_pb2.FaultPlan, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FaultPlan:
        self._faults.configure(plan_to_config(request, self._actions))
        return config_to_plan(self._faults.config)

    async def GetFaults(
        self, request: admin_pb2.GetFaultsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.FaultPlan:
        return config_to_plan(self._faults.config)

    async def GetCallCounts(
        self, request: admin_pb2.GetCallCountsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CallCounts:
        return admin_pb2.CallCounts(calls=dict(self._faults.calls))

    async def CutStreams(
        self, request: admin_pb2.CutStreamsRequest, context: grpc.aio.ServicerContext
    ) -> admin_pb2.CutStreamsResponse:
        count = await self._streams.cut() if self._streams is not None else 0
        return admin_pb2.CutStreamsResponse(streams=count)
