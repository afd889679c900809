"""The call policy with a fake RPC: retries spend a budget of attempts and time, the
breaker trips on a failure rate and makes callers wait (never fail), the bulkhead
bounds calls in flight per participant."""

from __future__ import annotations

import asyncio
from contextlib import suppress

import pytest

from common.breakers import BreakerBoard, BreakerSettings
from common.bulkhead import Bulkheads
from common.errors import BusinessRejection, Transient
from common.policy import CallPolicy, RetryPolicy

FAST = RetryPolicy(
    max_attempts=4, initial_backoff=0.001, max_backoff=0.002, jitter=0.0, retry_for=0.0
)
SINGLE = RetryPolicy(max_attempts=1, retry_for=0.0)


class FakeRpc:
    """Fails with the given errors in turn, then answers "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self, timeout: float) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def policy(
    minimum_calls: int = 4, rate: float = 0.5, reset: float = 0.05, bulkhead: int = 100
) -> CallPolicy:
    settings = BreakerSettings(
        failure_rate=rate, minimum_calls=minimum_calls, window=10.0, reset_timeout=reset
    )
    return CallPolicy(BreakerBoard(settings), Bulkheads(bulkhead))


async def numbered_call(
    calls: CallPolicy,
    participant: str,
    retry: RetryPolicy,
    rpc: FakeRpc,
    seen: list[tuple[int, str]],
    first_number: int = 1,
) -> str:
    """A call as the runner makes one: each attempt noted (as it logs them) by number."""
    async for attempt in calls.attempts(participant, retry, first_number):
        async with attempt:
            try:
                with attempt.counted():
                    reply = await rpc(attempt.timeout)
            except Transient:
                seen.append((attempt.number, "transient"))
                raise
            seen.append((attempt.number, f"got {reply}"))
            return reply
    raise AssertionError("unreachable")


async def test_transient_errors_are_retried_and_attempts_numbered() -> None:
    seen: list[tuple[int, str]] = []
    rpc = FakeRpc(Transient("down"), Transient("down"))
    assert await numbered_call(policy(), "p", FAST, rpc, seen, first_number=3) == "ok"
    assert seen == [(3, "transient"), (4, "transient"), (5, "got ok")]


async def test_retries_run_out_and_rejections_are_never_retried() -> None:
    rpc = FakeRpc(*(Transient(f"down {i}") for i in range(5)))
    with pytest.raises(Transient, match="down 3"):
        await policy(minimum_calls=50).call("p", FAST, rpc)
    assert rpc.calls == 4
    rejected = FakeRpc(BusinessRejection("NO", "no"))
    with pytest.raises(BusinessRejection):
        await policy().call("p", FAST, rejected)
    assert rejected.calls == 1


async def test_a_budget_is_spent_only_once_its_time_has_passed_too() -> None:
    # Two attempts allowed, but retries go on for 0.3 s: an outage of 8 quick failures
    # (a restarting participant) costs time, not the call.
    patient = RetryPolicy(
        max_attempts=2, initial_backoff=0.01, max_backoff=0.02, jitter=0.0, retry_for=0.3
    )
    rpc = FakeRpc(*(Transient("restarting") for _ in range(8)))
    assert await policy(minimum_calls=1000).call("p", patient, rpc) == "ok"
    assert rpc.calls == 9
    hopeless = FakeRpc(*(Transient("down") for _ in range(1000)))
    with pytest.raises(Transient):
        await policy(minimum_calls=1000).call("p", patient, hopeless)
    assert 2 < hopeless.calls < 1000


async def test_the_breaker_trips_on_a_failure_rate_not_on_failures_in_a_row() -> None:
    calls = policy(minimum_calls=10, rate=0.5, reset=60.0)
    board = calls.breakers
    # Four failures in a row, five successes, then a fifth failure: 50% of ten calls.
    outcomes = [Transient("down")] * 4 + [None] * 5
    for error in outcomes:
        rpc = FakeRpc(error) if error else FakeRpc()
        with suppress(Transient):
            await calls.call("p", SINGLE, rpc)
    assert board.views()[0].state == "closed"  # 4 of 9: below the minimum number of calls
    with pytest.raises(Transient):
        await calls.call("p", SINGLE, FakeRpc(Transient("down")))
    view = board.views()[0]
    assert (view.state, view.window_calls, view.window_failures) == ("open", 10, 5)
    assert board.is_open("p")


async def test_an_open_breaker_makes_callers_wait_then_lets_a_trial_through() -> None:
    calls = policy(minimum_calls=2, rate=0.5, reset=0.2)
    for _ in range(2):
        with pytest.raises(Transient):
            await calls.call("payment", SINGLE, FakeRpc(Transient("down")))
    assert calls.breakers.views()[0].state == "open"
    seen: list[tuple[int, str]] = []
    trial = FakeRpc()
    # One attempt allowed: meeting the open breaker does not spend it.
    assert await numbered_call(calls, "payment", SINGLE, trial, seen) == "ok"
    assert (trial.calls, seen) == (1, [(1, "got ok")])
    view = calls.breakers.views()[0]
    assert (view.state, view.window_failures) == ("closed", 0)
    assert [(t.from_state, t.to_state) for t in view.transitions] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


async def test_only_the_callers_deadline_ends_the_wait_for_an_open_breaker() -> None:
    calls = policy(minimum_calls=1, rate=0.5, reset=60.0)
    with pytest.raises(Transient):
        await calls.call("p", SINGLE, FakeRpc(Transient("down")))
    seen: list[tuple[int, str]] = []
    untouched = FakeRpc()
    waiting = asyncio.create_task(numbered_call(calls, "p", SINGLE, untouched, seen))
    await asyncio.sleep(0.05)
    assert calls.breakers.views()[0].waiting == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (untouched.calls, seen) == (0, [])  # no attempt made, none recorded


async def test_half_open_lets_one_trial_through_and_the_others_follow_it() -> None:
    calls = policy(minimum_calls=1, reset=0.01)
    with pytest.raises(Transient):
        await calls.call("p", SINGLE, FakeRpc(Transient("down")))
    await asyncio.sleep(0.02)
    release = asyncio.Event()
    in_trial = 0

    async def slow(timeout: float) -> str:
        nonlocal in_trial
        in_trial += 1
        await release.wait()
        return "ok"

    trial = asyncio.create_task(calls.call("p", SINGLE, slow))
    follower_rpc = FakeRpc()
    follower = asyncio.create_task(calls.call("p", SINGLE, follower_rpc))
    await asyncio.sleep(0.05)
    assert (in_trial, follower_rpc.calls) == (1, 0)  # the follower waits for the trial
    release.set()
    assert await trial == "ok"
    assert await follower == "ok"
    assert follower_rpc.calls == 1


async def test_rejections_and_cancellations_do_not_trip_the_breaker() -> None:
    calls = policy(minimum_calls=2)
    for _ in range(5):
        with pytest.raises(BusinessRejection):
            await calls.call("p", SINGLE, FakeRpc(BusinessRejection("NO", "no")))

    async def hang(timeout: float) -> str:
        await asyncio.sleep(10)
        return "never"

    for _ in range(3):
        task = asyncio.create_task(calls.call("p", SINGLE, hang))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    view = calls.breakers.views()[0]
    assert (view.state, view.window_failures) == ("closed", 0)


async def test_a_bulkhead_bounds_one_participant_and_leaves_the_others_free() -> None:
    calls = policy(bulkhead=2)
    release = asyncio.Event()

    async def stuck(timeout: float) -> str:
        await release.wait()
        return "late"

    slow = [asyncio.create_task(calls.call("shipping", SINGLE, stuck)) for _ in range(5)]
    await asyncio.sleep(0.05)
    view = calls.bulkheads.view("shipping")
    assert (view.in_flight, view.waiting, view.limit) == (2, 3, 2)
    # Another participant's calls do not queue behind shipping's.
    assert await calls.call("payment", SINGLE, FakeRpc()) == "ok"
    release.set()
    assert await asyncio.gather(*slow) == ["late"] * 5
    assert calls.bulkheads.peak("shipping") == 2


def test_bulkhead_limits_must_allow_a_call() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Bulkheads(4, {"shipping": 0})
