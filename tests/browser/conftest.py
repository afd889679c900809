"""A real browser for the console's tests: Debian's Chromium, driven by Playwright.

No browser is downloaded: Playwright drives the installed one by its path
(``SAGAWIRE_CHROMIUM``, else ``/usr/bin/chromium``; scripts/test.sh installs Debian's
``chromium`` when it runs as root with apt). Without it these tests skip, saying how
to get it — except in CI (``CI=true``), where a skipped browser test would hide a
broken page, so they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

# Headless, and nothing that reaches beyond this machine or outlives the test.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_HOW = (
    "install Debian's chromium (apt-get install chromium; scripts/test.sh does it when run"
    " as root) or set SAGAWIRE_CHROMIUM to a Chromium executable"
)


def chromium_path() -> str | None:
    for candidate in (
        os.environ.get("SAGAWIRE_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _unavailable(why: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser tests cannot run in CI: {why}; {_HOW}")
    pytest.skip(f"browser tests skipped: {why}; {_HOW}")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A fresh Chromium profile (its own --user-data-dir) for one test."""
    executable = chromium_path()
    if executable is None:
        _unavailable("no Chromium found")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            await context.close()
