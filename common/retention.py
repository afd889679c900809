"""Retention: a background job per process that removes what no one can need any more.

Each process lists its :class:`Pruning` tasks (a domain service: barrier rows, outbox
events, inbox rows, poison events; the coordinator: finished sagas of its log) and runs
one :class:`Retention` job. Every ``SAGAWIRE_RETENTION_INTERVAL`` seconds it makes a
pass: each task deletes at most ``SAGAWIRE_RETENTION_BATCH`` rows (or sagas) per
transaction, a few transactions per pass, yielding between them, so the group-commit
writer (common/store.py) holds the write lock for milliseconds at a time and saga
writes go on in between; what is left waits for the next pass. A failing pass is
logged and the next one runs on time: the job never stops by itself.

Why each removal is safe is written beside the table it prunes: the barrier
(common/barrier.py), the outbox (common/outbox.py), the saga log
(coordinator/engine/finished.py). The inbox and poison rows are pruned here, by age:

- **inbox** (common/inbox.py): a consumer skips every event at or below its stored
  offset before it looks at the inbox, and it moves the offset in the transaction that
  records an event's id. So an inbox row is consulted only when an event with a
  sequence above the offset carries an id already processed: a producer that sends
  the same event again under a new sequence (a relay or broker redelivering; a
  re-published event). Such a redelivery comes within seconds to minutes of the first,
  never a window (days) later, so rows older than the window can only be matched by
  nothing.
- **poison events** are for operators to look at (``sagawire events poison``); they
  are kept for their own, longer window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from common import barrier
from common.config import RetentionSettings
from common.outbox import Outbox
from common.store import Connection, Store, utc_now

log = logging.getLogger(__name__)

# Transactions a task runs per pass at most: a backlog (retention just turned on, or a
# process back after days) is worked off over several passes.
MAX_BATCHES_PER_PASS = 20

# One batch of a task: given the time now and a limit, delete at most that many rows
# (or sagas) in one transaction and say how many went.
Batch = Callable[[datetime, int], Awaitable[int]]


@dataclass(frozen=True)
class Pruning:
    """What one task removes (``name``, for logs) and how, a batch at a time."""

    name: str
    batch: Batch


class Retention:
    """Runs every task's batches once per interval, in the background."""

    def __init__(
        self,
        tasks: Sequence[Pruning],
        interval: float,
        limit: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.tasks = tuple(tasks)
        self._interval = interval
        self._limit = limit
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # Rows removed since start, by task (for logs and tests).
        self.removed: dict[str, int] = {t.name: 0 for t in tasks}
        self.passes = 0

    async def run_pass(self) -> dict[str, int]:
        """One pass over every task; how many rows each removed. A task that fails is
        logged and the others still run."""
        removed: dict[str, int] = {}
        for task in self.tasks:
            count = 0
            try:
                for _ in range(MAX_BATCHES_PER_PASS):
                    gone = await task.batch(self._clock(), self._limit)
                    count += gone
                    if gone < self._limit:
                        break
                    await asyncio.sleep(0)  # let saga writes in between batches
            except (
                Exception
            ) as error:  # a store's error (SQLite or PostgreSQL): logged, the others run
                log.warning("retention task failed task=%s error=%s", task.name, error)
            removed[task.name] = count
            self.removed[task.name] += count
        self.passes += 1
        if any(removed.values()):
            log.info(
                "retention pass removed %s",
                " ".join(f"{name}={n}" for name, n in removed.items() if n),
            )
        return removed

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.run_pass()
            except Exception:
                # Supervised: a bug in a task must not end retention for good.
                log.exception("retention pass failed; the next runs on time")
            await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))

    def start(self) -> None:
        """Run passes in the background until :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        """Stop after the current batch. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def delete_oldest(
    conn: Connection, table: str, time_column: str, older_than: datetime, limit: int
) -> int:
    """Delete, among the ``limit`` first rows of ``table`` by rowid (the order they were
    written in), those before the first one at or after ``older_than``; how many.

    Bounded work whatever the table's size, and no index on the time needed: rows are
    written in time order, so the old ones are a prefix (a clock stepping back only
    makes some rows wait for a later pass).
    """
    assert table.isidentifier() and time_column.isidentifier()  # never caller input
    last = None
    for row in conn.execute(
        f"SELECT rowid, {time_column} FROM {table} ORDER BY rowid LIMIT ?", (limit,)
    ):
        if datetime.fromisoformat(row[1]) >= older_than:
            break
        last = row[0]
    if last is None:
        return 0
    return conn.execute(f"DELETE FROM {table} WHERE rowid <= ?", (last,)).rowcount


def service_tasks(db: Store, events: Outbox, settings: RetentionSettings) -> list[Pruning]:
    """What a domain service prunes: barrier rows, outbox events, inbox rows, poison events."""

    def in_transaction(work: Callable[[Connection], int]) -> Awaitable[int]:
        return db.transaction(work)

    def barrier_rows(now: datetime, limit: int) -> Awaitable[int]:
        # Rows go W + M after the finish; the horizon refuses sagas created before now - W.
        keep = timedelta(seconds=settings.retention_barrier + settings.retention_clock_skew)
        return in_transaction(lambda conn: barrier.prune_finished(conn, now - keep, limit))

    def outbox_events(now: datetime, limit: int) -> Awaitable[int]:
        return events.prune(timedelta(seconds=settings.retention_outbox), limit, now)

    def inbox_rows(now: datetime, limit: int) -> Awaitable[int]:
        older_than = now - timedelta(seconds=settings.retention_inbox)
        return in_transaction(
            lambda conn: delete_oldest(conn, "inbox", "processed_at", older_than, limit)
        )

    def poison_events(now: datetime, limit: int) -> Awaitable[int]:
        older_than = now - timedelta(seconds=settings.retention_poison)
        return in_transaction(
            lambda conn: delete_oldest(conn, "poison_event", "recorded_at", older_than, limit)
        )

    return [
        Pruning("barrier", barrier_rows),
        Pruning("outbox", outbox_events),
        Pruning("inbox", inbox_rows),
        Pruning("poison", poison_events),
    ]


def barrier_horizon(settings: RetentionSettings) -> Callable[[], datetime]:
    """The barrier's horizon now: sagas created before it, with no row of a step, are
    refused (common/barrier.py)."""
    window = timedelta(seconds=settings.retention_barrier)
    return lambda: utc_now() - window
