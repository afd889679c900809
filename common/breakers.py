"""Circuit breakers that shed load and never decide an outcome.

One pybreaker per participant is the state machine (closed -> open -> half-open ->
closed or open again). Two things are ours, in front of it:

- **When it trips**: on the failure *rate* over a sliding window with a minimum
  number of calls (the way Resilience4j and Polly do), not on N consecutive
  failures. Failures from 32 calls in flight come back in completion order, and a
  fast-failing fault returns before a slow success: five in a row said nothing
  about the participant. pybreaker's own consecutive count is set out of reach
  (``fail_max``); the window opens the breaker with ``CircuitBreaker.open()``.
- **What a caller does when it is open**: it *waits* (:meth:`BreakerBoard.admit`)
  until the breaker lets a trial call through, or the trial closed it. The wait is
  not an attempt: it ends only when the call can be made, or when the caller's own
  deadline cancels it. An open breaker costs a saga time, never its outcome.

Half-open lets one trial call through at a time; the other callers wait for its
result. Business rejections, barrier refusals and cancellations are answers from a
healthy participant: they count as successes in the window (pybreaker counts an
excluded error as a success, as it does a normal return).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pybreaker

from common.errors import Aborted, BusinessRejection, InvalidArgument, NotFound

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN

_NOT_FAILURES: tuple[type[BaseException], ...] = (
    BusinessRejection,
    Aborted,
    InvalidArgument,
    NotFound,
    asyncio.CancelledError,
)

# pybreaker's consecutive-failure trip, out of reach: the window decides.
_NEVER = 2**31 - 1
# The longest a waiting caller sleeps before it looks at the breaker again (a trial
# may end without a state change, e.g. cancelled).
_RECHECK_SECONDS = 0.5


@dataclass(frozen=True)
class BreakerSettings:
    """Every participant's breaker: open when at least ``failure_rate`` of the calls
    in the last ``window`` seconds failed, once there were ``minimum_calls`` of them;
    let one trial call through ``reset_timeout`` seconds after opening."""

    failure_rate: float = 0.5
    minimum_calls: int = 20
    window: float = 10.0
    reset_timeout: float = 1.0


@dataclass(frozen=True)
class BreakerTransition:
    participant: str
    from_state: str
    to_state: str
    at: datetime


@dataclass(frozen=True)
class BreakerView:
    """A breaker as the API shows it."""

    participant: str
    state: str
    opened_at: datetime | None
    settings: BreakerSettings
    window_calls: int
    window_failures: int
    waiting: int
    transitions: tuple[BreakerTransition, ...]


BreakerListener = Callable[[BreakerTransition], None]


class _Window:
    """Outcomes of the calls of the last ``seconds``: (monotonic time, failed)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._calls: deque[tuple[float, bool]] = deque()
        self.failures = 0

    def add(self, failed: bool) -> None:
        now = time.monotonic()
        self._calls.append((now, failed))
        self.failures += failed
        self._expire(now)

    def counts(self) -> tuple[int, int]:
        self._expire(time.monotonic())
        return len(self._calls), self.failures

    def clear(self) -> None:
        self._calls.clear()
        self.failures = 0

    def _expire(self, now: float) -> None:
        horizon = now - self._seconds
        while self._calls and self._calls[0][0] < horizon:
            _, failed = self._calls.popleft()
            self.failures -= failed


class _Listener(pybreaker.CircuitBreakerListener):
    """Feeds every outcome to the board's window and tells it of state changes."""

    def __init__(self, board: BreakerBoard) -> None:
        self._board = board

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else CLOSED
        self._board._changed(str(cb.name), str(old), str(new_state.name))

    def failure(self, cb: Any, exc: BaseException) -> None:
        self._board._outcome(str(cb.name), failed=True)

    def success(self, cb: Any) -> None:
        self._board._outcome(str(cb.name), failed=False)


