#!/usr/bin/env bash
# The main job: sets up the machine, builds and installs lacaja_analytics into a local
# PostgreSQL 15 cluster (library preloaded), creates a LA-CAJA demo database with a generated
# workload, installs the extension, backfills, shows live capture and prints each store's
# dashboard with the time of every query.  DAYS=120 sets the history.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
DAYS=${DAYS:-120}
DB=lacaja_demo
scripts/setup.sh
echo "==> build and install lacaja_analytics (release)"
PROFILE=release scripts/install.sh
eval "$(scripts/pg.sh env)"; export PGHOST PGPORT PGUSER
q() { psql -X -q -v ON_ERROR_STOP=1 -d "$DB" "$@"; }

echo "==> demo database $DB: LA-CAJA's schema and $DAYS days of sales in five stores"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
q -f sql/fixtures/lacaja_schema.sql
q -v days="$DAYS" -f demo/generate.sql

echo "==> CREATE EXTENSION lacaja_analytics (attaches to public.sales at once)"
q -c "CREATE EXTENSION lacaja_analytics"
q -At -c "SELECT 'variant: ' || variant || ', valid sale: ' || valid_sale FROM analytics.source_config"
echo "==> backfill: analytics.refresh_all() (every store in the default zone, America/Caracas)"
q -c '\timing on' -c "SELECT jsonb_pretty(analytics.refresh_all()) AS refresh_all"
echo "==> each store's own zone: analytics.set_store_timezone() re-buckets that store's history"
q -c '\timing on' -c "SELECT z.tz AS timezone, s.name AS store,
                              (analytics.set_store_timezone(z.store_id, z.tz) -> 'rebucketed' ->> 'duration_ms') AS rebucket_ms
                       FROM demo.store_zones z JOIN stores s ON s.id = z.store_id
                       WHERE z.tz <> current_setting('lacaja_analytics.default_timezone') ORDER BY s.name"

echo "==> live POS traffic, captured at commit by the triggers"
q -f demo/live.sql

echo "==> analytics.verify(): rollups against their definition over the source tables"
q -At -c "SELECT count(*) || ' differences' FROM analytics.verify()"

echo "==> drop-in: LA-CAJA's own materialized views become always-fresh views (analytics.install_compat)"
q -f sql/fixtures/lacaja_materialized_views.sql
q -At -c "SELECT 'LA-CAJA''s mv_sales_daily counts ' || sum(sales_count) || ' sales, voided ones included' FROM public.mv_sales_daily"
q -At -c "SELECT p ->> 'object' || ': ' || (p ->> 'action') FROM jsonb_array_elements(analytics.install_compat(replace_public => true) -> 'plan') p"
q -At -c "SELECT 'public.mv_sales_daily now counts ' || sum(sales_count) || ' valid sales, ' || sum(cash_count) || ' paid in cash' FROM public.mv_sales_daily"

echo "==> recommended indexes, built CONCURRENTLY by a background worker (analytics.create_recommended_indexes)"
q -At -c "SELECT count(*) || ' to build' FROM analytics.create_recommended_indexes(dry_run => false) WHERE action LIKE 'queued%'"
for _ in $(seq 1 100); do
  [ "$(q -At -c "SELECT count(*) FROM analytics.index_builds WHERE status IN ('queued', 'building')")" = 0 ] && break
  sleep 0.2
done
q -At -c "SELECT status || ': ' || count(*) FROM analytics.index_builds GROUP BY status ORDER BY status"

for store in $(q -At -c "SELECT id FROM stores ORDER BY id"); do
  echo
  q -v store="$store" -f demo/dashboard.sql
done
