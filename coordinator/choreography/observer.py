"""The choreography observer: the coordinator's view of sagas it does not drive.

In choreography the services carry a saga on by reacting to each other's events.
The observer follows all four event streams and records what each event says
(:mod:`coordinator.choreography.observation`) in the same saga log the runner writes, so
``GetSaga``, ``ListSagas``, ``WatchSaga`` and ``PlaceOrder(wait)`` work the same
in both modes. A choreographed saga the services carry with no outcome by its
deadline is marked STALLED rather than left hanging silently; its events, when
they come, still settle it.

Two writers record a choreographed saga: the runner (its first step) and the
observer (the rest). Whichever writes the last fact must see the other's, or the
saga never settles: the runner reads the saga back after its write
(``SagaRun.start_choreography``), and the observer, when the runner wrote between its
read and its write, reads it back too.

Offsets per producer live in the observer's own SQLite file (with replicas sharing a
PostgreSQL log, in that log: one replica observes at a time, and the offsets follow the
role from replica to replica; coordinator/engine/replicas.py). They move only after a
batch's changes are durable in the saga log, and are written at most every half second
(coordinator/choreography/offsets.py): a batch seen again after a crash plans no change
(see :func:`coordinator.choreography.observation.changes_for`), so nothing is recorded
twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path

from common.certs import COORDINATOR
from common.config import SERVICE_NAMES, Endpoints
from common.event_transport import EventTransport, Follow, GrpcEvents
from common.outbox import MODE_HEADER
from common.store import utc_now
from common.supervisor import Supervisor
from common.telemetry import consumer_span, saga_metrics
from common.tls import Identity
from contract.definitions import Definitions, SagaMode, load_definitions
from coordinator.choreography.observation import (
    OPEN,
    Observation,
    changes_for,
    observe,
    observed_types,
    settlement,
)
from coordinator.choreography.offsets import (
    OFFSETS_FILE,
    FileOffsets,
    HandledOffsets,
    ObserverOffsets,
)
from coordinator.engine.plan import carried_by_services
from coordinator.engine.telemetry import CarriedSpans
from coordinator.log.records import UNFINISHED, Change, Kind, SagaRecord, SagaStatus, apply
from coordinator.log.saga_log import SagaLog, StatusConflict
from protos.sagawire.v1 import events_pb2

log = logging.getLogger(__name__)

CHOREOGRAPHY = SagaMode.CHOREOGRAPHY.value
# Producers send the observer only the events of choreographed sagas.
_CHOREOGRAPHED_ONLY = {MODE_HEADER: CHOREOGRAPHY}


def _planned(
    record: SagaRecord, observations: list[Observation]
) -> tuple[list[Change], SagaRecord]:
    """The changes that record ``observations``, planned against the record as the log
    will have it after the ones before (records.apply is what load would show), and
    the record after them all."""
    batch: list[Change] = []
    planned = record
    for seen in observations:
        # The observer's span joins the saga's one trace, like a reaction's.
        with consumer_span(seen.event, f"observe {seen.event_type}"):
            for change in changes_for(planned, seen):
                wanted = change.require_status
                if wanted is not None and planned.status not in wanted:
                    break  # the log would refuse it: settled a moment ago
                planned, _ = apply(planned, change)
                batch.append(change)
    return batch, planned


def _count_outcome(saga_type: str, change: Change, created_at: datetime) -> None:
    """The saga metrics of a choreographed saga's end (the runner counts orchestrated ones)."""
    duration = (change.at - created_at).total_seconds()
    if change.saga_status is SagaStatus.COMPLETED:
        saga_metrics().saga_completed(saga_type, CHOREOGRAPHY, duration)
    elif change.saga_status is SagaStatus.COMPENSATED:
        saga_metrics().saga_compensated(saga_type, CHOREOGRAPHY, duration)


