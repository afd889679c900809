"""Without a collector, each process keeps its current metrics in its data directory, and
``sagawire metrics`` prints them.

A real inventory service runs as its own process with no OTLP endpoint (as under
``sagawire up``); the test calls it as the coordinator would.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from cli.main import app as cli_app
from common.certs import COORDINATOR
from common.metrics_file import metrics_file, read_metrics_file
from contract.messages import pack
from protos.sagawire.v1 import common_pb2, order_saga_pb2, participant_pb2, participant_pb2_grpc
from tests.support import open_channel, start_service_process, wait_until

_OTEL = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_RESOURCE_ATTRIBUTES",
)


def _reserve(sku: str, quantity: int) -> participant_pb2.StepRequest:
    data = order_saga_pb2.OrderSagaData(
        order_id=str(uuid.uuid4()),
        customer_id="alice",
        destination="Berlin",
        items=[common_pb2.LineItem(sku=sku, quantity=quantity)],
    )
    return participant_pb2.StepRequest(
        saga_id=str(uuid.uuid4()),
        step="reserve_stock",
        action="reserve",
        payload=pack(data),
        mode=participant_pb2.SAGA_MODE_ORCHESTRATION,
    )


def _counted(path: Path, outcome: str) -> bool:
    document = read_metrics_file(path) or {}
    return any(
        metric["name"] == "sagawire.action.duration"
        and point["attributes"].get("saga.outcome") == outcome
        for metric in document.get("metrics", [])
        for point in metric["points"]
    )


async def test_sagawire_metrics_prints_what_the_local_stack_measured(tmp_path: Path) -> None:
    env = {**dict.fromkeys(_OTEL, ""), "OTEL_METRIC_EXPORT_INTERVAL": "200"}
    process = start_service_process("inventory", tmp_path / "inventory", env)
    try:
        port = await asyncio.to_thread(process.port)
        async with open_channel(f"127.0.0.1:{port}", COORDINATOR) as channel:
            participant = participant_pb2_grpc.ParticipantStub(channel)
            await participant.Execute(_reserve("SKU-MUG", 1))
            request = _reserve("SKU-MUG", 1)
            await participant.Execute(request)
            await participant.Execute(request)  # the barrier replays it
            with pytest.raises(grpc.aio.AioRpcError):  # one SKU-RARE exists: rejected
                await participant.Execute(_reserve("SKU-RARE", 2))
        path = metrics_file(tmp_path / "inventory", "inventory")
        await wait_until(lambda: _counted(path, "rejected"), message="the metrics file")
    finally:
        assert await asyncio.to_thread(process.stop) == 0, process.output

    shown = CliRunner().invoke(cli_app, ["metrics", "--data", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert lines[0].split() == ["SERVICE", "METRIC", "ATTRIBUTES", "VALUE"]

    def line(metric: str, *attributes: str) -> str:
        (found,) = [
            text
            for text in lines
            if text.split()[:2] == ["inventory", metric] and all(a in text for a in attributes)
        ]
        return found

    ok = line("sagawire.action.duration", "saga.action=reserve", "saga.outcome=ok")
    assert "count=3 " in ok and "sagawire.trigger=call" in ok
    assert "count=1 " in line("sagawire.action.duration", "saga.outcome=rejected")
    assert line("sagawire.barrier.decisions", "barrier.decision=replayed").endswith(" 1")
    assert line("sagawire.barrier.decisions", "barrier.decision=applied").endswith(" 3")
    assert "rpc.grpc.status_code=9" in line("rpc.server.call.duration", "rpc.grpc.status_code=9")

    as_json = CliRunner().invoke(
        cli_app, ["metrics", "--data", str(tmp_path), "--match", "barrier", "--json"]
    )
    assert as_json.exit_code == 0, as_json.output
    decisions = [json.loads(text) for text in as_json.output.splitlines()]
    assert {d["attributes"]["barrier.decision"]: d["value"] for d in decisions} == {
        "applied": 3,
        "replayed": 1,
    }

    empty = CliRunner().invoke(cli_app, ["metrics", "--data", str(tmp_path / "nothing")])
    assert empty.exit_code == 5  # not found
