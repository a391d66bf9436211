#!/usr/bin/env bash
# Idempotent host set-up for migrator: installs only what is missing and says what it did.
# Needs root (BPF, mounts, apt). Safe to run any number of times.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MIGRATOR_VENV:-$ROOT/.venv}"
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "setup: must run as root (BPF programs, tracefs/bpffs mounts, apt-get)" >&2
    exit 1
fi

# Install the Debian packages of a list that are missing, saying which and what for (one apt run).
ensure_debs() {
    local why="$1"; shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages present: $* ($why)"
        return
    fi
    say "installing Debian packages: ${missing[*]} ($why)"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${APT_UPDATED:-}" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

# 1. Debian packages. python3-bpfcc is the real bcc; PyPI's "bcc" is unrelated.
ensure_debs "bcc, kernel headers, tools" python3-bpfcc bpftool linux-headers-amd64 bpftrace iproute2
# bpfcc-tools: Debian's stock bcc tools (/usr/sbin/*-bpfcc), which tests/test_wrap.py runs unmodified under wrap.
ensure_debs "stock bcc tools for the wrap tests" bpfcc-tools
# Chromium: tests/test_report.py opens `migrator report`'s HTML in a real headless browser.
ensure_debs "report test browser" chromium
# PostgreSQL: the tests run the store, controller and CLI against a real server (scripts/postgres.sh
# starts a cluster for them; psycopg comes with the venv's [postgres] extra).
ensure_debs "test database server" postgresql
# prometheus: promtool, which tests/test_alert_rules.py runs on docs/alerts/migrator-rules.yml.
ensure_debs "alert rules check (promtool)" prometheus
# systemd: systemd-analyze, which tests/test_deploy.py runs on deploy/*.service.
ensure_debs "unit file check (systemd-analyze)" systemd
# gcc: the data plane's native record loops (step 6); with libbpf-dev, the libbpf C reference
# consumer of `migrator bench overhead|consumers`, built into build/ when missing or older than its source.
ensure_debs "native record loops, bench reference consumer" gcc libbpf-dev
REF_SRC="$ROOT/migrator/tools/bench/c/refconsumer.c"
REF_BIN="$ROOT/build/refconsumer"
if [ ! -x "$REF_BIN" ] || [ "$REF_SRC" -nt "$REF_BIN" ]; then
    mkdir -p "$ROOT/build"
    gcc -O2 -Wall -Wextra -o "$REF_BIN" "$REF_SRC" -lbpf
    say "built $REF_BIN (libbpf $(dpkg-query -W -f='${Version}' libbpf-dev))"
else
    say "bench reference consumer up to date at $REF_BIN"
fi

# 2. bcc compiles against /lib/modules/$(uname -r)/build; this kernel ships none, so link the
#    Debian headers. Our BPF code never reads kernel struct fields, so the version skew is harmless.
KREL="$(uname -r)"
MODDIR="/lib/modules/$KREL"
if [ -e "$MODDIR/build/include" ]; then
    say "kernel headers present at $MODDIR/build"
else
    HDR="$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)"
    if [ -z "$HDR" ]; then
        echo "setup: no /usr/src/linux-headers-*-amd64 after installing linux-headers-amd64" >&2
        exit 1
    fi
    COMMON="${HDR%-amd64}-common"
    mkdir -p "$MODDIR"
    ln -sfn "$HDR" "$MODDIR/build"
    ln -sfn "$COMMON" "$MODDIR/source"
    say "linked $MODDIR/build -> $HDR and source -> $COMMON"
fi

# 3. Pseudo filesystems that are not mounted at boot here.
mount_if_missing() {  # type mountpoint
    if mountpoint -q "$2"; then
        say "$1 already mounted at $2"
    else
        mkdir -p "$2"
        mount -t "$1" "$1" "$2"
        say "mounted $1 at $2"
    fi
}
mount_if_missing tracefs /sys/kernel/tracing
mount_if_missing bpf /sys/fs/bpf
mount_if_missing securityfs /sys/kernel/security || true

# 4. The virtualenv with the Python dependencies.
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    say "created virtualenv $VENV ($("$VENV/bin/python" --version))"
fi
STAMP="$VENV/.migrator-deps"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
    say "installing Python dependencies into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$ROOT[test,postgres]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
    echo "$WANT" > "$STAMP"
else
    say "Python dependencies up to date in $VENV"
fi

# 5. Make Debian's bcc module (pure Python over libbcc.so) importable from the venv.
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -e "$SITE/bcc" ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$SITE/bcc"
    say "linked Debian bcc module into $SITE"
fi
"$VENV/bin/python" -c 'import bcc' || { echo "setup: bcc not importable from $VENV" >&2; exit 1; }

# 6. The data plane's record loops in C (migrator/dataplane/native.c), built with gcc (step 1) when
#    missing or older than the source; it says whether it built.
"$VENV/bin/python" -m migrator.dataplane.native 2>&1 | sed 's/^native: /setup: /'
say "ready: $VENV/bin/migrator"
