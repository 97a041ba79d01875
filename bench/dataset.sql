-- A LA-CAJA history for benchmarks, set-based and deterministic (every value is a hash of the
-- sale's number): :stores stores in four zones, :days days back from today, sales numbered
-- :from..:to out of :total (run it batch by batch; each batch is one transaction, captured by
-- the extension like any POS write). Daily and weekly seasonality, 2 % voids, 30 % with a
-- customer, seven payment methods (split payments with their parts), 1-3 items per sale from
-- 50 products per store (weight products by the kilo), returns of 1 in 60 valid sales (which
-- rewrite the sale's totals, as LA-CAJA does), and one sync event per sale (1 in 20 received
-- hours late, from a register that was offline).
-- Needs bench/dataset_setup.sql first.

INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment, customer_id, voided_at)
SELECT md5('sale' || i)::uuid, st.id, t.sold_at, 36.5, 'BS',
       jsonb_build_object('subtotal_bs', a.bs, 'subtotal_usd', round(a.bs / 36.5, 2), 'discount_bs', 0, 'discount_usd', 0,
                          'total_bs', a.bs, 'total_usd', round(a.bs / 36.5, 2)),
       CASE WHEN h.h3 % 9 = 7
            THEN jsonb_build_object('method', 'SPLIT', 'split_payments', jsonb_build_array(
                     jsonb_build_object('method', 'CASH_USD', 'amount_usd', round(a.bs / 36.5 / 2, 2), 'amount_bs', round(a.bs / 2, 2)),
                     jsonb_build_object('method', 'PAGO_MOVIL', 'amount_usd', round(a.bs / 36.5 - round(a.bs / 36.5 / 2, 2), 2),
                                        'amount_bs', a.bs - round(a.bs / 2, 2))))
            ELSE jsonb_build_object('method', (ARRAY['CASH_BS', 'CASH_BS', 'CASH_USD', 'PAGO_MOVIL', 'PAGO_MOVIL', 'TRANSFER', 'FIAO', 'SPLIT', 'OTHER'])[1 + h.h3 % 9]) END,
       CASE WHEN h.h4 % 10 < 3 THEN md5('customer' || st.n || '/' || h.h4 % 50)::uuid END,
       CASE WHEN h.h5 % 50 = 0 THEN t.sold_at + interval '5 minutes' END
FROM generate_series(:from, :to) AS i
CROSS JOIN LATERAL (SELECT abs(hashint8(i)) AS h1, abs(hashint8(i + 1000000000)) AS h2, abs(hashint8(i + 2000000000)) AS h3,
                           abs(hashint8(i + 3000000000)) AS h4, abs(hashint8(i + 4000000000)) AS h5) AS h
JOIN bench_stores AS st ON st.n = h.h1 % :stores
-- Sales are numbered from today backwards, so that every prefix of the numbering is a complete
-- recent history (numbers past :total are older than :days); busy hours 10-13 and 17-20;
-- fewer sales on Sundays.
CROSS JOIN LATERAL (SELECT (date_trunc('day', now() AT TIME ZONE st.tz)
                            - ((:days - 1) * ((i - 1)::float8 / :total))::int * interval '1 day'
                            + (ARRAY[8, 9, 10, 10, 11, 11, 12, 12, 13, 14, 15, 16, 17, 17, 18, 18, 19, 19, 20, 21])[1 + h.h2 % 20] * interval '1 hour'
                            + (h.h2 / 20 % 3600) * interval '1 second') AT TIME ZONE st.tz AS planned) AS p
-- Today's sales end now (a later hour of today moves to yesterday); two Sunday sales in three
-- move to Saturday (quiet Sundays, busy Saturdays).
CROSS JOIN LATERAL (SELECT CASE WHEN p.planned > now() THEN p.planned - interval '1 day' ELSE p.planned END AS at) AS today
CROSS JOIN LATERAL (SELECT CASE WHEN extract(dow FROM today.at AT TIME ZONE st.tz) = 0 AND h.h5 % 3 <> 0
                                THEN today.at - interval '1 day' ELSE today.at END AS sold_at) AS t
CROSS JOIN LATERAL (SELECT round((1 + h.h3 / 9 % 4000) * 9.125, 2) AS bs) AS a;

INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd, discount_bs, discount_usd, is_weight_product)
SELECT md5('item' || s.i || '/' || k)::uuid, s.id, p.id,
       CASE WHEN p.is_weight_product THEN round(0.25 + (abs(hashint8(s.i * 7 + k)) % 300) / 100.0, 3)
            ELSE 1 + abs(hashint8(s.i * 7 + k)) % 4 END,
       p.price_bs, p.price_usd, 0, 0, p.is_weight_product
FROM (SELECT i, md5('sale' || i)::uuid AS id, abs(hashint8(i)) % :stores AS store_n FROM generate_series(:from, :to) AS i) AS s
JOIN sales AS sale ON sale.id = s.id
CROSS JOIN LATERAL generate_series(1, 1 + abs(hashint8(s.i + 5000000000)) % 3) AS k
JOIN bench_products AS p ON p.store_n = s.store_n AND p.pn = abs(hashint8(s.i * 13 + k)) % 50;

WITH returned AS (
    SELECT i, md5('return' || i)::uuid AS return_id, s.id AS sale_id, s.store_id, s.sold_at,
           it.id AS item_id, it.product_id, least(it.qty, 1) AS qty,
           round(it.unit_price_bs * least(it.qty, 1), 2) AS bs, round(it.unit_price_usd * least(it.qty, 1), 2) AS usd
    FROM generate_series(:from, :to) AS i
    JOIN sales AS s ON s.id = md5('sale' || i)::uuid
    JOIN sale_items AS it ON it.id = md5('item' || i || '/1')::uuid
    WHERE abs(hashint8(i + 6000000000)) % 60 = 0 AND s.voided_at IS NULL),
return_rows AS (
    INSERT INTO sale_returns (id, store_id, sale_id, created_at, total_bs, total_usd)
    SELECT return_id, store_id, sale_id, sold_at + interval '1 day', bs, usd FROM returned),
return_items AS (
    INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
    SELECT md5('return item' || i)::uuid, return_id, item_id, product_id, qty, bs, usd FROM returned)
UPDATE sales AS s
SET totals = s.totals || jsonb_build_object('total_bs', (s.totals ->> 'total_bs')::numeric - r.bs,
                                            'total_usd', (s.totals ->> 'total_usd')::numeric - r.usd)
FROM returned AS r WHERE s.id = r.sale_id;

INSERT INTO events (event_id, store_id, device_id, seq, type, version, created_at, received_at, payload)
SELECT md5('event' || i)::uuid, s.store_id, md5('device' || s.store_id || '/' || abs(hashint8(i)) % 3)::uuid, i,
       'SaleCreated', 1, s.sold_at,
       s.sold_at + CASE WHEN abs(hashint8(i + 7000000000)) % 20 = 0 THEN (1 + abs(hashint8(i)) % 48) * interval '1 hour'
                        ELSE interval '2 seconds' END,
       jsonb_build_object('sale_id', s.id, 'totals', s.totals, 'payment', s.payment)
FROM generate_series(:from, :to) AS i
JOIN sales AS s ON s.id = md5('sale' || i)::uuid;
