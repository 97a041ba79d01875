#!/usr/bin/env bash
# What 8 POS sessions wait on (docs/benchmarks.md, "Measured by hand"): a database built from
# sql/fixtures/lacaja_schema.sql and demo/generate.sql with the extension created; rounds of
# `pgbench -c 8` with bench/pos_transaction.pgbench, attached and detached by turns, with
# pg_stat_activity's wait events sampled every 20 ms, then the WAL each transaction writes
# (pg_stat_wal over 4,000 transactions right after a checkpoint, and over the next 4,000).
# Usage: bench/pos_waits.sh [database]   (default lacaja_waits)
set -uo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/pg.sh env)"; export PGHOST PGPORT PGUSER
DB=${1:-lacaja_waits}
q() { psql -X -q -At -d $DB -c "$1"; }
samples=$(mktemp -d)
for mode in with without with without; do
  if [ $mode = with ]; then q "SELECT analytics.attach('public')" >/dev/null; else q "SELECT analytics.detach()" >/dev/null; fi
  ( printf "%s\n" "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity WHERE datname = '$DB' AND state = 'active' AND backend_type = 'client backend'" '\watch 0.02' | timeout 15 psql -X -q -At -d postgres > "$samples/$mode.$RANDOM" ) &
  tps=$(pgbench -n -f bench/pos_transaction.pgbench -c 8 -j 2 -T 15 $DB 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  wait
  echo "$mode: tps $tps"
done
for mode in with without; do echo "== $mode"; cat "$samples"/$mode.* | sort | uniq -c | sort -rn | head -8; done
wal_per_transaction() {  # $1: mode, $2: what went before
  local before after
  before=$(q "SELECT wal_fpi || ' ' || wal_records || ' ' || wal_bytes FROM pg_stat_wal")
  pgbench -n -f bench/pos_transaction.pgbench -c 8 -j 2 -t 500 "$DB" >/dev/null 2>&1
  after=$(q "SELECT wal_fpi || ' ' || wal_records || ' ' || wal_bytes FROM pg_stat_wal")
  python3 -c "
a = list(map(int, '$before'.split())); b = list(map(int, '$after'.split()))
print('$1, $2: per transaction %.2f full-page images, %.1f WAL records, %.0f bytes' % tuple((y - x) / 4000 for x, y in zip(a, b)))"
}
for mode in with without; do
  if [ $mode = with ]; then q "SELECT analytics.attach('public')" >/dev/null; else q "SELECT analytics.detach()" >/dev/null; fi
  q "CHECKPOINT"
  wal_per_transaction $mode "right after a checkpoint"
  wal_per_transaction $mode "steady (the next 4,000)"
done
q "SELECT analytics.attach('public')" >/dev/null
rm -rf "$samples"
