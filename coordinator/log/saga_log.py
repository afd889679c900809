"""The saga log: the coordinator's write-ahead log of every saga, behind a small interface.

:class:`SagaLog` is the port; :class:`coordinator.log.sqlite.SqliteSagaLog` is the
embedded adapter, :class:`coordinator.log.postgres.PostgresSagaLog` the one coordinator
replicas share (with leases and fencing), and :class:`InMemorySagaLog` serves unit
tests. One contract test suite (``tests/unit/test_saga_log.py``) runs against every adapter.

Rules every adapter keeps:

- :meth:`SagaLog.create`, :meth:`SagaLog.append` and :meth:`SagaLog.append_many` return
  only once the change is durable: a saga's birth and its outcome, and whatever the
  engine cannot take back, are on disk before anyone acts on them or is told them.
- :meth:`SagaLog.append_later` takes the transitions in between, which every
  participant call makes replayable through the barrier (a repeat returns the first
  result; a late execute after its compensation is refused): they are applied in
  order and made durable soon (group-committed in the background), and a crash may
  lose the last of them. Recovery then resumes from the last durable transition and
  replays the calls made since, which converges to the same outcome. A change that
  settles the saga is never one of them: an adapter writes it durably whichever
  method it came through.
- The appends of one saga are applied in the order they were called, whichever
  method they came through; a read sees every append called before it.
- ``load`` after an ``append`` shows exactly what :func:`records.apply` computes.
- The history of transitions is append-only.
- A saga leaves the log only through :meth:`SagaLog.prune_finished` (retention):
  finished, its participants told so, and older than the window.

Who owns a saga's record: the log (its file or database) owns what is durable. In
memory, a saga that a run drives has one record, its :class:`LiveRecord`: the run
applies each change to it before writing it, and, while the run has it pinned
(:meth:`SagaLog.pin`), an adapter that keeps records in memory serves reads of the saga
from it (:class:`coordinator.log.cache.RecordCache` for SQLite) instead of a copy of
its own. Only a saga no one else writes is pinned: an orchestrated saga, driven by one
run of one process. A choreographed saga is also written by the observer: its one
in-memory record is the adapter's (the SQLite log's cache keeps it from its creation),
and its run holds the versions the log has, never one of its own (coordinator/engine/
runner.py).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime

from common.errors import BusinessRejection, NotFound, Transient
from coordinator.log.records import (
    TERMINAL,
    UNFINISHED,
    Change,
    NewSaga,
    SagaRecord,
    SagaStatus,
    Transition,
    apply,
    first_transition,
    new_record,
)

# Sagas listed newest first; a page continues before (created_at, saga_id).
Cursor = tuple[datetime, str]


@dataclass(frozen=True)
class SagaFilter:
    """Which sagas a list or a count takes; the empty filter takes every saga."""

    definition: str = ""
    mode: str = ""
    # Created at or after (``created_after``), and before (``created_before``).
    created_after: datetime | None = None
    created_before: datetime | None = None

    def matches(self, record: SagaRecord) -> bool:
        return (
            (not self.definition or record.definition == self.definition)
            and (not self.mode or record.mode == self.mode)
            and (self.created_after is None or record.created_at >= self.created_after)
            and (self.created_before is None or record.created_at < self.created_before)
        )


EVERY_SAGA = SagaFilter()


class StatusConflict(BusinessRejection):
    """A change required a status the saga is not in (e.g. retrying a running saga)."""

    def __init__(self, saga_id: str, status: SagaStatus, wanted: frozenset[SagaStatus]) -> None:
        names = " or ".join(sorted(s.value for s in wanted))
        super().__init__("SAGA_STATUS_CONFLICT", f"saga {saga_id} is {status.value}, not {names}")
        self.status = status


class IdempotencyConflict(BusinessRejection):
    """An idempotency key came back with a different request."""

    def __init__(self, key: str) -> None:
        super().__init__(
            "IDEMPOTENCY_KEY_REUSED",
            f"idempotency key {key!r} was already used for a different request",
        )


class LeaseLost(Exception):
    """A write of a replica whose lease was taken over (it was paused or cut off past its
    expiry): refused, and the replica stops driving the saga. Not a :class:`SagawireError`
    on purpose: nothing may catch it as a step's failure and write on."""

    def __init__(self, saga_id: str, owner: str) -> None:
        super().__init__(f"saga {saga_id}: lease lost (now {owner or 'nobody'}'s)")
        self.saga_id = saga_id


