"""The participants as the coordinator calls them: a port and its gRPC adapter.

:class:`ParticipantClient` is what the runner and the finished notifier need of the
participants, so unit tests drive them with a fake (tests/unit/fakes.py).
:class:`Participants` is the real one: one channel and stub per participant name.

Addresses come from :class:`common.config.Endpoints` (``SAGAWIRE_<NAME>_ADDR``).
Every channel presents the coordinator's certificate and accepts only a server whose
certificate names the participant it calls (common/tls.py).
gRPC's own retries are off: the call policy (common.policy) is the one retry layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import grpc

from common.certs import COORDINATOR
from common.config import Endpoints
from common.tls import Identity
from protos.sagawire.v1 import participant_pb2, participant_pb2_grpc

_CHANNEL_OPTIONS = [
    ("grpc.enable_retries", 0),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.max_receive_message_length", 4 << 20),
    # A participant that restarts is back in a second or two: reconnect within that,
    # not after gRPC's default backoff (1 s growing to 120 s), during which every call
    # would fail at once with UNAVAILABLE and spend retry budgets for nothing.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


class ParticipantClient(Protocol):
    """Execute / Compensate / SagasFinished on any participant, by name.

    ``deadline`` is the call's deadline in seconds. A failed call raises what the
    transport raises; the call policy translates it into the error tree.
    """

    async def execute(
        self, participant: str, request: participant_pb2.StepRequest, deadline: float
    ) -> participant_pb2.StepReply: ...

    async def compensate(
        self, participant: str, request: participant_pb2.StepRequest, deadline: float
    ) -> participant_pb2.StepReply: ...

    async def sagas_finished(
        self, participant: str, saga_ids: Sequence[str], deadline: float
    ) -> participant_pb2.SagasFinishedReply: ...


class Participants(ParticipantClient):
    """Execute / Compensate on any participant, by name, over gRPC.

    ``deadline`` is the call's gRPC deadline in seconds (sent to the participant too).
    """

    def __init__(
        self,
        endpoints: Endpoints,
        names: Iterable[str],
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        identity: Identity | None = None,
    ) -> None:
        self._identity = identity or Identity.from_env(COORDINATOR)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, participant_pb2_grpc.ParticipantStub] = {}
        self._endpoints = endpoints
        self._interceptors = list(interceptors)
        for name in names:
            self.address(name)  # fail at start, not at the first saga

    def address(self, name: str) -> str:
        try:
            return self._endpoints.of(name)
        except AttributeError:
            raise ValueError(
                f"no address for participant {name!r} (set SAGAWIRE_{name.upper()}_ADDR)"
            ) from None

    def _stub(self, name: str) -> participant_pb2_grpc.ParticipantStub:
        stub = self._stubs.get(name)
        if stub is None:
            channel = self._identity.aio_channel(
                self.address(name),
                peer=name,
                options=_CHANNEL_OPTIONS,
                interceptors=self._interceptors,
            )
            self._channels[name] = channel
            stub = self._stubs[name] = participant_pb2_grpc.ParticipantStub(channel)
        return stub

    async def execute(
        self, participant: str, request: participant_pb2.StepRequest, deadline: float
    ) -> participant_pb2.StepReply:
        reply: participant_pb2.StepReply = await self._stub(participant).Execute(
            request, timeout=deadline
        )
        return reply

    async def compensate(
        self, participant: str, request: participant_pb2.StepRequest, deadline: float
    ) -> participant_pb2.StepReply:
        reply: participant_pb2.StepReply = await self._stub(participant).Compensate(
            request, timeout=deadline
        )
        return reply

    async def sagas_finished(
        self, participant: str, saga_ids: Sequence[str], deadline: float
    ) -> participant_pb2.SagasFinishedReply:
        reply: participant_pb2.SagasFinishedReply = await self._stub(participant).SagasFinished(
            participant_pb2.SagasFinishedRequest(saga_ids=saga_ids), timeout=deadline
        )
        return reply

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
