"""A test OTLP/gRPC receiver: what Jaeger (or a collector) listens for on port 4317.

Built from opentelemetry-proto's ``TraceService`` and ``MetricsService``; it keeps
every export request so a test can read back the spans and metrics each process
sent, with the ``service.name`` of the resource they came with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def attribute(attributes: Iterable[KeyValue], key: str) -> object:
    """The plain value of one OTLP attribute (None when absent)."""
    for kv in attributes:
        if kv.key == key:
            which = kv.value.WhichOneof("value")
            return getattr(kv.value, which) if which else None
    return None


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    span: Span

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def kind(self) -> int:
        """OTLP's SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer."""
        return int(self.span.kind)

    @property
    def is_error(self) -> bool:
        return self.span.status.code == self.span.status.STATUS_CODE_ERROR

    def attribute(self, key: str) -> object:
        return attribute(self.span.attributes, key)

    @property
    def event_names(self) -> list[str]:
        return [event.name for event in self.span.events]

    @property
    def links(self) -> list[tuple[str, str]]:
        """(trace id, span id) of every link."""
        return [(link.trace_id.hex(), link.span_id.hex()) for link in self.span.links]


def orphans(spans: Iterable[ReceivedSpan]) -> list[ReceivedSpan]:
    """Spans whose parent is not among ``spans`` (a parent that never arrived)."""
    found = list(spans)
    ids = {(s.trace_id, s.span_id) for s in found}
    return [s for s in found if s.parent_id and (s.trace_id, s.parent_id) not in ids]


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: list[trace_service_pb2.ExportTraceServiceRequest]) -> None:
        self._sink = sink

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._sink.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, sink: list[metrics_service_pb2.ExportMetricsServiceRequest]) -> None:
        self._sink = sink

    async def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: object
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._sink.append(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    """TraceService + MetricsService on 127.0.0.1, on a free port."""

    def __init__(self) -> None:
        self.trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self._server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Traces(self.trace_requests), self._server
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _Metrics(self.metric_requests), self._server
        )
        self.port = 0

    @property
    def endpoint(self) -> str:
        """The value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (http: plaintext gRPC)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> OtlpReceiver:
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        await self._server.stop(None)

    def spans(self) -> list[ReceivedSpan]:
        return [
            ReceivedSpan(str(attribute(rs.resource.attributes, "service.name")), span)
            for request in self.trace_requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def metrics(self) -> list[tuple[str, Metric]]:
        """(service.name, metric) for every metric received."""
        return [
            (str(attribute(rm.resource.attributes, "service.name")), metric)
            for request in self.metric_requests
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]
