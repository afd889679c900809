"""OpenTelemetry for every Sagawire process: traces, metrics, and trace context in event headers.

A process calls :func:`setup_telemetry` once at start. It gets a tracer provider
whose resource carries the process's own ``service.name`` (``OTEL_SERVICE_NAME``
and ``OTEL_RESOURCE_ATTRIBUTES`` override it, as the SDK's standard resource
handling does) and a meter provider with the :class:`~common.metrics.SagaMetrics`.

Where spans go, decided by the standard variables:

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) set: OTLP/gRPC, e.g. to Jaeger;
* otherwise the local trace file ``<data_dir>/traces.jsonl`` (:mod:`common.trace_file`),
  which ``sagawire trace`` draws as a waterfall;
* ``OTEL_TRACES_EXPORTER`` names them explicitly (``otlp``, ``console``, ``file``, ``none``).

Metrics (:mod:`common.metrics`) go the same way: over OTLP when an endpoint is
configured (in compose, to an OpenTelemetry Collector that hands them to Prometheus),
otherwise to the local metrics file ``<data_dir>/metrics-<process>.json``
(:mod:`common.metrics_file`), which ``sagawire metrics`` prints;
``OTEL_METRICS_EXPORTER`` names them explicitly (``otlp``, ``file``, ``console``,
``none``). :meth:`Telemetry.shutdown` flushes both; the server calls it last on
graceful shutdown.

gRPC calls are traced by the interceptors of :mod:`common.grpc_spans`
(:meth:`Telemetry.server_interceptor`, :func:`client_interceptors`), which end every
call's span whatever ends the call. Health checks, reflection and the endless
``EventStream/Subscribe`` are not traced: an event carries the trace context of the
span that published it (:func:`inject_headers`: the server span of the call, or the
consumer span of the reaction, that wrote it to the outbox; the write is not a hop and
gets no span) and :func:`consumer_span` continues it when a consumer reacts, so one
choreographed saga is one trace, one span per hop.

The helpers use the *active* telemetry: the one :func:`setup_telemetry` installed
for the process, or one a test activates with :func:`activated` (tests never set
the OpenTelemetry globals).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, ExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Link, Span, SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from common.grpc_spans import ServerSpans, client_spans, method_of
from common.metrics import RpcMetrics, SagaMetrics, ServiceMetrics
from common.metrics_file import DEFAULT_INTERVAL_MILLIS, MetricsFileExporter, metrics_file
from common.trace_file import DEFAULT_MAX_BYTES, TRACE_FILE_NAME, JsonLinesSpanExporter
from protos.sagawire.v1 import events_pb2

log = logging.getLogger(__name__)

INSTRUMENTATION_NAME = "sagawire"
RPC_INSTRUMENTATION_NAME = "sagawire.grpc"
SERVICE_NAMESPACE = "sagawire"

# Calls that get no span: probes, tooling, and the long-lived event stream (its events
# each get a consumer span). One string test per call.
_UNTRACED_PREFIXES = ("/grpc.health.v1.Health", "/grpc.reflection.")
_UNTRACED_METHODS = frozenset({"/sagawire.v1.EventStream/Subscribe"})


def traced_call(details: Any) -> bool:
    """Whether a gRPC call gets a span (the interceptors' filter)."""
    method = method_of(details)
    return not (method.startswith(_UNTRACED_PREFIXES) or method in _UNTRACED_METHODS)


TRACED_CALLS = traced_call


# --- trace context in event headers -------------------------------------------------


def inject_headers(headers: dict[str, str]) -> dict[str, str]:
    """Add the current trace context (traceparent, tracestate) to ``headers``."""
    inject(headers)
    return headers


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The trace context carried by an event's headers."""
    return extract(dict(headers))


# --- the telemetry of one process ---------------------------------------------------


class Telemetry:
    """One process's tracer and meter providers, its instruments and its interceptors."""

    def __init__(
        self, service_name: str, tracer_provider: TracerProvider, meter_provider: MeterProvider
    ) -> None:
        self.service_name = service_name
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer: Tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        meter = meter_provider.get_meter(INSTRUMENTATION_NAME)
        self.metrics = SagaMetrics(meter)
        self.service_metrics = ServiceMetrics(meter)
        self.rpc_metrics = RpcMetrics(meter)
        self._rpc_tracer = tracer_provider.get_tracer(RPC_INSTRUMENTATION_NAME)
        self._shutdown_lock = threading.Lock()
        self._is_shut_down = False

    def server_interceptor(self) -> grpc.aio.ServerInterceptor:
        """A SERVER span per call (health checks, reflection and Subscribe excluded); every
        call's handler runs with this telemetry active (:func:`scoped`)."""
        return ServerSpans(
            self._rpc_tracer,
            self.rpc_metrics.server_duration,
            TRACED_CALLS,
            around=lambda: scoped(self),
        )

    def client_interceptors(self) -> list[grpc.aio.ClientInterceptor]:
        """Interceptors for a channel (``interceptors=...``): a CLIENT span per call, with
        the trace context sent in the call's metadata."""
        return client_spans(self._rpc_tracer, self.rpc_metrics.client_duration, TRACED_CALLS)

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        """Export what is buffered now; True when everything made it."""
        spans = self.tracer_provider.force_flush(timeout_millis)
        points = self.meter_provider.force_flush(timeout_millis)
        return spans and points

    def shutdown(self) -> None:
        """Flush and stop both providers. Idempotent; blocks while the exporters flush."""
        with self._shutdown_lock:
            if self._is_shut_down:
                return
            self._is_shut_down = True
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def service_resource(service_name: str) -> Resource:
    """``service.name`` = the process's name unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` say otherwise; the SDK's defaults otherwise."""
    ours = Resource.create({SERVICE_NAME: service_name, "service.namespace": SERVICE_NAMESPACE})
    # Resource.create lets explicit attributes win; the environment must win over ours.
    return ours.merge(OTELResourceDetector().detect())


def create_telemetry(
    service_name: str,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
    *,
    batch: bool = True,
    shutdown_on_exit: bool = False,
    span_processors: Sequence[SpanProcessor] = (),
) -> Telemetry:
    """Telemetry with the given exporters, not installed anywhere (tests use this directly,
    e.g. with an ``InMemorySpanExporter`` and ``batch=False``, or processors of their own)."""
    resource = service_resource(service_name)
    tracer_provider = TracerProvider(
        resource=resource, shutdown_on_exit=shutdown_on_exit, id_generator=_ChosenSpanIds()
    )
    processors: list[SpanProcessor] = [
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        for exporter in span_exporters
    ]
    for processor in [*processors, *span_processors]:
        tracer_provider.add_span_processor(processor)
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=list(metric_readers),
        shutdown_on_exit=shutdown_on_exit,
        exemplar_filter=_exemplar_filter(),
    )
    return Telemetry(service_name, tracer_provider, meter_provider)


