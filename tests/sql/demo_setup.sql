-- What a user sets up on the demo's data once the extension is created (tests/restore.rs, and
-- tests/sql/upgrade_setup.sql on the previous release: only what 0.1.0 already had): the
-- backfill, the stores' zones, LA-CAJA's views over the rollups, sales and events as
-- hypertables, retention and continuous-aggregate policies, a holiday, the warehouse loaded.
SELECT analytics.refresh_all();
SELECT analytics.set_store_timezone(store_id, tz) FROM demo.store_zones;
SELECT analytics.install_compat(replace_public => true);
SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day', migrate_data => true,
                                   extend_unique => true, replace_foreign_keys => true, replace_unique => true);
SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day', migrate_data => true,
                                   extend_unique => true, replace_foreign_keys => true, replace_unique => true);
SELECT analytics.add_retention_policy('events', INTERVAL '2 years');
SELECT analytics.add_continuous_aggregate_policy('analytics.sales_daily', INTERVAL '7 days', INTERVAL '1 hour', INTERVAL '1 hour');
INSERT INTO analytics.holidays (store_id, day, name) VALUES (NULL, current_date + 3, 'Test holiday');
SELECT analytics.enable_warehouse();
SELECT analytics.etl_load_sales();
