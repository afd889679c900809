"""The invariants a chaos run must end with, checked on what the stack holds.

Pure functions of the plan, what the client saw (:class:`cli.chaos_drive.Placement`),
the holdings before the run and the end state (:mod:`cli.chaos_state`):

- every accepted order has exactly one saga, terminal (COMPLETED or COMPENSATED): none
  STALLED, none NEEDS_ATTENTION, none still running; the client was never told an
  outcome the saga did not keep;
- every order's status matches its saga (APPROVED for COMPLETED; CANCELLED, or never
  created when ``create_order`` refused it, for COMPENSATED) and its content the plan;
- a completed saga holds exactly one captured charge of its order's total, one
  scheduled shipment and one reservation of its items; a compensated saga holds none
  of them (no orphan); no saga holds two charges, two shipments or two orders;
- stock and money are conserved: per SKU, available + reserved is unchanged and the
  reserved stock grew by exactly the reservations held; per customer, the balance fell
  by exactly the captured charges;
- on the run's own stack, no order, charge or shipment belongs to a saga the run did
  not place;
- the set of completed orders equals the fault-free reference (:func:`compare`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from cli.chaos_drive import Placement
from cli.chaos_plan import COMPENSATED, COMPLETED, Plan, PlannedOrder
from cli.chaos_state import EndState, Holdings, OrderView, SagaView

TERMINAL = frozenset({COMPLETED, COMPENSATED})
# The step that refuses an order before anything is written for it.
_FIRST_STEP = "create_order"

NOT_ACCEPTED = "not accepted"
NOT_ONE_SAGA = "not exactly one saga"
NOT_TERMINAL = "not terminal"  # the kind names the status: "not terminal: STALLED"
ANSWER_CHANGED = "told an outcome the saga did not keep"
ORDER_MISMATCH = "order status does not match its saga"
ORDER_NOT_PLANNED = "order differs from the plan"
DUPLICATE = "more than one per saga"  # "more than one per saga: charge"
ORPHAN = "orphan for a compensated saga"  # "orphan for a compensated saga: charge"
MISSING = "missing for a completed saga"  # "missing for a completed saga: shipment"
WRONG_AMOUNT = "charge differs from the order total"
FOREIGN = "record of no saga of the run"
MONEY = "money not conserved"
STOCK = "stock not conserved"
OUTCOME_DIFFERS = "completed set differs from the fault-free run"
REFERENCE_DIFFERS = "fault-free run differs from the plan"


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str
    saga_id: str = ""


@dataclass
class Verdict:
    """What the checks found for one run."""

    violations: list[Violation] = field(default_factory=list)
    # Plan number -> final status of its saga ("" when it has none, or more than one).
    outcomes: dict[int, str] = field(default_factory=dict)
    # Plan number -> its saga, when it has exactly one.
    sagas: dict[int, SagaView] = field(default_factory=dict)
    # Compensated, as planned, but refused by another step or for another reason.
    other_reason: list[str] = field(default_factory=list)

    @property
    def completed(self) -> frozenset[int]:
        return frozenset(n for n, status in self.outcomes.items() if status == COMPLETED)

    @property
    def compensated(self) -> frozenset[int]:
        return frozenset(n for n, status in self.outcomes.items() if status == COMPENSATED)

    def add(self, kind: str, detail: str, saga_id: str = "") -> None:
        self.violations.append(Violation(kind, detail, saga_id))

    def counts(self) -> Counter[str]:
        return Counter(v.kind for v in self.violations)


class _OfSaga(Protocol):
    @property
    def saga_id(self) -> str: ...


_R = TypeVar("_R", bound=_OfSaga)


def _by_saga(records: Iterable[_R]) -> dict[str, list[_R]]:
    grouped: dict[str, list[_R]] = defaultdict(list)
    for record in records:
        grouped[record.saga_id].append(record)
    return grouped


def _lines(items: Iterable[tuple[str, int]]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for sku, quantity in items:
        total[sku] += quantity
    return dict(total)


def _why(saga: SagaView) -> str:
    if not saga.failed_step:
        return saga.status
    return f"{saga.status} at {saga.failed_step} ({saga.failure_reason or saga.failure_code})"


def _sagas_of_orders(
    plan: Plan, placements: Sequence[Placement], end: EndState, verdict: Verdict
) -> None:
    """One saga per accepted order, terminal, and what the client was told kept."""
    by_key: dict[str, list[SagaView]] = defaultdict(list)
    for saga in end.sagas:
        by_key[saga.key].append(saga)
    for placement in placements:
        sagas = by_key.get(placement.key, [])
        ids = placement.saga_ids | {s.saga_id for s in sagas}
        first = sorted(ids)[0] if ids else ""
        if not placement.accepted and not sagas:
            verdict.add(NOT_ACCEPTED, f"order {placement.number}: {placement.error}")
            verdict.outcomes[placement.number] = ""
            continue
        if len(sagas) != 1 or len(ids) != 1:
            verdict.add(
                NOT_ONE_SAGA,
                f"order {placement.number}: sagas {', '.join(sorted(ids)) or 'none'}",
                first,
            )
            verdict.outcomes[placement.number] = ""
            continue
        saga = sagas[0]
        verdict.sagas[placement.number] = saga
        verdict.outcomes[placement.number] = saga.status
        if saga.status not in TERMINAL:
            verdict.add(f"{NOT_TERMINAL}: {saga.status}", f"order {placement.number}", saga.saga_id)
        elif placement.told in TERMINAL and placement.told != saga.status:
            verdict.add(
                ANSWER_CHANGED,
                f"order {placement.number}: told {placement.told}, ended {saga.status}",
                saga.saga_id,
            )
        order = plan.orders[placement.number]
        step, reason = order.refusal
        refused = (saga.failed_step, saga.failure_reason)
        if saga.status == order.expect == COMPENSATED and refused != (step, reason):
            verdict.other_reason.append(
                f"{saga.saga_id} (order {order.number}): planned {step} ({reason}), "
                f"got {_why(saga)}"
            )


def _records(plan: Plan, end: EndState, verdict: Verdict, own: bool) -> None:
    """Each terminal saga's order, charge, shipment and reservation match its outcome."""
    ours = {s.saga_id for s in end.sagas}
    orders, charges, shipments = (
        _by_saga(end.orders),
        _by_saga(end.charges),
        _by_saga(end.shipments),
    )
    if own:
        for what, records in (("order", orders), ("charge", charges), ("shipment", shipments)):
            for saga_id in sorted(set(records) - ours):
                verdict.add(FOREIGN, f"{what} of saga {saga_id}", saga_id)
    for number, saga in sorted(verdict.sagas.items()):
        if saga.status not in TERMINAL:
            continue  # already a violation; its records may still be moving
        sid = saga.saga_id
        order_records = orders.get(sid, [])
        saga_charges = charges.get(sid, [])
        saga_shipments = shipments.get(sid, [])
        for what, found in (
            ("order", order_records),
            ("charge", saga_charges),
            ("shipment", saga_shipments),
        ):
            if len(found) > 1:
                verdict.add(f"{DUPLICATE}: {what}", f"{len(found)} {what}s", sid)
        captured = [c for c in saga_charges if c.status == "CAPTURED"]
        scheduled = [s for s in saga_shipments if s.status == "SCHEDULED"]
        reservation = end.reservations.get(sid)
        held = reservation is not None and reservation.status == "RESERVED"
        planned = plan.orders[number]
        _order_matches(planned, saga, order_records, verdict)
        if saga.status == COMPLETED:
            if not captured:
                verdict.add(f"{MISSING}: charge", f"order {number}", sid)
            if not scheduled:
                verdict.add(f"{MISSING}: shipment", f"order {number}", sid)
            if not held:
                verdict.add(f"{MISSING}: reservation", f"order {number}", sid)
            elif reservation is not None and _lines(reservation.lines) != _lines(planned.items):
                verdict.add(
                    f"{MISSING}: reservation",
                    f"order {number}: reserved {dict(reservation.lines)}, "
                    f"ordered {dict(planned.items)}",
                    sid,
                )
            totals = {o.total for o in order_records}
            if captured and order_records and captured[0].amount not in totals:
                verdict.add(
                    WRONG_AMOUNT,
                    f"order {number}: charged {captured[0].amount}, total {sorted(totals)}",
                    sid,
                )
        else:
            if captured:
                verdict.add(f"{ORPHAN}: charge", f"order {number}: {captured[0].amount}", sid)
            if scheduled:
                verdict.add(f"{ORPHAN}: shipment", f"order {number}", sid)
            if held:
                verdict.add(f"{ORPHAN}: reservation", f"order {number}", sid)


