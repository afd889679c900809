"""The web console in docker-compose.yml agrees with the code: it runs ``sagawire
console``, reaches the coordinator where compose serves it, as the operator's
certificate, holds no credential (it does not listen on a loopback address inside
its container), reads traces from Jaeger and links to Jaeger's UI on the host, and
its health check answers against a real console."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.main import app
from console.access import is_loopback
from tests.console_support import start_console
from tests.integration.test_compose import environment, listen_port, load_compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_the_console_is_a_client_of_the_coordinator_with_no_credential(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    console = services["console"]
    assert console["command"] == ["sagawire", "console"]
    assert "console" in {
        c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands
    }
    env = environment(console)
    coordinator_port = listen_port("coordinator", services["coordinator"])
    assert env["SAGAWIRE_COORDINATOR_ADDR"] == f"coordinator:{coordinator_port}"
    assert env["SAGAWIRE_TLS_IDENTITY"] == "operator"
    assert f"certs-operator:{env['SAGAWIRE_CERTS_DIR']}:ro" in console["volumes"]
    # On every interface of its container: it holds nothing, users sign in.
    assert not is_loopback(env["SAGAWIRE_CONSOLE_HOST"])
    assert "SAGAWIRE_TOKEN" not in env
    port = env["SAGAWIRE_CONSOLE_PORT"]
    assert console["ports"] == [f"127.0.0.1:50080:{port}"]
    assert env["SAGAWIRE_JAEGER_URL"] == "http://jaeger:16686"
    assert services["jaeger"]["ports"] == ["127.0.0.1:16686:16686"]
    assert env["SAGAWIRE_CONSOLE_JAEGER_LINK"] == "http://localhost:16686"
    assert console["depends_on"]["coordinator"] == {"condition": "service_healthy"}
    assert console["read_only"] is True and console["cap_drop"] == ["ALL"]
    assert f"127.0.0.1:{port}/" in " ".join(console["healthcheck"]["test"])


async def test_the_console_health_check_works_against_a_real_console(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    test = compose["services"]["console"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    process = start_console("127.0.0.1:1", tmp_path)
    try:
        port = await asyncio.to_thread(process.port)
        script = test[3].replace("127.0.0.1:50080", f"127.0.0.1:{port}")
        probe = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", script], capture_output=True, timeout=20
        )
        assert probe.returncode == 0, probe.stderr
    finally:
        await asyncio.to_thread(process.stop)
    stopped = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, timeout=20
    )
    assert stopped.returncode != 0
