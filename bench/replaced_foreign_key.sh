#!/usr/bin/env bash
# The cost of a replaced foreign key on the POS path (docs/benchmarks.md, "Measured by hand"):
# on the demo database after scripts/demo.sh (sales a hypertable, its keys replaced), rounds
# alternating the check of sale_items.sale_id as create_hypertable makes it (generated: one probe
# of the registry of sale ids, then the sale locked in its chunk), the generic check (a lookup
# over every chunk), and no check at all; each round a POS transaction (pgbench, a sale and five
# items, 15 s) and 500 items added to the oldest sale in one statement (rolled back).
# Usage: bench/replaced_foreign_key.sh [database]   (default lacaja_demo; leaves the generated check)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/pg.sh env)"; export PGHOST PGPORT PGUSER
DB=${1:-lacaja_demo}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" -c "$1"; }
generated=$(q "SELECT check_function::regproc::text FROM analytics_internal.replaced_foreign_keys
               WHERE constraint_name = 'sale_items_sale_id_fkey' AND check_function IS NOT NULL")
[ -n "$generated" ] || { echo "sale_items_sale_id_fkey has no generated check in $DB: run scripts/demo.sh first" >&2; exit 1; }
use() {
  q "SET client_min_messages = warning; DROP TRIGGER IF EXISTS sale_items_sale_id_fkey_check ON sale_items"
  local fn
  case $1 in
    generated) fn=$generated ;;
    generic) fn=analytics_internal._fk_check_parent ;;
    none) return ;;
  esac
  q "CREATE TRIGGER sale_items_sale_id_fkey_check AFTER INSERT OR UPDATE OF sale_id ON sale_items FOR EACH ROW
     EXECUTE FUNCTION $fn('sale_items_sale_id_fkey', 'sales', '{sale_id}', '{id}')"
}
echo "chunks of sales: $(q "SELECT count(*) FROM analytics.chunks c JOIN analytics.hypertables h USING (hypertable_id) WHERE h.relation = 'sales'::regclass")"
for round in 1 2 3; do
  for check in generated generic none; do
    use $check
    latency=$(pgbench -n -f bench/pos_transaction.pgbench -c 1 -T 15 "$DB" 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    start=$(date +%s%N)
    q "BEGIN; INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
       SELECT gen_random_uuid(), s.id, p.id, 1, 10, 0.27 FROM (SELECT id FROM sales ORDER BY sold_at LIMIT 1) s,
              LATERAL (SELECT id FROM products LIMIT 1) p, generate_series(1, 500); ROLLBACK;"
    echo "round $round, check ${check}: POS transaction $latency ms; 500 items into the oldest sale $(( ($(date +%s%N) - start) / 1000000 )) ms"
  done
done
use generated
