"""Static checks of the Compose stack, since this machine has no Docker engine.

The compose file is validated by ``docker-compose config -q`` when the binary is
installed, and by a structural check always; then it is checked against the code:
every process it starts is a ``sagawire serve`` target, every ``SAGAWIRE_*``
variable is a setting that accepts its value, ports and addresses agree with the
ports the processes listen on (all published on 127.0.0.1, the services' too), one
image is built once and run by every Sagawire container, Jaeger has a health check,
and the processes' health-check command works against a real server and costs little.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from grpc_health.v1 import health_pb2
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from cli.health import check
from cli.main import ServiceName
from common.config import DEFAULT_PORTS, SERVICE_NAMES, Endpoints, ServiceSettings
from common.server import RunningServer, start_server
from services.launcher import spec_of
from services.runtime import DomainService
from tests.support import ROOT, service_settings

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROCESSES = ("coordinator", *SERVICE_NAMES)
_VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${NAME}`` / ``${NAME:-default}`` substitution, recursively."""
    if isinstance(value, str):
        return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves anchors and << merges
    assert isinstance(raw, dict)
    resolved = interpolate(raw, env or {})
    assert isinstance(resolved, dict)
    return resolved


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def listen_port(name: str, service: dict[str, Any]) -> int:
    """The port a process listens on: SAGAWIRE_PORT, else its default (as the launcher does)."""
    return int(environment(service).get("SAGAWIRE_PORT", DEFAULT_PORTS[name]))


