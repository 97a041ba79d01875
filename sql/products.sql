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

-- Keyed where the sale is, not by random ids: a sale's facts sit together, after the store's
-- earlier sales, so recording them appends to a few hot index pages whatever the history's
-- size. A sale without store or time is filed under the nil uuid and -infinity.
CREATE TABLE analytics_internal.item_facts (
    store_id      uuid        NOT NULL,
    sold_at       timestamptz NOT NULL,
    sale_id       uuid        NOT NULL,
    sale_item_id  uuid        NOT NULL,
    product_id    uuid,
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
CREATE INDEX item_facts_sale ON analytics_internal.item_facts (store_id, sold_at, sale_id);
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
-- item_facts) and captured from products now for items that have none. `located`: look the
-- captured facts up where the sale is now (item_facts itself: its index serves that), else
-- by item alone (a few facts just taken back). `warehouse` adds what the warehouse's facts
-- carry besides (the sale's own store and time, customer, payment method, ...).
CREATE FUNCTION analytics_internal._item_facts_sql(captured text, filter text, warehouse boolean DEFAULT false,
                                                   located boolean DEFAULT false, lookups boolean DEFAULT false) RETURNS text
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
        SELECT coalesce(r.store_id, '00000000-0000-0000-0000-000000000000') AS store_id,
               coalesce(r.sold_at, '-infinity') AS sold_at,
               i.sale_id, i.id AS sale_item_id, i.product_id,
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
        LEFT JOIN %8$s AS c ON c.sale_item_id = i.id AND c.product_id IS NOT DISTINCT FROM i.product_id%13$s
        %9$s
        %10$s
        WHERE %11$s$q$,
        cfg.valid_sale,
        CASE WHEN analytics_internal._has_columns(items, '{discount_bs}') THEN 'coalesce(i.discount_bs, 0)' ELSE '0' END,
        CASE WHEN analytics_internal._has_columns(items, '{discount_usd}') THEN 'coalesce(i.discount_usd, 0)' ELSE '0' END,
        format(unit_cost, 'bs'), format(unit_cost, 'usd'),
        items, cfg.source_schema, captured,
        -- `lookups`: one index lookup per item (a commit's few sales; a generic plan would
        -- hash the whole products table), else a join (verify, repair, the warehouse).
        CASE WHEN products IS NOT NULL AND lookups
                 THEN format('LEFT JOIN LATERAL (SELECT * FROM %s AS x WHERE x.id = i.product_id OFFSET 0) AS p ON true', products)
             WHEN products IS NOT NULL THEN format('LEFT JOIN %s AS p ON p.id = i.product_id', products) ELSE '' END,
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
               r.store_id AS sale_store_id, r.sold_at AS sale_sold_at, r.customer_id,
               (r.sold_at AT TIME ZONE coalesce(st.timezone, analytics.default_timezone()))::time AS sale_time,
               analytics.payment_method(r.payment) AS payment_method, %s AS exchange_rate,
               coalesce(%s, false) AS is_weight_product, NOT coalesce((%s), false) AS is_voided$c$,
            CASE WHEN analytics_internal._has_columns(format('%I.sales', cfg.source_schema)::regclass, '{exchange_rate}')
                 THEN 'r.exchange_rate::numeric' ELSE 'NULL::numeric' END,
            weight, cfg.valid_sale)
        ELSE '' END,
        CASE WHEN located THEN $c$ AND c.sale_id = i.sale_id
              AND c.store_id = coalesce(r.store_id, '00000000-0000-0000-0000-000000000000') AND c.sold_at = coalesce(r.sold_at, '-infinity')$c$
        ELSE '' END);
END
$$;

