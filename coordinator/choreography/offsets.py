"""How far the choreography observer has read each producer's stream.

An offset is a hint, never a fact the log depends on: a batch of events seen again plans
no change (:func:`coordinator.choreography.observation.changes_for`). So it must never be
ahead of what the saga log holds durably, but it may lag behind it. :class:`HandledOffsets`
uses that: the observer notes each batch once its changes are durable, and the offsets
are written at most once per interval (and when the observer stops), instead of one
durable commit per batch of events. A crash re-reads at most an interval's events.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from common import inbox
from common.store import Database

OFFSETS_FILE = "observer.db"
# The longest the saved offsets trail what was recorded while events keep coming.
SAVE_INTERVAL_SECONDS = 0.5


class ObserverOffsets(Protocol):
    """Where the observer keeps how far it has read each producer's stream."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def next_sequence(self, producer: str) -> int:
        """The sequence to ask ``producer`` for next."""
        ...

    async def save(self, producer: str, sequence: int) -> None:
        """``sequence`` and everything before it were recorded (durably) in the log."""
        ...


class FileOffsets:
    """The observer's offsets in a SQLite file of its own (one coordinator)."""

    def __init__(self, path: Path, synchronous: str = "FULL") -> None:
        self._db = Database(path, inbox.SCHEMA, synchronous=synchronous)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def next_sequence(self, producer: str) -> int:
        return await self._db.read(lambda conn: inbox.read_offset(conn, producer)) + 1

    async def save(self, producer: str, sequence: int) -> None:
        await self._db.transaction(lambda conn: inbox.save_offset(conn, producer, sequence))


class HandledOffsets:
    """The newest sequence recorded per producer, in memory at once and in ``saved``
    within ``interval`` seconds (see the module docstring)."""

    def __init__(self, saved: ObserverOffsets, interval: float = SAVE_INTERVAL_SECONDS) -> None:
        self._saved = saved
        self._interval = interval
        self._handled: dict[str, int] = {}
        self._written: dict[str, int] = {}
        self._due = asyncio.Event()

    async def next_sequence(self, producer: str) -> int:
        """Where to resume: after what this process recorded, else where the file says."""
        handled = self._handled.get(producer)
        if handled is not None:
            return handled + 1
        return await self._saved.next_sequence(producer)

    def handled(self, producer: str, sequence: int) -> None:
        """``sequence`` and everything before it are durable in the saga log."""
        self._handled[producer] = sequence
        self._due.set()

    async def save_each_interval(self) -> None:
        """Write what was handled since the last write, then rest ``interval``; forever."""
        while True:
            await self._due.wait()
            self._due.clear()
            await self.save()
            await asyncio.sleep(self._interval)

    async def save(self) -> None:
        """Write every producer's newest handled sequence not written yet."""
        for producer, sequence in list(self._handled.items()):
            if self._written.get(producer) != sequence:
                await self._saved.save(producer, sequence)
                self._written[producer] = sequence
