"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import Cluster, start_cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """The four domain services, in-process, on ephemeral ports, with fault admin enabled."""
    running = await start_cluster(tmp_path)
    try:
        yield running
    finally:
        await running.stop()