-- The item facts of the sales a transaction inserted or changed, recomputed from the source
-- tables when it commits (src/capture calls it once, at PRE_COMMIT), and the product rollups
-- moved by new facts minus old ones. `new_sale_ids`: sales this transaction inserted (their
-- facts are new; nobody else can have written them). `changed_sale_ids`: sales whose items,
-- place or validity changed; their old facts are taken back from where the sale is now and
-- from where it was (`moved_*`: the old rows of updates and deletes). `returned_item_ids`:
-- items whose returns changed. attach() generates the body for the source it finds.
CREATE FUNCTION analytics_internal._fold_items(target_shard int, new_sale_ids uuid[], changed_sale_ids uuid[],
                                               moved_sale_ids uuid[], moved_stores uuid[], moved_times timestamptz[],
                                               returned_item_ids uuid[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RETURN;
END
$$;

CREATE FUNCTION analytics_internal._item_fact_columns() RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'store_id, sold_at, sale_id, sale_item_id, product_id, day, counted, qty, revenue_bs, revenue_usd, '
           'unit_cost_bs, unit_cost_usd, returned_qty, returned_bs, returned_usd'
$$;

CREATE FUNCTION analytics_internal._fold_items_body() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cfg analytics_internal.source_config;
    columns constant text := analytics_internal._item_fact_columns();
    -- Every rollup over item facts receives the measured delta in one statement: the first
    -- ones as CTEs, the last one as the statement itself.
    adding constant text[] := ARRAY(
        SELECT analytics_internal._add_to_parts_sql(c, analytics_internal._aggregate_sql(c, 'measured'), 'target_shard', true)
        FROM analytics_internal.rollup_catalog c WHERE c.source = 'items' ORDER BY c.position);
    n constant int := cardinality(adding);
    returns regclass;
BEGIN
    SELECT * INTO STRICT cfg FROM analytics_internal.source_config;
    returns := to_regclass(format('%I.sale_return_items', cfg.source_schema));
    RETURN format($f$
DECLARE
    slow uuid[];
    every_sale uuid[];
BEGIN
    IF cardinality(changed_sale_ids) = 0 AND cardinality(returned_item_ids) = 0 THEN
        -- The usual commit, sales inserted here and nothing else: no facts to take back.
        IF cardinality(new_sale_ids) > 0 THEN
            WITH old AS (SELECT %2$s FROM analytics_internal.item_facts WHERE false),
                 new AS (%6$s),
                 kept AS (INSERT INTO analytics_internal.item_facts (%2$s) SELECT %2$s FROM new),
                 measured AS (SELECT 1 AS sign, %2$s FROM new)%4$s
            %5$s;
        END IF;
        RETURN;
    END IF;
    -- Sales whose stored facts change; a sale inserted here has none (items returned in the
    -- same transaction are read with it).
    slow := ARRAY(
        SELECT DISTINCT s.id FROM (
            SELECT unnest(changed_sale_ids) AS id
            UNION ALL
            SELECT i.sale_id FROM %1$I.sale_items AS i
            WHERE i.id = ANY(returned_item_ids) AND NOT i.sale_id = ANY(new_sale_ids)) AS s
        WHERE s.id IS NOT NULL);
    every_sale := slow || ARRAY(SELECT unnest(new_sale_ids) EXCEPT SELECT unnest(slow));
    IF cardinality(every_sale) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(slow) > 0 THEN
        -- Writers of the same sale take turns; the facts taken back below are then the
        -- previous writer's (read in this statement's fresh snapshot).
        PERFORM 1 FROM %1$I.sales WHERE id = ANY(slow) ORDER BY id FOR NO KEY UPDATE;
    END IF;
    WITH located AS (
             SELECT coalesce(r.store_id, '00000000-0000-0000-0000-000000000000') AS store_id,
                    coalesce(r.sold_at, '-infinity') AS sold_at, r.id AS sale_id
             FROM %1$I.sales AS r WHERE r.id = ANY(slow)
             UNION
             SELECT coalesce(m.store_id, '00000000-0000-0000-0000-000000000000'), coalesce(m.sold_at, '-infinity'), m.sale_id
             FROM unnest(moved_sale_ids, moved_stores, moved_times) AS m (sale_id, store_id, sold_at)),
         old AS (DELETE FROM analytics_internal.item_facts AS f USING located AS l
                 WHERE f.store_id = l.store_id AND f.sold_at = l.sold_at AND f.sale_id = l.sale_id
                 RETURNING f.*),
         new AS (%3$s),
         kept AS (INSERT INTO analytics_internal.item_facts (%2$s) SELECT %2$s FROM new),
         measured AS (SELECT -1 AS sign, %2$s FROM old UNION ALL SELECT 1, %2$s FROM new)%4$s
    %5$s;
END$f$,
        cfg.source_schema, columns,
        analytics_internal._item_facts_sql('old', 'i.sale_id = ANY(every_sale)', lookups => true),
        (SELECT string_agg(format(E',\n         add_%s AS (%s)', i, adding[i]), '') FROM generate_series(1, n - 1) AS i),
        adding[n],
        analytics_internal._item_facts_sql('old', 'i.sale_id = ANY(new_sale_ids)', lookups => true));
END
$$;

CREATE FUNCTION analytics_internal._detach_items() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._fold_items(target_shard int, new_sale_ids uuid[],
            changed_sale_ids uuid[], moved_sale_ids uuid[], moved_stores uuid[], moved_times timestamptz[],
            returned_item_ids uuid[]) RETURNS void
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS %L$f$, 'BEGIN RETURN; END');
END
$$;

-- Called by attach(): captures products when sale_items has what the rollup reads. The sales
-- triggers report sales whose place or validity changed (src/capture).
CREATE FUNCTION analytics_internal._attach_items(source_schema name, valid_sale text, create_triggers boolean DEFAULT true) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    items regclass := to_regclass(format('%I.sale_items', source_schema));
    returns regclass := to_regclass(format('%I.sale_return_items', source_schema));
    triggers text[];
