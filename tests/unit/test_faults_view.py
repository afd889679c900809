"""``sagawire faults`` shows a service with replicas as one: its plan, and the calls all
its replicas received."""

from __future__ import annotations

from cli.faults import of_service
from protos.sagawire.v1 import admin_pb2


def counts(**calls: int) -> admin_pb2.CallCounts:
    return admin_pb2.CallCounts(calls=calls)


def test_the_calls_of_every_replica_are_added_and_the_plan_is_the_first_replicas() -> None:
    plan = admin_pb2.FaultPlan(unavailable_rate=0.2, seed=7)
    first, second = counts(charge=3, refund=1), counts(charge=4)
    shown_plan, shown_calls = of_service([(plan, first), (admin_pb2.FaultPlan(), second)])
    assert shown_plan == plan
    assert dict(shown_calls.calls) == {"charge": 7, "refund": 1}
    assert dict(first.calls) == {"charge": 3, "refund": 1}  # the replies are left as they were


def test_one_replica_is_shown_as_it_answered() -> None:
    plan = admin_pb2.FaultPlan(latency_ms=50)
    assert of_service([(plan, counts(reserve=2))]) == (plan, counts(reserve=2))
