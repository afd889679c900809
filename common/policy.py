"""One call policy: retry (tenacity) around a circuit breaker (pybreaker) around the RPC.

::

    CallPolicy.call(participant, retry, rpc, scope)
      tenacity: exponential backoff with jitter, max attempts, only Transient errors
        scope(number)                  the caller's attempt: logged before, recorded after
          BreakerBoard.guard(name)     one pybreaker per participant; open -> BreakerOpen
            translate_rpc_errors()     AioRpcError -> the error tree (common.errors)
              rpc(attempt_timeout)     the call itself, with its per-attempt deadline

Only :class:`~common.errors.Transient` errors are retried, :class:`BreakerOpen`
included (it is a Transient): an open breaker fails the attempt at once, and the
next attempt comes after the usual backoff. Business rejections, barrier refusals
and cancellations never count as breaker failures. Breaker state changes are
logged, kept (the latest few per participant) and passed to listeners, so the
API can show them and telemetry can add them to spans.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import pybreaker
from tenacity import wait_exponential_jitter
from tenacity.wait import WaitBaseT

from common.errors import (
    Aborted,
    BreakerOpen,
    BusinessRejection,
    InvalidArgument,
    NotFound,
    Transient,
    translate_rpc_errors,
)
from common.retrying import attempt_then_retry

log = logging.getLogger(__name__)

_T = TypeVar("_T")

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN

# Answers from a healthy participant: they say nothing about its availability.
# (pybreaker counts an excluded error as a success, as it does a normal return.)
_NOT_FAILURES: tuple[type[BaseException], ...] = (
    BusinessRejection,
    Aborted,
    InvalidArgument,
    NotFound,
    asyncio.CancelledError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How one step (or compensation) is retried.

    ``max_attempts`` of 0 means "until it succeeds" (forward recovery).
    Durations are seconds.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.1
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.1
    attempt_timeout: float = 2.0


@dataclass(frozen=True)
class BreakerSettings:
    """Every participant's breaker: open after ``failure_threshold`` consecutive
    failures, try one call again after ``reset_timeout`` seconds."""

    failure_threshold: int = 5
    reset_timeout: float = 10.0


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
    failure_count: int
    opened_at: datetime | None
    failure_threshold: int
    reset_timeout: float
    transitions: tuple[BreakerTransition, ...]


BreakerListener = Callable[[BreakerTransition], None]

# Told before each retry: the number of the coming attempt, the wait before it in
# seconds, and the error that ended the previous one (telemetry adds a span event).
RetryListener = Callable[[int, float, BaseException | None], None]


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, board: BreakerBoard) -> None:
        self._board = board

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else CLOSED
        self._board._changed(str(cb.name), str(old), str(new_state.name))


class BreakerBoard:
    """One circuit breaker per participant, created on first use."""

    def __init__(self, settings: BreakerSettings, history: int = 20) -> None:
        self.settings = settings
        self._breakers: dict[str, pybreaker.CircuitBreaker] = {}
        self._trial_in_flight: set[str] = set()
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
                fail_max=self.settings.failure_threshold,
                reset_timeout=self.settings.reset_timeout,
                exclude=list(_NOT_FAILURES),
                listeners=[self._listener],
                name=participant,
                # Keep the real error (e.g. UNAVAILABLE) for the call that trips it.
                throw_new_error_on_trip=False,
            )
            self._breakers[participant] = found
            self._history[participant] = deque(maxlen=self._history_size)
        return found

    @contextmanager
    def guard(self, participant: str) -> Iterator[None]:
        """Run the block through the participant's breaker.

        Half-open lets one trial call through at a time; the others fail fast.

        Raises:
            BreakerOpen: the breaker refused the call; the block did not run.
        """
        breaker = self.breaker(participant)
        trial = breaker.current_state != CLOSED
        if trial and participant in self._trial_in_flight:
            raise BreakerOpen(f"circuit breaker for {participant} is half-open, trial in flight")
        if trial:
            self._trial_in_flight.add(participant)
        try:
            # CircuitBreakerError comes only from entering: the breaker is open.
            with breaker.calling():
                yield
        except pybreaker.CircuitBreakerError:
            raise BreakerOpen(f"circuit breaker for {participant} is open") from None
        finally:
            if trial:
                self._trial_in_flight.discard(participant)

    def views(self) -> list[BreakerView]:
        """Every breaker created so far, by participant name."""
        return [self._view(name) for name in sorted(self._breakers)]

    def _view(self, participant: str) -> BreakerView:
        breaker = self._breakers[participant]
        storage = breaker._state_storage  # pybreaker exposes opened_at only here
        opened_at = storage.opened_at if breaker.current_state != CLOSED else None
        return BreakerView(
            participant=participant,
            state=str(breaker.current_state),
            failure_count=int(breaker.fail_counter),
            opened_at=opened_at,
            failure_threshold=self.settings.failure_threshold,
            reset_timeout=self.settings.reset_timeout,
            transitions=tuple(self._history[participant]),
        )

    def _changed(self, participant: str, old: str, new: str) -> None:
        transition = BreakerTransition(participant, old, new, datetime.now(UTC))
        self._history.setdefault(participant, deque(maxlen=self._history_size)).append(transition)
        log.warning("breaker participant=%s from=%s to=%s", participant, old, new)
        for listener in self._listeners:
            listener(transition)


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

    def __init__(self, breakers: BreakerBoard) -> None:
        self.breakers = breakers

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

        Each attempt runs inside ``scope(number)`` (numbers start at
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
            async with scope(number) as slot:
                with self.breakers.guard(participant), translate_rpc_errors():
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
            one, Transient, _wait(retry), before_retry, max_attempts=retry.max_attempts
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
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "AttemptScope",
    "AttemptSlot",
    "BreakerBoard",
    "BreakerSettings",
    "BreakerTransition",
    "BreakerView",
    "CallPolicy",
    "RetryListener",
    "RetryPolicy",
    "bare_attempt",
]
