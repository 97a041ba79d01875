-- One store's dashboard, read from the rollups only.  psql -v store=<uuid> -f demo/dashboard.sql
\pset footer off
\pset null '-'
\timing off
SELECT s.name || '  ·  ' || analytics.store_timezone(s.id) || '  ·  local time ' ||
       to_char(now() AT TIME ZONE analytics.store_timezone(s.id), 'YYYY-MM-DD HH24:MI') AS "STORE"
FROM stores s WHERE s.id = :'store';
SELECT (now() AT TIME ZONE analytics.store_timezone(:'store'))::date AS today \gset
\timing on

\echo 'Today so far'
SELECT coalesce(sum(sales_count), 0) AS sales, coalesce(sum(total_bs), 0) AS "total Bs",
       coalesce(sum(total_usd), 0) AS "total USD", round(sum(total_usd) / nullif(sum(sales_count), 0), 2) AS "avg ticket USD",
       coalesce(sum(unique_customers), 0) AS customers
FROM analytics.sales_daily WHERE store_id = :'store' AND day = :'today';

\echo 'Last 30 days against the 30 before'
SELECT period, sales, "total Bs", "total USD", "avg ticket USD",
       CASE WHEN period = 'last 30 days' THEN round(100 * ("total USD" / nullif(lag("total USD") OVER (ORDER BY period DESC), 0) - 1), 1) END AS "growth %"
FROM (SELECT CASE WHEN day > :'today'::date - 30 THEN 'last 30 days' ELSE 'previous 30' END AS period,
             sum(sales_count) AS sales, sum(total_bs) AS "total Bs", sum(total_usd) AS "total USD",
             round(sum(total_usd) / sum(sales_count), 2) AS "avg ticket USD"
      FROM analytics.sales_daily
      WHERE store_id = :'store' AND day > :'today'::date - 60 AND day <= :'today'
      GROUP BY 1) p
ORDER BY period DESC;

\echo 'Payment mix, last 30 days'
SELECT method, sum(sales_count) AS sales,
       round(100.0 * sum(sales_count) / sum(sum(sales_count)) OVER (), 1) AS "share %",
       sum(total_usd) AS "total USD"
FROM analytics.sales_by_payment_daily
WHERE store_id = :'store' AND day > :'today'::date - 30 AND day <= :'today'
GROUP BY method ORDER BY sales DESC;

\echo 'When it sells: sales by weekday and local hour, last 28 days (darker = busier)'
WITH cells AS (
    SELECT day_of_week, hour, sum(sales_count) AS sales
    FROM analytics.sales_heatmap
    WHERE store_id = :'store' AND date > :'today'::date - 28 AND date <= :'today'
    GROUP BY 1, 2),
peak AS (SELECT greatest(max(sales), 1) AS top FROM cells)
SELECT (ARRAY['Sun','Mon','Tue','Wed','Thu','Fri','Sat'])[d + 1] AS day,
       string_agg(CASE WHEN coalesce(c.sales, 0) = 0 THEN '  ·'
                       ELSE '  ' || (ARRAY['░','▒','▓','█'])[1 + least(3, floor(4.0 * c.sales / peak.top)::int)] END,
                  '' ORDER BY h) AS " 6  7  8  9 10 11 12 13 14 15 16 17 18 19 20 21 22 h",
       coalesce(sum(c.sales), 0) AS sales
FROM generate_series(0, 6) d CROSS JOIN generate_series(6, 22) h CROSS JOIN peak
LEFT JOIN cells c ON c.day_of_week = d AND c.hour = h
GROUP BY d, peak.top ORDER BY (d + 6) % 7;
