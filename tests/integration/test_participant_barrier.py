"""Every barrier case, for every service, over real gRPC (DESIGN §3), on both stores.

Each case reads the effect back through the service's query RPCs: the shared
resource the step changes (stock, balance, row count) and the rows it wrote
for the saga, so a second effect, or an effect where there should be none, shows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from protos.sagawire.v1 import participant_pb2
from tests.integration.steps import (
    PROBES,
    Probe,
    compensate,
    execute,
    failure,
    step_request,
    with_action,
)
from tests.postgres_support import STORES, store_on
from tests.support import Cluster, start_cluster

APPLIED = participant_pb2.BARRIER_OUTCOME_APPLIED
REPLAYED = participant_pb2.BARRIER_OUTCOME_REPLAYED
NULL_COMPENSATION = participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION


@pytest.fixture(params=sorted(PROBES))
def probe(request: pytest.FixtureRequest) -> Probe:
    return PROBES[request.param]


@pytest.fixture(params=STORES)
async def cluster(
    tmp_path: Path, request: pytest.FixtureRequest, probe: Probe
) -> AsyncIterator[Cluster]:
    """The probed service (no other is called), on a SQLite file or its PostgreSQL schema."""
    async with store_on(request.param) as store:
        overrides = {**store.settings(), "reactions_enabled": False}
        running = await start_cluster(tmp_path, [probe.service], overrides=overrides)
        try:
            yield running
        finally:
            await running.stop()


async def test_duplicate_execute_returns_the_first_result_and_has_no_second_effect(
    cluster: Cluster, probe: Probe
) -> None:
    before = await probe.resource(cluster)
    request = step_request(probe.action, probe.payload())
    first = await execute(cluster, probe.service, request)
    again = await execute(cluster, probe.service, request)

    assert (first.outcome, again.outcome) == (APPLIED, REPLAYED)
    assert again.result == first.result  # same charge id, shipment id, total...
    assert await probe.resource(cluster) == probe.after_execute(before)
    assert await probe.rows(cluster, request.saga_id) == [probe.applied_status]


async def test_compensate_before_execute_is_a_null_compensation(
    cluster: Cluster, probe: Probe
) -> None:
    before = await probe.resource(cluster)
    request = step_request(probe.compensation, probe.payload())
    reply = await compensate(cluster, probe.service, request)

    assert reply.outcome == NULL_COMPENSATION
    assert await probe.resource(cluster) == before
    assert await probe.rows(cluster, request.saga_id) == []


async def test_execute_after_its_compensation_hangs_and_is_refused(
    cluster: Cluster, probe: Probe
) -> None:
    before = await probe.resource(cluster)
    request = step_request(probe.action, probe.payload())
    await compensate(cluster, probe.service, with_action(request, probe.compensation))

    for _ in range(2):  # refused every time, not only the first
        refused = await failure(execute(cluster, probe.service, request))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.ABORTED,
            "COMPENSATED_BEFORE_EXECUTE",
        )
    assert await probe.resource(cluster) == before
    assert await probe.rows(cluster, request.saga_id) == []


async def test_execute_after_a_real_compensation_is_refused_too(
    cluster: Cluster, probe: Probe
) -> None:
    before = await probe.resource(cluster)
    request = step_request(probe.action, probe.payload())
    await execute(cluster, probe.service, request)
    await compensate(cluster, probe.service, with_action(request, probe.compensation))

    refused = await failure(execute(cluster, probe.service, request))
    assert refused.code == grpc.StatusCode.ABORTED
    assert await probe.resource(cluster) == probe.after_compensate(before)
    assert await probe.rows(cluster, request.saga_id) == [probe.compensated_status]


async def test_duplicate_compensate_has_no_effect(cluster: Cluster, probe: Probe) -> None:
    before = await probe.resource(cluster)
    request = step_request(probe.action, probe.payload())
    await execute(cluster, probe.service, request)
    undo = with_action(request, probe.compensation)
    first = await compensate(cluster, probe.service, undo)
    again = await compensate(cluster, probe.service, undo)

    assert (first.outcome, again.outcome) == (APPLIED, REPLAYED)
    # Released / refunded once: the resource is back where it was, not past it.
    assert await probe.resource(cluster) == probe.after_compensate(before)
    assert await probe.rows(cluster, request.saga_id) == [probe.compensated_status]


async def test_duplicate_null_compensation_has_no_effect(cluster: Cluster, probe: Probe) -> None:
    before = await probe.resource(cluster)
    request = step_request(probe.compensation, probe.payload())
    first = await compensate(cluster, probe.service, request)
    again = await compensate(cluster, probe.service, request)

    assert (first.outcome, again.outcome) == (NULL_COMPENSATION, REPLAYED)
    assert await probe.resource(cluster) == before


async def test_eight_concurrent_duplicate_executes_have_exactly_one_effect(
    cluster: Cluster, probe: Probe
) -> None:
    before = await probe.resource(cluster)
    request = step_request(probe.action, probe.payload())
    replies = await asyncio.gather(*(execute(cluster, probe.service, request) for _ in range(8)))

    assert sorted(r.outcome for r in replies) == [APPLIED] + [REPLAYED] * 7
    assert len({r.result.SerializeToString() for r in replies}) == 1
    assert await probe.resource(cluster) == probe.after_execute(before)
    assert await probe.rows(cluster, request.saga_id) == [probe.applied_status]


async def test_concurrent_execute_and_compensate_leave_a_consistent_outcome(
    cluster: Cluster, probe: Probe
) -> None:
    """Whichever arrives first wins; the store ends either untouched or applied-then-undone."""
    before = await probe.resource(cluster)
    request = step_request(probe.action, probe.payload())
    undo = with_action(request, probe.compensation)
    calls = [execute(cluster, probe.service, request) for _ in range(4)]
    calls += [compensate(cluster, probe.service, undo) for _ in range(4)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    for outcome in outcomes:
        if isinstance(outcome, grpc.aio.AioRpcError):
            assert outcome.code() == grpc.StatusCode.ABORTED
        else:
            assert isinstance(outcome, participant_pb2.StepReply)
    rows = await probe.rows(cluster, request.saga_id)
    if rows:  # an execute came first: it was applied once, then compensated once
        assert rows == [probe.compensated_status]
        assert await probe.resource(cluster) == probe.after_compensate(before)
    else:  # a compensate came first: null, and every execute was refused
        assert await probe.resource(cluster) == before
