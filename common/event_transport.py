"""The event transport: how a service's committed events reach the processes that follow it.

The outbox (common/outbox.py) is the source of truth in every case; a transport only
carries what it committed, and the followers (a service's :class:`common.inbox.Consumer`,
the coordinator's observer) keep their own offsets and inboxes, so what "already
seen" means never depends on the transport. Two adapters:

- **gRPC streams** (the default, :class:`GrpcEvents`): each producer serves its outbox
  over ``Subscribe`` (common/stream.py); a follower is a :class:`common.subscriber.Subscriber`
  that resumes from its offset after every reconnect. Nothing to run on the producer's side.
- **NATS JetStream** (``SAGAWIRE_EVENTS=nats://...``, common/nats_events.py): a relay in each
  producer publishes its committed events to a JetStream stream, and a follower is a
  durable JetStream consumer that acknowledges an event once its effect is committed.

:func:`event_transport` is the one place that chooses between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from common.admin import StreamCuts
from common.config import EventSettings
from common.metrics import ConsumerLags
from common.outbox import Outbox
from common.store import Store
from common.subscriber import Subscriber
from common.tls import Identity
from protos.sagawire.v1 import events_pb2

# Applies a batch of one producer's events, in order, returning once its effects are
# durable; the ids of the events it recorded as poison (None: none).
BatchHandler = Callable[[Sequence[events_pb2.Event]], Awaitable[Collection[str] | None]]
# Records an event the transport gives up on (undecodable, or past its delivery budget)
# as poison: ``(event, why)``; the event may hold only what could be read of it.
GiveUp = Callable[[events_pb2.Event, str], Awaitable[None]]


@dataclass(frozen=True)
class Follow:
    """What a follower of one producer's events needs, whatever carries them."""

    producer: str
    # The producer's gRPC address (the gRPC transport dials it; NATS does not need it).
    address: str
    # Who follows: a service's name, or the coordinator's observer.
    consumer: str
    # The event types wanted (all when empty).
    types: Sequence[str]
    # The first sequence not yet handled (the gRPC transport resumes from it).
    next_sequence: Callable[[], Awaitable[int]]
    handle: BatchHandler
    # Only events carrying these headers (e.g. choreographed sagas only).
    match_headers: Mapping[str, str] = field(default_factory=dict)
    give_up: GiveUp | None = None


class Follower(Protocol):
    """Follows one producer until cancelled, reconnecting as often as it must."""

    @property
    def producer(self) -> str: ...

    @property
    def connected(self) -> asyncio.Event: ...

    async def run(self) -> None: ...


class Relay(Protocol):
    """Carries one producer's committed events to the transport (NATS only)."""

    @property
    def lags(self) -> ConsumerLags:
        """Its consumers' lag, as the metrics report it."""
        ...

    async def run(self) -> None:
        """Publish forever; ends only when cancelled."""
        ...


class EventTransport(Protocol):
    """One process's way of sending and receiving events."""

    @property
    def name(self) -> str:
        """``grpc`` or ``nats``, as logs and metrics name it."""
        ...

    @property
    def in_order(self) -> bool:
        """Whether a follower is handed each producer's events in sequence order, even
        after a crash (so an event below a consumer's offset was applied)."""
        ...

    async def open(self) -> None:
        """Connect (before any follower or relay runs)."""
        ...

    async def close(self) -> None: ...

    def follower(self, follow: Follow) -> Follower: ...

    def relay(
        self, source: str, outbox: Outbox, db: Store, cuts: StreamCuts | None = None
    ) -> Relay | None:
        """What publishes ``source``'s outbox, if this transport needs one (gRPC serves it).

        ``cuts``: an operator's Admin.CutStreams restarts it from its stored position."""
        ...


class GrpcEvents:
    """Events over the producers' gRPC ``Subscribe`` streams (mutual TLS as ``identity``)."""

    name = "grpc"
    in_order = True  # each stream resumes from the follower's offset

    def __init__(self, identity: Identity, channel_options: Sequence[tuple[str, int]] = ()) -> None:
        self._identity = identity
        self._channel_options = channel_options

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def follower(self, follow: Follow) -> Follower:
        return Subscriber(
            producer=follow.producer,
            address=follow.address,
            consumer=follow.consumer,
            types=follow.types,
            next_sequence=follow.next_sequence,
            handle=follow.handle,
            identity=self._identity,
            channel_options=self._channel_options,
            match_headers=follow.match_headers,
        )

    def relay(
        self, source: str, outbox: Outbox, db: Store, cuts: StreamCuts | None = None
    ) -> Relay | None:
        return None  # the service's EventStream serves its outbox


def event_transport(
    settings: EventSettings,
    identity: Identity,
    channel_options: Sequence[tuple[str, int]] = (),
) -> EventTransport:
    """The transport ``SAGAWIRE_EVENTS`` names, for a process acting as ``identity``."""
    if not settings.events_on_nats:
        return GrpcEvents(identity, channel_options)
    from common.nats_events import NatsEvents  # only a NATS stack needs the client

    return NatsEvents(settings, identity)
