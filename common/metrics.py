"""Every metric of Sagawire, recorded with the OpenTelemetry SDK.

Saga metrics (:class:`SagaMetrics`): the coordinator records them for the sagas it
drives, and in choreography the services record the steps their reactions run, so
``step_duration`` and ``step_retries`` cover every step in both modes.

=========================  =========  ===============================================
instrument                 kind       attributes
=========================  =========  ===============================================
sagas_started              counter    saga.type, saga.mode
sagas_completed            counter    saga.type, saga.mode
sagas_compensated          counter    saga.type, saga.mode
sagas_needing_attention    counter    saga.type, saga.mode
saga_duration (s)          histogram  saga.type, saga.mode, saga.outcome
step_duration (s)          histogram  saga.type, saga.mode, saga.step, saga.action,
                                      saga.outcome (one attempt or compensation)
step_retries               counter    saga.type, saga.mode, saga.step, saga.action
breaker_state              gauge      participant (0 closed, 1 half-open, 2 open)
=========================  =========  ===============================================

A domain service's own work (:class:`ServiceMetrics`), named by the OpenTelemetry
conventions where they have a name for it (``messaging.*``), ``sagawire.*`` otherwise:

================================  =========  ==========================================
instrument                        kind       attributes
================================  =========  ==========================================
sagawire.action.duration (s)      histogram  saga.action, saga.phase, saga.mode,
                                             saga.outcome, sagawire.trigger (call: an
                                             Execute/Compensate call; event: a reaction);
                                             its count is the calls by action and outcome
sagawire.barrier.decisions        counter    saga.action, saga.phase, barrier.decision
                                             (applied, replayed, null: a null
                                             compensation, refused_late: an execute
                                             after its compensation, refused_mismatch)
messaging.process.duration (s)    histogram  messaging.system, messaging.operation.name,
                                             messaging.destination.name (the producer),
                                             messaging.consumer.group.name, error.type
                                             (one attempt at reacting to an event)
sagawire.reaction.lag (s)         histogram  messaging.destination.name,
                                             messaging.consumer.group.name,
                                             sagawire.event.type: from an event's commit
                                             at its producer to its reaction's commit
sagawire.consumer.lag             gauge      messaging.destination.name (this service),
                                             messaging.consumer.group.name: events
                                             committed here and not yet delivered to
                                             that consumer (measured by the producer;
                                             on NATS, JetStream's pending and unacked
                                             messages plus what the relay has not yet
                                             published, read every few seconds)
sagawire.outbox.backlog           gauge      messaging.destination.name: events committed
                                             here that the furthest-behind consumer has
                                             not been delivered
================================  =========  ==========================================

Every process also records the RPC conventions' ``rpc.server.call.duration`` and
``rpc.client.call.duration`` (:class:`RpcMetrics`, see :mod:`common.grpc_spans`).
Where they go is decided in :mod:`common.telemetry`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation

log = logging.getLogger(__name__)

# Seconds: from a fast local step to a saga that waited out its retries.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}


class SagaMetrics:
    """The saga instruments of one process; the coordinator (and the observer) call these."""

    def __init__(self, meter: Meter) -> None:
        self._started = meter.create_counter(
            "sagas_started", unit="{saga}", description="Sagas started"
        )
        self._completed = meter.create_counter(
            "sagas_completed", unit="{saga}", description="Sagas that completed every step"
        )
        self._compensated = meter.create_counter(
            "sagas_compensated", unit="{saga}", description="Sagas undone by their compensations"
        )
        self._attention = meter.create_counter(
            "sagas_needing_attention",
            unit="{saga}",
            description="Sagas whose compensation ran out of its budget",
        )
        self._saga_duration = meter.create_histogram(
            "saga_duration",
            unit="s",
            description="Time from start to a terminal status",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._step_duration = meter.create_histogram(
            "step_duration",
            unit="s",
            description="Time of one step attempt or compensation",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._retries = meter.create_counter(
            "step_retries", unit="{retry}", description="Step attempts after the first"
        )
        self._breakers: dict[str, int] = {}
        self._breakers_lock = threading.Lock()
        meter.create_observable_gauge(
            "breaker_state",
            callbacks=[self._observe_breakers],
            unit="1",
            description="Circuit breaker per participant: 0 closed, 1 half-open, 2 open",
        )

    @staticmethod
    def _saga(saga_type: str, mode: str) -> dict[str, str]:
        return {"saga.type": saga_type, "saga.mode": mode}

    def saga_started(self, saga_type: str, mode: str) -> None:
        self._started.add(1, self._saga(saga_type, mode))

    def saga_completed(self, saga_type: str, mode: str, duration_s: float) -> None:
        self._completed.add(1, self._saga(saga_type, mode))
        self._record_saga(saga_type, mode, "completed", duration_s)

    def saga_compensated(self, saga_type: str, mode: str, duration_s: float) -> None:
        self._compensated.add(1, self._saga(saga_type, mode))
        self._record_saga(saga_type, mode, "compensated", duration_s)

    def saga_needs_attention(self, saga_type: str, mode: str, duration_s: float) -> None:
        self._attention.add(1, self._saga(saga_type, mode))
        self._record_saga(saga_type, mode, "needs_attention", duration_s)

    def _record_saga(self, saga_type: str, mode: str, outcome: str, duration_s: float) -> None:
        attributes = {**self._saga(saga_type, mode), "saga.outcome": outcome}
        self._saga_duration.record(duration_s, attributes)

    def step_finished(
        self, saga_type: str, mode: str, step: str, action: str, outcome: str, duration_s: float
    ) -> None:
        """One attempt (or compensation) of a step ended with ``outcome`` ("ok", "rejected"...)."""
        attributes = {
            **self._saga(saga_type, mode),
            "saga.step": step,
            "saga.action": action,
            "saga.outcome": outcome,
        }
        self._step_duration.record(duration_s, attributes)

    def step_retried(self, saga_type: str, mode: str, step: str, action: str) -> None:
        attributes = {**self._saga(saga_type, mode), "saga.step": step, "saga.action": action}
        self._retries.add(1, attributes)

    def breaker_changed(self, participant: str, state: str) -> None:
        """Record a breaker's new state: "closed", "half-open" or "open"."""
        if state not in BREAKER_STATES:
            raise ValueError(f"unknown breaker state {state!r}")
        with self._breakers_lock:
            self._breakers[participant] = BREAKER_STATES[state]

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._breakers_lock:
            current = dict(self._breakers)
        return [Observation(value, {"participant": p}) for p, value in sorted(current.items())]


