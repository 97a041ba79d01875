-- The dashboard's questions, each as the extension answers it and as plain SQL over LA-CAJA's
-- tables ($1 store id, $2 its time zone), and a harness that times both.

CREATE TABLE bench_questions (position int PRIMARY KEY, question text, ours text, raw text);
INSERT INTO bench_questions VALUES
(1, '`kpis()` (30 days, previous 30, today, inventory, top product and category)',
 $q$SELECT analytics.kpis($1)$q$,
 $q$WITH today AS (SELECT (now() AT TIME ZONE $2)::date AS d),
  s AS (SELECT id, (sold_at AT TIME ZONE $2)::date AS day, (totals ->> 'total_bs')::numeric AS bs,
               (totals ->> 'total_usd')::numeric AS usd, customer_id
        FROM sales WHERE store_id = $1 AND voided_at IS NULL
          AND sold_at >= ((SELECT d FROM today) - 59)::timestamp AT TIME ZONE $2),
  figures AS (SELECT CASE WHEN day = (SELECT d FROM today) THEN 'today' END AS today,
                     CASE WHEN day > (SELECT d FROM today) - 30 THEN 'period' ELSE 'previous' END AS period, s.* FROM s),
  items AS (SELECT i.product_id, p.category, sum(i.qty) AS qty FROM figures f JOIN sale_items i ON i.sale_id = f.id
            JOIN products p ON p.id = i.product_id WHERE f.period = 'period' GROUP BY 1, 2)
  SELECT jsonb_build_object(
    'today', (SELECT jsonb_build_object('n', count(*), 'bs', sum(bs), 'usd', sum(usd), 'avg_bs', avg(bs), 'avg_usd', avg(usd),
                                        'customers', count(DISTINCT customer_id)) FROM figures WHERE today IS NOT NULL),
    'period', (SELECT jsonb_build_object('n', count(*), 'bs', sum(bs), 'usd', sum(usd), 'avg_bs', avg(bs), 'avg_usd', avg(usd),
                                         'customers', count(DISTINCT customer_id)) FROM figures WHERE period = 'period'),
    'previous', (SELECT jsonb_build_object('n', count(*), 'bs', sum(bs), 'usd', sum(usd), 'avg_bs', avg(bs), 'avg_usd', avg(usd),
                                           'customers', count(DISTINCT customer_id)) FROM figures WHERE period = 'previous'),
    'inventory', (SELECT jsonb_build_object('products', count(*), 'low', count(*) FILTER (WHERE m.stock > 0 AND m.stock <= p.low_stock_threshold),
                                            'out', count(*) FILTER (WHERE coalesce(m.stock, 0) <= 0),
                                            'value_bs', sum(m.stock * p.cost_bs) FILTER (WHERE m.stock > 0))
                  FROM products p LEFT JOIN (SELECT product_id, sum(qty_delta) AS stock FROM inventory_movements
                                             WHERE store_id = $1 GROUP BY 1) m ON m.product_id = p.id
                  WHERE p.store_id = $1 AND p.is_active),
    'top_product', (SELECT product_id FROM items ORDER BY qty DESC, product_id LIMIT 1),
    'top_category', (SELECT category FROM items GROUP BY 1 ORDER BY sum(qty) DESC, 1 LIMIT 1))$q$),
(2, '`sales_by_day()` over one year, with cost and profit',
 $q$SELECT * FROM analytics.sales_by_day($1, analytics.store_today($1) - 364, analytics.store_today($1))$q$,
 $q$SELECT (s.sold_at AT TIME ZONE $2)::date AS day, count(*), sum((s.totals ->> 'total_bs')::numeric), sum((s.totals ->> 'total_usd')::numeric),
         sum(c.cost_bs), sum(c.cost_usd)
  FROM sales s
  LEFT JOIN LATERAL (SELECT sum(i.qty * CASE WHEN i.is_weight_product THEN coalesce(p.cost_per_weight_bs, p.cost_bs) ELSE p.cost_bs END) AS cost_bs,
                            sum(i.qty * CASE WHEN i.is_weight_product THEN coalesce(p.cost_per_weight_usd, p.cost_usd) ELSE p.cost_usd END) AS cost_usd
                     FROM sale_items i JOIN products p ON p.id = i.product_id WHERE i.sale_id = s.id) c ON true
  WHERE s.store_id = $1 AND s.voided_at IS NULL
    AND s.sold_at >= ((now() AT TIME ZONE $2)::date - 364)::timestamp AT TIME ZONE $2
  GROUP BY 1 ORDER BY 1$q$),
