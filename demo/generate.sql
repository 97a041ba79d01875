-- A realistic LA-CAJA workload, set-based and deterministic (setseed): five stores in four
-- time zones, 120 days of weekly and daily seasonality, weight products, split payments,
-- FIAO, voids, returns that rewrite totals, and inventory movements.
-- Run in a database that already has sql/fixtures/lacaja_schema.sql.  :days sets the history.

SELECT setseed(0.2026);

CREATE TEMP TABLE demo_stores (n int PRIMARY KEY, id uuid, name text, tz text, size numeric);
INSERT INTO demo_stores VALUES
  (1, '5a1e0000-0000-4000-8000-000000000001', 'Bodega La Candelaria (Caracas)', 'America/Caracas', 1.0),
  (2, '5a1e0000-0000-4000-8000-000000000002', 'Abasto El Lago (Maracaibo)',     'America/Caracas', 0.6),
  (3, '5a1e0000-0000-4000-8000-000000000003', 'Minimarket Chapinero (Bogota)',  'America/Bogota',  0.8),
  (4, '5a1e0000-0000-4000-8000-000000000004', 'La Caja Doral (Miami)',          'America/New_York', 0.5),
  (5, '5a1e0000-0000-4000-8000-000000000005', 'Ultramarinos Lavapies (Madrid)', 'Europe/Madrid',   0.4);
INSERT INTO stores (id, name) SELECT id, name FROM demo_stores;
-- The zones the demo gives analytics.set_store_timezone() (LA-CAJA itself has no zone column).
CREATE SCHEMA demo;
CREATE TABLE demo.store_zones AS SELECT id AS store_id, tz FROM demo_stores;

INSERT INTO customers (id, store_id, name)
SELECT ('c0de0000-0000-4000-800' || s.n || '-' || lpad(c::text, 12, '0'))::uuid, s.id, 'Cliente ' || c
FROM demo_stores s, generate_series(1, 150) c;

-- Products: (name, category, price in USD, weight product priced per kg)
CREATE TEMP TABLE demo_catalog (pn int, name text, category text, price_usd numeric, is_weight boolean);
INSERT INTO demo_catalog VALUES
  (1, 'Harina PAN 1kg', 'Viveres', 1.35, false), (2, 'Arroz Mary 1kg', 'Viveres', 1.40, false),
  (3, 'Pasta Capri 1kg', 'Viveres', 1.90, false), (4, 'Azucar 1kg', 'Viveres', 1.25, false),
  (5, 'Aceite 1L', 'Viveres', 3.10, false), (6, 'Cafe 250g', 'Viveres', 3.80, false),
  (7, 'Caraotas negras 500g', 'Viveres', 1.60, false), (8, 'Atun en lata', 'Viveres', 1.95, false),
  (9, 'Malta 355ml', 'Bebidas', 0.80, false), (10, 'Refresco 2L', 'Bebidas', 2.20, false),
  (11, 'Agua 1.5L', 'Bebidas', 0.90, false), (12, 'Cerveza Polar', 'Bebidas', 1.10, false),
  (13, 'Jugo 1L', 'Bebidas', 2.40, false), (14, 'Queso blanco (kg)', 'Charcuteria', 6.50, true),
  (15, 'Jamon de pierna (kg)', 'Charcuteria', 9.80, true), (16, 'Mortadela (kg)', 'Charcuteria', 5.20, true),
  (17, 'Pollo entero (kg)', 'Carnes', 3.90, true), (18, 'Carne molida (kg)', 'Carnes', 7.20, true),
  (19, 'Cambur (kg)', 'Frutas', 1.10, true), (20, 'Tomate (kg)', 'Frutas', 1.80, true),
  (21, 'Papa (kg)', 'Frutas', 1.30, true), (22, 'Pan canilla', 'Panaderia', 0.70, false),
  (23, 'Pan de jamon', 'Panaderia', 12.00, false), (24, 'Huevos carton 30', 'Viveres', 5.90, false),
  (25, 'Leche 1L', 'Lacteos', 1.70, false), (26, 'Mantequilla 250g', 'Lacteos', 2.60, false),
  (27, 'Jabon de panela', 'Limpieza', 0.95, false), (28, 'Detergente 1kg', 'Limpieza', 3.40, false),
  (29, 'Papel higienico x4', 'Limpieza', 2.90, false), (30, 'Cloro 1L', 'Limpieza', 1.20, false);

