"""The runner's telemetry: a span per saga run, a child per attempt, and the saga metrics.

One orchestrated order, as ``sagawire trace`` draws it::

    /sagawire.v1.Coordinator/PlaceOrder      SERVER span of the incoming call
      saga place_order                       saga.id, saga.type, saga.mode, saga.status
        step reserve_stock                   one execute attempt, and the CLIENT span of its
          /sagawire.v1.Participant/Execute   call: saga.step, saga.action, saga.attempt,
                                             saga.phase, saga.outcome, saga.error_reason,
                                             rpc.*; ERROR status on failure; under it, the
                                             participant's SERVER span
        compensate reserve_stock             one compensation attempt, the same attributes

An attempt is one span: the participant call made in it carries it on the wire
(:func:`common.grpc_spans.call_made_in`) instead of making a CLIENT span of its own.

Retries are ``retry`` events on the saga span (the attempt that failed has ended by
then); a breaker's state change is a ``breaker.state_change`` event on the span that
was current when it changed, i.e. the attempt that tripped or probed it.

A saga's first run hangs under the call that started it when that call waits for the
saga's outcome (``PlaceOrder`` with ``wait``). A call that does not wait answers at
once, and a saga span under it would outlive its parent: such a saga is the root of a
trace of its own, whose id the caller chose and logged (:func:`saga_trace_id`), and
the two spans link to each other. A later run (recovery after
a restart, or ``RetrySaga``) continues the trace whose id the saga log kept, the one
``GetSaga`` returns, so a saga is one trace from start to end: the first run's saga
span gets a span id derived from the saga id (:func:`saga_span_context`), so a later
run, in this process or after a restart, names it as its parent without its id being
logged. A later run carries a ``resumed`` event, and a ``RetrySaga`` run links to that
call's span.

A choreographed saga's run ends once its first step is done, but the saga does not:
its span is handed to :class:`CarriedSpans` and ended by the observer when it records
the saga's outcome (or that it stalled), so the span covers the whole saga, as an
orchestrated one's does.

Metrics (:class:`common.metrics.SagaMetrics`): a saga's end with its duration since it
was created, every attempt with its duration and outcome, every retry, every breaker
change. The tracer and the instruments are those of the active telemetry, looked up
once per run.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue

from common.breakers import BreakerTransition
from common.errors import SagawireError
from common.grpc_spans import call_made_in
from common.metrics import BREAKER_STATES
from common.telemetry import (
    current_trace_id,
    new_trace_id,
    saga_metrics,
    samples_new_trace,
    tracer,
    with_span_id,
)
from contract.definitions import Step
from coordinator.engine.outcomes import error_detail
from coordinator.log.records import AttemptChange, AttemptOutcome, Phase, SagaRecord, SagaStatus

SAGA_ID = "saga.id"
SAGA_TYPE = "saga.type"
SAGA_MODE = "saga.mode"
SAGA_STATUS = "saga.status"
SAGA_STEP = "saga.step"
SAGA_ACTION = "saga.action"
SAGA_ATTEMPT = "saga.attempt"
SAGA_PHASE = "saga.phase"
SAGA_OUTCOME = "saga.outcome"
SAGA_ERROR_REASON = "saga.error_reason"

# An attempt that ended without recording how: the coordinator stopped under it.
_INTERRUPTED = AttemptOutcome.INTERRUPTED.value


class RunCause(StrEnum):
    """Why a saga run begins."""

    STARTED = "started"  # PlaceOrder: the first run
    RECOVERED = "recovered"  # recovery, when the coordinator starts
    RETRIED = "retried"  # RetrySaga, for a saga that needs attention
    REDRIVEN = "redriven"  # again, after an unexpected error stopped its last run


def saga_span_id(saga_id: str) -> int:
    """The span id of a saga's first run (see the module docstring)."""
    digest = hashlib.blake2b(saga_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest) or 1


def _logged_trace_id(record: SagaRecord) -> int | None:
    try:
        trace_id = int(record.trace_id, 16)
    except ValueError:
        return None
    return trace_id or None


def saga_span_context(record: SagaRecord) -> SpanContext | None:
    """The first run's saga span, in the saga's logged trace: a later run's parent.

    Sampled as the sampler samples that trace when it starts here: a saga not traced at
    first (``OTEL_TRACES_SAMPLER`` with a ratio) is not traced from its middle on either.
    (A trace begun by a client that sent its own sampling decision is decided again by
    the sampler's rule for a new trace: the log keeps the trace id, not the decision.)"""
    trace_id = _logged_trace_id(record)
    if trace_id is None:
        return None
    sampled = samples_new_trace(trace_id, f"saga {record.definition}")
    found = SpanContext(
        trace_id,
        saga_span_id(record.saga_id),
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT),
    )
    return found if found.is_valid else None


