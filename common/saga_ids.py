"""Saga ids: UUIDv7 (RFC 9562), so every id carries the time its saga was created.

The coordinator makes every saga id (:func:`new_saga_id`). A participant reads the
creation time back from the id alone (:func:`created_at`), with nothing else to trust
or store: that is what lets its barrier refuse a late request of a saga whose rows
retention has removed (common/barrier.py). Ids made before sagas had UUIDv7 ids are
random UUIDs (version 4) and carry no time: :func:`created_at` returns None for them.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime

_VERSION = 7


def new_saga_id(now_ms: int | None = None) -> str:
    """A new UUIDv7: 48 bits of Unix time in milliseconds, then 74 random bits."""
    millis = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10)) & ((1 << 80) - 1)
    value &= ~(0xF << 76)
    value |= _VERSION << 76  # version
    value &= ~(0x3 << 62)
    value |= 0x2 << 62  # variant RFC 9562
    return str(uuid.UUID(int=value))


def created_at(saga_id: str) -> datetime | None:
    """When the saga was created, read from its id; None if the id carries no time
    (not a UUID, or a UUID of another version)."""
    try:
        parsed = uuid.UUID(saga_id)
    except ValueError:
        return None
    if parsed.version != _VERSION:
        return None
    return datetime.fromtimestamp((parsed.int >> 80) / 1000, UTC)
