CREATE OR REPLACE FUNCTION analytics_internal._fold_items(target_shard integer, new_sale_ids uuid[], changed_sale_ids uuid[], moved_sale_ids uuid[], moved_stores uuid[], moved_times timestamp with time zone[], returned_item_ids uuid[])
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'pg_temp'
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
DECLARE
    slow uuid[];
    every_sale uuid[];
BEGIN
    IF cardinality(changed_sale_ids) = 0 AND cardinality(returned_item_ids) = 0 THEN
        -- The usual commit, sales inserted here and nothing else: no facts to take back.
        IF cardinality(new_sale_ids) > 0 THEN
            WITH old AS (SELECT store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd FROM analytics_internal.item_facts WHERE false),
                 new AS (
        SELECT coalesce(r.store_id, '00000000-0000-0000-0000-000000000000') AS store_id,
               coalesce(r.sold_at, '-infinity') AS sold_at,
               i.sale_id, i.id AS sale_item_id, i.product_id,
               (r.sold_at AT TIME ZONE coalesce(st.timezone, analytics.default_timezone()))::date AS day,
               coalesce((r.voided_at IS NULL) AND r.store_id IS NOT NULL AND r.sold_at IS NOT NULL AND i.product_id IS NOT NULL, false)
                   AS counted,
               coalesce(i.qty::numeric, 0) AS qty,
               coalesce(i.unit_price_bs * i.qty - coalesce(i.discount_bs, 0), 0) AS revenue_bs,
               coalesce(i.unit_price_usd * i.qty - coalesce(i.discount_usd, 0), 0) AS revenue_usd,
               coalesce(c.unit_cost_bs, CASE WHEN i.is_weight_product THEN coalesce(p.cost_per_weight_bs, p.cost_bs) ELSE p.cost_bs END, 0) AS unit_cost_bs,
               coalesce(c.unit_cost_usd, CASE WHEN i.is_weight_product THEN coalesce(p.cost_per_weight_usd, p.cost_usd) ELSE p.cost_usd END, 0) AS unit_cost_usd,
               coalesce(ret.qty, 0) AS returned_qty, coalesce(ret.total_bs, 0) AS returned_bs,
               coalesce(ret.total_usd, 0) AS returned_usd
        FROM pos.sale_items AS i
        JOIN pos.sales AS r ON r.id = i.sale_id
        LEFT JOIN analytics.store_settings AS st ON st.store_id = r.store_id
        LEFT JOIN old AS c ON c.sale_item_id = i.id AND c.product_id IS NOT DISTINCT FROM i.product_id
        LEFT JOIN LATERAL (SELECT * FROM pos.products AS x WHERE x.id = i.product_id OFFSET 0) AS p ON true
        LEFT JOIN LATERAL (SELECT sum(x.qty) AS qty, sum(x.total_bs) AS total_bs, sum(x.total_usd) AS total_usd
                                FROM pos.sale_return_items AS x WHERE x.sale_item_id = i.id) AS ret ON true
        WHERE i.sale_id = ANY(new_sale_ids)),
                 kept AS (INSERT INTO analytics_internal.item_facts (store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd) SELECT store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd FROM new),
                 measured AS (SELECT 1 AS sign, store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd FROM new),
         add_1 AS (INSERT INTO analytics_internal.product_daily_parts AS p (store_id, day, product_id, shard, lines, qty, revenue_bs, revenue_usd, times_sold, returned_qty, returned_bs, returned_usd, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd)
        SELECT store_id, day, product_id, target_shard, lines, qty, revenue_bs, revenue_usd, times_sold, returned_qty, returned_bs, returned_usd, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd FROM (SELECT store_id AS store_id, day AS day, product_id AS product_id, sum(sign) AS lines, sum(sign * qty) AS qty, sum(sign * revenue_bs) AS revenue_bs, sum(sign * revenue_usd) AS revenue_usd, count(DISTINCT sale_id) FILTER (WHERE sign > 0) - count(DISTINCT sale_id) FILTER (WHERE sign < 0) AS times_sold, sum(sign * returned_qty) AS returned_qty, sum(sign * returned_bs) AS returned_bs, sum(sign * returned_usd) AS returned_usd, sum(sign * qty * unit_cost_bs) AS cost_bs, sum(sign * qty * unit_cost_usd) AS cost_usd, sum(sign * returned_qty * unit_cost_bs) AS returned_cost_bs, sum(sign * returned_qty * unit_cost_usd) AS returned_cost_usd FROM measured WHERE counted GROUP BY 1, 2, 3) AS d
        WHERE ROW(lines, qty, revenue_bs, revenue_usd, times_sold, returned_qty, returned_bs, returned_usd, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd) <> ROW(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        ON CONFLICT (store_id, day, product_id, shard) DO UPDATE SET lines = p.lines + excluded.lines, qty = p.qty + excluded.qty, revenue_bs = p.revenue_bs + excluded.revenue_bs, revenue_usd = p.revenue_usd + excluded.revenue_usd, times_sold = p.times_sold + excluded.times_sold, returned_qty = p.returned_qty + excluded.returned_qty, returned_bs = p.returned_bs + excluded.returned_bs, returned_usd = p.returned_usd + excluded.returned_usd, cost_bs = p.cost_bs + excluded.cost_bs, cost_usd = p.cost_usd + excluded.cost_usd, returned_cost_bs = p.returned_cost_bs + excluded.returned_cost_bs, returned_cost_usd = p.returned_cost_usd + excluded.returned_cost_usd)
            INSERT INTO analytics_internal.cost_daily_parts AS p (store_id, day, shard, lines, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd)
        SELECT store_id, day, target_shard, lines, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd FROM (SELECT store_id AS store_id, day AS day, sum(sign) AS lines, sum(sign * qty * unit_cost_bs) AS cost_bs, sum(sign * qty * unit_cost_usd) AS cost_usd, sum(sign * returned_qty * unit_cost_bs) AS returned_cost_bs, sum(sign * returned_qty * unit_cost_usd) AS returned_cost_usd FROM measured WHERE counted GROUP BY 1, 2) AS d
        WHERE ROW(lines, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd) <> ROW(0, 0, 0, 0, 0)
        ON CONFLICT (store_id, day, shard) DO UPDATE SET lines = p.lines + excluded.lines, cost_bs = p.cost_bs + excluded.cost_bs, cost_usd = p.cost_usd + excluded.cost_usd, returned_cost_bs = p.returned_cost_bs + excluded.returned_cost_bs, returned_cost_usd = p.returned_cost_usd + excluded.returned_cost_usd;
        END IF;
        RETURN;
    END IF;
    -- Sales whose stored facts change; a sale inserted here has none (items returned in the
    -- same transaction are read with it).
    slow := ARRAY(
        SELECT DISTINCT s.id FROM (
            SELECT unnest(changed_sale_ids) AS id
            UNION ALL
            SELECT i.sale_id FROM pos.sale_items AS i
            WHERE i.id = ANY(returned_item_ids) AND NOT i.sale_id = ANY(new_sale_ids)) AS s
        WHERE s.id IS NOT NULL);
    every_sale := slow || ARRAY(SELECT unnest(new_sale_ids) EXCEPT SELECT unnest(slow));
    IF cardinality(every_sale) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(slow) > 0 THEN
        -- Writers of the same sale take turns; the facts taken back below are then the
        -- previous writer's (read in this statement's fresh snapshot).
        PERFORM 1 FROM pos.sales WHERE id = ANY(slow) ORDER BY id FOR NO KEY UPDATE;
    END IF;
    WITH located AS (
             SELECT coalesce(r.store_id, '00000000-0000-0000-0000-000000000000') AS store_id,
                    coalesce(r.sold_at, '-infinity') AS sold_at, r.id AS sale_id
             FROM pos.sales AS r WHERE r.id = ANY(slow)
             UNION
             SELECT coalesce(m.store_id, '00000000-0000-0000-0000-000000000000'), coalesce(m.sold_at, '-infinity'), m.sale_id
             FROM unnest(moved_sale_ids, moved_stores, moved_times) AS m (sale_id, store_id, sold_at)),
         old AS (DELETE FROM analytics_internal.item_facts AS f USING located AS l
                 WHERE f.store_id = l.store_id AND f.sold_at = l.sold_at AND f.sale_id = l.sale_id
                 RETURNING f.*),
         new AS (
        SELECT coalesce(r.store_id, '00000000-0000-0000-0000-000000000000') AS store_id,
               coalesce(r.sold_at, '-infinity') AS sold_at,
               i.sale_id, i.id AS sale_item_id, i.product_id,
               (r.sold_at AT TIME ZONE coalesce(st.timezone, analytics.default_timezone()))::date AS day,
               coalesce((r.voided_at IS NULL) AND r.store_id IS NOT NULL AND r.sold_at IS NOT NULL AND i.product_id IS NOT NULL, false)
                   AS counted,
               coalesce(i.qty::numeric, 0) AS qty,
               coalesce(i.unit_price_bs * i.qty - coalesce(i.discount_bs, 0), 0) AS revenue_bs,
               coalesce(i.unit_price_usd * i.qty - coalesce(i.discount_usd, 0), 0) AS revenue_usd,
               coalesce(c.unit_cost_bs, CASE WHEN i.is_weight_product THEN coalesce(p.cost_per_weight_bs, p.cost_bs) ELSE p.cost_bs END, 0) AS unit_cost_bs,
               coalesce(c.unit_cost_usd, CASE WHEN i.is_weight_product THEN coalesce(p.cost_per_weight_usd, p.cost_usd) ELSE p.cost_usd END, 0) AS unit_cost_usd,
               coalesce(ret.qty, 0) AS returned_qty, coalesce(ret.total_bs, 0) AS returned_bs,
               coalesce(ret.total_usd, 0) AS returned_usd
        FROM pos.sale_items AS i
        JOIN pos.sales AS r ON r.id = i.sale_id
        LEFT JOIN analytics.store_settings AS st ON st.store_id = r.store_id
        LEFT JOIN old AS c ON c.sale_item_id = i.id AND c.product_id IS NOT DISTINCT FROM i.product_id
        LEFT JOIN LATERAL (SELECT * FROM pos.products AS x WHERE x.id = i.product_id OFFSET 0) AS p ON true
        LEFT JOIN LATERAL (SELECT sum(x.qty) AS qty, sum(x.total_bs) AS total_bs, sum(x.total_usd) AS total_usd
                                FROM pos.sale_return_items AS x WHERE x.sale_item_id = i.id) AS ret ON true
        WHERE i.sale_id = ANY(every_sale)),
         kept AS (INSERT INTO analytics_internal.item_facts (store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd) SELECT store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd FROM new),
         measured AS (SELECT -1 AS sign, store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd FROM old UNION ALL SELECT 1, store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd FROM new),
         add_1 AS (INSERT INTO analytics_internal.product_daily_parts AS p (store_id, day, product_id, shard, lines, qty, revenue_bs, revenue_usd, times_sold, returned_qty, returned_bs, returned_usd, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd)
        SELECT store_id, day, product_id, target_shard, lines, qty, revenue_bs, revenue_usd, times_sold, returned_qty, returned_bs, returned_usd, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd FROM (SELECT store_id AS store_id, day AS day, product_id AS product_id, sum(sign) AS lines, sum(sign * qty) AS qty, sum(sign * revenue_bs) AS revenue_bs, sum(sign * revenue_usd) AS revenue_usd, count(DISTINCT sale_id) FILTER (WHERE sign > 0) - count(DISTINCT sale_id) FILTER (WHERE sign < 0) AS times_sold, sum(sign * returned_qty) AS returned_qty, sum(sign * returned_bs) AS returned_bs, sum(sign * returned_usd) AS returned_usd, sum(sign * qty * unit_cost_bs) AS cost_bs, sum(sign * qty * unit_cost_usd) AS cost_usd, sum(sign * returned_qty * unit_cost_bs) AS returned_cost_bs, sum(sign * returned_qty * unit_cost_usd) AS returned_cost_usd FROM measured WHERE counted GROUP BY 1, 2, 3) AS d
        WHERE ROW(lines, qty, revenue_bs, revenue_usd, times_sold, returned_qty, returned_bs, returned_usd, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd) <> ROW(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        ON CONFLICT (store_id, day, product_id, shard) DO UPDATE SET lines = p.lines + excluded.lines, qty = p.qty + excluded.qty, revenue_bs = p.revenue_bs + excluded.revenue_bs, revenue_usd = p.revenue_usd + excluded.revenue_usd, times_sold = p.times_sold + excluded.times_sold, returned_qty = p.returned_qty + excluded.returned_qty, returned_bs = p.returned_bs + excluded.returned_bs, returned_usd = p.returned_usd + excluded.returned_usd, cost_bs = p.cost_bs + excluded.cost_bs, cost_usd = p.cost_usd + excluded.cost_usd, returned_cost_bs = p.returned_cost_bs + excluded.returned_cost_bs, returned_cost_usd = p.returned_cost_usd + excluded.returned_cost_usd)
    INSERT INTO analytics_internal.cost_daily_parts AS p (store_id, day, shard, lines, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd)
        SELECT store_id, day, target_shard, lines, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd FROM (SELECT store_id AS store_id, day AS day, sum(sign) AS lines, sum(sign * qty * unit_cost_bs) AS cost_bs, sum(sign * qty * unit_cost_usd) AS cost_usd, sum(sign * returned_qty * unit_cost_bs) AS returned_cost_bs, sum(sign * returned_qty * unit_cost_usd) AS returned_cost_usd FROM measured WHERE counted GROUP BY 1, 2) AS d
        WHERE ROW(lines, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd) <> ROW(0, 0, 0, 0, 0)
        ON CONFLICT (store_id, day, shard) DO UPDATE SET lines = p.lines + excluded.lines, cost_bs = p.cost_bs + excluded.cost_bs, cost_usd = p.cost_usd + excluded.cost_usd, returned_cost_bs = p.returned_cost_bs + excluded.returned_cost_bs, returned_cost_usd = p.returned_cost_usd + excluded.returned_cost_usd;
END$function$

