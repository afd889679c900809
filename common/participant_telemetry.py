"""What a participant tells of the saga steps it runs, in traces and metrics, in both modes.

In orchestration the coordinator's attempt spans tell each step's story, and the
participant's server span hangs under the attempt that called it. In choreography
no coordinator calls: a service reacting to an event runs the step, so each attempt
at a reaction is a step attempt of its own, named as the coordinator names one. It is
one span, the CONSUMER span of the event it reacts to (the hop), carrying the step::

    step charge_payment                      CONSUMER span, one per attempt (common/inbox.py):
                                             messaging.*, sagawire.event.*, saga.id,
                                             saga.type, saga.mode, saga.step, saga.action,
                                             saga.phase, saga.attempt, saga.outcome,
                                             saga.error_reason, saga.barrier

The events the step publishes carry its context onwards. An event a service follows but
reacts to with no step gets a consumer span named ``<service> <event type>``.

An attempt's outcome uses the coordinator's words: ``ok``; ``rejected`` (a business
"no", or a request the barrier refused as another's, REQUEST_MISMATCH); ``aborted``
(an execute after its compensation); ``transient`` (retried: the fault hook or a busy
store); ``error`` (a poison event); ``ignored`` (not a choreographed saga's event).
Anything but ok and ignored sets the attempt's status to ERROR. A compensation is
named ``compensate <step>``, as the coordinator names one.

Each attempt records ``step_duration`` (and, when it is retried, ``step_retries``),
as the coordinator does for the steps it drives, and ``sagawire.action.duration``.

:class:`common.participant.ActionRunner` reports what the barrier decided through
:func:`barrier_decided` and :func:`barrier_refused`, in both modes: counted (a
decision once its transaction commits, :func:`common.store.after_commit`), set as
``saga.barrier`` on the current span (the server span of a call, or the attempt of a
reaction, which learns its outcome from it; a context variable carries the attempt
into the runner, which the reaction calls inside the consumer's transaction).
:func:`counted_call` counts a participant call by action and outcome.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from opentelemetry.util.types import AttributeValue

from common.errors import (
    Aborted,
    BusinessRejection,
    RequestMismatch,
    SagawireError,
    Transient,
)
from common.grpc_errors import status_code_for
from common.store import after_commit
from common.telemetry import consumer_span, saga_metrics, service_metrics
from protos.sagawire.v1 import events_pb2

OK = "ok"
REJECTED = "rejected"
ABORTED = "aborted"
TRANSIENT = "transient"
ERROR = "error"
IGNORED = "ignored"
INTERRUPTED = "interrupted"

CHOREOGRAPHY = "choreography"
# What the barrier did with a request (sagawire.barrier.decisions, saga.barrier).
REFUSED_LATE = "refused_late"
REFUSED_MISMATCH = "refused_mismatch"


@dataclass(frozen=True)
class ReactionStep:
    """The saga step a reaction runs: its attempts are that step's attempts."""

    saga_type: str
    step: str
    action: str
    compensate: bool = False

    @property
    def phase(self) -> str:
        return "compensate" if self.compensate else "execute"

    @property
    def span_name(self) -> str:
        return f"{'compensate' if self.compensate else 'step'} {self.step}"


def error_reason(error: BaseException) -> str:
    """An error as an attempt's ``saga.error_reason``: its reason, a transient error's
    status code, or its type."""
    reason = getattr(error, "reason", "")
    if reason:
        return str(reason)
    if isinstance(error, Transient):
        return str(status_code_for(error).name)
    return type(error).__name__


class StepAttempt:
    """One attempt at a reaction's step: its span, and how it ended."""

    def __init__(self, step: ReactionStep, span: Span) -> None:
        self.step = step
        self.span = span
        self.outcome: str | None = None
        self._reason = ""
        self._message = ""

    def decided(self, decision: str, rejection: BusinessRejection | None = None) -> None:
        """What the barrier did with the reaction's request (see barrier_decided)."""
        self.span.set_attribute("saga.barrier", decision)
        if rejection is not None:
            self.ended(REJECTED, rejection.reason, rejection.message)
        elif decision == REFUSED_LATE:
            self.ended(ABORTED, "ABORTED", "the step was compensated before this execute")
        elif decision == REFUSED_MISMATCH:
            self.ended(REJECTED, RequestMismatch.REASON, "another request holds the step's key")
        else:
            self.ended(OK)

    def ended(self, outcome: str, reason: str = "", message: str = "") -> None:
        self.outcome, self._reason, self._message = outcome, reason, message

    def failed(self, outcome: str, error: BaseException) -> None:
        """The attempt stopped on ``error``: ``transient`` (retried) or ``error`` (poison)."""
        self.ended(outcome, error_reason(error), str(error))

    def finish(self) -> str:
        """Set the outcome on the span; the outcome."""
        outcome = self.outcome or IGNORED
        self.span.set_attribute("saga.outcome", outcome)
        if outcome not in (OK, IGNORED):
            self.span.set_attribute("saga.error_reason", self._reason or outcome)
            self.span.set_status(StatusCode.ERROR, self._message or outcome)
        return outcome


