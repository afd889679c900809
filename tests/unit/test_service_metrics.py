"""A producer's view of its followers: positions, consumer lag and outbox backlog."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from common.metrics import ServiceMetrics, StreamPositions


def test_a_followers_lag_is_the_head_minus_what_it_was_sent() -> None:
    head = 10
    positions = StreamPositions(lambda: head)
    assert positions.lags() == {}  # nobody follows
    positions.opened("payment", 3)
    positions.opened("operator-tail", 0)
    positions.delivered("payment", 8)
    positions.delivered("payment", 5)  # never backwards
    assert positions.lags() == {"payment": 2, "operator-tail": 10}

    # A stack consumer that goes away is still counted (its lag grows while it is down);
    # anyone else only while its stream is open.
    positions.closed("payment")
    positions.closed("operator-tail")
    head = 15
    assert positions.lags() == {"payment": 7}


def test_a_second_stream_of_one_consumer_keeps_it_open() -> None:
    positions = StreamPositions(lambda: 4)
    positions.opened("cli", 1)
    positions.opened("cli", 2)
    positions.closed("cli")
    assert positions.lags() == {"cli": 2}
    positions.closed("cli")
    assert positions.lags() == {}


def test_consumer_names_are_made_safe_and_bounded() -> None:
    positions = StreamPositions(lambda: 0)
    assert positions.key("bad\nname=1") == "bad_name_1"
    assert positions.key("") == "unnamed"
    assert len(positions.key("x" * 1000)) == 64
    for number in range(64):
        positions.opened(positions.key(f"c{number}"), 0)
    assert positions.key("c0") == "c0"
    assert positions.key("one-too-many") == "other"


def test_an_unreadable_head_reports_nothing_this_time() -> None:
    def broken() -> int:
        raise OSError("store gone")

    positions = StreamPositions(broken)
    positions.opened("inventory", 1)
    assert positions.lags() == {}


def _points(reader: InMemoryMetricReader, name: str) -> dict[Any, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        tuple(sorted((point.attributes or {}).items())): point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
        if isinstance(point, NumberDataPoint)
    }


def test_consumer_lag_and_backlog_are_gauges_by_producer_and_consumer() -> None:
    reader = InMemoryMetricReader()
    metrics = ServiceMetrics(MeterProvider(metric_readers=[reader]).get_meter("test"))
    positions = StreamPositions(lambda: 20)
    positions.opened("shipping", 20)
    positions.opened("inventory", 12)
    metrics.watch_streams("payment", positions)

    producer = ("messaging.destination.name", "payment")
    assert _points(reader, "sagawire.consumer.lag") == {
        (("messaging.consumer.group.name", "inventory"), producer): 8,
        (("messaging.consumer.group.name", "shipping"), producer): 0,
    }
    assert _points(reader, "sagawire.outbox.backlog") == {(producer,): 8}
