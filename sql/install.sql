-- Runs last at CREATE EXTENSION: dump configuration, privileges, and attaching.

-- pg_dump keeps everything the extension knows that the source does not: configuration, and
-- the rollups with the source rows they sum, in the dump's one snapshot — so a restored
-- database is exact without a refresh. What attach() generated is rebuilt when pg_restore
-- re-creates the capture triggers (restore.sql). Not dumped: rollup_catalog (the extension's
-- own definitions), capture_established (says whether this database's capture was rebuilt),
-- the jobs CREATE EXTENSION makes (job_id < 1000) and per-run scheduler state.
-- One call per statement: each call rewrites the extension's catalog row.
DO $$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY[
    -- configuration
    'analytics.store_settings', 'analytics_internal.source_config', 'analytics_internal.compat_replaced',
    'analytics.hypertables', 'analytics.hypertables_hypertable_id_seq',
    'analytics_internal.replaced_foreign_keys',
    -- the registries themselves and their trigger functions are not the extension's: dumped as they are
    'analytics_internal.replaced_unique_indexes',
    -- how each hypertable's chunks are compressed (the batches are not dumped: a dump holds the rows)
    'analytics_internal.compression_settings',
    'analytics.holidays', 'analytics_internal.store_isolation', 'analytics_internal.zone_changes',
    'analytics.job_errors', 'analytics.job_errors_id_seq',
    -- rollups: the parts and what they are folded from
    'analytics_internal.sale_measures', 'analytics_internal.sales_hourly_parts', 'analytics_internal.sales_daily_parts',
    'analytics_internal.customer_daily_parts', 'analytics_internal.product_stock_parts',
    'analytics_internal.item_facts', 'analytics_internal.product_daily_parts', 'analytics_internal.cost_daily_parts',
    'analytics_internal.replica_writes',
    -- what was reported and done
    'analytics.ingest_errors', 'analytics.ingest_errors_id_seq',
    'analytics_internal.repair_log', 'analytics_internal.repair_log_id_seq',
    'analytics.index_builds', 'analytics.index_builds_id_seq',
    'analytics.hypertable_conversions', 'analytics.hypertable_conversions_conversion_id_seq',
    'analytics.anomaly_predictions', 'analytics.anomaly_predictions_id_seq',
    'analytics_internal.real_time_metric_state', 'analytics_internal.alert_state', 'analytics_internal.stock_out_alert_state',
    -- the warehouse: history the source does not keep (product versions), and its facts
    'analytics_internal.warehouse_state', 'analytics_internal.warehouse_changes',
    'analytics_internal.warehouse_product_changes', 'analytics_internal.warehouse_product_changes_change_id_seq',
    'analytics.dim_product', 'analytics.dim_product_product_key_seq', 'analytics.dim_store', 'analytics.dim_customer',
    'analytics.fact_sales', 'analytics.etl_runs', 'analytics.etl_runs_run_id_seq']::regclass[] LOOP
        PERFORM pg_catalog.pg_extension_config_dump(t, '');
    END LOOP;
END
$$;
SELECT pg_catalog.pg_extension_config_dump('analytics.jobs', 'WHERE job_id >= 1000');
SELECT pg_catalog.pg_extension_config_dump('analytics.jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('analytics_internal.job_run_state', 'WHERE job_id >= 1000');

-- Privileges: an allow-list (docs/api.md lists it, a test compares). Everything is revoked
-- from PUBLIC; then PUBLIC may execute exactly the documented functions a dashboard or a table
-- owner calls, each of which checks its caller. Nothing is readable by PUBLIC: a DBA grants
-- SELECT on analytics to dashboard roles. The POS needs nothing here (the capture triggers run
-- as the extension's owner). analytics_internal is the owner's alone (no USAGE for anyone).
REVOKE ALL ON ALL TABLES IN SCHEMA analytics, analytics_internal FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA analytics, analytics_internal FROM PUBLIC;
REVOKE ALL ON ALL ROUTINES IN SCHEMA analytics, analytics_internal FROM PUBLIC;
REVOKE ALL ON SCHEMA analytics_internal FROM PUBLIC;
DO $$
DECLARE
    routine regprocedure;
BEGIN
    FOR routine IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'analytics'::regnamespace AND p.proname = ANY (ARRAY[
            -- pure functions (SPEC §2 and §3)
            'time_bucket', 'amount', 'parse_amount', 'money', 'payment_method', 'payment_group',
            'default_timezone', 'is_valid_timezone', 'store_timezone', 'store_today',
            -- LA-CAJA's refresh_analytics_views() (after install_compat) calls it, with its rights
            'refresh_analytics_views',
            'easter_sunday', 'venezuela_holidays',
            -- dashboards: each checks that its caller may read the rollups (and the store)
            'kpis', 'sales_by_day', 'top_products', 'heatmap', 'inventory_metrics_of', 'current_metrics', 'stock_drift',
            -- predictions: the same checks
            'forecast_sales', 'forecast_sales_hourly', 'stock_forecast',
            -- warehouse reports: read fact_sales with the caller's rights
            'report_lines', 'report_sales_by_category_month', 'report_sales_by_weekday_hour',
            'report_sales_by_payment_month', 'report_product_abc',
            -- jobs: the caller's own jobs, run with the caller's rights
            'add_job', 'alter_job', 'delete_job', 'run_job', 'run_pending_jobs'])
    LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO PUBLIC', routine);
    END LOOP;
    -- Views run the functions they call with the reader's rights, and the public wrappers hand
    -- the caller's token to the owner's implementations: the functions of analytics_internal
    -- they (and those, in turn) name must be executable by whoever may use them. Their
    -- SQL-standard bodies and view definitions name them at install, so nobody needs USAGE on
    -- the schema, and nobody else can name them.
    FOR routine IN
        WITH RECURSIVE reached (fn) AS (
            SELECT d.refobjid
            FROM pg_depend d
            JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
            JOIN pg_class v ON v.oid = r.ev_class AND v.relnamespace = 'analytics'::regnamespace
            WHERE d.refclassid = 'pg_proc'::regclass
            UNION
            SELECT w.oid FROM pg_proc w
            WHERE w.pronamespace = 'analytics'::regnamespace AND has_function_privilege('public', w.oid, 'EXECUTE')
            UNION
            SELECT d.refobjid FROM reached
            JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = reached.fn AND d.refclassid = 'pg_proc'::regclass)
        SELECT DISTINCT p.oid::regprocedure FROM reached JOIN pg_proc p ON p.oid = reached.fn
        WHERE p.pronamespace = 'analytics_internal'::regnamespace
    LOOP
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO PUBLIC', routine);
    END LOOP;
    -- Row-level security policies of store isolation call this one as the reader.
    GRANT EXECUTE ON FUNCTION analytics_internal._store_visible(uuid) TO PUBLIC;
    -- What runs SQL or code as any role, or redeems a caller's identity, stays the owner's
    -- whatever a wrapper comes to name.
    IF EXISTS (SELECT 1 FROM pg_proc p
               WHERE p.pronamespace = 'analytics_internal'::regnamespace
                 AND p.proname IN ('_execute_as', '_call_as', '_redeem_caller', '_store_visible_to')
                 AND has_function_privilege('public', p.oid, 'EXECUTE')) THEN
        RAISE EXCEPTION 'lacaja_analytics install: a helper that acts as another role became executable by PUBLIC';
    END IF;
END
$$;

-- The extension's own jobs: fold the parts writing sessions leave, every 10 minutes.
INSERT INTO analytics.jobs (job_id, application_name, proc, schedule_interval, retry_period, fixed_schedule, initial_start, next_start)
VALUES (1, 'Compact Rollup Parts [1]', 'analytics_internal.policy_compact_parts'::regproc, interval '10 minutes', interval '1 minute',
        true, now(), now() + interval '10 minutes');
INSERT INTO analytics_internal.job_run_state (job_id) VALUES (1);
-- And: settle the sales that committed while set_store_timezone() re-bucketed their store.
INSERT INTO analytics.jobs (job_id, application_name, proc, schedule_interval, retry_period, fixed_schedule, initial_start, next_start)
VALUES (2, 'Settle Zone Changes [2]', 'analytics_internal.policy_settle_zone_changes'::regproc, interval '1 minute', interval '1 minute',
        true, now(), now() + interval '1 minute');
INSERT INTO analytics_internal.job_run_state (job_id) VALUES (2);

-- Attach at once when LA-CAJA's tables are already there.
DO $$
BEGIN
    IF to_regclass(format('%I.sales', analytics_internal.configured_source_schema())) IS NOT NULL THEN
        PERFORM analytics.attach(analytics_internal.configured_source_schema());
    END IF;
END
$$;
