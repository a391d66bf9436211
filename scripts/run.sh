#!/usr/bin/env bash
# The main job: set the host up (idempotent), then run a whole staged perf -> ring migration on
# a 4-host lab (network namespaces on this machine) with the default canary.toml, live, and
# print its history. Extra arguments go to `migrator lab run`, e.g.:
#   bash scripts/run.sh --fault stall-ring     # the canary host stalls: ends ROLLED_BACK
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
"$ROOT/.venv/bin/migrator" doctor >/dev/null || { "$ROOT/.venv/bin/migrator" doctor; exit 1; }
exec "$ROOT/.venv/bin/migrator" lab run -c "$ROOT/canary.toml" "$@"
