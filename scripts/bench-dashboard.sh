#!/usr/bin/env bash
# The dashboard at LA-CAJA scale: builds STORES stores × DAYS days × SALES sales (loaded in
# batches through the capture triggers, as POS writes), then times analytics.kpis(),
# sales_by_day() over a year, top_products() and heatmap() against the plain SQL over the
# source tables that answers the same question, in the same database and run. Rewrites the
# dashboard section of docs/benchmarks.md.
#   SALES=10000000 STORES=100 DAYS=730 scripts/bench-dashboard.sh     (SALES=200000 for a quick run)
set -euo pipefail
cd "$(dirname "$0")/.."
SALES=${SALES:-10000000}
STORES=${STORES:-100}
DAYS=${DAYS:-730}
BATCH=${BATCH:-250000}
RUNS=${RUNS:-50}
DB=lacaja_dashboard_bench
scripts/setup.sh
PROFILE=release scripts/install.sh
eval "$(scripts/pg.sh env)"; export PGHOST PGPORT PGUSER
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
started=$(date +%s)

echo "==> database: $STORES stores, $DAYS days, $SALES sales"
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
q -f sql/fixtures/lacaja_schema.sql
q -c "CREATE EXTENSION lacaja_analytics"
q -v stores="$STORES" -f bench/dataset_setup.sql
q -c "SELECT analytics.set_store_timezone(id, tz) FROM bench_stores" >/dev/null

load_started=$(date +%s)
for ((from = 1; from <= SALES; from += BATCH)); do
  to=$(( from + BATCH - 1 < SALES ? from + BATCH - 1 : SALES ))
  q -v from="$from" -v to="$to" -v total="$SALES" -v days="$DAYS" -v stores="$STORES" -f bench/dataset.sql
  python3 - "$load_started" "$to" "$SALES" <<'PY'
import sys, time
t0, done, total = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
spent = time.time() - t0
width = 30; filled = int(width * done / total)
print(f"\r    [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} sales numbered, {spent:.0f}s, "
      f"about {spent / done * (total - done):.0f}s left   ", end='', flush=True)
PY
done
echo
load_s=$(( $(date +%s) - load_started ))
q -c "VACUUM ANALYZE"

echo "==> checking the rollups against the source (analytics.verify())"
verify_started=$(date +%s)
differences=$(q -c "SELECT count(*) FROM analytics.verify()")
verify_s=$(( $(date +%s) - verify_started ))
echo "    $differences differences (${verify_s}s)"

echo "==> timing each question, rollups against plain SQL over the source tables"
q -f bench/dashboard_queries.sql
results=$(q -v runs="$RUNS" <<'SQL'
SELECT format('| %s | %s ms | %s ms | %s ms | %s ms | ×%s |', question, ours_median, ours_p95, raw_median, raw_p95,
              round(raw_median / nullif(ours_median, 0)))
FROM bench_compare(:runs) ORDER BY ord;
SQL
)
echo "$results"
figures=$(q <<'SQL'
SELECT format('%s sales (%s valid) and %s items in %s stores from %s to %s',
              to_char(count(*), 'FM999,999,999'), to_char(count(*) FILTER (WHERE voided_at IS NULL), 'FM999,999,999'),
              to_char((SELECT count(*) FROM sale_items), 'FM999,999,999'), (SELECT count(*) FROM stores),
              min(sold_at)::date, max(sold_at)::date)
FROM sales;
SQL
)
sizes=$(q <<'SQL'
SELECT format('source tables %s, rollups %s (of which item facts %s)',
  pg_size_pretty(sum(pg_total_relation_size(c.oid)) FILTER (WHERE n.nspname = 'public' AND c.relname IN ('sales', 'sale_items', 'sale_returns', 'sale_return_items', 'inventory_movements', 'products'))),
  pg_size_pretty(sum(pg_total_relation_size(c.oid)) FILTER (WHERE n.nspname = 'analytics')),
  pg_size_pretty(pg_total_relation_size('analytics.item_facts')))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r';
SQL
)
machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, PostgreSQL $(q -c 'SHOW server_version')"

section=$(cat <<MD
## Dashboard at scale

\`SALES=$SALES STORES=$STORES DAYS=$DAYS RUNS=$RUNS scripts/bench-dashboard.sh\` — $(date -u +%F), $machine.

Data: $figures; $sizes. Loaded in batches of $BATCH sales (with their items) through the
capture triggers in ${load_s} s; \`analytics.verify()\` afterwards: $differences differences (${verify_s} s).

Each question for a different store each run ($RUNS runs, after one warm-up), timed inside the
server; the plain SQL is what answers the same question over LA-CAJA's tables (valid sales,
store-local days, indexes of the LA-CAJA schema: \`sales (store_id, sold_at)\`, \`sale_items (sale_id)\`).

| question | rollups median | rollups p95 | plain SQL median | plain SQL p95 | speed-up |
|---|---|---|---|---|---|
$results

Aims (issue 3): \`kpis()\` under 5 ms median and at least 500× faster than the plain query;
\`sales_by_day()\` for a year under 10 ms.
MD
)
python3 - "$section" <<'PY'
import re, sys, pathlib
path = pathlib.Path('docs/benchmarks.md')
text = path.read_text() if path.exists() else '# Benchmarks\n'
section = sys.argv[1].strip() + '\n'
start, end = '<!-- dashboard:start -->', '<!-- dashboard:end -->'
block = f'{start}\n{section}{end}'
if start in text:
    text = re.sub(re.escape(start) + '.*?' + re.escape(end), lambda m: block, text, flags=re.S)
else:
    text = text.rstrip('\n') + '\n\n' + block + '\n'
path.write_text(text)
PY
echo "==> docs/benchmarks.md updated ($(( $(date +%s) - started )) s in all)"
