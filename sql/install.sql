-- Runs last at CREATE EXTENSION: dump configuration, privileges, and attaching.

-- pg_dump keeps what the DBA configured and what was reported; rollups are rebuilt after a
-- restore with analytics.attach() and analytics.refresh_all().
SELECT pg_catalog.pg_extension_config_dump('analytics.store_settings', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.ingest_errors', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.ingest_errors_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.compat_replaced', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.jobs', 'WHERE job_id >= 1000');
SELECT pg_catalog.pg_extension_config_dump('analytics.jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.job_errors', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.hypertables', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.hypertables_hypertable_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.replaced_foreign_keys', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.holidays', '');
-- Product versions are history the source does not keep; facts are reloaded after a restore.
SELECT pg_catalog.pg_extension_config_dump('analytics.dim_product', '');
SELECT pg_catalog.pg_extension_config_dump('analytics.dim_product_product_key_seq', '');

-- Privileges: the POS writes through SECURITY DEFINER triggers; nothing here is writable
-- by PUBLIC, and the upkeep functions are for the DBA.
REVOKE ALL ON ALL TABLES IN SCHEMA analytics FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA analytics FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION analytics.attach(name), analytics.detach(), analytics.refresh_all(),
    analytics.refresh_store(uuid), analytics.set_store_timezone(uuid, text), analytics._repair(uuid, date, date),
    analytics._capture_sales(), analytics._capture_stock(), analytics._capture_truncate(),
    analytics._create_capture_triggers(regclass, text, text[]), analytics._set_capture_body(text, text),
    analytics._bind_trigger_to_extension(oid, text),
    analytics._capture_items(), analytics._capture_item_returns(), analytics._capture_item_sales(),
    analytics._refresh_items(uuid[]), analytics._attach_items(name, text), analytics._detach_items(),
    analytics._repair_item_facts(uuid, date, date), analytics.install_compat(boolean), analytics.uninstall_compat(),
    analytics.create_recommended_indexes(boolean), analytics._index_plan(), analytics._start_index_builder(),
    analytics._claim_due_job(), analytics._record_job_run(int, text, text), analytics._recover_crashed_runs(),
    analytics._execute_job(int), analytics.run_pending_jobs(), analytics._fk_check_parent(),
    analytics.refresh_real_time_metrics(timestamptz), analytics.current_metrics(timestamptz), analytics._fk_parent_action(),
    analytics.enable_warehouse(interval), analytics.disable_warehouse(), analytics.etl_load_sales(boolean),
    analytics._attach_warehouse(name), analytics._detach_warehouse(), analytics._drop_capture_triggers(text), analytics._warehouse_detached(),
    analytics._warehouse_reattached(name, boolean), analytics._etl_products(name), analytics._etl_stores(name),
    analytics._etl_customers(name, uuid[]), analytics._etl_facts(uuid[]), analytics._etl_repoint(uuid[]),
    analytics._capture_warehouse_sales(), analytics._capture_warehouse_items(),
    analytics._capture_warehouse_item_returns(), analytics._capture_warehouse_products(),
    analytics.load_venezuela_holidays(int, int) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE analytics.policy_etl_load_sales(int, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE analytics.run_job(int) FROM PUBLIC;

-- The extension's own job: fold the parts writing sessions leave, every 10 minutes.
INSERT INTO analytics.jobs (job_id, application_name, proc, schedule_interval, retry_period, fixed_schedule, initial_start, next_start)
VALUES (1, 'Compact Rollup Parts [1]', 'analytics.policy_compact_parts'::regproc, interval '10 minutes', interval '1 minute',
        true, now(), now() + interval '10 minutes');
INSERT INTO analytics.job_run_state (job_id) VALUES (1);

-- Attach at once when LA-CAJA's tables are already there.
DO $$
BEGIN
    IF to_regclass(format('%I.sales', analytics.configured_source_schema())) IS NOT NULL THEN
        PERFORM analytics.attach(analytics.configured_source_schema());
    END IF;
END
$$;
