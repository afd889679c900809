"""The real ``sagawire`` command against a real local stack, as a script or a person uses it.

One ``sagawire up`` for the module, on free ports with its own data directory, and no
``SAGAWIRE_*`` variable in any environment: every verb finds the stack through the global
``--address`` and ``--data`` alone (the certificates and the token key are under ``--data``;
the services' addresses come from the coordinator). Checked: exit statuses, ``--output
json`` on every read verb (one object per line for lists and streams), ``sagawire faults``,
money as money, tables that fit the terminal, placeholders for what is not known yet.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_stack import free_base_port

SAGAWIRE = Path(sys.executable).parent / "sagawire"
# Exit statuses, as the README's command table gives them.
OK, FAILED, USAGE, COMPENSATED, NOT_FOUND, UNREACHABLE = 0, 1, 2, 3, 5, 6


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any Sagawire setting (PYTHONPATH kept)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGAWIRE_")}
    return {**env, "NO_COLOR": "1", "COLUMNS": "200", **extra}


def sagawire(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SAGAWIRE), *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@dataclass
class Stack:
    address: str
    data: Path
    base: int

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``sagawire --address A --data D ARGS``, with nothing else to go by."""
        return sagawire("--address", self.address, "--data", str(self.data), *args, **env)

    def json_lines(self, *args: str, status: int = OK) -> list[dict[str, Any]]:
        result = self.run(*args, "--output", "json")
        assert result.returncode == status, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    def place(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("order", "place", *args)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("cli-stack")
    base = free_base_port()
    log = (data / "up.log").open("w")
    up = subprocess.Popen(
        [str(SAGAWIRE), "up", "--data", str(data), "--base-port", str(base)],
        env=clean_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while "stack is up" not in (data / "up.log").read_text():
            assert up.poll() is None and time.monotonic() < deadline, (data / "up.log").read_text()
            time.sleep(0.2)
        yield Stack(f"127.0.0.1:{base}", data, base)
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
        log.close()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_exit_statuses_say_what_happened(stack: Stack) -> None:
    completed = stack.place("--customer", "alice", "--item", "SKU-BOOK:2", "--to", "Berlin")
    assert completed.returncode == OK, completed.stderr
    assert "total 30.00 EUR" in completed.stdout
    declined = stack.place("--customer", "carol", "--item", "SKU-LAMP:1", "--to", "Lyon")
    assert declined.returncode == COMPENSATED, declined.stderr
    assert "charge of 49.00 EUR exceeds the balance of 10.00 EUR" in declined.stdout
    missing = stack.run("saga", "show", "01a23599-9e8a-7a6d-bcd7-5f442fc2103d")
    assert missing.returncode == NOT_FOUND and one_line(missing).startswith("error: NOT_FOUND")
    down = sagawire("--address", "127.0.0.1:1", "--data", str(stack.data), "saga", "list")
    assert down.returncode == UNREACHABLE
    assert one_line(down) == "error: cannot reach the coordinator at 127.0.0.1:1 (is it running?)"
    refused = stack.run("saga", "retry", "01a23599-9e8a-7a6d-bcd7-5f442fc2103d")
    assert refused.returncode == NOT_FOUND
    bad = stack.run("saga", "list", "--status", "sideways")
    assert bad.returncode == USAGE and one_line(bad).startswith("sagawire saga list: ")
    poison = stack.run("events", "poison", "--service", "bogus")
    assert poison.returncode == USAGE and "'bogus'" in one_line(poison)
    address = sagawire("--address", "nonsense", "breakers")
    assert (address.returncode, one_line(address)) == (
        USAGE,
        "sagawire: --address: expected host:port, got 'nonsense'",
    )
    garbage = stack.run("saga", "list", SAGAWIRE_TOKEN="garbage")
    assert garbage.returncode == USAGE and one_line(garbage).startswith("sagawire: SAGAWIRE_TOKEN")


def test_every_read_verb_speaks_json(stack: Stack) -> None:
    placed = stack.json_lines("order", "place", "--customer", "dave", "--item", "SKU-MUG:1",
                              "--to", "Atlantis", status=COMPENSATED)  # fmt: skip
    (document,) = placed
    saga_id = document["saga_id"]
    assert document["status"] == "SAGA_STATUS_COMPENSATED"
    assert document["failure"]["reason"] == "UNSERVICEABLE_DESTINATION"
    assert document["saga"]["data"]["total"] == {"amount_minor": 800, "currency": "EUR"}

    (shown,) = stack.json_lines("saga", "show", saga_id)
    assert shown["saga_id"] == saga_id and shown["steps"][0]["attempts"]
    listed = stack.json_lines("saga", "list", "--limit", "50")
    assert saga_id in {s["saga_id"] for s in listed}
    watched = stack.json_lines("saga", "watch", saga_id, status=COMPENSATED)
    assert watched[-1]["status"] == "SAGA_STATUS_COMPENSATED"
    assert [t["sequence"] for t in watched] == sorted(t["sequence"] for t in watched)
    breakers = stack.json_lines("breakers")
    assert {b["participant"]: b["address"] for b in breakers} == {
        name: f"127.0.0.1:{stack.base + offset}"
        for offset, name in enumerate(("order", "inventory", "payment", "shipping"), 1)
    }
    # The services' own APIs, found through the coordinator.
    events = stack.json_lines("events", "tail", "--count", "4")
    assert len(events) == 4 and all(e["source"] and e["type"] for e in events)
    assert stack.json_lines("events", "poison") == []
    faults = stack.json_lines("faults", "show")
    assert [f["service"] for f in faults] == ["order", "inventory", "payment", "shipping"]
    assert faults[2]["calls"]["charge"] >= 1
    (health,) = stack.json_lines("health")
    assert health == {"address": stack.address, "service": "", "status": "SERVING"}


def test_faults_over_the_admin_api(stack: Stack) -> None:
    unknown = stack.run("faults", "set", "--service", "payment", "--action", "chrage",
                        "--fail-next", "2")  # fmt: skip
    assert unknown.returncode == FAILED
    assert "unknown action 'chrage' (this service runs: charge, refund" in one_line(unknown)
    nothing = stack.run("faults", "set", "--service", "payment")
    assert nothing.returncode == USAGE
    assert stack.run("faults", "set", "--service", "payment", "--action", "charge",
                     "--fail-next", "2").returncode == OK  # fmt: skip
    shown = stack.run("faults", "show", "--service", "payment")
    assert "charge: fail next 2" in shown.stdout
    retried = stack.json_lines("order", "place", "--customer", "alice", "--item", "SKU-MUG:1",
                               "--to", "Oslo")  # fmt: skip
    outcomes = [
        a["outcome"]
        for step in retried[0]["saga"]["steps"]
        if step["name"] == "charge_payment"
        for a in step["attempts"]
    ]
    assert outcomes == ["transient", "transient", "ok"]
    assert stack.run("faults", "clear").returncode == OK
    (payment,) = stack.json_lines("faults", "show", "--service", "payment")
    assert payment["plan"]["actions"] == []


def test_events_are_told_in_money_and_poison_asks_every_service(stack: Stack) -> None:
    tail = stack.run("events", "tail", "--type", "sagawire.order.created", "--count", "1")
    assert tail.returncode == OK, tail.stderr
    assert "total=30.00 EUR" in tail.stdout and "(times UTC" in tail.stdout
    poison = stack.run("events", "poison")
    assert poison.stdout.splitlines() == [
        f"{name}: no poison events" for name in ("order", "inventory", "payment", "shipping")
    ]


@pytest.mark.parametrize("columns", [60, 100])
def test_tables_fit_the_terminal_and_never_lose_a_column(stack: Stack, columns: int) -> None:
    placed = stack.json_lines("order", "place", "--customer", "carol", "--item", "SKU-LAMP:1",
                              "--to", "Lyon", status=COMPENSATED)  # fmt: skip
    saga_id = placed[0]["saga_id"]
    for args, headers in [
        (("saga", "list"), ("saga id", "status", "customer", "total", "created", "failure")),
        (("saga", "show", saga_id), ("step", "call", "attempts", "started", "outcome", "error")),
        (("breakers",), ("participant", "address", "state", "in flight", "last change")),
        (("faults", "show"), ("service", "unavailable rate", "action rules", "calls")),
    ]:
        shown = stack.run(*args, COLUMNS=str(columns))
        assert shown.returncode == OK, shown.stderr
        lines = shown.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns, shown.stdout
        words = set(" ".join(lines).replace("┃", " ").replace("│", " ").replace(":", " ").split())
        for header in headers:  # a header may wrap between its words, never lose one
            assert set(header.split()) <= words, (args, header, shown.stdout)


def test_an_unfinished_saga_shows_placeholders_and_watch_waits_for_its_outcome(
    stack: Stack,
) -> None:
    # After the pivot a step is retried until it goes through: the saga runs until the
    # fault is cleared.
    stack.run("faults", "set", "--service", "order", "--action", "approve_order",
              "--fail-next", "-1")  # fmt: skip
    try:
        (placed,) = stack.json_lines("order", "place", "--customer", "bob", "--item",
                                     "SKU-MUG:1", "--to", "Rome", "--no-wait")  # fmt: skip
        saga_id = placed["saga_id"]
        shown = stack.run("saga", "show", saga_id)
        assert "running for" in shown.stdout, shown.stdout
        assert "(orchestration,  ms)" not in shown.stdout
        listed = stack.json_lines("saga", "list", "--status", "running")
        assert saga_id in {s["saga_id"] for s in listed}
        row = next(
            line for line in stack.run("saga", "list").stdout.splitlines() if saga_id in line
        )
        assert row.count("running") == 2, row  # its status, and "took" not known yet
    finally:
        stack.run("faults", "clear")
    watched = stack.run("saga", "watch", saga_id)
    assert watched.returncode == OK and "saga_completed" in watched.stdout


def test_trace_waits_until_the_saga_spans_are_written(stack: Stack) -> None:
    (placed,) = stack.json_lines("order", "place", "--customer", "alice", "--item", "SKU-MUG:1",
                                 "--to", "Madrid")  # fmt: skip
    saga_id = placed["saga_id"]
    # At once: the processes export their spans in batches, seconds apart.
    drawn = stack.run("trace", saga_id)
    assert drawn.returncode == OK, drawn.stderr
    assert "incomplete" not in drawn.stderr and "no trace" not in drawn.stderr
    for line in ("saga place_order", "step charge_payment #1", "step approve_order #1"):
        assert line in drawn.stdout, drawn.stdout
    spans = stack.json_lines("trace", saga_id)
    assert {"coordinator", "order", "inventory", "payment", "shipping"} <= {
        s["service"] for s in spans
    }
    assert sum(s["kind"] == "SERVER" and s["service"] == "payment" for s in spans) == 1
