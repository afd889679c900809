"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from common.certs import ensure_certs
from common.tokens import KEY_FILE, ensure_signing_key
from tests.support import Cluster, start_cluster

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist starts its workers with COLUMNS=80 and LINES=24; the tests expect the
    # environment of a plain pytest run, where output into a pipe has no set width.
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


@pytest.fixture(scope="session", autouse=True)
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One CA and a certificate per identity for the whole session (mutual TLS).

    Every server and client of the tests, in-process or a subprocess, finds them through
    ``SAGAWIRE_CERTS_DIR``; a test that wants other certificates passes its own paths.
    """
    directory = tmp_path_factory.mktemp("certs")
    ensure_certs(directory)
    previous = os.environ.get("SAGAWIRE_CERTS_DIR")
    os.environ["SAGAWIRE_CERTS_DIR"] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop("SAGAWIRE_CERTS_DIR", None)
        else:
            os.environ["SAGAWIRE_CERTS_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def token_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One token signing key for the whole session: every coordinator of the tests verifies
    bearer tokens with it (``SAGAWIRE_TOKEN_KEY_FILE``), and test clients sign theirs
    with it (tests/coordinator_support.py: ``api_token``)."""
    path = tmp_path_factory.mktemp("tokens") / KEY_FILE
    ensure_signing_key(path)
    previous = os.environ.get("SAGAWIRE_TOKEN_KEY_FILE")
    os.environ["SAGAWIRE_TOKEN_KEY_FILE"] = str(path)
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop("SAGAWIRE_TOKEN_KEY_FILE", None)
        else:
            os.environ["SAGAWIRE_TOKEN_KEY_FILE"] = previous


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """The four domain services, in-process, on ephemeral ports, with fault admin enabled."""
    running = await start_cluster(tmp_path)
    try:
        yield running
    finally:
        await running.stop()
