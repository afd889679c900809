"""The saga verbs of the ``sagawire`` CLI against a running coordinator."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from typer.testing import CliRunner, Result

from cli import sagas
from cli.tokens import token_app
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.coordinator_support import Stack, running_stack

app = typer.Typer()
sagas.register(app)


async def run(stack: Stack | None, *args: str, **env: str | None) -> Result:
    """Invoke the CLI on a thread (it is a blocking gRPC client; the servers run here).

    With no token given, it mints an operator token with the session's signing key
    (SAGAWIRE_TOKEN_KEY_FILE, see conftest), as it would with a local stack's."""
    address = stack.address if stack else "127.0.0.1:1"
    env = {"SAGAWIRE_COORDINATOR_ADDR": address, "COLUMNS": "200", **env}
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_place_show_list_watch_and_breakers(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        placed = await run(
            stack, "order", "place", "--customer", "alice", "--item", "SKU-MUG:2",
            "--item", "SKU-BOOK:1", "--to", "Berlin",
        )  # fmt: skip
        assert placed.exit_code == 0, placed.output
        assert "completed" in placed.output and "schedule_shipment (pivot)" in placed.output
        saga_id = placed.output.split()[1]
        shown = await run(stack, "saga", "show", saga_id)
        assert shown.exit_code == 0, shown.output
        assert "attempts" in shown.output and "payment.charge / refund" in shown.output
        failed = await run(
            stack, "order", "place", "--customer", "carol", "--item", "SKU-LAMP:1",
            "--to", "Oslo", "--no-wait",
        )  # fmt: skip
        assert failed.exit_code == 0, failed.output
        other = failed.output.split()[1]
        await stack.settled(other)
        listed = await run(stack, "saga", "list", "--status", "compensated")
        assert other in listed.output and saga_id not in listed.output
        assert "INSUFFICIENT_FUNDS" in listed.output
        assert "carol" in listed.output and "49.00 EUR" in listed.output  # its summary
        watched = await run(stack, "saga", "watch", saga_id)
        assert watched.exit_code == 0 and "saga_completed" in watched.output
        breakers = await run(stack, "breakers")
        assert "inventory" in breakers.output and "closed" in breakers.output
        assert (await stack.saga(saga_id)).status == pb.SAGA_STATUS_COMPLETED


async def test_return_an_order(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        placed = await stack.place("alice", [("SKU-MUG", 1)], "Berlin")
        returned = await run(stack, "order", "return", placed.order_id, "--customer", "alice")
        assert returned.exit_code == 0, returned.output
        assert "completed" in returned.output and "return_order" in returned.output
        assert "refund_payment (pivot)" in returned.output
        assert f"returns the order placed by saga {placed.saga_id}" in returned.output
        again = await run(stack, "order", "return", placed.order_id, "--customer", "alice")
        assert again.exit_code == 3, again.output  # compensated
        assert "compensated" in again.output
        assert "failed at accept_return: ALREADY_RETURNED" in again.output


async def test_errors_are_one_clear_line(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as stack:
        bad = await run(stack, "saga", "show", "not-a-saga")
        assert bad.exit_code == 1
        assert bad.output.strip() == (
            "error: INVALID_ARGUMENT (saga_id): saga_id: 'not-a-saga' is not a saga id (a UUID)"
        )
        placed = await run(stack, "order", "place", "--customer", "alice", "--item", "SKU-MUG:1",
                           "--to", "Oslo")  # fmt: skip
        saga_id = placed.output.split()[1]
        conflict = await run(stack, "saga", "retry", saga_id)
        assert conflict.exit_code == 1
        assert conflict.output.startswith("error: FAILED_PRECONDITION [SAGA_STATUS_CONFLICT]")
        usage = await run(stack, "order", "place", "--customer", "a", "--item", "MUG", "--to", "X")
        assert usage.exit_code == 2 and "expected SKU:QUANTITY" in usage.output
    down = await run(None, "saga", "list")
    assert down.exit_code == 6  # could not reach it
    assert down.output.strip() == (
        "error: cannot reach the coordinator at 127.0.0.1:1 (is it running?)"
    )


async def test_a_customer_token_from_the_cli_places_and_reads_only_its_own(
    tmp_path: Path,
) -> None:
    issued = CliRunner().invoke(token_app, ["issue", "--customer", "alice", "--ttl", "10m"])
    assert issued.exit_code == 0, issued.output
    alice = issued.output.strip()
    async with running_stack(tmp_path) as stack:
        other = await stack.place(customer="bob")
        mine = await run(
            stack, "order", "place", "--customer", "alice", "--item", "SKU-MUG:1",
            "--to", "Oslo", "--token", alice,
        )  # fmt: skip
        assert mine.exit_code == 0, mine.output
        as_bob = await run(
            stack, "order", "place", "--customer", "bob", "--item", "SKU-MUG:1",
            "--to", "Oslo", SAGAWIRE_TOKEN=alice,
        )  # fmt: skip
        assert as_bob.exit_code == 1
        assert as_bob.output.startswith("error: PERMISSION_DENIED")
        listed = await run(stack, "saga", "list", SAGAWIRE_TOKEN=alice)
        assert mine.output.split()[1] in listed.output
        assert other.saga_id not in listed.output
        retry = await run(stack, "saga", "retry", other.saga_id, SAGAWIRE_TOKEN=alice)
        assert retry.output.startswith("error: PERMISSION_DENIED")

        nobody = await run(stack, "breakers", SAGAWIRE_TOKEN_KEY_FILE=str(tmp_path / "no-key"))
        assert nobody.exit_code == 1
        assert nobody.output.startswith("error: UNAUTHENTICATED: no bearer token")
        assert "SAGAWIRE_TOKEN" in nobody.output


def test_token_issue_wants_one_role() -> None:
    for args in (["issue"], ["issue", "--customer", "alice", "--operator"]):
        refused = CliRunner().invoke(token_app, args)
        assert refused.exit_code == 2 and "exactly one of" in refused.output
    assert CliRunner().invoke(token_app, ["issue", "--operator", "--ttl", "soon"]).exit_code == 2


def test_the_verbs_are_part_of_sagawire() -> None:
    from cli.main import app as sagawire

    names = {c.name for c in sagawire.registered_commands}
    groups = {g.name for g in sagawire.registered_groups}
    assert "breakers" in names and {"order", "saga", "token"} <= groups
