#!/usr/bin/env bash
# Install what is needed, then run the demo: start the local stack (no Docker), place orders
# that complete, are rejected and are compensated, show every saga and what the services hold.
# Extra arguments go to `sagawire demo`, e.g. scripts/demo.sh --mode choreography
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/bootstrap.sh
sagawire demo "$@"