class BreakerBoard:
    """One circuit breaker per participant, created on first use."""

    def __init__(self, settings: BreakerSettings, history: int = 20) -> None:
        self.settings = settings
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._windows: dict[str, _Window] = {}
        self._trial_in_flight: set[str] = set()
        self._waiting: dict[str, int] = {}
        # Set (and replaced) on every state change or trial end: wakes the waiters.
        self._wakeup: dict[str, asyncio.Event] = {}
        self._history: dict[str, deque[BreakerTransition]] = {}
        self._history_size = history
        self._listeners: list[BreakerListener] = []
        self._listener = _Listener(self)

    def add_listener(self, listener: BreakerListener) -> None:
        """Call ``listener`` on every state change (telemetry adds a span event)."""
        self._listeners.append(listener)

    def breaker(self, participant: str) -> pybreaker.CircuitBreaker:
        found = self._breakers.get(participant)
        if found is None:
            found = pybreaker.CircuitBreaker(
                fail_max=_NEVER,
                reset_timeout=self.settings.reset_timeout,
                exclude=list(_NOT_FAILURES),
                listeners=[self._listener],
                name=participant,
                # Keep the real error (e.g. UNAVAILABLE) for the call that trips it.
                throw_new_error_on_trip=False,
            )
            self._breakers[participant] = found
            self._windows[participant] = _Window(self.settings.window)
            self._history[participant] = deque(maxlen=self._history_size)
        return found

    def is_open(self, participant: str) -> bool:
        """True while the breaker refuses calls and its reset timeout has not passed:
        a new saga that needs this participant first would only wait."""
        breaker = self.breaker(participant)
        return breaker.current_state == OPEN and self._until_trial(breaker) > 0

    @asynccontextmanager
    async def admit(self, participant: str) -> AsyncIterator[None]:
        """Wait until the breaker lets a call through; the block may then make it
        (inside :meth:`counted`).

        The wait is not a call and is never counted; it ends when the breaker is
        closed, or lets this caller make the trial call (held for the whole block),
        or when the caller is cancelled (its deadline).
        """
        # No await between the check and the claim: the check holds.
        while not self._may_call(participant):
            await self._wait(participant)
        trial = self.breaker(participant).current_state != CLOSED
        if trial:
            self._trial_in_flight.add(participant)
        try:
            yield
        finally:
            if trial:
                self._trial_in_flight.discard(participant)
                self._wake(participant)

    def _may_call(self, participant: str) -> bool:
        breaker = self.breaker(participant)
        state = breaker.current_state
        if state == CLOSED:
            return True
        if state == OPEN and self._until_trial(breaker) > 0:
            return False
        return participant not in self._trial_in_flight  # the trial call is free

    @contextmanager
    def counted(self, participant: str) -> Iterator[None]:
        """Make an admitted call through the participant's breaker, which counts its
        outcome (and may change state: the transition is an event of the current span).

        A call admitted just before another caller's failure opened the breaker is
        still made, uncounted: it was let through, and refusing it now would spend
        an attempt on the breaker.
        """
        with ExitStack() as stack:
            # Opened since admission: the call goes ahead uncounted.
            with suppress(pybreaker.CircuitBreakerError):
                stack.enter_context(self.breaker(participant).calling())
            yield

    async def _wait(self, participant: str) -> None:
        breaker = self.breaker(participant)
        wakeup = self._wakeup.setdefault(participant, asyncio.Event())
        pause = _RECHECK_SECONDS
        if breaker.current_state == OPEN:
            pause = min(pause, max(self._until_trial(breaker), 0.001))
        self._waiting[participant] = self._waiting.get(participant, 0) + 1
        try:
            async with asyncio.timeout(pause):
                await wakeup.wait()
        except TimeoutError:
            pass
        finally:
            self._waiting[participant] -= 1

    def _until_trial(self, breaker: pybreaker.CircuitBreaker) -> float:
        opened_at = breaker._state_storage.opened_at  # pybreaker exposes it only here
        if opened_at is None:
            return 0.0
        elapsed = (datetime.now(UTC) - opened_at).total_seconds()
        return float(breaker.reset_timeout) - elapsed

    def _wake(self, participant: str) -> None:
        wakeup = self._wakeup.pop(participant, None)
        if wakeup is not None:
            wakeup.set()

    def _outcome(self, participant: str, failed: bool) -> None:
        window = self._windows[participant]
        window.add(failed)
        breaker = self._breakers[participant]
        if not failed or breaker.current_state != CLOSED:
            return  # half-open: pybreaker itself reopens on a failed trial
        calls, failures = window.counts()
        if calls >= self.settings.minimum_calls and failures >= self.settings.failure_rate * calls:
            log.warning(
                "breaker tripped participant=%s failures=%d calls=%d window_seconds=%g",
                participant,
                failures,
                calls,
                self.settings.window,
            )
            breaker.open()

    def views(self) -> list[BreakerView]:
        """Every breaker created so far, by participant name."""
        return [self._view(name) for name in sorted(self._breakers)]

    def _view(self, participant: str) -> BreakerView:
        breaker = self._breakers[participant]
        calls, failures = self._windows[participant].counts()
        opened_at = breaker._state_storage.opened_at if breaker.current_state != CLOSED else None
        return BreakerView(
            participant=participant,
            state=str(breaker.current_state),
            opened_at=opened_at,
            settings=self.settings,
            window_calls=calls,
            window_failures=failures,
            waiting=self._waiting.get(participant, 0),
            transitions=tuple(self._history[participant]),
        )

    def _changed(self, participant: str, old: str, new: str) -> None:
        transition = BreakerTransition(participant, old, new, datetime.now(UTC))
        self._history.setdefault(participant, deque(maxlen=self._history_size)).append(transition)
        if new == CLOSED:
            # A closed breaker judges the participant afresh, not by the outage it had.
            window = self._windows.get(participant)
            if window is not None:
                window.clear()
        log.warning("breaker participant=%s from=%s to=%s", participant, old, new)
        self._wake(participant)
        for listener in self._listeners:
            listener(transition)


__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "BreakerBoard",
    "BreakerListener",
    "BreakerSettings",
    "BreakerTransition",
    "BreakerView",
]