CREATE TEMP TABLE demo_products AS
SELECT s.n AS store_n, c.pn,
       ('9d000000-0000-4000-800' || s.n || '-' || lpad(c.pn::text, 12, '0'))::uuid AS id,
       s.id AS store_id, c.name, c.category, c.price_usd, c.is_weight
FROM demo_stores s CROSS JOIN demo_catalog c;
INSERT INTO products (id, store_id, name, category, sku, price_bs, price_usd, cost_bs, cost_usd,
                      cost_per_weight_bs, cost_per_weight_usd, is_weight_product, low_stock_threshold)
SELECT id, store_id, name, category, 'SKU-' || pn, round(price_usd * 36.5, 2), price_usd,
       round(price_usd * 0.68 * 36.5, 2), round(price_usd * 0.68, 2),
       CASE WHEN is_weight THEN round(price_usd * 0.7 * 36.5, 6) END,
       CASE WHEN is_weight THEN round(price_usd * 0.7, 6) END,
       is_weight, 10
FROM demo_products;

-- How many sales per local hour: two daily peaks, busy weekends, quiet Sunday afternoons.
CREATE TEMP TABLE demo_slots AS
SELECT s.n AS store_n, s.id AS store_id, s.tz, d.day, d.day_index, h.hour,
       greatest(0, round(s.size
           * (CASE h.hour WHEN 7 THEN 2 WHEN 8 THEN 5 WHEN 9 THEN 6 WHEN 10 THEN 7 WHEN 11 THEN 9
                          WHEN 12 THEN 12 WHEN 13 THEN 10 WHEN 14 THEN 6 WHEN 15 THEN 5 WHEN 16 THEN 6
                          WHEN 17 THEN 9 WHEN 18 THEN 12 WHEN 19 THEN 10 WHEN 20 THEN 6 ELSE 3 END)
           * (CASE extract(dow FROM d.day) WHEN 0 THEN CASE WHEN h.hour >= 15 THEN 0.3 ELSE 0.9 END
                                           WHEN 5 THEN 1.25 WHEN 6 THEN 1.4 ELSE 1.0 END)
           * (0.7 + 0.6 * random()))::int) AS sales
FROM demo_stores s
CROSS JOIN LATERAL (
    SELECT ((now() AT TIME ZONE s.tz)::date - i) AS day, :days - i AS day_index
    FROM generate_series(0, :days - 1) i) d
CROSS JOIN generate_series(7, 21) h (hour);

CREATE TEMP TABLE demo_sales AS
SELECT gen_random_uuid() AS id, sl.store_n, sl.store_id,
       ((sl.day + make_interval(hours => sl.hour, secs => floor(random() * 3600)))::timestamp AT TIME ZONE sl.tz) AS sold_at,
       round(36.5 + sl.day_index * 0.07, 6) AS rate,
       random() AS r_method, random() AS r_customer, random() AS r_void, random() AS r_return,
       1 + floor(random() * 5)::int AS n_items
FROM demo_slots sl CROSS JOIN LATERAL generate_series(1, sl.sales) k;
-- Sales of today's remaining hours have not happened yet.
DELETE FROM demo_sales WHERE sold_at > now();

CREATE TEMP TABLE demo_lines AS
SELECT s.id AS sale_id, s.store_n, s.rate, 1 + floor(random() * 30)::int AS pn, random() AS r_qty, random() AS r_discount
FROM demo_sales s CROSS JOIN LATERAL generate_series(1, s.n_items) k;

CREATE TEMP TABLE demo_items AS
SELECT gen_random_uuid() AS id, l.sale_id, p.id AS product_id, p.is_weight,
       CASE WHEN p.is_weight THEN round((0.2 + l.r_qty * 1.8)::numeric, 3) ELSE (1 + floor(l.r_qty * 3))::numeric END AS qty,
       round(p.price_usd * l.rate, 4) AS unit_price_bs, p.price_usd AS unit_price_usd,
       l.r_discount < 0.05 AS discounted
FROM demo_lines l JOIN demo_products p ON p.store_n = l.store_n AND p.pn = l.pn;

CREATE TEMP TABLE demo_totals AS
SELECT sale_id,
       round(sum(qty * unit_price_bs), 2) AS subtotal_bs, round(sum(qty * unit_price_usd), 2) AS subtotal_usd,
       round(sum(CASE WHEN discounted THEN qty * unit_price_bs * 0.1 ELSE 0 END), 2) AS discount_bs,
       round(sum(CASE WHEN discounted THEN qty * unit_price_usd * 0.1 ELSE 0 END), 2) AS discount_usd
