"""Fault injection for participants: transient failures, latency, "fail the next N".

Off by default. With a non-zero seed the random choices repeat run after run.
Injected failures happen before the barrier, so they have no effect on the store:
exactly like a request that never arrived. They apply to participant calls and,
in choreography, to reactions: drawn for each event, before the consumer's
transaction; a failed draw holds back that event alone, which is retried with backoff
(common/inbox.py).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from common.config import FaultConfig
from common.errors import Transient


class FaultInjector:
    """Decides, per participant call, whether to delay it or fail it."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.configure(config or FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        """Replace the plan; counters of "fail next N" restart from the new plan."""
        self.config = config
        self._remaining = {name: rule.fail_next for name, rule in config.actions.items()}
        self._random = random.Random(config.seed) if config.seed else random.Random()

    async def before_call(self, action: str) -> None:
        """Count the call, then fail it or delay it as the plan says."""
        self.calls[action] += 1
        remaining = self._remaining.get(action, 0)
        if remaining == -1:
            raise Transient(f"injected fault: {action} always fails")
        if remaining > 0:
            self._remaining[action] = remaining - 1
            raise Transient(f"injected fault: {action} fails {remaining - 1} more time(s)")
        rate = self.config.unavailable_rate
        if rate and self._random.random() < rate:
            raise Transient(f"injected fault: {action} unavailable")
        rule = self.config.actions.get(action)
        latency_ms = self.config.latency_ms + (rule.latency_ms if rule else 0)
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
