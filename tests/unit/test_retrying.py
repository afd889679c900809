"""attempt_then_retry: a first attempt without tenacity, then tenacity as from the start."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from tenacity import RetryCallState
from tenacity.wait import wait_base

from common.retrying import attempt_then_retry


class Flaky(Exception):
    pass


class RecordedWait(wait_base):
    """Waits 1 ms per attempt number, and notes which attempt each wait followed."""

    def __init__(self) -> None:
        self.after: list[int] = []

    def __call__(self, retry_state: RetryCallState) -> float:
        self.after.append(retry_state.attempt_number)
        return retry_state.attempt_number / 1000


def failing(
    times: int, error: type[Exception] = Flaky
) -> tuple[list[int], Callable[[int], Awaitable[str]]]:
    made: list[int] = []

    async def attempt(number: int) -> str:
        made.append(number)
        if len(made) <= times:
            raise error(f"attempt {number}")
        return f"ok at {number}"

    return made, attempt


async def test_a_first_success_makes_one_attempt_and_no_retry() -> None:
    made, attempt = failing(0)
    wait, told = RecordedWait(), []
    result = await attempt_then_retry(
        attempt,
        Flaky,
        wait,
        lambda n, d, e: told.append(n),
    )
    assert (result, made, wait.after, told) == ("ok at 1", [1], [], [])


async def test_retries_number_attempts_and_wait_as_tenacity_would() -> None:
    made, attempt = failing(3)
    wait, told = RecordedWait(), []
    result = await attempt_then_retry(
        attempt,
        Flaky,
        wait,
        lambda n, d, e: told.append((n, d, str(e))),
    )
    assert result == "ok at 4" and made == [1, 2, 3, 4]
    # Each wait is computed for the attempt that just failed, counted from the first.
    assert wait.after == [1, 2, 3]
    assert told == [(2, 0.001, "attempt 1"), (3, 0.002, "attempt 2"), (4, 0.003, "attempt 3")]


@pytest.mark.parametrize("max_attempts", [1, 2, 3])
async def test_attempts_run_out_with_the_last_error(max_attempts: int) -> None:
    made, attempt = failing(10)
    with pytest.raises(Flaky, match=f"attempt {max_attempts}"):
        await attempt_then_retry(
            attempt,
            Flaky,
            RecordedWait(),
            lambda n, d, e: None,
            max_attempts=max_attempts,
        )
    assert made == list(range(1, max_attempts + 1))


async def test_an_error_not_retryable_is_raised_at_once() -> None:
    made, attempt = failing(1, error=ValueError)
    with pytest.raises(ValueError):
        await attempt_then_retry(attempt, Flaky, RecordedWait(), lambda n, d, e: None)
    made2, attempt2 = failing(2)

    async def second_fails_otherwise(number: int) -> str:
        if number == 2:
            raise ValueError("not transient")
        return await attempt2(number)

    with pytest.raises(ValueError):
        await attempt_then_retry(
            second_fails_otherwise, Flaky, RecordedWait(), lambda n, d, e: None
        )
    assert made == [1] and made2 == [1]
