#!/usr/bin/env bash
# Install what is needed, then check formatting, lint, types, and run the tests.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
# The compose file is validated by Debian's docker-compose when it can be had (no engine
# needed); without it the tests still run their own structural check of the file.
if ! command -v docker-compose >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing docker-compose (apt) to validate docker-compose.yml" >&2
  apt-get install -y -qq docker-compose >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq docker-compose >/dev/null 2>&1; } \
    || echo "could not install docker-compose; its check will be skipped" >&2
fi
# The console's browser tests drive Debian's Chromium (no browser download); without it
# they skip, saying how to get it, except in CI (CI=true), where they fail.
if [ ! -x /usr/bin/chromium ] && [ -z "${SAGAWIRE_CHROMIUM:-}" ] && [ "$(id -u)" = 0 ] \
  && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (apt) for the console's browser tests" >&2
  apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } \
    || echo "could not install chromium; the browser tests will skip (and fail in CI)" >&2
fi
ruff format --check .
ruff check .
mypy
# Two workers, one test file each at a time (a file's tests share its fixtures and may
# use fixed resources, such as the demo's default ports); "-n 0" after it runs serially.
pytest -n 2 --dist loadfile "$@"   # exits 5 (a failure) if it collects no tests