def _order_matches(
    planned: PlannedOrder,
    saga: SagaView,
    records: Sequence[OrderView],
    verdict: Verdict,
) -> None:
    sid = saga.saga_id
    if not records:
        # Only create_order refusing the order leaves no order behind.
        if saga.status == COMPLETED or saga.failed_step != _FIRST_STEP:
            verdict.add(ORDER_MISMATCH, f"order {planned.number}: {saga.status}, no order", sid)
        return
    record = records[0]
    wanted = "APPROVED" if saga.status == COMPLETED else "CANCELLED"
    if record.status != wanted:
        verdict.add(
            ORDER_MISMATCH,
            f"order {planned.number}: saga {saga.status}, order {record.status}",
            sid,
        )
    if record.order_id != saga.order_id:
        verdict.add(ORDER_MISMATCH, f"order {planned.number}: saga's order is {saga.order_id}", sid)
    if record.customer != planned.customer or _lines(record.items) != _lines(planned.items):
        verdict.add(ORDER_NOT_PLANNED, f"order {planned.number}", sid)


def _conservation(before: Holdings, end: EndState, verdict: Verdict, own: bool) -> None:
    """Per SKU and per customer: nothing created, nothing lost."""
    ours = {s.saga_id for s in end.sagas}
    captured: Counter[str] = Counter()
    for charge in end.charges:
        if charge.status == "CAPTURED" and (own or charge.saga_id in ours):
            captured[charge.customer] += charge.amount
    after = end.holdings
    for customer in sorted(set(before.balances) | set(after.balances) | set(captured)):
        spent = before.balances.get(customer, 0) - after.balances.get(customer, 0)
        if spent != captured[customer]:
            verdict.add(
                MONEY, f"{customer}: balance fell by {spent}, captured charges {captured[customer]}"
            )
    held: Counter[str] = Counter()
    for reservation in end.reservations.values():
        if reservation.status == "RESERVED":
            for sku, quantity in reservation.lines:
                held[sku] += quantity
    for sku in sorted(set(before.stock) | set(after.stock) | set(held)):
        available0, reserved0 = before.stock.get(sku, (0, 0))
        available1, reserved1 = after.stock.get(sku, (0, 0))
        if available0 + reserved0 != available1 + reserved1:
            verdict.add(
                STOCK,
                f"{sku}: available + reserved was {available0 + reserved0}, "
                f"is {available1 + reserved1}",
            )
        elif reserved1 - reserved0 != held[sku]:
            verdict.add(
                STOCK,
                f"{sku}: reserved grew by {reserved1 - reserved0}, reservations hold {held[sku]}",
            )


