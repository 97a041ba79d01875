-- One store's dashboard, from the extension's functions (rollups only, never sales).
--   psql -v store=<uuid> -f demo/dashboard.sql
\pset footer off
\pset null '-'
\timing off
SELECT s.name || '  ·  ' || analytics.store_timezone(s.id) || '  ·  local time ' ||
       to_char(now() AT TIME ZONE analytics.store_timezone(s.id), 'YYYY-MM-DD HH24:MI') AS "STORE"
FROM stores s WHERE s.id = :'store';
SELECT analytics.store_today(:'store') AS today \gset
\timing on

\echo 'analytics.kpis(): today, the last 30 days against the 30 before, stock'
SELECT analytics.kpis(:'store') AS k \gset
SELECT p.label AS period, (p.j ->> 'sales_count')::bigint AS sales,
       round((p.j ->> 'total_bs')::numeric, 2) AS "total Bs", round((p.j ->> 'total_usd')::numeric, 2) AS "total USD",
       round((p.j ->> 'avg_ticket_usd')::numeric, 2) AS "avg ticket USD", (p.j ->> 'unique_customers')::bigint AS customers
FROM (VALUES (1, 'today', (:'k'::jsonb) -> 'today'), (2, 'last 30 days', (:'k'::jsonb) -> 'period'),
             (3, 'previous 30', (:'k'::jsonb) -> 'previous_period')) AS p (n, label, j)
ORDER BY p.n;
SELECT (:'k'::jsonb) ->> 'growth_percentage' AS "growth % (Bs)",
       (:'k'::jsonb) -> 'top_product' ->> 'name' AS "top product", (:'k'::jsonb) -> 'top_category' ->> 'category' AS "top category",
       (:'k'::jsonb) -> 'inventory' ->> 'total_products' AS products, (:'k'::jsonb) -> 'inventory' ->> 'low_stock_count' AS "low stock",
       (:'k'::jsonb) -> 'inventory' ->> 'out_of_stock_count' AS "out of stock",
       round(((:'k'::jsonb) -> 'inventory' ->> 'stock_value_usd')::numeric, 2) AS "stock value USD";

\echo 'analytics.top_products(): last 30 days, by net quantity'
SELECT rank, name, category, round(net_qty, 3) AS "net qty", round(revenue_usd, 2) AS "revenue USD", times_sold AS sales
FROM analytics.top_products(:'store', 30, 5);

\echo 'analytics.sales_by_day(): the last 7 days with cost and profit'
SELECT day, sales_count AS sales, round(total_usd, 2) AS "total USD", round(cost_usd, 2) AS "cost USD",
       round(profit_usd, 2) AS "profit USD"
FROM analytics.sales_by_day(:'store', :'today'::date - 6, :'today');

\echo 'Payment mix, last 30 days (analytics.sales_by_payment_daily)'
SELECT method, sum(sales_count) AS sales,
       round(100.0 * sum(sales_count) / sum(sum(sales_count)) OVER (), 1) AS "share %",
       round(sum(total_usd), 2) AS "total USD"
FROM analytics.sales_by_payment_daily
WHERE store_id = :'store' AND day > :'today'::date - 30 AND day <= :'today'
GROUP BY method ORDER BY sales DESC;

\echo 'analytics.heatmap(): sales by weekday and local hour, last 28 days (darker = busier)'
WITH cells AS (SELECT * FROM analytics.heatmap(:'store', :'today'::date - 27, :'today')),
peak AS (SELECT greatest(max(sales_count), 1) AS top FROM cells)
SELECT (ARRAY['Sun','Mon','Tue','Wed','Thu','Fri','Sat'])[d + 1] AS day,
       string_agg(CASE WHEN coalesce(c.sales_count, 0) = 0 THEN '  ·'
                       ELSE '  ' || (ARRAY['░','▒','▓','█'])[1 + least(3, floor(4.0 * c.sales_count / peak.top)::int)] END,
                  '' ORDER BY h) AS " 6  7  8  9 10 11 12 13 14 15 16 17 18 19 20 21 22 h",
       coalesce(sum(c.sales_count), 0) AS sales
FROM generate_series(0, 6) d CROSS JOIN generate_series(6, 22) h CROSS JOIN peak
LEFT JOIN cells c ON c.day_of_week = d AND c.hour = h
GROUP BY d, peak.top ORDER BY (d + 6) % 7;

\echo 'analytics.forecast_sales(): the next 7 days, with the 80 % interval'
SELECT day, to_char(day, 'Dy') AS weekday, status, expected_sales AS sales, sales_low || ' – ' || sales_high AS "80 % (sales)",
       round(expected_usd, 2) AS "USD", round(usd_low, 2) || ' – ' || round(usd_high, 2) AS "80 % (USD)", note
FROM analytics.forecast_sales(:'store', 7);

\echo 'analytics.stock_forecast(): the products that run out first, and what to reorder for 14 days'
SELECT name, unit, round(stock, 3) AS stock, round(daily_demand, 2) AS "a day", days_of_cover AS "days of cover",
       stockout_date AS "runs out", stockout_earliest || ' – ' || coalesce(stockout_latest::text, 'later') AS "80 %",
       reorder_qty AS reorder
FROM analytics.stock_forecast(:'store')
WHERE status = 'forecast'
ORDER BY stockout_date NULLS LAST, name
LIMIT 5;