def _exemplar_filter() -> ExemplarFilter | None:
    """No exemplars unless ``OTEL_METRICS_EXEMPLAR_FILTER`` asks for them (None: the SDK
    reads it). The SDK's default samples one for every measurement made in a sampled
    span, a cost on every call of every process for what neither of our metric files
    shows; a collector that wants them gets them by the standard variable."""
    return None if _env("OTEL_METRICS_EXEMPLAR_FILTER") else AlwaysOffExemplarFilter()


_chosen_span_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "sagawire_chosen_span_id", default=None
)
_chosen_trace_id: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "sagawire_chosen_trace_id", default=None
)


class _ChosenSpanIds(RandomIdGenerator):
    """Random ids, except a span started inside :func:`with_span_id` gets the ids chosen."""

    def generate_span_id(self) -> int:
        chosen = _chosen_span_id.get()
        return chosen if chosen is not None else super().generate_span_id()

    def generate_trace_id(self) -> int:
        chosen = _chosen_trace_id.get()
        return chosen if chosen is not None else super().generate_trace_id()


@contextmanager
def with_span_id(span_id: int | None, trace_id: int | None = None) -> Iterator[None]:
    """Spans started in this block get ``span_id`` (None: random ids): a span a later
    process can name as a parent without having logged its id (the saga span, see
    coordinator/saga_telemetry). A root span started in it gets ``trace_id`` too (a trace
    whose id was logged before its first span started)."""
    span_token = _chosen_span_id.set(span_id)
    trace_token = _chosen_trace_id.set(trace_id)
    try:
        yield
    finally:
        _chosen_trace_id.reset(trace_token)
        _chosen_span_id.reset(span_token)


