"""Bulkheads: a bounded number of calls in flight per participant.

A slow or stuck participant then holds only its own share of the caller: calls to
it queue for a slot (not an attempt, nothing is logged while waiting), and calls
to the others go on. Together with retry, breaker and timeout, the fourth of the
fault strategies the saga literature names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class BulkheadView:
    """One participant's bulkhead as the API shows it."""

    participant: str
    limit: int
    in_flight: int
    waiting: int


class Bulkheads:
    """One semaphore per participant: ``limits[name]``, else ``default_limit``."""

    def __init__(self, default_limit: int, limits: Mapping[str, int] | None = None) -> None:
        if default_limit < 1 or any(v < 1 for v in (limits or {}).values()):
            raise ValueError("a bulkhead needs at least one call in flight")
        self._default = default_limit
        self._limits = dict(limits or {})
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._in_flight: dict[str, int] = {}
        self._waiting: dict[str, int] = {}
        self._peak: dict[str, int] = {}

    def limit(self, participant: str) -> int:
        return self._limits.get(participant, self._default)

    @asynccontextmanager
    async def slot(self, participant: str) -> AsyncIterator[None]:
        """Hold one of the participant's slots for the block, waiting for one if need be."""
        semaphore = self._slots.get(participant)
        if semaphore is None:
            semaphore = self._slots[participant] = asyncio.Semaphore(self.limit(participant))
        self._waiting[participant] = self._waiting.get(participant, 0) + 1
        try:
            await semaphore.acquire()
        finally:
            self._waiting[participant] -= 1
        in_flight = self._in_flight[participant] = self._in_flight.get(participant, 0) + 1
        self._peak[participant] = max(self._peak.get(participant, 0), in_flight)
        try:
            yield
        finally:
            self._in_flight[participant] -= 1
            semaphore.release()

    def peak(self, participant: str) -> int:
        """The most calls this participant ever had in flight (tests check the bound)."""
        return self._peak.get(participant, 0)

    def view(self, participant: str) -> BulkheadView:
        return BulkheadView(
            participant=participant,
            limit=self.limit(participant),
            in_flight=self._in_flight.get(participant, 0),
            waiting=self._waiting.get(participant, 0),
        )


__all__ = ["BulkheadView", "Bulkheads"]
