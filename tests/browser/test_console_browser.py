"""The console in headless Chromium against a real stack: the list, a saga drawn as its
graph (nodes coloured by outcome, the pivot, the compensations in the order they ran),
live updates without a reload, and retry for an operator only.

Screenshots of a completed and a compensated saga's page are written to the test's
directory, or to ``SAGAWIRE_CONSOLE_SCREENSHOTS`` (``docs`` refreshes the README's).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.tokens import Role
from protos.sagawire.v1 import coordinator_pb2 as pb
from tests.console_support import running_console
from tests.coordinator_support import api_token, running_stack, write_definitions

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

WAIT_MS = 20_000
# The node colours of console/static/style.css, as the browser computes them.
FILL = {
    "succeeded": "rgb(220, 252, 231)",
    "rejected": "rgb(254, 226, 226)",
    "compensated": "rgb(254, 243, 199)",
    "pending": "rgb(241, 245, 249)",
    "running": "rgb(219, 234, 254)",
}


def screenshots(tmp_path: Path) -> Path:
    directory = Path(os.environ.get("SAGAWIRE_CONSOLE_SCREENSHOTS") or tmp_path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


async def open_page(browser: BrowserContext, url: str) -> tuple[Page, list[str]]:
    page = await browser.new_page()
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    await page.goto(url)
    return page, problems


async def nodes(page: Page) -> dict[str, Any]:
    """Each drawn step's status and the fill colour the browser gives its box."""
    # One synchronous function: a live update may redraw the graph between two calls.
    found: dict[str, Any] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll("g.node")].map(n => [
          n.dataset.step, {
            status: n.dataset.status,
            fill: getComputedStyle(n.querySelector("rect.node-box")).fill,
            pivot: n.querySelector("[data-pivot-mark]") !== null,
            wave: n.querySelector("[data-compensation-wave]")?.dataset.compensationWave ?? null,
        }]))""",
    )
    return found


async def go(page: Page, hash_route: str) -> None:
    """Move within the page, as a link does (no reload)."""
    await page.evaluate("route => { location.hash = route; }", hash_route)


async def test_sagas_drawn_as_graphs_and_updated_live(
    tmp_path: Path, browser: BrowserContext
) -> None:
    # Long enough attempts that a slow charge is seen running.
    definitions = write_definitions(tmp_path / "sagas.yaml", step_deadline="10s")
    async with (
        running_stack(tmp_path, definitions=definitions) as stack,
        running_console(stack, tmp_path / "console") as url,
    ):
        done = await stack.place("alice", items=[("SKU-BOOK", 2), ("SKU-MUG", 1)])
        declined = await stack.place("dave", items=[("SKU-MUG", 1)], to="Atlantis")
        assert (done.status, declined.status) == (
            pb.SAGA_STATUS_COMPLETED,
            pb.SAGA_STATUS_COMPENSATED,
        )
        page, problems = await open_page(browser, f"{url}/#/")
        await page.evaluate("window.sagawireMarker = 'not reloaded'")

        # The list: both sagas with their status, the counts above them.
        row = 'tr.saga-row[data-saga-id="{}"][data-status="{}"]'
        await page.wait_for_selector(row.format(done.saga_id, "completed"))
        await page.wait_for_selector(row.format(declined.saga_id, "compensated"))
        assert await page.inner_text('[data-count="completed"] .n') == "1"
        assert await page.inner_text('[data-count="compensated"] .n') == "1"
        # An order placed while the list is open appears in it, and in the counts.
        later = await stack.place("bob", items=[("SKU-MUG", 1)])
        await page.wait_for_selector(row.format(later.saga_id, "completed"))
        await page.wait_for_function(
            "() => document.querySelector('[data-count=\"completed\"] .n').textContent === '2'"
        )

        # The compensated saga: the rejected node, the pivot, the compensations in order.
        await page.click(f'tr.saga-row[data-saga-id="{declined.saga_id}"] a')
        await page.wait_for_selector('tr.transition[data-kind="saga_compensated"]')
        drawn = await nodes(page)
        assert {name: n["status"] for name, n in drawn.items()} == {
            "create_order": "compensated",
            "reserve_stock": "compensated",
            "charge_payment": "compensated",
            "schedule_shipment": "rejected",
            "approve_order": "pending",
        }
        for node in drawn.values():
            assert node["fill"] == FILL[node["status"]], drawn
        assert [name for name, n in drawn.items() if n["pivot"]] == ["schedule_shipment"]
        # reserve and charge were undone side by side, the order last.
        assert {name: n["wave"] for name, n in drawn.items() if n["wave"]} == {
            "reserve_stock": "1",
            "charge_payment": "1",
            "create_order": "2",
        }
        listed = await page.eval_on_selector_all(
            "ol.compensations li", "items => items.map(i => i.dataset.step)"
        )
        assert listed[-1] == "create_order" and set(listed[:2]) == {
            "reserve_stock",
            "charge_payment",
        }
        assert await page.locator("path.reverse").count() == 4
        assert "UNSERVICEABLE_DESTINATION" in await page.inner_text("#failure")
        await page.wait_for_selector("table.waterfall, #no-trace")
        await page.screenshot(
            path=screenshots(tmp_path) / "console-compensated.png", full_page=True
        )

        # The completed saga: every step green.
        await go(page, f"#/sagas/{done.saga_id}")
        await page.wait_for_selector(f'h1[data-saga-id="{done.saga_id}"][data-status="completed"]')
        drawn = await nodes(page)
        assert {n["status"] for n in drawn.values()} == {"succeeded"}
        assert {n["fill"] for n in drawn.values()} == {FILL["succeeded"]}
        assert await page.locator("path.reverse").count() == 0
        await page.wait_for_selector("table.waterfall, #no-trace")
        await page.screenshot(path=screenshots(tmp_path) / "console-completed.png", full_page=True)

        # A saga followed live while it runs: payment answers in 3 s.
        await stack.faults("payment", charge=(0, 3000))
        slow = await stack.place("alice", items=[("SKU-MUG", 1)], wait=False)
        await go(page, f"#/sagas/{slow.saga_id}")
        await page.wait_for_selector('g.node[data-step="charge_payment"][data-status="running"]')
        drawn = await nodes(page)
        assert drawn["charge_payment"]["fill"] == FILL["running"]
        assert drawn["approve_order"]["status"] == "pending"
        before = await page.locator("tr.transition").count()
        await page.wait_for_selector('g.node[data-step="approve_order"][data-status="succeeded"]')
        await page.wait_for_selector('#live[data-state="settled"]')
        assert await page.locator("tr.transition").count() > before
        assert await page.get_attribute("h1[data-saga-id]", "data-status") == "completed"
        assert await page.evaluate("window.sagawireMarker") == "not reloaded"
        assert problems == []


async def test_retry_is_an_operators_only(tmp_path: Path, browser: BrowserContext) -> None:
    definitions = write_definitions(
        tmp_path / "sagas.yaml",
        compensation_retry={"max_attempts": 2, "initial_backoff": "10ms", "max_backoff": "10ms"},
    )
    async with (
        running_stack(tmp_path, definitions=definitions) as stack,
        running_console(stack, tmp_path / "console") as url,
    ):
        # The refund fails for good: the saga needs attention.
        await stack.faults("payment", refund=(-1, 0))
        stuck = await stack.place("alice", items=[("SKU-LAMP", 1)], to="Atlantis")
        assert stuck.status == pb.SAGA_STATUS_NEEDS_ATTENTION

        # Alice signs in with her own (customer) token: she sees her saga, not the button.
        page, problems = await open_page(browser, f"{url}/#/signin")
        await page.fill("#token", api_token(Role.CUSTOMER, "alice"))
        await page.click("#signin-form button[type=submit]")
        await page.wait_for_selector('#whoami[data-role="customer"]')
        await go(page, f"#/sagas/{stuck.saga_id}")
        await page.wait_for_selector('h1[data-status="needs_attention"]')
        await page.wait_for_selector("#needs-operator")
        assert await page.locator("#retry").count() == 0
        refused = await page.evaluate(
            """id => fetch(`/api/sagas/${id}/retry`, {method: "POST",
                headers: {"x-sagawire-console": "1"}}).then(r => r.status)""",
            stuck.saga_id,
        )
        assert refused == 403
        assert (await stack.saga(stuck.saga_id)).status == pb.SAGA_STATUS_NEEDS_ATTENTION
        await go(page, "#/breakers")
        await page.wait_for_selector('[data-problem="PERMISSION_DENIED"]')
        await go(page, f"#/sagas/{stuck.saga_id}")

        # Signed out, the console's own operator credential: the button, and it works.
        await page.click("#signout")
        await page.wait_for_selector('#whoami[data-role="operator"]')
        await page.wait_for_selector("#retry")
        await stack.faults("payment")
        await page.click("#retry")
        await page.wait_for_selector('h1[data-status="compensated"]')
        await page.wait_for_selector(
            'g.node[data-step="charge_payment"][data-status="compensated"]'
        )
        assert (await stack.saga(stuck.saga_id)).status == pb.SAGA_STATUS_COMPENSATED
        # The breakers, live: payment's saw the refunds fail.
        await go(page, "#/breakers")
        for participant in ("order", "inventory", "payment", "shipping"):
            await page.wait_for_selector(
                f'tr[data-participant="{participant}"][data-state="closed"]'
            )
        # The browser logs the refused fetch above; nothing else went wrong.
        assert [p for p in problems if "status of 403" not in p] == []
