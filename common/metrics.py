"""Saga metrics: the few numbers an operator watches, recorded with the OpenTelemetry SDK.

=========================  =========  ===============================================
instrument                 kind       attributes
=========================  =========  ===============================================
sagas_started              counter    saga.type, saga.mode
sagas_completed            counter    saga.type, saga.mode
sagas_compensated          counter    saga.type, saga.mode
sagas_needing_attention    counter    saga.type, saga.mode
saga_duration (s)          histogram  saga.type, saga.mode, saga.outcome
step_duration (s)          histogram  saga.type, saga.step, saga.action, saga.outcome
step_retries               counter    saga.type, saga.step, saga.action
breaker_state              gauge      participant (0 closed, 1 half-open, 2 open)
=========================  =========  ===============================================

They are exported over OTLP when an endpoint is configured (see :mod:`common.telemetry`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

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
        self, saga_type: str, step: str, action: str, outcome: str, duration_s: float
    ) -> None:
        """One attempt (or compensation) of a step ended with ``outcome`` ("ok", "rejected"...)."""
        attributes = {
            "saga.type": saga_type,
            "saga.step": step,
            "saga.action": action,
            "saga.outcome": outcome,
        }
        self._step_duration.record(duration_s, attributes)

    def step_retried(self, saga_type: str, step: str, action: str) -> None:
        self._retries.add(1, {"saga.type": saga_type, "saga.step": step, "saga.action": action})

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
