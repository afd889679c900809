"""Retries as an iterator of attempts, with tenacity deciding after a first attempt
made without it.

::

    async for attempt in Attempts(Transient, wait, before_retry, max_attempts=4):
        async with attempt:          # a retryable error is kept, and the loop goes on
            return await call()

Most calls succeed at once, and building and stepping tenacity's controller costs
about 100 µs per call here (against 0.2 µs for the bare await): a visible part of
a saga's CPU, where every step is a call and every event batch a transaction. So
the first attempt is made directly, and from the first retry on tenacity's
``AsyncRetrying`` decides as it would have from the start: the same retry
predicate, stop and wait, the same hook before each sleep, attempt numbers counted
from the first attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar, cast

from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
)
from tenacity.stop import StopBaseT
from tenacity.wait import WaitBaseT, wait_base

_T = TypeVar("_T")

# What to tell before a retry: the coming attempt's number, the wait, the last error.
BeforeRetry = Callable[[int, float, BaseException], None]
Retryable = type[BaseException] | tuple[type[BaseException], ...]


class Attempt:
    """One attempt: ``async with`` it around the work. A retryable error leaving the
    block is kept for the loop to decide on (the block ends quietly); any other error
    leaves as it came. ``number`` counts from the first attempt (1)."""

    def __init__(self, attempts: Attempts, number: int, manager: AttemptManager | None) -> None:
        self.number = number
        self._attempts = attempts
        self._manager = manager  # tenacity's, from the first retry on

    async def __aenter__(self) -> Attempt:
        if self._manager is not None:
            self._manager.__enter__()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        if self._manager is not None:  # tenacity keeps the outcome and decides next
            return bool(self._manager.__exit__(kind, error, traceback))
        return self._attempts._first_ended(error)


class Attempts:
    """The attempts of one call: an async iterator of :class:`Attempt`.

    The loop ends when an attempt's block ends without an error (the caller usually
    returns from inside it), or raises the last error once the budget is spent: both
    ``max_attempts`` attempts (0: no limit) *and* ``retry_for`` seconds since
    ``started`` (``time.monotonic()``; default: now), so a short outage costs time,
    not the budget. ``before_retry`` hears of each retry before its wait."""

    def __init__(
        self,
        retryable: Retryable,
        wait: WaitBaseT,
        before_retry: BeforeRetry,
        max_attempts: int = 0,
        retry_for: float = 0.0,
        started: float | None = None,
    ) -> None:
        self.retryable = retryable
        self.wait = wait
        self.before_retry = before_retry
        self.max_attempts = max_attempts
        self.retry_for = retry_for
        self.started = time.monotonic() if started is None else started
        self._made = 0
        self._first_error: BaseException | None = None
        self._succeeded = False
        self._retrying: AsyncRetrying | None = None

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        if self._made == 0:
            self._made = 1
            return Attempt(self, 1, None)
        if self._retrying is None:
            if self._succeeded or self._first_error is None:
                raise StopAsyncIteration
            self._retrying = await self._retry_after_first(self._first_error)
        manager = await self._retrying.__anext__()
        return Attempt(self, manager.retry_state.attempt_number + 1, manager)

    def _first_ended(self, error: BaseException | None) -> bool:
        if error is None:
            self._succeeded = True
            return False
        if not isinstance(error, self.retryable):
            return False
        if self.max_attempts == 1 and time.monotonic() - self.started >= self.retry_for:
            return False  # the budget is spent: the error leaves the loop
        self._first_error = error
        return True

    async def _retry_after_first(self, error: BaseException) -> AsyncRetrying:
        delay = self.wait(cast(RetryCallState, _AtAttempt(1)))
        self.before_retry(2, delay, error)
        await asyncio.sleep(delay)

        def before_sleep(state: RetryCallState) -> None:
            failed = state.outcome.exception() if state.outcome else None
            pause = state.next_action.sleep if state.next_action else 0.0
            assert failed is not None  # tenacity sleeps only after a failed attempt
            self.before_retry(state.attempt_number + 2, pause, failed)

        stop: StopBaseT = stop_never
        if self.max_attempts:
            # Both halves must be spent; the time half counts from ``started``, not now.
            left = self.retry_for - (time.monotonic() - self.started)
            stop = stop_after_attempt(max(self.max_attempts - 1, 1)) & stop_after_delay(
                max(left, 0.0)
            )
        retrying = AsyncRetrying(
            stop=stop,
            wait=_Shifted(self.wait),
            retry=retry_if_exception_type(self.retryable),
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying.__aiter__()


async def attempt_then_retry(
    attempt: Callable[[int], Awaitable[_T]],
    retryable: Retryable,
    wait: WaitBaseT,
    before_retry: BeforeRetry,
    max_attempts: int = 0,
    retry_for: float = 0.0,
    started: float | None = None,
) -> _T:
    """``attempt(n)`` for n = 1, 2... until it returns, raises something not
    ``retryable``, or the budget ran out (see :class:`Attempts`); then the last error."""
    async for each in Attempts(retryable, wait, before_retry, max_attempts, retry_for, started):
        async with each:
            return await attempt(each.number)
    raise AssertionError("unreachable: the attempts either return or raise")


class _AtAttempt:
    """What tenacity's exponential waits read of a RetryCallState."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


class _Shifted(wait_base):
    """``wait`` as if counting from the attempt made before tenacity took over."""

    def __init__(self, wait: WaitBaseT) -> None:
        self.wait = wait

    def __call__(self, retry_state: RetryCallState) -> float:
        shifted = _AtAttempt(retry_state.attempt_number + 1)
        return self.wait(cast(RetryCallState, shifted))
