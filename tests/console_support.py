"""The web console against a real stack: ``sagawire console`` as its own process.

The services and the coordinator run in the test's event loop (tests/coordinator_support);
the console is the real command, a subprocess on a free port, holding the operator
token it mints with the session's signing key (SAGAWIRE_TOKEN_KEY_FILE, see conftest),
as it would on a developer's machine. Tests talk to it over HTTP with an asyncio client
(or a browser), never blocking the loop the stack runs in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2

from tests.coordinator_support import Stack
from tests.support import Process

# What the console's own requests carry when they change something (console/access.py).
CHANGES = {"x-sagawire-console": "1"}


def start_console(
    coordinator: str, data_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> Process:
    """``sagawire console`` on a free port (unless ``args`` give one), in the foreground."""
    return Process(
        ["-m", "cli.main", "console", "--port", "0", "--coordinator", coordinator,
         "--data", str(data_dir), *args],
        env={"SAGAWIRE_CONSOLE_HOST": "127.0.0.1", **(env or {})},
    )  # fmt: skip


@asynccontextmanager
async def running_console(stack: Stack, data_dir: Path) -> AsyncIterator[str]:
    """The console's base URL (http://127.0.0.1:PORT) while it runs against ``stack``."""
    process = start_console(stack.address, data_dir)
    try:
        port = await asyncio.to_thread(process.port)
        yield f"http://127.0.0.1:{port}"
    finally:
        code = await asyncio.to_thread(process.stop)
    # Only when the test's body passed (a failure above is the one to see).
    assert code == 0, f"the console exited {code}:\n{process.output}"
    assert "Traceback" not in process.output, process.output


async def read_events(
    client: httpx2.AsyncClient, path: str, until: str = "end", timeout: float = 30.0
) -> list[tuple[str, Any]]:
    """The server-sent events of ``path`` up to the first named ``until`` (included)."""
    events: list[tuple[str, Any]] = []
    async with asyncio.timeout(timeout), client.stream("GET", path) as answer:
        assert answer.status_code == 200, await answer.aread()
        name = ""
        async for line in answer.aiter_lines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: ") and name:
                events.append((name, json.loads(line[len("data: ") :])))
                if name == until:
                    return events
                name = ""
    return events
