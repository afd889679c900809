#!/usr/bin/env bash
# Install what is needed, then check formatting, lint, types, and run the tests.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
ruff format --check .
ruff check .
mypy
pytest "$@"   # exits 5 (a failure) if it collects no tests
