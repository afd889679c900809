"""Every setting in the README's configuration table, given a bad value, stops its process
at start with one line naming it and exit status 2 — never a traceback, never a start.

Each variable goes to a process that reads it: a domain service or the coordinator
(their entry function's settings check, :func:`services.launcher.configure` /
:func:`coordinator.app.configure`, run in-process as ``python -m`` runs it, so the whole
table takes seconds), or the CLI (the real ``sagawire`` command object). Real process
starts are in test_process_start.py.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_origin

import pytest
from pydantic import BaseModel

from cli.main import app as sagawire_app
from common.config import Endpoints, ServiceSettings, exit_on_bad_settings
from coordinator.app import configure as configure_coordinator
from coordinator.settings import CoordinatorSettings
from services.launcher import configure as configure_service
from tests.support import ROOT

README = ROOT / "README.md"
# Read only by command-line clients.
CLI_ONLY = {"SAGAWIRE_TOKEN", "SAGAWIRE_TLS_IDENTITY"}
# Kept from the session (conftest): every process of the tests trusts them.
KEPT = {"SAGAWIRE_CERTS_DIR", "SAGAWIRE_TOKEN_KEY_FILE"}
# Values no type check can refuse; "{file}", "{missing}", "{garbage}" are paths made per test.
EXPLICIT = {
    "SAGAWIRE_HOST": "no such host!",
    "SAGAWIRE_DATA_DIR": "{file}",
    "SAGAWIRE_CERTS_DIR": "{file}",
    "SAGAWIRE_TLS_CA_FILE": "{missing}",
    "SAGAWIRE_TLS_CERT_FILE": "{missing}",
    "SAGAWIRE_TLS_KEY_FILE": "{missing}",
    "SAGAWIRE_TLS_IDENTITY": "nobody",
    "SAGAWIRE_TOKEN": "not-a-token",
    "SAGAWIRE_TOKEN_KEY_FILE": "{garbage}",
    "SAGAWIRE_TOKEN_ISSUER": "",
    "SAGAWIRE_TOKEN_AUDIENCE": "",
    "SAGAWIRE_TOKEN_ROLE_CLAIM": "",
    "SAGAWIRE_TOKEN_JWKS_URL": "not a url",
    "SAGAWIRE_SEED_FILE": "{missing}",
    "SAGAWIRE_FAULTS": '{"actions": {"chrage": {"fail_next": 1}}}',
    "SAGAWIRE_DEFINITIONS_FILE": "{missing}",
    "SAGAWIRE_BULKHEADS": '{"nobody": 2}',
    "SAGAWIRE_SAGA_LOG": "mysql://db.example/sagas",
    "SAGAWIRE_EVENTS": "carrier-pigeon://loft",
    "SAGAWIRE_EVENTS_CREDENTIALS": "{missing}",
    "SAGAWIRE_STORE": "mysql://db.example/order",
    "SAGAWIRE_ADMIN_PORT": "lots",
    "SAGAWIRE_ADMIN_HOST": "no such host!",
}


def readme_variables() -> list[str]:
    """The variables of the README's configuration table, abbreviations spelled out."""
    text = README.read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    found: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `SAGAWIRE_"):
            continue
        names = re.findall(r"`(SAGAWIRE_[A-Z_<>]+|_[A-Z_]+)`", line.split("|")[1])
        first = names[0]
        if first == "SAGAWIRE_<NAME>_ADDR":
            found += [f"SAGAWIRE_{f.upper()}" for f in Endpoints.model_fields]
            continue
        found.append(first)
        for short in names[1:]:  # `_CERT_FILE` after `SAGAWIRE_TLS_CA_FILE`
            words = short.strip("_").split("_")
            found.append("_".join(first.split("_")[: -len(words)] + words))
    return found


def _field(variable: str) -> tuple[type[BaseModel], str] | None:
    field = variable.removeprefix("SAGAWIRE_").lower()
    for cls in (ServiceSettings, CoordinatorSettings, Endpoints):
        if field in cls.model_fields:
            return cls, field
    return None


def reader(variable: str) -> str:
    """The process the test starts with ``variable`` set: "order", "coordinator", "cli"."""
    if variable in CLI_ONLY:
        return "cli"
    found = _field(variable)
    assert found is not None, f"{variable} is in the README but no process reads it"
    return "order" if found[0] is ServiceSettings else "coordinator"


def bad_value(variable: str) -> str:
    """A value the variable's process must refuse: by its type, or the explicit one."""
    if variable in EXPLICIT:
        return EXPLICIT[variable]
    found = _field(variable)
    assert found is not None, variable
    cls, field = found
    annotation: Any = cls.model_fields[field].annotation
    if annotation is bool:
        return "perhaps"
    if annotation in (int, float):
        return "lots"
    if get_origin(annotation) is Literal:
        return "sideways"
    if get_origin(annotation) in (dict, list, tuple) or (
        isinstance(annotation, type) and issubclass(annotation, BaseModel)
    ):
        return "{not json"
    if field.endswith("_addr"):
        return "nonsense"
    for constraint in cls.model_fields[field].metadata:  # a constrained string
        if getattr(constraint, "pattern", None):
            return "does not match!"
        if getattr(constraint, "max_length", None):
            return "x" * (constraint.max_length + 1)
        if getattr(constraint, "min_length", None):
            return ""
    raise AssertionError(f"{variable} ({annotation}): add a bad value to EXPLICIT")


def _settle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, value: str) -> None:
    for key in [k for k in os.environ if k.startswith("SAGAWIRE_") and k not in KEPT]:
        monkeypatch.delenv(key)
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "garbage.key").write_text("not a key\n")
    paths = {
        "{file}": tmp_path / "a-file",
        "{missing}": tmp_path / "missing",
        "{garbage}": tmp_path / "garbage.key",
    }
    monkeypatch.setenv("SAGAWIRE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SAGAWIRE_COORDINATOR_ADDR", "127.0.0.1:1")
    monkeypatch.setenv(variable, str(paths.get(value, value)))


def start(process: str) -> None:
    """What the process does first; raises SystemExit when it stops."""
    if process == "cli":
        sagawire_app(["breakers"], prog_name="sagawire")
    with exit_on_bad_settings(process):
        if process == "coordinator":
            configure_coordinator()
        else:
            configure_service(process)


def test_the_readme_table_is_read_whole() -> None:
    variables = readme_variables()
    assert len(variables) == len(set(variables)) > 50
    assert {"SAGAWIRE_TLS_KEY_FILE", "SAGAWIRE_TOKEN_AUDIENCE", "SAGAWIRE_PAYMENT_ADDR"} <= set(
        variables
    )


@pytest.mark.parametrize("variable", readme_variables())
def test_a_bad_value_ends_the_process_with_one_line_naming_it(
    variable: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    process = reader(variable)
    _settle_env(monkeypatch, tmp_path, variable, bad_value(variable))
    with pytest.raises(SystemExit) as stopped:
        start(process)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, (process, err)
    lines = err.strip().splitlines()
    name = "sagawire" if process == "cli" else process
    assert len(lines) == 1 and lines[0].startswith(f"{name}: {variable}: "), err