class OwnedElsewhere(Transient):
    """A replica that holds no lease on a saga wrote to it while another replica's lease
    is live (e.g. ``RetrySaga`` while the saga is still being driven): try again."""

    def __init__(self, saga_id: str, owner: str) -> None:
        super().__init__(f"saga {saga_id} is being driven by coordinator replica {owner}")


class Listener:
    """Woken (``changed`` set) whenever its saga changes, or when everyone is woken up."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()
        # The saga's status after the latest change (None until one happens).
        self.status: SagaStatus | None = None
        # Set by :meth:`SagaLog.wake_all` (shutdown): stop waiting.
        self.woken = False


def settles(change: Change) -> bool:
    """Whether ``change`` ends the saga's run with an outcome someone will be told (or
    needs its answer at once: a conditional change): never a change to write later."""
    status = change.saga_status
    return change.require_status is not None or (status is not None and status not in UNFINISHED)


def _no_crash(point: str, step: str = "") -> None:
    """The crash hook of a log nobody armed (see coordinator/engine/crash.py)."""


@dataclass
class _InFlight:
    """A write of a :class:`LiveRecord`: the version it leaves, and whether the log call
    returned (it may be shown once every write before it may)."""

    version: SagaRecord
    returned: bool = False


class LiveRecord:
    """The in-memory record of a saga being driven: the one its run reads and changes,
    and, while pinned (:meth:`SagaLog.pin`), the one readers of the saga are served.

    :attr:`record` is the run's view: every change applied, in the order the log will
    have them, written or not. :attr:`visible` is what readers see: the record as of the
    last write that may be shown. A durable write (:meth:`SagaLog.append_many`, or an
    ``append_later`` that settles the saga) is shown once it returned; a deferred one
    (replayable through the barrier) as soon as it is queued; and never a write before
    one called ahead of it that has not returned (a durable change is not shown early
    inside a later batch). Both are versions of one chain of :func:`records.apply`, not
    two copies kept in step: :attr:`visible` is always a version :attr:`record` went
    through.
    """

    def __init__(self, record: SagaRecord) -> None:
        self.record = record
        self.visible = record
        # The writes handed to the log and not shown yet, oldest first.
        self._writes: deque[_InFlight] = deque()

    @property
    def saga_id(self) -> str:
        return self.record.saga_id

    def apply(self, change: Change) -> None:
        """Apply ``change`` to the run's view (before it is written)."""
        self.record, _ = apply(self.record, change)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Around the log call that writes every change applied so far: once it returns
        the version it wrote is shown to readers (after the writes called before it). A
        call that raises shows nothing: its run stops, and the saga is read from the log
        again."""
        write = _InFlight(self.record)
        self._writes.append(write)
        yield
        write.returned = True
        while self._writes and self._writes[0].returned:
            self.visible = self._writes.popleft().version

    def reloaded(self, record: SagaRecord) -> None:
        """Start again from ``record``, read from the log: an unpinned saga that someone
        else writes too (a choreographed one, which the observer writes), nothing of
        this run's left unwritten."""
        self.record = self.visible = record
        self._writes.clear()


