#!/usr/bin/env bash
# The cost of stock as the owner sees it (issue 17; docs/benchmarks.md, "Measured by hand").
# Builds a database from sql/fixtures/lacaja_schema.sql with 5 stores of 1,000 products each
# (a fifth by weight), 3 warehouses per store holding every product (a tenth with 3 variants),
# lots for a third of the products, a history of BCV rates and 200,000 movements; creates the
# extension and backfills. Then, in the same run:
#  - readers, pgbench -c 1 for 10 s each, one store's rows fetched: the inventory part of kpis()
#    (inventory_metrics_of), kpis(), product_stock, stock_drift(), each against the plain SQL of
#    its definition (tests/sql/oracle.sql's views, the same store, every column) as the baseline;
#  - the POS path with warehouse stock: a sale, 5 items, 5 movements and the 5 clamped
#    warehouse_stock updates LA-CAJA makes (pos), and the same without the warehouse_stock
#    updates (pos_ledger_only), attached and detached by turns (3 rounds of 10 s each).
# Usage: bench/stock.sh [database]   (default lacaja_stock_bench; dropped and re-created)
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/pg.sh env)"; export PGHOST PGPORT PGUSER
DB=${1:-lacaja_stock_bench}
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@"; }
psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
q -f sql/fixtures/lacaja_schema.sql
q <<'SQL'
INSERT INTO stores (id, name) SELECT ('5a1e0000-0000-4000-8000-00000000000' || s)::uuid, 'Tienda ' || s FROM generate_series(1, 5) s;
INSERT INTO products (id, store_id, name, category, sku, price_bs, price_usd, cost_bs, cost_usd, cost_per_weight_bs,
                      cost_per_weight_usd, is_weight_product, weight_unit, low_stock_threshold)
SELECT md5('p/' || s || '/' || n)::uuid, ('5a1e0000-0000-4000-8000-00000000000' || s)::uuid, 'Producto ' || n, 'Cat ' || n % 20,
       'SKU-' || n, 36.5, 1, 25, 0.68, CASE WHEN n % 5 = 0 AND n % 2 = 0 THEN 0.7 END, CASE WHEN n % 5 = 0 AND n % 2 = 0 THEN 0.02 END,
       n % 5 = 0, CASE WHEN n % 5 = 0 THEN (ARRAY['kg', 'g', 'lb', 'oz'])[1 + n % 4] END, 10
FROM generate_series(1, 5) s, generate_series(1, 1000) n;
INSERT INTO warehouses (id, store_id, name, code, is_default)
SELECT md5('w/' || s || '/' || w)::uuid, ('5a1e0000-0000-4000-8000-00000000000' || s)::uuid, 'Almacén ' || w, 'W' || w, w = 1
FROM generate_series(1, 5) s, generate_series(1, 3) w;
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id, from_escrow, happened_at)
SELECT gen_random_uuid(), p.store_id, p.id, CASE WHEN i % 4 = 0 THEN 'received' ELSE 'sold' END,
       CASE WHEN i % 4 = 0 THEN 12 ELSE -3 END, w.id, i % 97 = 0, now() - i * interval '1 hour'
FROM products p JOIN warehouses w ON w.store_id = p.store_id AND w.code = 'W' || (1 + abs(hashtext(p.id::text)) % 3),
     generate_series(1, 40) i;
INSERT INTO warehouse_stock (warehouse_id, product_id, stock, reserved)
SELECT w.id, p.id, greatest(0, coalesce(m.qty, 0)), CASE WHEN abs(hashtext(p.id::text || w.id::text)) % 50 = 0 THEN 2 ELSE 0 END
FROM products p JOIN warehouses w ON w.store_id = p.store_id
LEFT JOIN (SELECT warehouse_id, product_id, sum(qty_delta) FILTER (WHERE NOT from_escrow) AS qty FROM inventory_movements GROUP BY 1, 2) m
       ON m.warehouse_id = w.id AND m.product_id = p.id;
INSERT INTO warehouse_stock (warehouse_id, product_id, variant_id, stock)
SELECT w.id, p.id, gen_random_uuid(), v FROM products p JOIN warehouses w ON w.store_id = p.store_id, generate_series(1, 3) v
WHERE abs(hashtext(p.id::text)) % 10 = 0;
INSERT INTO product_lots (product_id, lot_number, initial_quantity, remaining_quantity, unit_cost_bs, unit_cost_usd, received_at)
SELECT p.id, 'L' || l, 24, (l * 7) % 25, 20 + l, 0.6 + l / 10.0, now() - l * interval '10 days'
FROM products p, generate_series(1, 3) l WHERE abs(hashtext(p.id::text)) % 3 = 0;
INSERT INTO exchange_rates (store_id, rate, rate_type, is_active, is_preferred, effective_from, effective_until)
SELECT s.id, 30 + d / 10.0, (ARRAY['BCV', 'BCV', 'PARALLEL'])[1 + d % 3], true, d % 7 = 0,
       now() - (200 - d) * interval '1 day', now() - (199 - d) * interval '1 day'