FROM demo_items GROUP BY sale_id;

INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment, customer_id,
                   note, voided_at, void_reason, sale_number)
SELECT s.id, s.store_id, s.sold_at, s.rate,
       CASE m.method WHEN 'CASH_USD' THEN 'USD' WHEN 'SPLIT' THEN 'MIXED' ELSE 'BS' END,
       jsonb_build_object('subtotal_bs', t.subtotal_bs, 'subtotal_usd', t.subtotal_usd,
                          'discount_bs', t.discount_bs, 'discount_usd', t.discount_usd,
                          'total_bs', t.subtotal_bs - t.discount_bs, 'total_usd', t.subtotal_usd - t.discount_usd),
       CASE WHEN m.method = 'SPLIT' THEN jsonb_build_object('method', 'SPLIT', 'split_payments', jsonb_build_array(
                jsonb_build_object('method', 'CASH_USD', 'amount_usd', round((t.subtotal_usd - t.discount_usd) / 2, 2),
                                   'amount_bs', round((t.subtotal_bs - t.discount_bs) / 2, 2)),
                jsonb_build_object('method', 'PAGO_MOVIL', 'amount_usd', (t.subtotal_usd - t.discount_usd) - round((t.subtotal_usd - t.discount_usd) / 2, 2),
                                   'amount_bs', (t.subtotal_bs - t.discount_bs) - round((t.subtotal_bs - t.discount_bs) / 2, 2))))
            ELSE jsonb_build_object('method', m.method) END,
       CASE WHEN m.method = 'FIAO' OR s.r_customer < 0.45
            THEN ('c0de0000-0000-4000-800' || s.store_n || '-' || lpad((1 + floor(s.r_customer * 1000)::int % 150)::text, 12, '0'))::uuid END,
       CASE WHEN s.r_customer > 0.97 THEN 'synced late from an offline register' END,
       CASE WHEN s.r_void < 0.02 THEN s.sold_at + interval '4 minutes' END,
       CASE WHEN s.r_void < 0.02 THEN 'error de cobro' END,
       row_number() OVER (PARTITION BY s.store_id ORDER BY s.sold_at)
FROM demo_sales s
JOIN demo_totals t ON t.sale_id = s.id
CROSS JOIN LATERAL (SELECT CASE WHEN s.r_method < 0.24 THEN 'CASH_BS' WHEN s.r_method < 0.44 THEN 'CASH_USD'
                                WHEN s.r_method < 0.70 THEN 'PAGO_MOVIL' WHEN s.r_method < 0.78 THEN 'TRANSFER'
                                WHEN s.r_method < 0.88 THEN 'SPLIT' WHEN s.r_method < 0.96 THEN 'FIAO'
                                ELSE 'OTHER' END AS method) m;

INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd, discount_bs, discount_usd, is_weight_product)
SELECT id, sale_id, product_id, qty, unit_price_bs, unit_price_usd,
       CASE WHEN discounted THEN round(qty * unit_price_bs * 0.1, 2) ELSE 0 END,
       CASE WHEN discounted THEN round(qty * unit_price_usd * 0.1, 2) ELSE 0 END,
       is_weight
FROM demo_items;

-- Returns: the first item of 1.5% of valid sales comes back; LA-CAJA rewrites the totals.
CREATE TEMP TABLE demo_returns AS
SELECT DISTINCT ON (s.id) gen_random_uuid() AS return_id, s.id AS sale_id, s.store_id, i.id AS item_id,
       i.product_id, i.qty, round(i.qty * i.unit_price_bs - i.discount_bs, 2) AS total_bs,
       round(i.qty * i.unit_price_usd - i.discount_usd, 2) AS total_usd, ds.sold_at + interval '1 day' AS created_at
FROM demo_sales ds JOIN sales s ON s.id = ds.id JOIN sale_items i ON i.sale_id = s.id
WHERE ds.r_return < 0.015 AND s.voided_at IS NULL AND ds.n_items > 1
ORDER BY s.id, i.id;
INSERT INTO sale_returns (id, store_id, sale_id, created_at, reason, total_bs, total_usd)
SELECT return_id, store_id, sale_id, least(created_at, now()), 'producto defectuoso', total_bs, total_usd FROM demo_returns;
INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
SELECT gen_random_uuid(), return_id, item_id, product_id, qty, total_bs, total_usd FROM demo_returns;
UPDATE sales s SET totals = s.totals || jsonb_build_object(
        'total_bs', (s.totals ->> 'total_bs')::numeric - r.total_bs,
        'total_usd', (s.totals ->> 'total_usd')::numeric - r.total_usd)
