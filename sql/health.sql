-- analytics.health(): one call that tells a DBA whether the extension is doing its job —
-- capture attached and enabled on every source table, when the rollups were last checked
-- against the source, jobs, ingest errors, index builds, conversions, the scheduler — each
-- problem with what to do about it.

-- Every repair (refresh_all, refresh_store, set_store_timezone, the continuous-aggregate and
-- settle policies) compares the rollups with their definition and corrects the difference: its
-- outcome is kept here, the last 1,000.
CREATE TABLE analytics_internal.repair_log (
    id             bigserial   PRIMARY KEY,
    finished_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    store_id       uuid,
    from_day       date,
    to_day         date,
    keys_corrected bigint      NOT NULL,
    duration_ms    numeric     NOT NULL
);
COMMENT ON TABLE analytics_internal.repair_log IS
    'Outcome of every repair (a comparison of the rollups with the source that corrects what differs), the last 1,000.';

CREATE FUNCTION analytics_internal._log_repair(store_id uuid, from_day date, to_day date, outcome jsonb) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO analytics_internal.repair_log (store_id, from_day, to_day, keys_corrected, duration_ms)
    SELECT store_id, from_day, to_day,
           (SELECT coalesce(sum(v::bigint), 0) FROM jsonb_each_text(outcome -> 'keys_corrected') AS k(name, v))
               + coalesce((outcome ->> 'sales_with_item_facts_rebuilt')::bigint, 0),
           coalesce((outcome ->> 'duration_ms')::numeric, 0);
    DELETE FROM analytics_internal.repair_log WHERE id <= (SELECT max(id) - 1000 FROM analytics_internal.repair_log);
$$;

-- The capture triggers an attached database must have, on which table: those attach() makes
-- for the source found (sales; items and returns when they are captured; the stock source),
-- the two of each that note writes made with triggers off (restore.sql, ENABLE ALWAYS), and
-- with the warehouse enabled its own (warehouse.sql). Only these are ever bound to the
-- extension (restore.sql): a trigger of the same name anywhere else is nobody's.
CREATE FUNCTION analytics_internal._expected_capture_triggers()
RETURNS TABLE (rel regclass, trigger_name name)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH tables AS (
        SELECT to_regclass(format('%I.sales', c.source_schema)) AS sales,
               to_regclass(format('%I.sale_items', c.source_schema)) AS items,
               to_regclass(format('%I.sale_return_items', c.source_schema)) AS returns,
               to_regclass(format('%I.inventory_movements', c.source_schema)) AS movements,
               to_regclass(format('%I.products', c.source_schema)) AS products,
               c.captures_items, c.stock_source,
               coalesce((SELECT w.enabled FROM analytics_internal.warehouse_state w), false) AS warehouse
        FROM analytics_internal.source_config c)
    SELECT t.rel, format('lacaja_analytics_%s_%s', t.source, e.event)::name
    FROM tables c
    CROSS JOIN LATERAL (VALUES
        (c.sales, 'sales'),
        (CASE WHEN c.captures_items THEN c.items END, 'items'),
        (CASE WHEN c.captures_items AND analytics_internal._has_columns(c.returns, '{sale_item_id,qty,total_bs,total_usd}')
              THEN c.returns END, 'item_returns'),
        (CASE c.stock_source WHEN 'movements' THEN c.movements WHEN 'current_stock' THEN c.products END, 'stock')
    ) AS t (rel, source)
    CROSS JOIN unnest(ARRAY['insert', 'update', 'delete', 'truncate', 'replica', 'replica_truncate']) AS e (event)
    WHERE t.rel IS NOT NULL
    UNION ALL
    SELECT t.rel, format('lacaja_analytics_%s_%s', t.source, e.event)::name
    FROM tables c
    CROSS JOIN LATERAL (VALUES
        (c.sales, 'warehouse_sales'),
        (CASE WHEN analytics_internal._has_columns(c.items, '{id,sale_id}') THEN c.items END, 'warehouse_items'),
        (CASE WHEN analytics_internal._has_columns(c.returns, '{sale_item_id}') AND analytics_internal._has_columns(c.items, '{id,sale_id}')
              THEN c.returns END, 'warehouse_item_returns'),
        (CASE WHEN analytics_internal._has_columns(c.products, '{id}') THEN c.products END, 'warehouse_products')
    ) AS t (rel, source)
    CROSS JOIN unnest(ARRAY['insert', 'update', 'delete', 'truncate']) AS e (event)
    WHERE c.warehouse AND t.rel IS NOT NULL
