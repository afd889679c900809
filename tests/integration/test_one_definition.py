"""One definition drives both modes: change a step's ``after:`` and both flows change.

The shipped place_order runs reserve_stock and charge_payment side by side. The same
file with ``charge_payment: after [reserve_stock]`` runs them one after the other. Each
layout runs in orchestration (the coordinator's runner) and in choreography (the
services' reactions, built from the file they load like the coordinator): the reserve
is slowed down, so the order in which the services published "reserved" and "charged"
tells whether the charge waited for the reserve. Real servers, no mocks.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protos.sagawire.v1 import coordinator_pb2 as pb
from services import saga_events
from tests.coordinator_support import Stack, running_stack, write_definitions
from tests.event_support import read_events

SLOW_RESERVE_MS = 600

LAYOUTS = {
    "parallel": {},  # as shipped: both after create_order
    "serial": {"charge_payment": {"after": ["reserve_stock"]}},
}


async def _published_at(stack: Stack, service: str, event_type: str, saga_id: str) -> float:
    """When ``service`` published ``event_type`` about the saga (its outbox's commit time)."""
    events = await read_events(stack.cluster.address(service), 1, [event_type])
    (event,) = [e for e in events if e.subject == saga_id]
    return event.time.ToDatetime().timestamp()


@pytest.mark.parametrize("mode", ["orchestration", "choreography"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
async def test_a_steps_dependency_changes_the_flow_in_both_modes(
    tmp_path: Path, mode: str, layout: str
) -> None:
    definitions = write_definitions(tmp_path / "sagas.yaml", steps=LAYOUTS[layout])
    async with running_stack(
        tmp_path, definitions=definitions, mode=mode, stall_check_seconds=0.2
    ) as stack:
        await stack.faults("inventory", reserve=(0, SLOW_RESERVE_MS))
        reply = await stack.place("alice", [("SKU-MUG", 1)], "Berlin", wait=True)
        assert reply.status == pb.SAGA_STATUS_COMPLETED
        reserved = await _published_at(
            stack, "inventory", saga_events.STOCK_RESERVED, reply.saga_id
        )
        charged = await _published_at(stack, "payment", saga_events.PAYMENT_CHARGED, reply.saga_id)
        saga = await stack.saga(reply.saga_id)

    steps = {s.name: s for s in saga.steps}
    assert list(steps["charge_payment"].after) == (
        ["create_order"] if layout == "parallel" else ["reserve_stock"]
    )
    if layout == "parallel":
        # The charge did not wait for the slow reserve.
        assert charged < reserved
    else:
        assert charged > reserved
