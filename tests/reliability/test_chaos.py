"""``sagawire chaos``, short: seeded orders under faults, kills and a stream cut, in both
modes, must end with no violation and the same completed orders as the fault-free run.

And the stream cut it relies on: ``Admin.CutStreams`` ends every open event stream
with UNAVAILABLE, and a subscriber resumes from its offset.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from protos.sagawire.v1 import admin_pb2, events_pb2, events_pb2_grpc
from services import saga_events
from tests.event_support import create_order_request
from tests.support import ROOT, Cluster, wait_until

SAGAS = 150


async def test_cut_streams_ends_every_open_stream_and_a_subscriber_resumes(
    cluster: Cluster,
) -> None:
    await cluster.participant("order").Execute(create_order_request())
    stub = events_pb2_grpc.EventStreamStub(cluster.channel("order"))
    request = events_pb2.SubscribeRequest(
        from_sequence=1, consumer="chaos-test", types=[saga_events.ORDER_CREATED]
    )
    seen: list[events_pb2.Event] = []

    async def follow() -> grpc.StatusCode:
        try:
            async for batch in stub.Subscribe(request, timeout=30):
                seen.extend(batch.events)
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    reader = asyncio.create_task(follow())
    await wait_until(lambda: seen, message="the stream's first event")
    admin = cluster.admin("order")
    cut = await admin.CutStreams(admin_pb2.CutStreamsRequest())
    # Ours, and the other services' subscriptions to order's events.
    assert cut.streams >= 1
    assert await asyncio.wait_for(reader, 10) == grpc.StatusCode.UNAVAILABLE

    # A subscriber reconnects from its offset: the next event, nothing twice.
    await cluster.participant("order").Execute(create_order_request())
    resumed = stub.Subscribe(
        events_pb2.SubscribeRequest(
            from_sequence=seen[-1].sequence + 1,
            consumer="chaos-test",
            types=[saga_events.ORDER_CREATED],
        ),
        timeout=30,
    )
    batch = await anext(aiter(resumed))
    assert [e.sequence for e in batch.events] and batch.events[0].sequence > seen[-1].sequence
    resumed.cancel()


def _chaos(mode: str, out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    args = [
        sys.executable, "-m", "cli.main", "chaos",
        "--mode", mode,
        "--seed", "1",
        "--sagas", str(SAGAS),
        "--concurrency", "16",
        "--fault-rate", "0.2",
        "--kills-coordinator", "1",
        "--kills-participant", "1",
        "--stream-cuts", "1",
        "--timeout", "60",
        "--settle-timeout", "45",
        "--no-progress",
        "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert out.exists(), f"exit status {run.returncode}\n{run.stdout}{run.stderr}"
    report: dict[str, Any] = json.loads(out.read_text())
    return run, report


@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["orchestration", "choreography"])
def test_faults_kills_and_a_stream_cut_cost_latency_never_orders(mode: str, tmp_path: Path) -> None:
    run, report = _chaos(mode, tmp_path / "chaos.json")
    (result,) = report["modes"]
    chaos, reference = result["chaos"], result["reference"]
    output = run.stdout + run.stderr

    # The drill really happened: one kill of each, and the cut in choreography.
    blows = " | ".join(chaos["blows"])
    assert sum("kill coordinator" in b for b in chaos["blows"]) == 1, blows
    assert sum("kill participant" in b for b in chaos["blows"]) == 1, blows
    assert sum("cut streams" in b for b in chaos["blows"]) == (mode == "choreography"), blows
    assert chaos["placed"] == reference["placed"] == SAGAS

    # No invariant broken: one terminal saga per order, records and money and stock
    # consistent, and the same completed orders as the fault-free run (and the plan).
    assert result["violation_counts"] == {}, output
    assert chaos["not_terminal"] == {}, output
    assert chaos["completed"] == reference["completed"] == result["expected_completed"], output
    assert chaos["compensated"] == reference["compensated"] == SAGAS - chaos["completed"]
    assert chaos["p99_ms"] > 0 and reference["p99_ms"] > 0
    assert result["ok"] is report["ok"] is True
    assert run.returncode == 0, output
