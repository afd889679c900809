"""Recently read unfinished sagas, kept in step with the log's writes.

The observer reads a choreographed saga each time its events arrive, and
``GetSaga``/``WatchSaga`` read sagas while they run. A read served from memory
spares a SQLite read on a thread for each of them. A saga is cached only once it
was read (an orchestrated saga's run keeps its own record and never reads it), and
leaves once it no longer runs (ended, needing attention or stalled) or when the
cache is full (least recently used first).

The cache can only be right or absent: a write is applied to a cached record only
if that record is the version the write follows (by sequence number); otherwise
the saga is dropped and the next read goes to the file.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from coordinator.log.records import UNFINISHED, Change, SagaRecord, Transition, apply

DEFAULT_SIZE = 4_096


class RecordCache:
    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self._size = size
        self._records: OrderedDict[str, SagaRecord] = OrderedDict()
        # Reads of uncached sagas in progress, and when such a saga was last written
        # (a write that lands while it is read may be missing from what the read sees).
        self._reads: Counter[str] = Counter()
        self._written_at: dict[str, int] = {}
        self._clock = 0
        self._writes = 0  # every write, for reads of many sagas at once

    def __len__(self) -> int:
        return len(self._records)

    def get(self, saga_id: str) -> SagaRecord | None:
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

    def _keep(self, record: SagaRecord) -> None:
        if record.status not in UNFINISHED:
            return
        self._records[record.saga_id] = record
        self._records.move_to_end(record.saga_id)
        while len(self._records) > self._size:
            self._records.popitem(last=False)

    def forget(self, saga_id: str) -> None:
        """Drop the saga (a write it has not seen yet is on its way): the next read of it
        goes to the file, and a read in progress keeps nothing."""
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
        cached version (the observer's), instead of applying them again."""
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