class Observer:
    """Follows the four services' streams and keeps choreographed sagas' views current."""

    def __init__(
        self,
        saga_log: SagaLog,
        endpoints: Endpoints,
        data_dir: Path,
        synchronous: str = "FULL",
        channel_options: Sequence[tuple[str, int]] = (),
        stall_check_seconds: float = 1.0,
        clock: Callable[[], datetime] = utc_now,
        carried: CarriedSpans | None = None,
        identity: Identity | None = None,
        definitions: Definitions | None = None,
        offsets: ObserverOffsets | None = None,
        transport: EventTransport | None = None,
    ) -> None:
        self._log = saga_log
        self._carried = carried if carried is not None else CarriedSpans()
        # In a file of the data dir, unless the log is shared by replicas (the observer
        # moves between them, its offsets with it).
        self._saved_offsets = offsets or FileOffsets(data_dir / OFFSETS_FILE, synchronous)
        self._offsets = HandledOffsets(self._saved_offsets)
        self._stall_check = stall_check_seconds
        self._clock = clock
        # To read events back into steps, and tell which overdue sagas the services carry
        # (None: the shipped definitions).
        self._definitions = definitions if definitions is not None else load_definitions()
        # One lock per saga being recorded, dropped when its last user leaves.
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # The services' gRPC streams, or the same events on NATS JetStream.
        self._transport = transport or GrpcEvents(
            identity or Identity.from_env(COORDINATOR), channel_options
        )
        self.subscribers = [
            self._transport.follower(
                Follow(
                    producer=name,
                    address=endpoints.of(name),
                    consumer="coordinator-observer",
                    types=observed_types(self._definitions),
                    next_sequence=partial(self._next_sequence, name),
                    handle=partial(self._handle, name),
                    match_headers=_CHOREOGRAPHED_ONLY,
                )
            )
            for name in SERVICE_NAMES
        ]
        # Its followers and the stall sweep: an unexpected error restarts one, never ends it.
        self._tasks = Supervisor()

    @property
    def running(self) -> bool:
        """Started and not stopped (its supervisor restarts a task that fails)."""
        return bool(self._tasks.running)

    async def start(self) -> None:
        # Where the saved offsets say: another replica may have observed meanwhile.
        self._offsets = HandledOffsets(self._saved_offsets)
        await self._saved_offsets.open()
        await self._transport.open()
        for subscriber in self.subscribers:
            self._tasks.start(f"observe-{subscriber.producer}", subscriber.run)
        self._tasks.start("observe-stalls", self._flag_stalled)
        self._tasks.start("observe-offsets", self._offsets.save_each_interval)

    async def stop(self) -> None:
        await self._tasks.stop()
        await self._transport.close()
        try:
            await self._offsets.save()  # what was recorded since the last interval's write
        except Exception as error:  # e.g. the observer's role was lost (replicas)
            log.warning("observer offsets not saved (re-read, recorded once) error=%r", error)
        await self._saved_offsets.close()
        self._carried.end_all()  # exported as they are, not lost

    async def _next_sequence(self, producer: str) -> int:
        return await self._offsets.next_sequence(producer)

    async def _handle(self, producer: str, events: Sequence[events_pb2.Event]) -> None:
        by_saga: defaultdict[str, list[Observation]] = defaultdict(list)
        for event in events:
            seen = observe(event, self._definitions)
            if seen is not None:
                by_saga[seen.saga_id].append(seen)
        # Sagas are independent: record them concurrently, each in its events' order.
        with self._log.as_observer():
            await asyncio.gather(
                *(self._record(saga_id, seen) for saga_id, seen in by_saga.items())
            )
        self._offsets.handled(producer, events[-1].sequence)

    @contextlib.asynccontextmanager
    async def _saga_lock(self, saga_id: str) -> AsyncIterator[None]:
        """Serialise the observer's writes to one saga (its four streams race)."""
        lock, users = self._locks.get(saga_id, (asyncio.Lock(), 0))
        self._locks[saga_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[saga_id]
            if users == 1:
                del self._locks[saga_id]
            else:
                self._locks[saga_id] = (lock, users - 1)

    async def _record(self, saga_id: str, observations: list[Observation]) -> None:
        async with self._saga_lock(saga_id):
            while True:
                record = await self._log.load(saga_id)
                if record is None or record.mode != CHOREOGRAPHY:
                    return  # started elsewhere (e.g. by a test), or not ours to watch
                batch, planned = _planned(record, observations)
                if not batch:
                    return
                try:
                    # One load and one commit per saga per batch of events.
                    written = await self._log.append_many(saga_id, batch, planned)
                except StatusConflict:
                    # The runner settled the saga between our load and our write (the
                    # batch wrote nothing): plan again against what the log now holds.
                    continue
                self._recorded(record, batch)
                if planned.status in OPEN and written[0].seq != record.last_seq + 1:
                    # The runner wrote between our load and our write (a first step's
                    # outcome, after a restart): neither write saw the other, and they
                    # may add up only together.
                    await self._settle(saga_id)
                return

    async def _settle(self, saga_id: str) -> None:
        """Settle the saga if what the log holds now adds up to an outcome."""
        record = await self._log.load(saga_id)
        if record is None:
            return
        settled = settlement(record, self._clock())
        if settled is None:
            return
        with contextlib.suppress(StatusConflict):  # the runner settled it meanwhile
            await self._log.append(saga_id, settled)
            self._recorded(record, [settled])

    def _recorded(self, record: SagaRecord, changes: Sequence[Change]) -> None:
        for change in changes:
            _count_outcome(record.definition, change, record.created_at)
            if change.saga_status is not None:
                self._carried.settled(record.saga_id, change.saga_status)

    def _stalls(self, record: SagaRecord | None) -> bool:
        """Whether an overdue saga is the services' to finish (the coordinator finishes
        the start it drives, and compensates it if it failed)."""
        if record is None or record.status not in UNFINISHED:
            return False
        definition = self._definitions.get(record.definition)
        return definition is not None and carried_by_services(definition, record)

    async def _flag_stalled(self) -> None:
        with self._log.as_observer():
            await self._flag_stalled_each_interval()

    async def _flag_stalled_each_interval(self) -> None:
        while True:
            await asyncio.sleep(self._stall_check)
            now = self._clock()
            for saga_id in await self._log.overdue(CHOREOGRAPHY, now):
                async with self._saga_lock(saga_id):
                    if not self._stalls(await self._log.load(saga_id)):
                        continue
                    with contextlib.suppress(StatusConflict):  # it ended meanwhile
                        await self._log.append(
                            saga_id,
                            Change(
                                kind=Kind.SAGA_STALLED,
                                at=now,
                                saga_status=SagaStatus.STALLED,
                                require_status=UNFINISHED,
                                detail="no outcome observed within the saga's deadline",
                            ),
                        )
                        log.warning("choreographed saga stalled saga_id=%s", saga_id)
                        self._carried.settled(saga_id, SagaStatus.STALLED)
