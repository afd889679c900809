"""``sagawire bench --target``: a stack the bench did not start, reached over gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.coordinator_support import Stack, running_stack

SAGAWIRE = Path(sys.executable).parent / "sagawire"


async def bench(stack: Stack, tmp_path: Path, modes: str) -> tuple[int, str, list[dict[str, Any]]]:
    """Run the bench against ``stack``; its exit status, its output and its JSON rows."""
    out = tmp_path / f"{modes.replace(',', '-')}.json"
    addresses = {
        f"SAGAWIRE_{n.upper()}_ADDR": stack.cluster.address(n) for n in stack.cluster.servers
    }
    process = await asyncio.create_subprocess_exec(
        str(SAGAWIRE), "bench", "--target", stack.address, "--mode", modes,
        "--concurrency", "2", "--duration", "1", "--warmup", "0.2", "--no-progress",
        "--timeout", "15", "--json", str(out),
        env={**os.environ, **addresses},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 80)
    rows = json.loads(out.read_text()) if out.exists() else []
    assert process.returncode is not None
    return process.returncode, output.decode(), rows


@pytest.mark.timeout(120)
async def test_a_running_stack_is_measured_and_checked_without_its_processes(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path) as stack:
        code, output, rows = await bench(stack, tmp_path, "raw,orchestration")
    assert code == 0, output
    assert [r["mode"] for r in rows] == ["raw", "orchestration"]
    for row in rows:
        assert row["sagas"] > 0 and row["unexpected"] == 0 and row["consistent"] is True, row
        # The target's processes are not the bench's to measure: only its own CPU and RSS.
        assert set(row["cpu_s_per_saga"]) == {"bench"}
    assert rows[1]["ratio_to_raw"] > 0
    assert "bench only: a --target stack is not measured" in output


@pytest.mark.timeout(120)
async def test_a_target_running_another_mode_is_refused_not_mislabelled(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:  # its definition runs orchestration
        code, output, rows = await bench(stack, tmp_path, "choreography")
    assert code != 0
    assert "ran the probe saga in orchestration mode" in output
    assert "SAGAWIRE_MODE=choreography" in output
    assert rows == []
