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
-- before), kind 'daily' (the last 30 full local days and today so far, k = days back).
CREATE FUNCTION analytics._anomaly_samples(stores uuid[], at timestamptz, weeks int)
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
    LEFT JOIN analytics.sales_hourly_parts p
           ON p.store_id = w.store_id AND p.local_hour >= w.day::timestamp AND p.local_hour < w.day::timestamp + interval '1 day'
    GROUP BY w.store_id, w.kind, w.k, w.lo, w.hi, w.tz, w.day
$$;

-- Stores to judge when detect_anomalies() is given none: every store with a sale in the last
-- 60 days (LA-CAJA's stores table may hold stores that never sold or closed for good).
CREATE FUNCTION analytics._active_stores(at timestamptz) RETURNS uuid[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT p.store_id), '{}')
    FROM analytics.sales_daily_parts p
    WHERE p.day >= (at AT TIME ZONE 'UTC')::date - 60 AND p.day <= (at AT TIME ZONE 'UTC')::date + 1
$$;

-- Records a verdict: an anomaly is inserted once per store, metric, period and method (later
-- runs update its figures); a normal verdict resolves that metric's open anomalies up to now.
CREATE FUNCTION analytics._record_anomaly_verdict(verdict jsonb) RETURNS void
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

-- The detection job (config: {"method": "seasonal"}): every store, now.
CREATE PROCEDURE analytics.policy_detect_anomalies(job_id int, config jsonb)
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
    WHERE j.proc = 'analytics.policy_detect_anomalies'::regproc AND j.config ->> 'method' = method;
    IF job IS NOT NULL THEN
        RAISE NOTICE 'anomaly detection (%) is already scheduled as job %', method, job;
        RETURN job;
    END IF;
    job := analytics.add_job('analytics.policy_detect_anomalies'::regproc, schedule_interval, jsonb_build_object('method', method));
    PERFORM analytics._label_job(job, format('Anomaly Detection [%s]', job), NULL);
    RETURN job;
END
$$;
