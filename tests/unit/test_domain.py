"""The pure domain rules of the four services, one class per service."""

from __future__ import annotations

import re
from typing import ClassVar

import pytest

from common.errors import BusinessRejection
from services.inventory import domain as inventory
from services.order import domain as order
from services.payment import domain as payment
from services.shipping import domain as shipping


class TestInventory:
    LEVELS: ClassVar[dict[str, inventory.StockLevel]] = {
        "MUG": inventory.StockLevel("MUG", available=10, reserved=2),
        "RARE": inventory.StockLevel("RARE", available=1, reserved=0),
    }

    def test_reserve_moves_stock_from_available_to_reserved(self) -> None:
        updated = inventory.reserve(self.LEVELS, [inventory.Line("MUG", 4)])
        assert updated == {"MUG": inventory.StockLevel("MUG", available=6, reserved=6)}

    def test_reserve_may_take_the_last_unit(self) -> None:
        updated = inventory.reserve(self.LEVELS, [inventory.Line("RARE", 1)])
        assert updated["RARE"] == inventory.StockLevel("RARE", available=0, reserved=1)

    def test_repeated_skus_are_merged_before_checking_stock(self) -> None:
        lines = [inventory.Line("RARE", 1), inventory.Line("MUG", 1), inventory.Line("RARE", 1)]
        assert inventory.merge_lines(lines) == [inventory.Line("RARE", 2), inventory.Line("MUG", 1)]
        with pytest.raises(BusinessRejection) as caught:
            inventory.reserve(self.LEVELS, lines)
        assert caught.value.reason == "INSUFFICIENT_STOCK"
        assert caught.value.metadata == {"sku": "RARE"}

    def test_short_stock_is_rejected(self) -> None:
        with pytest.raises(BusinessRejection) as caught:
            inventory.reserve(self.LEVELS, [inventory.Line("MUG", 11)])
        assert caught.value.reason == "INSUFFICIENT_STOCK"

    def test_unknown_sku_is_rejected(self) -> None:
        with pytest.raises(BusinessRejection) as caught:
            inventory.reserve(self.LEVELS, [inventory.Line("MUG", 1), inventory.Line("NOPE", 1)])
        assert caught.value.reason == "UNKNOWN_SKU"
        assert caught.value.metadata == {"sku": "NOPE"}

    def test_reserve_does_not_modify_its_input(self) -> None:
        before = dict(self.LEVELS)
        inventory.reserve(self.LEVELS, [inventory.Line("MUG", 3)])
        assert before == self.LEVELS

    def test_release_gives_reserved_stock_back(self) -> None:
        updated = inventory.release(self.LEVELS, [inventory.Line("MUG", 2)])
        assert updated["MUG"] == inventory.StockLevel("MUG", available=12, reserved=0)

    def test_release_of_more_than_reserved_is_a_bug(self) -> None:
        with pytest.raises(ValueError):
            inventory.release(self.LEVELS, [inventory.Line("MUG", 3)])

    def test_total_is_available_plus_reserved(self) -> None:
        assert self.LEVELS["MUG"].total == 12


class TestPayment:
    ALICE = payment.Account("alice", balance_minor=5_000, currency="EUR")

    def test_charge_takes_the_amount(self) -> None:
        assert payment.charge(self.ALICE, "alice", 1_999, "EUR").balance_minor == 3_001

    def test_charge_may_take_the_whole_balance(self) -> None:
        assert payment.charge(self.ALICE, "alice", 5_000, "EUR").balance_minor == 0

    def test_charge_above_the_balance_is_declined(self) -> None:
        with pytest.raises(BusinessRejection) as caught:
            payment.charge(self.ALICE, "alice", 5_001, "EUR")
        assert caught.value.reason == "INSUFFICIENT_FUNDS"
        assert caught.value.metadata == {"customer_id": "alice"}
        assert caught.value.message == "charge of 50.01 EUR exceeds the balance of 50.00 EUR"

    def test_unknown_customer_is_rejected(self) -> None:
        with pytest.raises(BusinessRejection) as caught:
            payment.charge(None, "mallory", 100, "EUR")
        assert caught.value.reason == "UNKNOWN_CUSTOMER"
        assert caught.value.metadata == {"customer_id": "mallory"}

    def test_other_currency_is_rejected(self) -> None:
        with pytest.raises(BusinessRejection) as caught:
            payment.charge(self.ALICE, "alice", 100, "USD")
        assert caught.value.reason == "CURRENCY_MISMATCH"

    @pytest.mark.parametrize("amount", [0, -1])
    def test_non_positive_amounts_are_bugs(self, amount: int) -> None:
        with pytest.raises(ValueError):
            payment.charge(self.ALICE, "alice", amount, "EUR")
        with pytest.raises(ValueError):
            payment.refund(self.ALICE, amount)

    def test_refund_returns_the_amount(self) -> None:
        charged = payment.charge(self.ALICE, "alice", 1_234, "EUR")
        assert payment.refund(charged, 1_234) == self.ALICE


