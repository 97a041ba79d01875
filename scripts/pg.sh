#!/usr/bin/env bash
# A local PostgreSQL 15 cluster for the demo, tests and benchmarks, run by user postgres with
# lacaja_analytics preloaded.  Usage: scripts/pg.sh start|stop|restart|status|env
# Settings: LACAJA_PGDATA (default /var/tmp/lacaja_analytics/pgdata), LACAJA_PGPORT (55432).
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
PGDATA=${LACAJA_PGDATA:-/var/tmp/lacaja_analytics/pgdata}
PGPORT=${LACAJA_PGPORT:-55432}
LOG=$(dirname "$PGDATA")/postgres.log

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start() {
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    mkdir -p "$PGDATA"
    [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$(dirname "$PGDATA")"
    as_postgres "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    cat >>"$PGDATA/postgresql.conf" <<CONF
# lacaja_analytics local cluster
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$(dirname "$PGDATA")'
shared_preload_libraries = 'lacaja_analytics'
max_connections = 60
shared_buffers = 1GB
work_mem = 64MB
maintenance_work_mem = 512MB
max_wal_size = 8GB
checkpoint_timeout = 15min
log_min_messages = warning
CONF
  fi
  if as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    return 0
  fi
  # Prepared transactions (two-phase commit) are exercised by the tests.
  as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOG" -o "-c max_prepared_transactions=20" -w -t 60 start >/dev/null
}

stop() {
  if as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) as_postgres "$PGBIN/pg_ctl" -D "$PGDATA" status ;;
  env) echo "PGHOST=127.0.0.1 PGPORT=$PGPORT PGUSER=postgres" ;;
  *) echo "usage: $0 start|stop|restart|status|env" >&2; exit 2 ;;
esac
