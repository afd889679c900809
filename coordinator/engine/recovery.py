"""Recovery: at start, resume every saga the log says is unfinished.

Each saga continues from its logged state, forwards or backwards, and steps
that were in flight are sent again with the same idempotency key (saga id +
step): the participants' barrier turns a duplicate into a replay, and a late
execute after its compensation into a refusal. Sagas that need attention stay
as they are until ``RetrySaga``. A choreographed saga past its first step is not
resumed, nor one the services turned back (a later step's rejection): the services
carry it on, forwards or backwards, and the observer records the events it missed.
"""

from __future__ import annotations

import logging

from coordinator.engine.crash import NO_CRASH, CrashHook
from coordinator.engine.scheduler import SagaEngine
from coordinator.log.saga_log import SagaLog

log = logging.getLogger(__name__)


async def recover(saga_log: SagaLog, engine: SagaEngine, crash: CrashHook = NO_CRASH) -> int:
    """Resume the unfinished sagas (in the background); returns how many. With replicas
    sharing the log, those whose lease expired or that this replica's name still holds
    (coordinator/engine/replicas.py takes the others over as their leases expire)."""
    unfinished = await saga_log.claim_unfinished()
    if unfinished:
        log.info("recovering sagas count=%d", len(unfinished))
    crash("recovery")
    return sum(engine.resume(record) for record in unfinished)
