"""The local trace file is capped: rotated once full, by whichever process writes to it."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from cli.trace import load_local
from common.trace_file import JsonLinesSpanExporter, read_span_lines

CAP = 8_000


def _process(path: Path, service: str) -> tuple[TracerProvider, JsonLinesSpanExporter]:
    """What one process of a stack has: its own exporter (descriptor) on the shared file."""
    exporter = JsonLinesSpanExporter(path, max_bytes=CAP)
    provider = TracerProvider(resource=Resource({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_two_writers_rotate_the_file_once_full_and_lose_no_recent_span(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    writers = [_process(path, "order"), _process(path, "payment")]
    written: list[str] = []
    for n in range(200):
        provider, _ = writers[n % 2]
        with provider.get_tracer("test").start_as_current_span(f"span-{n}"):
            pass
        written.append(f"span-{n}")

    rotated = tmp_path / "traces.1.jsonl"
    assert rotated.exists()
    # One span's line at most past the cap: each writer checks after every export.
    assert path.stat().st_size < CAP + 1_000
    assert rotated.stat().st_size < CAP + 1_000
    current = [r["name"] for r in read_span_lines(path)]
    older = [r["name"] for r in read_span_lines(rotated)]
    # Both writers followed the rotations: the newest spans of each are in the new file,
    # the two files hold one unbroken run of the most recent spans, every line whole.
    assert {"span-198", "span-199"} <= set(current)
    kept = older + current
    assert sorted(kept, key=written.index) == written[-len(kept) :]
    for _, exporter in writers:
        exporter.shutdown()


def test_a_trace_is_found_across_the_rotated_and_the_current_file(tmp_path: Path) -> None:
    provider, exporter = _process(tmp_path / "traces.jsonl", "coordinator")
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("saga", attributes={"saga.id": "saga-1"}) as root:
        for n in range(60):  # enough to rotate while the saga's trace is open
            with tracer.start_as_current_span(f"step-{n}"):
                pass
    exporter.shutdown()
    assert (tmp_path / "traces.1.jsonl").exists()
    found = load_local(tmp_path, "saga-1")
    assert {s.name for s in found} >= {"saga", "step-59"}
    assert {s.trace_id for s in found} == {format(root.get_span_context().trace_id, "032x")}
