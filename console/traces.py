"""A saga's trace as the console's waterfall: the spans ``sagawire trace`` reads, as rows.

The spans come from where cli/trace.py finds them — the local trace files of the
stack's data directory, or Jaeger's query API when a Jaeger URL is configured — and
are ordered the same way (parents before children, siblings by start). Each row has
its depth, its offset and length as shares of the trace, and the status words the
terminal waterfall prints. The console shows a trace only after the coordinator let
the user read the saga (GetSaga with the user's token): the files are not the API,
so the API decides who sees them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli.trace import SpanRecord, in_tree_order, load_jaeger, load_local

# Attributes worth a tooltip in the waterfall; the rest stay in Jaeger or the files.
_SHOWN = (
    "saga.step",
    "saga.phase",
    "saga.attempt",
    "saga.outcome",
    "saga.error_reason",
    "saga.barrier",
    "rpc.method",
    "rpc.grpc.status_code",
    "messaging.destination.name",
    "sagawire.event.type",
)


@dataclass(frozen=True)
class TraceSource:
    """Where traces are read: Jaeger's query API if ``jaeger_url``, else the files of
    ``data_dir``; ``jaeger_link`` is the Jaeger UI a browser can open (it may differ
    from the URL the console reads from, e.g. inside compose)."""

    data_dir: Path
    jaeger_url: str = ""
    jaeger_link: str = ""

    def describe(self) -> str:
        return f"Jaeger at {self.jaeger_url}" if self.jaeger_url else f"{self.data_dir}/*.jsonl"

    def link(self, trace_id: str) -> str:
        return f"{self.jaeger_link.rstrip('/')}/trace/{trace_id}" if self.jaeger_link else ""

    def load(self, saga_id: str) -> list[SpanRecord]:
        """The spans of the saga's traces (blocking: file or HTTP reads)."""
        if self.jaeger_url:
            return load_jaeger(self.jaeger_url, saga_id)
        return load_local(self.data_dir, saga_id)

    async def waterfalls(self, saga_id: str) -> dict[str, Any]:
        """The saga's traces as waterfalls, or why there are none."""
        try:
            spans = await asyncio.to_thread(self.load, saga_id)
        except (OSError, ValueError) as error:
            return {"source": self.describe(), "traces": [], "error": str(error)}
        return {"source": self.describe(), "traces": waterfalls(spans, self)}


def waterfalls(spans: Sequence[SpanRecord], source: TraceSource) -> list[dict[str, Any]]:
    """One waterfall per trace among ``spans``, the earliest first."""
    by_trace: dict[str, list[SpanRecord]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    ordered = sorted(by_trace.items(), key=lambda item: (min(s.start_ns for s in item[1]), item[0]))
    return [waterfall(trace_id, members, source.link(trace_id)) for trace_id, members in ordered]


def waterfall(trace_id: str, spans: Sequence[SpanRecord], link: str = "") -> dict[str, Any]:
    t0 = min(s.start_ns for s in spans)
    total = max(max(s.end_ns for s in spans) - t0, 1)
    rows = []
    for depth, span in in_tree_order(spans):
        rows.append(
            {
                "depth": depth,
                "service": span.service,
                "name": span.label,
                "kind": span.kind.lower(),
                "start_ms": round((span.start_ns - t0) / 1e6, 2),
                "duration_ms": round((span.end_ns - span.start_ns) / 1e6, 2),
                "offset": (span.start_ns - t0) / total,
                "share": max(span.end_ns - span.start_ns, 0) / total,
                "error": span.status == "ERROR",
                "status": span.status_label,
                "attributes": {k: span.attributes[k] for k in _SHOWN if k in span.attributes},
            }
        )
    return {
        "trace_id": trace_id,
        "duration_ms": round(total / 1e6, 2),
        "spans": len(rows),
        "services": sorted({s.service for s in spans if s.service}),
        "link": link,
        "rows": rows,
    }
