#!/usr/bin/env bash
# The main job: sets up the machine, builds and installs lacaja_analytics into a local
# PostgreSQL 15 cluster (library preloaded), creates a LA-CAJA demo database with a generated
# workload, installs the extension, backfills, shows live capture, converts sales and events
# into hypertables online, runs the jobs, loads the warehouse and prints reports from it, and
# prints each store's dashboard with the time of every query.  DAYS=120 sets the history.  Idempotent.
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
q -At -c "SELECT 'variant: ' || variant || ', valid sale: ' || valid_sale FROM analytics_internal.source_config"
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
q -At -c "SELECT 'LA-CAJA''s mv_customer_metrics: ' || sum(total_debt_bs) || ' Bs of open debt (each debt once per sale of its customer)'
          FROM public.mv_customer_metrics"

echo "==> time series: the original design's migration as written, on LA-CAJA's real constraints (SPEC §7)"
q -At -c "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day')" 2>&1 \
  | sed -n 's/^psql:[^:]*:[0-9]*: //; s/^/    /; 1,20p' || true
echo "    following the hints: LA-CAJA's views become views over the rollups, then each option accepts one change"
q -At -c "SELECT '    ' || (p ->> 'object') || ': ' || (p ->> 'action')
          FROM jsonb_array_elements(analytics.install_compat(replace_public => true) -> 'plan') p"
q -At -c "SELECT '    public.mv_sales_daily now counts ' || sum(sales_count) || ' valid sales, ' || sum(cash_count) || ' paid in cash'
          FROM public.mv_sales_daily"
q -At -c "SELECT '    public.mv_customer_metrics now: ' || sum(total_debt_bs) || ' Bs of open debt, each debt once' FROM public.mv_customer_metrics"
q -At -c "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day',
                                           migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                           replace_unique => true)" 2>&1 | sed 's/^/    /'
q -At -c "SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day',
                                           migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                           replace_unique => true)" 2>&1 | sed 's/^/    /'
q -At -c "SELECT format('sales: %s rows copied while the POS could write, %s changes made meanwhile applied, writes held %s ms',
                        rows_copied, changes_applied, longest_lock_ms)
          FROM analytics.hypertable_conversions WHERE table_name = 'sales' AND status = 'done'"
q -At -c "SELECT hypertable_name || ': ' || count(*) || ' chunks, ' || min(range_start)::date || ' .. ' || max(range_end)::date
          FROM analytics.chunks GROUP BY hypertable_name ORDER BY 1"
q -At -c "SELECT 'retention job ' || analytics.add_retention_policy('events', INTERVAL '2 years')"
q -At -c "SELECT 'continuous-aggregate policy job ' || analytics.add_continuous_aggregate_policy('analytics.sales_daily',
                 INTERVAL '7 days', INTERVAL '1 hour', INTERVAL '1 hour')"
echo "    a sale synced late from an offline register (400 days ago) lands in the default partition:"
q -At -c "INSERT INTO sales (id, store_id, sold_at, totals, payment)
          SELECT gen_random_uuid(), id, now() - interval '400 days', '{\"total_bs\": 36.5, \"total_usd\": 1}', '{\"method\": \"CASH_BS\"}'
          FROM stores ORDER BY id LIMIT 1;
          SELECT '    rows waiting in sales_default: ' || count(*) FROM sales_default"
q -At -c "SELECT '    jobs run now (the scheduler does it when lacaja_analytics.database names this database): ' || analytics.run_pending_jobs()::text"
q -At -c "SELECT '    rows waiting in sales_default: ' || count(*) FROM sales_default"
q -c "SELECT job_id, application_name, last_run_status, next_start::timestamp(0) FROM analytics.job_stats ORDER BY job_id"
echo "==> weekly sales per store with analytics.time_bucket (local weeks, Monday to Sunday)"
q -c "SELECT s.name AS store, (analytics.time_bucket('1 week', x.sold_at, z.tz) AT TIME ZONE z.tz)::date AS week,
             count(*) AS sales
      FROM sales x JOIN stores s ON s.id = x.store_id
      CROSS JOIN LATERAL (SELECT analytics.store_timezone(x.store_id) AS tz) z
      WHERE x.voided_at IS NULL AND x.sold_at >= now() - interval '21 days'
      GROUP BY 1, 2 ORDER BY 1, 2"
q -At -c "SELECT 'analytics.verify() after the conversion: ' || count(*) || ' differences' FROM analytics.verify()"
echo "    every constraint still holds: store 1's first invoice number again, on today's sale (another chunk):"
q -At -c "INSERT INTO sales (id, store_id, sold_at, totals, payment, sale_number)
          SELECT gen_random_uuid(), s.store_id, now(), '{\"total_bs\": 10}', '{\"method\": \"CASH_BS\"}', s.sale_number
          FROM sales s WHERE s.sale_number = 1 ORDER BY s.store_id LIMIT 1" 2>&1 | sed -n 's/^psql:[^:]*:[0-9]*: //; s/^/    /; 1,3p' || true