def check_run(
    plan: Plan,
    placements: Sequence[Placement],
    before: Holdings,
    end: EndState,
    *,
    own: bool = True,
) -> Verdict:
    """Every invariant but the comparison with the reference (see :func:`compare`).
    ``own``: the run started this stack, so every record on it must be the run's."""
    verdict = Verdict()
    _sagas_of_orders(plan, placements, end, verdict)
    _records(plan, end, verdict, own)
    _conservation(before, end, verdict, own)
    return verdict


def compare(
    verdict: Verdict, reference: frozenset[int], kind: str = OUTCOME_DIFFERS
) -> list[Violation]:
    """One violation per order whose completion differs from ``reference`` (the
    fault-free run's completed set, or the plan's)."""
    found = []
    for number in sorted(reference - verdict.completed):
        saga = verdict.sagas.get(number)
        how = _why(saga) if saga is not None else verdict.outcomes.get(number) or "no saga"
        found.append(
            Violation(
                kind,
                f"order {number}: completed in the reference, here {how}",
                saga.saga_id if saga else "",
            )
        )
    for number in sorted(verdict.completed - reference):
        saga = verdict.sagas.get(number)
        found.append(
            Violation(
                kind,
                f"order {number}: completed here, not in the reference",
                saga.saga_id if saga else "",
            )
        )
    return found
