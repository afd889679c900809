"""One call policy: retry (tenacity) around a bulkhead and a breaker around the RPC.

::

    CallPolicy.call(participant, retry, rpc, scope)
      tenacity: exponential backoff with jitter; attempts AND time budget; Transient only
        Bulkheads.slot(name)           bounded calls in flight per participant (waits)
          BreakerBoard.admit(name)     waits while the breaker is open (not an attempt)
            scope(number)              the caller's attempt: logged before, recorded after
              BreakerBoard.counted     the breaker counts the outcome (rate window)
                translate_rpc_errors() AioRpcError -> the error tree (common.grpc_errors)
                  rpc(attempt_timeout) the call itself, with its per-attempt deadline

Only :class:`~common.errors.Transient` errors are retried. A retry budget is spent
only by real calls, and only once both of its halves are: ``max_attempts`` calls
*and* ``retry_for`` seconds, so a participant that restarts in two seconds costs a
saga time, never its outcome. Waiting for a bulkhead slot or for an open breaker is
not an attempt and is not logged; only the caller's deadline (the saga's, through
cancellation) ends it. See common/breakers.py and common/bulkhead.py.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tenacity import wait_exponential_jitter
from tenacity.wait import WaitBaseT

from common.breakers import BreakerBoard
from common.bulkhead import Bulkheads
from common.errors import Transient
from common.grpc_errors import translate_rpc_errors
from common.retrying import attempt_then_retry

log = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class RetryPolicy:
    """How one step (or compensation) is retried.

    ``max_attempts`` of 0 means "until it succeeds" (forward recovery). Retries stop
    only when ``max_attempts`` calls were made *and* ``retry_for`` seconds passed since
    the first. Durations are seconds.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.1
    attempt_timeout: float = 2.0
    retry_for: float = 10.0


# Told before each retry: the number of the coming attempt, the wait before it in
# seconds, and the error that ended the previous one (telemetry adds a span event).
RetryListener = Callable[[int, float, BaseException | None], None]


class AttemptSlot(Generic[_T]):
    """Where the policy leaves an attempt's reply, for the scope to record on exit."""

    def __init__(self) -> None:
        self.value: _T | None = None


AttemptScope = Callable[[int], AbstractAsyncContextManager[AttemptSlot[_T]]]


@asynccontextmanager
async def bare_attempt(number: int) -> AsyncIterator[AttemptSlot[Any]]:
    """A scope that records nothing."""
    yield AttemptSlot()


class CallPolicy:
    """Calls a participant under a retry policy and the participant's breaker."""

    def __init__(self, breakers: BreakerBoard, bulkheads: Bulkheads | None = None) -> None:
        self.breakers = breakers
        self.bulkheads = bulkheads or Bulkheads(default_limit=1_000_000)

    async def call(
        self,
        participant: str,
        retry: RetryPolicy,
        rpc: Callable[[float], Awaitable[_T]],
        scope: AttemptScope[_T] = bare_attempt,
        first_number: int = 1,
        on_retry: RetryListener | None = None,
    ) -> _T:
        """Call ``rpc(attempt_timeout)`` until it succeeds or the policy gives up.

        Each attempt runs inside ``scope(number)``, once the participant's bulkhead
        and breaker let it through (numbers start at
        ``first_number``, so a resumed step keeps counting): the caller logs the
        attempt there before it is made, and on exit records how it ended (the
        reply is in the slot the scope yields, an error is the exception).
        ``on_retry`` hears of every retry before its backoff.

        Raises:
            Transient: the last attempt's transient error once attempts ran out.
            SagawireError: any other error at once (never retried).
        """

        async def one(attempt: int) -> _T:
            number = first_number + attempt - 1
            async with (
                self.bulkheads.slot(participant),
                self.breakers.admit(participant),
                scope(number) as slot,
            ):
                with self.breakers.counted(participant), translate_rpc_errors():
                    reply = await rpc(retry.attempt_timeout)
                slot.value = reply
            return reply

        def before_retry(attempt: int, delay: float, error: BaseException) -> None:
            number = first_number + attempt - 1  # the coming attempt
            log.info(
                "retrying participant=%s attempt=%d in_seconds=%.3f error=%s",
                participant,
                number,
                delay,
                error,
            )
            if on_retry is not None:
                on_retry(number, delay, error)

        return await attempt_then_retry(
            one,
            Transient,
            _wait(retry),
            before_retry,
            max_attempts=retry.max_attempts,
            retry_for=retry.retry_for,
            started=time.monotonic(),
        )


@functools.lru_cache(maxsize=256)
def _wait(retry: RetryPolicy) -> WaitBaseT:
    """The policy's wait strategy (stateless, so shared by every call)."""
    return wait_exponential_jitter(
        multiplier=retry.initial_backoff,
        max=retry.max_backoff,
        exp_base=retry.multiplier,
        jitter=retry.jitter,
    )


__all__ = [
    "AttemptScope",
    "AttemptSlot",
    "CallPolicy",
    "RetryListener",
    "RetryPolicy",
    "bare_attempt",
]
