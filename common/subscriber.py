"""Following one producer's event stream over gRPC: subscribe, hand over batches, reconnect.

The subscriber asks where to resume each time it (re)connects, so whoever keeps
the offset (the inbox of a service, the coordinator's observer) decides what
"already seen" means. Disconnects and producer restarts are retried with
jittered exponential backoff (tenacity), for as long as the task runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

import grpc
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from common.tls import Identity
from protos.sagawire.v1 import events_pb2, events_pb2_grpc

# What it returns is the handler's own (the NATS transport reads it; a stream needs nothing).
BatchHandler = Callable[[Sequence[events_pb2.Event]], Awaitable[object]]


class _StreamEnded(Exception):
    """The producer closed the stream (it is shutting down): reconnect."""


@dataclass
class Subscriber:
    """Follows ``producer`` at ``address`` until cancelled.

    The stream is accepted only from a server whose certificate names ``producer``.
    """

    producer: str
    address: str
    consumer: str
    types: Sequence[str]
    # Where to resume: the first sequence not yet handled.
    next_sequence: Callable[[], Awaitable[int]]
    handle: BatchHandler
    # Who follows: the certificate presented to the producer.
    identity: Identity
    channel_options: Sequence[tuple[str, int]] = ()
    # Only events carrying these headers (filtered by the producer, not shipped).
    match_headers: Mapping[str, str] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Follow the stream forever, reconnecting with backoff; ends only when cancelled."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((grpc.aio.AioRpcError, _StreamEnded)),
            wait=wait_random_exponential(multiplier=0.05, max=2.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._follow()

    async def _follow(self) -> None:
        async with self.identity.aio_channel(
            self.address, peer=self.producer, options=self.channel_options
        ) as channel:
            stub = events_pb2_grpc.EventStreamStub(channel)
            request = events_pb2.SubscribeRequest(
                from_sequence=await self.next_sequence(),
                consumer=self.consumer,
                types=list(self.types),
                headers=dict(self.match_headers),
            )
            stream = stub.Subscribe(request)
            self.connected.set()
            try:
                async for batch in stream:
                    await self.handle(batch.events)
            finally:
                self.connected.clear()
        raise _StreamEnded(self.producer)
