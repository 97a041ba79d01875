-- Product rollups (SPEC §2 product_sales_daily), net of returns, with item cost captured when
-- the item is recorded.
--
-- An item's contribution depends on three tables (the item, its sale's validity, day and
-- store, and its returns), changed by different statements in any order. So every item keeps
-- the contribution it made, in analytics_internal.item_facts. Whatever changes (an item, a return, a
-- void, a moved sale), the facts of the sales concerned are recomputed from the source tables
-- and the rollup receives new facts minus old ones. Writers of the same sale take turns on
-- the sale row (FOR NO KEY UPDATE), so each recomputation starts from the facts the previous
-- writer left. The captured unit cost travels with the facts: a later change of the product's
-- cost never rewrites a past day.

CREATE TABLE analytics_internal.item_facts (
    sale_item_id  uuid PRIMARY KEY,
    sale_id       uuid    NOT NULL,
    product_id    uuid,
    store_id      uuid,
    day           date,
    counted       boolean NOT NULL,
    qty           numeric NOT NULL,
    revenue_bs    numeric NOT NULL,
    revenue_usd   numeric NOT NULL,
    unit_cost_bs  numeric NOT NULL,
    unit_cost_usd numeric NOT NULL,
    returned_qty  numeric NOT NULL,
    returned_bs   numeric NOT NULL,
    returned_usd  numeric NOT NULL
);
CREATE INDEX item_facts_sale ON analytics_internal.item_facts (sale_id);
COMMENT ON TABLE analytics_internal.item_facts IS
    'What each sale item contributes to the product rollups, with the unit cost captured when the item was recorded.';

CREATE TABLE analytics_internal.product_daily_parts (
    store_id          uuid    NOT NULL,
    day               date    NOT NULL,
    product_id        uuid    NOT NULL,
    shard             int     NOT NULL,
    lines             bigint  NOT NULL,
    qty               numeric NOT NULL,
    revenue_bs        numeric NOT NULL,
    revenue_usd       numeric NOT NULL,
    times_sold        bigint  NOT NULL,
    returned_qty      numeric NOT NULL,
    returned_bs       numeric NOT NULL,
    returned_usd      numeric NOT NULL,
    cost_bs           numeric NOT NULL,
    cost_usd          numeric NOT NULL,
    returned_cost_bs  numeric NOT NULL,
    returned_cost_usd numeric NOT NULL,
    PRIMARY KEY (store_id, day, product_id, shard)
) WITH (fillfactor = 80);

-- Over signed facts (old −1, new +1; the repair reads stored facts with sign 1). A sale
-- counts once per product however many lines it has.
INSERT INTO analytics_internal.rollup_catalog (position, name, parts, keys, key_exprs, vals, val_exprs, filter, source) VALUES
 (5, 'product_sales_daily', 'analytics_internal.product_daily_parts',
  '{store_id,day,product_id}', '{store_id,day,product_id}',
  '{lines,qty,revenue_bs,revenue_usd,times_sold,returned_qty,returned_bs,returned_usd,cost_bs,cost_usd,returned_cost_bs,returned_cost_usd}',
  ARRAY['sum(sign)', 'sum(sign * qty)', 'sum(sign * revenue_bs)', 'sum(sign * revenue_usd)',
        'count(DISTINCT sale_id) FILTER (WHERE sign > 0) - count(DISTINCT sale_id) FILTER (WHERE sign < 0)',
        'sum(sign * returned_qty)', 'sum(sign * returned_bs)', 'sum(sign * returned_usd)',
        'sum(sign * qty * unit_cost_bs)', 'sum(sign * qty * unit_cost_usd)',
        'sum(sign * returned_qty * unit_cost_bs)', 'sum(sign * returned_qty * unit_cost_usd)'],
  'counted', 'items');

-- Cost of goods per store and day (what sales_by_day() needs), so that a year of it is 365
-- rows rather than a row per product and day.
CREATE TABLE analytics_internal.cost_daily_parts (
    store_id          uuid    NOT NULL,
    day               date    NOT NULL,
    shard             int     NOT NULL,
    lines             bigint  NOT NULL,
    cost_bs           numeric NOT NULL,
    cost_usd          numeric NOT NULL,
    returned_cost_bs  numeric NOT NULL,
    returned_cost_usd numeric NOT NULL,
    PRIMARY KEY (store_id, day, shard)
) WITH (fillfactor = 80);