FROM demo_returns r WHERE r.sale_id = s.id;

-- Each store's warehouses (LA-CAJA's screens read the stock they hold, SPEC §2).
INSERT INTO warehouses (id, store_id, name, code, is_default)
SELECT md5('warehouse/' || st.id || '/' || w.code)::uuid, st.id, w.name, w.code, w.code = 'PRI'
FROM stores st CROSS JOIN (VALUES ('PRI', 'Principal'), ('DEP', 'Depósito')) AS w (code, name);

-- Stock: what was sold each day, and deliveries every two weeks that roughly cover it, so
-- that some products run low and a few run out; all in the main warehouse.
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, happened_at, warehouse_id)
SELECT gen_random_uuid(), s.store_id, i.product_id, 'sold', -sum(i.qty), date_trunc('day', s.sold_at) + interval '23 hours',
       md5('warehouse/' || s.store_id || '/PRI')::uuid
FROM sales s JOIN sale_items i ON i.sale_id = s.id
WHERE s.voided_at IS NULL
GROUP BY s.store_id, i.product_id, date_trunc('day', s.sold_at);
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, unit_cost_bs, unit_cost_usd, happened_at,
                                 warehouse_id)
SELECT gen_random_uuid(), m.store_id, m.product_id, 'received',
       round(-sum(m.qty_delta) * (0.9 + 0.25 * random())::numeric + 8, CASE WHEN bool_or(p.is_weight) THEN 3 ELSE 0 END),
       0, 0, min(m.happened_at) - interval '20 hours', md5('warehouse/' || m.store_id || '/PRI')::uuid
FROM inventory_movements m JOIN demo_products p ON p.id = m.product_id
GROUP BY m.store_id, m.product_id, (m.happened_at::date - date '2000-01-03') / 14;

-- What LA-CAJA's screens read (SPEC §2): the stock the warehouses hold, as its writes leave it
-- (clamped at 0); lots with their costs for some products; the store's BCV rate.
INSERT INTO warehouse_stock (warehouse_id, product_id, stock, updated_at)
SELECT md5('warehouse/' || m.store_id || '/PRI')::uuid, m.product_id, greatest(0, sum(m.qty_delta)), max(m.happened_at)
FROM inventory_movements m GROUP BY m.store_id, m.product_id;
INSERT INTO product_lots (product_id, lot_number, initial_quantity, remaining_quantity, unit_cost_bs, unit_cost_usd, received_at)
SELECT p.id, 'L-' || n, 24, 6 * n, round(p.cost_bs * (0.9 + 0.1 * n), 2), round(p.cost_usd * (0.9 + 0.1 * n), 2), now() - n * interval '9 days'
FROM products p CROSS JOIN generate_series(1, 2) n
WHERE NOT p.is_weight_product AND abs(hashtext(p.id::text)) % 5 = 0;
INSERT INTO exchange_rates (store_id, rate, rate_type, is_active, is_preferred, effective_from)
SELECT st.id, 36.5, 'BCV', true, true, now() - interval '1 day' FROM stores st;

ANALYZE;
SELECT count(*) AS sales, count(*) FILTER (WHERE voided_at IS NOT NULL) AS voided,
       (SELECT count(*) FROM sale_items) AS items, (SELECT count(*) FROM sale_returns) AS returns
FROM sales;

-- LA-CAJA records a debt for every sale on credit (FIAO): most still open, some partly or fully paid.
INSERT INTO debts (id, store_id, sale_id, customer_id, created_at, amount_bs, amount_usd, status)
SELECT md5('debt/' || s.id)::uuid, s.store_id, s.id, s.customer_id, s.sold_at,
       (s.totals ->> 'total_bs')::numeric, (s.totals ->> 'total_usd')::numeric,
       CASE WHEN abs(hashtext(s.id::text)) % 10 < 5 THEN 'open' WHEN abs(hashtext(s.id::text)) % 10 < 7 THEN 'partial' ELSE 'paid' END
FROM sales s
WHERE s.payment ->> 'method' = 'FIAO' AND s.customer_id IS NOT NULL AND s.voided_at IS NULL;
