-- Stores, zones, customers, products and stock for bench/dataset.sql (:stores stores).
CREATE TABLE bench_stores (n int PRIMARY KEY, id uuid NOT NULL, tz text NOT NULL);
INSERT INTO bench_stores
SELECT n, md5('store' || n)::uuid, (ARRAY['America/Caracas', 'America/Caracas', 'America/Bogota', 'America/New_York', 'Europe/Madrid'])[1 + n % 5]
FROM generate_series(0, :stores - 1) n;
INSERT INTO stores (id, name) SELECT id, 'Tienda ' || n FROM bench_stores;
INSERT INTO customers (id, store_id, name)
SELECT md5('customer' || s.n || '/' || c)::uuid, s.id, 'Cliente ' || c FROM bench_stores s, generate_series(0, 49) c;
CREATE TABLE bench_products AS
SELECT s.n AS store_n, pn, md5('product' || s.n || '/' || pn)::uuid AS id, s.id AS store_id,
       pn % 7 = 0 AS is_weight_product, round((1 + pn % 17) * 0.55 * 36.5, 2) AS price_bs, round((1 + pn % 17) * 0.55, 2) AS price_usd
FROM bench_stores s, generate_series(0, 49) pn;
CREATE UNIQUE INDEX ON bench_products (store_n, pn);
INSERT INTO products (id, store_id, name, category, sku, price_bs, price_usd, cost_bs, cost_usd,
                      cost_per_weight_bs, cost_per_weight_usd, is_weight_product, low_stock_threshold)
SELECT id, store_id, 'Producto ' || pn, (ARRAY['Viveres', 'Bebidas', 'Charcuteria', 'Limpieza', 'Lacteos'])[1 + pn % 5], 'SKU-' || pn,
       price_bs, price_usd, round(price_bs * 0.7, 2), round(price_usd * 0.7, 2),
       CASE WHEN is_weight_product THEN round(price_bs * 0.68, 6) END, CASE WHEN is_weight_product THEN round(price_usd * 0.68, 6) END,
       is_weight_product, 20
FROM bench_products;
INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, happened_at)
SELECT md5('movement' || p.id || '/' || m)::uuid, p.store_id, p.id, CASE WHEN m % 5 = 0 THEN 'adjust' ELSE 'received' END,
       CASE WHEN m % 5 = 0 THEN -3 ELSE 10 + abs(hashint8(m)) % 90 END, now() - m * interval '3 days'
FROM bench_products p, generate_series(1, 40) m;