FROM stores s, generate_series(0, 199) d;
INSERT INTO exchange_rates (store_id, rate, rate_type, is_active, is_preferred, effective_from)
SELECT s.id, 36.5, 'BCV', true, true, now() - interval '1 hour' FROM stores s;
ANALYZE;
CREATE EXTENSION lacaja_analytics;
SELECT analytics.refresh_all();
SQL
STORE=5a1e0000-0000-4000-8000-000000000003
echo "stores 5, products $(q -c 'SELECT count(*) FROM products'), warehouse rows $(q -c 'SELECT count(*) FROM warehouse_stock'), lots $(q -c 'SELECT count(*) FROM product_lots'), movements $(q -c 'SELECT count(*) FROM inventory_movements'), rates $(q -c 'SELECT count(*) FROM exchange_rates')"
scripts=$(mktemp -d)
latency() {  # $1: name, $2: SQL run once per transaction
  printf '%s\n' "$2" > "$scripts/$1.sql"
  pgbench -n -f "$scripts/$1.sql" -c 1 -T 10 "$DB" 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p'
}
oracle_view() {  # $1: oracle view; the oracle's definitions as views of a schema of their own
  echo "SELECT * FROM bench_oracle.$1 WHERE store_id = '$STORE'"
}
# The oracle's temporary views, made permanent in a schema of their own for pgbench's sessions.
sed -e 's/CREATE TEMP VIEW oracle_/CREATE VIEW bench_oracle.oracle_/' -e 's/CREATE TEMP TABLE oracle_compared.*//' \
    -e 's/\([ (]\)oracle_\([a-z_]*\)\([ ;)]\)/\1bench_oracle.oracle_\2\3/g' tests/sql/oracle.sql \
  | python3 -c "
import sys; s = sys.stdin.read()
# the views this benchmark reads, and what they read
keep = ['oracle_product_stock', 'oracle_inventory_products', 'oracle_bcv_rate', 'oracle_inventory_metrics', 'oracle_stock_drift']
out = []
for stmt in s.split(';\n'):
    if any('CREATE VIEW bench_oracle.' + k + ' ' in stmt for k in keep): out.append(stmt)
print('CREATE SCHEMA bench_oracle;\n' + ';\n'.join(out) + ';')" > "$scripts/oracle.sql"
q -f "$scripts/oracle.sql"
for round in 1 2; do
  echo "round $round (ms per call; baseline: the definition as plain SQL over LA-CAJA's tables)"
  echo "  inventory_metrics_of(store) $(latency inv "SELECT * FROM analytics.inventory_metrics_of('$STORE')") | plain $(latency inv_plain "$(oracle_view oracle_inventory_metrics)")"
  echo "  kpis(store)                 $(latency kpis "SELECT analytics.kpis('$STORE')")"
  echo "  product_stock of the store  $(latency stock "SELECT * FROM analytics.product_stock WHERE store_id = '$STORE'") | plain $(latency stock_plain "$(oracle_view oracle_product_stock)")"
  echo "  stock_drift(store)          $(latency drift "SELECT * FROM analytics.stock_drift('$STORE')") | plain $(latency drift_plain "$(oracle_view oracle_stock_drift)")"
done
cat > "$scripts/pos.pgbench" <<'PGB'
\set s random(1, 5)
BEGIN;
INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment) VALUES (gen_random_uuid(), ('5a1e0000-0000-4000-8000-00000000000' || :s)::uuid, now(), 36.5, 'BS', '{"subtotal_bs": 36.5, "subtotal_usd": 1, "discount_bs": 0, "discount_usd": 0, "total_bs": 36.5, "total_usd": 1}', '{"method": "CASH_BS"}') RETURNING id \gset
WITH picked AS (SELECT p.id, w.id AS warehouse_id FROM products p JOIN warehouses w ON w.store_id = p.store_id AND w.is_default
                WHERE p.store_id = ('5a1e0000-0000-4000-8000-00000000000' || :s)::uuid ORDER BY random() LIMIT 5),
items AS (INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd, discount_bs, discount_usd)
          SELECT gen_random_uuid(), ':id'::uuid, id, 1, 36.5, 1, 0, 0 FROM picked),
moved AS (INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id)
          SELECT gen_random_uuid(), ('5a1e0000-0000-4000-8000-00000000000' || :s)::uuid, id, 'sold', -1, warehouse_id FROM picked)
UPDATE warehouse_stock ws SET stock = greatest(0, ws.stock - 1), updated_at = now()
FROM picked WHERE ws.warehouse_id = picked.warehouse_id AND ws.product_id = picked.id AND ws.variant_id IS NULL;
COMMIT;
PGB
# the same sale without its warehouse_stock writes: what those cost, attached and detached
grep -v '^UPDATE warehouse_stock\|^FROM picked WHERE' "$scripts/pos.pgbench" | sed 's/FROM picked)$/FROM picked)\nSELECT 1;/' > "$scripts/pos_ledger_only.pgbench"
for round in 1 2 3; do
  for mode in attached detached; do
    if [ $mode = attached ]; then q -c "SELECT analytics.attach('public')" >/dev/null; else q -c "SELECT analytics.detach()" >/dev/null; fi
    pgbench -n -f "$scripts/pos.pgbench" -c 1 -T 3 "$DB" >/dev/null 2>&1  # warm up after attach/detach
    for script in pos pos_ledger_only; do
      echo "round $round, $mode, $script: $(pgbench -n -f "$scripts/$script.pgbench" -c 1 -T 10 "$DB" 2>/dev/null | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p') ms"
    done
  done
done
q -c "SELECT analytics.attach('public')" >/dev/null
q -c "SELECT analytics.refresh_all()" >/dev/null
echo "verify() after the run: $(q -c 'SELECT count(*) FROM analytics.verify()') differences"
rm -rf "$scripts"
