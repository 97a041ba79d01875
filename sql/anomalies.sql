-- Anomalies: what detect_anomalies() (src/anomaly.rs) reads and where it writes.
--
-- The statistics are in Rust; the data comes from the hourly rollup: for each store, the part
-- of today up to the last full local hour and the same part of the same weekday in the
-- weeks before, the last full hour and the same hour of the week in the weeks before, and
-- the last 30 full days (for the original design's plain z-score, kept for comparison).

-- Days on which stores do not trade as usual (national holidays, a store's own closures):
-- never judged, never part of a baseline. store_id NULL: every store.
CREATE TABLE analytics.holidays (
    day      date NOT NULL,
    store_id uuid,
    name     text NOT NULL
);
CREATE UNIQUE INDEX holidays_day_store ON analytics.holidays (day, coalesce(store_id, '00000000-0000-0000-0000-000000000000'));

-- The original design's columns (store, metric, period, predicted and actual value, deviation,
-- confidence) with types that cannot overflow (a 5,000 % jump is a valid anomaly), plus the
-- z-score, severity, method and the expected band.
CREATE TABLE analytics.anomaly_predictions (
    id                   bigserial   PRIMARY KEY,
    store_id             uuid        NOT NULL,
    metric_type          text        NOT NULL,
    metric_name          text        NOT NULL,
    period_type          text        NOT NULL CHECK (period_type IN ('day', 'hour')),
    period_start         timestamptz NOT NULL,
    period_end           timestamptz NOT NULL,
    predicted_value      numeric,
    actual_value         numeric     NOT NULL,
    deviation_percentage numeric,
    confidence_score     numeric     NOT NULL,
    z_score              numeric     NOT NULL,
    severity             text        NOT NULL CHECK (severity IN ('medium', 'high')),
    anomaly_type         text        NOT NULL CHECK (anomaly_type IN ('drop', 'spike')),
    method               text        NOT NULL,
    expected_low         numeric,
    expected_high        numeric,
    is_anomaly           boolean     NOT NULL DEFAULT true,
    detected_at          timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    resolved_at          timestamptz,
    metadata             jsonb,
    UNIQUE (store_id, metric_name, period_start, method)
);
CREATE INDEX anomaly_predictions_open ON analytics.anomaly_predictions (store_id, metric_name, method) WHERE resolved_at IS NULL;
COMMENT ON TABLE analytics.anomaly_predictions IS
    'Anomalies found by analytics.detect_anomalies(): one row per store, metric, period and method; resolved_at once the metric is back to normal.';

-- The samples of each store at `at`: kind 'day' (k = 0 today until the last full local hour,
-- k = 1..weeks the same part of the same weekday k weeks before, with that whole day's sales
-- to tell a closed day), kind 'hour' (the last full local hour and the same hour k weeks
-- before), kind 'recent' (the last three full hours of today, and the same hours k weeks
-- before), kind 'daily' (the last 30 full local days and today so far, k = days back).
CREATE FUNCTION analytics_internal._anomaly_samples(stores uuid[], at timestamptz, weeks int)
RETURNS TABLE (store_id uuid, kind text, k int, period_start timestamptz, period_end timestamptz,
               sales_count bigint, total_bs numeric, total_usd numeric, day_sales bigint, holiday boolean)
LANGUAGE sql STABLE AS $$
    WITH clock AS (
        SELECT s AS store_id, z.tz, date_trunc('hour', at AT TIME ZONE z.tz) AS cut
        FROM unnest(stores) AS s CROSS JOIN LATERAL (SELECT analytics.store_timezone(s) AS tz) AS z),
    windows AS (
        SELECT c.store_id, c.tz, 'day' AS kind, w AS k,
               (c.cut::date - 7 * w)::timestamp AS lo, c.cut - 7 * w * interval '1 day' AS hi, c.cut::date - 7 * w AS day
        FROM clock c, generate_series(0, weeks) AS w
        UNION ALL
        SELECT c.store_id, c.tz, 'hour', w, c.cut - interval '1 hour' - 7 * w * interval '1 day', c.cut - 7 * w * interval '1 day',
               (c.cut - interval '1 hour')::date - 7 * w
        FROM clock c, generate_series(0, weeks) AS w
        UNION ALL
        -- the last three full hours of today (a register that stopped selling)
        SELECT c.store_id, c.tz, 'recent', w, greatest(c.cut - interval '3 hours', c.cut::date::timestamp) - 7 * w * interval '1 day',
               c.cut - 7 * w * interval '1 day', c.cut::date - 7 * w
        FROM clock c, generate_series(0, weeks) AS w
        UNION ALL
        SELECT c.store_id, c.tz, 'daily', d, (c.cut::date - d)::timestamp,
               CASE WHEN d = 0 THEN c.cut ELSE (c.cut::date - d + 1)::timestamp END, c.cut::date - d
        FROM clock c, generate_series(0, 30) AS d)
    SELECT w.store_id, w.kind, w.k, w.lo AT TIME ZONE w.tz, w.hi AT TIME ZONE w.tz,
           coalesce(sum(p.sales_count) FILTER (WHERE p.local_hour >= w.lo AND p.local_hour < w.hi), 0)::bigint,
           coalesce(sum(p.total_bs) FILTER (WHERE p.local_hour >= w.lo AND p.local_hour < w.hi), 0),
           coalesce(sum(p.total_usd) FILTER (WHERE p.local_hour >= w.lo AND p.local_hour < w.hi), 0),
           coalesce(sum(p.sales_count), 0)::bigint,
           EXISTS (SELECT 1 FROM analytics.holidays h WHERE h.day = w.day AND (h.store_id IS NULL OR h.store_id = w.store_id))
    FROM windows w
    LEFT JOIN analytics_internal.sales_hourly_parts p
           ON p.store_id = w.store_id AND p.local_hour >= w.day::timestamp AND p.local_hour < w.day::timestamp + interval '1 day'
    GROUP BY w.store_id, w.kind, w.k, w.lo, w.hi, w.tz, w.day
$$;

-- Stores to judge when detect_anomalies() is given none: every store with a sale in the last
-- 60 days (LA-CAJA's stores table may hold stores that never sold or closed for good).
CREATE FUNCTION analytics_internal._active_stores(at timestamptz) RETURNS uuid[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT p.store_id), '{}')
    FROM analytics_internal.sales_daily_parts p
    WHERE p.day >= (at AT TIME ZONE 'UTC')::date - 60 AND p.day <= (at AT TIME ZONE 'UTC')::date + 1
$$;

-- Records a verdict: an anomaly is inserted once per store, metric, period and method (later
-- runs update its figures); a normal verdict resolves that metric's open anomalies up to now.
CREATE FUNCTION analytics_internal._record_anomaly_verdict(verdict jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (verdict ->> 'severity') IS NULL THEN
        UPDATE analytics.anomaly_predictions SET resolved_at = now(), updated_at = now()
        WHERE store_id = (verdict ->> 'store_id')::uuid AND metric_name = verdict ->> 'metric_name'
          AND method = verdict ->> 'method' AND resolved_at IS NULL
          AND period_start <= (verdict ->> 'period_start')::timestamptz;
        RETURN;
    END IF;
    INSERT INTO analytics.anomaly_predictions AS a (store_id, metric_type, metric_name, period_type, period_start, period_end,
        predicted_value, actual_value, deviation_percentage, confidence_score, z_score, severity, anomaly_type, method,
        expected_low, expected_high, metadata)
    SELECT (verdict ->> 'store_id')::uuid, verdict ->> 'metric_type', verdict ->> 'metric_name', verdict ->> 'period_type',
           (verdict ->> 'period_start')::timestamptz, (verdict ->> 'period_end')::timestamptz,
           (verdict ->> 'predicted_value')::numeric, (verdict ->> 'actual_value')::numeric,
           (verdict ->> 'deviation_percentage')::numeric, (verdict ->> 'confidence_score')::numeric,
           (verdict ->> 'z_score')::numeric, verdict ->> 'severity', verdict ->> 'anomaly_type', verdict ->> 'method',
           (verdict ->> 'expected_low')::numeric, (verdict ->> 'expected_high')::numeric, verdict -> 'metadata'
    ON CONFLICT (store_id, metric_name, period_start, method) DO UPDATE SET
        period_end = excluded.period_end, predicted_value = excluded.predicted_value, actual_value = excluded.actual_value,
        deviation_percentage = excluded.deviation_percentage, confidence_score = excluded.confidence_score,
        z_score = excluded.z_score, severity = excluded.severity, anomaly_type = excluded.anomaly_type,
        expected_low = excluded.expected_low, expected_high = excluded.expected_high, metadata = excluded.metadata,
        updated_at = now(), resolved_at = NULL;
END
$$;

-- Judges every store (or one) at `at` (src/anomaly.rs), records every verdict (anomalies once
-- per store, metric, period and method; normal ones resolve) and returns the anomalies.
CREATE TYPE analytics.anomaly AS (
    store_id uuid, metric_type text, metric_name text, period_type text, period_start timestamptz,
    period_end timestamptz, predicted_value numeric, actual_value numeric, deviation_percentage numeric,
    confidence_score numeric, z_score numeric, severity text, anomaly_type text, method text,
    expected_low numeric, expected_high numeric);

CREATE FUNCTION analytics.detect_anomalies(store_id uuid DEFAULT NULL, at timestamptz DEFAULT now(),
                                           method text DEFAULT 'seasonal')
RETURNS SETOF analytics.anomaly
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    verdicts jsonb := analytics_internal._anomaly_verdicts(detect_anomalies.store_id, coalesce(at, now()), detect_anomalies.method);
BEGIN
    PERFORM analytics_internal._record_anomaly_verdict(v) FROM jsonb_array_elements(verdicts) AS v;
    RETURN QUERY
    SELECT r.* FROM jsonb_populate_recordset(NULL::analytics.anomaly, verdicts) AS r WHERE r.severity IS NOT NULL;
END
$$;

-- The detection job (config: {"method": "seasonal"}): every store, now.
CREATE PROCEDURE analytics_internal.policy_detect_anomalies(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM count(*) FROM analytics.detect_anomalies(NULL, now(), coalesce(config ->> 'method', 'seasonal'));
END
$$;

CREATE FUNCTION analytics.add_anomaly_detection_policy(schedule_interval interval DEFAULT interval '15 minutes',
                                                       method text DEFAULT 'seasonal') RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job int;
BEGIN
    SELECT j.job_id INTO job FROM analytics.jobs j
    WHERE j.proc = 'analytics_internal.policy_detect_anomalies'::regproc AND j.config ->> 'method' = method;
    IF job IS NOT NULL THEN
        RAISE NOTICE 'anomaly detection (%) is already scheduled as job %', method, job;
        RETURN job;
    END IF;
    job := analytics.add_job('analytics_internal.policy_detect_anomalies'::regproc, schedule_interval, jsonb_build_object('method', method));
    PERFORM analytics_internal._label_job(job, format('Anomaly Detection [%s]', job), NULL);
    RETURN job;
END
$$;

-- Real-time metrics for LA-CAJA's own tables (opt-in) ------------------------------------
--
-- LA-CAJA recomputes public.real_time_metrics by scanning sales. A job can write them from
-- the rollups instead, under LA-CAJA's metric names, and evaluate public.alert_thresholds
-- into public.real_time_alerts. Incremental: a metric is written only when its value
-- changed since the last snapshot; an alert is raised once when its condition starts to
-- hold, and again only after it stopped holding.

-- The last value written per store and metric, and which thresholds currently hold.
CREATE TABLE analytics_internal.real_time_metric_state (
    store_id     uuid        NOT NULL,
    metric_name  text        NOT NULL,
    period_start timestamptz NOT NULL,
    value        numeric,
    written_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store_id, metric_name)
);
CREATE TABLE analytics_internal.alert_state (
    threshold_id uuid        PRIMARY KEY,
    holding      boolean     NOT NULL,
    since        timestamptz NOT NULL DEFAULT now()
);

-- A value as LA-CAJA's columns can hold it: numeric(18,2) for values, numeric(5,2) for the
-- change in percent (a 5,000 % jump is written as 999.99 and said in metadata).
CREATE FUNCTION analytics_internal._clamp(value numeric, digits int, scale int) RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT least(greatest(round(value, scale), -(10::numeric ^ (digits - scale) - 10::numeric ^ (-scale))),
                 10::numeric ^ (digits - scale) - 10::numeric ^ (-scale))
$$;

-- Every store's metrics now: today's (store-local) sales figures against yesterday's, and the
-- inventory figures.
CREATE FUNCTION analytics_internal._current_metrics(at timestamptz, token bigint)
RETURNS TABLE (store_id uuid, metric_type text, metric_name text, period_type text, period_start timestamptz,
               period_end timestamptz, metric_value numeric, previous_value numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    caller constant oid := analytics_internal._redeem_caller(token);
BEGIN
    PERFORM analytics_internal._check_reader(caller, NULL);
    RETURN QUERY

    WITH stores AS (
        SELECT s AS store_id, analytics.store_timezone(s) AS tz FROM unnest(analytics_internal._active_stores(at)) AS s
        WHERE analytics_internal._store_visible_to(caller, s)),
    days AS (
        SELECT st.store_id, st.tz, (at AT TIME ZONE st.tz)::date AS today FROM stores st),
    figures AS (
        SELECT d.store_id, d.tz, d.today,
               coalesce(sum(p.total_bs) FILTER (WHERE p.day = d.today), 0) AS bs,
               coalesce(sum(p.total_usd) FILTER (WHERE p.day = d.today), 0) AS usd,
               coalesce(sum(p.sales_count) FILTER (WHERE p.day = d.today), 0) AS n,
               coalesce(sum(p.total_bs) FILTER (WHERE p.day = d.today - 1), 0) AS bs_before,
               coalesce(sum(p.total_usd) FILTER (WHERE p.day = d.today - 1), 0) AS usd_before,
               coalesce(sum(p.sales_count) FILTER (WHERE p.day = d.today - 1), 0) AS n_before
        FROM days d LEFT JOIN analytics_internal.sales_daily_parts p ON p.store_id = d.store_id AND p.day BETWEEN d.today - 1 AND d.today
        GROUP BY d.store_id, d.tz, d.today)
    SELECT f.store_id, m.metric_type, m.metric_name, 'daily', f.today::timestamp AT TIME ZONE f.tz, at, m.value, m.before
    FROM figures f
    CROSS JOIN LATERAL (VALUES
        ('revenue', 'daily_revenue_bs', f.bs, f.bs_before),
        ('revenue', 'daily_revenue_usd', f.usd, f.usd_before),
        ('sales', 'daily_sales_count', f.n::numeric, f.n_before::numeric),
        ('sales', 'avg_ticket_bs', f.bs / nullif(f.n, 0), f.bs_before / nullif(f.n_before, 0)),
        ('sales', 'avg_ticket_usd', f.usd / nullif(f.n, 0), f.usd_before / nullif(f.n_before, 0))) AS m (metric_type, metric_name, value, before)
    UNION ALL
    SELECT i.store_id, 'inventory', m.metric_name, 'snapshot', date_trunc('day', at), at, m.value, NULL
    FROM analytics_internal._inventory_figures() i
    CROSS JOIN LATERAL (VALUES
        ('low_stock_count', i.low_stock_count::numeric), ('out_of_stock_count', i.out_of_stock_count::numeric),
        ('total_products', i.total_products::numeric), ('stock_value_bs', i.stock_value_bs),
        ('stock_value_usd', i.stock_value_usd)) AS m (metric_name, value)
    WHERE i.store_id IN (SELECT st.store_id FROM stores st);
END
$$;

-- A wrapper with the caller's rights (see analytics.kpis).
CREATE FUNCTION analytics.current_metrics(at timestamptz DEFAULT now())
RETURNS TABLE (store_id uuid, metric_type text, metric_name text, period_type text, period_start timestamptz,
               period_end timestamptz, metric_value numeric, previous_value numeric)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._current_metrics(at, analytics_internal._caller_token());
END;

-- Writes changed metrics into <schema>.real_time_metrics and raises the alerts of
-- <schema>.alert_thresholds that start to hold. Returns what it wrote.
CREATE FUNCTION analytics.refresh_real_time_metrics(at timestamptz DEFAULT now()) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    schema_name name := (SELECT c.source_schema FROM analytics_internal.source_config c);
    -- LA-CAJA's tables, never views (whose functions would run with the owner's rights)
    metrics regclass := analytics_internal._source_table(schema_name, 'real_time_metrics');
    thresholds regclass := analytics_internal._source_table(schema_name, 'alert_thresholds');
    alerts regclass := analytics_internal._source_table(schema_name, 'real_time_alerts');
    written bigint := 0;
    raised bigint := 0;
    new_rows jsonb;
BEGIN
    IF metrics IS NULL THEN
        RAISE EXCEPTION 'no table real_time_metrics in schema %', coalesce(schema_name, '(not attached)')
            USING HINT = 'This job keeps LA-CAJA''s own real_time_metrics; attach to the schema that has it.';
    END IF;
    CREATE TEMP TABLE lacaja_metrics_now ON COMMIT DROP AS SELECT * FROM analytics.current_metrics(at);
    -- only what changed since the last snapshot
    CREATE TEMP TABLE lacaja_metrics_changed ON COMMIT DROP AS
    SELECT m.* FROM lacaja_metrics_now m
    LEFT JOIN analytics_internal.real_time_metric_state s ON s.store_id = m.store_id AND s.metric_name = m.metric_name
    WHERE s.store_id IS NULL OR s.period_start <> m.period_start OR s.value IS DISTINCT FROM m.metric_value;
    -- Written as the table's owner (its triggers, defaults and checks run with that role's
    -- rights, never the extension's), from rows computed here.
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'store_id', m.store_id, 'metric_type', m.metric_type, 'metric_name', m.metric_name,
               'metric_value', analytics_internal._clamp(coalesce(m.metric_value, 0), 18, 2),
               'previous_value', analytics_internal._clamp(m.previous_value, 18, 2),
               'change_percentage', analytics_internal._clamp(c.change, 5, 2), 'period_type', m.period_type,
               'period_start', m.period_start, 'period_end', m.period_end,
               'metadata', jsonb_build_object('source', 'lacaja_analytics', 'exact_value', m.metric_value,
                                              'exact_change_percentage', c.change))), '[]')
      INTO new_rows
    FROM lacaja_metrics_changed m
    CROSS JOIN LATERAL (SELECT (m.metric_value - m.previous_value) / nullif(m.previous_value, 0) * 100 AS change) c;
    written := analytics_internal._execute_as((SELECT c.relowner FROM pg_class c WHERE c.oid = metrics),
        format($q$INSERT INTO %s (store_id, metric_type, metric_name, metric_value, previous_value, change_percentage,
                                   period_type, period_start, period_end, metadata)
                  SELECT * FROM jsonb_to_recordset($1) AS r (store_id uuid, metric_type text, metric_name text,
                      metric_value numeric, previous_value numeric, change_percentage numeric, period_type text,
                      period_start timestamptz, period_end timestamptz, metadata jsonb)$q$, metrics),
        new_rows, NULL);
    INSERT INTO analytics_internal.real_time_metric_state AS s (store_id, metric_name, period_start, value, written_at)
    SELECT store_id, metric_name, period_start, metric_value, now() FROM lacaja_metrics_changed
    ON CONFLICT (store_id, metric_name) DO UPDATE SET period_start = excluded.period_start, value = excluded.value,
        written_at = excluded.written_at;

    IF thresholds IS NOT NULL AND alerts IS NOT NULL THEN
        EXECUTE format($q$CREATE TEMP TABLE lacaja_thresholds ON COMMIT DROP AS
            SELECT t.id, t.store_id, t.alert_type, t.metric_name, t.threshold_value, t.comparison_operator, t.severity,
                   m.metric_value AS current_value,
                   CASE t.comparison_operator
                        WHEN 'less_than' THEN m.metric_value < t.threshold_value
                        WHEN 'greater_than' THEN m.metric_value > t.threshold_value
                        WHEN 'equals' THEN m.metric_value = t.threshold_value
                        WHEN 'not_equals' THEN m.metric_value <> t.threshold_value END AS holds
            FROM %s t JOIN lacaja_metrics_now m ON m.store_id = t.store_id AND m.metric_name = t.metric_name
            WHERE t.is_active$q$, thresholds);
        SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'store_id', t.store_id, 'threshold_id', t.id, 'alert_type', t.alert_type, 'severity', t.severity,
                   'title', format('%s %s', t.metric_name, replace(t.comparison_operator, '_', ' ')),
                   'message', format('%s is %s, %s the threshold of %s', t.metric_name, round(t.current_value, 2),
                                     replace(t.comparison_operator, '_', ' '), t.threshold_value),
                   'metric_name', t.metric_name, 'current_value', analytics_internal._clamp(t.current_value, 18, 2),
                   'threshold_value', t.threshold_value,
                   'metadata', jsonb_build_object('source', 'lacaja_analytics', 'exact_value', t.current_value))), '[]')
          INTO new_rows
        FROM lacaja_thresholds t
        LEFT JOIN analytics_internal.alert_state a ON a.threshold_id = t.id
        WHERE t.holds AND NOT coalesce(a.holding, false);
        raised := analytics_internal._execute_as((SELECT c.relowner FROM pg_class c WHERE c.oid = alerts),
            format($q$INSERT INTO %s (store_id, threshold_id, alert_type, severity, title, message, metric_name,
                                       current_value, threshold_value, metadata)
                      SELECT r.store_id, r.threshold_id, r.alert_type, r.severity, r.title, r.message, r.metric_name,
                             r.current_value, r.threshold_value, r.metadata
                      FROM jsonb_to_recordset($1) AS r (store_id uuid, threshold_id %s, alert_type text, severity text,
                          title text, message text, metric_name text, current_value numeric, threshold_value numeric,
                          metadata jsonb)$q$, alerts, analytics_internal._column_type(alerts, 'threshold_id')),
            new_rows, NULL);
        INSERT INTO analytics_internal.alert_state AS a (threshold_id, holding, since)
        SELECT id, coalesce(holds, false), now() FROM lacaja_thresholds
        ON CONFLICT (threshold_id) DO UPDATE SET holding = excluded.holding,
            since = CASE WHEN a.holding = excluded.holding THEN a.since ELSE excluded.since END;
        DROP TABLE lacaja_thresholds;
    END IF;
    DROP TABLE lacaja_metrics_now, lacaja_metrics_changed;
    RETURN jsonb_build_object('metrics_written', written, 'alerts_raised', raised);
END
$$;

CREATE PROCEDURE analytics_internal.policy_real_time_metrics(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM analytics.refresh_real_time_metrics();
END
$$;

CREATE FUNCTION analytics.add_real_time_metrics_policy(schedule_interval interval DEFAULT interval '1 minute') RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job int := (SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics_internal.policy_real_time_metrics'::regproc);
BEGIN
    IF job IS NOT NULL THEN
        RAISE NOTICE 'real-time metrics are already scheduled as job %', job;
        RETURN job;
    END IF;
    job := analytics.add_job('analytics_internal.policy_real_time_metrics'::regproc, schedule_interval);
    PERFORM analytics_internal._label_job(job, format('Real-Time Metrics [%s]', job), NULL);
    RETURN job;
END
$$;
