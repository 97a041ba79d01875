-- The warehouse's definitions written independently over LA-CAJA's tables (issue 7), as
-- temporary views in the first schema of search_path holding LA-CAJA's tables. The captured
-- unit cost is read from analytics_internal.item_facts (the rollup oracle checks its capture) and the
-- product version from analytics.dim_product (checked against the products' history by the
-- tests themselves).

CREATE TEMP VIEW oracle_facts AS
SELECT i.id AS sale_item_id, i.sale_id, s.store_id, s.customer_id, i.product_id,
       (SELECT v.product_key FROM analytics.dim_product v
        WHERE v.product_id = i.product_id AND v.valid_from <= s.sold_at AND s.sold_at < v.valid_to) AS product_key,
       (s.sold_at AT TIME ZONE z.zone)::date AS sale_date,
       (s.sold_at AT TIME ZONE z.zone)::time AS sale_time,
       s.sold_at,
       coalesce(nullif(s.payment ->> 'method', ''), 'UNKNOWN') AS payment_method,
       s.exchange_rate, i.is_weight_product, s.voided_at IS NOT NULL AS is_voided,
       i.qty,
       i.unit_price_bs * i.qty - i.discount_bs AS amount_bs,
       i.unit_price_usd * i.qty - i.discount_usd AS amount_usd,
       i.qty * c.unit_cost_bs AS cost_bs,
       i.qty * c.unit_cost_usd AS cost_usd,
       c.unit_cost_bs, c.unit_cost_usd,
       coalesce(r.qty, 0) AS returned_qty, coalesce(r.total_bs, 0) AS returned_bs, coalesce(r.total_usd, 0) AS returned_usd,
       (i.unit_price_bs * i.qty - i.discount_bs - coalesce(r.total_bs, 0)) - (i.qty - coalesce(r.qty, 0)) * c.unit_cost_bs AS profit_bs,
       (i.unit_price_usd * i.qty - i.discount_usd - coalesce(r.total_usd, 0)) - (i.qty - coalesce(r.qty, 0)) * c.unit_cost_usd AS profit_usd
FROM sales s
JOIN sale_items i ON i.sale_id = s.id
CROSS JOIN LATERAL (SELECT coalesce((SELECT st.timezone FROM analytics.store_settings st WHERE st.store_id = s.store_id),
                                    current_setting('lacaja_analytics.default_timezone')) AS zone) AS z
LEFT JOIN analytics_internal.item_facts c ON c.sale_item_id = i.id
LEFT JOIN (SELECT x.sale_item_id, sum(x.qty) AS qty, sum(x.total_bs) AS total_bs, sum(x.total_usd) AS total_usd
           FROM sale_return_items x GROUP BY x.sale_item_id) AS r ON r.sale_item_id = i.id;

CREATE TEMP VIEW oracle_fact_rows AS
SELECT sale_item_id, sale_id, store_id, customer_id, product_id, product_key, sale_date, sale_time, sold_at, payment_method,
       exchange_rate, is_weight_product, is_voided, qty, amount_bs, amount_usd, cost_bs, cost_usd, returned_qty,
       returned_bs, returned_usd, profit_bs, profit_usd
FROM oracle_facts;

CREATE TEMP VIEW warehouse_fact_rows AS
SELECT sale_item_id, sale_id, store_id, customer_id, product_id, product_key, sale_date, sale_time, sold_at, payment_method,
       exchange_rate, is_weight_product, is_voided, qty, amount_bs, amount_usd, cost_bs, cost_usd, returned_qty,
       returned_bs, returned_usd, profit_bs, profit_usd
FROM analytics.fact_sales;

-- Facts missing, extra or different, in both directions.
CREATE TEMP VIEW oracle_fact_differences AS
SELECT 'missing or different' AS side, e.* FROM (SELECT * FROM oracle_fact_rows EXCEPT ALL SELECT * FROM warehouse_fact_rows) AS e
UNION ALL
SELECT 'extra or different', a.* FROM (SELECT * FROM warehouse_fact_rows EXCEPT ALL SELECT * FROM oracle_fact_rows) AS a;

-- The four reports over the whole history, per store, from the source tables.
CREATE TEMP VIEW oracle_reports AS
WITH valid AS (SELECT o.*, v.category FROM oracle_facts o
               LEFT JOIN analytics.dim_product v ON v.product_key = o.product_key
               WHERE NOT o.is_voided),
category_month AS (
    SELECT store_id, jsonb_agg(jsonb_build_array(month, category, sales_count, qty, revenue_bs, revenue_usd, cost_bs, cost_usd,
                                                 profit_bs, profit_usd, margin) ORDER BY month, category) AS rows
    FROM (SELECT store_id, date_trunc('month', sale_date)::date AS month, category, count(DISTINCT sale_id) AS sales_count,
                 sum(qty - returned_qty) AS qty, sum(amount_bs - returned_bs) AS revenue_bs,
                 sum(amount_usd - returned_usd) AS revenue_usd,
                 sum((qty - returned_qty) * unit_cost_bs) AS cost_bs,
                 sum((qty - returned_qty) * unit_cost_usd) AS cost_usd,
                 sum(profit_bs) AS profit_bs, sum(profit_usd) AS profit_usd,
                 round(100 * sum(profit_bs) / nullif(sum(amount_bs - returned_bs), 0), 2) AS margin
          FROM valid GROUP BY 1, 2, 3) AS g
    GROUP BY store_id),
