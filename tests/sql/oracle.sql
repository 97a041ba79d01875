-- SPEC §2 evaluated directly over the source tables, written independently of the extension's
-- code: the oracle every rollup is compared with. Run with search_path set to the schema
-- that holds LA-CAJA's tables; creates temporary views named oracle_<relation>.

CREATE FUNCTION pg_temp.oracle_amount(v jsonb) RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN jsonb_typeof(v) = 'number' AND abs(v::numeric) < 1e1000 THEN v::numeric
        WHEN jsonb_typeof(v) = 'string'
             AND (v #>> '{}') ~ '^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]{1,3})?\s*$'
             THEN (v #>> '{}')::numeric
        ELSE 0
    END
$$;

CREATE TEMP VIEW oracle_valid_sales AS
SELECT s.*, coalesce(st.timezone, current_setting('lacaja_analytics.default_timezone')) AS tz,
       pg_temp.oracle_amount(s.totals -> 'subtotal_bs')  AS a_subtotal_bs,
       pg_temp.oracle_amount(s.totals -> 'subtotal_usd') AS a_subtotal_usd,
       pg_temp.oracle_amount(s.totals -> 'discount_bs')  AS a_discount_bs,
       pg_temp.oracle_amount(s.totals -> 'discount_usd') AS a_discount_usd,
       pg_temp.oracle_amount(s.totals -> 'total_bs')     AS a_total_bs,
       pg_temp.oracle_amount(s.totals -> 'total_usd')    AS a_total_usd
FROM sales s
LEFT JOIN analytics.store_settings st ON st.store_id = s.store_id
WHERE s.voided_at IS NULL;

CREATE TEMP VIEW oracle_sales_hourly AS
SELECT store_id, date_trunc('hour', sold_at AT TIME ZONE tz) AT TIME ZONE tz AS bucket,
       count(*) AS sales_count,
       sum(a_subtotal_bs) AS subtotal_bs, sum(a_subtotal_usd) AS subtotal_usd,
       sum(a_discount_bs) AS discount_bs, sum(a_discount_usd) AS discount_usd,
       sum(a_total_bs) AS total_bs, sum(a_total_usd) AS total_usd,
       sum(a_total_bs) / count(*) AS avg_ticket_bs, sum(a_total_usd) / count(*) AS avg_ticket_usd
FROM oracle_valid_sales GROUP BY 1, 2;

CREATE TEMP VIEW oracle_sales_daily AS
SELECT store_id, (sold_at AT TIME ZONE tz)::date AS day,
       (sold_at AT TIME ZONE tz)::date::timestamp AT TIME ZONE min(tz) AS bucket,
       count(*) AS sales_count,
       sum(a_subtotal_bs) AS subtotal_bs, sum(a_subtotal_usd) AS subtotal_usd,
       sum(a_discount_bs) AS discount_bs, sum(a_discount_usd) AS discount_usd,
       sum(a_total_bs) AS total_bs, sum(a_total_usd) AS total_usd,
       sum(a_total_bs) / count(*) AS avg_ticket_bs, sum(a_total_usd) / count(*) AS avg_ticket_usd,
       count(DISTINCT customer_id) AS unique_customers
FROM oracle_valid_sales GROUP BY 1, 2;

CREATE TEMP VIEW oracle_sales_by_payment_daily AS
SELECT store_id, (sold_at AT TIME ZONE tz)::date AS day,
       -- documented limit (docs/design.md): a "method" over 64 characters is UNKNOWN
       CASE WHEN length(payment ->> 'method') > 64 THEN 'UNKNOWN'
            ELSE coalesce(nullif(payment ->> 'method', ''), 'UNKNOWN') END AS method,
       count(*) AS sales_count, sum(a_total_bs) AS total_bs, sum(a_total_usd) AS total_usd
FROM oracle_valid_sales GROUP BY 1, 2, 3;

CREATE TEMP VIEW oracle_sales_heatmap AS
SELECT store_id, (sold_at AT TIME ZONE tz)::date AS date,
       extract(hour FROM sold_at AT TIME ZONE tz)::int AS hour,
       extract(dow FROM sold_at AT TIME ZONE tz)::int AS day_of_week,
       count(*) AS sales_count, sum(a_total_bs) AS total_amount_bs, sum(a_total_usd) AS total_amount_usd,
       sum(a_total_bs) / count(*) AS avg_ticket_bs, sum(a_total_usd) / count(*) AS avg_ticket_usd
FROM oracle_valid_sales GROUP BY 1, 2, 3, 4;

CREATE TEMP VIEW oracle_product_sales_daily AS
SELECT s.store_id, (s.sold_at AT TIME ZONE s.tz)::date AS day, i.product_id,
       sum(i.qty) AS qty,
       sum(i.unit_price_bs * i.qty - i.discount_bs) AS revenue_bs,
       sum(i.unit_price_usd * i.qty - i.discount_usd) AS revenue_usd,
       count(DISTINCT s.id) AS times_sold,
       coalesce(sum(r.qty), 0) AS returned_qty, coalesce(sum(r.total_bs), 0) AS returned_bs,
       coalesce(sum(r.total_usd), 0) AS returned_usd
FROM oracle_valid_sales s
JOIN sale_items i ON i.sale_id = s.id
LEFT JOIN (SELECT sale_item_id, sum(qty) AS qty, sum(total_bs) AS total_bs, sum(total_usd) AS total_usd
           FROM sale_return_items GROUP BY sale_item_id) r ON r.sale_item_id = i.id
GROUP BY 1, 2, 3;

-- SPEC §2 product_stock: with warehouse_stock, Σ stock over the store's warehouses (every
-- variant and the base row; reserved not included).
CREATE TEMP VIEW oracle_product_stock AS
SELECT w.store_id, ws.product_id, sum(ws.stock)::numeric AS stock
FROM warehouse_stock ws JOIN warehouses w ON w.id = ws.warehouse_id
GROUP BY 1, 2;

-- SPEC §2 inventory_metrics, per active product first (LA-CAJA's dashboard rules).
CREATE TEMP VIEW oracle_inventory_products AS
SELECT p.store_id, p.id, p.low_stock_threshold, p.category,
       coalesce(s.stock, 0) AS stock,
       CASE WHEN EXISTS (SELECT 1 FROM product_lots l WHERE l.product_id = p.id)
            THEN (SELECT sum(l.remaining_quantity) FROM product_lots l WHERE l.product_id = p.id)
            ELSE coalesce(s.stock, 0) END AS lot_or_stock,
       CASE WHEN p.is_weight_product
            THEN coalesce(p.cost_per_weight_bs, p.cost_bs * CASE p.weight_unit WHEN 'g' THEN 0.001 WHEN 'lb' THEN 0.45359237
                                                                              WHEN 'oz' THEN 0.028349523125 ELSE 1 END)
            WHEN lot.remaining > 0 THEN lot.cost_bs / lot.remaining
            ELSE p.cost_bs END AS unit_cost_bs,
       CASE WHEN p.is_weight_product
            THEN coalesce(p.cost_per_weight_usd, p.cost_usd * CASE p.weight_unit WHEN 'g' THEN 0.001 WHEN 'lb' THEN 0.45359237
                                                                                WHEN 'oz' THEN 0.028349523125 ELSE 1 END)
            WHEN lot.remaining > 0 THEN lot.cost_usd / lot.remaining
            ELSE p.cost_usd END AS unit_cost_usd
FROM products p
LEFT JOIN oracle_product_stock s ON s.store_id = p.store_id AND s.product_id = p.id
LEFT JOIN (SELECT l.product_id, sum(l.remaining_quantity) AS remaining,
                  sum(l.remaining_quantity * l.unit_cost_bs) AS cost_bs, sum(l.remaining_quantity * l.unit_cost_usd) AS cost_usd
           FROM product_lots l WHERE l.remaining_quantity > 0 GROUP BY l.product_id) lot ON lot.product_id = p.id
WHERE p.is_active;

-- SPEC §2 stock_drift: per store, warehouse and product, the ledger against stock + reserved
-- (variants summed), where they differ; movements without a warehouse under warehouse_id NULL.
-- The causes as docs/design.md tells them.
CREATE TEMP VIEW oracle_stock_drift AS
SELECT d.*,
       CASE WHEN d.warehouse_id IS NULL THEN 'movements without a warehouse'
            ELSE nullif(concat_ws(' and ',
                CASE WHEN d.escrow <> 0 THEN 'escrow sales' END,
                CASE WHEN d.difference - d.escrow < 0 AND d.reserved > 0 AND d.ledger - d.escrow < d.reserved
                          THEN 'transfer in transit'
                     WHEN d.difference - d.escrow < 0 AND d.ledger - d.escrow < 0 THEN 'clamp hid a negative' END), '') END AS cause
FROM (SELECT coalesce(l.store_id, h.store_id) AS store_id, coalesce(l.warehouse_id, h.warehouse_id) AS warehouse_id,
             coalesce(l.product_id, h.product_id) AS product_id,
             coalesce(l.ledger, 0) AS ledger, coalesce(h.stock, 0) AS stock, coalesce(h.reserved, 0) AS reserved,
             coalesce(l.ledger, 0) - coalesce(h.stock, 0) - coalesce(h.reserved, 0) AS difference,
             coalesce(l.escrow, 0) AS escrow
      FROM (SELECT m.store_id, m.warehouse_id, m.product_id, sum(m.qty_delta)::numeric AS ledger,
                   coalesce(sum(m.qty_delta) FILTER (WHERE m.from_escrow), 0)::numeric AS escrow
            FROM inventory_movements m GROUP BY 1, 2, 3) AS l
      FULL JOIN (SELECT w.store_id, ws.warehouse_id, ws.product_id, sum(ws.stock)::numeric AS stock,
                        sum(ws.reserved)::numeric AS reserved
                 FROM warehouse_stock ws JOIN warehouses w ON w.id = ws.warehouse_id
                 GROUP BY 1, 2, 3) AS h
           ON h.store_id = l.store_id AND h.warehouse_id = l.warehouse_id AND h.product_id = l.product_id) AS d
WHERE d.difference <> 0;

-- The store's BCV rate in force (SPEC §2, LA-CAJA's order of preference).
CREATE TEMP VIEW oracle_bcv_rate AS
SELECT DISTINCT ON (r.store_id) r.store_id, r.rate
FROM exchange_rates r
WHERE r.rate_type = 'BCV' AND r.is_active AND r.effective_from <= now() AND now() < coalesce(r.effective_until, 'infinity')
ORDER BY r.store_id, r.is_preferred DESC, r.effective_from DESC, r.updated_at DESC, r.created_at DESC;

CREATE TEMP VIEW oracle_inventory_metrics AS
SELECT v.store_id, v.total_products, v.low_stock_count, v.out_of_stock_count,
       CASE WHEN v.stock_value_usd > 0 AND b.rate IS NOT NULL THEN v.stock_value_usd * b.rate ELSE v.stock_value_bs END AS stock_value_bs,
       v.stock_value_usd
FROM (SELECT p.store_id, count(*) AS total_products,
             count(*) FILTER (WHERE p.low_stock_threshold > 0 AND p.lot_or_stock <= p.low_stock_threshold) AS low_stock_count,
             count(*) FILTER (WHERE p.stock <= 0) AS out_of_stock_count,
             coalesce(sum(greatest(p.stock, 0) * p.unit_cost_bs), 0) AS stock_value_bs,
             coalesce(sum(greatest(p.stock, 0) * p.unit_cost_usd), 0) AS stock_value_usd
      FROM oracle_inventory_products p GROUP BY p.store_id) v
LEFT JOIN oracle_bcv_rate b ON b.store_id = v.store_id;

-- The compatibility views (docs/design.md: payment groups, the 30 local days, net figures).
CREATE TEMP VIEW oracle_mv_sales_daily AS
WITH valid AS (
    SELECT s.*, (s.sold_at AT TIME ZONE s.tz)::date AS sale_date,
           CASE WHEN length(s.payment ->> 'method') > 64 THEN 'UNKNOWN'
                ELSE coalesce(nullif(s.payment ->> 'method', ''), 'UNKNOWN') END AS method
    FROM oracle_valid_sales s),
grouped AS (
    SELECT s.*, CASE WHEN method IN ('CASH_BS', 'CASH_USD') THEN 'cash' WHEN method IN ('TRANSFER', 'PAGO_MOVIL') THEN 'transfer'
                     WHEN strpos(method, 'CARD') > 0 THEN 'card' END AS grp
    FROM valid s),
methods AS (
    SELECT store_id, sale_date, jsonb_object_agg(method, jsonb_build_object('sales_count', n, 'total_bs', bs, 'total_usd', usd)) AS by_method
    FROM (SELECT store_id, sale_date, method, count(*) AS n, sum(a_total_bs) AS bs, sum(a_total_usd) AS usd
          FROM valid GROUP BY 1, 2, 3) m
    GROUP BY 1, 2)
SELECT g.store_id, g.sale_date, count(*) AS sales_count, sum(a_total_bs) AS total_bs, sum(a_total_usd) AS total_usd,
       sum(a_total_bs) / count(*) AS avg_ticket_bs, sum(a_total_usd) / count(*) AS avg_ticket_usd,
       count(DISTINCT customer_id) AS unique_customers,
       count(*) FILTER (WHERE grp = 'cash') AS cash_count, count(*) FILTER (WHERE grp = 'card') AS card_count,
       count(*) FILTER (WHERE grp = 'transfer') AS transfer_count,
       sum(a_total_bs) FILTER (WHERE grp = 'cash') AS cash_amount_bs, sum(a_total_bs) FILTER (WHERE grp = 'card') AS card_amount_bs,
       sum(a_total_usd) FILTER (WHERE grp = 'cash') AS cash_amount_usd, sum(a_total_usd) FILTER (WHERE grp = 'card') AS card_amount_usd,
       min(m.by_method::text)::jsonb AS by_payment_method
FROM grouped g JOIN methods m USING (store_id, sale_date)
GROUP BY 1, 2;

CREATE TEMP VIEW oracle_mv_top_products_30d AS
SELECT d.product_id, p.name AS product_name, p.category, d.store_id,
       sum(d.qty) - sum(d.returned_qty) AS total_qty_sold,
       sum(d.revenue_bs) - sum(d.returned_bs) AS revenue_bs, sum(d.revenue_usd) - sum(d.returned_usd) AS revenue_usd,
       sum(d.times_sold) AS times_sold,
       (sum(d.revenue_bs) - sum(d.returned_bs)) / nullif(sum(d.qty) - sum(d.returned_qty), 0) AS avg_price_bs,
       (sum(d.revenue_usd) - sum(d.returned_usd)) / nullif(sum(d.qty) - sum(d.returned_qty), 0) AS avg_price_usd
FROM oracle_product_sales_daily d
LEFT JOIN products p ON p.id = d.product_id
LEFT JOIN analytics.store_settings st ON st.store_id = d.store_id
WHERE d.day BETWEEN (now() AT TIME ZONE coalesce(st.timezone, current_setting('lacaja_analytics.default_timezone')))::date - 29
                AND (now() AT TIME ZONE coalesce(st.timezone, current_setting('lacaja_analytics.default_timezone')))::date
GROUP BY d.product_id, p.name, p.category, d.store_id;

CREATE TEMP VIEW oracle_mv_inventory_metrics AS
SELECT m.store_id, m.total_products, m.low_stock_count, m.out_of_stock_count,
       m.stock_value_bs AS total_stock_value_bs, m.stock_value_usd AS total_stock_value_usd,
       (SELECT avg(p.stock) FROM oracle_inventory_products p WHERE p.store_id = m.store_id) AS avg_stock_level,
       (SELECT count(DISTINCT p.category) FROM oracle_inventory_products p WHERE p.store_id = m.store_id) AS categories_count
FROM oracle_inventory_metrics m;

-- SPEC §7's mv_customer_metrics, each debt counted once; active customers: a valid sale in
-- the store's last 30 local days.
CREATE TEMP VIEW oracle_mv_customer_metrics AS
SELECT c.store_id, count(*) AS total_customers,
       (SELECT count(DISTINCT d.customer_id) FROM debts d WHERE d.store_id = c.store_id AND d.status IN ('open', 'partial'))
           AS customers_with_debt,
       (SELECT coalesce(sum(d.amount_bs), 0) FROM debts d WHERE d.store_id = c.store_id AND d.status IN ('open', 'partial'))
           AS total_debt_bs,
       (SELECT coalesce(sum(d.amount_usd), 0) FROM debts d WHERE d.store_id = c.store_id AND d.status IN ('open', 'partial'))
           AS total_debt_usd,
       (SELECT count(DISTINCT s.customer_id) FROM oracle_valid_sales s
        WHERE s.store_id = c.store_id
          AND (s.sold_at AT TIME ZONE s.tz)::date BETWEEN (now() AT TIME ZONE s.tz)::date - 29 AND (now() AT TIME ZONE s.tz)::date)
           AS active_customers_30d
FROM customers c
GROUP BY c.store_id;

-- SPEC §3's kpis() over the source tables. No dates: the 30 local days ending today; one date:
-- 30 days from or to it.
CREATE FUNCTION pg_temp.oracle_kpis(store uuid, period_start date, period_end date) RETURNS jsonb LANGUAGE sql AS $$
WITH zone AS (
    SELECT coalesce((SELECT timezone FROM analytics.store_settings WHERE store_id = store),
                    current_setting('lacaja_analytics.default_timezone')) AS tz),
today AS (SELECT (now() AT TIME ZONE tz)::date AS d FROM zone),
bounds AS (
    SELECT coalesce(period_start, last_day - 29) AS first_day, coalesce(last_day, period_start + 29) AS last_day
    FROM (SELECT coalesce(period_end, CASE WHEN period_start IS NULL THEN (SELECT d FROM today) END) AS last_day) AS l),
ranges AS (
    SELECT 'today' AS name, (SELECT d FROM today) AS a, (SELECT d FROM today) AS b
    UNION ALL SELECT 'period', first_day, last_day FROM bounds
    UNION ALL SELECT 'previous_period', first_day - (last_day - first_day + 1), first_day - 1 FROM bounds),
figures AS (
    SELECT r.name, coalesce(sum(s.a_total_bs), 0) AS bs,
           jsonb_build_object('from', r.a, 'to', r.b, 'sales_count', count(s.id),
                              'total_bs', coalesce(sum(s.a_total_bs), 0), 'total_usd', coalesce(sum(s.a_total_usd), 0),
                              'avg_ticket_bs', sum(s.a_total_bs) / nullif(count(s.id), 0),
                              'avg_ticket_usd', sum(s.a_total_usd) / nullif(count(s.id), 0),
                              'unique_customers', count(DISTINCT s.customer_id)) AS f
    FROM ranges r
    LEFT JOIN oracle_valid_sales s ON s.store_id = store AND (s.sold_at AT TIME ZONE s.tz)::date BETWEEN r.a AND r.b
    GROUP BY r.name, r.a, r.b),
sold AS (
    SELECT d.product_id, p.name, p.category, sum(d.qty) - sum(d.returned_qty) AS net_qty
    FROM oracle_product_sales_daily d LEFT JOIN products p ON p.id = d.product_id, bounds
    WHERE d.store_id = store AND d.day BETWEEN first_day AND last_day
    GROUP BY 1, 2, 3)
SELECT jsonb_build_object(
    'store_id', store, 'timezone', (SELECT tz FROM zone),
    'today', (SELECT f FROM figures WHERE name = 'today'),
    'period', (SELECT f FROM figures WHERE name = 'period'),
    'previous_period', (SELECT f FROM figures WHERE name = 'previous_period'),
    'growth_percentage', (SELECT CASE WHEN p.bs <> 0 THEN round((c.bs - p.bs) / p.bs * 100, 2) END
                          FROM figures c, figures p WHERE c.name = 'period' AND p.name = 'previous_period'),
    'inventory', (SELECT to_jsonb(m) - 'store_id' FROM oracle_inventory_metrics m WHERE m.store_id = store),
    'top_product', (SELECT jsonb_build_object('product_id', product_id, 'name', name, 'net_qty', net_qty)
                    FROM sold WHERE net_qty <> 0 ORDER BY net_qty DESC, product_id LIMIT 1),
    'top_category', (SELECT jsonb_build_object('category', category, 'net_qty', sum(net_qty))
                     FROM sold WHERE category IS NOT NULL GROUP BY category HAVING sum(net_qty) <> 0
                     ORDER BY sum(net_qty) DESC, category LIMIT 1))
$$;

-- What kpis() must carry as forecast_today: forecast_sales() of today (NULL under a release's
-- SQL without forecasts, whose kpis() has none).
CREATE FUNCTION pg_temp.oracle_forecast_today(store uuid) RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    today jsonb;
BEGIN
    IF to_regprocedure('analytics.forecast_sales(uuid,integer,timestamp with time zone)') IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT to_jsonb(f) - ''day'' FROM analytics.forecast_sales($1, 1) AS f' INTO today USING store;
    RETURN today;
END
$$;

-- kpis() against the oracle for every store (and one without sales), by default and for
-- explicit periods: rows only where they differ.
CREATE TEMP VIEW oracle_kpis_differences AS
SELECT s.id AS store_id, p.period_start, p.period_end,
       analytics.kpis(s.id, p.period_start, p.period_end) - 'forecast_today' AS actual,
       pg_temp.oracle_kpis(s.id, p.period_start, p.period_end) AS expected
FROM (SELECT id FROM stores UNION ALL SELECT '00000000-0000-4000-8000-000000000000'::uuid) AS s
CROSS JOIN (VALUES (NULL::date, NULL::date), (current_date - 6, current_date - 2), (current_date - 400, current_date + 1),
                   (current_date - 10, NULL), (NULL, current_date - 3)) AS p (period_start, period_end)
WHERE analytics.kpis(s.id, p.period_start, p.period_end) - 'forecast_today' IS DISTINCT FROM pg_temp.oracle_kpis(s.id, p.period_start, p.period_end)
   -- (the forecast is no sum of the source: it is what forecast_sales says of today)
   OR analytics.kpis(s.id, p.period_start, p.period_end) -> 'forecast_today' IS DISTINCT FROM pg_temp.oracle_forecast_today(s.id);

-- Rows that differ between a rollup and its oracle, both ways (duplicates count).
CREATE FUNCTION pg_temp.differences(rollup text, oracle text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM ((SELECT * FROM %1$s EXCEPT ALL SELECT * FROM %2$s)
                                          UNION ALL (SELECT * FROM %2$s EXCEPT ALL SELECT * FROM %1$s)) AS d',
                   rollup, oracle) INTO n;
    RETURN n;
END
$$;

-- What is compared with its oracle (oracle_<relation>): the rollup's rows as a FROM item.
-- A table: an older release's oracle (tests/upgrade.rs) leaves out what it did not have.
CREATE TEMP TABLE oracle_compared (relation text PRIMARY KEY, rollup text NOT NULL);
INSERT INTO oracle_compared
SELECT r.relation, 'analytics.' || r.relation
FROM unnest(ARRAY['sales_hourly', 'sales_daily', 'sales_by_payment_daily', 'sales_heatmap',
                  'product_sales_daily', 'product_stock', 'inventory_metrics',
                  'mv_sales_daily', 'mv_top_products_30d', 'mv_inventory_metrics', 'mv_customer_metrics']) AS r (relation);
INSERT INTO oracle_compared VALUES ('stock_drift', 'analytics.stock_drift()');

-- One row per relation: how many rows differ between the rollup and the oracle.
CREATE TEMP VIEW oracle_differences AS
SELECT c.relation, pg_temp.differences(c.rollup, 'oracle_' || c.relation) AS differences
FROM oracle_compared c;
