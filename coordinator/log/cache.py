"""The SQLite saga log's in-memory records: the sagas its runs drive, and recently read ones.

The observer reads a choreographed saga each time its events arrive, and
``GetSaga``/``WatchSaga`` read sagas while they run. A read served from memory
spares a SQLite read on a thread for each of them. Two kinds of entry:

- **Pinned**: a saga a run of this process drives, pinned for the run's lifetime
  (:meth:`RecordCache.pinned`). Its entry *is* the run's
  :class:`~coordinator.log.saga_log.LiveRecord`, the one in-memory record of the
  saga: the run applies each change to it before writing it, and a read is served
  its ``visible`` version (a durable write once it returned, a deferred one at
  once). The cache keeps no copy of it, applies none of the run's writes (the owner
  applied them first), and never evicts it. Only a saga no one else writes is
  pinned (an orchestrated one).
- **Read**: an unfinished saga read from the file and not pinned (a choreographed
  saga the observer writes, kept from its creation, or one nobody drives here), kept
  by the cache itself; a choreographed saga's run holds the very record kept here.
  It leaves once it no longer runs (ended, needing attention or stalled) or when
  the cache is full (least recently used first). This copy can only be right or
  absent: a write is applied to it only if it is the version the write follows (by
  sequence number); otherwise the saga is dropped and the next read goes to the file.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from coordinator.log.records import UNFINISHED, Change, SagaRecord, Transition, apply
from coordinator.log.saga_log import LiveRecord

DEFAULT_SIZE = 4_096


class RecordCache:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._records: OrderedDict[str, SagaRecord] = OrderedDict()
        self._pinned: dict[str, LiveRecord] = {}
        # Reads of uncached sagas in progress, and when such a saga was last written
        # (a write that lands while it is read may be missing from what the read sees).
        self._reads: Counter[str] = Counter()
        self._written_at: dict[str, int] = {}
        self._clock = 0
        self._writes = 0  # every write, for reads of many sagas at once

    def __len__(self) -> int:
        """How many sagas read are kept (pinned ones aside: they do not count)."""
        return len(self._records)

    def get(self, saga_id: str) -> SagaRecord | None:
        live = self._pinned.get(saga_id)
        if live is not None:
            return live.visible
        record = self._records.get(saga_id)
        if record is not None:
            self._records.move_to_end(saga_id)
        return record

    @contextmanager
    def reading(self, saga_id: str) -> Iterator[Callable[[SagaRecord], None]]:
        """Around a read of the file: yields what to call with the record read, which
        keeps it unless the saga was written while it was read, or has ended."""
        self._reads[saga_id] += 1
        started = self._clock

        def keep(record: SagaRecord) -> None:
            if self._written_at.get(saga_id, 0) <= started:
                self._keep(record)

        try:
            yield keep
        finally:
            self._reads[saga_id] -= 1
            if not self._reads[saga_id]:
                del self._reads[saga_id]
                self._written_at.pop(saga_id, None)

    @contextmanager
    def reading_many(self) -> Iterator[Callable[[Sequence[SagaRecord]], None]]:
        """Around a read of many sagas: what it yields keeps the records read only if
        no saga at all was written meanwhile (recovery reads before anything writes)."""
        started = self._writes

        def keep(records: Sequence[SagaRecord]) -> None:
            if self._writes == started:
                for record in records:
                    self._keep(record)

        yield keep

    @contextmanager
    def pinned(self, live: LiveRecord) -> Iterator[None]:
        """Serve reads of ``live``'s saga from it while inside (its run's lifetime).
        After, the saga is not kept at all: ``live`` may hold a deferred write the file
        will never have (it failed), and the next read goes to the file."""
        saga_id = live.saga_id
        if saga_id in self._pinned:
            raise RuntimeError(f"saga {saga_id} is already pinned by another run")
        self._records.pop(saga_id, None)  # the copy read before: the run's record replaces it
        self._pinned[saga_id] = live
        try:
            yield
        finally:
            del self._pinned[saga_id]

    def created(self, record: SagaRecord) -> None:
        """Keep a saga just created, as written: nobody else can have written it yet. For a
        choreographed saga, which the observer and its run read after every write."""
        self._keep(record)

    def _keep(self, record: SagaRecord) -> None:
        if record.status not in UNFINISHED or record.saga_id in self._pinned:
            return
        self._records[record.saga_id] = record
        self._records.move_to_end(record.saga_id)
        while len(self._records) > self._size:
            self._records.popitem(last=False)

    def forget(self, saga_id: str) -> None:
        """Drop the saga (a write it has not seen yet is on its way): the next read of it
        goes to the file, and a read in progress keeps nothing. A pinned saga stays: its
        run applied the write first."""
        self._writes += 1
        if saga_id in self._reads:
            self._clock += 1
            self._written_at[saga_id] = self._clock
        self._records.pop(saga_id, None)

    def written(
        self,
        saga_id: str,
        changes: Sequence[Change],
        transitions: Sequence[Transition],
        planned: SagaRecord | None = None,
    ) -> None:
        """Apply changes just written, which appended ``transitions``; ``planned`` is the
        writer's own result of applying them, taken if it was worked out from the
        cached version (the observer's), instead of applying them again. Nothing to do
        for a pinned saga: its run, the only writer, applied them first."""
        self._writes += 1
        if saga_id in self._reads:
            self._clock += 1
            self._written_at[saga_id] = self._clock
        record = self._records.get(saga_id)
        if record is None or not transitions:
            return
        if record.last_seq + 1 != transitions[0].seq:
            del self._records[saga_id]  # another write came in between: read it again
            return
        if planned is not None and planned.last_seq == record.last_seq + len(changes):
            record = planned  # from this very version: the same as applying again
        else:
            for change in changes:
                record, _ = apply(record, change)
        if record.last_seq != transitions[-1].seq or record.status not in UNFINISHED:
            del self._records[saga_id]  # a mismatch, or the saga ended: as _keep decides
        else:
            self._records[saga_id] = record
