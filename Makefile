# Thin wrappers; the scripts are the source of truth (they work without make).
.PHONY: setup run run-fault test test-fast bench clean
setup:      ; bash scripts/setup.sh
run:        ; bash scripts/run.sh
run-fault:  ; bash scripts/run.sh --fault stall-ring
test:       ; bash scripts/test.sh
test-fast:  ; bash scripts/test.sh -m "not slow"
bench:      ; .venv/bin/migrator bench consumers && .venv/bin/migrator bench rollback && .venv/bin/migrator bench controller
clean:      ; rm -rf runs .pytest_cache; .venv/bin/migrator lab down || true
