#!/usr/bin/env bash
# Start the local PostgreSQL cluster the tests use (idempotent) and print its URL.
#
#   eval "$(bash scripts/postgres.sh)"      # exports MIGRATOR_TEST_PG_URL (scripts/test.sh does this)
#
# A cluster of its own, made with Debian's tools (pg_createcluster / pg_ctlcluster): "migrator" of
# the newest installed server, port 5433 (MIGRATOR_PG_PORT), socket in /var/run/postgresql, so it
# neither needs nor touches Debian's "main" cluster. It holds only throwaway test databases, so it
# runs with fsync off (a crash of the machine may lose it; the script then recreates nothing but
# what it needs). Its role migrator_test (superuser: the tests create and drop databases) logs in
# with a password, over TCP on 127.0.0.1 and over the unix socket (the lab's agents run inside
# network namespaces, where 127.0.0.1 is the namespace's own loopback: they use the socket).
# The password is generated once and kept in the cluster's config directory, readable by root only.
# Messages go to stderr; stdout carries only the export line. Everything the commands print goes
# to stderr too (pg_ctlcluster, for one, prints "Removed stale pid file." on stdout after a crash or
# a reboot), so nothing but that line reaches the caller's eval. (Not through a spare descriptor:
# the server pg_ctlcluster starts would inherit it and the caller's $(...) would never end.)
set -euo pipefail

main() {
PORT="${MIGRATOR_PG_PORT:-5433}"
NAME=migrator
ROLE=migrator_test
SOCKDIR=/var/run/postgresql
say() { printf 'postgres: %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    echo "postgres: must run as root (creates and starts a PostgreSQL cluster)" >&2
    exit 1
fi

# The server itself: Debian's postgresql (scripts/setup.sh installs it too; CI may call this first).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v pg_createcluster >/dev/null; then
    say "installing Debian package: postgresql"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
VER="$(ls /usr/lib/postgresql | sort -V | tail -1)"
CONFDIR="/etc/postgresql/$VER/$NAME"

create() {
    pg_createcluster "$VER" "$NAME" -p "$PORT" >/dev/null
    say "created cluster $VER/$NAME on port $PORT"
}

# Settings of a test cluster (rewritten every time, so a changed line here takes effect).
configure() {
cat > "$CONFDIR/conf.d/migrator-test.conf" <<EOF
# written by migrator's scripts/postgres.sh: a throwaway cluster for the test suite
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$SOCKDIR'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
cat > "$CONFDIR/pg_hba.conf" <<EOF
# written by migrator's scripts/postgres.sh
local   all   postgres                 peer
local   all   all                      scram-sha-256
host    all   all      127.0.0.1/32    scram-sha-256
EOF
chown postgres:postgres "$CONFDIR/conf.d/migrator-test.conf" "$CONFDIR/pg_hba.conf"
}

start() {
    mkdir -p "$SOCKDIR" && chown postgres:postgres "$SOCKDIR"
    # A server killed without a shutdown (a crash, a VM snapshot) leaves its socket's lock file,
    # and the next start refuses it. Remove it only when the PID it names is no live postgres
    # (gone, a zombie, or reused by another program).
    LOCK="$SOCKDIR/.s.PGSQL.$PORT.lock"
    if [ -f "$LOCK" ] && ! ps -o stat=,comm= -p "$(head -1 "$LOCK")" 2>/dev/null | grep -q '^[^Z]* *postgres'; then
        rm -f "$LOCK"
        say "removed the stale lock file $LOCK (its server is gone)"
    fi
    pg_ctlcluster "$VER" "$NAME" start
}

[ -f "$CONFDIR/postgresql.conf" ] || create
configure
if pg_lsclusters -h | awk -v v="$VER" -v n="$NAME" '$1 == v && $2 == n && $4 ~ /^online/ {found=1} END {exit !found}'; then
    pg_ctlcluster "$VER" "$NAME" reload
    say "cluster $VER/$NAME already running on port $PORT"
elif start; then
    say "started cluster $VER/$NAME on port $PORT"
else
    # It holds only throwaway test databases: a cluster that cannot start (a data directory left
    # half-written by a crash, say) is made again rather than mended.
    say "cluster $VER/$NAME did not start (log: /var/log/postgresql/postgresql-$VER-$NAME.log); making it again"
    pg_dropcluster --stop "$VER" "$NAME" || rm -rf "/var/lib/postgresql/$VER/$NAME" "$CONFDIR"
    create
    configure
    start
    say "started cluster $VER/$NAME on port $PORT"
fi

PWFILE="$CONFDIR/migrator-test-password"
if [ ! -s "$PWFILE" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$PWFILE")
    say "generated the password of role $ROLE into $PWFILE"
fi
chmod 600 "$PWFILE"
PASSWORD="$(cat "$PWFILE")"
runuser -u postgres -- psql -q -X -v ON_ERROR_STOP=1 -p "$PORT" -h "$SOCKDIR" -d postgres >/dev/null <<EOF
SELECT 'CREATE ROLE $ROLE' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') \gexec
ALTER ROLE $ROLE WITH LOGIN SUPERUSER PASSWORD '$PASSWORD';
EOF
say "role $ROLE ready; MIGRATOR_TEST_PG_URL names the server (tests create and drop their own databases)"
}

main >&2
echo "export MIGRATOR_TEST_PG_URL='postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PORT/postgres'"
