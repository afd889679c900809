"""The compose file's ``scale`` profile: PostgreSQL and two coordinator replicas sharing
their saga log in it, beside NATS, and each service twice on its own schema. Static checks, as in
test_compose.py: this machine has no engine."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
from pydantic import ValidationError

from common.config import Endpoints, ServiceSettings
from coordinator.log.postgres import is_postgres_url
from coordinator.settings import CoordinatorSettings
from tests.integration.test_compose import COMPOSE_FILE, environment, load_compose

REPLICAS = ("coordinator-a", "coordinator-b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_scale_profile() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--profile", "scale", "config", "-q"],
        env={k: v for k, v in os.environ.items() if k != "SAGAWIRE_MODE"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_profile_is_postgres_and_two_replicas_on_one_log(compose: dict[str, Any]) -> None:
    services = compose["services"]
    scaled = {name for name, s in services.items() if "scale" in (s.get("profiles") or [])}
    assert {"postgres", *REPLICAS} <= scaled  # and NATS (the events' part of the profile)
    logs = {environment(services[name])["SAGAWIRE_SAGA_LOG"] for name in REPLICAS}
    (url,) = logs  # one log for both
    assert is_postgres_url(url) and "@postgres:5432/" in url
    assert "ports" not in services["postgres"]  # the compose network only
    names = {environment(services[name])["SAGAWIRE_REPLICA_ID"] for name in REPLICAS}
    assert names == set(REPLICAS)  # stable names: a restarted replica takes its sagas back
    published = [port for name in REPLICAS for port in services[name]["ports"]]
    assert published == ["127.0.0.1:50060:50050", "127.0.0.1:50061:50050"]
    first = services["coordinator-a"]
    assert first["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert services["coordinator-b"]["depends_on"]["coordinator-a"]["condition"] == (
        "service_healthy"
    )
    # One data dir (and so one token signing key) for both; the coordinator's certificate.
    for name in REPLICAS:
        volumes = services[name]["volumes"]
        assert "coordinator-replicas-data:/data" in volumes, name
        assert "certs-coordinator:/certs:ro" in volumes, name
        assert environment(services[name])["SAGAWIRE_TLS_IDENTITY"] == "coordinator"


@pytest.mark.parametrize("name", REPLICAS)
def test_each_replica_s_settings_accept_the_compose_environment(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("SAGAWIRE_")]:
        monkeypatch.delenv(key)
    for key, value in environment(compose["services"][name]).items():
        if key.startswith("SAGAWIRE_"):
            monkeypatch.setenv(key, value)
    try:
        settings = CoordinatorSettings()
    except ValidationError as error:  # pragma: no cover - the message is the point
        pytest.fail(f"{name}: the compose environment is refused: {error}")
    assert settings.saga_log and settings.replica_id == name


SCALED_SERVICES = ("order", "inventory", "payment", "shipping")


@pytest.mark.parametrize("name", SCALED_SERVICES)
def test_each_service_runs_twice_on_postgres_with_events_on_nats(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose["services"][f"{name}-scale"]
    assert "scale" in service["profiles"] and service["deploy"]["replicas"] == 2
    env = environment(service)
    assert env["SAGAWIRE_TLS_IDENTITY"] == name
    assert f"certs-{name}:/certs:ro" in service["volumes"]
    assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert service["depends_on"]["nats"] == {"condition": "service_healthy"}
    for key in [k for k in os.environ if k.startswith("SAGAWIRE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SAGAWIRE_"):
            monkeypatch.setenv(key, value)
    settings = ServiceSettings()
    assert "@postgres:5432/" in settings.store and settings.events_on_nats  # replicas need both
    assert settings.store_schema(name) == f"scale_{name}"  # a schema of its own
    assert "ports" not in service  # two replicas cannot share a host port


def test_the_coordinator_replicas_call_the_scaled_services_round_robin(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for replica in REPLICAS:
        env = environment(compose["services"][replica])
        for name in SCALED_SERVICES:
            assert env[f"SAGAWIRE_{name.upper()}_ADDR"].startswith(f"dns:///{name}-scale:")
        assert env["SAGAWIRE_EVENTS_PREFIX"] == "scale" and env["SAGAWIRE_EVENTS"].startswith(
            "nats://"
        )
        for key, value in env.items():
            if key.endswith("_ADDR"):
                monkeypatch.setenv(key, value)
        Endpoints()  # accepted