# --- the file is valid Compose ---------------------------------------------------------


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("mode", ["", "choreography"])
def test_docker_compose_accepts_the_file(mode: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SAGAWIRE_MODE"}
    if mode:
        env["SAGAWIRE_MODE"] = mode
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_file_has_the_structure_of_a_compose_file(compose: dict[str, Any]) -> None:
    assert set(compose) - {"services", "volumes", "networks"} <= {
        k for k in compose if k.startswith("x-")
    }
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        assert "image" in service or "build" in service, name
        assert isinstance(service.get("command", []), list), name
        for mount in service.get("volumes") or []:
            source = str(mount).split(":", 1)[0]
            assert source.startswith(("/", ".")) or source in declared_volumes, (name, mount)
        for port in service.get("ports") or []:
            # Published on this host only.
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", str(port)), (name, port)
        for dependency, rule in (service.get("depends_on") or {}).items():
            assert dependency in compose["services"], (name, dependency)
            assert rule["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }, name
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in compose["services"][dependency], dependency
        if "healthcheck" in service:
            check_ = service["healthcheck"]
            assert check_["test"][0] in {"CMD", "CMD-SHELL"}, name
            assert {"interval", "timeout", "retries"} <= set(check_), name


# --- the file agrees with the code -----------------------------------------------------


def test_the_stack_is_the_certificates_the_five_processes_and_their_telemetry(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    by_default = {name for name, service in services.items() if not service.get("profiles")}
    assert by_default == {"jaeger", "otel-collector", "prometheus", "certs", "console", *PROCESSES}
    jaeger = services["jaeger"]
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", jaeger["image"])  # pinned v2
    assert jaeger["ports"] == ["127.0.0.1:16686:16686"]  # OTLP goes to the collector
    collector = services["otel-collector"]
    assert re.fullmatch(
        r"otel/opentelemetry-collector(-contrib)?:\d+\.\d+\.\d+", collector["image"]
    )
    assert collector["ports"] == ["127.0.0.1:4317:4317"]
    prometheus = services["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", prometheus["image"])
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    for name in PROCESSES:
        env = environment(services[name])
        # Spans and metrics both go to the collector; nothing turns metrics off.
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name
        assert env.get("OTEL_METRICS_EXPORTER", "otlp") == "otlp", name
        assert services[name]["depends_on"]["otel-collector"] == {"condition": "service_started"}
        assert env["SAGAWIRE_HOST"] == "0.0.0.0", name
        assert f"{name}-data:{env['SAGAWIRE_DATA_DIR']}" in services[name]["volumes"], name
    for name in ("otel-collector", "prometheus"):
        assert services[name]["read_only"] is True, name
        assert services[name]["cap_drop"] == ["ALL"], name


def _mounted(service: dict[str, Any], target: str) -> dict[str, Any]:
    """The YAML file of the repository that ``service`` mounts (read-only) at ``target``."""
    (source,) = [
        str(m).split(":")[0] for m in service["volumes"] if str(m).split(":")[1:] == [target, "ro"]
    ]
    assert source.startswith("./"), source
    loaded = yaml.safe_load((COMPOSE_FILE.parent / source).read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_collector_sends_traces_to_jaeger_and_metrics_to_prometheus(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    config = _mounted(services["otel-collector"], "/etc/otelcol-contrib/config.yaml")
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"
    pipelines = config["service"]["pipelines"]
    assert pipelines["traces"]["receivers"] == pipelines["metrics"]["receivers"] == ["otlp"]
    (traces,) = pipelines["traces"]["exporters"]
    assert config["exporters"][traces]["endpoint"] == "jaeger:4317"
    assert traces.split("/")[0] in {"otlp", "otlp_grpc"}
    (metrics,) = pipelines["metrics"]["exporters"]
    assert metrics.split("/")[0] == "prometheus"
    exposed = config["exporters"][metrics]["endpoint"].rsplit(":", 1)[1]
    for pipeline in pipelines.values():
        for component in pipeline.get("processors", []):
            assert component in config["processors"], component

    scraping = _mounted(services["prometheus"], "/etc/prometheus/prometheus.yml")
    targets = [
        target
        for job in scraping["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert targets == [f"otel-collector:{exposed}"]
    # The collector names each process (job "sagawire/payment"): Prometheus keeps it.
    assert all(job.get("honor_labels") for job in scraping["scrape_configs"])


def _coordinator_installed() -> bool:
    return importlib.util.find_spec("coordinator.__main__") is not None


@pytest.mark.parametrize("name", PROCESSES)
def test_every_process_is_a_sagawire_serve_target(compose: dict[str, Any], name: str) -> None:
    command = compose["services"][name]["command"]
    assert command[:2] == ["sagawire", "serve"] and command[2] == name
    targets = {member.value for member in ServiceName}
    if name not in targets and name == "coordinator" and not _coordinator_installed():
        pytest.skip("the coordinator is not installed yet")
    assert name in targets, f"`sagawire serve {name}` is not a serve target ({sorted(targets)})"


def _settings_classes(name: str) -> list[type[BaseSettings]]:
    """The settings a process reads: the domain services' or the coordinator's, plus Endpoints."""
    if name != "coordinator":
        return [ServiceSettings, Endpoints]
    for module in ("coordinator.config", "coordinator.settings", "coordinator.app"):
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    found: list[type[BaseSettings]] = []
    pending = list(BaseSettings.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("coordinator") and cls not in found:
            found.append(cls)
    return [*found, Endpoints]


def _env_names(cls: type[BaseSettings]) -> set[str]:
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {f"{prefix}{field}".upper() for field in cls.model_fields}


@pytest.mark.parametrize("name", PROCESSES)
def test_every_sagawire_variable_is_a_setting_that_accepts_its_value(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    classes = _settings_classes(name)
    if name == "coordinator" and classes == [Endpoints]:
        pytest.skip("the coordinator's settings are not installed yet")
    variables = {
        k: v for k, v in environment(compose["services"][name]).items() if k.startswith("SAGAWIRE_")
    }
    accepted = set().union(*(_env_names(cls) for cls in classes))
    assert set(variables) <= accepted, f"unknown settings: {sorted(set(variables) - accepted)}"
    for key in [k for k in os.environ if k.startswith("SAGAWIRE_")]:
        monkeypatch.delenv(key)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    for cls in classes:
        try:
            cls()
        except ValidationError as error:  # pragma: no cover - the message is the point
            pytest.fail(f"{name}: {cls.__name__} rejects the compose environment: {error}")


def test_ports_and_addresses_agree_with_where_processes_listen(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ports = {name: listen_port(name, services[name]) for name in PROCESSES}
    for name in PROCESSES:
        test = services[name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "-m", "common.health_probe"], name
        assert test[4:] == [f"127.0.0.1:{ports[name]}"], name
        for key, value in environment(services[name]).items():
            if match := re.fullmatch(r"SAGAWIRE_(\w+)_ADDR", key):
                target = match.group(1).lower()
                assert value == f"{target}:{ports[target]}", (name, key, value)
    assert services["coordinator"]["ports"] == [f"127.0.0.1:50050:{ports['coordinator']}"]
    # The services' own APIs too (events tail, poison, faults from the host), each on its
    # own port: the coordinator names them by their compose host names, which the CLI
    # replaces by the coordinator's host (127.0.0.1) when it cannot resolve them.
    for name in SERVICE_NAMES:
        assert services[name]["ports"] == [f"127.0.0.1:{ports[name]}:{ports[name]}"], name
    dependencies = services["coordinator"]["depends_on"]
    for name in SERVICE_NAMES:
        assert dependencies[name] == {"condition": "service_healthy"}


def test_each_process_gets_its_own_key_read_only_and_admin_stays_off(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    certs = services["certs"]
    assert certs["command"][:2] == ["sagawire", "certs"]
    out = certs["command"][certs["command"].index("--export") + 1]
    ca = certs["command"][certs["command"].index("--dir") + 1]
    exported = {str(m).split(":")[1]: str(m).split(":")[0] for m in certs["volumes"]}
    for name in PROCESSES:
        service = services[name]
        env = environment(service)
        own = exported[f"{out}/{name}"]
        assert f"{own}:{env['SAGAWIRE_CERTS_DIR']}:ro" in service["volumes"], name
        # No other identity's key and never the CA's key.
        mounted = {str(m).split(":")[0] for m in service["volumes"]}
        assert mounted & set(exported.values()) == {own}, name
        assert exported[ca] not in mounted, name
        assert env.get("SAGAWIRE_TLS", "on") != "off", name
        assert env["SAGAWIRE_TLS_IDENTITY"] == name  # the health check's certificate
        assert service["depends_on"]["certs"] == {"condition": "service_completed_successfully"}
        if name != "coordinator":
            assert env["SAGAWIRE_ADMIN_ENABLED"] == "false", name
    for name in (*PROCESSES, "certs"):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    dockerfile = (ROOT / "Dockerfile").read_text()
    for path in ("/certs", "/ca", "/out"):
        assert path in dockerfile  # made and owned by the user, so the volumes are writable


def test_the_mode_is_one_variable_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """``SAGAWIRE_MODE=choreography docker compose up`` sets the coordinator's saga mode."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["coordinator"]["environment"]
    (key,) = [k for k, v in raw.items() if v == "${SAGAWIRE_MODE:-orchestration}"]
    classes = _settings_classes("coordinator")
    if classes == [Endpoints]:
        pytest.skip("the coordinator's settings are not installed yet")
    for mode, expected in (("", "orchestration"), ("choreography", "choreography")):
        env = {"SAGAWIRE_MODE": mode} if mode else {}
        value = environment(load_compose(env)["services"]["coordinator"])[key]
        assert value == expected
        monkeypatch.setenv(key, value)
        loaded = [cls().model_dump() for cls in classes]
        assert any(expected in settings.values() for settings in loaded), (key, loaded)


def _starts_after(services: dict[str, Any], name: str, first: str) -> bool:
    """Whether ``name`` waits, directly or through its dependencies, for ``first``."""
    waits_for = list(services[name].get("depends_on") or {})
    return first in waits_for or any(_starts_after(services, d, first) for d in waits_for)


def test_one_image_is_built_once_and_run_by_every_sagawire_container(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    ours = {
        name: service
        for name, service in services.items()
        if service.get("image") == "sagawire:dev" or "build" in service
    }
    assert set(PROCESSES) | {"certs"} <= set(ours)
    builders = [name for name, service in ours.items() if "build" in service]
    assert builders == ["certs"]  # it starts first: every other service waits for it
    assert ours["certs"]["build"] == "." and ours["certs"]["image"] == "sagawire:dev"
    for name, service in ours.items():
        assert service["image"] == "sagawire:dev", name
        if name != "certs":
            # Never pulled (no registry has it), never built twice.
            assert service["pull_policy"] == "never", name
            assert _starts_after(services, name, "certs"), name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "sagawire:dev" in dockerfile


def test_jaeger_has_a_health_check_and_the_collector_waits_for_it(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    test = services["jaeger"]["healthcheck"]["test"]
    assert test[0] == "CMD" and "http://127.0.0.1:13133/status" in test
    assert services["otel-collector"]["depends_on"]["jaeger"] == {"condition": "service_healthy"}


def test_the_image_is_slim_non_root_and_installs_the_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "pip install /src" in dockerfile
    assert re.search(r"^USER sagawire$", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".sagawire", "tests"} <= set(ignored)
    # What the image needs comes from the package: generated code and the seed data.
    assert (ROOT / "services" / "seed.toml").exists()
    assert list((ROOT / "protos" / "sagawire" / "v1").glob("*_pb2.py"))


# --- the health check runs against a real server ----------------------------------------


@pytest.fixture
async def inventory(tmp_path: Path) -> AsyncIterator[RunningServer]:
    settings = service_settings(tmp_path)
    running = await start_server(DomainService(spec_of("inventory"), settings), settings)
    try:
        yield running
    finally:
        await running.stop()


async def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


def _as_local_command(test: list[str], port: int) -> list[str]:
    """The compose health check as this machine runs it: same arguments, the test's port."""
    assert test[:2] == ["CMD", "python"]
    return [
        sys.executable,
        *(re.sub(r"^127\.0\.0\.1:\d+$", f"127.0.0.1:{port}", arg) for arg in test[2:]),
    ]


def _probe_env(compose: dict[str, Any], name: str) -> dict[str, str]:
    """The container's identity as compose gives it (the session's certificates)."""
    identity = environment(compose["services"][name])["SAGAWIRE_TLS_IDENTITY"]
    return {**os.environ, "SAGAWIRE_TLS_IDENTITY": identity}


async def test_the_compose_health_check_command_works_against_a_real_server(
    compose: dict[str, Any], inventory: RunningServer
) -> None:
    test = compose["services"]["inventory"]["healthcheck"]["test"]
    command = _as_local_command(test, inventory.port)
    env = _probe_env(compose, "inventory")
    code, output = await _run(command, env)
    assert (code, output.strip()) == (0, f"{inventory.address}: SERVING")

    assert await asyncio.to_thread(check, inventory.address, "sagawire.v1.Inventory") == "SERVING"
    assert await asyncio.to_thread(check, inventory.address, "no.such.Service") == "NOT_FOUND"
    await inventory.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    code, output = await _run(command, env)
    assert (code, output.strip()) == (1, f"{inventory.address}: NOT_SERVING")


async def test_the_health_check_imports_only_grpc_and_its_health_stubs(
    compose: dict[str, Any], inventory: RunningServer
) -> None:
    """Five containers checked every few seconds: each check must cost little, so the
    probe loads none of what makes a process start slowly (the whole CLI costs ten times
    the CPU). Asserted on what it imports, which CPU time on a shared machine is not."""
    command = _as_local_command(
        compose["services"]["inventory"]["healthcheck"]["test"], inventory.port
    )
    env = {**_probe_env(compose, "inventory"), "PYTHONPROFILEIMPORTTIME": "1"}
    done = await asyncio.to_thread(
        subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # "import time: self [us] | cumulative | imported package", one line per module.
    imported = {
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert {"grpc", "grpc_health.v1.health_pb2_grpc"} <= imported
    heavy = ("opentelemetry", "pydantic", "typer", "rich", "psycopg", "nats", "yaml", "cli")
    loaded = sorted(m for m in imported if m.partition(".")[0] in heavy)
    ours = sorted(m for m in imported if m.partition(".")[0] in {"common", "coordinator"})
    assert loaded == [], f"the health probe imports {loaded}"
    assert ours == ["common"], ours  # the package of the probe, run as __main__


async def test_the_health_check_fails_when_nobody_listens(inventory: RunningServer) -> None:
    address = inventory.address
    await inventory.stop()
    code, output = await _run(
        [sys.executable, "-m", "cli.main", "health", address, "--timeout", "1"]
    )
    assert code == 6  # could not reach it
    assert output.strip() in {
        f"{address} (server): UNAVAILABLE",
        f"{address} (server): DEADLINE_EXCEEDED",
    }
    code, output = await _run([sys.executable, "-m", "common.health_probe", address, "1"])
    assert code == 1
    assert output.strip() in {f"{address}: UNAVAILABLE", f"{address}: DEADLINE_EXCEEDED"}
