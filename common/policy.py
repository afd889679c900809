"""One call policy: retry (tenacity) around a bulkhead and a breaker around the RPC.

::

    async for attempt in policy.attempts(participant, retry):   # tenacity: backoff with
        async with attempt:             # jitter, attempts AND time; a bulkhead slot, then
            log the intent              # the breaker's admission (waits, not attempts)
            with attempt.counted():     # the breaker counts the outcome (rate window);
                reply = await rpc(attempt.timeout)  # AioRpcError -> the error tree
            log the outcome
            return reply

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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from tenacity import wait_exponential_jitter
from tenacity.wait import WaitBaseT

from common.breakers import BreakerBoard
from common.bulkhead import Bulkheads
from common.errors import Transient
from common.grpc_errors import translate_rpc_errors
from common.retrying import Attempt, Attempts

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


class ParticipantAttempt:
    """One attempt at a participant. ``async with`` it: the block holds one of the
    participant's bulkhead slots and the breaker's admission (both waits are not
    attempts); a Transient error leaving it is retried by the loop if the budget allows.
    Make the call itself inside :meth:`counted`, with :attr:`timeout` as its deadline."""

    def __init__(
        self, policy: CallPolicy, participant: str, retry: RetryPolicy, attempt: Attempt, first: int
    ) -> None:
        self.number = first + attempt.number - 1
        self.timeout = retry.attempt_timeout
        self._policy = policy
        self._participant = participant
        self._attempt = attempt
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> ParticipantAttempt:
        stack = self._stack
        await stack.enter_async_context(self._attempt)  # outermost: decides on the error
        try:
            await stack.enter_async_context(self._policy.bulkheads.slot(self._participant))
            await stack.enter_async_context(self._policy.breakers.admit(self._participant))
        except BaseException:
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        return bool(await self._stack.__aexit__(kind, error, traceback))

    @contextmanager
    def counted(self) -> Iterator[None]:
        """The call: its outcome counted by the breaker, its gRPC errors translated to
        the error tree (common.grpc_errors)."""
        with self._policy.breakers.counted(self._participant), translate_rpc_errors():
            yield


class ParticipantAttempts:
    """The attempts of one call at a participant (see :meth:`CallPolicy.attempts`)."""

    def __init__(
        self,
        policy: CallPolicy,
        participant: str,
        retry: RetryPolicy,
        attempts: Attempts,
        first_number: int,
    ) -> None:
        self._policy = policy
        self._participant = participant
        self._retry = retry
        self._attempts = attempts
        self._first = first_number

    def __aiter__(self) -> ParticipantAttempts:
        return self

    async def __anext__(self) -> ParticipantAttempt:
        attempt = await self._attempts.__anext__()
        return ParticipantAttempt(
            self._policy, self._participant, self._retry, attempt, self._first
        )


class CallPolicy:
    """Calls participants under a retry policy, a bulkhead and the participant's breaker."""

    def __init__(self, breakers: BreakerBoard, bulkheads: Bulkheads | None = None) -> None:
        self.breakers = breakers
        self.bulkheads = bulkheads or Bulkheads(default_limit=1_000_000)

    def attempts(
        self,
        participant: str,
        retry: RetryPolicy,
        first_number: int = 1,
        on_retry: RetryListener | None = None,
    ) -> ParticipantAttempts:
        """The attempts of one call, numbered from ``first_number`` (a resumed step keeps
        counting); ``on_retry`` hears of every retry before its backoff. The loop raises
        the last Transient error once the budget is spent, any other error at once."""

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

        attempts = Attempts(
            Transient,
            _wait(retry),
            before_retry,
            max_attempts=retry.max_attempts,
            retry_for=retry.retry_for,
        )
        return ParticipantAttempts(self, participant, retry, attempts, first_number)

    async def call(
        self,
        participant: str,
        retry: RetryPolicy,
        rpc: Callable[[float], Awaitable[_T]],
        first_number: int = 1,
    ) -> _T:
        """``rpc(attempt_timeout)`` through :meth:`attempts`, for callers that log nothing."""
        async for attempt in self.attempts(participant, retry, first_number):
            async with attempt:
                with attempt.counted():
                    return await rpc(attempt.timeout)
        raise AssertionError("unreachable: the attempts either return or raise")


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
    "CallPolicy",
    "ParticipantAttempt",
    "ParticipantAttempts",
    "RetryListener",
    "RetryPolicy",
]