$$;

-- One row per check: status 'ok', 'notice' (worth knowing) or 'problem' (numbers are or will
-- be wrong, or work is not being done), what was found, and what to do.
CREATE FUNCTION analytics.health()
RETURNS TABLE (check_name text, status text, detail text, hint text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    cfg analytics_internal.source_config;
    missing text;
    disabled text;
    unbound text;
    policy int;
    r record;
    scheduler_database constant text := coalesce(current_setting('lacaja_analytics.database', true), '');
BEGIN
    -- A new release's library serves the previous release's SQL until the update.
    RETURN QUERY SELECT 'version', CASE WHEN e.extversion = analytics_internal._library_version() THEN 'ok' ELSE 'problem' END,
        CASE WHEN e.extversion = analytics_internal._library_version() THEN 'lacaja_analytics ' || e.extversion
             ELSE format('the server runs the lacaja_analytics %s library on this database''s %s SQL', analytics_internal._library_version(), e.extversion) END,
        CASE WHEN e.extversion <> analytics_internal._library_version()
             THEN 'ALTER EXTENSION lacaja_analytics UPDATE;  -- docs/operations.md, "Upgrade"' END
    FROM pg_extension e WHERE e.extname = 'lacaja_analytics';
    SELECT * INTO cfg FROM analytics_internal.source_config;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'capture', 'problem', 'lacaja_analytics is not attached: new sales are not counted',
            'Run SELECT analytics.attach(''public''); then SELECT analytics.refresh_all(); (after a restore, see docs/operations.md).';
    ELSE
        SELECT string_agg(format('%s.%s', e.rel, e.trigger_name), ', ' ORDER BY 1) INTO missing
        FROM analytics_internal._expected_capture_triggers() e
        WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = e.rel AND t.tgname = e.trigger_name);
        SELECT string_agg(format('%s.%s', t.tgrelid::regclass, t.tgname), ', ' ORDER BY 1) INTO disabled
        FROM analytics_internal._expected_capture_triggers() e
        JOIN pg_trigger t ON t.tgrelid = e.rel AND t.tgname = e.trigger_name
        WHERE t.tgenabled = 'D' OR (e.trigger_name LIKE '%\_replica%' AND t.tgenabled <> 'A');
        SELECT string_agg(format('%s.%s', t.tgrelid::regclass, t.tgname), ', ' ORDER BY 1) INTO unbound
        FROM analytics_internal._expected_capture_triggers() e
        JOIN pg_trigger t ON t.tgrelid = e.rel AND t.tgname = e.trigger_name
        WHERE NOT analytics_internal._is_extension_trigger(t.tgrelid, t.tgname);
        IF NOT EXISTS (SELECT 1 FROM analytics_internal.capture_established) THEN
            RETURN QUERY SELECT 'capture', 'problem',
                'the capture was not rebuilt in this database (a restore without its triggers?): changes are not counted',
                format('Run SELECT analytics.attach(%L); then SELECT count(*) FROM analytics.verify(); (docs/operations.md, restore).', cfg.source_schema);
        ELSIF missing IS NOT NULL THEN
            RETURN QUERY SELECT 'capture', 'problem', 'capture triggers missing: ' || missing,
                format('Run SELECT analytics.attach(%L); then SELECT analytics.refresh_all();', cfg.source_schema);
        ELSIF disabled IS NOT NULL THEN
            RETURN QUERY SELECT 'capture', 'problem', 'capture triggers disabled (changes are not counted): ' || disabled,
                format('Run SELECT analytics.attach(%L); then SELECT analytics.refresh_all(); to count what was missed.', cfg.source_schema);
        ELSIF unbound IS NOT NULL THEN
            RETURN QUERY SELECT 'capture', 'problem', 'capture triggers not bound to the extension (DROP EXTENSION would leave them): ' || unbound,
                format('Run SELECT analytics.attach(%L);', cfg.source_schema);
        ELSE
            RETURN QUERY SELECT 'capture', 'ok',
                format('attached to schema %s (%s variant); %s capture triggers enabled', cfg.source_schema, cfg.variant,
                       (SELECT count(*) FROM analytics_internal._expected_capture_triggers())), NULL::text;
        END IF;
    END IF;

    SELECT * INTO r FROM analytics_internal.repair_log ORDER BY id DESC LIMIT 1;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'rollups checked', 'notice', 'never compared with the source since install',
            'SELECT count(*) FROM analytics.verify(); shows differences; a continuous-aggregate policy checks recent days on a schedule.';
    ELSE
        RETURN QUERY SELECT 'rollups checked', CASE WHEN r.keys_corrected = 0 THEN 'ok' ELSE 'notice' END,
            format('last compared with the source %s ago (%s%s): %s keys corrected', date_trunc('second', now() - r.finished_at),
                   CASE WHEN r.store_id IS NULL THEN 'every store' ELSE 'store ' || r.store_id END,
                   CASE WHEN r.from_day IS NOT NULL OR r.to_day IS NOT NULL
                        THEN format(', days %s to %s', coalesce(r.from_day::text, '…'), coalesce(r.to_day::text, '…')) ELSE '' END,
                   r.keys_corrected),
            CASE WHEN r.keys_corrected > 0
                 THEN 'Corrections mean writes reached the source without the capture (triggers off, a restore with session_replication_role = replica): see docs/operations.md.' END;
    END IF;
    IF EXISTS (SELECT 1 FROM analytics_internal.replica_writes) THEN
        SELECT min(j.job_id) INTO policy FROM analytics.jobs j
        WHERE j.proc = 'analytics_internal.policy_refresh_continuous_aggregate'::regproc AND j.scheduled;
        RETURN QUERY SELECT 'writes with triggers off', CASE WHEN policy IS NULL THEN 'problem' ELSE 'notice' END,
            format('%s key(s) of source rows written with session_replication_role = replica since %s, not yet compared with the rollups',
                   count(*), min(w.noted_at)::timestamp(0)),
            CASE WHEN policy IS NULL
                 THEN 'Add a continuous-aggregate policy (it repairs them at each run), or run SELECT analytics.refresh_all();'
                 ELSE format('The continuous-aggregate policy (job %s) repairs them at its next run, or CALL analytics.run_job(%s);', policy, policy) END
        FROM analytics_internal.replica_writes w;
    END IF;
    IF EXISTS (SELECT 1 FROM analytics_internal.zone_changes) THEN
        RETURN QUERY SELECT 'zone changes', 'notice',
            format('%s store(s) re-zoned; sales committed during the re-bucketing wait for the settle job', count(*)),
            'The settle job (job 2) moves them within a minute with the scheduler, or run SELECT analytics.run_pending_jobs();'
        FROM analytics_internal.zone_changes;
    END IF;

    FOR r IN SELECT s.job_id, j.application_name FROM analytics_internal.job_run_state s JOIN analytics.jobs j USING (job_id)
             WHERE s.running_pid IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.running_pid)
             ORDER BY s.job_id LOOP
        RETURN QUERY SELECT 'job ' || r.job_id, 'problem',
            format('%s was running when its process ended (killed, or the server restarted); its work was rolled back', r.application_name),
            format('It is recorded as crashed and retried when the scheduler starts or SELECT analytics.run_pending_jobs(); runs; CALL analytics.run_job(%s); runs it now.', r.job_id);
    END LOOP;
    FOR r IN SELECT s.job_id, s.application_name, s.consecutive_failures,
                    (SELECT e.err_message FROM analytics.job_errors e WHERE e.job_id = s.job_id ORDER BY e.finish_time DESC LIMIT 1) AS last_error
             FROM analytics.job_stats s WHERE s.consecutive_failures > 0 ORDER BY s.job_id LOOP
        RETURN QUERY SELECT 'job ' || r.job_id, 'problem',
            format('%s failed its last %s run(s): %s', r.application_name, r.consecutive_failures, coalesce(r.last_error, '(no message)')),
            format('SELECT * FROM analytics.job_errors WHERE job_id = %s ORDER BY finish_time DESC; fix the cause, then CALL analytics.run_job(%s);',
                   r.job_id, r.job_id);
    END LOOP;
    IF EXISTS (SELECT 1 FROM analytics.jobs WHERE scheduled) THEN
        IF scheduler_database = current_database()
           AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.backend_type = 'lacaja_analytics scheduler') THEN
            RETURN QUERY SELECT 'scheduler', 'ok', 'the scheduler runs this database''s jobs', NULL::text;
        ELSIF scheduler_database = current_database() THEN
            RETURN QUERY SELECT 'scheduler', 'problem', 'lacaja_analytics.database names this database but no scheduler is running',
                'Add lacaja_analytics to shared_preload_libraries and restart, or call SELECT analytics.run_pending_jobs(); from cron.';
        ELSE
            RETURN QUERY SELECT 'scheduler', 'notice',
                format('%s: jobs here run only when SELECT analytics.run_pending_jobs(); is called',
                       CASE WHEN scheduler_database = '' THEN 'no database is named for the scheduler (lacaja_analytics.database)'
                            ELSE format('the scheduler runs the jobs of %s, not of this database', quote_ident(scheduler_database)) END),
                format('ALTER SYSTEM SET lacaja_analytics.database = %L; SELECT pg_reload_conf();', current_database());
        END IF;
    END IF;

    RETURN QUERY SELECT 'ingest errors', 'notice',
        format('%s source value(s) could not be read and counted as 0, %s in the last day', count(*),
               count(*) FILTER (WHERE first_seen > now() - interval '1 day')),
        'SELECT * FROM analytics.ingest_errors ORDER BY first_seen DESC; fix the rows in LA-CAJA, the capture counts them again.'
    FROM analytics.ingest_errors HAVING count(*) > 0;
    RETURN QUERY SELECT 'index builds', 'problem',
        format('%s recommended index build(s) failed: %s', count(*), string_agg(index_name || ' (' || left(error, 80) || ')', ', ' ORDER BY id)),
        'SELECT * FROM analytics.index_builds WHERE status = ''failed''; then SELECT * FROM analytics.create_recommended_indexes(dry_run => false);'
    FROM analytics.index_builds b
    WHERE b.status = 'failed'
      AND NOT EXISTS (SELECT 1 FROM analytics.index_builds later WHERE later.index_name = b.index_name AND later.id > b.id AND later.status = 'built')
    HAVING count(*) > 0;
    RETURN QUERY SELECT 'index builds', 'notice', format('%s index build step(s) queued or running', count(*)),
        'Follow them in analytics.index_builds.'
    FROM analytics.index_builds WHERE status IN ('queued', 'building') HAVING count(*) > 0;
    RETURN QUERY SELECT 'conversion of ' || c.table_name, 'notice',
        format('create_hypertable in progress since %s ago: %s, %s rows copied', date_trunc('second', now() - c.started_at), c.status, c.rows_copied),
        'Follow it in analytics.hypertable_conversions; POS writes continue until its swap.'
    FROM analytics.hypertable_conversions c WHERE c.status NOT IN ('done', 'failed')
      AND c.conversion_id NOT IN (SELECT i.conversion_id FROM analytics_internal._interrupted_conversions() i);
    RETURN QUERY SELECT 'conversion of ' || c.table_name, 'problem',
        format('create_hypertable %s stopped at %s (%s rows copied): its worker ended with the server; the POS writes are still logged for it',
               c.conversion_id, c.status, c.rows_copied),
        'SELECT analytics.run_pending_jobs(); undoes it (the scheduler does at its start); then run create_hypertable again.'
    FROM analytics_internal._interrupted_conversions() c;
    RETURN QUERY SELECT 'conversion of ' || c.table_name, 'notice',
        format('create_hypertable %s was interrupted %s ago and undone: %s', c.conversion_id, date_trunc('second', now() - c.finished_at), c.error),
        format('Run create_hypertable(%L, %L, …) again.', format('%I.%I', c.schema_name, c.table_name), c.time_column)
    FROM analytics.hypertable_conversions c
    WHERE c.status = 'failed' AND c.sqlstate = '57P01' AND c.finished_at > now() - interval '7 days'
      AND NOT EXISTS (SELECT 1 FROM analytics.hypertable_conversions later
                      WHERE later.relation = c.relation AND later.conversion_id > c.conversion_id);
    -- sql/streaming.sql: publishing to Redis, when it is on
    RETURN QUERY SELECT * FROM analytics_internal._streaming_health();
END
$$;
