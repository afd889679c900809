"""The authorisation table: every method of every API has a rule, and the rules say
what DESIGN §8 says."""

from __future__ import annotations

import pytest

from common.authz import TABLE, Anyone, callers_of
from protos.sagawire.v1 import (
    admin_pb2,
    coordinator_pb2,
    events_pb2,
    inventory_pb2,
    order_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)

SERVICES = {"order", "inventory", "payment", "shipping"}
MODULES = (
    admin_pb2,
    coordinator_pb2,
    events_pb2,
    inventory_pb2,
    order_pb2,
    participant_pb2,
    payment_pb2,
    shipping_pb2,
)
METHODS = [
    f"/{service.full_name}/{method.name}"
    for module in MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_has_a_rule(method: str) -> None:
    assert callers_of(method) is not None, f"{method} is not in common.authz.TABLE (refused)"


def test_a_method_the_table_does_not_name_is_refused() -> None:
    assert callers_of("/sagawire.v1.Unknown/Anything") is None


def test_the_rules() -> None:
    def callers(method: str) -> frozenset[str]:
        found = callers_of(method)
        assert isinstance(found, frozenset), method
        return found

    assert callers("/sagawire.v1.Participant/Execute") == {"coordinator"}
    assert callers("/sagawire.v1.Participant/Compensate") == {"coordinator"}
    assert callers("/sagawire.v1.EventStream/Subscribe") == SERVICES | {"coordinator", "operator"}
    assert callers("/sagawire.v1.EventStream/ListPoisonEvents") == {"coordinator", "operator"}
    for read in ("Order/GetOrder", "Inventory/ListStock", "Payment/ListCharges"):
        assert callers(f"/sagawire.v1.{read}") == {"coordinator", "operator"}
    assert callers("/sagawire.v1.Admin/SetFaults") == {"operator"}
    assert isinstance(callers_of("/sagawire.v1.Coordinator/PlaceOrder"), Anyone)
    assert isinstance(callers_of("/grpc.health.v1.Health/Check"), Anyone)
    assert all(key.count("/") in (0, 2) for key in TABLE)
