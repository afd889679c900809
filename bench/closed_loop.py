"""The closed loop that drives sagas, and what it measures: latency, throughput, CPU, RSS.

``concurrency`` workers each place one saga, wait for its outcome, and place the
next, until the duration is over or the count is reached; sagas in flight at the
deadline finish and count. CPU time and resident memory of every process of the
stack (and of the bench itself) are read with psutil around and during the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import psutil

from bench.drivers import Driver, Mix, SagaOutcome, SagaSpec, saga_spec

BENCH_PROCESS = "bench"
_SAMPLE_EVERY = 0.25
# Examples of unexpected outcomes kept per run (one per kind), for the report.
_EXAMPLES = 5


@dataclass(frozen=True)
class Stop:
    """When a closed loop stops starting sagas: after ``seconds`` or after ``sagas``."""

    seconds: float | None = None
    sagas: int | None = None

    def __post_init__(self) -> None:
        if (self.seconds is None) == (self.sagas is None):
            raise ValueError("give exactly one of seconds and sagas")

    @property
    def total(self) -> float:
        """The progress bar's total: seconds or sagas."""
        return float(self.seconds if self.seconds is not None else self.sagas or 0)


@dataclass(frozen=True)
class ProcessUsage:
    """One process over one run."""

    cpu_seconds: float
    peak_rss_bytes: int


class ProcessWatch:
    """CPU seconds and peak RSS of named processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self._procs: dict[str, psutil.Process] = {}
        for name, pid in {BENCH_PROCESS: os.getpid(), **pids}.items():
            with contextlib.suppress(psutil.Error):
                self._procs[name] = psutil.Process(pid)
        self._cpu0: dict[str, float] = {}
        self._peak: dict[str, int] = {}

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                self._cpu0[name] = self._cpu(proc)
        self._peak = {}
        self.sample()

    def rss(self) -> dict[str, int]:
        """Resident set size of every process now, in bytes."""
        sizes = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                sizes[name] = int(proc.memory_info().rss)
        return sizes

    def sample(self) -> None:
        for name, size in self.rss().items():
            self._peak[name] = max(self._peak.get(name, 0), size)

    def stop(self) -> dict[str, ProcessUsage]:
        self.sample()
        usage = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                cpu = self._cpu(proc) - self._cpu0.get(name, 0.0)
                usage[name] = ProcessUsage(cpu, self._peak.get(name, 0))
        return usage


@dataclass(frozen=True)
class Placed:
    """A saga the bench placed: what it asked for and how the driver saw it end."""

    spec: SagaSpec
    outcome: SagaOutcome


@dataclass
class LoadResult:
    """Everything one closed-loop run observed."""

    seconds: float
    latencies: list[float]
    placed: list[Placed]
    unexpected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    usage: dict[str, ProcessUsage] = field(default_factory=dict)
    # RSS (bytes) per process, read when the run had completed this many sagas.
    rss_at: dict[int, dict[str, int]] = field(default_factory=dict)
    # Size (bytes) of each store, read when the run had completed this many sagas.
    store_bytes_at: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def sagas(self) -> int:
        return len(self.latencies)


def percentile(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method; 0 for no values."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def closed_loop(
    driver: Driver,
    mix: Mix,
    concurrency: int,
    stop: Stop,
    *,
    first_number: int = 0,
    key_prefix: str = "",
    watch: ProcessWatch | None = None,
    on_progress: Callable[[float, int], None] | None = None,
    rss_checkpoints: tuple[int, ...] = (),
    store_sizes: Callable[[], dict[str, int]] | None = None,
    size_checkpoints: tuple[int, ...] = (),
) -> LoadResult:
    """Run ``concurrency`` workers until ``stop``; return what they observed.

    ``on_progress(done, sagas)`` is called a few times a second with the progress in
    the unit of ``stop`` (seconds or sagas). ``rss_checkpoints`` are saga counts at
    which every watched process's RSS is recorded, ``size_checkpoints`` those at which
    ``store_sizes()`` is (soak runs).
    """
    numbers = itertools.count(first_number)
    last = first_number + stop.sagas if stop.sagas is not None else None
    key_prefix = key_prefix or f"bench-{os.getpid()}-{time.time_ns()}"
    latencies: list[float] = []
    placed: list[Placed] = []
    result = LoadResult(0.0, latencies, placed)
    begin = time.perf_counter()
    deadline = begin + stop.seconds if stop.seconds is not None else math.inf

    async def worker() -> None:
        while time.perf_counter() < deadline:
            number = next(numbers)
            if last is not None and number >= last:
                return
            spec = saga_spec(mix, number)
            t0 = time.perf_counter()
            outcome = await driver.place(spec, f"{key_prefix}-{number}")
            latencies.append(time.perf_counter() - t0)
            placed.append(Placed(spec, outcome))
            if not outcome.matches(spec):
                kind = outcome.describe(spec)
                result.unexpected[kind] += 1
                if result.unexpected[kind] == 1 and len(result.examples) < _EXAMPLES:
                    result.examples.append(f"{kind}: saga {outcome.saga_id or '?'}")

    async def monitor() -> None:
        checkpoints = sorted(rss_checkpoints)
        sizes_due = sorted(size_checkpoints) if store_sizes is not None else []
        while True:
            await asyncio.sleep(_SAMPLE_EVERY)
            if watch is not None:
                watch.sample()
                while checkpoints and len(latencies) >= checkpoints[0]:
                    result.rss_at[checkpoints.pop(0)] = watch.rss()
            while store_sizes is not None and sizes_due and len(latencies) >= sizes_due[0]:
                result.store_bytes_at[sizes_due.pop(0)] = store_sizes()
            if on_progress is not None:
                elapsed = time.perf_counter() - begin
                done = elapsed if stop.seconds is not None else float(len(latencies))
                on_progress(min(done, stop.total), len(latencies))

    if watch is not None:
        watch.start()
    sampler = asyncio.create_task(monitor(), name="bench-monitor")
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker())
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    result.seconds = time.perf_counter() - begin
    if watch is not None:
        result.usage = watch.stop()
        for checkpoint in rss_checkpoints:
            if checkpoint not in result.rss_at and len(latencies) >= checkpoint:
                result.rss_at[checkpoint] = watch.rss()
    if store_sizes is not None:
        for checkpoint in size_checkpoints:
            if checkpoint not in result.store_bytes_at and len(latencies) >= checkpoint:
                result.store_bytes_at[checkpoint] = store_sizes()
    if on_progress is not None:
        on_progress(stop.total, len(latencies))
    return result
