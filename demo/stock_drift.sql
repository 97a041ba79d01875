-- Stock as the owner sees it against the movement ledger (analytics.stock_drift), at one store.
--   psql -v store=<uuid> -f demo/stock_drift.sql
-- Four writes as LA-CAJA makes them, each leaving the ledger and the warehouses apart in its
-- own way, then the drift: instant, from the ledger rollup and the warehouse rows.
\pset footer off
\pset null '-'
CREATE TEMP TABLE demo_drift AS
SELECT ws.warehouse_id, ws.product_id, ws.stock, row_number() OVER (ORDER BY ws.product_id) AS n
FROM warehouse_stock ws JOIN warehouses w ON w.id = ws.warehouse_id
WHERE w.store_id = :'store' AND w.code = 'PRI' AND ws.variant_id IS NULL AND ws.stock >= 10
ORDER BY ws.product_id LIMIT 4;

BEGIN;
-- 1. a void synced from a device that did not say which warehouse sold it: the movement
--    without a warehouse, no warehouse row given back
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id, note)
SELECT gen_random_uuid(), :'store', d.product_id, 'adjust', 1, NULL, 'void, warehouse unknown' FROM demo_drift d WHERE d.n = 1;
-- 2. an offline register sells 2 from the stock granted to it (escrow): the movement, no warehouse write
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id, from_escrow)
SELECT gen_random_uuid(), :'store', d.product_id, 'sold', -2, d.warehouse_id, true FROM demo_drift d WHERE d.n = 2;
-- 3. a late sale of 3 more than the warehouse holds: LA-CAJA clamps its stock at 0
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id)
SELECT gen_random_uuid(), :'store', d.product_id, 'sold', -(d.stock + 3), d.warehouse_id FROM demo_drift d WHERE d.n = 3;
UPDATE warehouse_stock ws SET stock = greatest(0, ws.stock - (d.stock + 3))
FROM demo_drift d WHERE d.n = 3 AND ws.warehouse_id = d.warehouse_id AND ws.product_id = d.product_id AND ws.variant_id IS NULL;
-- 4. 5 reserved for a transfer to the other warehouse, then a sale of all the stock left and 2
--    more: the sale found them reserved, the clamp hid it
UPDATE warehouse_stock ws SET stock = ws.stock - 5, reserved = ws.reserved + 5
FROM demo_drift d WHERE d.n = 4 AND ws.warehouse_id = d.warehouse_id AND ws.product_id = d.product_id AND ws.variant_id IS NULL;
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id)
SELECT gen_random_uuid(), :'store', d.product_id, 'sold', -(d.stock - 5 + 2), d.warehouse_id FROM demo_drift d WHERE d.n = 4;
UPDATE warehouse_stock ws SET stock = greatest(0, ws.stock - (d.stock - 5 + 2))
FROM demo_drift d WHERE d.n = 4 AND ws.warehouse_id = d.warehouse_id AND ws.product_id = d.product_id AND ws.variant_id IS NULL;
COMMIT;

\echo 'analytics.stock_drift(): the four products, in the store''s main warehouse (or none)'
\timing on
SELECT p.name AS product, coalesce(w.name, '(none)') AS warehouse, d.ledger, d.stock, d.reserved, d.escrow, d.difference, d.cause
FROM analytics.stock_drift(:'store') d
JOIN demo_drift x ON x.product_id = d.product_id
JOIN products p ON p.id = d.product_id
LEFT JOIN warehouses w ON w.id = d.warehouse_id
ORDER BY x.n;
\timing off
\echo 'every store: rows of drift by cause'
SELECT coalesce(cause, '(not told)') AS cause, count(*) AS "rows", sum(difference) AS "ledger - warehouse"
FROM analytics.stock_drift() GROUP BY cause ORDER BY 1;
