"""What a caller sent reaches a log line bounded and escaped; repeated lines are throttled."""

from __future__ import annotations

import logging

import pytest

from common.logs import Throttle, printable


def test_printable_escapes_what_could_forge_a_line() -> None:
    forged = "me\n2026-01-01 level=ERROR service=payment forged\r\x1b[31m"
    shown = printable(forged)
    assert "\n" not in shown and "\r" not in shown and "\x1b" not in shown
    assert shown == repr(forged)


def test_printable_bounds_and_says_how_much_more() -> None:
    assert printable("x" * 900_000, limit=10) == "'xxxxxxxxxx'+899990chars"
    assert printable("short") == "'short'"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throttle_logs_once_per_interval_and_counts_what_it_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    throttle = Throttle(logging.getLogger("test.throttle"), interval=10.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="test.throttle")
    for _ in range(5):
        throttle.warning("/a", "refused method=%s", "/a")
    throttle.warning("/b", "refused method=%s", "/b")  # another key: its own budget
    clock.now += 10.0
    throttle.warning("/a", "refused method=%s", "/a")
    clock.now += 10.0
    throttle.warning("/a", "refused method=%s", "/a")

    assert [r.getMessage() for r in caplog.records] == [
        "refused method=/a",
        "refused method=/b",
        "refused method=/a suppressed=4",
        "refused method=/a",
    ]
