"""Telling the participants which sagas finished for good, so retention may let go.

A saga that is COMPLETED or COMPENSATED is never called for again: recovery resumes
unfinished sagas only, ``RetrySaga`` only a saga that needs attention, and the choreography
observer only records what the services did. A saga that needs attention (or is stalled)
has *not* finished: it may be retried days later, so nothing is said about it, and the
participants keep its barrier rows for as long as it waits.

:class:`FinishedNotifier` reads the finished sagas whose participants were not told yet
(oldest first), calls ``Participant.SagasFinished`` once per participant with every one of
them that names it (the participants of the saga's definition), and marks in the log the
sagas all of whose participants answered. A participant that is down is asked again at a
later pass, with a growing pause, for as long as it takes: its rows wait meanwhile. The
participants keep the rows for the retention window from when they heard
(common/barrier.py); the saga log keeps a saga until it was told, and then for its own,
longer window (:func:`saga_log_task`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from datetime import datetime, timedelta

import grpc

from common.retention import Pruning
from contract.definitions import Definitions
from coordinator.engine.participants import ParticipantClient
from coordinator.log.saga_log import SagaLog

log = logging.getLogger(__name__)

BATCH = 500
_DEADLINE = 5.0
_MAX_PAUSE = 30.0


class FinishedNotifier:
    """Tells participants, in the background, which sagas finished (see the module doc)."""

    def __init__(
        self,
        saga_log: SagaLog,
        definitions: Definitions,
        participants: ParticipantClient,
        every_participant: Sequence[str],
        interval: float = 1.0,
        batch: int = BATCH,
    ) -> None:
        self._log = saga_log
        self._definitions = definitions
        self._participants = participants
        # A saga whose definition is not loaded any more is told to all of them.
        self._everyone = tuple(every_participant)
        self._interval = interval
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self.told = 0

    def _participants_of(self, definition: str) -> Sequence[str]:
        found = self._definitions.get(definition)
        if found is None:
            return self._everyone
        return sorted({step.participant for step in found.steps})

    async def tell_once(self) -> tuple[int, bool]:
        """Tell about one batch of finished sagas: how many were told, and whether every
        participant answered."""
        untold = await self._log.finished_untold(self._batch)
        if not untold:
            return 0, True
        by_participant: defaultdict[str, list[str]] = defaultdict(list)
        needs: dict[str, Sequence[str]] = {}
        for saga_id, definition in untold:
            needs[saga_id] = self._participants_of(definition)
            for participant in needs[saga_id]:
                by_participant[participant].append(saga_id)

        async def tell(participant: str, saga_ids: list[str]) -> str | None:
            try:
                await self._participants.sagas_finished(participant, saga_ids, _DEADLINE)
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "could not tell %s that %d sagas finished (asked again later): %s",
                    participant,
                    len(saga_ids),
                    error.code().name,
                )
                return participant
            return None

        failed = set(await asyncio.gather(*(tell(p, ids) for p, ids in by_participant.items()))) - {
            None
        }
        told = [s for s, who in needs.items() if not failed.intersection(who)]
        if told:
            await self._log.mark_told(told)
            self.told += len(told)
        return len(told), not failed

    async def _run(self) -> None:
        pause = self._interval
        while True:
            try:
                count, answered = await self.tell_once()
            except Exception:
                log.exception("telling participants which sagas finished failed; trying again")
                count, answered = 0, False
            if answered and count >= self._batch:
                continue  # more waiting: the next batch at once
            pause = self._interval if answered else min(pause * 2, _MAX_PAUSE)
            await asyncio.sleep(pause)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tell-finished")

    async def stop(self) -> None:
        """Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def saga_log_task(saga_log: SagaLog, window: float) -> Pruning:
    """Finished sagas leave the log ``window`` seconds after they finished, once their
    participants were told: after that no call of theirs can reach a participant, and
    what an operator reads of them (``GetSaga``, ``ListSagas``) is gone with them. An
    idempotency key is honoured as long as its saga is kept."""
    keep = timedelta(seconds=window)

    def batch(now: datetime, limit: int) -> Awaitable[int]:
        return saga_log.prune_finished(now - keep, limit)

    return Pruning("sagas", batch)
