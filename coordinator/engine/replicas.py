"""A coordinator replica's duties towards the others, when they share a PostgreSQL saga log.

Every ``lease_seconds / 3``, one pass (coordinator/log/postgres.py does the SQL):

1. **Renew** the leases of every saga this replica drives, in one statement; a saga
   whose lease was taken over meanwhile (this replica was paused or cut off past its
   expiry) stops being driven here (the engine cancels its run; its writes would be
   refused anyway).
2. **Take over** the unfinished sagas whose lease expired (their replica died), as many
   as the engine has room for, and resume them as recovery does at start: in-flight
   steps are sent again under the same key and the participants' barrier replays them.
3. **Observe** (choreography): one replica at a time holds the observer's role, through
   a lease of its own, and runs the observer; the others stand by and take the role
   over when it expires. The observer's writes and its stream offsets are fenced by the
   role's token, so an observer that lost the role records nothing more; the offsets
   live in the shared log, so the next observer goes on where the last one's durable
   records end (events seen again plan no change).

Why one observer rather than each replica observing its own sagas: every replica would
have to read all four streams anyway (events do not say which replica started a saga),
and a saga whose replica died would need its events read again by the one taking it
over. One observer reads each event once, and hands its place over whole.

A pass that fails (the database unreachable) is logged and made again at the next
interval; leases this replica could not renew expire, and others take the sagas over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from coordinator.choreography.observer import Observer
from coordinator.engine.scheduler import SagaEngine
from coordinator.log.postgres import OBSERVER_ROLE, PostgresSagaLog

log = logging.getLogger(__name__)


class ReplicaDuties:
    """Renews, takes over and observes, in the background (see the module doc)."""

    def __init__(
        self,
        saga_log: PostgresSagaLog,
        engine: SagaEngine,
        observer: Observer | None = None,
        interval: float | None = None,
    ) -> None:
        self._log = saga_log
        self._engine = engine
        self._observer = observer
        self._interval = interval if interval is not None else saga_log.lease_seconds / 3
        self._observing = False
        self._task: asyncio.Task[None] | None = None

    @property
    def observing(self) -> bool:
        """Whether this replica runs the choreography observer now."""
        return self._observing

    async def start(self) -> None:
        await self.tick()
        self._task = asyncio.create_task(self._every_interval(), name="replica-duties")

    async def stop(self) -> None:
        """Stop the passes and the observer, and give the observer's role up (the next
        replica takes it at once). The sagas' leases are handed back by the log's close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._observer is not None and self._observing:
            await self._observer.stop()
            self._observing = False
        with contextlib.suppress(Exception):
            await self._log.drop_role(OBSERVER_ROLE)

    async def _every_interval(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.tick()
            except Exception:
                log.exception("replica duties failed; trying again in %.1f s", self._interval)

    async def tick(self) -> None:
        """One pass: renew, take over, observe."""
        await self._log.renew_leases()
        room = self._engine.room
        if room > 0:
            taken = await self._log.claim_unfinished(limit=room)
            resumed = sum(self._engine.resume(record) for record in taken)
            if taken:
                log.info("took over sagas count=%d resumed=%d", len(taken), resumed)
        if self._observer is not None:
            await self._observe(self._observer)

    async def _observe(self, observer: Observer) -> None:
        if await self._log.hold_role(OBSERVER_ROLE):
            if self._observing and observer.running:
                return
            if self._observing:
                log.error("the observer stopped by an error; starting it again")
                await observer.stop()
            log.info("observing choreographed sagas replica=%s", self._log.replica)
            await observer.start()
            self._observing = True
        elif self._observing:
            log.warning("observer role lost; standing by replica=%s", self._log.replica)
            await observer.stop()
            self._observing = False
