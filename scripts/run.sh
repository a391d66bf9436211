#!/usr/bin/env bash
# The main job: set the host up (idempotent), then migrate an operator's pipeline, the flowlog
# example (examples/flowlog: its own tc program with variable-size records and its own
# consumer), from perf buffer to ring buffer across a 4-host lab (network namespaces on this
# machine), live; print its history and, per host, the events the consumer acted on against
# the packets sent. Extra arguments go to `migrator lab run`, e.g.:
#   bash scripts/run.sh --fault stall-ring     # the canary host stalls: ends ROLLED_BACK
# The demo probes (canary.toml at the top) stay for the benches and tests:
#   .venv/bin/migrator lab run -c canary.toml
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
"$ROOT/.venv/bin/migrator" doctor >/dev/null || { "$ROOT/.venv/bin/migrator" doctor; exit 1; }
exec "$ROOT/.venv/bin/migrator" lab run -c "$ROOT/examples/flowlog/canary.toml" "$@"