BEGIN
    IF NOT analytics_internal._has_columns(items, '{id,sale_id,product_id,qty,unit_price_bs,unit_price_usd}') THEN
        RETURN '{}';
    END IF;
    UPDATE analytics_internal.source_config SET captures_items = true;
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._fold_items(target_shard int, new_sale_ids uuid[],
            changed_sale_ids uuid[], moved_sale_ids uuid[], moved_stores uuid[], moved_times timestamptz[],
            returned_item_ids uuid[]) RETURNS void
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
        -- A POS commit folds one or two sales: plan once per session, not per commit.
        SET plan_cache_mode = force_generic_plan AS %L$f$, analytics_internal._fold_items_body());
    -- `direct`: the capture copies new items for the fold in Rust (src/capture/direct.rs),
    -- which counts no returns for an item inserted by the committing transaction. True when a
    -- return can only be recorded after its item: the returns table references the items.
    triggers := analytics_internal._create_capture_triggers(items, 'items', argument =>
        CASE WHEN NOT analytics_internal._has_columns(returns, '{sale_item_id,qty,total_bs,total_usd}')
                  OR EXISTS (SELECT 1 FROM pg_constraint c
                             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = 'sale_item_id'
                             WHERE c.conrelid = returns AND c.contype = 'f' AND c.confrelid = items
                               AND c.conkey = ARRAY[a.attnum])
             THEN 'direct' END, create_triggers => create_triggers);
    IF analytics_internal._has_columns(returns, '{sale_item_id,qty,total_bs,total_usd}') THEN
        triggers := triggers || analytics_internal._create_capture_triggers(returns, 'item_returns', create_triggers => create_triggers);
    END IF;
    RETURN triggers;
END
$$;

-- Item facts that differ from their recomputation over the source tables (one hash join).
CREATE FUNCTION analytics_internal._item_facts_difference_sql(store_id uuid, from_day date, to_day date) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format($q$
        SELECT coalesce(e.sale_item_id, a.sale_item_id) AS sale_item_id,
               coalesce(e.sale_id, a.sale_id) AS sale_id, a.store_id AS found_store_id, a.sold_at AS found_sold_at,
               CASE WHEN e.sale_item_id IS NOT NULL THEN to_jsonb(e) END AS expected,
               CASE WHEN a.sale_item_id IS NOT NULL THEN to_jsonb(a) END AS actual
        FROM (SELECT * FROM (%1$s) AS x WHERE %3$s) AS e
        FULL JOIN (SELECT * FROM analytics_internal.item_facts r WHERE %2$s AND %4$s) AS a ON a.sale_item_id = e.sale_item_id
        WHERE (e.sale_item_id, e.sale_id, e.product_id, e.store_id, e.sold_at, e.day, e.counted, e.qty, e.revenue_bs,
               e.revenue_usd, e.unit_cost_bs, e.unit_cost_usd, e.returned_qty, e.returned_bs, e.returned_usd)
              IS DISTINCT FROM
              (a.sale_item_id, a.sale_id, a.product_id, a.store_id, a.sold_at, a.day, a.counted, a.qty, a.revenue_bs,
               a.revenue_usd, a.unit_cost_bs, a.unit_cost_usd, a.returned_qty, a.returned_bs, a.returned_usd)$q$,
        analytics_internal._item_facts_sql('analytics_internal.item_facts',
            CASE WHEN store_id IS NULL THEN 'true' ELSE format('r.store_id = %L::uuid', store_id) END, false, true),
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
    found_ids uuid[];
    found_stores uuid[];
    found_times timestamptz[];
BEGIN
    IF NOT coalesce((SELECT captures_items FROM analytics_internal.source_config), false) THEN
        RETURN 0;
    END IF;
    -- Wrong facts are taken back from wherever they are (a sale moved with triggers off
    -- left its facts behind).
    EXECUTE format($q$SELECT array_agg(DISTINCT d.sale_id),
                             array_agg(d.sale_id) FILTER (WHERE d.found_store_id IS NOT NULL),
                             array_agg(d.found_store_id) FILTER (WHERE d.found_store_id IS NOT NULL),
                             array_agg(d.found_sold_at) FILTER (WHERE d.found_store_id IS NOT NULL)
                      FROM (%s) AS d$q$, analytics_internal._item_facts_difference_sql(store_id, from_day, to_day))
       INTO sale_ids, found_ids, found_stores, found_times;
    IF sale_ids IS NOT NULL THEN
        PERFORM analytics_internal._fold_items(analytics_internal.backend_shard(), '{}', sale_ids,
                                               coalesce(found_ids, '{}'), coalesce(found_stores, '{}'), coalesce(found_times, '{}'), '{}');
    END IF;
    RETURN coalesce(cardinality(sale_ids), 0);
END
$$;
