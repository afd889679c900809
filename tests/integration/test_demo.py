"""The README's first command, end to end: ``sagawire demo`` against a real local stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli.stack import coordinator_installed

SAGAWIRE = Path(sys.executable).parent / "sagawire"

pytestmark = pytest.mark.skipif(not coordinator_installed(), reason="no coordinator yet")


@pytest.mark.parametrize("mode", ["orchestration", "choreography"])
def test_demo_shows_every_outcome_and_exits_zero(tmp_path: Path, mode: str) -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    args = [str(SAGAWIRE), "demo", "--mode", mode, "--data", str(tmp_path / "demo")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=110, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = output[output.index("Demo summary") :]
    for scenario, ended in [
        ("completes", "COMPLETED"),
        ("out of stock", "COMPENSATED (INSUFFICIENT_STOCK)"),
        ("declined", "COMPENSATED (INSUFFICIENT_FUNDS)"),
        ("unshippable", "COMPENSATED (UNSERVICEABLE_DESTINATION)"),
        ("retried", "COMPLETED"),
        ("returned", "COMPLETED"),
        ("returned twice", "COMPENSATED (ALREADY_RETURNED)"),
        ("not returnable", "COMPENSATED (ORDER_NOT_RETURNABLE)"),
    ]:
        line = next(
            line for line in summary.splitlines() if line.strip().startswith(f"{scenario}  ")
        )
        assert ended in line and "as expected" in line and "NOT as expected" not in line, line
    assert "✗" not in output, output
    assert "the reservation was made, then released" in output
    assert "the charge was captured, then refunded" in output
    assert "order returned" in output and "back in stock" in output
    assert f"ran in {mode} mode" in output
    # Who retries the charge: the coordinator, or payment's event consumer, whose failed
    # attempts are shown from the trace.
    assert "the coordinator retries" not in output
    if mode == "choreography":
        attempts = output[output.index("attempts by the services' event consumers") :]
        lines = attempts.splitlines()[:12]
        assert any("charge_payment" in line and "transient" in line for line in lines), lines
    assert "stack stopped cleanly" in output
    assert (tmp_path / "demo" / "logs" / "payment.log").is_file()