class RpcMetrics:
    """The OpenTelemetry RPC metrics of one process (recorded by :mod:`common.grpc_spans`):
    ``rpc.server.call.duration`` and ``rpc.client.call.duration``, in seconds, by
    ``rpc.system``, ``rpc.service``, ``rpc.method`` and ``rpc.grpc.status_code``."""

    def __init__(self, meter: Meter) -> None:
        self.server_duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of an incoming RPC, as its server span",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.client_duration = meter.create_histogram(
            "rpc.client.call.duration",
            unit="s",
            description="Duration of an outgoing RPC, as its client span",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )


# The consumers a producer keeps counting while they are away: the stack's own followers
# (a service's reactions, the coordinator's observer). Any other follower (an operator's
# `sagawire events`) counts only while its stream is open.
STACK_CONSUMERS = frozenset(
    {"order", "inventory", "payment", "shipping", "coordinator", "coordinator-observer"}
)
_MAX_CONSUMERS = 64  # distinct consumers a producer reports; the rest are "other"
_MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class ConsumerLags(Protocol):
    """Where a producer's consumer lags come from: its gRPC streams' positions
    (:class:`StreamPositions`), or JetStream's consumers (common/nats_events.py)."""

    def lags(self) -> dict[str, int]:
        """Events committed and not yet delivered, by consumer."""
        ...


