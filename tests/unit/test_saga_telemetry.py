"""The runner's spans where the integration tests do not go: resumed runs, broken attempts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from common.policy import RetryPolicy
from common.telemetry import Telemetry, activated, create_telemetry
from contract.definitions import Step
from coordinator.engine.telemetry import (
    CarriedSpans,
    RunCause,
    SagaTelemetry,
    saga_span_context,
)
from coordinator.log.records import NewSaga, Phase, SagaRecord, SagaStatus, new_record
from tests.telemetry_support import sampling_no_new_trace

STEP = Step(
    name="reserve_stock",
    participant="inventory",
    action="reserve",
    compensation="release",
    after=(),
    retry=RetryPolicy(),
    compensation_retry=RetryPolicy(),
)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def telemetry(exporter: InMemorySpanExporter) -> Iterator[Telemetry]:
    created = create_telemetry("coordinator", [exporter], [InMemoryMetricReader()], batch=False)
    with activated(created):
        yield created
    created.shutdown()


def record(trace_id: str = "") -> SagaRecord:
    now = datetime.now(UTC)
    return new_record(
        NewSaga(
            saga_id=str(uuid.uuid4()),
            definition="place_order",
            mode="orchestration",
            data=b"",
            step_names=(STEP.name,),
            created_at=now,
            deadline=now + timedelta(seconds=10),
            trace_id=trace_id,
        )
    )


def only(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.name == name]
    return span


def test_a_recovered_run_continues_the_logged_trace(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    logged = record(trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    run = SagaTelemetry(logged, RunCause.RECOVERED)
    with run.current():
        pass
    span = only(exporter, "saga place_order")
    context = span.get_span_context()
    assert context is not None and f"{context.trace_id:032x}" == logged.trace_id
    first_run = saga_span_context(logged)
    assert first_run is not None and span.parent == first_run
    assert [(e.name, dict(e.attributes or {})) for e in span.events] == [
        ("resumed", {"saga.resumed_by": "recovered", "saga.status": "running"})
    ]
    assert list(span.links) == []


def test_a_recovered_run_of_a_saga_not_sampled_is_not_traced_either(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A ratio of 0 samples no trace started here: the saga's first run was not traced, so
    # a run after a restart is not traced from the middle of the saga on either.
    unsampled = sampling_no_new_trace(monkeypatch, "coordinator", exporter)
    logged = record(trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    with activated(unsampled):
        first_run = saga_span_context(logged)
        assert first_run is not None and not first_run.trace_flags.sampled
        with SagaTelemetry(logged, RunCause.RECOVERED).current() as span:
            assert not span.is_recording()
    unsampled.shutdown()
    assert exporter.get_finished_spans() == ()
    # Sampled by the default sampler, as every saga is.
    monkeypatch.delenv("OTEL_TRACES_SAMPLER")
    monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG")
    default = create_telemetry("coordinator", [exporter], batch=False)
    with activated(default):
        traced = saga_span_context(logged)
        assert traced is not None and traced.trace_flags.sampled
    default.shutdown()


def test_a_saga_logged_without_a_trace_resumes_in_a_new_one(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    assert saga_span_context(record()) is None
    with SagaTelemetry(record(), RunCause.RECOVERED).current():
        pass
    span = only(exporter, "saga place_order")
    assert span.parent is None and [e.name for e in span.events] == ["resumed"]


def test_attempts_cut_short_say_how(telemetry: Telemetry, exporter: InMemorySpanExporter) -> None:
    run = SagaTelemetry(record(), RunCause.STARTED)
    with run.current():
        with pytest.raises(asyncio.CancelledError), run.attempt(STEP, Phase.EXECUTE, 1):
            raise asyncio.CancelledError
        with pytest.raises(RuntimeError), run.attempt(STEP, Phase.COMPENSATE, 1):
            raise RuntimeError("the saga log is gone")
    cancelled = only(exporter, "step reserve_stock")
    assert (cancelled.attributes or {}).get("saga.outcome") == "interrupted"
    assert cancelled.status.status_code == StatusCode.UNSET
    broken = only(exporter, "compensate reserve_stock")
    assert (broken.attributes or {}).get("saga.action") == "release"
    assert (broken.attributes or {}).get("saga.outcome") == "error"
    assert (broken.attributes or {}).get("saga.error_reason") == "RuntimeError"
    assert broken.status.status_code == StatusCode.ERROR
    saga = only(exporter, "saga place_order")
    assert all(
        s.parent is not None and s.parent.span_id == saga.context.span_id
        for s in (cancelled, broken)
    )


def ended(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "saga place_order"]


def test_a_handed_over_saga_span_ends_when_the_observer_sees_the_saga_end(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    carried = CarriedSpans()
    saga = record()
    run = SagaTelemetry(saga, RunCause.STARTED)
    with run.current():
        run.hand_over(carried)  # the services carry it on after the first step
    assert ended(exporter) == [] and len(carried) == 1
    carried.settled(saga.saga_id, SagaStatus.RUNNING)  # not an end
    assert ended(exporter) == []
    carried.settled(saga.saga_id, SagaStatus.COMPENSATED)
    (span,) = ended(exporter)
    assert span.attributes is not None and span.attributes["saga.status"] == "compensated"
    assert span.status.status_code is StatusCode.ERROR and len(carried) == 0


def test_a_saga_that_ended_before_its_span_was_handed_over_ends_it_at_once(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    carried = CarriedSpans()
    saga = record()
    carried.settled(saga.saga_id, SagaStatus.COMPLETED)  # the observer was quicker
    run = SagaTelemetry(saga, RunCause.STARTED)
    with run.current():
        run.hand_over(carried)
    (span,) = ended(exporter)
    assert span.attributes is not None and span.attributes["saga.status"] == "completed"
    assert len(carried) == 0


def test_carried_spans_are_bounded_and_ended_at_shutdown(
    telemetry: Telemetry, exporter: InMemorySpanExporter
) -> None:
    carried = CarriedSpans(size=2)
    for _ in range(3):
        run = SagaTelemetry(record(), RunCause.STARTED)
        with run.current():
            run.hand_over(carried)
    assert len(carried) == 2 and len(ended(exporter)) == 1  # the oldest, as it was
    carried.end_all()
    assert len(carried) == 0 and len(ended(exporter)) == 3
