"""The coordinator's answers as the JSON the console's pages draw.

Pure functions from the public API's messages to plain values: enum names in lower
case (``needs_attention``), times as ISO-8601 UTC strings (the browser shows them in
its own zone), money formatted from integer minor units (common/money.py). A saga
comes with its definition's graph laid out (console/graph.py), each step coloured
by its status and carrying its attempts, and its compensations in the order they ran.
"""

from __future__ import annotations

import base64
import importlib
import pkgutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import any_pb2, json_format, timestamp_pb2

import protos.sagawire.v1
from common.money import format_money
from console import graph
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import participant_pb2

# Every message type of the API's protos, so any saga's data can be shown as JSON.
for _module in pkgutil.iter_modules(protos.sagawire.v1.__path__):
    if _module.name.endswith("_pb2"):
        importlib.import_module(f"protos.sagawire.v1.{_module.name}")

Json = dict[str, Any]

# What RetrySaga takes up again.
RETRYABLE = frozenset({"needs_attention", "stalled"})
SETTLED = frozenset({"completed", "compensated", "needs_attention", "stalled"})
SAGA_STATUSES = (
    "running",
    "compensating",
    "completed",
    "compensated",
    "needs_attention",
    "stalled",
)
MODES = ("orchestration", "choreography")


def name(enum_name: str) -> str:
    """SAGA_STATUS_NEEDS_ATTENTION -> needs_attention."""
    for prefix in ("SAGA_STATUS_", "STEP_STATUS_", "SAGA_MODE_"):
        enum_name = enum_name.removeprefix(prefix)
    return enum_name.lower()


def saga_status(value: pb.SagaStatus.ValueType) -> str:
    return name(pb.SagaStatus.Name(value))


def saga_status_value(text: str) -> pb.SagaStatus.ValueType:
    """needs_attention -> SAGA_STATUS_NEEDS_ATTENTION (ValueError if unknown)."""
    return pb.SagaStatus.Value(f"SAGA_STATUS_{text.upper()}")


def mode_name(value: participant_pb2.SagaMode.ValueType) -> str:
    return name(participant_pb2.SagaMode.Name(value))


def mode_value(text: str) -> participant_pb2.SagaMode.ValueType:
    """choreography -> SAGA_MODE_CHOREOGRAPHY (ValueError if unknown)."""
    return participant_pb2.SagaMode.Value(f"SAGA_MODE_{text.upper()}")