class StreamPositions:
    """How far a producer has delivered its events to each consumer, and its head.

    The event stream reports each consumer's position (the last sequence it has been
    sent or skipped past); the gauges read ``head()`` (the last committed sequence) when
    they are collected, on the metric reader's thread.
    """

    def __init__(self, head: Callable[[], int]) -> None:
        self._head = head
        self._lock = threading.Lock()
        self._positions: dict[str, int] = {}
        self._open: dict[str, int] = {}

    def key(self, consumer: str) -> str:
        """The name a consumer is reported under: its own, made safe (bounded in length and
        in number)."""
        name = _UNSAFE.sub("_", consumer)[:_MAX_NAME] or "unnamed"
        with self._lock:
            if name in self._positions or len(self._positions) < _MAX_CONSUMERS:
                return name
        return "other"

    def opened(self, consumer: str, position: int) -> None:
        with self._lock:
            self._open[consumer] = self._open.get(consumer, 0) + 1
            self._positions[consumer] = max(position, self._positions.get(consumer, 0))

    def delivered(self, consumer: str, position: int) -> None:
        with self._lock:
            if position > self._positions.get(consumer, 0):
                self._positions[consumer] = position

    def closed(self, consumer: str) -> None:
        with self._lock:
            left = self._open.get(consumer, 1) - 1
            if left > 0:
                self._open[consumer] = left
                return
            self._open.pop(consumer, None)
            if consumer not in STACK_CONSUMERS:
                self._positions.pop(consumer, None)

    def lags(self) -> dict[str, int]:
        """Events committed and not yet delivered, by consumer (empty: nobody follows, or
        the head cannot be read now)."""
        with self._lock:
            positions = dict(self._positions)
        if not positions:
            return {}
        try:
            head = self._head()
        except Exception:  # a busy or closed store: no value this time
            log.debug("cannot read the outbox head", exc_info=True)
            return {}
        return {consumer: max(head - at, 0) for consumer, at in positions.items()}


class ServiceMetrics:
    """A domain service's instruments (see the module docstring)."""

    def __init__(self, meter: Meter) -> None:
        self._actions = meter.create_histogram(
            "sagawire.action.duration",
            unit="s",
            description="One run of a saga action or compensation by its participant",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._barrier = meter.create_counter(
            "sagawire.barrier.decisions",
            unit="{decision}",
            description="What the barrier did with a request: applied, replayed, null, refused",
        )
        self._process = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="One attempt at reacting to an event",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._reaction_lag = meter.create_histogram(
            "sagawire.reaction.lag",
            unit="s",
            description="From an event's commit at its producer to its reaction's commit",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._streams: dict[str, ConsumerLags] = {}
        self._streams_lock = threading.Lock()
        meter.create_observable_gauge(
            "sagawire.consumer.lag",
            callbacks=[self._observe_consumer_lag],
            unit="{event}",
            description="Events committed here and not yet delivered to a consumer",
        )
        meter.create_observable_gauge(
            "sagawire.outbox.backlog",
            callbacks=[self._observe_backlog],
            unit="{event}",
            description="Events committed here the furthest-behind consumer was not delivered",
        )

    def action_finished(
        self,
        action: str,
        phase: str,
        mode: str,
        outcome: str,
        trigger: str,
        duration_s: float,
    ) -> None:
        """A participant ran ``action`` (called, or reacting to an event) to ``outcome``."""
        attributes = {
            "saga.action": action,
            "saga.phase": phase,
            "saga.mode": mode,
            "saga.outcome": outcome,
            "sagawire.trigger": trigger,
        }
        self._actions.record(duration_s, attributes)

    def barrier_decided(self, action: str, phase: str, decision: str) -> None:
        attributes = {"saga.action": action, "saga.phase": phase, "barrier.decision": decision}
        self._barrier.add(1, attributes)

    def event_processed(
        self, producer: str, consumer: str, duration_s: float, error_type: str = ""
    ) -> None:
        attributes = {
            "messaging.system": "sagawire",
            "messaging.operation.name": "process",
            "messaging.destination.name": producer,
            "messaging.consumer.group.name": consumer,
        }
        if error_type:
            attributes["error.type"] = error_type
        self._process.record(duration_s, attributes)

    def reacted(self, producer: str, consumer: str, event_type: str, lag_s: float) -> None:
        attributes = {
            "messaging.destination.name": producer,
            "messaging.consumer.group.name": consumer,
            "sagawire.event.type": event_type,
        }
        self._reaction_lag.record(max(lag_s, 0.0), attributes)

    def watch_streams(self, producer: str, positions: ConsumerLags) -> None:
        """Report ``producer``'s consumer lag and backlog from ``positions`` (from now on,
        in place of any positions it had before)."""
        with self._streams_lock:
            self._streams[producer] = positions

    def _lags(self) -> list[tuple[str, dict[str, int]]]:
        with self._streams_lock:
            streams = list(self._streams.items())
        return [(producer, positions.lags()) for producer, positions in streams]

    def _observe_consumer_lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                lag,
                {"messaging.destination.name": producer, "messaging.consumer.group.name": name},
            )
            for producer, lags in self._lags()
            for name, lag in sorted(lags.items())
        ]

    def _observe_backlog(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(max(lags.values()), {"messaging.destination.name": producer})
            for producer, lags in self._lags()
            if lags
        ]