weekday_hour AS (
    SELECT store_id, jsonb_agg(jsonb_build_array(dow, hour, sales_count, qty, revenue_bs, revenue_usd, profit_bs, profit_usd)
                               ORDER BY dow, hour) AS rows
    FROM (SELECT store_id, extract(dow FROM sale_date)::int AS dow, extract(hour FROM sale_time)::int AS hour,
                 count(DISTINCT sale_id) AS sales_count, sum(qty - returned_qty) AS qty,
                 sum(amount_bs - returned_bs) AS revenue_bs, sum(amount_usd - returned_usd) AS revenue_usd,
                 sum(profit_bs) AS profit_bs, sum(profit_usd) AS profit_usd
          FROM valid GROUP BY 1, 2, 3) AS g
    GROUP BY store_id),
payment_month AS (
    SELECT store_id, jsonb_agg(jsonb_build_array(month, payment_method, sales_count, revenue_bs, revenue_usd, profit_bs, profit_usd)
                               ORDER BY month, payment_method) AS rows
    FROM (SELECT store_id, date_trunc('month', sale_date)::date AS month, payment_method, count(DISTINCT sale_id) AS sales_count,
                 sum(amount_bs - returned_bs) AS revenue_bs, sum(amount_usd - returned_usd) AS revenue_usd,
                 sum(profit_bs) AS profit_bs, sum(profit_usd) AS profit_usd
          FROM valid GROUP BY 1, 2, 3) AS g
    GROUP BY store_id),
abc AS (
    SELECT store_id, jsonb_agg(jsonb_build_array(product_id, revenue_bs, class) ORDER BY revenue_bs DESC, product_id) AS rows
    FROM (SELECT store_id, product_id, revenue_bs,
                 CASE WHEN total > 0 AND before < 0.80 * total THEN 'A'
                      WHEN total > 0 AND before < 0.95 * total THEN 'B' ELSE 'C' END AS class
          FROM (SELECT store_id, product_id, revenue_bs, sum(revenue_bs) OVER (PARTITION BY store_id) AS total,
                       coalesce(sum(revenue_bs) OVER (PARTITION BY store_id ORDER BY revenue_bs DESC, product_id
                                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
                FROM (SELECT store_id, product_id, sum(amount_bs - returned_bs) AS revenue_bs FROM valid GROUP BY 1, 2) AS p) AS w) AS c
    GROUP BY store_id)
SELECT s.id AS store_id, c.rows AS category_month, w.rows AS weekday_hour, p.rows AS payment_month, a.rows AS abc
FROM stores s
LEFT JOIN category_month c ON c.store_id = s.id
LEFT JOIN weekday_hour w ON w.store_id = s.id
LEFT JOIN payment_month p ON p.store_id = s.id
LEFT JOIN abc a ON a.store_id = s.id;

-- The extension's reports in the same shape.
CREATE TEMP VIEW warehouse_reports AS
SELECT s.id AS store_id,
       (SELECT jsonb_agg(jsonb_build_array(month, category, sales_count, qty, revenue_bs, revenue_usd, cost_bs, cost_usd,
                                           profit_bs, profit_usd, margin_pct) ORDER BY month, category)
        FROM analytics.report_sales_by_category_month(s.id)) AS category_month,
       (SELECT jsonb_agg(jsonb_build_array(day_of_week, hour, sales_count, qty, revenue_bs, revenue_usd, profit_bs, profit_usd)
                         ORDER BY day_of_week, hour)
        FROM analytics.report_sales_by_weekday_hour(s.id)) AS weekday_hour,
       (SELECT jsonb_agg(jsonb_build_array(month, payment_method, sales_count, revenue_bs, revenue_usd, profit_bs, profit_usd)
                         ORDER BY month, payment_method)
        FROM analytics.report_sales_by_payment_month(s.id)) AS payment_month,
       (SELECT jsonb_agg(jsonb_build_array(product_id, revenue_bs, class) ORDER BY rank)
        FROM analytics.report_product_abc(s.id)) AS abc
FROM stores s;

CREATE TEMP VIEW oracle_report_differences AS
SELECT o.store_id, r.report
FROM oracle_reports o JOIN warehouse_reports w USING (store_id)
CROSS JOIN LATERAL (VALUES ('category_month', o.category_month, w.category_month),
                           ('weekday_hour', o.weekday_hour, w.weekday_hour),
                           ('payment_month', o.payment_month, w.payment_month),
                           ('abc', o.abc, w.abc)) AS r (report, expected, actual)
WHERE r.expected IS DISTINCT FROM r.actual;
