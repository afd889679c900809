"""The newest committed events of one outbox, decoded once and shared by its streams.

Every stream of a service wakes on the same commits and wants the same new rows:
without a shared tail each one read them from SQLite on a thread and decoded them
again (four or five streams per service in choreography).
:class:`EventTail` holds every stored event with a sequence in ``[start, end]``,
at most ``size`` of them; a stream reading from ``start`` or later is served from
memory with the same filters the SQL read applies, and one that fell behind reads
the file (:meth:`common.outbox.Outbox.read_batch`). Nothing here does I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from protos.sagawire.v1 import events_pb2

DEFAULT_SIZE = 1_024  # ~4 s of events at c=64; a stream further behind reads the file


@dataclass(frozen=True)
class TailEvent:
    """One stored event with what the filters look at, taken out once."""

    event: events_pb2.Event
    mode: str | None  # the saga-mode header, as the outbox's ``mode`` column holds it

    @property
    def sequence(self) -> int:
        return self.event.sequence


class EventTail:
    def __init__(self, end: int, size: int = DEFAULT_SIZE) -> None:
        """An empty tail after ``end``, the last sequence stored when it starts."""
        self.size = size
        self.start = end + 1
        self.end = end
        self._sequences: list[int] = []
        self._events: list[TailEvent] = []

    def __len__(self) -> int:
        return len(self._events)

    def extend(self, newest: Sequence[TailEvent], complete: bool) -> None:
        """Add the stored events after :attr:`end`, in sequence order.

        ``complete``: they are every one stored after ``end`` (a read that was not
        cut short by its limit). Otherwise there may be a gap before them, and the
        tail restarts at the first of them.
        """
        if not complete:
            self._sequences, self._events = [], []
            self.start = newest[0].sequence if newest else self.end + 1
        self._sequences.extend(e.sequence for e in newest)
        self._events.extend(newest)
        if newest:
            self.end = newest[-1].sequence
        excess = len(self._events) - self.size
        if excess > self.size // 4:  # trimmed in steps, not one event at a time
            self.start = self._sequences[excess - 1] + 1
            del self._sequences[:excess], self._events[:excess]

    def covers(self, from_sequence: int) -> bool:
        return from_sequence >= self.start

    def read(
        self,
        from_sequence: int,
        limit: int,
        types: frozenset[str],
        mode: str | None,
        headers: Mapping[str, str],
    ) -> tuple[list[events_pb2.Event], int, bool]:
        """As the SQL read: up to ``limit`` events from ``from_sequence`` on with one of
        ``types`` (any when empty), saga-mode ``mode`` (any when None) and every one of
        ``headers``; the last sequence scanned; whether that was the end of the tail."""
        assert self.covers(from_sequence)
        found: list[events_pb2.Event] = []
        for index in range(bisect.bisect_left(self._sequences, from_sequence), len(self._events)):
            entry = self._events[index]
            event = entry.event
            if types and event.type not in types:
                continue
            if mode is not None and entry.mode != mode:
                continue
            if headers and not headers.items() <= dict(event.headers).items():
                continue
            found.append(event)
            if len(found) >= limit:
                return found, event.sequence, False
        return found, max(self.end, from_sequence - 1), True
