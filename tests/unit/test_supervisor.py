"""The supervisor restarts a failing task after a backoff, leaves a finished one alone,
and stops the rest."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.supervisor import Backoff, Supervisor
from tests.support import wait_until

QUICK = Backoff(initial=0.001, maximum=0.01)


async def test_a_failing_task_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0
    serving = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"boom {runs}")
        serving.set()
        await asyncio.Event().wait()  # then runs until stopped

    supervisor = Supervisor(QUICK)
    with caplog.at_level(logging.ERROR, logger="common.supervisor"):
        supervisor.start("flaky", flaky)
        async with asyncio.timeout(5):
            await serving.wait()
    assert (runs, supervisor.restarts["flaky"], supervisor.running) == (3, 2, ["flaky"])
    failures = [r for r in caplog.records if "task flaky failed" in r.getMessage()]
    assert len(failures) == 2 and failures[0].exc_info is not None
    await supervisor.stop()
    assert supervisor.running == []


async def test_a_task_that_returns_is_done_and_not_restarted() -> None:
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor(QUICK)
    supervisor.start("once", once)
    await wait_until(lambda: supervisor.running == [], interval=0.001)
    await asyncio.sleep(0.02)  # longer than any backoff: nothing starts it again
    assert (runs, supervisor.restarts["once"]) == (1, 0)


async def test_stop_cancels_a_task_waiting_to_restart() -> None:
    async def failing() -> None:
        raise RuntimeError("always")

    supervisor = Supervisor(Backoff(initial=60.0, maximum=60.0))
    supervisor.start("failing", failing)
    await wait_until(lambda: supervisor.restarts["failing"] == 1, interval=0.001)
    async with asyncio.timeout(1):
        await supervisor.stop()  # does not wait out the minute's backoff
    assert supervisor.running == []


async def test_names_are_unique_while_running() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor = Supervisor(QUICK)
    supervisor.start("loop", forever)
    with pytest.raises(ValueError, match="already running"):
        supervisor.start("loop", forever)
    await supervisor.stop()