q -At -c "SELECT '    constraints enforced by a registry across chunks: ' || string_agg(index_name, ', ' ORDER BY index_name)
          FROM analytics_internal.replaced_unique_indexes"
q -At -c "SELECT '    foreign keys enforced by triggers: ' || count(*) || ', ' || count(check_function)
                 || ' of them with one probe of a registry of the parent''s key' FROM analytics_internal.replaced_foreign_keys"

echo "==> recommended indexes, built CONCURRENTLY by a background worker (analytics.create_recommended_indexes)"
q -At -c "SELECT count(*) || ' to build' FROM analytics.create_recommended_indexes(dry_run => false) WHERE action LIKE 'queued%'"
for _ in $(seq 1 100); do
  [ "$(q -At -c "SELECT count(*) FROM analytics.index_builds WHERE status IN ('queued', 'building')")" = 0 ] && break
  sleep 0.2
done
q -At -c "SELECT count(DISTINCT index_name) FILTER (WHERE index_name NOT IN (SELECT index_name FROM analytics.index_builds WHERE status <> 'built'))
                 || ' of ' || count(DISTINCT index_name) || ' indexes built (' || count(*)
                 || ' steps: on a hypertable, one concurrent build per chunk, then the hypertable''s index attaches them)'
          FROM analytics.index_builds"
q -At -c "SELECT '    failed: ' || index_name || ': ' || error FROM analytics.index_builds WHERE status <> 'built'"

echo "==> warehouse: change capture on, one load of all history, then only what changed (analytics.etl_load_sales)"
q -At -c "SELECT '    ' || analytics.load_venezuela_holidays(2024, 2027) || ' national holidays loaded into analytics.holidays'"
q -At -c "SELECT '    ETL scheduled as job ' || (analytics.enable_warehouse() ->> 'job_id')"
q -At -c "SELECT '    first run: ' || analytics.etl_load_sales()::text"
q -At -c "SELECT '    second run: ' || analytics.etl_load_sales()::text"
echo "    a product renamed and recategorised, a sale of it now, one voided: the next run loads just that"
q -At -c "UPDATE products SET name = name || ' (nuevo empaque)', category = 'Ofertas'
          WHERE id = (SELECT product_id FROM analytics.fact_sales GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1)"
q -At -c "WITH s AS (INSERT INTO sales (id, store_id, sold_at, exchange_rate, totals, payment)
                     SELECT gen_random_uuid(), p.store_id, now(), 36.5, jsonb_build_object('total_bs', 2 * p.price_bs, 'total_usd', 2 * p.price_usd),
                            '{\"method\": \"PAGO_MOVIL\"}'
                     FROM products p WHERE p.name LIKE '%(nuevo empaque)' RETURNING id, store_id)
          INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
          SELECT gen_random_uuid(), s.id, p.id, 2, p.price_bs, p.price_usd FROM s JOIN products p ON p.name LIKE '%(nuevo empaque)'"
q -At -c "UPDATE sales SET voided_at = now()
          WHERE id = (SELECT sale_id FROM analytics.fact_sales WHERE NOT is_voided ORDER BY sold_at DESC OFFSET 5 LIMIT 1)"
q -At -c "SELECT '    third run: ' || analytics.etl_load_sales()::text"
q -c "SELECT v.version, v.name, v.category, v.valid_from::timestamp(0), v.valid_to::timestamp(0), count(f.*) AS facts
      FROM analytics.dim_product v LEFT JOIN analytics.fact_sales f ON f.product_key = v.product_key
      WHERE v.product_id = (SELECT product_id FROM analytics.dim_product WHERE version = 2 LIMIT 1)
      GROUP BY 1, 2, 3, 4, 5 ORDER BY 1"
first_store=$(q -At -c "SELECT id FROM stores ORDER BY id LIMIT 1")
echo "    the first store, last three months: sales and margin by category × month"
q -c "SELECT month, coalesce(category, '(none)') AS category, sales_count, revenue_bs, profit_bs, margin_pct
      FROM analytics.report_sales_by_category_month('$first_store', (date_trunc('month', current_date) - interval '2 months')::date)"
echo "    its ABC analysis (top 8 of the last 30 days)"
q -c "SELECT rank, name, category, revenue_bs, cumulative_share, class
      FROM analytics.report_product_abc('$first_store', current_date - 30) LIMIT 8"

echo "==> stock: the warehouses the owner sees against the movement ledger (analytics.stock_drift)"
q -v store="$first_store" -f demo/stock_drift.sql

for store in $(q -At -c "SELECT id FROM stores ORDER BY id"); do
  echo
  q -v store="$store" -f demo/dashboard.sql
done

echo
echo "==> analytics.health(): what a DBA checks first"
q -c "SELECT check_name, status, detail, hint FROM analytics.health()"
