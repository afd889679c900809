"""``sagawire console`` against a real stack, over HTTP: what it shows comes from the
coordinator's public API with the user's token, and a running saga streams live."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2

from common.tokens import Role
from tests.console_support import CHANGES, read_events, running_console, start_console
from tests.coordinator_support import api_token, running_stack
from tests.support import free_port


async def test_the_console_shows_the_stack_through_its_api(tmp_path: Path) -> None:
    async with (
        running_stack(tmp_path) as stack,
        running_console(stack, tmp_path / "console") as url,
        httpx2.AsyncClient(base_url=url, timeout=20) as console,
    ):
        done = await stack.place("alice")
        declined = await stack.place("carol", items=[("SKU-LAMP", 1)])

        session = (await console.get("/api/session")).json()
        assert (session["role"], session["source"]) == ("operator", "console")
        listed = (await console.get("/api/sagas")).json()["sagas"]
        assert [(s["saga_id"], s["status"]) for s in listed] == [
            (declined.saga_id, "compensated"),
            (done.saga_id, "completed"),
        ]
        counts = (await console.get("/api/counts")).json()
        assert counts["by_status"]["completed"] == 1 and counts["total"] == 2
        only = await console.get(
            "/api/sagas", params={"status": "completed", "mode": "orchestration"}
        )
        assert [s["saga_id"] for s in only.json()["sagas"]] == [done.saga_id]

        detail = (await console.get(f"/api/sagas/{declined.saga_id}")).json()
        status = {s["name"]: s["status"] for s in detail["steps"]}
        assert status == {
            "create_order": "compensated",
            "reserve_stock": "compensated",
            "charge_payment": "rejected",
            "schedule_shipment": "pending",
            "approve_order": "pending",
        }
        assert [c["step"] for c in detail["compensations"]] == ["reserve_stock", "create_order"]
        history = await read_events(console, f"/api/sagas/{declined.saga_id}/stream")
        kinds = [data["kind"] for name, data in history if name == "transition"]
        assert kinds[0] == "saga_started" and kinds[-1] == "saga_compensated"
        assert history[-1][0] == "end"

        # A running saga, live: payment answers slowly, so the stream sees it run.
        await stack.faults("payment", charge=(0, 700))
        slow = await stack.place("bob", wait=False)
        events = await read_events(console, f"/api/sagas/{slow.saga_id}/stream")
        seen = [data["status"] for name, data in events if name == "saga"]
        assert seen[0] == "running" and seen[-1] == "completed"
        charge = [
            next(s["status"] for s in data["steps"] if s["name"] == "charge_payment")
            for name, data in events
            if name == "saga"
        ]
        assert "running" in charge and charge[-1] == "succeeded"

        # A customer signs in: her own sagas only, no counts, no retry, no breakers.
        alice = api_token(Role.CUSTOMER, "alice")
        signed = await console.post("/api/session", json={"token": alice}, headers=CHANGES)
        assert signed.json()["role"] == "customer" and signed.json()["subject"] == "alice"
        mine = (await console.get("/api/sagas")).json()["sagas"]
        assert [s["saga_id"] for s in mine] == [done.saga_id]
        assert (await console.get(f"/api/sagas/{declined.saga_id}")).status_code == 404
        assert (await console.get("/api/counts")).status_code == 403
        assert (await console.get("/api/breakers")).status_code == 403
        retry = await console.post(f"/api/sagas/{done.saga_id}/retry", headers=CHANGES)
        assert retry.status_code == 403 and retry.json()["error"] == "PERMISSION_DENIED"
        await console.delete("/api/session", headers=CHANGES)
        assert (await console.get("/api/breakers")).status_code == 200


async def test_a_taken_port_is_one_line_and_status_1(tmp_path: Path) -> None:
    port = free_port()
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
    try:
        process = start_console("127.0.0.1:1", tmp_path, "--port", str(port))
        code = await asyncio.to_thread(process.proc.wait, 20)
        await asyncio.to_thread(process.stop)
    finally:
        blocker.close()
        await blocker.wait_closed()
    assert code == 1
    assert f"error: cannot listen on 127.0.0.1:{port}" in process.output
    assert "Traceback" not in process.output
