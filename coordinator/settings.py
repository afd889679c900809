"""The coordinator's settings, read from ``SAGAWIRE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from common.config import ServerSettings
from common.tokens import TokenSettings
from contract.definitions import DEFAULT_FILE
from coordinator.log.postgres import is_postgres_url


class CoordinatorSettings(ServerSettings, TokenSettings):
    """How the coordinator runs; participants' addresses come from :class:`Endpoints`."""

    # The saga definitions (YAML) to load at start.
    definitions_file: Path = DEFAULT_FILE
    # SAGAWIRE_MODE overrides every definition's mode ("" keeps each definition's own).
    mode: Literal["", "orchestration", "choreography"] = ""
    # Sagas driven at once; more wait for a free slot (already logged, so never lost).
    max_concurrent_sagas: int = Field(default=500, ge=1, le=100_000)
    # Sagas in progress (running or waiting) before PlaceOrder answers RESOURCE_EXHAUSTED.
    max_pending_sagas: int = Field(default=20_000, ge=1, le=1_000_000)
    # A participant's breaker opens when at least breaker_failure_rate of the calls in
    # the last breaker_window seconds failed, once there were breaker_minimum_calls;
    # breaker_reset_timeout seconds later it lets one trial call through.
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_minimum_calls: int = Field(default=20, ge=1, le=100_000)
    breaker_window: float = Field(default=10.0, gt=0, le=3600)
    breaker_reset_timeout: float = Field(default=1.0, gt=0, le=3600)
    # While the breaker of a saga's first participant is open, PlaceOrder refuses new
    # sagas with UNAVAILABLE before writing anything (the client retries later).
    shed_at_door: bool = True
    # Calls in flight from the coordinator to each participant (the bulkhead), and
    # per-participant overrides, e.g. SAGAWIRE_BULKHEADS='{"shipping": 8}'.
    bulkhead: int = Field(default=64, ge=1, le=100_000)
    bulkheads: dict[str, int] = Field(default_factory=dict)
    # A run stopped by an unexpected error (a bug, a failing disk) is driven again after
    # this many seconds, doubling up to a minute; after redrive_attempts runs in a row
    # end that way, the saga is marked as needing attention (RetrySaga resumes it).
    redrive_first_wait: float = Field(default=1.0, gt=0, le=60)
    redrive_attempts: int = Field(default=8, ge=1, le=1000)
    # How long shutdown waits for running sagas before leaving them to recovery.
    drain_seconds: float = Field(default=2.0, ge=0, le=300)
    # How often the choreography observer looks for sagas past their deadline.
    stall_check_seconds: float = Field(default=1.0, gt=0, le=3600)
    # The saga log: "" keeps it in a SQLite file of the data dir (one coordinator);
    # "postgresql://user@host:port/database" keeps it in PostgreSQL, shared by every
    # coordinator replica given the same URL and schema (coordinator/log/postgres.py).
    saga_log: str = ""
    saga_log_schema: str = Field(default="sagawire", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # This replica's name as the owner of leases ("": host, pid and a random part, new at
    # every start). A stable name lets a restarted replica take its own sagas back at once
    # instead of after their leases expire.
    replica_id: str = Field(default="", max_length=100)
    # How long a lease on a saga (and on the observer's role) lasts unrenewed: how soon
    # another replica takes over the sagas of one that died; renewed every third of it.
    lease_seconds: float = Field(default=10.0, ge=0.5, le=3600)
    # Test-only crash hook, e.g. "after_intent:charge_payment" (see coordinator/engine/crash.py).
    crash_at: str = ""

    @field_validator("saga_log")
    @classmethod
    def _saga_log_url(cls, value: str) -> str:
        if value and not is_postgres_url(value):
            raise ValueError("must be empty (SQLite in the data dir) or a postgresql:// URL")
        return value
