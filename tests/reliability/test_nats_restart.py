"""The NATS server restarts mid-run: every choreographed saga still ends, nothing twice.

The four services and the coordinator run in this process, in choreography, on a
nats-server of the test's own (tests/nats_support.py: PrivateNats, stopped and started
by its pid, never the machine's). Orders go in before, during and after the outage:
during it the services keep committing events to their outboxes, and the relays
publish them once the server is back; the followers bind again to their durable
consumers, which the server kept on disk. Every saga ends COMPLETED or COMPENSATED as
its scenario says, and the services' records show each effect once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from protos.sagawire.v1 import coordinator_pb2 as pb
from protos.sagawire.v1 import order_pb2
from tests.coordinator_support import Stack, running_stack, write_definitions
from tests.nats_support import Events, PrivateNats

SAGAS_PER_WAVE = 8
OUTAGE_SECONDS = 3.0


async def _wave(stack: Stack, wave: int) -> list[tuple[pb.PlaceOrderResponse, bool]]:
    """Orders placed without waiting: every other one fails at shipping (compensated)."""
    placed = []
    for index in range(SAGAS_PER_WAVE):
        completes = (wave + index) % 2 == 0
        to = "Berlin" if completes else "Atlantis"
        reply = await stack.place("alice", [("SKU-MUG", 1)], to, wait=False)
        placed.append((reply, completes))
    return placed


async def test_a_nats_restart_mid_run_loses_no_saga_and_doubles_no_effect(
    tmp_path: Path,
) -> None:
    server = PrivateNats(tmp_path)
    await server.start()
    events = Events("nats", server.url, "restart")
    definitions = write_definitions(tmp_path / "sagas.yaml", deadline="90s")
    try:
        async with running_stack(
            tmp_path,
            definitions=definitions,
            mode="choreography",
            services=events.settings(),
            stall_check_seconds=0.5,
            **events.settings(),
        ) as stack:
            stock_before = await stack.stock("SKU-MUG")
            balance_before = await stack.balance("alice")
            placed = await _wave(stack, 0)
            server.stop()
            placed += await _wave(stack, 1)  # their events wait in the outboxes
            await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a state
            await server.start()
            placed += await _wave(stack, 2)

            finals = [await stack.settled(r.saga_id, timeout=90) for r, _ in placed]
            for (reply, completes), saga in zip(placed, finals, strict=True):
                expected = pb.SAGA_STATUS_COMPLETED if completes else pb.SAGA_STATUS_COMPENSATED
                assert saga.status == expected, (reply.saga_id, saga.status)
                order = await stack.order(reply.order_id)
                assert order.status == (
                    order_pb2.ORDER_STATUS_APPROVED
                    if completes
                    else order_pb2.ORDER_STATUS_CANCELLED
                )
            completed = sum(1 for _, completes in placed if completes)
            totals = [(await stack.order(r.order_id)).total.amount_minor for r, c in placed if c]
            stock_after = await stack.stock("SKU-MUG")
            # One unit per completed saga, once; released for every compensated one.
            assert stock_before[0] - stock_after[0] == completed
            assert stock_after[1] - stock_before[1] == completed
            # Charged once per completed saga; every compensated charge refunded.
            assert balance_before - await stack.balance("alice") == sum(totals)
    finally:
        server.stop()
