#!/usr/bin/env bash
# The whole test suite, on a fresh machine as on a developer's:
#   1. makes sure PostgreSQL's server binaries, Chromium and chromium-driver are
#      installed (Debian's packages; the console's browser test drives Chromium),
#   2. starts a throw-away PostgreSQL as a non-root user, in a temp dir, on a free
#      loopback port (trust auth, fsync off: it is disposable),
#   3. checks that production builds (the server alone, the whole workspace) do not
#      carry the certificate-check skip,
#   4. installs schemathesis (PyPI, pinned) into target/schemathesis-venv for the
#      contract test,
#   5. runs every test of the workspace with SUDEVWA_TEST_POSTGRES_URL pointing at it,
#   6. stops PostgreSQL and removes its files, whatever happened.
# PostgreSQL tests never skip: without the variable they fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '== %s\n' "$*" >&2; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

PG_BIN=$(pg_bin || true)
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  log "installing PostgreSQL from Debian's packages"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  # No default cluster: we start our own, and a stray server on 5432 helps nobody.
  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
    $SUDO mkdir -p /etc/postgresql-common
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  PG_BIN=$(pg_bin)
fi

# Chromium and its WebDriver for the console's browser test (Debian's packages).
if ! command -v chromium >/dev/null 2>&1 \
  || { [ ! -x /usr/bin/chromedriver ] && [ ! -x /usr/lib/chromium/chromedriver ]; }; then
  log "installing Chromium and chromium-driver from Debian's packages"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi

# PostgreSQL refuses to run as root: use the 'postgres' account (created by the package)
# when we are root, ourselves otherwise.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

PGTMP=$(mktemp -d /tmp/sudevwa-pg.XXXXXX)
[ "$(id -u)" -eq 0 ] && chown postgres "$PGTMP"
cleanup() {
  as_pg "$PG_BIN/pg_ctl" -D "$PGTMP/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PGTMP"
}
trap cleanup EXIT

PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log "starting PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT"
as_pg "$PG_BIN/initdb" -D "$PGTMP/data" -U postgres --auth=trust -E UTF8 >"$PGTMP/initdb.log" 2>&1 \
  || { cat "$PGTMP/initdb.log" >&2; exit 1; }
as_pg "$PG_BIN/pg_ctl" -D "$PGTMP/data" -l "$PGTMP/server.log" -w -t 60 \
  -o "-p $PGPORT -k $PGTMP -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
  start >/dev/null || { cat "$PGTMP/server.log" >&2; exit 1; }
export SUDEVWA_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"

# schemathesis (PyPI, pinned) for the contract test, in a virtualenv beside the build.
ST_VERSION=4.32.5
ST_VENV=target/schemathesis-venv
if ! "$ST_VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  log "installing schemathesis $ST_VERSION from PyPI"
  rm -rf "$ST_VENV"
  python3 -m venv "$ST_VENV"
  "$ST_VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi
export SUDEVWA_SCHEMATHESIS="$PWD/$ST_VENV/bin/schemathesis"

log "checking that production builds have no certificate-check skip"
# Feature resolution as `cargo build -p sudevwa` and `cargo build --workspace` do it (no
# dev-dependencies): neither may put the mock's skip into the server. The mock with its
# `insecure-clients` feature, which needs the skip, is the control: the check must see it.
if cargo tree -q -p sudevwa -e features,no-dev -i wacore-noise | grep -q danger-skip; then
  echo "FAIL: the default sudevwa build enables danger-skip-cert-chain-verify" >&2
  exit 1
fi
if cargo tree -q --workspace -e features,no-dev -i wacore-noise | grep -q danger-skip; then
  echo "FAIL: a whole-workspace build enables danger-skip-cert-chain-verify" >&2
  exit 1
fi
if cargo tree -q --workspace -e features,no-dev -i actors | grep -q test-faults; then
  echo "FAIL: a production build carries the actors' test fault hook" >&2
  exit 1
fi
if ! cargo tree -q -p mock-whatsapp --features insecure-clients -e features,no-dev -i wacore-noise | grep -q danger-skip; then
  echo "FAIL: the feature check cannot see danger-skip-cert-chain-verify where it is enabled" >&2
  exit 1
fi
if ! cargo tree -q -p sudevwa --features sandbox -e features,no-dev -i wacore-noise | grep -q danger-skip; then
  echo "FAIL: the sandbox build should carry the mock's certificate-check skip" >&2
  exit 1
fi

log "running the tests (sandbox feature on, so the README tour runs too)"
cargo test --workspace --features sudevwa/sandbox --no-fail-fast "$@"