_attempt: contextvars.ContextVar[StepAttempt | None] = contextvars.ContextVar(
    "sagawire_step_attempt", default=None
)


@contextmanager
def reaction_attempt(
    event: events_pb2.Event,
    consumer: str,
    step: ReactionStep | None,
    number: int,
    started_ns: int,
) -> Iterator[StepAttempt | None]:
    """One attempt at reacting to ``event``: its consumer span (from ``started_ns``, before
    any fault hook), current for the block, which is the step's attempt when the reaction
    runs one. The caller marks a failure (:meth:`StepAttempt.failed`) and lets the
    exception out; the span records it."""
    failure = ""
    try:
        if step is None:
            with consumer_span(event, f"{consumer} {event.type}", started_ns) as consumed:
                if number > 1:
                    consumed.set_attribute("sagawire.event.attempt", number)
                yield None
            return
        with _step_attempt(event, step, number, started_ns) as attempt:
            yield attempt
    except Exception as error:
        failure = type(error).__name__
        raise
    finally:
        seconds = (time.time_ns() - started_ns) / 1e9
        service_metrics().event_processed(event.source, consumer, seconds, failure)


@contextmanager
def _step_attempt(
    event: events_pb2.Event, step: ReactionStep, number: int, started_ns: int
) -> Iterator[StepAttempt]:
    attributes: dict[str, AttributeValue] = {
        "saga.type": step.saga_type,
        "saga.mode": CHOREOGRAPHY,
        "saga.step": step.step,
        "saga.action": step.action,
        "saga.phase": step.phase,
        "saga.attempt": number,
    }
    if number > 1:
        attributes["sagawire.event.attempt"] = number
    outcome = IGNORED
    try:
        with consumer_span(event, step.span_name, started_ns, attributes) as span:
            attempt = StepAttempt(step, span)
            token = _attempt.set(attempt)
            try:
                yield attempt
            finally:
                _attempt.reset(token)
                outcome = attempt.finish()
    finally:
        seconds = (time.time_ns() - started_ns) / 1e9
        saga_metrics().step_finished(
            step.saga_type, CHOREOGRAPHY, step.step, step.action, outcome, seconds
        )
        service_metrics().action_finished(
            step.action, step.phase, CHOREOGRAPHY, outcome, "event", seconds
        )


def reaction_retried(step: ReactionStep | None) -> None:
    """A reaction's step failed transiently and will be tried again."""
    if step is not None:
        saga_metrics().step_retried(step.saga_type, CHOREOGRAPHY, step.step, step.action)


def barrier_decided(
    action: str, phase: str, decision: str, rejection: BusinessRejection | None = None
) -> None:
    """The barrier applied, replayed or nulled a request of ``action``: counted once the
    transaction commits (one that lost a race runs again and decides again), and told to
    the current span (and to the reaction attempt running it, if any)."""
    after_commit(partial(service_metrics().barrier_decided, action, phase, decision))
    _tell(decision, rejection)


def barrier_refused(action: str, phase: str, refusal: SagawireError) -> None:
    """The barrier refused a request of ``action``: a step compensated before it (or past
    the horizon), or a different request under its key. The work ends with the refusal
    and nothing commits, so it is counted at once."""
    decision = REFUSED_MISMATCH if isinstance(refusal, RequestMismatch) else REFUSED_LATE
    service_metrics().barrier_decided(action, phase, decision)
    _tell(decision)


def _tell(decision: str, rejection: BusinessRejection | None = None) -> None:
    attempt = _attempt.get()
    if attempt is not None:
        attempt.decided(decision, rejection)
    else:
        trace.get_current_span().set_attribute("saga.barrier", decision)


@contextmanager
def counted_call(action: str, phase: str, mode: str) -> Iterator[None]:
    """A participant call of ``action``: its duration and outcome, by how the block ends."""
    started = time.perf_counter()
    outcome = OK
    try:
        yield
    except BusinessRejection:
        outcome = REJECTED
        raise
    except Aborted:
        outcome = ABORTED
        raise
    except Transient:
        outcome = TRANSIENT
        raise
    except asyncio.CancelledError:
        outcome = INTERRUPTED  # the caller gave up, or the server is stopping
        raise
    except BaseException:
        outcome = ERROR
        raise
    finally:
        seconds = time.perf_counter() - started
        service_metrics().action_finished(action, phase, mode, outcome, "call", seconds)
