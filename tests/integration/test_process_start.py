"""Real process starts, a short timeout each: ``python -m services.X``, ``python -m
coordinator`` and ``sagawire serve`` take one set of options (one parser), end on a bad
option or setting with one line naming it and exit status 2, and refuse a taken port."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

SAGAWIRE = Path(sys.executable).parent / "sagawire"


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        args, cwd=ROOT, env=full, capture_output=True, text=True, timeout=20, check=False
    )


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, result.stdout + result.stderr
    return lines[0]


def test_python_m_takes_exactly_the_options_of_sagawire_serve(tmp_path: Path) -> None:
    def options(result: subprocess.CompletedProcess[str]) -> set[str]:
        assert result.returncode == 0, result.stderr
        return set(re.findall(r"--[a-z][a-z-]+", result.stdout))

    serve = options(run([str(SAGAWIRE), "serve", "--help"]))
    assert serve == {"--port", "--data", "--help"}
    assert options(run([sys.executable, "-m", "services.order", "--help"])) == serve
    assert options(run([sys.executable, "-m", "coordinator", "--help"])) == serve

    bad = run([sys.executable, "-m", "services.order", "--port", "abc", "--data", str(tmp_path)])
    assert bad.returncode == 2 and "--port" in one_line(bad)
    unknown = run([sys.executable, "-m", "coordinator", "--data-dir", str(tmp_path)])
    assert unknown.returncode == 2 and "--data-dir" in one_line(unknown)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    refused = run([str(SAGAWIRE), "serve", "coordinator", "--data", str(not_a_dir)])
    assert (refused.returncode, one_line(refused)) == (
        2,
        f"coordinator: --data: {not_a_dir} is not a directory",
    )
    faults = run(
        [sys.executable, "-m", "services.payment", "--data", str(tmp_path)],
        {"SAGAWIRE_FAULTS": "{not json", "SAGAWIRE_PORT": "0"},
    )
    assert faults.returncode == 2
    assert one_line(faults).startswith("payment: SAGAWIRE_FAULTS: not valid JSON")
    mode = run(
        [str(SAGAWIRE), "serve", "order", "--data", str(tmp_path)], {"SAGAWIRE_MODE": "sideways"}
    )
    assert mode.returncode == 2 and one_line(mode).startswith("order: SAGAWIRE_MODE: ")


def test_serve_refuses_a_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for args in (
            [str(SAGAWIRE), "serve", "inventory"],
            [sys.executable, "-m", "services.inventory"],
        ):
            refused = run([*args, "--port", str(port), "--data", str(tmp_path)])
            assert refused.returncode == 1
            assert one_line(refused).startswith(f"inventory: port {port} on 127.0.0.1 is taken")