INSERT INTO analytics_internal.rollup_catalog (position, name, parts, keys, key_exprs, vals, val_exprs, filter, source) VALUES
 (6, 'cost_daily', 'analytics_internal.cost_daily_parts', '{store_id,day}', '{store_id,day}',
  '{lines,cost_bs,cost_usd,returned_cost_bs,returned_cost_usd}',
  ARRAY['sum(sign)', 'sum(sign * qty * unit_cost_bs)', 'sum(sign * qty * unit_cost_usd)',
        'sum(sign * returned_qty * unit_cost_bs)', 'sum(sign * returned_qty * unit_cost_usd)'],
  'counted', 'items');

CREATE VIEW analytics.product_sales_daily WITH (security_barrier) AS
SELECT p.store_id, p.day, p.product_id,
       sum(p.qty) AS qty, sum(p.revenue_bs) AS revenue_bs, sum(p.revenue_usd) AS revenue_usd,
       sum(p.times_sold)::bigint AS times_sold,
       sum(p.returned_qty) AS returned_qty, sum(p.returned_bs) AS returned_bs, sum(p.returned_usd) AS returned_usd
FROM analytics_internal.product_daily_parts p
WHERE analytics_internal._store_visible(p.store_id)
GROUP BY p.store_id, p.day, p.product_id
HAVING sum(p.lines) <> 0;

