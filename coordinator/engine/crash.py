"""A test-only crash hook: die like ``kill -9`` at a named point of the saga protocol.

``SAGAWIRE_CRASH_AT`` lists points, comma separated, each ``point`` or
``point:step``, optionally ``#n`` to crash on the n-th time it is reached:

- ``after_intent:STEP``              an execute attempt is logged, the call not yet made
- ``after_call:STEP``                the execute call returned, its result not yet logged
- ``after_compensate_intent:STEP``   a compensation attempt is logged, not yet sent
- ``after_compensate_call:STEP``     the compensation returned, not yet logged
- ``recovery``                       recovery found the unfinished sagas, resumed none yet
- ``transition``                     a transition was handed to the saga log (with ``#n``:
                                     the n-th of the process), durable or not: the log
                                     calls it (coordinator/log/saga_log.py), so a test can
                                     kill between any two transitions

Off (empty) by default. The process exits with ``os._exit(137)``: no cleanup,
no flush, exactly like SIGKILL.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter

log = logging.getLogger(__name__)
CRASH_EXIT_CODE = 137


class CrashHook:
    """Call it at each point; it ends the process when the point is armed."""

    def __init__(self, spec: str = "") -> None:
        self._armed: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            name, _, nth = part.partition("#")
            self._armed[name] = int(nth) if nth else 1
        self._seen: Counter[str] = Counter()

    @property
    def armed(self) -> bool:
        return bool(self._armed)

    def __call__(self, point: str, step: str = "") -> None:
        if not self._armed:
            return
        for name in (f"{point}:{step}", point):
            if name in self._armed:
                self._seen[name] += 1
                if self._seen[name] == self._armed[name]:
                    log.critical("crash hook firing point=%s", name)
                    sys.stderr.flush()
                    os._exit(CRASH_EXIT_CODE)


NO_CRASH = CrashHook()
