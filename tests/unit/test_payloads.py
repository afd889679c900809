"""The saga's data as the coordinator rebuilds it from its input and its steps' results."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from google.protobuf import any_pb2

from contract.definitions import SagaDefinition, load_definitions
from coordinator.engine.payloads import saga_data, step_request
from coordinator.log.records import (
    AttemptChange,
    AttemptOutcome,
    Change,
    Failure,
    Kind,
    NewSaga,
    Phase,
    SagaRecord,
    StepStatus,
    apply,
    new_record,
)
from protos.sagawire.v1 import common_pb2, order_saga_pb2
from services.inventory.participant import RESERVE
from services.payment.participant import CHARGE

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEPS = ("create_order", "reserve_stock", "charge_payment", "schedule_shipment", "approve_order")
INPUT = order_saga_pb2.OrderSagaData(
    order_id="o-1",
    customer_id="alice",
    destination="Berlin",
    items=[common_pb2.LineItem(sku="SKU-BOOK", quantity=2)],
)


TOTAL = common_pb2.Money(amount_minor=3000, currency="EUR")


def _packed(data: order_saga_pb2.OrderSagaData) -> bytes:
    packed = any_pb2.Any()
    packed.Pack(data)
    return packed.SerializeToString()


def _with_results(results: dict[str, order_saga_pb2.OrderSagaData]) -> SagaRecord:
    record = new_record(
        NewSaga("s-1", "place_order", "choreography", _packed(INPUT), STEPS, T0, T0)
    )
    for step, result in results.items():
        for change in (
            Change(
                Kind.STEP_STARTED, T0, step, AttemptChange(Phase.EXECUTE, 1), StepStatus.RUNNING
            ),
            Change(
                Kind.STEP_SUCCEEDED,
                T0,
                step,
                AttemptChange(Phase.EXECUTE, 1, AttemptOutcome.OK),
                StepStatus.SUCCEEDED,
                result=_packed(result),
            ),
        ):
            record, _ = apply(record, change)
    return record


def _place_order() -> SagaDefinition:
    definition = load_definitions().get("place_order")
    assert definition is not None
    return definition


def test_results_that_carry_the_whole_data_do_not_repeat_the_items() -> None:
    # A choreographed step's result is the data its event carried: the input and more.
    created = order_saga_pb2.OrderSagaData(total=TOTAL)
    created.MergeFrom(INPUT)
    charged = order_saga_pb2.OrderSagaData(charge_id="c-1")
    charged.MergeFrom(created)
    record = _with_results(
        {"create_order": created, "reserve_stock": created, "charge_payment": charged}
    )
    data = saga_data(_place_order(), record)
    assert isinstance(data, order_saga_pb2.OrderSagaData)
    assert list(data.items) == list(INPUT.items)
    assert (data.total, data.charge_id, data.destination) == (TOTAL, "c-1", "Berlin")


def test_a_result_with_only_its_own_fields_is_laid_over_the_input() -> None:
    record = _with_results({"create_order": order_saga_pb2.OrderSagaData(total=TOTAL)})
    data = saga_data(_place_order(), record)
    assert isinstance(data, order_saga_pb2.OrderSagaData)
    assert list(data.items) == list(INPUT.items)
    assert (data.order_id, data.total) == ("o-1", TOTAL)


def test_every_request_of_a_step_carries_the_participants_same_fingerprint() -> None:
    """The coordinator's execute of a step, re-sent after a parallel step's result came
    in (retry, recovery), and its compensation with the cancel reason, are one request
    to the participant's barrier: the fields the action binds never differ."""
    definition = _place_order()
    created = order_saga_pb2.OrderSagaData(total=TOTAL)
    first = _with_results({"create_order": created})
    later = _with_results(
        {"create_order": created, "charge_payment": order_saga_pb2.OrderSagaData(charge_id="c")}
    )
    failing = replace(later, failure=Failure("schedule_shipment", "FAILED_PRECONDITION", "X", "no"))
    for step_name, action in (("reserve_stock", RESERVE), ("charge_payment", CHARGE)):
        step = next(s for s in definition.steps if s.name == step_name)
        requests = [
            step_request(definition, first, step, Phase.EXECUTE),
            step_request(definition, later, step, Phase.EXECUTE),
            step_request(definition, failing, step, Phase.COMPENSATE),
        ]
        payloads = []
        for request in requests:
            payload = order_saga_pb2.OrderSagaData()
            assert request.payload.Unpack(payload)
            payloads.append(payload)
        assert payloads[2].cancel_reason  # the compensation says why...
        assert len({action.fingerprint(p) for p in payloads}) == 1  # ...and is the same request
