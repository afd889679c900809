"""Saga definitions: the shipped file, and clear errors for every kind of mistake."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.definition_file import parse_duration
from contract.definitions import (
    DEFAULT_FILE,
    DefinitionError,
    EventKind,
    SagaMode,
    load_definitions,
    parse_definitions,
)
from services.launcher import spec_of

SHIPPED: dict[str, Any] = yaml.safe_load(DEFAULT_FILE.read_text())


def shipped() -> dict[str, Any]:
    return copy.deepcopy(SHIPPED)


def steps_of(raw: dict[str, Any]) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = raw["sagas"]["place_order"]["steps"]
    return steps


def step(raw: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in steps_of(raw) if s["name"] == name)


def problems(raw: object) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        parse_definitions(raw, "test.yaml")
    assert "invalid saga definitions in test.yaml" in str(caught.value)
    return caught.value.problems


def test_shipped_place_order() -> None:
    saga = load_definitions().sagas["place_order"]
    assert [s.name for s in saga.steps] == [
        "create_order",
        "reserve_stock",
        "charge_payment",
        "schedule_shipment",
        "approve_order",
    ]
    assert saga.mode is SagaMode.ORCHESTRATION
    assert saga.pivot == "schedule_shipment"
    assert saga.forward_only == {"approve_order"}
    assert (
        saga.step("reserve_stock").after == saga.step("charge_payment").after == ("create_order",)
    )
    assert saga.dependents["create_order"] == ("reserve_stock", "charge_payment")
    assert saga.step("charge_payment").compensation == "refund"
    assert saga.step("approve_order").compensation is None
    assert saga.step("create_order").retry.attempt_timeout == 2.0
    assert saga.reason_field == "cancel_reason"


def test_the_catalogue_matches_the_services_actions() -> None:
    catalogue = load_definitions().participants
    for name, actions in catalogue.items():
        declared = {a.name: a.compensation for a in spec_of(name).actions}
        assert dict(actions) == declared, name


def test_a_dependency_cycle_is_named() -> None:
    raw = shipped()
    step(raw, "create_order")["after"] = ["schedule_shipment"]
    found = problems(raw)
    assert len(found) == 1
    assert "dependency cycle:" in found[0]
    assert "create_order -> reserve_stock -> schedule_shipment -> create_order" in found[0]


def test_unknown_participant_and_action_are_named_with_the_known_ones() -> None:
    raw = shipped()
    step(raw, "reserve_stock")["participant"] = "warehouse"
    step(raw, "charge_payment")["action"] = "charge_twice"
    found = problems(raw)
    assert any(
        "steps[1].participant: unknown participant 'warehouse'" in p
        and "known: inventory, order, payment, shipping" in p
        for p in found
    )
    assert any(
        "steps[2].action: payment has no action 'charge_twice' (known: charge, refund_return)" in p
        for p in found
    )


def test_a_compensation_must_undo_its_action() -> None:
    raw = shipped()
    step(raw, "reserve_stock")["compensation"] = "refund"
    (found,) = problems(raw)
    assert "'refund' does not undo inventory.reserve (its compensation is 'release')" in found


def test_a_step_without_compensation_followed_by_others_is_refused() -> None:
    raw = shipped()
    del step(raw, "reserve_stock")["compensation"]
    (found,) = problems(raw)
    assert "sagas.place_order.reserve_stock: has no compensation but is followed by" in found
    assert "'schedule_shipment'" in found and "'charge_payment'" in found


def test_without_a_pivot_only_the_last_step_may_lack_a_compensation() -> None:
    raw = shipped()
    del step(raw, "schedule_shipment")["pivot"]
    saga = parse_definitions(raw).sagas["place_order"]
    assert saga.pivot is None
    assert saga.forward_only == {"approve_order"}


def test_the_pivot_must_have_a_compensation_and_be_alone() -> None:
    raw = shipped()
    del step(raw, "schedule_shipment")["compensation"]
    step(raw, "create_order")["pivot"] = True
    found = problems(raw)
    assert any("only one step can be the pivot" in p for p in found)
    raw = shipped()
    del step(raw, "schedule_shipment")["compensation"]
    (found_one,) = problems(raw)
    assert "the pivot needs a compensation" in found_one


def test_a_step_beside_the_pivot_is_refused() -> None:
    raw = shipped()
    steps_of(raw).append(
        {
            "name": "charge_again",
            "participant": "payment",
            "action": "charge",
            "compensation": "refund",
            "after": ["create_order"],
        }
    )
    (found,) = problems(raw)
    assert "charge_again: must run before or after the pivot 'schedule_shipment'" in found


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("deadline", "2 parsecs", "deadline: bad duration '2 parsecs'"),
        ("deadline", "0s", "deadline: bad duration '0s': must be more than zero"),
        ("deadline", "-1s", "deadline: bad duration '-1s'"),
        ("deadline", True, "deadline: bad duration True"),
        ("deadline", "48h", "must be between 0 and 24h"),
    ],
)
def test_bad_durations_are_named(key: str, value: object, expected: str) -> None:
    raw = shipped()
    step(raw, "charge_payment")[key] = value
    (found,) = problems(raw)
    assert found.startswith("sagas.place_order.steps[2].deadline: ")
    assert expected in found


def test_bad_retry_policies_are_named() -> None:
    raw = shipped()
    raw["sagas"]["place_order"]["retry"] = {
        "max_attempts": 0,
        "initial_backoff": "1s",
        "max_backoff": "10ms",
        "multiplier": 100,
        "jiter": "1s",
    }
    found = problems(raw)
    where = "sagas.place_order.retry"
    assert f"{where}: unknown keys: jiter" in found
    assert f"{where}.max_attempts: must be a whole number from 1 to 1000" in found
    assert f"{where}.max_backoff: must not be less than initial_backoff" in found
    assert f"{where}.multiplier: must be between 1 and 10" in found


def test_unknown_dependencies_and_duplicate_names() -> None:
    raw = shipped()
    step(raw, "approve_order")["after"] = ["ship_it"]
    step(raw, "reserve_stock")["name"] = "charge_payment"
    found = problems(raw)
    assert "sagas.place_order.approve_order.after: unknown step 'ship_it'" in found
    assert "sagas.place_order.steps: step name 'charge_payment' is used twice" in found


def test_every_problem_is_reported_at_once() -> None:
    raw = shipped()
    raw["sagas"]["place_order"]["mode"] = "telepathy"
    raw["sagas"]["place_order"]["data"] = "sagawire.v1.Nope"
    step(raw, "create_order")["deadline"] = "soon"
    step(raw, "create_order")["retyr"] = {}
    found = problems(raw)
    assert len(found) == 4
    assert "sagas.place_order.mode: 'telepathy' is not orchestration or choreography" in found


def test_mode_override_and_durations() -> None:
    definitions = parse_definitions(shipped(), mode="choreography")
    assert definitions.sagas["place_order"].mode is SagaMode.CHOREOGRAPHY
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1.5m") == 90.0
    assert parse_duration(3) == 3.0


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DefinitionError, match="cannot read the file"):
        load_definitions(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sagas: [unclosed")
    with pytest.raises(DefinitionError, match="not valid YAML"):
        load_definitions(bad)
    assert problems([1, 2]) == ["the file must be a mapping with participants and sagas"]


def test_the_shipped_return_order() -> None:
    saga = load_definitions().sagas["return_order"]
    assert [s.name for s in saga.steps] == [
        "accept_return",
        "refund_payment",
        "restock_items",
        "close_return",
    ]
    assert saga.pivot == "refund_payment"
    assert saga.forward_only == {"restock_items", "close_return"}
    assert saga.step("accept_return").compensation == "withdraw_return"


def test_each_step_emits_its_actions_declared_events() -> None:
    saga = load_definitions().sagas["place_order"]
    events = saga.step("charge_payment").events
    assert (events.succeeded, events.rejected, events.compensated) == (
        "sagawire.payment.charged",
        "sagawire.payment.declined",
        "sagawire.payment.refunded",
    )
    assert events.kind_of("sagawire.payment.declined") is EventKind.REJECTED
    assert events.kind_of("sagawire.inventory.reserved") is None
    assert saga.descendants("reserve_stock") == {"schedule_shipment", "approve_order"}


def test_a_step_needs_the_events_choreography_follows() -> None:
    raw = shipped()
    del raw["participants"]["payment"]["charge"]["events"]["rejected"]
    del raw["participants"]["order"]["approve_order"]["events"]
    found = problems(raw)
    assert (
        "sagas.place_order.charge_payment: payment.charge declares no rejected event"
        " (participants.<name>.<action>.events)" in found
    )
    assert any("approve_order: order.approve_order declares no succeeded event" in p for p in found)
    # A step after the pivot is never turned back on: it needs no rejection event.
    assert not any("approve_order" in p and "rejected" in p for p in found)


def test_an_event_type_is_declared_once() -> None:
    raw = shipped()
    raw["participants"]["shipping"]["schedule"]["events"]["failed"] = "x"
    raw["participants"]["shipping"]["schedule"]["events"]["rejected"] = "sagawire.payment.declined"
    raw["participants"]["inventory"]["reserve"]["events"]["succeeded"] = "Reserved!"
    found = problems(raw)
    assert "participants.shipping.schedule.events: unknown keys: failed" in found
    assert (
        "participants.shipping.schedule.events.rejected: 'sagawire.payment.declined' is already"
        " participants.payment.charge.events.rejected" in found
    )
    assert (
        "participants.inventory.reserve.events.succeeded: 'Reserved!' is not an event type"
        " like a.b.c" in found
    )
