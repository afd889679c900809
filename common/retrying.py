"""Retries with tenacity, after a first attempt made without it.

Most calls succeed at once, and building and stepping tenacity's controller costs
about 100 µs per call here (against 0.2 µs for the bare await): a visible part of
a saga's CPU, where every step is a call and every event batch a transaction. So
the first attempt is made directly, and from the first retry on tenacity decides
as it would have from the start: the same retry predicate, stop and wait, the
same hook before each sleep, attempt numbers counted from the first attempt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from tenacity import (
    AsyncRetrying,
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


async def attempt_then_retry(
    attempt: Callable[[int], Awaitable[_T]],
    retryable: type[BaseException] | tuple[type[BaseException], ...],
    wait: WaitBaseT,
    before_retry: BeforeRetry,
    max_attempts: int = 0,
    retry_for: float = 0.0,
    started: float | None = None,
) -> _T:
    """``attempt(n)`` for n = 1, 2... until it returns, raises something not
    ``retryable``, or the budget ran out; then the last error.

    The budget is spent once ``max_attempts`` attempts were made (0: no limit) *and*
    ``retry_for`` seconds passed since ``started`` (``time.monotonic()``; default:
    now): a short outage costs time, not the budget."""
    started = time.monotonic() if started is None else started
    try:
        return await attempt(1)
    except retryable as error:
        if max_attempts == 1 and time.monotonic() - started >= retry_for:
            raise
        delay = wait(cast(RetryCallState, _AtAttempt(1)))
        before_retry(2, delay, error)
        await asyncio.sleep(delay)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        assert error is not None  # tenacity sleeps only after a failed attempt
        before_retry(state.attempt_number + 2, delay, error)

    stop: StopBaseT = stop_never
    if max_attempts:
        # Both halves must be spent; the time half counts from ``started``, not from now.
        left = retry_for - (time.monotonic() - started)
        stop = stop_after_attempt(max(max_attempts - 1, 1)) & stop_after_delay(max(left, 0.0))
    retrying = AsyncRetrying(
        stop=stop,
        wait=_Shifted(wait),
        retry=retry_if_exception_type(retryable),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for tenacious in retrying:
        with tenacious:
            return await attempt(tenacious.retry_state.attempt_number + 1)
    raise AssertionError("unreachable: tenacity either returns or raises")


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
