#!/usr/bin/env bash
# Runs every test: in-transaction #[pg_test]s (cargo pgrx test, its own throw-away server),
# then the integration tests in tests/ against the local cluster with the library preloaded.
# Idempotent; a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

runas=()
[ "$(id -u)" = 0 ] && runas=(--runas postgres)
pgrx_data=/var/tmp/lacaja_analytics/pgrx-test
rm -rf "$pgrx_data"
mkdir -p "$(dirname "$pgrx_data")"
[ "$(id -u)" = 0 ] && chown postgres:postgres "$(dirname "$pgrx_data")"

echo "==> in-transaction tests (cargo pgrx test)"
# The filter keeps cargo from running tests/ here: those need the preloaded server below.
scripts/pg.sh stop  # cargo pgrx test installs its own build into the same directories
cargo pgrx test pg15 "${runas[@]}" --pgdata "$pgrx_data" tests::

echo "==> the previous release, and a database on it for the upgrade test"
scripts/previous_release.sh

echo "==> integration tests against a PostgreSQL 15 server with lacaja_analytics preloaded"
PROFILE=${PROFILE:-release} scripts/install.sh
scripts/redis.sh start
eval "$(scripts/pg.sh env)"
export LACAJA_TEST_SERVER="host=$PGHOST port=$PGPORT user=$PGUSER"
export LACAJA_TEST_REDIS="$(scripts/redis.sh url)"
cargo test --test '*'
