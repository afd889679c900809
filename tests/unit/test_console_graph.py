"""The console's graph: columns, side-by-side parallel steps, and the compensation path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from console.graph import (
    Compensation,
    GraphStep,
    columns,
    compensation_waves,
    layout,
    reverse_path,
)

PLACE_ORDER = [
    GraphStep("create_order", ()),
    GraphStep("reserve_stock", ("create_order",)),
    GraphStep("charge_payment", ("create_order",)),
    GraphStep("schedule_shipment", ("reserve_stock", "charge_payment")),
    GraphStep("approve_order", ("schedule_shipment",)),
]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ms(n: float) -> datetime:
    return T0 + timedelta(milliseconds=n)


def test_a_step_stands_one_column_after_the_furthest_step_it_follows() -> None:
    assert columns(PLACE_ORDER) == {
        "create_order": 0,
        "reserve_stock": 1,
        "charge_payment": 1,
        "schedule_shipment": 2,
        "approve_order": 3,
    }
    skip = [GraphStep("a", ()), GraphStep("b", ("a",)), GraphStep("c", ("a", "b"))]
    assert columns(skip) == {"a": 0, "b": 1, "c": 2}


def test_parallel_steps_stand_side_by_side_and_every_edge_points_right() -> None:
    graph = layout(PLACE_ORDER)
    reserve, charge = graph.node("reserve_stock"), graph.node("charge_payment")
    create, ship = graph.node("create_order"), graph.node("schedule_shipment")
    assert reserve.x == charge.x and reserve.y < charge.y  # the definition's order
    assert create.y == ship.y == (reserve.y + charge.y) / 2  # centred on the fork
    assert {(e.source, e.target) for e in graph.edges} == {
        ("create_order", "reserve_stock"),
        ("create_order", "charge_payment"),
        ("reserve_stock", "schedule_shipment"),
        ("charge_payment", "schedule_shipment"),
        ("schedule_shipment", "approve_order"),
    }
    for edge in graph.edges:
        assert graph.node(edge.source).x < graph.node(edge.target).x
        assert edge.path.startswith("M ")
    assert all(n.x + n.width <= graph.width and n.y + n.height <= graph.height for n in graph.nodes)
    assert [n.name for n in graph.nodes] == [s.name for s in PLACE_ORDER]


def test_a_column_is_ordered_by_where_its_predecessors_stand() -> None:
    # d is declared before c, but follows b (the lower one): c goes up beside a.
    steps = [
        GraphStep("a", ()),
        GraphStep("b", ()),
        GraphStep("d", ("b",)),
        GraphStep("c", ("a",)),
    ]
    graph = layout(steps)
    assert graph.node("a").y < graph.node("b").y
    assert graph.node("c").y < graph.node("d").y


def test_compensations_that_overlapped_share_a_wave() -> None:
    ran = [
        Compensation("create_order", ms(40), ms(45)),
        Compensation("reserve_stock", ms(30), ms(36)),
        Compensation("charge_payment", ms(31), ms(38)),
    ]
    waves = compensation_waves(ran)
    assert [(c.step, c.wave) for c in waves] == [
        ("reserve_stock", 1),
        ("charge_payment", 1),
        ("create_order", 2),
    ]
    one_by_one = compensation_waves(
        [Compensation("reserve_stock", ms(1), ms(2)), Compensation("create_order", ms(3), ms(4))]
    )
    assert [c.wave for c in one_by_one] == [1, 2]
    # One still running holds its wave open: what starts meanwhile runs beside it.
    running = compensation_waves(
        [Compensation("charge_payment", ms(1), None), Compensation("reserve_stock", ms(9), ms(10))]
    )
    assert [c.wave for c in running] == [1, 1]


def test_the_reverse_path_runs_from_the_failed_step_through_each_wave() -> None:
    graph = layout(PLACE_ORDER)
    waves = compensation_waves(
        [
            Compensation("reserve_stock", ms(30), ms(36)),
            Compensation("charge_payment", ms(31), ms(38)),
            Compensation("create_order", ms(40), ms(45)),
        ]
    )
    edges = reverse_path(graph, "schedule_shipment", waves)
    assert [(e.source, e.target, e.wave) for e in edges] == [
        ("schedule_shipment", "reserve_stock", 1),
        ("schedule_shipment", "charge_payment", 1),
        ("reserve_stock", "create_order", 2),
        ("charge_payment", "create_order", 2),
    ]
    # A rejection in a parallel branch: the path starts at the rejected step.
    carol = reverse_path(
        graph,
        "charge_payment",
        compensation_waves(
            [
                Compensation("reserve_stock", ms(1), ms(2)),
                Compensation("create_order", ms(3), ms(4)),
            ]
        ),
    )
    assert [(e.source, e.target) for e in carol] == [
        ("charge_payment", "reserve_stock"),
        ("reserve_stock", "create_order"),
    ]
    # A saga past its deadline has no failed step: the path starts at the first wave.
    timed_out = reverse_path(graph, "", [Compensation("create_order", ms(1), ms(2), 1)])
    assert timed_out == ()


def test_an_empty_definition_is_an_empty_graph() -> None:
    graph = layout([])
    assert graph.nodes == () and graph.edges == ()