def saga_trace_id(waits: bool) -> str:
    """The trace a new saga is logged with: the current one (the starting call's) when
    the call waits for the saga's outcome, else a fresh one of the saga's own."""
    return current_trace_id() if waits else new_trace_id()


def link_to_saga(record: SagaRecord) -> None:
    """Link the current span (the starting call's) to the saga's span when the saga runs
    in a trace of its own."""
    current = trace.get_current_span()
    saga = saga_span_context(record)
    if saga is not None and saga.trace_id != current.get_span_context().trace_id:
        current.add_link(saga, {"saga.id": record.saga_id})


def _mark_status(span: Span, status: SagaStatus) -> None:
    """The saga's status on its span; ERROR unless it completed or still runs."""
    span.set_attribute(SAGA_STATUS, status.value)
    if status in (SagaStatus.COMPENSATED, SagaStatus.NEEDS_ATTENTION, SagaStatus.STALLED):
        span.set_status(StatusCode.ERROR, status.value.replace("_", " "))


def _end(span: Span, status: SagaStatus) -> None:
    _mark_status(span, status)
    span.end()


# How the observer sees a choreographed saga end.
_OBSERVED_ENDS = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.STALLED})


class CarriedSpans:
    """Saga spans of choreographed sagas the services carry on, until the observer
    records how each ended. Bounded: past ``size`` the oldest is ended as it is."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._spans: dict[str, Span] = {}
        # Sagas that settled before their span was handed over (the services were
        # quicker than the run's last write): the span ends as soon as it comes.
        self._early: OrderedDict[str, SagaStatus] = OrderedDict()

    def __len__(self) -> int:
        return len(self._spans)

    def keep(self, saga_id: str, span: Span) -> None:
        early = self._early.pop(saga_id, None)
        if early is not None:
            _end(span, early)
            return
        self._spans[saga_id] = span
        if len(self._spans) > self._size:
            oldest = next(iter(self._spans))
            self._spans.pop(oldest).end()

    def settled(self, saga_id: str, status: SagaStatus) -> None:
        """The observer recorded ``status``: end the saga's span if it has settled."""
        if status not in _OBSERVED_ENDS:
            return
        span = self._spans.pop(saga_id, None)
        if span is not None:
            _end(span, status)
            return
        self._early[saga_id] = status
        if len(self._early) > self._size:
            self._early.popitem(last=False)

    def end_all(self) -> None:
        """At shutdown: end every span still open, as it is (so it is exported)."""
        spans, self._spans = self._spans, {}
        for span in spans.values():
            span.end()


