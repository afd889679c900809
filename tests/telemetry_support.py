"""Helpers for saga telemetry tests: the four services and a coordinator, traced, in memory.

Every process runs in the test's event loop with its own telemetry (its own
``service.name``); all of them export spans to one ``InMemorySpanExporter``, and
each process's metrics go to an ``InMemoryMetricReader`` of its own. Each server
makes its telemetry the active one for the calls it handles and the background work
its app starts (:func:`common.telemetry.scoped`), so a service's reactions record as
that service; the coordinator's is the active one otherwise
(:func:`common.telemetry.activated`), as :func:`common.telemetry.setup_telemetry`
makes it in the real process. Given an :class:`~tests.integration.otlp_receiver.OtlpReceiver`,
every process also exports over OTLP/gRPC, batched, as to a collector.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricReader,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from common.config import SERVICE_NAMES, Endpoints
from common.server import RunningServer, start_server
from common.telemetry import Telemetry, activated, create_telemetry
from common.trace_file import TRACE_FILE_NAME, JsonLinesSpanExporter
from coordinator.app import CoordinatorApp
from services.launcher import spec_of
from services.runtime import DomainService
from tests.coordinator_support import Stack, coordinator_settings, write_definitions
from tests.integration.otlp_receiver import OtlpReceiver
from tests.support import Cluster, free_port, service_settings, wait_until

PLACE_ORDER = "/sagawire.v1.Coordinator/PlaceOrder"
RETRY_SAGA = "/sagawire.v1.Coordinator/RetrySaga"

DataPoint = NumberDataPoint | HistogramDataPoint


def otlp_telemetry(
    name: str,
    receiver: OtlpReceiver,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
) -> Telemetry:
    """A process's telemetry exporting over OTLP/gRPC to ``receiver`` (as to a collector),
    batched as in production but with short delays, besides ``span_exporters`` (unbatched)
    and ``metric_readers``."""
    endpoint = f"127.0.0.1:{receiver.port}"
    spans = BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, insecure=True), schedule_delay_millis=50
    )
    metrics = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True), export_interval_millis=200
    )
    return create_telemetry(
        name,
        span_exporters,
        [*metric_readers, metrics],
        batch=False,
        span_processors=[spans],
    )


@dataclass
class TracedStack:
    """A :class:`~tests.coordinator_support.Stack` whose processes export to memory (and,
    when the stack was given one, to an OTLP receiver)."""

    stack: Stack
    exporter: InMemorySpanExporter
    metrics: InMemoryMetricReader
    telemetry: dict[str, Telemetry]
    readers: dict[str, InMemoryMetricReader]

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def points(
        self, name: str, process: str = "coordinator"
    ) -> list[tuple[dict[str, Any], DataPoint]]:
        """A process's data points of the metric ``name``, with their attributes."""
        data = self.readers[process].get_metrics_data()
        found: list[tuple[dict[str, Any], DataPoint]] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(
                            (dict(p.attributes or {}), p)
                            for p in metric.data.data_points
                            if isinstance(p, DataPoint)
                        )
        return found

    def value(self, name: str, process: str = "coordinator", **attributes: Any) -> float:
        """A counter's or gauge's value (a histogram's count) where ``attributes`` match."""
        total: float = 0
        for found, point in self.points(name, process):
            if attributes.items() <= found.items():
                total += point.count if isinstance(point, HistogramDataPoint) else point.value
        return total

    def values_by(
        self, name: str, attribute: str, process: str = "coordinator"
    ) -> dict[str, float]:
        """A counter's or gauge's values, by the value of one attribute."""
        return {
            str(found[attribute]): self.value(name, process, **{attribute: found[attribute]})
            for found, _ in self.points(name, process)
        }


