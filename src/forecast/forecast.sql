-- Predictions (src/forecast): what the rollups say about the coming days. The statistics are
-- in Rust (src/forecast/model.rs); these functions gather its history, and the public ones
-- turn its JSON into rows for readers of the rollups (the pattern of analytics.kpis).

-- Each store's local day of `at` and its zone, computed once (MATERIALIZED where used: a
-- flattened subquery would compute them again for every row joined to them).
--
-- These functions read a few hundred rows a store by their keys. JIT is off in each: the
-- planner cannot see how many stores or days they are given, guesses thousands, and would
-- spend 100 ms and more compiling a plan that runs in one.
CREATE FUNCTION analytics_internal._forecast_origins(stores uuid[], at timestamptz)
RETURNS TABLE (store_id uuid, tz text, today date)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off ROWS 10 AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT z.store_id, z.tz, (at AT TIME ZONE z.tz)::date
    FROM (SELECT s AS store_id, analytics.store_timezone(s) AS tz FROM unnest(stores) AS s OFFSET 0) AS z;
END
$$;

-- Each store's local days before the local day of `at` within `days` days, from its first
-- sale in that window on (earlier days are no history: the store did not trade yet), with
-- their sales and whether they are holidays.
CREATE FUNCTION analytics_internal._forecast_history(stores uuid[], at timestamptz, days int)
RETURNS TABLE (store_id uuid, day_offset int, weekday int, sales_count bigint, total_bs numeric, total_usd numeric, holiday boolean)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH origin AS MATERIALIZED (
        SELECT o.store_id, o.today,
               (SELECT p.day FROM analytics_internal.sales_daily_parts p
                WHERE p.store_id = o.store_id AND p.day >= o.today - days AND p.day < o.today
                GROUP BY p.day HAVING sum(p.sales_count) > 0 ORDER BY p.day LIMIT 1) AS first_day
        FROM analytics_internal._forecast_origins(stores, at) AS o)
    SELECT o.store_id, d.day - o.today, extract(dow FROM d.day)::int,
           -- (sums beyond what a double holds, from hostile amounts, are held at its range)
           coalesce(d.sales_count, 0), least(greatest(coalesce(d.total_bs, 0), -1e300), 1e300),
           least(greatest(coalesce(d.total_usd, 0), -1e300), 1e300),
           d.day = ANY (o.holidays)
    FROM (SELECT o.*, ARRAY(SELECT h.day FROM analytics.holidays h
                            WHERE h.day >= o.first_day AND h.day < o.today AND (h.store_id IS NULL OR h.store_id = o.store_id)) AS holidays
          FROM origin o) AS o
    CROSS JOIN LATERAL (
        SELECT g.day, f.sales_count, f.total_bs, f.total_usd
        FROM (SELECT generate_series(o.first_day, o.today - 1, interval '1 day')::date AS day) AS g
        LEFT JOIN (SELECT p.day, sum(p.sales_count)::bigint AS sales_count, sum(p.total_bs) AS total_bs, sum(p.total_usd) AS total_usd
                   FROM analytics_internal.sales_daily_parts p
                   WHERE p.store_id = o.store_id AND p.day >= o.first_day AND p.day < o.today
                   GROUP BY p.day) AS f ON f.day = g.day) AS d;
END
$$;

-- The days to forecast: the local day of `at` (offset 0) and the `days` - 1 after it, with
-- their weekday (0 = Sunday), whether a holiday, and the store's local clock at `at` (hours
-- since its midnight).
CREATE FUNCTION analytics_internal._forecast_days(stores uuid[], at timestamptz, days int)
RETURNS TABLE (store_id uuid, day_offset int, day date, weekday int, holiday boolean, clock_hours float8)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT o.store_id, k, o.today + k, extract(dow FROM o.today + k)::int,
           EXISTS (SELECT 1 FROM analytics.holidays h WHERE h.day = o.today + k AND (h.store_id IS NULL OR h.store_id = o.store_id)),
           extract(epoch FROM o.clock - o.today::timestamp)::float8 / 3600
    FROM (SELECT x.store_id, x.today, at AT TIME ZONE x.tz AS clock
          FROM analytics_internal._forecast_origins(stores, at) AS x OFFSET 0) AS o
    CROSS JOIN generate_series(0, days - 1) AS k;
END
$$;

