"""The call policy with a fake RPC: retry only transient errors, and a breaker per participant."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from common.errors import BreakerOpen, BusinessRejection, Transient
from common.policy import AttemptSlot, BreakerBoard, BreakerSettings, CallPolicy, RetryPolicy

FAST = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.002, jitter=0.0)


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


def policy(threshold: int = 3, reset: float = 0.05) -> CallPolicy:
    return CallPolicy(BreakerBoard(BreakerSettings(threshold, reset)))


async def test_transient_errors_are_retried_and_attempts_numbered() -> None:
    seen: list[tuple[int, str]] = []

    @asynccontextmanager
    async def scope(number: int) -> AsyncIterator[AttemptSlot[str]]:
        slot: AttemptSlot[str] = AttemptSlot()
        try:
            yield slot
        except Transient:
            seen.append((number, "transient"))
            raise
        seen.append((number, f"got {slot.value}"))

    rpc = FakeRpc(Transient("down"), Transient("down"))
    assert await policy().call("p", FAST, rpc, scope=scope, first_number=3) == "ok"
    assert seen == [(3, "transient"), (4, "transient"), (5, "got ok")]


async def test_retries_run_out_and_rejections_are_never_retried() -> None:
    rpc = FakeRpc(*(Transient(f"down {i}") for i in range(5)))
    with pytest.raises(Transient, match="down 3"):
        await policy(threshold=50).call("p", FAST, rpc)
    assert rpc.calls == 4
    rejected = FakeRpc(BusinessRejection("NO", "no"))
    with pytest.raises(BusinessRejection):
        await policy().call("p", FAST, rejected)
    assert rejected.calls == 1


async def test_breaker_opens_fails_fast_half_opens_and_closes() -> None:
    calls = policy(threshold=3, reset=0.2)
    board = calls.breakers
    single = RetryPolicy(max_attempts=1)
    for _ in range(3):
        with pytest.raises(Transient):
            await calls.call("payment", single, FakeRpc(Transient("down")))
    assert board.views()[0].state == "open"
    untouched = FakeRpc()
    with pytest.raises(BreakerOpen):
        await calls.call("payment", single, untouched)
    assert untouched.calls == 0  # failed fast: the participant saw nothing
    await asyncio.sleep(0.25)
    trial = FakeRpc()
    assert await calls.call("payment", single, trial) == "ok"
    view = board.views()[0]
    assert (view.state, view.failure_count) == ("closed", 0)
    assert [(t.from_state, t.to_state) for t in view.transitions] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


async def test_half_open_lets_one_trial_through() -> None:
    calls = policy(threshold=1, reset=0.01)
    single = RetryPolicy(max_attempts=1)
    with pytest.raises(Transient):
        await calls.call("p", single, FakeRpc(Transient("down")))
    await asyncio.sleep(0.02)
    release = asyncio.Event()

    async def slow(timeout: float) -> str:
        await release.wait()
        return "ok"

    trial = asyncio.create_task(calls.call("p", single, slow))
    await asyncio.sleep(0.01)
    with pytest.raises(BreakerOpen, match="trial in flight"):
        await calls.call("p", single, FakeRpc())
    release.set()
    assert await trial == "ok"


async def test_rejections_and_cancellations_do_not_trip_the_breaker() -> None:
    calls = policy(threshold=2)
    single = RetryPolicy(max_attempts=1)
    for _ in range(5):
        with pytest.raises(BusinessRejection):
            await calls.call("p", single, FakeRpc(BusinessRejection("NO", "no")))

    async def hang(timeout: float) -> str:
        await asyncio.sleep(10)
        return "never"

    for _ in range(3):
        task = asyncio.create_task(calls.call("p", single, hang))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    view = calls.breakers.views()[0]
    assert (view.state, view.failure_count) == ("closed", 0)