-- Item facts of the sales matching `filter` (aliases: i item, r sale), recomputed from the
-- source tables; captured unit costs are taken from `captured` (a relation shaped like
-- item_facts) and captured from products now for items that have none. `warehouse` adds
-- what the warehouse's facts carry besides (sale time, customer, payment method, ...).
CREATE FUNCTION analytics_internal._item_facts_sql(captured text, filter text, warehouse boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cfg analytics_internal.source_config;
    items regclass;
    products regclass;
    returns regclass;
    weight text;
    unit_cost text;
BEGIN
    SELECT * INTO STRICT cfg FROM analytics_internal.source_config;
    items := to_regclass(format('%I.sale_items', cfg.source_schema));
    products := to_regclass(format('%I.products', cfg.source_schema));
    returns := to_regclass(format('%I.sale_return_items', cfg.source_schema));
    IF NOT analytics_internal._has_columns(products, '{id,cost_bs,cost_usd}') THEN
        products := NULL;
    END IF;
    IF NOT analytics_internal._has_columns(returns, '{sale_item_id,qty,total_bs,total_usd}') THEN
        returns := NULL;
    END IF;
    weight := CASE WHEN analytics_internal._has_columns(items, '{is_weight_product}') THEN 'i.is_weight_product'
                   WHEN analytics_internal._has_columns(products, '{is_weight_product}') THEN 'p.is_weight_product'
                   ELSE 'false' END;
    -- SPEC §2: qty × (weight item ? coalesce(cost_per_weight_x, cost_x) : cost_x), per unit here.
    unit_cost := CASE
        WHEN products IS NULL THEN 'NULL::numeric'
        WHEN analytics_internal._has_columns(products, '{cost_per_weight_bs,cost_per_weight_usd}')
            THEN format('CASE WHEN %s THEN coalesce(p.cost_per_weight_%%1$s, p.cost_%%1$s) ELSE p.cost_%%1$s END', weight)
        ELSE 'p.cost_%1$s' END;
    RETURN format($q$
        SELECT i.id AS sale_item_id, i.sale_id, i.product_id, r.store_id,
               (r.sold_at AT TIME ZONE coalesce(st.timezone, analytics.default_timezone()))::date AS day,
               coalesce((%1$s) AND r.store_id IS NOT NULL AND r.sold_at IS NOT NULL AND i.product_id IS NOT NULL, false)
                   AS counted,
               coalesce(i.qty::numeric, 0) AS qty,
               coalesce(i.unit_price_bs * i.qty - %2$s, 0) AS revenue_bs,
               coalesce(i.unit_price_usd * i.qty - %3$s, 0) AS revenue_usd,
               coalesce(c.unit_cost_bs, %4$s, 0) AS unit_cost_bs,
               coalesce(c.unit_cost_usd, %5$s, 0) AS unit_cost_usd,
               coalesce(ret.qty, 0) AS returned_qty, coalesce(ret.total_bs, 0) AS returned_bs,
               coalesce(ret.total_usd, 0) AS returned_usd%12$s
        FROM %6$s AS i
        JOIN %7$I.sales AS r ON r.id = i.sale_id
        LEFT JOIN analytics.store_settings AS st ON st.store_id = r.store_id
        LEFT JOIN %8$s AS c ON c.sale_item_id = i.id AND c.product_id IS NOT DISTINCT FROM i.product_id
        %9$s
        %10$s
        WHERE %11$s$q$,
        cfg.valid_sale,
        CASE WHEN analytics_internal._has_columns(items, '{discount_bs}') THEN 'coalesce(i.discount_bs, 0)' ELSE '0' END,
        CASE WHEN analytics_internal._has_columns(items, '{discount_usd}') THEN 'coalesce(i.discount_usd, 0)' ELSE '0' END,
        format(unit_cost, 'bs'), format(unit_cost, 'usd'),
        items, cfg.source_schema, captured,
        CASE WHEN products IS NOT NULL THEN format('LEFT JOIN %s AS p ON p.id = i.product_id', products) ELSE '' END,
        -- Returns: looked up per item for a few sales, aggregated once for all of them.
        CASE WHEN returns IS NOT NULL AND filter = 'true' THEN format(
            'LEFT JOIN (SELECT x.sale_item_id, sum(x.qty) AS qty, sum(x.total_bs) AS total_bs, sum(x.total_usd) AS total_usd
                        FROM %s AS x GROUP BY x.sale_item_id) AS ret ON ret.sale_item_id = i.id', returns)
             WHEN returns IS NOT NULL THEN format(
            'LEFT JOIN LATERAL (SELECT sum(x.qty) AS qty, sum(x.total_bs) AS total_bs, sum(x.total_usd) AS total_usd
                                FROM %s AS x WHERE x.sale_item_id = i.id) AS ret ON true', returns)
             ELSE 'LEFT JOIN (SELECT NULL::numeric AS qty, NULL::numeric AS total_bs, NULL::numeric AS total_usd) AS ret ON true' END,
        filter,
        CASE WHEN warehouse THEN format($c$,
               r.customer_id, r.sold_at,
               (r.sold_at AT TIME ZONE coalesce(st.timezone, analytics.default_timezone()))::time AS sale_time,
               analytics.payment_method(r.payment) AS payment_method, %s AS exchange_rate,
               coalesce(%s, false) AS is_weight_product, NOT coalesce((%s), false) AS is_voided$c$,
            CASE WHEN analytics_internal._has_columns(format('%I.sales', cfg.source_schema)::regclass, '{exchange_rate}')
                 THEN 'r.exchange_rate::numeric' ELSE 'NULL::numeric' END,
            weight, cfg.valid_sale)
        ELSE '' END);
END
$$;

-- Recomputes the item facts of `sale_ids` and moves the product rollups by the difference.
-- attach() generates the body for the source it finds.
CREATE FUNCTION analytics_internal._refresh_items(sale_ids uuid[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN;
END
$$;

CREATE FUNCTION analytics_internal._refresh_items_body() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cfg analytics_internal.source_config;
    columns constant text := 'sale_item_id, sale_id, product_id, store_id, day, counted, qty, revenue_bs, revenue_usd,
                              unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd';
    -- Every rollup over item facts receives the measured delta in one statement: the first
    -- ones as CTEs, the last one as the statement itself.
    skipping_zero constant text[] := ARRAY(
        SELECT analytics_internal._add_to_parts_sql(c, analytics_internal._aggregate_sql(c, 'measured'), 'analytics_internal.backend_shard()', true)
        FROM analytics_internal.rollup_catalog c WHERE c.source = 'items' ORDER BY c.position);
    adding constant text[] := ARRAY(
        SELECT analytics_internal._add_to_parts_sql(c, analytics_internal._aggregate_sql(c, 'measured'), 'analytics_internal.backend_shard()', false)
        FROM analytics_internal.rollup_catalog c WHERE c.source = 'items' ORDER BY c.position);
    n constant int := cardinality(skipping_zero);
BEGIN
    SELECT * INTO STRICT cfg FROM analytics_internal.source_config;
    RETURN format($f$
BEGIN
    IF coalesce(cardinality(sale_ids), 0) = 0 THEN
        RETURN;
    END IF;
    -- Writers of the same sale take turns; the next statement then starts from their facts.
    PERFORM 1 FROM %1$I.sales WHERE id = ANY(sale_ids) ORDER BY id FOR NO KEY UPDATE;
    PERFORM 1 FROM unnest(sale_ids) AS s (id) JOIN analytics_internal.item_facts f ON f.sale_id = s.id LIMIT 1;
    IF NOT FOUND THEN
        -- The usual case, a sale's first items: nothing to take back.
        WITH old AS (SELECT %2$s FROM analytics_internal.item_facts f WHERE false),
             new AS (%3$s),
             kept AS (INSERT INTO analytics_internal.item_facts (%2$s) SELECT %2$s FROM new),
             measured AS (SELECT 1 AS sign, %2$s FROM new)%6$s
        %8$s;
        RETURN;
    END IF;
    WITH old AS (SELECT %2$s FROM analytics_internal.item_facts f WHERE f.sale_id = ANY(sale_ids)),
         new AS (%3$s),
         kept AS (INSERT INTO analytics_internal.item_facts AS f (%2$s) SELECT %2$s FROM new
                  ON CONFLICT (sale_item_id) DO UPDATE SET %4$s),
         gone AS (DELETE FROM analytics_internal.item_facts f
                  WHERE f.sale_id = ANY(sale_ids)
                    AND NOT EXISTS (SELECT 1 FROM new WHERE new.sale_item_id = f.sale_item_id)),
         measured AS (SELECT -1 AS sign, %2$s FROM old UNION ALL SELECT 1, %2$s FROM new)%5$s
    %7$s;
END$f$,
        cfg.source_schema, columns,
        analytics_internal._item_facts_sql('old', 'i.sale_id = ANY(sale_ids)'),
        (SELECT string_agg(format('%1$I = excluded.%1$I', c), ', ')
           FROM unnest(string_to_array(replace(replace(columns, E'\n', ''), ' ', ''), ',')) AS c
          WHERE c <> 'sale_item_id'),
        (SELECT string_agg(format(E',\n         add_%s AS (%s)', i, skipping_zero[i]), '') FROM generate_series(1, n - 1) AS i),
        (SELECT string_agg(format(E',\n             add_%s AS (%s)', i, adding[i]), '') FROM generate_series(1, n - 1) AS i),
        skipping_zero[n], adding[n]);
END
$$;

-- Capture functions of items, return items and sales for the product rollup (bodies set by
-- attach(): which sales a statement concerns).
SELECT analytics_internal._set_capture_body(source, 'BEGIN RETURN NULL; END')
FROM unnest(ARRAY['items', 'item_returns', 'item_sales']) AS source;

CREATE FUNCTION analytics_internal._detach_items() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._set_capture_body(source, 'BEGIN RETURN NULL; END')
    FROM unnest(ARRAY['items', 'item_returns', 'item_sales']) AS source;
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._refresh_items(sale_ids uuid[]) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$, 'BEGIN RETURN; END');
END
$$;

-- Called by attach(): captures products when sale_items has what the rollup reads.
CREATE FUNCTION analytics_internal._attach_items(source_schema name, valid_sale text) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    items regclass := to_regclass(format('%I.sale_items', source_schema));
    returns regclass := to_regclass(format('%I.sale_return_items', source_schema));
    triggers text[];
    changed_sale text;
BEGIN
    IF NOT analytics_internal._has_columns(items, '{id,sale_id,product_id,qty,unit_price_bs,unit_price_usd}') THEN
        RETURN '{}';
    END IF;
    UPDATE analytics_internal.source_config SET captures_items = true;
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._refresh_items(sale_ids uuid[]) RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
        -- It touches the few sales of one statement: plan once per session, not per call.
        SET plan_cache_mode = force_generic_plan AS %L$f$, analytics_internal._refresh_items_body());

    PERFORM analytics_internal._set_capture_body('items', $b$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT DISTINCT sale_id FROM new_rows));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT DISTINCT sale_id FROM old_rows));
    ELSE
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT sale_id FROM old_rows UNION SELECT sale_id FROM new_rows));
    END IF;
    RETURN NULL;
