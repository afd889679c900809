"""The garbage collector's policy for a serving process: collect young objects less often,
and never rescan what start-up made.

A saga allocates thousands of container objects (records, messages, spans, tasks) that
reference counting frees; CPython's defaults still run a young-generation collection
every 700 allocations and, now and then, a full one over every object the process holds,
start-up's included (modules, protobuf descriptors, gRPC and OpenTelemetry state). In the
coordinator, under load, that was about a tenth of its CPU (py-spy, docs/performance.md).
Once a process's server is up, its entry point (services/launcher.py, coordinator/app.py;
not ``start_server``, which a test process calls many times) calls
:func:`settle_for_serving`, which moves what start-up made to the permanent
generation (``gc.freeze``), so no collection scans it again, and collects the young
generation every ``YOUNG_THRESHOLD`` allocations instead of 700. Cycles still go: later
and in fewer, larger passes.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def settle_for_serving() -> None:
    """Call once a process has finished starting (its stores open, its server up)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