@asynccontextmanager
async def traced_stack(
    tmp_path: Path,
    definitions: Path | None = None,
    reactions: bool = False,
    receiver: OtlpReceiver | None = None,
    trace_files: bool = False,
    **settings: Any,
) -> AsyncIterator[TracedStack]:
    """The four services and a coordinator (``settings`` override its test settings).

    ``reactions`` lets the services follow each other's streams (choreography);
    with ``receiver`` every process also exports its spans and metrics to it over OTLP;
    with ``trace_files`` each also writes its local trace file in its data directory
    (``tmp_path/<name>``), which ``sagawire trace --data tmp_path`` reads.
    """
    exporter = InMemorySpanExporter()
    readers = {name: InMemoryMetricReader() for name in (*SERVICE_NAMES, "coordinator")}

    def telemetry_of(name: str) -> Telemetry:
        exporters: list[SpanExporter] = [exporter]
        if trace_files:
            exporters.append(JsonLinesSpanExporter(tmp_path / name / TRACE_FILE_NAME))
        if receiver is not None:
            return otlp_telemetry(name, receiver, exporters, [readers[name]])
        return create_telemetry(name, exporters, [readers[name]], batch=False)

    telemetry = {name: telemetry_of(name) for name in (*SERVICE_NAMES, "coordinator")}
    definitions = definitions or write_definitions(tmp_path / "sagas.yaml")
    servers: dict[str, RunningServer] = {}
    stack = Stack(Cluster(servers), address="")
    with activated(telemetry["coordinator"]):
        try:
            ports = {name: free_port() for name in SERVICE_NAMES}
            endpoints = Endpoints(**{f"{n}_addr": f"127.0.0.1:{p}" for n, p in ports.items()})
            for name in SERVICE_NAMES:
                service = service_settings(
                    tmp_path / name, port=ports[name], reactions_enabled=reactions
                )
                app = DomainService(spec_of(name), service, endpoints)
                servers[name] = await start_server(app, service, telemetry=telemetry[name])
            config = coordinator_settings(tmp_path / "coordinator", definitions, **settings)
            coordinator = CoordinatorApp(
                config,
                endpoints,
                client_interceptors=telemetry["coordinator"].client_interceptors(),
            )
            running = await start_server(coordinator, config, telemetry=telemetry["coordinator"])
            stack.coordinator, stack.app, stack.address = running, coordinator, running.address
            yield TracedStack(stack, exporter, readers["coordinator"], telemetry, readers)
        finally:
            await stack.stop_coordinator()
            await stack.cluster.stop()


# --- spans ---------------------------------------------------------------------------


def service_of(span: ReadableSpan) -> object:
    return span.resource.attributes.get("service.name")


def trace_id_of(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id


def span_id_of(span: ReadableSpan) -> int:
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def attribute(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


def is_saga_span(span: ReadableSpan, saga_id: str) -> bool:
    """The coordinator's span of a saga run (its attempt spans carry ``saga.step``)."""
    return (
        span.kind == SpanKind.INTERNAL
        and attribute(span, "saga.id") == saga_id
        and attribute(span, "saga.type") is not None
    )


async def saga_trace(
    traced: TracedStack,
    saga_id: str,
    services: tuple[str, ...] = SERVICE_NAMES,
    root: Callable[[ReadableSpan], bool] = lambda s: s.name == PLACE_ORDER,
) -> list[ReadableSpan]:
    """The finished spans of the trace of the latest ``root`` span (by default the latest
    ``PlaceOrder`` call), once the saga's span and a server span of the coordinator and of
    every one of ``services`` are in it."""

    def spans() -> list[ReadableSpan]:
        finished = traced.spans()
        roots = [s for s in finished if s.kind == SpanKind.SERVER and root(s)]
        return [s for s in finished if roots and trace_id_of(s) == trace_id_of(roots[-1])]

    def complete() -> bool:
        found = spans()
        servers = {service_of(s) for s in found if s.kind == SpanKind.SERVER}
        return servers >= {"coordinator", *services} and any(
            is_saga_span(s, saga_id) for s in found
        )

    # The saga span ends once the saga's last transition is logged, which is when
    # PlaceOrder may answer: it can end after the PlaceOrder span does.
    await wait_until(complete, message=f"the trace of saga {saga_id}")
    return spans()


def sampling_no_new_trace(
    monkeypatch: pytest.MonkeyPatch, service: str, exporter: SpanExporter
) -> Telemetry:
    """``service``'s telemetry sampling no trace it starts, set the standard way
    (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ``OTEL_TRACES_SAMPLER_ARG=0``): a
    trace sampled where it started is still continued."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    return create_telemetry(service, [exporter], batch=False)