def new_trace_id() -> str:
    """A fresh random trace id, as 32 hex digits (for a trace that starts later)."""
    return format(RandomIdGenerator().generate_trace_id(), "032x")


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _exporter_names(variable: str) -> list[str]:
    return [n.strip().lower() for n in _env(variable).split(",") if n.strip()]


def _otlp_configured(signal: str) -> bool:
    return bool(
        _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    )


def span_exporters_from_env(
    data_dir: Path, trace_file_max_bytes: int = DEFAULT_MAX_BYTES
) -> list[SpanExporter]:
    """The span exporters the ``OTEL_*`` variables ask for (see the module docstring)."""
    names = _exporter_names("OTEL_TRACES_EXPORTER")
    if not names:
        names = ["otlp" if _otlp_configured("TRACES") else "file"]
    exporters: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "file":
            exporters.append(
                JsonLinesSpanExporter(data_dir / TRACE_FILE_NAME, trace_file_max_bytes)
            )
        elif name != "none":
            log.warning("unknown OTEL_TRACES_EXPORTER ignored name=%s", name)
    return [] if "none" in names else exporters


def metric_readers_from_env(data_dir: Path, process: str) -> list[MetricReader]:
    """OTLP metrics when an endpoint is configured, else the local metrics file
    (:mod:`common.metrics_file`), unless ``OTEL_METRICS_EXPORTER`` names them (``otlp``,
    ``file``, ``console``, ``none``). The interval is ``OTEL_METRIC_EXPORT_INTERVAL``
    (the SDK's 60 s; 5 s for the file, read by people at a terminal)."""
    names = _exporter_names("OTEL_METRICS_EXPORTER")
    if not names:
        names = ["otlp" if _otlp_configured("METRICS") else "file"]
    readers: list[MetricReader] = []
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "file":
            interval = None if _env("OTEL_METRIC_EXPORT_INTERVAL") else DEFAULT_INTERVAL_MILLIS
            exporter = MetricsFileExporter(metrics_file(data_dir, process))
            readers.append(PeriodicExportingMetricReader(exporter, interval))
        elif name == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name != "none":
            log.warning("unknown OTEL_METRICS_EXPORTER ignored name=%s", name)
    return [] if "none" in names else readers


def setup_telemetry(
    service_name: str,
    data_dir: Path,
    *,
    install: bool = True,
    trace_file_max_bytes: int = DEFAULT_MAX_BYTES,
) -> Telemetry:
    """The telemetry of this process, configured from the standard ``OTEL_*`` variables.

    With ``install`` (the default, for a process's ``main``) it becomes the active
    telemetry and the OpenTelemetry global providers. Call :meth:`Telemetry.shutdown`
    on the way out (``start_server(..., telemetry=...)`` does).
    """
    telemetry = create_telemetry(
        service_name,
        span_exporters_from_env(data_dir, trace_file_max_bytes),
        metric_readers_from_env(data_dir, service_name),
        shutdown_on_exit=install,
    )
    if install:
        global _active
        _active = telemetry
        trace.set_tracer_provider(telemetry.tracer_provider)
        otel_metrics.set_meter_provider(telemetry.meter_provider)
    return telemetry


# --- the active telemetry and the helpers that use it ---------------------------------

_active: Telemetry | None = None
# The telemetry of the server whose work runs in this context, when several share one
# process (tests run a whole stack in one event loop): it wins over ``_active``.
_scoped: contextvars.ContextVar[Telemetry | None] = contextvars.ContextVar(
    "sagawire_telemetry", default=None
)
_fallback_metrics: SagaMetrics | None = None
_fallback_service_metrics: ServiceMetrics | None = None


def active() -> Telemetry | None:
    """The telemetry the helpers below use, if any."""
    return _scoped.get() or _active


@contextmanager
def activated(telemetry: Telemetry) -> Iterator[Telemetry]:
    """Make ``telemetry`` the active one for the block (tests), then restore the previous."""
    global _active
    previous, _active = _active, telemetry
    try:
        yield telemetry
    finally:
        _active = previous


