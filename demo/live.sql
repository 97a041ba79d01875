-- POS traffic after the extension is installed: the rollups change at each commit.
\pset footer off
SELECT id AS store, (now() AT TIME ZONE analytics.store_timezone(id))::date AS today
FROM stores ORDER BY id LIMIT 1 \gset

\echo 'Before: today in the first store (from analytics.sales_daily)'
SELECT coalesce(sum(sales_count), 0) AS sales, coalesce(sum(total_usd), 0) AS "total USD"
FROM analytics.sales_daily WHERE store_id = :'store' AND day = :'today';

\echo '25 sales ring up, one is voided, one item comes back (totals rewritten), and an offline register syncs a sale from 9 days ago'
INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment, customer_id)
SELECT gen_random_uuid(), :'store', now() - (i * interval '2 minutes'), 45.0, 'BS',
       jsonb_build_object('subtotal_bs', 450 + i * 9, 'subtotal_usd', 10 + i * 0.2, 'discount_bs', 0, 'discount_usd', 0,
                          'total_bs', 450 + i * 9, 'total_usd', 10 + i * 0.2),
       jsonb_build_object('method', (ARRAY['CASH_BS', 'PAGO_MOVIL', 'CASH_USD', 'FIAO'])[1 + i % 4]),
       (SELECT id FROM customers WHERE store_id = :'store' ORDER BY id OFFSET i LIMIT 1)
FROM generate_series(1, 25) i;
UPDATE sales SET voided_at = now(), void_reason = 'cliente desistio'
WHERE id = (SELECT id FROM sales WHERE store_id = :'store' AND sold_at > now() - interval '1 hour' ORDER BY sold_at LIMIT 1);
UPDATE sales SET totals = totals || jsonb_build_object('total_bs', (totals ->> 'total_bs')::numeric - 90,
                                                       'total_usd', (totals ->> 'total_usd')::numeric - 2)
WHERE id = (SELECT id FROM sales WHERE store_id = :'store' AND sold_at > now() - interval '1 hour' AND voided_at IS NULL
            ORDER BY sold_at DESC LIMIT 1);
INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment)
VALUES (gen_random_uuid(), :'store', now() - interval '9 days', 44.5, 'USD',
        '{"subtotal_bs": 890, "subtotal_usd": 20, "discount_bs": 0, "discount_usd": 0, "total_bs": 890, "total_usd": 20}',
        '{"method": "CASH_USD"}');

\echo 'After: today, and the day the late sale belongs to'
SELECT day, sales_count AS sales, total_usd AS "total USD", unique_customers AS customers
FROM analytics.sales_daily
WHERE store_id = :'store' AND day IN (:'today', :'today'::date - 9) ORDER BY day DESC;
