"""Long-lived tasks under one supervisor: a task that fails is logged and started again
after a backoff; none dies silently.

A process's background loops (event followers, the stall sweep, the relay, the
finished notifier, retention) each run until the process stops. An unexpected error
in one of them used to end it quietly, leaving the process serving but deaf. Here the
error is logged with its traceback and the task is started again, after an
exponential backoff with jitter (tenacity's wait) that resets once a run lasted a
while. A task that returns is done; :meth:`Supervisor.stop` cancels the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import RetryCallState, wait_exponential_jitter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Waits between restarts, in seconds; a run of ``healthy_after`` resets them."""

    initial: float = 0.5
    maximum: float = 30.0
    healthy_after: float = 60.0


class Supervisor:
    """Runs named long-lived tasks, restarting each one that fails."""

    def __init__(self, backoff: Backoff = Backoff()) -> None:
        self.backoff = backoff
        self._wait = wait_exponential_jitter(
            multiplier=backoff.initial, max=backoff.maximum, jitter=backoff.initial
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` until it returns; started again after each failure."""
        if name in self._tasks and not self._tasks[name].done():
            raise ValueError(f"a task named {name!r} is already running")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep(name, work), name=name)

    @property
    def running(self) -> list[str]:
        """The names of the tasks not yet finished."""
        return sorted(name for name, task in self._tasks.items() if not task.done())

    async def stop(self) -> None:
        """Cancel every task and wait for them to end."""
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _keep(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        failures = 0
        while True:
            began = time.monotonic()
            try:
                await work()
                return
            except Exception:
                if time.monotonic() - began >= self.backoff.healthy_after:
                    failures = 0  # it ran well for a while: this is a new incident
                failures += 1
                delay = self._wait(_at_attempt(failures))
                self.restarts[name] += 1
                log.exception(
                    "task %s failed; starting it again in %.2f s (failure %d in a row)",
                    name,
                    delay,
                    failures,
                )
            await asyncio.sleep(delay)


def _at_attempt(number: int) -> RetryCallState:
    """What tenacity's waits read of a retry state: the attempt number."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = number
    return state
