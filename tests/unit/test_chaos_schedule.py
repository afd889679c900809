"""The chaos schedule: seeded kills and cuts within the run, a seeded fault plan per service."""

from __future__ import annotations

import pytest

from cli.chaos_schedule import COORDINATOR, Action, ChaosEvent, draw_schedule, fault_plan
from common.config import SERVICE_NAMES


def test_the_schedule_is_seeded_and_falls_within_the_run() -> None:
    def schedule(seed: int) -> tuple[ChaosEvent, ...]:
        return draw_schedule(seed, 1000, kills_coordinator=3, kills_participant=2, stream_cuts=1)

    first = draw_schedule(1, 1000, kills_coordinator=3, kills_participant=2, stream_cuts=1)
    assert first == schedule(1)
    assert first != schedule(2)
    actions = [e.action for e in first]
    assert actions.count(Action.kill_coordinator) == 3
    assert actions.count(Action.kill_participant) == 2
    assert actions.count(Action.cut_streams) == 1
    assert [e.after for e in first] == sorted(e.after for e in first)
    for event in first:
        assert 100 <= event.after <= 750
        if event.action is Action.kill_coordinator:
            assert event.target == COORDINATOR
        else:
            assert event.target in SERVICE_NAMES
        assert (event.downtime > 0) == (event.action is not Action.cut_streams)


def test_each_service_gets_its_own_seeded_fault_plan_and_rate_zero_clears() -> None:
    plans = [fault_plan(4, s, 0.2) for s in SERVICE_NAMES]
    assert all(p.unavailable_rate == pytest.approx(0.2) for p in plans)
    assert len({p.seed for p in plans}) == len(SERVICE_NAMES)
    assert all(p.seed != 0 for p in plans)
    assert fault_plan(4, "order", 0.0).unavailable_rate == 0
    assert fault_plan(0, "order", 0.2).seed != 0  # seed 0 would mean "not seeded"


def test_an_event_says_what_it_does() -> None:
    assert ChaosEvent(5, Action.kill_coordinator, COORDINATOR, 0.5).what == "kill coordinator"
    assert ChaosEvent(5, Action.kill_participant, "payment", 0.5).what == "kill participant payment"
    assert ChaosEvent(5, Action.cut_streams, "order").what == "cut streams of order"