END$b$);
    triggers := analytics_internal._create_capture_triggers(items, 'items');

    IF analytics_internal._has_columns(returns, '{sale_item_id,qty,total_bs,total_usd}') THEN
        PERFORM analytics_internal._set_capture_body('item_returns', $b$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT DISTINCT f.sale_id FROM analytics_internal.item_facts f
                                                WHERE f.sale_item_id IN (SELECT sale_item_id FROM new_rows)));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT DISTINCT f.sale_id FROM analytics_internal.item_facts f
                                                WHERE f.sale_item_id IN (SELECT sale_item_id FROM old_rows)));
    ELSE
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT DISTINCT f.sale_id FROM analytics_internal.item_facts f
                                                WHERE f.sale_item_id IN (SELECT sale_item_id FROM old_rows
                                                                         UNION SELECT sale_item_id FROM new_rows)));
    END IF;
    RETURN NULL;
END$b$);
        triggers := triggers || analytics_internal._create_capture_triggers(returns, 'item_returns');
    END IF;

    -- A void, un-void, moved sold_at or store moves the sale's items; a deleted sale drops them.
    changed_sale := format('(n.store_id, n.sold_at, (%s)) IS DISTINCT FROM (o.store_id, o.sold_at, (%s))',
                           replace(valid_sale, 'r.', 'n.'), replace(valid_sale, 'r.', 'o.'));
    PERFORM analytics_internal._set_capture_body('item_sales', format($b$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT o.id FROM old_rows o
                                                WHERE EXISTS (SELECT 1 FROM analytics_internal.item_facts f WHERE f.sale_id = o.id)));
    ELSE
        PERFORM analytics_internal._refresh_items(ARRAY(SELECT n.id FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE %s));
    END IF;
    RETURN NULL;
