-- Run by scripts/previous_release.sh on the previous release: what a user has set up and
-- sold when the next release arrives. Uses only what that release has. :version is its version.
CREATE EXTENSION lacaja_analytics VERSION :'version';
\ir demo_setup.sql
SELECT analytics.run_pending_jobs();
\i demo/live.sql
SELECT analytics.etl_load_sales();

-- The figures as this release shows them, to compare after the update. A view of the user's
-- over the extension's views, as dashboards have: the update must not need to drop them.
CREATE SCHEMA upgrade_check;
CREATE VIEW upgrade_check.figures AS
SELECT 'sales_daily' AS part, (SELECT string_agg(d::text, ',' ORDER BY d.store_id, d.day) FROM analytics.sales_daily d) AS value
UNION ALL SELECT 'product_sales_daily', (SELECT string_agg(p::text, ',' ORDER BY p.store_id, p.day, p.product_id) FROM analytics.product_sales_daily p)
UNION ALL SELECT 'compat view', (SELECT string_agg(m::text, ',' ORDER BY m.store_id, m.sale_date) FROM public.mv_sales_daily m)
UNION ALL SELECT 'jobs', (SELECT string_agg(concat_ws('/', job_id, proc, schedule_interval, config, scheduled, hypertable), ',' ORDER BY job_id) FROM analytics.jobs)
UNION ALL SELECT 'zones', (SELECT string_agg(s::text, ',' ORDER BY s.store_id) FROM analytics.store_settings s)
UNION ALL SELECT 'chunks', (SELECT string_agg(concat_ws('/', hypertable_name, chunk_name, range_start, range_end), ',' ORDER BY hypertable_name, chunk_name) FROM analytics.chunks)
UNION ALL SELECT 'fact_sales', (SELECT md5(string_agg(f::text, ',' ORDER BY f.sale_item_id)) FROM analytics.fact_sales f)
UNION ALL SELECT 'dim_product', (SELECT md5(string_agg(p::text, ',' ORDER BY p.product_key)) FROM analytics.dim_product p);
CREATE TABLE upgrade_check.before AS SELECT * FROM upgrade_check.figures;
