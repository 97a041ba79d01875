-- The extension's catalog as rows (kind, object, definition): every member object with its full
-- definition, privileges and comment, what pg_dump keeps of its tables, and the rows of its
-- own definition tables. An upgraded database and a fresh install of the same version must
-- give the same rows (tests/upgrade.rs). The bodies attach() and enable_warehouse() generate
-- depend on what the database holds, not on the version: only their signatures are compared.
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'lacaja_analytics'),
members AS (
    SELECT d.classid, d.objid, d.objsubid
    FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
generated (name) AS (
    VALUES ('_fold_rows'), ('_fold_items'), ('_inventory_figures'), ('_product_stock'), ('_stock_stores'), ('_stock_drift'), ('_products_sold'),
           ('_customer_figures'), ('_forecast_products'),
           ('_capture_warehouse_sales'), ('_capture_warehouse_items'), ('_capture_warehouse_item_returns'),
           ('_capture_warehouse_products'))
SELECT 'function' AS kind, p.oid::regprocedure::text AS object,
       CASE WHEN p.proname IN (SELECT name FROM generated) THEN pg_get_function_result(p.oid) || ' (body generated)'
            ELSE pg_get_functiondef(p.oid) END || ' acl=' || coalesce(p.proacl::text, '') || ' comment=' || coalesce(obj_description(p.oid, 'pg_proc'), '')
       AS definition
FROM members m JOIN pg_proc p ON m.classid = 'pg_proc'::regclass AND p.oid = m.objid
UNION ALL
SELECT 'relation', c.oid::regclass::text,
       concat_ws(' | ', c.relkind::text, c.relpersistence::text, 'acl=' || coalesce(c.relacl::text, ''),
                 'comment=' || coalesce(obj_description(c.oid, 'pg_class'), ''),
                 CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                 (SELECT string_agg(format('%s %s%s%s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                                           CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                                           CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END,
                                           coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')), ', ' ORDER BY a.attnum)
                  FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                 (SELECT string_agg(pg_get_constraintdef(k.oid), '; ' ORDER BY k.conname) FROM pg_constraint k WHERE k.conrelid = c.oid),
                 (SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY 1) FROM pg_index i WHERE i.indrelid = c.oid),
                 (SELECT string_agg(pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text, '; ' ORDER BY t.tgname)
                  FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
                 CASE WHEN c.relkind = 'S' THEN (SELECT format('%s %s %s', s.seqtypid::regtype, s.seqincrement, s.seqcycle)
                                                 FROM pg_sequence s WHERE s.seqrelid = c.oid) END)
FROM members m JOIN pg_class c ON m.classid = 'pg_class'::regclass AND c.oid = m.objid
UNION ALL
SELECT 'type', t.oid::regtype::text, t.typtype::text
FROM members m JOIN pg_type t ON m.classid = 'pg_type'::regclass AND t.oid = m.objid
UNION ALL
SELECT 'schema', n.nspname::text, 'acl=' || coalesce(n.nspacl::text, '')
FROM members m JOIN pg_namespace n ON m.classid = 'pg_namespace'::regclass AND n.oid = m.objid
UNION ALL
SELECT 'event trigger', e.evtname::text, concat_ws(' ', e.evtevent, e.evtfoid::regproc, e.evtenabled::text, e.evttags::text)
FROM members m JOIN pg_event_trigger e ON m.classid = 'pg_event_trigger'::regclass AND e.oid = m.objid
UNION ALL
SELECT 'other member', pg_describe_object(m.classid, m.objid, m.objsubid), ''
FROM members m
WHERE m.classid NOT IN ('pg_proc'::regclass, 'pg_class'::regclass, 'pg_type'::regclass, 'pg_namespace'::regclass,
                        'pg_event_trigger'::regclass)
UNION ALL
SELECT 'dumped table', cfg.tbl::regclass::text, coalesce(cfg.cond, '')
FROM ext JOIN pg_extension e ON e.oid = ext.oid
CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) AS cfg (tbl, cond)
UNION ALL
SELECT 'rollup', r.name, r::text FROM analytics_internal.rollup_catalog r
UNION ALL
SELECT 'own job', j.job_id::text, concat_ws(' ', j.application_name, j.proc, j.schedule_interval, j.retry_period, j.fixed_schedule)
FROM analytics.jobs j WHERE j.job_id < 1000
ORDER BY 1, 2, 3
