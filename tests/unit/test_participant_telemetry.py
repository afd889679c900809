"""A reaction attempt's span and outcome, and a participant call's count, in isolation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from common.errors import Aborted, BusinessRejection, Transient
from common.participant_telemetry import (
    REFUSED_LATE,
    REFUSED_MISMATCH,
    TRANSIENT,
    ReactionStep,
    barrier_decided,
    counted_call,
    reaction_attempt,
)
from common.telemetry import Telemetry, activated, create_telemetry
from protos.sagawire.v1 import events_pb2

CHARGE = ReactionStep("place_order", "charge_payment", "charge")
EVENT = events_pb2.Event(
    id="e-1", source="inventory", type="sagawire.inventory.reserved", subject="saga-1"
)


@pytest.fixture
def telemetry() -> Iterator[tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader]]:
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    created = create_telemetry("payment", [exporter], [reader], batch=False)
    with activated(created):
        yield created, exporter, reader


def _attempt(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "step charge_payment"]
    return span


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        (dict(point.attributes or {}), point)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


@pytest.mark.parametrize(
    ("decision", "rejection", "outcome", "reason"),
    [
        ("applied", None, "ok", None),
        ("replayed", None, "ok", None),
        ("applied", BusinessRejection("INSUFFICIENT_FUNDS", "no money"), "rejected", None),
        (REFUSED_LATE, None, "aborted", "ABORTED"),
        (REFUSED_MISMATCH, None, "rejected", "REQUEST_MISMATCH"),
    ],
)
def test_what_the_barrier_decided_is_the_attempts_outcome(
    telemetry: tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader],
    decision: str,
    rejection: BusinessRejection | None,
    outcome: str,
    reason: str | None,
) -> None:
    _, exporter, reader = telemetry
    with reaction_attempt(EVENT, "payment", CHARGE, 2, 0):
        barrier_decided("charge", "execute", decision, rejection)

    span = _attempt(exporter)
    attributes = dict(span.attributes or {})
    assert attributes["saga.outcome"] == outcome
    assert attributes["saga.barrier"] == decision
    assert attributes["saga.attempt"] == 2
    assert (attributes["saga.id"], attributes["saga.mode"]) == ("saga-1", "choreography")
    if outcome == "ok":
        assert span.status.status_code == StatusCode.UNSET
        assert "saga.error_reason" not in attributes
    else:
        assert span.status.status_code == StatusCode.ERROR
        expected = reason or (rejection.reason if rejection else "")
        assert attributes["saga.error_reason"] == expected
    # One span per attempt: the event's consumer span is the step's attempt.
    assert exporter.get_finished_spans() == (span,)
    assert span.kind == SpanKind.CONSUMER
    assert attributes["sagawire.event.attempt"] == 2
    assert attributes["messaging.message.id"] == EVENT.id
    ((step, duration),) = _points(reader, "step_duration")
    assert step == {
        "saga.type": "place_order",
        "saga.mode": "choreography",
        "saga.step": "charge_payment",
        "saga.action": "charge",
        "saga.outcome": outcome,
    }
    assert isinstance(duration, HistogramDataPoint) and duration.count == 1
    ((counted, _),) = _points(reader, "sagawire.barrier.decisions")
    assert counted["barrier.decision"] == decision


def test_a_transient_failure_is_an_error_attempt_and_its_span_records_it(
    telemetry: tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    _, exporter, reader = telemetry
    with pytest.raises(Transient), reaction_attempt(EVENT, "payment", CHARGE, 1, 0) as attempt:
        assert attempt is not None
        error = Transient("injected fault")
        attempt.failed(TRANSIENT, error)
        raise error

    span = _attempt(exporter)
    assert (span.attributes or {})["saga.outcome"] == "transient"
    assert (span.attributes or {})["saga.error_reason"] == "UNAVAILABLE"
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]
    ((processed, _),) = _points(reader, "messaging.process.duration")
    assert processed["error.type"] == "Transient"


def test_a_reaction_that_runs_no_step_is_only_its_consumer_span(
    telemetry: tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    _, exporter, _ = telemetry
    with reaction_attempt(EVENT, "payment", None, 1, 0) as attempt:
        assert attempt is None
    (consumer,) = exporter.get_finished_spans()
    assert consumer.name == "payment sagawire.inventory.reserved"


@pytest.mark.parametrize(
    ("raised", "outcome"),
    [
        (None, "ok"),
        (BusinessRejection("INSUFFICIENT_STOCK", "none left"), "rejected"),
        (Aborted("compensated"), "aborted"),
        (Transient("injected"), "transient"),
        (RuntimeError("a bug"), "error"),
    ],
)
def test_a_participant_call_is_counted_by_action_and_outcome(
    telemetry: tuple[Telemetry, InMemorySpanExporter, InMemoryMetricReader],
    raised: Exception | None,
    outcome: str,
) -> None:
    _, _, reader = telemetry
    try:
        with counted_call("reserve", "execute", "orchestration"):
            if raised is not None:
                raise raised
    except Exception as error:
        assert error is raised
    ((attributes, point),) = _points(reader, "sagawire.action.duration")
    assert attributes == {
        "saga.action": "reserve",
        "saga.phase": "execute",
        "saga.mode": "orchestration",
        "saga.outcome": outcome,
        "sagawire.trigger": "call",
    }
    assert point.count == 1
