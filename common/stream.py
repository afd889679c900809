"""The EventStream servicer: a service's outbox, served over a gRPC server stream.

``Subscribe`` sends the stored backlog from the requested sequence, then live
events as they commit, in sequence order, several per message when they are
available. It waits on the outbox's commit signal rather than polling, and ends
cleanly when the service shuts down.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from common import paging
from common.admin import StreamCuts
from common.errors import InvalidArgument, Transient
from common.logs import printable
from common.metrics import StreamPositions
from common.outbox import MODE_HEADER, Outbox
from common.store import Connection, Row, Store, to_timestamp
from protos.sagawire.v1 import events_pb2, events_pb2_grpc

log = logging.getLogger(__name__)

BATCH_SIZE = 256
# An idle stream re-checks the outbox this often, as a safety net for a missed wake-up.
IDLE_RECHECK_SECONDS = 5.0
MAX_TYPES = 64
MAX_HEADERS = 16
# Longest consumer name, event type, header key or value a subscriber may send.
MAX_NAME_LENGTH = 128


class EventStreamServicer(events_pb2_grpc.EventStreamServicer):
    """Serves one service's events and lists the events its consumers gave up on."""

    def __init__(
        self,
        outbox: Outbox,
        db: Store,
        cuts: StreamCuts | None = None,
        positions: StreamPositions | None = None,
    ) -> None:
        self._outbox = outbox
        self._db = db
        # An operator may cut every open stream (Admin.CutStreams, a chaos drill).
        self._cuts = cuts or StreamCuts()
        # How far each consumer has been served (its lag behind the head, as a metric).
        self._positions = positions or StreamPositions(lambda: 0)

    async def Subscribe(
        self, request: events_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[events_pb2.EventBatch]:
        _validate(request)
        types = frozenset(request.types)
        headers = dict(request.headers)
        next_sequence = max(request.from_sequence, 1)
        mode = headers.get(MODE_HEADER)
        consumer = printable(request.consumer)
        log.info("subscriber joined consumer=%s from_sequence=%d", consumer, next_sequence)
        generation = self._cuts.generation
        self._cuts.open += 1
        follower = self._positions.key(request.consumer)
        self._positions.opened(follower, next_sequence - 1)
        try:
            while not self._outbox.closed:
                if self._cuts.generation != generation:
                    log.info("stream cut consumer=%s", consumer)
                    raise Transient("the event stream was cut by an operator")
                seen = self._outbox.stamp(mode)
                events, scanned, complete = await self._outbox.read_notified(
                    next_sequence, BATCH_SIZE, types, headers, reader=request.consumer
                )
                if events:
                    yield events_pb2.EventBatch(events=events)
                next_sequence = max(next_sequence, scanned + 1)
                self._positions.delivered(follower, next_sequence - 1)
                if not complete:
                    continue
                # Caught up: read again only after a commit since ``seen`` (at once if one
                # came while this read ran), so a burst of commits costs one read, not one each.
                await self._outbox.wait_for_commit(seen, IDLE_RECHECK_SECONDS, mode)
        finally:
            self._cuts.open -= 1
            self._positions.closed(follower)
        log.info("stream ended (shutdown) consumer=%s", consumer)

    async def ListPoisonEvents(
        self, request: events_pb2.ListPoisonEventsRequest, context: grpc.aio.ServicerContext
    ) -> events_pb2.ListPoisonEventsResponse:
        size = paging.page_size(request.page_size)
        after = paging.decode_token(request.page_token, "poison", (str, str, int))

        def query(conn: Connection) -> list[Row]:
            where = "WHERE (recorded_at, producer, sequence) > (?, ?, ?)" if after else ""
            return conn.execute(
                f"SELECT * FROM poison_event {where}"
                " ORDER BY recorded_at, producer, sequence LIMIT ?",
                [*(after or ()), size + 1],
            ).fetchall()

        rows = await self._db.read(query)
        page, token = paging.cut(
            rows, size, "poison", lambda r: (r["recorded_at"], r["producer"], r["sequence"])
        )
        return events_pb2.ListPoisonEventsResponse(
            events=[
                events_pb2.PoisonEvent(
                    producer=r["producer"],
                    sequence=r["sequence"],
                    event_id=r["event_id"],
                    type=r["type"],
                    error=r["error"],
                    recorded_at=to_timestamp(r["recorded_at"]),
                )
                for r in page
            ],
            next_page_token=token,
        )


def _validate(request: events_pb2.SubscribeRequest) -> None:
    if request.from_sequence < 0:
        raise InvalidArgument("from_sequence", "must not be negative")
    # The consumer's name goes into log lines: short, and nothing that could end one.
    if len(request.consumer) > MAX_NAME_LENGTH:
        raise InvalidArgument("consumer", f"must be at most {MAX_NAME_LENGTH} characters")
    if not request.consumer.isprintable():
        raise InvalidArgument("consumer", "must not contain control characters")
    if len(request.types) > MAX_TYPES:
        raise InvalidArgument("types", f"must list at most {MAX_TYPES} event types")
    for i, event_type in enumerate(request.types):
        if len(event_type) > MAX_NAME_LENGTH:
            raise InvalidArgument(f"types[{i}]", f"must be at most {MAX_NAME_LENGTH} characters")
    if len(request.headers) > MAX_HEADERS:
        raise InvalidArgument("headers", f"must have at most {MAX_HEADERS} entries")
    for key, value in request.headers.items():
        if len(key) > MAX_NAME_LENGTH or len(value) > MAX_NAME_LENGTH:
            raise InvalidArgument(
                "headers", f"keys and values must be at most {MAX_NAME_LENGTH} characters"
            )
