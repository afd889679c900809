"""The observer's offsets: in memory at once, written at most once per interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from coordinator.choreography.offsets import FileOffsets, HandledOffsets
from tests.support import wait_until


class CountingOffsets:
    """An ObserverOffsets in memory that keeps every write it was asked for."""

    def __init__(self, stored: dict[str, int] | None = None) -> None:
        self.stored = dict(stored or {})
        self.writes: list[tuple[str, int]] = []

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def next_sequence(self, producer: str) -> int:
        return self.stored.get(producer, 0) + 1

    async def save(self, producer: str, sequence: int) -> None:
        self.writes.append((producer, sequence))
        self.stored[producer] = sequence


async def test_resumes_after_what_was_handled_before_the_file_says_so() -> None:
    saved = CountingOffsets({"order": 7})
    offsets = HandledOffsets(saved)
    assert await offsets.next_sequence("order") == 8
    assert await offsets.next_sequence("payment") == 1

    offsets.handled("order", 12)

    assert await offsets.next_sequence("order") == 13
    assert saved.writes == []  # nothing written until the saver runs


async def test_batches_handled_within_an_interval_are_written_once() -> None:
    saved = CountingOffsets()
    offsets = HandledOffsets(saved, interval=60.0)
    saver = asyncio.create_task(offsets.save_each_interval())
    try:
        offsets.handled("order", 1)
        await wait_until(lambda: saved.writes == [("order", 1)], message="the first write")
        # Written at once; then the saver rests for the interval, whatever comes.
        for sequence in (2, 3, 4):
            offsets.handled("order", sequence)
            await asyncio.sleep(0.05)  # the saver's turn, were it not resting
        offsets.handled("shipping", 9)
        assert saved.writes == [("order", 1)]
        assert await offsets.next_sequence("order") == 5
    finally:
        saver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await saver
    await offsets.save()  # as the observer does when it stops
    assert saved.writes[1:] == [("order", 4), ("shipping", 9)]


async def test_save_writes_only_what_moved() -> None:
    saved = CountingOffsets()
    offsets = HandledOffsets(saved)
    offsets.handled("order", 3)
    offsets.handled("payment", 5)
    await offsets.save()
    offsets.handled("payment", 6)
    await offsets.save()
    await offsets.save()
    assert saved.writes == [("order", 3), ("payment", 5), ("payment", 6)]


async def test_the_file_keeps_what_was_saved_for_the_next_process(tmp_path: Path) -> None:
    first = FileOffsets(tmp_path / "observer.db")
    await first.open()
    handled = HandledOffsets(first)
    handled.handled("inventory", 41)
    await handled.save()
    await first.close()

    again = FileOffsets(tmp_path / "observer.db")
    await again.open()
    try:
        assert await HandledOffsets(again).next_sequence("inventory") == 42
    finally:
        await again.close()