class SagaTelemetry:
    """The span and the metrics of one saga run (see the module docstring)."""

    __slots__ = ("_carried", "_metrics", "_tracer", "mode", "saga_id", "saga_type", "span")

    def __init__(
        self,
        record: SagaRecord,
        cause: RunCause,
        context: otel_context.Context | None = None,
    ) -> None:
        self._tracer = tracer()
        self._metrics = saga_metrics()
        self.saga_id = record.saga_id
        self.saga_type = record.definition
        self.mode = record.mode
        self._carried: CarriedSpans | None = None
        parent, links = context, []
        caller = trace.get_current_span(context).get_span_context()
        own_trace = _logged_trace_id(record)
        if cause is not RunCause.STARTED:
            if caller.is_valid:
                links.append(Link(caller))
            logged = saga_span_context(record)
            if logged is not None:
                parent = trace.set_span_in_context(NonRecordingSpan(logged))
        elif own_trace is not None and own_trace != caller.trace_id:
            # The caller does not wait for the saga: a root of the trace logged for it.
            parent = otel_context.Context()
            if caller.is_valid:
                links.append(Link(caller))
        # The first run's span id is the one later runs name as their parent.
        chosen = saga_span_id(record.saga_id) if cause is RunCause.STARTED else None
        with with_span_id(chosen, own_trace):
            self.span: Span = self._tracer.start_span(
                f"saga {record.definition}",
                context=parent,
                links=links,
                attributes={
                    SAGA_ID: record.saga_id,
                    SAGA_TYPE: self.saga_type,
                    SAGA_MODE: self.mode,
                },
            )
        if cause is not RunCause.STARTED:
            self.span.add_event(
                "resumed", {"saga.resumed_by": cause.value, SAGA_STATUS: record.status.value}
            )

    def started(self) -> None:
        """Count a new saga (once, at its first run)."""
        self._metrics.saga_started(self.saga_type, self.mode)

    @contextmanager
    def current(self) -> Iterator[Span]:
        """Make the saga span current for the run (steps nest under it); end it after,
        unless it was handed over (:meth:`hand_over`)."""
        with trace.use_span(self.span, end_on_exit=False):
            try:
                yield self.span
            finally:
                if self._carried is None:
                    self.span.end()
                else:
                    self._carried.keep(self.saga_id, self.span)

    def hand_over(self, carried: CarriedSpans) -> None:
        """The services carry the saga on: its span ends when the observer sees it end."""
        self._carried = carried

    def finished(self, record: SagaRecord, now: datetime) -> None:
        """The run is over: record the saga's status, and its end if it is settled."""
        status = record.status
        _mark_status(self.span, status)
        duration = (now - record.created_at).total_seconds()
        if status is SagaStatus.COMPLETED:
            self._metrics.saga_completed(self.saga_type, self.mode, duration)
        elif status is SagaStatus.COMPENSATED:
            self._metrics.saga_compensated(self.saga_type, self.mode, duration)
        elif status is SagaStatus.NEEDS_ATTENTION:
            self._metrics.saga_needs_attention(self.saga_type, self.mode, duration)

    @contextmanager
    def attempt(self, step: Step, phase: Phase, number: int) -> Iterator[AttemptTrace]:
        """A span (current for the block) and a duration for one attempt of ``step``."""
        action = step.action if phase is Phase.EXECUTE else (step.compensation or "")
        name = f"step {step.name}" if phase is Phase.EXECUTE else f"compensate {step.name}"
        attributes: dict[str, AttributeValue] = {
            SAGA_ID: self.saga_id,
            SAGA_STEP: step.name,
            SAGA_ACTION: action,
            SAGA_ATTEMPT: number,
            SAGA_PHASE: phase.value,
        }
        span = self._tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        traced = AttemptTrace(span)
        started = time.perf_counter()
        try:
            # The runner sets the outcome and status; an exception says nothing more.
            with (
                trace.use_span(span, record_exception=False, set_status_on_exception=False),
                call_made_in(span),
            ):
                yield traced
        except Exception as error:
            if traced.outcome is None:  # not the call's error: e.g. the log failed
                traced.broken(error)
            raise
        finally:
            if traced.outcome is None:  # cancelled: the coordinator stopped under it
                traced.ended(AttemptChange(phase, number, AttemptOutcome.INTERRUPTED))
            self._metrics.step_finished(
                self.saga_type,
                self.mode,
                step.name,
                action,
                traced.outcome or _INTERRUPTED,
                time.perf_counter() - started,
            )
            span.end()

    def retrying(
        self, step: Step, phase: Phase, number: int, wait_s: float, error: BaseException | None
    ) -> None:
        """A :data:`common.policy.RetryListener`: attempt ``number`` comes in ``wait_s``."""
        action = step.action if phase is Phase.EXECUTE else (step.compensation or "")
        self._metrics.step_retried(self.saga_type, self.mode, step.name, action)
        self.span.add_event(
            "retry",
            {
                SAGA_STEP: step.name,
                SAGA_PHASE: phase.value,
                SAGA_ATTEMPT: number,
                "retry.wait_s": wait_s,
                SAGA_ERROR_REASON: _reason(error),
            },
        )


class AttemptTrace:
    """How an attempt ended, set on its span when the runner records it."""

    __slots__ = ("outcome", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.outcome: str | None = None

    def ended(self, attempt: AttemptChange, barrier: str = "") -> None:
        """The attempt ended as the saga log records it (``barrier``: how the participant's
        barrier let a successful call through, e.g. "replayed")."""
        outcome = (attempt.outcome or AttemptOutcome.INTERRUPTED).value
        self.outcome = outcome
        self.span.set_attribute(SAGA_OUTCOME, outcome)
        if barrier:
            self.span.set_attribute("saga.barrier", barrier)
        if attempt.outcome in (AttemptOutcome.OK, AttemptOutcome.INTERRUPTED, None):
            return
        error = attempt.error
        reason = (error.reason or error.code) if error is not None else outcome
        self.span.set_attribute(SAGA_ERROR_REASON, reason)
        self.span.set_status(StatusCode.ERROR, error.message if error is not None else outcome)

    def broken(self, error: Exception) -> None:
        """The attempt stopped on an error of the coordinator's own."""
        self.outcome = AttemptOutcome.ERROR.value
        self.span.set_attribute(SAGA_OUTCOME, self.outcome)
        self.span.set_attribute(SAGA_ERROR_REASON, type(error).__name__)
        self.span.record_exception(error)
        self.span.set_status(StatusCode.ERROR, str(error))


def _reason(error: BaseException | None) -> str:
    """As an attempt span's ``saga.error_reason``: the ErrorInfo reason, else the code."""
    if isinstance(error, SagawireError):
        detail = error_detail(error)
        return detail.reason or detail.code
    return type(error).__name__ if error is not None else ""


def breaker_changed(transition: BreakerTransition) -> None:
    """A :class:`common.breakers.BreakerBoard` listener: the new state as a metric, and as
    an event on the current span (the attempt whose call changed it)."""
    if transition.to_state in BREAKER_STATES:
        saga_metrics().breaker_changed(transition.participant, transition.to_state)
    trace.get_current_span().add_event(
        "breaker.state_change",
        {
            "breaker.participant": transition.participant,
            "breaker.from": transition.from_state,
            "breaker.to": transition.to_state,
        },
    )