class SagaLog(ABC):
    """Where sagas, their steps, attempts and transitions are kept."""

    def __init__(self) -> None:
        self._listeners: defaultdict[str, set[Listener]] = defaultdict(set)
        # The test-only crash hook: called with "transition" once per transition handed
        # to the log (``SAGAWIRE_CRASH_AT=transition#N`` dies right after the N-th, durable
        # or not), so a test can kill the coordinator between any two transitions.
        self.crash: Callable[[str, str], None] = _no_crash

    def handed(self, transitions: int) -> None:
        """``transitions`` were just handed to the log: give the crash hook its chance."""
        for _ in range(transitions):
            self.crash("transition", "")

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the store (create tables...)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the store; pending writes are finished first."""

    @abstractmethod
    async def create(self, new: NewSaga, then: Sequence[Change] = ()) -> tuple[SagaRecord, bool]:
        """Log a new saga, or find the one with the same idempotency key.

        ``then`` are changes written with the new saga, in the same atomic, durable
        write (its first steps' intents: one commit instead of two). Nothing of them
        is written if the key matched.

        Returns:
            The saga (``then`` applied if created now), and True if it was created now
            (False: the key matched).

        Raises:
            IdempotencyConflict: the key belongs to a different request.
        """

    @abstractmethod
    async def find(self, idempotency_key: str, request_hash: str) -> SagaRecord | None:
        """The saga ``idempotency_key`` started, if any (a read: a retried request that
        a door refused is still answered with the saga it started).

        Raises:
            IdempotencyConflict: the key belongs to a different request.
        """

    @abstractmethod
    async def append(self, saga_id: str, change: Change) -> Transition:
        """Apply ``change`` and append its transition, atomically and durably.

        Raises:
            NotFound: no such saga.
            StatusConflict: ``change.require_status`` does not hold.
        """

    async def append_many(
        self, saga_id: str, changes: Sequence[Change], planned: SagaRecord | None = None
    ) -> list[Transition]:
        """Apply ``changes`` in order and append their transitions, in one atomic, durable write.

        All or nothing: if any change fails, none is written. Adapters override this
        to write the whole batch in one transaction; this default is for adapters
        that cannot, and is not atomic. ``planned``: the saga after ``changes`` as the
        caller worked it out (:func:`records.apply` on the version it read), which an
        adapter that keeps records in memory may take instead of applying them again.

        Raises:
            NotFound: no such saga.
            StatusConflict: a change's ``require_status`` does not hold (after the
                changes before it).
        """
        return [await self.append(saga_id, change) for change in changes]

    async def append_later(self, saga_id: str, changes: Sequence[Change]) -> None:
        """Apply ``changes`` in order, after every append called before; durable soon,
        not necessarily now (see the module docstring). For transitions whose every
        participant call is replayable through the barrier. Returns once they are queued;
        a later read sees them. A change that :func:`settles` the saga makes the whole
        batch durable before this returns. If writing them fails, the saga's next append
        raises the error (its run stops, and is resumed from the log).

        This default waits for the disk every time: right, only slower.
        """
        await self.append_many(saga_id, changes)

    @abstractmethod
    async def load(self, saga_id: str) -> SagaRecord | None:
        """The saga with every step and attempt, or None."""

    @abstractmethod
    async def list_sagas(
        self,
        status: SagaStatus | None,
        before: Cursor | None,
        limit: int,
        where: SagaFilter = EVERY_SAGA,
    ) -> list[SagaRecord]:
        """Sagas newest first (their steps without attempts), optionally of one status,
        those ``where`` takes."""

    async def count_sagas(self, where: SagaFilter = EVERY_SAGA) -> dict[SagaStatus, int]:
        """How many sagas ``where`` takes are in each status (statuses with none left
        out). Adapters count in their query; this default reads every saga."""
        counts: dict[SagaStatus, int] = defaultdict(int)
        before: Cursor | None = None
        while batch := await self.list_sagas(None, before, 500, where):
            for record in batch:
                counts[record.status] += 1
            before = (batch[-1].created_at, batch[-1].saga_id)
        return dict(counts)

    @abstractmethod
    async def finished_untold(self, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` finished (completed or compensated) sagas whose participants
        were not told yet, oldest finish first: (saga id, definition) pairs."""

    @abstractmethod
    async def mark_told(self, saga_ids: Sequence[str]) -> None:
        """Note that every participant of these sagas was told they finished."""

    @abstractmethod
    async def prune_finished(self, finished_before: datetime, limit: int) -> int:
        """Delete up to ``limit`` sagas (with their steps, attempts and history) that
        finished before ``finished_before`` and whose participants were told; how many."""

    @abstractmethod
    async def history(self, saga_id: str, after_seq: int = 0) -> list[Transition]:
        """The saga's transitions after ``after_seq``, in order."""

    @abstractmethod
    async def unfinished(self) -> list[str]:
        """Ids of the sagas still running or compensating, oldest first."""

    async def overdue(self, mode: str, now: datetime) -> list[str]:
        """Ids of the unfinished sagas of ``mode`` whose deadline is not after ``now``,
        oldest first (what the choreography observer flags as stalled). Adapters filter
        in their query instead of loading every unfinished saga."""
        found = await self.load_unfinished()
        return [r.saga_id for r in found if r.mode == mode and r.deadline <= now]

    async def load_unfinished(self) -> list[SagaRecord]:
        """The sagas still running or compensating, oldest first, each with every step
        and attempt (what recovery resumes). Adapters read them all at once."""
        found = [await self.load(saga_id) for saga_id in await self.unfinished()]
        return [record for record in found if record is not None]

    # -- sharing the log between coordinator replicas -----------------------------------
    # An adapter that one process owns needs none of this; these defaults say so. One
    # shared by several (coordinator/log/postgres.py) leases each unfinished saga to one
    # replica at a time and fences every write with the lease's token.

    # Several coordinator processes write this log (leases, take-overs, notifications).
    shared = False

    def holds(self, saga_id: str) -> bool:
        """Whether this process may drive the saga (holds its lease)."""
        return True

    def release(self, saga_id: str, take_over: bool = False) -> None:  # noqa: B027
        """This process stopped driving the saga: give its lease back, for another
        replica to take over at once (``take_over``: it is unfinished and must go on)
        or for nobody (it settled, or the services carry it on)."""

    def on_lease_lost(self, callback: Callable[[str], None]) -> None:  # noqa: B027
        """Call ``callback(saga_id)`` when this process learns it lost a saga's lease."""

    async def claim_unfinished(self, limit: int | None = None) -> list[SagaRecord]:
        """The unfinished sagas this process is to resume, taking their leases: at start,
        every one (one process owns the log); with replicas, those whose lease expired."""
        found = await self.load_unfinished()
        return found if limit is None else found[:limit]

    @contextmanager
    def as_observer(self) -> Iterator[None]:
        """Writes made inside are the choreography observer's: with replicas, fenced by
        the observer's lease rather than the saga's."""
        yield

    @contextmanager
    def pin(self, live: LiveRecord) -> Iterator[None]:
        """While inside, ``live`` is the saga's one in-memory record in this process and
        its run the saga's only writer (see :class:`LiveRecord`). An adapter that keeps
        records in memory serves reads of the saga from ``live.visible`` and keeps no
        copy of its own; this default keeps none at all (reads go to the store, which
        has every write that returned)."""
        yield

    @contextmanager
    def listen(self, saga_id: str) -> Iterator[Listener]:
        """Be told whenever the saga changes (after the change is durable).

        In-process only; an adapter shared by several processes adds its own
        notifications (e.g. PostgreSQL LISTEN/NOTIFY) and calls :meth:`_notify`.
        """
        listener = Listener()
        self._listeners[saga_id].add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(saga_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[saga_id]

    def wake_all(self) -> None:
        """Wake every listener for good (shutdown: long waits and streams end)."""
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.woken = True
                listener.changed.set()

    def _notify(self, saga_id: str, status: SagaStatus) -> None:
        for listener in self._listeners.get(saga_id, ()):
            listener.status = status
            listener.changed.set()


class InMemorySagaLog(SagaLog):
    """A log that forgets everything when the process ends: for unit tests."""

    def __init__(self) -> None:
        super().__init__()
        self._sagas: dict[str, SagaRecord] = {}
        self._history: dict[str, list[Transition]] = {}
        self._keys: dict[str, str] = {}
        self._told: set[str] = set()

    async def create(self, new: NewSaga, then: Sequence[Change] = ()) -> tuple[SagaRecord, bool]:
        existing = await self.find(new.idempotency_key, new.request_hash)
        if existing is not None:
            return existing, False
        record = new_record(new)
        self._sagas[new.saga_id] = record
        self._history[new.saga_id] = [first_transition(record)]
        if new.idempotency_key:
            self._keys[new.idempotency_key] = new.saga_id
        self._notify(new.saga_id, record.status)
        for change in then:
            await self.append(new.saga_id, change)
        return self._sagas[new.saga_id], True

    async def find(self, idempotency_key: str, request_hash: str) -> SagaRecord | None:
        saga_id = self._keys.get(idempotency_key) if idempotency_key else None
        if saga_id is None:
            return None
        existing = self._sagas[saga_id]
        if existing.request_hash != request_hash:
            raise IdempotencyConflict(idempotency_key)
        return existing

    async def append(self, saga_id: str, change: Change) -> Transition:
        record = self._sagas.get(saga_id)
        if record is None:
            raise NotFound(f"no saga {saga_id}")
        if change.require_status is not None and record.status not in change.require_status:
            raise StatusConflict(saga_id, record.status, change.require_status)
        record, transition = apply(record, change)
        self._sagas[saga_id] = record
        self._history[saga_id].append(transition)
        self._notify(saga_id, transition.status)
        return transition

    async def append_many(
        self, saga_id: str, changes: Sequence[Change], planned: SagaRecord | None = None
    ) -> list[Transition]:
        record = self._sagas.get(saga_id)
        if record is None:
            raise NotFound(f"no saga {saga_id}")
        transitions: list[Transition] = []
        for change in changes:
            if change.require_status is not None and record.status not in change.require_status:
                raise StatusConflict(saga_id, record.status, change.require_status)
            record, transition = apply(record, change)
            transitions.append(transition)
        self._sagas[saga_id] = record
        self._history[saga_id].extend(transitions)
        for transition in transitions:
            self._notify(saga_id, transition.status)
        return transitions

    async def load(self, saga_id: str) -> SagaRecord | None:
        return self._sagas.get(saga_id)

    async def list_sagas(
        self,
        status: SagaStatus | None,
        before: Cursor | None,
        limit: int,
        where: SagaFilter = EVERY_SAGA,
    ) -> list[SagaRecord]:
        found = sorted(
            (
                s
                for s in self._sagas.values()
                if (status is None or s.status is status) and where.matches(s)
            ),
            key=lambda s: (s.created_at, s.saga_id),
            reverse=True,
        )
        if before is not None:
            found = [s for s in found if (s.created_at, s.saga_id) < before]
        return [
            replace(s, steps=tuple(replace(step, attempts=()) for step in s.steps))
            for s in found[:limit]
        ]

    async def history(self, saga_id: str, after_seq: int = 0) -> list[Transition]:
        return [t for t in self._history.get(saga_id, []) if t.seq > after_seq]

    def _finished(self) -> list[SagaRecord]:
        found = [s for s in self._sagas.values() if s.status in TERMINAL and s.finished_at]
        return sorted(found, key=lambda s: (s.finished_at, s.saga_id))

    async def finished_untold(self, limit: int) -> list[tuple[str, str]]:
        untold = [s for s in self._finished() if s.saga_id not in self._told]
        return [(s.saga_id, s.definition) for s in untold[:limit]]

    async def mark_told(self, saga_ids: Sequence[str]) -> None:
        self._told.update(s for s in saga_ids if s in self._sagas)

    async def prune_finished(self, finished_before: datetime, limit: int) -> int:
        gone = [
            s
            for s in self._finished()
            if s.saga_id in self._told and s.finished_at and s.finished_at < finished_before
        ][:limit]
        for record in gone:
            del self._sagas[record.saga_id]
            del self._history[record.saga_id]
            self._told.discard(record.saga_id)
            if record.idempotency_key:
                self._keys.pop(record.idempotency_key, None)
        return len(gone)

    async def unfinished(self) -> list[str]:
        found = [s for s in self._sagas.values() if s.status in UNFINISHED]
        return [s.saga_id for s in sorted(found, key=lambda s: (s.created_at, s.saga_id))]
