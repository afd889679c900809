"""What the package ships: its licence, and no code-generation tool at run time.

The generated protobuf code is committed, so ``grpcio-tools`` (protoc) is a development
dependency only: no module the processes or the CLI run imports it, and the image
(``pip install .``) does not install it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from tests.support import ROOT

RUNTIME_PACKAGES = ("common", "coordinator", "services", "cli", "bench", "console", "protos")
ENTRY_MODULES = (
    "cli.main",
    "coordinator.app",
    "services.launcher",
    "services.order",
    "services.inventory",
    "services.payment",
    "services.shipping",
    "common.health_probe",
)


def _project() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, object] = tomllib.load(f)["project"]
    return project


def test_the_licence_is_the_apache_license_the_project_declares() -> None:
    assert _project()["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_grpcio_tools_is_a_development_dependency_only() -> None:
    project = _project()
    runtime = [str(d) for d in project["dependencies"]]  # type: ignore[attr-defined]
    dev = [str(d) for d in project["optional-dependencies"]["dev"]]  # type: ignore[index]
    assert not [d for d in runtime if d.startswith("grpcio-tools")]
    assert [d for d in dev if d.startswith("grpcio-tools")]


def test_no_runtime_module_imports_grpc_tools() -> None:
    importers = []
    for package in RUNTIME_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n == "grpc_tools" or n.startswith("grpc_tools.") for n in names):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []
    # And at run time: every entry point imports with grpc_tools made unimportable.
    blocked = "import sys; sys.modules['grpc_tools'] = None; " + "; ".join(
        f"import {module}" for module in ENTRY_MODULES
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
