#!/usr/bin/env bash
# Runs a command with a throw-away PostgreSQL for benchmarks: started as a non-root user
# in a temp dir on a free loopback port, with PostgreSQL's default durability settings
# (fsync and synchronous_commit on, unlike the test suite's disposable server), its URL in
# SUDEVWA_BENCH_POSTGRES_URL; stopped and removed afterwards. Needs Debian's postgresql
# package (tests/run.sh installs it).
#   bash examples/with_postgres.sh target/release/examples/bench_send 10 500 8
set -euo pipefail
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL is not installed (run tests/run.sh once)" >&2; exit 1; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PGTMP=$(mktemp -d /tmp/sudevwa-benchpg.XXXXXX)
[ "$(id -u)" -eq 0 ] && chown postgres "$PGTMP"
cleanup() { as_pg "$PG_BIN/pg_ctl" -D "$PGTMP/data" -m fast stop >/dev/null 2>&1 || true; rm -rf "$PGTMP"; }
trap cleanup EXIT
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg "$PG_BIN/initdb" -D "$PGTMP/data" -U postgres --auth=trust -E UTF8 >"$PGTMP/initdb.log" 2>&1
as_pg "$PG_BIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/server.log" -w -t 60 \
  -o "-p $PGPORT -k $PGTMP -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
export SUDEVWA_BENCH_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
"$@"