class TestOrder:
    PRICES: ClassVar[dict[str, int]] = {"BOOK": 1_500, "MUG": 800}

    def test_price_is_the_sum_of_lines_in_minor_units(self) -> None:
        assert order.price(self.PRICES, [("BOOK", 2), ("MUG", 3), ("BOOK", 1)]) == 6_900

    def test_unpriced_sku_is_rejected(self) -> None:
        with pytest.raises(BusinessRejection) as caught:
            order.price(self.PRICES, [("BOOK", 1), ("NOPE", 1)])
        assert caught.value.reason == "UNKNOWN_SKU"

    def test_pending_order_can_be_approved_or_cancelled(self) -> None:
        assert order.approve(order.Status.PENDING) is order.Status.APPROVED
        assert order.cancel(order.Status.PENDING) is order.Status.CANCELLED

    def test_repeating_the_same_transition_is_a_no_op(self) -> None:
        assert order.approve(order.Status.APPROVED) is order.Status.APPROVED
        assert order.cancel(order.Status.CANCELLED) is order.Status.CANCELLED

    def test_a_finished_order_never_changes_again(self) -> None:
        with pytest.raises(BusinessRejection) as approved:
            order.cancel(order.Status.APPROVED)
        with pytest.raises(BusinessRejection) as cancelled:
            order.approve(order.Status.CANCELLED)
        assert approved.value.reason == cancelled.value.reason == "ORDER_FINISHED"

    def test_only_an_approved_order_is_returned_and_only_once(self) -> None:
        assert order.mark_returned(order.Status.APPROVED) is order.Status.RETURNED
        assert order.mark_returned(order.Status.RETURNED) is order.Status.RETURNED
        for status, reason in (
            (order.Status.PENDING, "ORDER_NOT_RETURNABLE"),
            (order.Status.CANCELLED, "ORDER_NOT_RETURNABLE"),
            (order.Status.RETURNED, "ALREADY_RETURNED"),
        ):
            with pytest.raises(BusinessRejection) as caught:
                order.check_returnable(status)
            assert caught.value.reason == reason
        with pytest.raises(BusinessRejection) as returned:
            order.cancel(order.Status.RETURNED)
        assert returned.value.reason == "ORDER_FINISHED"


class TestShipping:
    REFUSED = ("Atlantis", "Antarctica")

    @pytest.mark.parametrize("destination", ["Atlantis", "  antarctica ", "ATLANTIS"])
    def test_unserviceable_destination_is_rejected_whatever_its_case(
        self, destination: str
    ) -> None:
        with pytest.raises(BusinessRejection) as caught:
            shipping.check_destination(destination, self.REFUSED)
        assert caught.value.reason == "UNSERVICEABLE_DESTINATION"

    def test_other_destinations_are_served(self) -> None:
        shipping.check_destination("Berlin", self.REFUSED)
        shipping.check_destination("Atlantis City", self.REFUSED)

    def test_tracking_numbers_look_like_a_carriers_and_differ(self) -> None:
        numbers = {shipping.new_tracking_number() for _ in range(100)}
        assert len(numbers) == 100
        assert all(re.fullmatch(r"SW[0-9A-F]{12}", n) for n in numbers)