(3, '`top_products()` (30 days, top 10 by net quantity)',
 $q$SELECT * FROM analytics.top_products($1, 30, 10)$q$,
 $q$SELECT i.product_id, p.name, p.category, sum(i.qty) AS qty, sum(i.unit_price_bs * i.qty - i.discount_bs) AS revenue_bs,
         count(DISTINCT s.id) AS times_sold
  FROM sales s JOIN sale_items i ON i.sale_id = s.id JOIN products p ON p.id = i.product_id
  WHERE s.store_id = $1 AND s.voided_at IS NULL
    AND s.sold_at >= ((now() AT TIME ZONE $2)::date - 29)::timestamp AT TIME ZONE $2
  GROUP BY 1, 2, 3 ORDER BY qty DESC, 1 LIMIT 10$q$),
(4, '`heatmap()` (30 days, weekday × hour)',
 $q$SELECT * FROM analytics.heatmap($1, analytics.store_today($1) - 29, analytics.store_today($1))$q$,
 $q$SELECT extract(dow FROM sold_at AT TIME ZONE $2)::int, extract(hour FROM sold_at AT TIME ZONE $2)::int, count(*),
         sum((totals ->> 'total_bs')::numeric), sum((totals ->> 'total_usd')::numeric)
  FROM sales WHERE store_id = $1 AND voided_at IS NULL
    AND sold_at >= ((now() AT TIME ZONE $2)::date - 29)::timestamp AT TIME ZONE $2
  GROUP BY 1, 2 ORDER BY 1, 2$q$);

-- Milliseconds of `runs` evaluations of `query` (every column of every row, so nothing is
-- planned away), one store per run (the same stores for every
-- query), after one warm-up run.
CREATE FUNCTION bench_time(query text, runs int) RETURNS float8[]
LANGUAGE plpgsql AS $$
DECLARE
    store record;
    started timestamptz;
    times float8[] := '{}';
BEGIN
    SELECT id, tz INTO store FROM bench_stores ORDER BY n LIMIT 1;
    EXECUTE format('SELECT sum(length(q::text)) FROM (%s) AS q', query) USING store.id, store.tz;
    FOR i IN 1..runs LOOP
        SELECT id, tz INTO store FROM bench_stores WHERE n = (i * 37) % (SELECT count(*) FROM bench_stores);
        started := clock_timestamp();
        EXECUTE format('SELECT sum(length(q::text)) FROM (%s) AS q', query) USING store.id, store.tz;
        times := times || extract(epoch FROM clock_timestamp() - started) * 1000;
    END LOOP;
    RETURN times;
END
$$;

CREATE FUNCTION bench_compare(runs int)
RETURNS TABLE (ord int, question text, ours_median numeric, ours_p95 numeric, raw_median numeric, raw_p95 numeric)
LANGUAGE plpgsql AS $$
DECLARE
    q bench_questions;
    ours float8[];
    raw float8[];
BEGIN
    FOR q IN SELECT * FROM bench_questions ORDER BY 1 LOOP
        ours := bench_time(q.ours, runs);
        raw := bench_time(q.raw, greatest(runs / 5, 5));
        ord := q.position;
        question := q.question;
        SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY t)::numeric, 2),
               round(percentile_cont(0.95) WITHIN GROUP (ORDER BY t)::numeric, 2)
          INTO ours_median, ours_p95 FROM unnest(ours) AS t;
        SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY t)::numeric, 2),
               round(percentile_cont(0.95) WITHIN GROUP (ORDER BY t)::numeric, 2)
          INTO raw_median, raw_p95 FROM unnest(raw) AS t;
        RETURN NEXT;
    END LOOP;
END
$$;
