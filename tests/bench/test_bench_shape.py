"""A short ``sagawire bench`` run: the shape of its output and that every saga ended as
expected. Never the speed — the machine running the tests is shared."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from bench.report import RunRow

SAGAWIRE = Path(sys.executable).parent / "sagawire"
MODES = ("bare", "raw", "orchestration", "choreography")
CONCURRENCIES = (1, 4)
REQUIRED = (
    "mode",
    "concurrency",
    "mix",
    "sagas",
    "seconds",
    "sagas_per_s",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "ratio_to_raw",
)
STACK_PROCESSES = {"bench", "order", "inventory", "payment", "shipping"}


@pytest.mark.timeout(90)
def test_short_run_prints_the_table_and_writes_json_and_plot(tmp_path: Path) -> None:
    out, png = tmp_path / "out.json", tmp_path / "bench.png"
    args = [
        str(SAGAWIRE),
        "bench",
        "--mode", ",".join(MODES),
        "--concurrency", ",".join(map(str, CONCURRENCIES)),
        "--duration", "1",
        "--warmup", "0.3",
        "--mix", "mixed",
        "--no-progress",
        "--timeout", "15",
        "--json", str(out),
        "--plot", str(png),
    ]  # fmt: skip
    run = subprocess.run(args, capture_output=True, text=True, timeout=80, check=False)
    assert out.exists(), f"exit status {run.returncode}\n{run.stdout}{run.stderr}"
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    assert run.returncode == 0, run.stdout + run.stderr

    assert [(r["mode"], r["concurrency"]) for r in rows] == [
        (m, c) for m in MODES for c in CONCURRENCIES
    ]
    for row in rows:
        assert set(REQUIRED) <= set(row), row
        assert set(row) == {f for f in RunRow.__dataclass_fields__}
        # bare's participants cannot say no: it always places the happy saga.
        assert row["mix"] == ("happy" if row["mode"] == "bare" else "mixed")
        for key in ("sagas", "seconds", "sagas_per_s", "p50_ms", "p95_ms", "p99_ms"):
            assert row[key] > 0, (key, row)
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] <= row["max_ms"]
        # bare placed happy sagas: it has no raw row of the same mix to compare with.
        assert (row["ratio_to_raw"] is None) if row["mode"] == "bare" else row["ratio_to_raw"] > 0
        assert row["ratio_to_bare"] > 0
        # Every saga ended as expected, and the services' records agree (bare keeps none).
        assert row["unexpected"] == 0, row["unexpected_kinds"]
        assert row["consistent"] is (None if row["mode"] == "bare" else True)
        coordinated = row["mode"] not in ("bare", "raw")
        processes = STACK_PROCESSES | ({"coordinator"} if coordinated else set())
        assert set(row["cpu_s_per_saga"]) == processes
        assert set(row["peak_rss_mb"]) == processes
        assert all(v > 0 for v in row["peak_rss_mb"].values())
    assert all(r["ratio_to_raw"] == 1.0 for r in rows if r["mode"] == "raw")
    assert all(r["ratio_to_bare"] == 1.0 for r in rows if r["mode"] == "bare")

    for mode in MODES:
        assert mode in run.stdout
    assert "sagas/s" in run.stdout and "p99 ms" in run.stdout
    assert "Against issue 19's targets" in run.stdout
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.timeout(90)
def test_plaintext_runs_every_mode_again_without_tls_and_prints_its_cost(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = [
        str(SAGAWIRE), "bench", "--mode", "bare,raw", "--concurrency", "2", "--sagas", "20",
        "--warmup", "0", "--no-progress", "--plaintext", "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(args, capture_output=True, text=True, timeout=80, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    rows: list[dict[str, Any]] = json.loads(out.read_text())
    # Each mode right after itself, on the plaintext stack (same load).
    assert [r["mode"] for r in rows] == ["bare", "bare/plaintext", "raw", "raw/plaintext"]
    assert all(r["sagas"] == 20 and r["unexpected"] == 0 for r in rows)
    # Each variant against its own floors.
    assert rows[3]["ratio_to_raw"] == 1.0 and rows[3]["ratio_to_bare"] > 0
    assert "TLS on (shipped) vs off" in run.stdout


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_bench_stops_its_own_stack(tmp_path: Path, sig: signal.Signals) -> None:
    args = [str(SAGAWIRE), "bench", "--mode", "orchestration", "--concurrency", "1"]
    args += ["--duration", "60", "--no-progress", "--data", str(tmp_path / "data")]
    bench = psutil.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    children: list[psutil.Process] = []
    try:

        def stack() -> list[psutil.Process]:
            return [c for c in bench.children(recursive=True) if "-m" in c.cmdline()]

        deadline = time.monotonic() + 40
        while len(children := stack()) < 5:  # four services and the coordinator
            assert bench.poll() is None and time.monotonic() < deadline, "stack never started"
            time.sleep(0.2)
        bench.send_signal(sig)
        output, _ = bench.communicate(timeout=30)
        assert bench.returncode == 130, output
        assert "its stack was stopped" in output
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"still running: {alive}"
    finally:
        for process in [bench, *children]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