-- Each store's sales by weekday and local hour over the ordinary days of the window (how its
-- days are shared between their hours).
CREATE FUNCTION analytics_internal._forecast_hours(stores uuid[], at timestamptz, days int)
RETURNS TABLE (store_id uuid, weekday int, hour int, sales_count bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH origin AS MATERIALIZED (SELECT * FROM analytics_internal._forecast_origins(stores, at))
    SELECT o.store_id, extract(dow FROM p.local_hour)::int, extract(hour FROM p.local_hour)::int, sum(p.sales_count)::bigint
    FROM origin o
    JOIN analytics_internal.sales_hourly_parts p
      ON p.store_id = o.store_id
     -- by the key's bucket (a day either side for the zone), then exactly by local hour
     AND p.bucket >= ((o.today - days)::timestamp AT TIME ZONE o.tz) - interval '1 day'
     AND p.bucket < (o.today::timestamp AT TIME ZONE o.tz) + interval '1 day'
     AND p.local_hour >= (o.today - days)::timestamp AND p.local_hour < o.today::timestamp
    WHERE NOT EXISTS (SELECT 1 FROM analytics.holidays h
                      WHERE h.day = p.local_hour::date AND (h.store_id IS NULL OR h.store_id = o.store_id))
    GROUP BY 1, 2, 3
$$;

-- Each store's holidays (national or its own) from a year before its local day of `at` to
-- `ahead` days after it, with its sales on those already past: how it trades on holidays.
CREATE FUNCTION analytics_internal._forecast_holidays(stores uuid[], at timestamptz, ahead int)
RETURNS TABLE (store_id uuid, day_offset int, sales_count bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH origin AS MATERIALIZED (SELECT * FROM analytics_internal._forecast_origins(stores, at))
    SELECT o.store_id, h.day - o.today,
           (SELECT coalesce(sum(p.sales_count), 0)::bigint FROM analytics_internal.sales_daily_parts p
            WHERE p.store_id = o.store_id AND p.day = h.day)
    FROM origin o
    JOIN analytics.holidays h ON h.day >= o.today - 365 AND h.day < o.today + ahead AND (h.store_id IS NULL OR h.store_id = o.store_id)
$$;

-- Each product's net quantity (sold − returned, returns on the day of their sale) on each
-- local day of the window before each store's local day of `at`.
CREATE FUNCTION analytics_internal._forecast_demand(stores uuid[], at timestamptz, days int)
RETURNS TABLE (store_id uuid, product_id uuid, day_offset int, net_qty numeric)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH origin AS MATERIALIZED (SELECT * FROM analytics_internal._forecast_origins(stores, at))
    SELECT o.store_id, d.product_id, d.day - o.today, d.net_qty
    FROM origin o
    CROSS JOIN LATERAL (
        SELECT p.product_id, p.day, sum(p.qty - p.returned_qty) AS net_qty
        FROM analytics_internal.product_daily_parts p
        WHERE p.store_id = o.store_id AND p.day >= o.today - days AND p.day < o.today
        GROUP BY p.product_id, p.day
        HAVING sum(p.lines) <> 0) AS d
$$;

-- The store's active products as the stock forecast needs them (generated by attach() from
-- LA-CAJA's products: `_forecast_products_body`).
CREATE FUNCTION analytics_internal._forecast_products(for_store uuid)
RETURNS TABLE (product_id uuid, name text, unit text, by_weight boolean, low_stock_threshold numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN;
END
$$;

CREATE FUNCTION analytics_internal._forecast_products_body(products regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN NOT analytics_internal._has_columns(products, '{id,store_id,is_active}') THEN 'BEGIN RETURN; END'
           ELSE format($f$
BEGIN
    -- generated by analytics.attach() for %s
    RETURN QUERY
    SELECT p.id, %s, %s, %s, %s
    FROM %s AS p
    WHERE p.store_id = for_store AND p.is_active;
END$f$,
        analytics_internal._in_comment(products::text),
        CASE WHEN analytics_internal._has_columns(products, '{name}') THEN 'p.name::text' ELSE 'NULL::text' END,
        -- weight products count in their unit (LA-CAJA's weight_unit, kg when unset)
        CASE WHEN analytics_internal._has_columns(products, '{is_weight_product,weight_unit}')
             THEN 'CASE WHEN p.is_weight_product THEN coalesce(p.weight_unit::text, ''kg'') ELSE ''unit'' END'
             WHEN analytics_internal._has_columns(products, '{is_weight_product}')
             THEN 'CASE WHEN p.is_weight_product THEN ''kg'' ELSE ''unit'' END'
             ELSE '''unit''' END,
        CASE WHEN analytics_internal._has_columns(products, '{is_weight_product}') THEN 'coalesce(p.is_weight_product, false)' ELSE 'false' END,
        CASE WHEN analytics_internal._has_columns(products, '{low_stock_threshold}') THEN 'coalesce(p.low_stock_threshold, 0)::numeric'
             ELSE '0::numeric' END,
        products) END
$$;

-- The forecast functions. As with kpis(), each public one hands the caller's identity to the
-- owner's implementation, which serves a reader of the rollups and, with store isolation
-- on, only the stores it may see.

CREATE FUNCTION analytics_internal._forecast_sales(store_id uuid, days int, at timestamptz, token bigint)
RETURNS TABLE (day date, status text, expected_sales numeric, sales_low numeric, sales_high numeric,
               expected_bs numeric, bs_low numeric, bs_high numeric, expected_usd numeric, usd_low numeric, usd_high numeric,
               note text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    IF store_id IS NULL OR at IS NULL THEN
        RAISE EXCEPTION 'forecast_sales needs a store id and a time'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF days IS NULL OR days NOT BETWEEN 1 AND 90 THEN
        RAISE EXCEPTION 'forecast_sales forecasts 1 to 90 days, not %', days
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Beyond a few weeks the weekday pattern and the trend of the last 8 weeks say little.';
    END IF;
    RETURN QUERY
    SELECT f.day, f.status, f.expected_sales, f.sales_low, f.sales_high, f.expected_bs, f.bs_low, f.bs_high,
           f.expected_usd, f.usd_low, f.usd_high, f.note
    FROM jsonb_to_recordset(analytics_internal._forecast_sales_json(ARRAY[store_id], at, days))
         AS f (day date, status text, expected_sales numeric, sales_low numeric, sales_high numeric,
               expected_bs numeric, bs_low numeric, bs_high numeric, expected_usd numeric, usd_low numeric, usd_high numeric,
               note text)
    ORDER BY f.day;
END
$$;

CREATE FUNCTION analytics.forecast_sales(store_id uuid, days int DEFAULT 7, at timestamptz DEFAULT now())
RETURNS TABLE (day date, status text, expected_sales numeric, sales_low numeric, sales_high numeric,
               expected_bs numeric, bs_low numeric, bs_high numeric, expected_usd numeric, usd_low numeric, usd_high numeric,
               note text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._forecast_sales(store_id, days, at, analytics_internal._caller_token());
END;

CREATE FUNCTION analytics_internal._forecast_sales_hourly(store_id uuid, at timestamptz, token bigint)
RETURNS TABLE (hour timestamptz, local_hour timestamp, status text, expected_sales numeric, sales_low numeric, sales_high numeric,
               expected_bs numeric, bs_low numeric, bs_high numeric, expected_usd numeric, usd_low numeric, usd_high numeric,
               note text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tz constant text := analytics.store_timezone(store_id);
BEGIN
    PERFORM analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    IF store_id IS NULL OR at IS NULL THEN
        RAISE EXCEPTION 'forecast_sales_hourly needs a store id and a time'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN QUERY
    SELECT (f.day + f.hour * interval '1 hour') AT TIME ZONE tz, f.day + f.hour * interval '1 hour', f.status,
           f.expected_sales, f.sales_low, f.sales_high, f.expected_bs, f.bs_low, f.bs_high,
           f.expected_usd, f.usd_low, f.usd_high, f.note
    FROM jsonb_to_recordset(analytics_internal._forecast_hourly_json(store_id, at))
         AS f (day date, hour int, status text, expected_sales numeric, sales_low numeric, sales_high numeric,
               expected_bs numeric, bs_low numeric, bs_high numeric, expected_usd numeric, usd_low numeric, usd_high numeric,
               note text)
    ORDER BY f.day, f.hour;
END
$$;

CREATE FUNCTION analytics.forecast_sales_hourly(store_id uuid, at timestamptz DEFAULT now())
RETURNS TABLE (hour timestamptz, local_hour timestamp, status text, expected_sales numeric, sales_low numeric, sales_high numeric,
               expected_bs numeric, bs_low numeric, bs_high numeric, expected_usd numeric, usd_low numeric, usd_high numeric,
               note text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._forecast_sales_hourly(store_id, at, analytics_internal._caller_token());
END;

-- The stock outlook of the given products (JSON: store_id, product_id, stock,
-- low_stock_threshold, by_weight, name, unit) at `at`: what stock_forecast() returns for the
-- stock now, what the alerts ask for every store at once, and what the backtest
-- (scripts/bench.sh --forecast) asks of a past stock.
CREATE FUNCTION analytics_internal._stock_outlook(cover_days int, at timestamptz, products jsonb)
RETURNS TABLE (store_id uuid, product_id uuid, name text, unit text, stock numeric, low_stock_threshold numeric, daily_demand numeric,
               days_of_cover numeric, stockout_date date, stockout_earliest date, stockout_latest date, reorder_qty numeric,
               status text, note text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH outlook AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(analytics_internal._stock_forecast_json(at, cover_days, products))
             AS o (store_id uuid, product_id uuid, status text, daily_demand numeric, days_of_cover numeric, stockout_offset int,
                   stockout_earliest_offset int, stockout_latest_offset int, reorder_qty numeric, note text)),
    origin AS MATERIALIZED (
        SELECT * FROM analytics_internal._forecast_origins(ARRAY(SELECT DISTINCT o.store_id FROM outlook o), at))
    SELECT p.store_id, p.product_id, p.name, p.unit, p.stock, p.low_stock_threshold, o.daily_demand, o.days_of_cover,
           d.today + o.stockout_offset, d.today + o.stockout_earliest_offset, d.today + o.stockout_latest_offset,
           round(o.reorder_qty, CASE WHEN coalesce(p.by_weight, false) THEN 3 ELSE 0 END), o.status, o.note
    FROM outlook o
    JOIN origin d ON d.store_id = o.store_id
    JOIN jsonb_to_recordset(products) AS p (store_id uuid, product_id uuid, name text, unit text, by_weight boolean, stock numeric,
                                            low_stock_threshold numeric)
      ON p.store_id = o.store_id AND p.product_id = o.product_id
    ORDER BY p.store_id, d.today + o.stockout_offset NULLS LAST, p.name, p.product_id
$$;

-- The stores' active products with their stock now (SPEC §2 product_stock; none: 0), as
-- _stock_outlook takes them.
CREATE FUNCTION analytics_internal._products_in_stock(stores uuid[]) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('store_id', s.store_id, 'product_id', p.product_id, 'name', p.name,
                                                 'unit', p.unit, 'by_weight', p.by_weight,
                                                 'low_stock_threshold', p.low_stock_threshold, 'stock', p.stock)), '[]')
    FROM unnest(stores) AS s (store_id)
    -- (each store's products and stock read once, then joined)
    CROSS JOIN LATERAL (SELECT f.*, coalesce(k.stock, 0) AS stock
                        FROM analytics_internal._forecast_products(s.store_id) AS f
                        LEFT JOIN analytics_internal._product_stock(s.store_id) AS k ON k.product_id = f.product_id) AS p
$$;

CREATE FUNCTION analytics_internal._stock_forecast(store_id uuid, cover_days int, token bigint)
RETURNS TABLE (product_id uuid, name text, unit text, stock numeric, low_stock_threshold numeric, daily_demand numeric,
               days_of_cover numeric, stockout_date date, stockout_earliest date, stockout_latest date, reorder_qty numeric,
               status text, note text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    IF store_id IS NULL THEN
        RAISE EXCEPTION 'stock_forecast needs a store id' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF cover_days IS NULL OR cover_days NOT BETWEEN 1 AND 365 THEN
        RAISE EXCEPTION 'stock_forecast covers 1 to 365 days, not %', cover_days USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT o.product_id, o.name, o.unit, o.stock, o.low_stock_threshold, o.daily_demand, o.days_of_cover, o.stockout_date,
           o.stockout_earliest, o.stockout_latest, o.reorder_qty, o.status, o.note
    FROM analytics_internal._stock_outlook(cover_days, now(), analytics_internal._products_in_stock(ARRAY[store_id])) AS o;
END
$$;

CREATE FUNCTION analytics.stock_forecast(store_id uuid, cover_days int DEFAULT 14)
RETURNS TABLE (product_id uuid, name text, unit text, stock numeric, low_stock_threshold numeric, daily_demand numeric,
               days_of_cover numeric, stockout_date date, stockout_earliest date, stockout_latest date, reorder_qty numeric,
               status text, note text)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._stock_forecast(store_id, cover_days, analytics_internal._caller_token());
END;

-- Alerts for LA-CAJA's own tables (opt-in, like refresh_real_time_metrics) ------------------
--
-- A job writes each store's forecast of today into real_time_metrics (once a day, again if
-- late sales change it) and raises a `stock_out_soon` alert in real_time_alerts for each
-- product expected to run out within `horizon_days`: once while that holds, again only after
-- it stopped holding (restocked).

-- The products whose stock_out_soon alert holds.
CREATE TABLE analytics_internal.stock_out_alert_state (
    store_id   uuid        NOT NULL,
    product_id uuid        NOT NULL,
    since      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, product_id)
);

CREATE FUNCTION analytics.refresh_forecast_alerts(horizon_days int DEFAULT 7, at timestamptz DEFAULT now()) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    schema_name constant name := (SELECT c.source_schema FROM analytics_internal.source_config c);
    -- LA-CAJA's tables, never views (whose functions would run with the owner's rights)
    metrics constant regclass := analytics_internal._source_table(schema_name, 'real_time_metrics');
    alerts constant regclass := analytics_internal._source_table(schema_name, 'real_time_alerts');
    stores constant uuid[] := analytics_internal._active_stores(at);
    written bigint := 0;
    raised bigint := 0;
    holding bigint := 0;
    new_rows jsonb;
BEGIN
    IF metrics IS NULL AND alerts IS NULL THEN
        RAISE EXCEPTION 'no table real_time_metrics or real_time_alerts in schema %', coalesce(schema_name, '(not attached)')
            USING ERRCODE = 'undefined_table',
                  HINT = 'This job writes LA-CAJA''s own tables; attach to the schema that has them.';
    END IF;
    IF horizon_days IS NULL OR horizon_days NOT BETWEEN 1 AND 90 THEN
        RAISE EXCEPTION 'horizon_days is 1 to 90, not %', horizon_days USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF metrics IS NOT NULL THEN
        CREATE TEMP TABLE lacaja_forecast_today ON COMMIT DROP AS
        SELECT f.*, f.day::timestamp AT TIME ZONE analytics.store_timezone(f.store_id) AS period_start
        FROM jsonb_to_recordset(analytics_internal._forecast_sales_json(stores, at, 1))
             AS f (store_id uuid, day date, status text, expected_sales numeric, sales_low numeric, sales_high numeric,
                   expected_bs numeric, bs_low numeric, bs_high numeric, expected_usd numeric, usd_low numeric, usd_high numeric)
        WHERE f.status IN ('forecast', 'closed');
        DELETE FROM lacaja_forecast_today f
        USING analytics_internal.real_time_metric_state s
        WHERE s.store_id = f.store_id AND s.metric_name = 'forecast_daily_revenue_bs'
          AND s.period_start = f.period_start AND s.value IS NOT DISTINCT FROM f.expected_bs;
        -- written as the table's owner, from rows computed here (as refresh_real_time_metrics)
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'store_id', f.store_id, 'metric_type', 'forecast', 'metric_name', 'forecast_daily_revenue_bs',
                   'metric_value', analytics_internal._clamp(f.expected_bs, 18, 2), 'period_type', 'daily',
                   'period_start', f.period_start, 'period_end', f.period_start + interval '1 day',
                   'metadata', jsonb_build_object('source', 'lacaja_analytics', 'status', f.status,
                                                  'expected_sales', f.expected_sales, 'sales_low', f.sales_low, 'sales_high', f.sales_high,
                                                  'bs_low', f.bs_low, 'bs_high', f.bs_high, 'expected_usd', f.expected_usd,
                                                  'usd_low', f.usd_low, 'usd_high', f.usd_high, 'interval', '80 %'))), '[]')
          INTO new_rows
        FROM lacaja_forecast_today f;
        written := analytics_internal._execute_as((SELECT c.relowner FROM pg_class c WHERE c.oid = metrics),
            format($q$INSERT INTO %s (store_id, metric_type, metric_name, metric_value, period_type, period_start, period_end, metadata)
                      SELECT * FROM jsonb_to_recordset($1) AS r (store_id uuid, metric_type text, metric_name text,
                          metric_value numeric, period_type text, period_start timestamptz, period_end timestamptz, metadata jsonb)$q$,
                   metrics),
            new_rows, NULL);
        INSERT INTO analytics_internal.real_time_metric_state AS s (store_id, metric_name, period_start, value, written_at)
        SELECT f.store_id, 'forecast_daily_revenue_bs', f.period_start, f.expected_bs, now() FROM lacaja_forecast_today f
        ON CONFLICT (store_id, metric_name) DO UPDATE SET period_start = excluded.period_start, value = excluded.value,
            written_at = excluded.written_at;
        DROP TABLE lacaja_forecast_today;
    END IF;
    IF alerts IS NOT NULL THEN
        CREATE TEMP TABLE lacaja_stock_out_soon ON COMMIT DROP AS
        SELECT o.*, d.today
        FROM analytics_internal._stock_outlook(horizon_days, at, analytics_internal._products_in_stock(stores)) AS o
        JOIN analytics_internal._forecast_origins(stores, at) AS d ON d.store_id = o.store_id
        WHERE o.stockout_date < d.today + horizon_days;
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'store_id', a.store_id, 'alert_type', 'stock_out_soon',
                   'severity', CASE WHEN a.stockout_date <= a.today + 1 THEN 'critical' WHEN a.stockout_date <= a.today + 3 THEN 'high'
                                    ELSE 'medium' END,
                   'title', format('%s runs out around %s', coalesce(a.name, a.product_id::text), a.stockout_date),
                   'message', format('%s %s in stock, about %s a day sold: expected to run out on %s (80 %%: %s to %s). Reorder %s %s to cover %s days.',
                                     a.stock, a.unit, round(a.daily_demand, 2), a.stockout_date, a.stockout_earliest,
                                     coalesce(a.stockout_latest::text, 'later'), a.reorder_qty, a.unit, horizon_days),
                   'metric_name', 'days_of_cover', 'current_value', analytics_internal._clamp(a.days_of_cover, 18, 2),
                   'threshold_value', horizon_days, 'entity_type', 'product', 'entity_id', a.product_id,
                   'metadata', jsonb_build_object('source', 'lacaja_analytics', 'stock', a.stock, 'daily_demand', a.daily_demand,
                                                  'stockout_date', a.stockout_date, 'stockout_earliest', a.stockout_earliest,
                                                  'stockout_latest', a.stockout_latest, 'reorder_qty', a.reorder_qty, 'unit', a.unit))), '[]')
          INTO new_rows
        FROM lacaja_stock_out_soon a
        WHERE NOT EXISTS (SELECT 1 FROM analytics_internal.stock_out_alert_state h
                          WHERE h.store_id = a.store_id AND h.product_id = a.product_id);
        raised := analytics_internal._execute_as((SELECT c.relowner FROM pg_class c WHERE c.oid = alerts),
            format($q$INSERT INTO %s (store_id, alert_type, severity, title, message, metric_name, current_value, threshold_value,
                                       entity_type, entity_id, metadata)
                      SELECT r.store_id, r.alert_type, r.severity, r.title, r.message, r.metric_name, r.current_value,
                             r.threshold_value, r.entity_type, r.entity_id, r.metadata
                      FROM jsonb_to_recordset($1) AS r (store_id uuid, alert_type text, severity text, title text, message text,
                          metric_name text, current_value numeric, threshold_value numeric, entity_type text, entity_id uuid,
                          metadata jsonb)$q$, alerts),
            new_rows, NULL);
        -- held: the products alerted now; no longer held: forgotten (alerted again if it comes back)
        DELETE FROM analytics_internal.stock_out_alert_state h
        WHERE h.store_id = ANY (stores)
          AND NOT EXISTS (SELECT 1 FROM lacaja_stock_out_soon a WHERE a.store_id = h.store_id AND a.product_id = h.product_id);
        INSERT INTO analytics_internal.stock_out_alert_state (store_id, product_id)
        SELECT a.store_id, a.product_id FROM lacaja_stock_out_soon a
        ON CONFLICT DO NOTHING;
        holding := (SELECT count(*) FROM lacaja_stock_out_soon);
        DROP TABLE lacaja_stock_out_soon;
    END IF;
    RETURN jsonb_build_object('metrics_written', written, 'alerts_raised', raised, 'stock_out_soon', holding);
END
$$;

CREATE PROCEDURE analytics_internal.policy_forecast_alerts(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM analytics.refresh_forecast_alerts(coalesce((config ->> 'horizon_days')::int, 7));
END
$$;

CREATE FUNCTION analytics.add_forecast_alerts_policy(schedule_interval interval DEFAULT interval '1 hour', horizon_days int DEFAULT 7)
RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job int := (SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics_internal.policy_forecast_alerts'::regproc);
BEGIN
    IF job IS NOT NULL THEN
        RAISE NOTICE 'forecast alerts are already scheduled as job %', job;
        RETURN job;
    END IF;
    job := analytics.add_job('analytics_internal.policy_forecast_alerts'::regproc, schedule_interval,
                             jsonb_build_object('horizon_days', horizon_days));
    PERFORM analytics_internal._label_job(job, format('Forecast Alerts [%s]', job), NULL);
    RETURN job;
END
$$;
