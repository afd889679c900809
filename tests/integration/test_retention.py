"""Retention on a real stack with its windows shrunk to seconds.

The coordinator tells the services which sagas finished; each store lets go of what
no retry, recovery or RetrySaga can reach any more; and a late duplicate of a saga
whose barrier rows are gone is refused, with no effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc

from common.store import Connection
from coordinator.engine.payloads import step_request
from coordinator.log.records import Phase
from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import participant_pb2, payment_pb2
from services.runtime import DomainService
from tests.coordinator_support import Stack, running_stack, write_definitions
from tests.integration.steps import failure
from tests.support import listing, wait_until

# Services: rows of a finished saga go 1 s after they hear it finished, and the barrier
# refuses steps with no row of sagas created more than 1 s ago.
SERVICES: dict[str, Any] = {
    "retention_interval": 0.2,
    "retention_barrier": 1.0,
    "retention_clock_skew": 0.0,
    "retention_outbox": 1.0,
    "retention_inbox": 1.0,
}
COORDINATOR: dict[str, Any] = {"retention_interval": 0.2, "retention_sagas": 1.5}


def service(stack: Stack, name: str) -> DomainService:
    app = stack.cluster.servers[name].app
    assert isinstance(app, DomainService)
    return app


async def count(stack: Stack, name: str, sql: str, *args: object) -> int:
    def query(conn: Connection) -> int:
        return int(conn.execute(sql, args).fetchone()[0])

    return await service(stack, name).db.read(query)


async def barrier_rows(stack: Stack, name: str, saga_id: str) -> int:
    return await count(stack, name, "SELECT COUNT(*) FROM barrier WHERE saga_id = ?", saga_id)


async def charges_of(stack: Stack, saga_id: str) -> list[tuple[int, int]]:
    found = await listing(
        stack.cluster.payment.ListCharges,
        payment_pb2.ListChargesRequest(saga_id=saga_id),
        "charges",
    )
    return [(c.amount.amount_minor, c.status) for c in found]


async def test_a_late_duplicate_of_a_long_finished_saga_is_refused_with_no_effect(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path, services=SERVICES, **COORDINATOR) as stack:
        assert stack.app is not None
        reply = await stack.place(customer="alice", items=[("SKU-LAMP", 1)])
        assert reply.status == pb.SAGA_STATUS_COMPLETED
        saga_id = reply.saga_id
        # The charge step's request exactly as the coordinator sends it.
        definition = stack.app.definitions.sagas["place_order"]
        record = await stack.app.log.load(saga_id)
        assert record is not None
        charge = definition.step("charge_payment")
        late = step_request(definition, record, charge, Phase.EXECUTE)
        late_undo = step_request(definition, record, charge, Phase.COMPENSATE)
        payment = stack.cluster.participant("payment")

        # While the rows are kept, a duplicate is a replay: the first answer, no effect.
        replayed = await payment.Execute(late)
        assert replayed.outcome == participant_pb2.BARRIER_OUTCOME_REPLAYED
        balance, charges = await stack.balance("alice"), await charges_of(stack, saga_id)
        assert charges == [(4_900, payment_pb2.CHARGE_STATUS_CAPTURED)]

        # The coordinator tells the services the saga finished; a second later (the
        # window) every service lets its barrier rows go.
        async def rows_gone() -> bool:
            counts = [await barrier_rows(stack, n, saga_id) for n in stack.cluster.servers]
            return not any(counts)

        await wait_until(rows_gone, timeout=15, message="the saga's barrier rows pruned")

        # Now the same request again: refused, and nothing happens.
        refused = await failure(payment.Execute(late))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SAGA_EXPIRED",
        )
        # A late compensate undoes nothing either (null), and records nothing.
        undone = await payment.Compensate(late_undo)
        assert undone.outcome == participant_pb2.BARRIER_OUTCOME_NULL_COMPENSATION
        assert await stack.balance("alice") == balance
        assert await charges_of(stack, saga_id) == charges
        assert await barrier_rows(stack, "payment", saga_id) == 0

        # The saga log keeps it for its own, longer window, then it is gone too.
        async def saga_gone() -> bool:
            try:
                await stack.saga(saga_id)
            except grpc.aio.AioRpcError as error:
                return error.code() == grpc.StatusCode.NOT_FOUND
            return False

        await wait_until(saga_gone, timeout=15, message="the saga pruned from the log")


async def test_a_saga_that_needs_attention_keeps_its_rows(tmp_path: Path) -> None:
    """Not finished: the coordinator says nothing, and the services keep every row,
    however long past the window, so a RetrySaga days later still goes through them."""
    definitions = write_definitions(
        tmp_path / "sagas.yaml",
        compensation_retry={"max_attempts": 2, "initial_backoff": "50ms", "max_backoff": "50ms"},
    )
    async with running_stack(
        tmp_path, definitions=definitions, services=SERVICES, **COORDINATOR
    ) as stack:
        assert stack.app is not None
        await stack.faults("payment", refund=(-1, 0))
        stuck = await stack.place(customer="alice", items=[("SKU-LAMP", 1)], to="Atlantis")
        assert stuck.status == pb.SAGA_STATUS_NEEDS_ATTENTION
        rows = await barrier_rows(stack, "payment", stuck.saga_id)
        assert rows >= 1
        passes = service(stack, "payment").retention.passes
        await wait_until(
            lambda: service(stack, "payment").retention.passes >= passes + 10,
            message="ten retention passes, two windows",
        )
        assert await barrier_rows(stack, "payment", stuck.saga_id) == rows
        assert await stack.app.log.finished_untold(10) == []
        # Retried once the fault is gone: the refund goes through its kept row.
        await stack.faults("payment")
        await stack.api.RetrySaga(pb.RetrySagaRequest(saga_id=stuck.saga_id))
        final = await stack.settled(stuck.saga_id)
        assert final.status == pb.SAGA_STATUS_COMPENSATED
        assert await charges_of(stack, stuck.saga_id) == [
            (4_900, payment_pb2.CHARGE_STATUS_REFUNDED)
        ]


async def test_choreography_keeps_flowing_while_outbox_and_inbox_are_pruned(
    tmp_path: Path,
) -> None:
    async with running_stack(
        tmp_path, services=SERVICES, mode="choreography", **COORDINATOR
    ) as stack:
        first = await stack.place(customer="alice", items=[("SKU-MUG", 1)])
        assert first.status == pb.SAGA_STATUS_COMPLETED
        assert await count(stack, "payment", "SELECT COUNT(*) FROM inbox") >= 1
        assert await count(stack, "payment", "SELECT COUNT(*) FROM outbox") >= 1

        async def pruned() -> bool:
            inboxes = [await count(stack, n, "SELECT COUNT(*) FROM inbox") for n in SERVICE_ORDER]
            # The newest event of each producer stays: it holds the stream's end.
            outboxes = [await count(stack, n, "SELECT COUNT(*) FROM outbox") for n in SERVICE_ORDER]
            return not any(inboxes) and all(n <= 1 for n in outboxes)

        await wait_until(pruned, timeout=15, message="inbox and outbox pruned")
        # The streams go on from where they were: the next saga flows through them.
        second = await stack.place(customer="alice", items=[("SKU-MUG", 1)])
        assert second.status == pb.SAGA_STATUS_COMPLETED
        # Sequences go on after the pruned ones (never reused).
        assert await count(stack, "payment", "SELECT MAX(sequence) FROM outbox") >= 2


SERVICE_ORDER = ("order", "inventory", "payment", "shipping")
