#!/usr/bin/env bash
# Set the host up (idempotent) and run the whole test suite against the real kernel.
# Extra arguments go to pytest, e.g.: bash scripts/test.sh -m "not slow" -x
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# The PostgreSQL tests' server: started here unless MIGRATOR_TEST_PG_URL already names one (.ci/run
# starts it first; a developer may point it at their own server).
if [ -z "${MIGRATOR_TEST_PG_URL:-}" ]; then
    PG_EXPORT="$(bash "$ROOT/scripts/postgres.sh")"  # an assignment, so set -e stops on a failure
    eval "$PG_EXPORT"
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