END$b$, changed_sale));
    triggers := triggers || analytics_internal._create_capture_triggers(
        to_regclass(format('%I.sales', source_schema)), 'item_sales', '{update,delete}');
    RETURN triggers;
END
$$;

-- Item facts that differ from their recomputation over the source tables (one hash join).
CREATE FUNCTION analytics_internal._item_facts_difference_sql(store_id uuid, from_day date, to_day date) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format($q$
        SELECT coalesce(e.sale_item_id, a.sale_item_id) AS sale_item_id,
               coalesce(e.sale_id, a.sale_id) AS sale_id,
               CASE WHEN e.sale_item_id IS NOT NULL THEN to_jsonb(e) END AS expected,
               CASE WHEN a.sale_item_id IS NOT NULL THEN to_jsonb(a) END AS actual
        FROM (SELECT * FROM (%1$s) AS x WHERE %3$s) AS e
        FULL JOIN (SELECT * FROM analytics_internal.item_facts r WHERE %2$s AND %4$s) AS a ON a.sale_item_id = e.sale_item_id
        WHERE (e.sale_item_id, e.sale_id, e.product_id, e.store_id, e.day, e.counted, e.qty, e.revenue_bs, e.revenue_usd,
               e.unit_cost_bs, e.unit_cost_usd, e.returned_qty, e.returned_bs, e.returned_usd)
              IS DISTINCT FROM
              (a.sale_item_id, a.sale_id, a.product_id, a.store_id, a.day, a.counted, a.qty, a.revenue_bs, a.revenue_usd,
               a.unit_cost_bs, a.unit_cost_usd, a.returned_qty, a.returned_bs, a.returned_usd)$q$,
        analytics_internal._item_facts_sql('analytics_internal.item_facts',
            CASE WHEN store_id IS NULL THEN 'true' ELSE format('r.store_id = %L::uuid', store_id) END),
        CASE WHEN store_id IS NULL THEN 'true' ELSE format('r.store_id = %L::uuid', store_id) END,
        analytics_internal._day_filter('x.day', from_day, to_day), analytics_internal._day_filter('r.day', from_day, to_day))
$$;

CREATE FUNCTION analytics_internal._verify_item_facts(store_id uuid, from_day date, to_day date)
RETURNS TABLE (relation text, key jsonb, expected jsonb, actual jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT coalesce((SELECT captures_items FROM analytics_internal.source_config), false) THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT %L, jsonb_build_object(%L, d.sale_item_id), d.expected, d.actual FROM (%s) AS d',
        'item_facts', 'sale_item_id', analytics_internal._item_facts_difference_sql(store_id, from_day, to_day));
END
$$;

-- Rebuilds the facts of every sale whose facts differ (all of them on the first backfill).
-- Those sales are locked until the repair commits; new sales are not.
CREATE FUNCTION analytics_internal._repair_item_facts(store_id uuid, from_day date, to_day date) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sale_ids uuid[];
BEGIN
    IF NOT coalesce((SELECT captures_items FROM analytics_internal.source_config), false) THEN
        RETURN 0;
    END IF;
    EXECUTE format('SELECT array_agg(DISTINCT d.sale_id) FROM (%s) AS d', analytics_internal._item_facts_difference_sql(store_id, from_day, to_day))
       INTO sale_ids;
    PERFORM analytics_internal._refresh_items(sale_ids);
    RETURN coalesce(cardinality(sale_ids), 0);
END
$$;
