-- The questions LA-CAJA's dashboard asks (SPEC §3), answered from the rollups only: none of
-- these functions reads sales or sale_items. Product names and categories come from products.

-- The store's local today.
CREATE FUNCTION analytics.store_today(store_id uuid) RETURNS date
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT (now() AT TIME ZONE analytics.store_timezone(store_id))::date
$$;

-- Sales figures of one store over several day ranges (SPEC §3 kpis period shape), from one
-- pass over the daily rollups and one over the customer rollups spanning them all.
CREATE FUNCTION analytics_internal._period_figures(store_id uuid, names text[], from_days date[], to_days date[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    WITH ranges AS (
        SELECT r.name, r.from_day, r.to_day FROM unnest($2, $3, $4) AS r (name, from_day, to_day)),
    days AS (
        SELECT d.day, d.sales_count, d.total_bs, d.total_usd FROM analytics.sales_daily d
        WHERE d.store_id = $1 AND d.day BETWEEN (SELECT min(from_day) FROM ranges) AND (SELECT max(to_day) FROM ranges)),
    customers AS (
        SELECT c.customer_id, c.day, sum(c.sales_count) AS sales_count FROM analytics_internal.customer_daily_parts c
        WHERE c.store_id = $1 AND c.day BETWEEN (SELECT min(from_day) FROM ranges) AND (SELECT max(to_day) FROM ranges)
        GROUP BY c.customer_id, c.day HAVING sum(c.sales_count) > 0)
    SELECT jsonb_object_agg(r.name, jsonb_build_object(
        'from', r.from_day, 'to', r.to_day,
        'sales_count', coalesce(f.sales_count, 0),
        'total_bs', coalesce(f.total_bs, 0),
        'total_usd', coalesce(f.total_usd, 0),
        'avg_ticket_bs', f.total_bs / nullif(f.sales_count, 0),
        'avg_ticket_usd', f.total_usd / nullif(f.sales_count, 0),
        'unique_customers', (SELECT count(DISTINCT c.customer_id) FROM customers c WHERE c.day BETWEEN r.from_day AND r.to_day)))
    FROM ranges r
    CROSS JOIN LATERAL (SELECT sum(d.sales_count) AS sales_count, sum(d.total_bs) AS total_bs, sum(d.total_usd) AS total_usd
                        FROM days d WHERE d.day BETWEEN r.from_day AND r.to_day) AS f
$$;

-- Net quantity sold per product over [from_day, to_day], with name and category. Summed from
-- the parts in one level: a product and day whose lines net to zero has no live item facts,
-- so all its sums are zero too.
CREATE FUNCTION analytics_internal._products_sold(store_id uuid, from_day date, to_day date)
RETURNS TABLE (product_id uuid, name text, category text, qty numeric, returned_qty numeric, net_qty numeric,
               revenue_bs numeric, revenue_usd numeric, times_sold bigint, returned_bs numeric, returned_usd numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    products regclass := to_regclass(format('%I.products', (SELECT c.source_schema FROM analytics_internal.source_config c)));
    names text := CASE WHEN analytics_internal._has_columns(products, '{id,name,category}')
                       THEN format('LEFT JOIN %s AS p ON p.id = s.product_id', products)
                       ELSE 'LEFT JOIN (SELECT NULL::uuid AS id, NULL::text AS name, NULL::text AS category) AS p ON false' END;
BEGIN
    RETURN QUERY EXECUTE format($q$
        SELECT s.product_id, p.name::text, p.category::text, s.qty, s.returned_qty, s.qty - s.returned_qty,
               s.revenue_bs, s.revenue_usd, s.times_sold, s.returned_bs, s.returned_usd
        FROM (SELECT d.product_id, sum(d.qty) AS qty, sum(d.returned_qty) AS returned_qty,
                     sum(d.revenue_bs) AS revenue_bs, sum(d.revenue_usd) AS revenue_usd, sum(d.times_sold)::bigint AS times_sold,
                     sum(d.returned_bs) AS returned_bs, sum(d.returned_usd) AS returned_usd
              FROM analytics_internal.product_daily_parts d
              WHERE d.store_id = $1 AND d.day BETWEEN $2 AND $3
              GROUP BY d.product_id HAVING sum(d.lines) <> 0) AS s
        %s$q$, names)
    USING store_id, from_day, to_day;
END
$$;

-- The dashboard functions. Each public one is a wrapper with the caller's rights that hands the
-- caller's identity (a token minted from current_user, src/security.rs) to the owner's
-- implementation: the rollup parts and LA-CAJA's products are the owner's to read. The
-- implementation serves a caller who may read the rollups (SELECT on analytics.sales_daily)
-- and, with store isolation on, only a store its predicate lets it see.

CREATE FUNCTION analytics_internal._kpis(store_id uuid, period_start date, period_end date, token bigint)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    allowed constant boolean := analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    today constant date := analytics.store_today(store_id);
    last_day date := coalesce(period_end, CASE WHEN period_start IS NULL THEN today END);
    first_day date;
    days int;
    figures jsonb;
    period jsonb;
    previous jsonb;
    top jsonb;
    top_category jsonb;
BEGIN
    IF store_id IS NULL THEN
        RAISE EXCEPTION 'kpis needs a store id';
    END IF;
    first_day := coalesce(period_start, last_day - 29);
    last_day := coalesce(last_day, first_day + 29);
    IF first_day > last_day THEN
        RAISE EXCEPTION 'period_start % is after period_end %', first_day, last_day;
    END IF;
    days := last_day - first_day + 1;
    figures := analytics_internal._period_figures(store_id, ARRAY['today', 'period', 'previous_period'],
                                         ARRAY[today, first_day, first_day - days], ARRAY[today, last_day, first_day - 1]);
    period := figures -> 'period';
    previous := figures -> 'previous_period';
    WITH sold AS MATERIALIZED (SELECT * FROM analytics_internal._products_sold(store_id, first_day, last_day))
    SELECT (SELECT jsonb_build_object('product_id', p.product_id, 'name', p.name, 'net_qty', p.net_qty)
            FROM sold p WHERE p.net_qty <> 0 ORDER BY p.net_qty DESC, p.product_id LIMIT 1),
           (SELECT jsonb_build_object('category', p.category, 'net_qty', sum(p.net_qty))
            FROM sold p WHERE p.category IS NOT NULL
            GROUP BY p.category HAVING sum(p.net_qty) <> 0 ORDER BY sum(p.net_qty) DESC, p.category LIMIT 1)
      INTO top, top_category;
    RETURN jsonb_build_object(
        'store_id', store_id,
        'timezone', analytics.store_timezone(store_id),
        'today', figures -> 'today',
        'period', period,
        'previous_period', previous,
        'growth_percentage', CASE WHEN (previous ->> 'total_bs')::numeric <> 0
            THEN round(((period ->> 'total_bs')::numeric - (previous ->> 'total_bs')::numeric)
                       / (previous ->> 'total_bs')::numeric * 100, 2) END,
        'inventory', (SELECT to_jsonb(m) FROM (
                          SELECT f.total_products, f.low_stock_count, f.out_of_stock_count, f.stock_value_bs, f.stock_value_usd
                          FROM analytics_internal._inventory_figures(_kpis.store_id) AS f) AS m),
        'top_product', top,
        'top_category', top_category);
END
$$;

CREATE FUNCTION analytics.kpis(store_id uuid, period_start date DEFAULT NULL, period_end date DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT analytics_internal._kpis(store_id, period_start, period_end, analytics_internal._caller_token());
END;

CREATE FUNCTION analytics_internal._sales_by_day(store_id uuid, from_day date, to_day date, token bigint)
RETURNS TABLE (day date, sales_count bigint, total_bs numeric, total_usd numeric, cost_bs numeric, cost_usd numeric,
               profit_bs numeric, profit_usd numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    RETURN QUERY
    SELECT coalesce(s.day, c.day), coalesce(s.sales_count, 0), coalesce(s.total_bs, 0), coalesce(s.total_usd, 0),
           coalesce(c.cost_bs, 0), coalesce(c.cost_usd, 0),
           coalesce(s.total_bs, 0) - coalesce(c.cost_bs, 0), coalesce(s.total_usd, 0) - coalesce(c.cost_usd, 0)
    FROM (SELECT d.day, d.sales_count, d.total_bs, d.total_usd FROM analytics.sales_daily d
          WHERE d.store_id = $1 AND d.day BETWEEN $2 AND $3) AS s
    FULL JOIN (SELECT p.day, sum(p.cost_bs - p.returned_cost_bs) AS cost_bs, sum(p.cost_usd - p.returned_cost_usd) AS cost_usd
               FROM analytics_internal.cost_daily_parts p
               WHERE p.store_id = $1 AND p.day BETWEEN $2 AND $3
               GROUP BY p.day HAVING sum(p.lines) <> 0) AS c ON c.day = s.day
    ORDER BY 1;
END
$$;

CREATE FUNCTION analytics.sales_by_day(store_id uuid, from_day date, to_day date)
RETURNS TABLE (day date, sales_count bigint, total_bs numeric, total_usd numeric, cost_bs numeric, cost_usd numeric,
               profit_bs numeric, profit_usd numeric)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._sales_by_day(store_id, from_day, to_day, analytics_internal._caller_token());
END;

CREATE FUNCTION analytics_internal._top_products(store_id uuid, days int, n int, token bigint)
RETURNS TABLE (rank bigint, product_id uuid, name text, category text, qty numeric, returned_qty numeric,
               net_qty numeric, revenue_bs numeric, revenue_usd numeric, times_sold bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    RETURN QUERY
    SELECT row_number() OVER (ORDER BY p.net_qty DESC, p.product_id), p.product_id, p.name, p.category, p.qty,
           p.returned_qty, p.net_qty, p.revenue_bs, p.revenue_usd, p.times_sold
    FROM analytics_internal._products_sold($1, analytics.store_today($1) - greatest($2, 1) + 1, analytics.store_today($1)) AS p
    ORDER BY p.net_qty DESC, p.product_id
    LIMIT greatest($3, 0);
END
$$;

CREATE FUNCTION analytics.top_products(store_id uuid, days int DEFAULT 30, n int DEFAULT 10)
RETURNS TABLE (rank bigint, product_id uuid, name text, category text, qty numeric, returned_qty numeric,
               net_qty numeric, revenue_bs numeric, revenue_usd numeric, times_sold bigint)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._top_products(store_id, days, n, analytics_internal._caller_token());
END;

-- Sales by weekday (0 = Sunday) and local hour over [from_day, to_day]; reads the hourly
-- parts by local hour so that the range uses their index.
CREATE FUNCTION analytics_internal._heatmap(store_id uuid, from_day date, to_day date, token bigint)
RETURNS TABLE (day_of_week int, hour int, sales_count bigint, total_amount_bs numeric, total_amount_usd numeric,
               avg_ticket_bs numeric, avg_ticket_usd numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    RETURN QUERY
    SELECT c.day_of_week, c.hour, c.sales_count, c.total_bs, c.total_usd,
           c.total_bs / c.sales_count, c.total_usd / c.sales_count
    FROM (SELECT extract(dow FROM p.local_hour)::int AS day_of_week, extract(hour FROM p.local_hour)::int AS hour,
                 sum(p.sales_count)::bigint AS sales_count,
                 analytics_internal.at_scale(sum(p.total_bs), sum(p.total_bs_scales)) AS total_bs,
                 analytics_internal.at_scale(sum(p.total_usd), sum(p.total_usd_scales)) AS total_usd
          FROM analytics_internal.sales_hourly_parts p
          WHERE p.store_id = $1 AND p.local_hour >= $2 AND p.local_hour < $3 + 1
          GROUP BY 1, 2
          HAVING sum(p.sales_count) <> 0) AS c
    ORDER BY 1, 2;
END
$$;

CREATE FUNCTION analytics.heatmap(store_id uuid, from_day date, to_day date)
RETURNS TABLE (day_of_week int, hour int, sales_count bigint, total_amount_bs numeric, total_amount_usd numeric,
               avg_ticket_bs numeric, avg_ticket_usd numeric)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._heatmap(store_id, from_day, to_day, analytics_internal._caller_token());
END;