@contextmanager
def scoped(telemetry: Telemetry | None) -> Iterator[None]:
    """Make ``telemetry`` the active one for work started in this context (the calls a
    server handles, the tasks its app starts); None changes nothing."""
    if telemetry is None:
        yield
        return
    token = _scoped.set(telemetry)
    try:
        yield
    finally:
        _scoped.reset(token)


def samples_new_trace(trace_id: int, name: str) -> bool:
    """Whether the active telemetry's sampler (``OTEL_TRACES_SAMPLER``) samples a trace
    with this id started here: the same decision it made if the trace began here (a
    ratio decides by the trace id; the default samples every trace)."""
    current = active()
    provider = current.tracer_provider if current is not None else trace.get_tracer_provider()
    sampler = getattr(provider, "sampler", None)
    if sampler is None:  # the API's no-op provider: nothing is recorded anyway
        return True
    decision: bool = sampler.should_sample(None, trace_id, name).decision.is_sampled()
    return decision


def tracer() -> Tracer:
    """The active telemetry's tracer (the global, no-op until configured, otherwise)."""
    current = active()
    return current.tracer if current is not None else trace.get_tracer(INSTRUMENTATION_NAME)


def saga_metrics() -> SagaMetrics:
    """The active telemetry's :class:`SagaMetrics` (recording into the void otherwise)."""
    global _fallback_metrics
    current = active()
    if current is not None:
        return current.metrics
    if _fallback_metrics is None:
        _fallback_metrics = SagaMetrics(otel_metrics.get_meter(INSTRUMENTATION_NAME))
    return _fallback_metrics


def service_metrics() -> ServiceMetrics:
    """The active telemetry's :class:`ServiceMetrics` (recording into the void otherwise)."""
    global _fallback_service_metrics
    current = active()
    if current is not None:
        return current.service_metrics
    if _fallback_service_metrics is None:
        _fallback_service_metrics = ServiceMetrics(otel_metrics.get_meter(INSTRUMENTATION_NAME))
    return _fallback_service_metrics


def client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors for a process's outgoing channels (the coordinator's clients)."""
    current = active()
    if current is not None:
        return current.client_interceptors()
    rpc_metrics = RpcMetrics(otel_metrics.get_meter(INSTRUMENTATION_NAME))
    tracer = trace.get_tracer(RPC_INSTRUMENTATION_NAME)
    return client_spans(tracer, rpc_metrics.client_duration, TRACED_CALLS)


@contextmanager
def consumer_span(
    event: events_pb2.Event,
    name: str | None = None,
    start_time: int | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
) -> Iterator[Span]:
    """A CONSUMER span for reacting to one event, continuing the producer's trace.

    Its parent is the context in the event's headers and it also links to it, so
    the reaction is part of the saga's one trace. ``name`` defaults to
    ``"process <event type>"``; ``start_time`` (ns since the epoch) to now;
    ``attributes`` are added to the messaging ones (a reaction's step). Events
    published inside it carry it onwards.
    """
    parent = extract_context(event.headers)
    produced = trace.get_current_span(parent).get_span_context()
    links = [Link(produced)] if produced.is_valid else []
    described: dict[str, Any] = {
        "messaging.system": INSTRUMENTATION_NAME,
        "messaging.operation.type": "process",
        "messaging.message.id": event.id,
        "messaging.destination.name": event.source,
        "sagawire.event.type": event.type,
        "sagawire.event.source": event.source,
        "sagawire.event.sequence": event.sequence,
        "saga.id": event.subject,
        **(attributes or {}),
    }
    with tracer().start_as_current_span(
        name or f"process {event.type}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=described,
        links=links,
        start_time=start_time,
    ) as span:
        yield span


def current_trace_id() -> str:
    """The current trace id as 32 hex digits, or "" outside any span (GetSaga returns it)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


__all__ = [
    "SagaMetrics",
    "Telemetry",
    "activated",
    "active",
    "client_interceptors",
    "consumer_span",
    "create_telemetry",
    "current_trace_id",
    "extract_context",
    "inject_headers",
    "new_trace_id",
    "saga_metrics",
    "scoped",
    "service_metrics",
    "setup_telemetry",
    "tracer",
]