def when(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    return stamp.ToDatetime(UTC) if stamp.seconds or stamp.nanos else None


def text(moment: datetime | None) -> str | None:
    """A time as ISO-8601 UTC with milliseconds (``2026-01-01T12:00:00.000Z``)."""
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


def iso(stamp: timestamp_pb2.Timestamp) -> str | None:
    return text(when(stamp))


def millis(start: timestamp_pb2.Timestamp, end: timestamp_pb2.Timestamp) -> float | None:
    begin, finish = when(start), when(end)
    if begin is None or finish is None:
        return None
    return round((finish - begin).total_seconds() * 1000, 1)


def failure(value: pb.Failure) -> Json | None:
    if not value.code:
        return None
    return {
        "step": value.step,
        "code": value.code,
        "reason": value.reason,
        "message": value.message,
    }


def data(value: any_pb2.Any) -> Json:
    """The saga's data: its type and its fields as JSON (or the raw bytes of a type
    this console does not know)."""
    kind = value.type_url.rpartition("/")[2]
    if not value.type_url:
        return {"type": "", "fields": {}}
    try:
        fields = json_format.MessageToDict(value, preserving_proto_field_name=True)
    except (TypeError, KeyError, json_format.Error):
        return {"type": kind, "bytes": base64.b64encode(value.value).decode()}
    fields.pop("@type", None)
    return {"type": kind, "fields": fields}


def summary(saga: pb.Saga) -> Json:
    total = saga.summary.total
    return {
        "customer_id": saga.summary.customer_id,
        "total": format_money(total.amount_minor, total.currency) if total.currency else "",
        "failure": saga.summary.failure,
        "steps_done": saga.summary.steps_done,
        "steps_total": saga.summary.steps_total,
    }


def saga_row(saga: pb.Saga) -> Json:
    """A saga as a line of the list."""
    status = saga_status(saga.status)
    return {
        "saga_id": saga.saga_id,
        "saga": saga.saga,
        "mode": mode_name(saga.mode),
        "status": status,
        "created_at": iso(saga.created_at),
        "finished_at": iso(saga.finished_at),
        "duration_ms": millis(saga.created_at, saga.finished_at),
        "failure": failure(saga.failure),
        "summary": summary(saga),
    }


def attempt(value: pb.Attempt) -> Json:
    return {
        "number": value.number,
        "phase": value.phase,
        "started_at": iso(value.started_at),
        "finished_at": iso(value.finished_at),
        "duration_ms": millis(value.started_at, value.finished_at),
        "outcome": value.outcome or "running",
        "error_code": value.error_code,
        "error_reason": value.error_reason,
        "error_message": value.error_message,
    }


def _compensations(steps: Iterable[pb.SagaStep]) -> list[graph.Compensation]:
    found = []
    for step in steps:
        undo = [a for a in step.attempts if a.phase == "compensate"]
        started = [when(a.started_at) for a in undo]
        begun = [s for s in started if s is not None]
        if not begun:
            continue
        last = undo[-1]
        finished = when(last.finished_at) if last.outcome else None
        found.append(graph.Compensation(step.name, min(begun), finished))
    return found


def saga_detail(saga: pb.Saga) -> Json:
    """A saga with its graph: every step (status, attempts, observed events), where it
    stands, the forward edges, and the compensations in the order they ran."""
    steps = list(saga.steps)
    layout = graph.layout([graph.GraphStep(s.name, tuple(s.after)) for s in steps])
    waves = graph.compensation_waves(_compensations(steps))
    wave_of = {c.step: c.wave for c in waves}
    failed = saga.failure.step
    reverse = graph.reverse_path(layout, failed, waves)
    status = saga_status(saga.status)
    return {
        **saga_row(saga),
        "updated_at": iso(saga.updated_at),
        "deadline": iso(saga.deadline),
        "trace_id": saga.trace_id,
        "idempotency_key": saga.idempotency_key,
        "data": data(saga.data),
        "settled": status in SETTLED,
        "retryable": status in RETRYABLE,
        "steps": [
            {
                "name": s.name,
                "participant": s.participant,
                "action": s.action,
                "compensation": s.compensation,
                "after": list(s.after),
                "pivot": s.pivot,
                "forward_only": False,
                "status": name(pb.StepStatus.Name(s.status)),
                "failed_here": s.name == failed,
                "attempts": [attempt(a) for a in s.attempts],
                "events": list(s.events),
                "compensation_wave": wave_of.get(s.name),
            }
            for s in steps
        ],
        "graph": graph.as_plain(layout),
        "compensations": [
            {
                "wave": c.wave,
                "step": c.step,
                "started_at": text(c.started_at),
                "finished_at": text(c.finished_at),
            }
            for c in waves
        ],
        "reverse_edges": [
            {"source": e.source, "target": e.target, "wave": e.wave, "path": e.path}
            for e in reverse
        ],
    }


def transition(value: pb.SagaTransition) -> Json:
    return {
        "sequence": value.sequence,
        "kind": value.kind,
        "step": value.step,
        "attempt": value.attempt,
        "at": iso(value.at),
        "status": saga_status(value.status),
        "detail": value.detail,
    }


def counts(reply: pb.CountSagasResponse) -> Json:
    by_status = {status: 0 for status in SAGA_STATUSES}
    for item in reply.counts:
        by_status[saga_status(item.status)] = item.count
    return {"total": reply.total, "by_status": by_status}


def breaker(value: pb.Breaker) -> Json:
    return {
        "participant": value.participant,
        "state": value.state,
        "failure_count": value.failure_count,
        "window_calls": value.window_calls,
        "failure_rate_threshold": value.failure_rate_threshold,
        "minimum_calls": value.minimum_calls,
        "window_seconds": value.window_seconds,
        "reset_timeout_seconds": value.reset_timeout_seconds,
        "opened_at": iso(value.opened_at),
        "waiting_for_breaker": value.waiting_for_breaker,
        "in_flight": value.in_flight,
        "bulkhead_limit": value.bulkhead_limit,
        "waiting_for_bulkhead": value.waiting_for_bulkhead,
        "transitions": [
            {"from": t.from_state, "to": t.to_state, "at": iso(t.at)} for t in value.transitions
        ],
    }


def definition(value: pb.Definition) -> Json:
    layout = graph.layout([graph.GraphStep(s.name, tuple(s.after)) for s in value.steps])
    return {
        "name": value.name,
        "mode": mode_name(value.mode),
        "data_type": value.data_type,
        "deadline_seconds": value.deadline_seconds,
        "steps": [
            {
                "name": s.name,
                "participant": s.participant,
                "action": s.action,
                "compensation": s.compensation,
                "after": list(s.after),
                "pivot": s.pivot,
                "forward_only": s.forward_only,
                "status": "",
                "attempts": [],
                "events": [],
            }
            for s in value.steps
        ],
        "graph": graph.as_plain(layout),
    }


def with_forward_only(detail: Json, definitions: Mapping[str, Sequence[Json]]) -> Json:
    """Mark the saga's steps that run after the pivot, from its definition when known."""
    steps = {s["name"]: s for s in definitions.get(detail["saga"], ())}
    for step in detail["steps"]:
        known = steps.get(step["name"])
        step["forward_only"] = bool(known and known["forward_only"])
    return detail
