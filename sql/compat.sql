-- Drop-in compatibility: the original design's analytics.mv_* names, and an opt-in swap of
-- LA-CAJA's own public.mv_* materialized views (stale between refreshes, counting voided
-- sales, matching no real payment method) and of its never-filled sales_heatmap table for
-- always-fresh views over the rollups, with the same names and columns, reversibly.

-- LA-CAJA's mv_sales_daily splits payments into cash, card and transfer columns, under method
-- names its POS never writes ('cash', 'card', 'transfer'). The real methods map like this (a
-- card method, should a POS add one, is any method with CARD in its name); SPLIT, FIAO (store
-- credit) and OTHER belong to none of the three (by_payment_method has every method).
CREATE FUNCTION analytics.payment_group(method text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN method IN ('CASH_BS', 'CASH_USD') THEN 'cash'
                WHEN method IN ('TRANSFER', 'PAGO_MOVIL') THEN 'transfer'
                WHEN method LIKE '%CARD%' THEN 'card' END
$$;

-- Per store and local day: SPEC §2's sales_daily figures, LA-CAJA's cash/card/transfer
-- columns, and by_payment_method = {method: {sales_count, total_bs, total_usd}}.
CREATE VIEW analytics.mv_sales_daily WITH (security_barrier) AS
SELECT d.store_id, d.day AS sale_date, d.sales_count, d.total_bs, d.total_usd,
       d.avg_ticket_bs, d.avg_ticket_usd, d.unique_customers,
       m.cash_count, m.card_count, m.transfer_count,
       m.cash_amount_bs, m.card_amount_bs, m.cash_amount_usd, m.card_amount_usd,
       m.by_payment_method
FROM analytics.sales_daily AS d
JOIN (SELECT p.store_id, p.day,
             coalesce(sum(p.sales_count) FILTER (WHERE p.grp = 'cash'), 0)::bigint AS cash_count,
             coalesce(sum(p.sales_count) FILTER (WHERE p.grp = 'card'), 0)::bigint AS card_count,
             coalesce(sum(p.sales_count) FILTER (WHERE p.grp = 'transfer'), 0)::bigint AS transfer_count,
             sum(p.total_bs) FILTER (WHERE p.grp = 'cash') AS cash_amount_bs,
             sum(p.total_bs) FILTER (WHERE p.grp = 'card') AS card_amount_bs,
             sum(p.total_usd) FILTER (WHERE p.grp = 'cash') AS cash_amount_usd,
             sum(p.total_usd) FILTER (WHERE p.grp = 'card') AS card_amount_usd,
             jsonb_object_agg(p.method, jsonb_build_object(
                 'sales_count', p.sales_count, 'total_bs', p.total_bs, 'total_usd', p.total_usd)) AS by_payment_method
      FROM (SELECT b.*, analytics.payment_group(b.method) AS grp FROM analytics.sales_by_payment_daily AS b) AS p
      GROUP BY p.store_id, p.day) AS m ON m.store_id = d.store_id AND m.day = d.day;

-- Stores that have product rollups, found by skipping through the parts' primary key (one
-- probe per store), so that a filter on store_id reaches the per-store function below.
CREATE FUNCTION analytics_internal._stores_with_products() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE stores AS (
        (SELECT p.store_id FROM analytics_internal.product_daily_parts AS p ORDER BY p.store_id LIMIT 1)
        UNION ALL
        SELECT (SELECT p.store_id FROM analytics_internal.product_daily_parts AS p WHERE p.store_id > s.store_id
                ORDER BY p.store_id LIMIT 1)
        FROM stores AS s WHERE s.store_id IS NOT NULL)
    SELECT store_id FROM stores WHERE store_id IS NOT NULL
$$;

-- The last 30 store-local days including today, net of returns and line discounts (LA-CAJA's
-- view counts voided sales, ignores discounts and returns, and averages line prices; here
-- avg_price = revenue / quantity).
CREATE VIEW analytics.mv_top_products_30d WITH (security_barrier) AS
SELECT t.product_id, t.name AS product_name, t.category, s.store_id,
       t.net_qty AS total_qty_sold,
       t.revenue_bs - t.returned_bs AS revenue_bs, t.revenue_usd - t.returned_usd AS revenue_usd,
       t.times_sold,
       (t.revenue_bs - t.returned_bs) / nullif(t.net_qty, 0) AS avg_price_bs,
       (t.revenue_usd - t.returned_usd) / nullif(t.net_qty, 0) AS avg_price_usd
FROM analytics_internal._stores_with_products() AS s(store_id)
CROSS JOIN LATERAL analytics_internal._products_sold(s.store_id, analytics.store_today(s.store_id) - 29,
                                            analytics.store_today(s.store_id)) AS t
WHERE analytics_internal._store_visible(s.store_id);

-- SPEC §2's inventory metrics under LA-CAJA's column names (stock ≤ 0 is out of stock; the
-- stock value counts positive stock only).
CREATE VIEW analytics.mv_inventory_metrics WITH (security_barrier) AS
SELECT f.store_id, f.total_products, f.low_stock_count, f.out_of_stock_count,
       f.stock_value_bs AS total_stock_value_bs, f.stock_value_usd AS total_stock_value_usd,
       f.avg_stock_level, f.categories_count
FROM analytics_internal._inventory_figures(NULL) AS f
WHERE analytics_internal._store_visible(f.store_id);

-- LA-CAJA's mv_customer_metrics per store, each debt counted once (see _customer_figures).
CREATE VIEW analytics.mv_customer_metrics WITH (security_barrier) AS
SELECT f.store_id, f.total_customers, f.customers_with_debt, f.total_debt_bs, f.total_debt_usd, f.active_customers_30d
FROM analytics_internal._customer_figures(NULL) AS f
WHERE analytics_internal._store_visible(f.store_id);

-- LA-CAJA's materialized views that this extension can stand in for, and its refresh function.
CREATE FUNCTION analytics_internal._compat_objects()
RETURNS TABLE (object name, kind "char", replacement regclass, row_key text[])
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('sales_heatmap'::name, 'r'::"char", 'analytics.sales_heatmap'::regclass, '{store_id,date,hour}'::text[]),
           ('mv_sales_daily', 'm', 'analytics.mv_sales_daily', '{store_id,sale_date}'),
           ('mv_top_products_30d', 'm', 'analytics.mv_top_products_30d', '{store_id,product_id}'),
           ('mv_inventory_metrics', 'm', 'analytics.mv_inventory_metrics', '{store_id}'),
           ('mv_customer_metrics', 'm', 'analytics.mv_customer_metrics', '{store_id}')
$$;

CREATE TABLE analytics_internal.compat_replaced (
    object      name PRIMARY KEY,
    schema_name name        NOT NULL,
    kind        "char"      NOT NULL,
    kept_as     name,
    definition  text,
    -- a materialized view: the statements that create it again (definition, indexes, owner,
    -- grants, comment); it is dropped, not kept, so that nothing keeps reading the sources
    restore     text[],
    replaced_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE analytics_internal.compat_replaced IS
    'What analytics.install_compat() replaced in LA-CAJA''s schema: tables renamed to kept_as, materialized views by the statements that restore them, the refresh function''s original definition; analytics.uninstall_compat() puts them back.';

-- LA-CAJA's materialized views that are still materialized (not replaced), refreshed without
-- blocking readers where they allow it. The analytics.mv_* views never need a refresh.
-- The schema the materialized views live in: a name, for the caller-rights refresh below.
CREATE FUNCTION analytics_internal._compat_schema() RETURNS name
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce((SELECT c.source_schema FROM analytics_internal.source_config c),
                    analytics_internal.configured_source_schema())::name
$$;

-- Refreshes LA-CAJA's materialized views that are still materialized views, with the caller's
-- rights (REFRESH needs their owner, and runs their query): LA-CAJA's own role calls it through
-- its refresh_analytics_views(). Reads only the catalogs, so callers need nothing else.
CREATE FUNCTION analytics_internal._refresh_materialized_views(source_schema name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    mv record;
BEGIN
    FOR mv IN
        SELECT c.oid::regclass AS rel, c.relispopulated AS populated,
               EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
                         AND i.indexprs IS NULL) AS has_unique_index
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = source_schema AND c.relkind = 'm'
          AND c.relname IN ('mv_sales_daily', 'mv_top_products_30d', 'mv_inventory_metrics', 'mv_customer_metrics')
        ORDER BY c.relname
    LOOP
        BEGIN
            EXECUTE format('REFRESH MATERIALIZED VIEW %s %s',
                           CASE WHEN mv.populated AND mv.has_unique_index THEN 'CONCURRENTLY' ELSE '' END, mv.rel);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'could not refresh %: %', mv.rel, SQLERRM;
        END;
    END LOOP;
END
$$;

CREATE FUNCTION analytics.refresh_analytics_views() RETURNS void LANGUAGE sql
BEGIN ATOMIC
    SELECT analytics_internal._refresh_materialized_views(analytics_internal._compat_schema());
END;

-- The view that stands in for `original`: the original's columns in its order and types, taken
-- by name from `replacement`; an `id uuid` column becomes a stable id of the row's key; any
-- other column the rollups do not have is NULL.
CREATE FUNCTION analytics_internal._compat_view_sql(original regclass, replacement regclass, row_key text[],
                                           schema_name name, view_name name) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format('CREATE VIEW %I.%I AS SELECT %s FROM %s AS r', schema_name, view_name,
        string_agg(CASE
            WHEN r.attname IS NOT NULL THEN format('r.%I::%s AS %I', o.attname, format_type(o.atttypid, o.atttypmod), o.attname)
            WHEN o.attname = 'id' AND o.atttypid = 'uuid'::regtype THEN format('md5(concat_ws(%L, %s))::uuid AS id', '/',
                (SELECT string_agg(format('r.%I', k), ', ') FROM unnest(row_key) AS k))
            ELSE format('NULL::%s AS %I', format_type(o.atttypid, o.atttypmod), o.attname) END, ', ' ORDER BY o.attnum),
        replacement)
    FROM pg_attribute AS o
    LEFT JOIN pg_attribute AS r ON r.attrelid = replacement AND r.attname = o.attname AND r.attnum > 0 AND NOT r.attisdropped
    WHERE o.attrelid = original AND o.attnum > 0 AND NOT o.attisdropped
$$;

-- Columns of `original` that `replacement` cannot fill (they read as NULL).
CREATE FUNCTION analytics_internal._compat_unfilled(original regclass, replacement regclass) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(o.attname::text ORDER BY o.attnum), '{}')
    FROM pg_attribute AS o
    WHERE o.attrelid = original AND o.attnum > 0 AND NOT o.attisdropped
      AND NOT (o.attname = 'id' AND o.atttypid = 'uuid'::regtype)
      AND NOT EXISTS (SELECT 1 FROM pg_attribute AS r WHERE r.attrelid = replacement AND r.attname = o.attname
                        AND r.attnum > 0 AND NOT r.attisdropped)
$$;

-- Views, rules and materialized views that read `rel` (they would keep reading the original).
CREATE FUNCTION analytics_internal._readers_of(rel regclass) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT r.ev_class::regclass::text), '{}')
    FROM pg_depend AS d JOIN pg_rewrite AS r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid = rel AND r.ev_class <> rel
$$;

-- The statements that create materialized view `mv` again as it is (empty until refreshed):
-- its query, indexes, owner, grants and comment. Names outside pg_catalog come out qualified
-- (callers pin search_path).
CREATE FUNCTION analytics_internal._matview_restore_statements(mv regclass) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY[format('CREATE MATERIALIZED VIEW %I.%I AS %s WITH NO DATA', n.nspname, c.relname,
                        rtrim(pg_get_viewdef(c.oid), ';'))]
        || ARRAY(SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = c.oid ORDER BY i.indexrelid)
        || format('ALTER MATERIALIZED VIEW %I.%I OWNER TO %I', n.nspname, c.relname, pg_get_userbyid(c.relowner))
        || ARRAY(SELECT format('GRANT %s ON %I.%I TO %s%s', a.privilege_type, n.nspname, c.relname,
                               CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                               CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
                 FROM aclexplode(c.relacl) AS a WHERE a.grantee <> c.relowner)
        || coalesce(ARRAY[format('COMMENT ON MATERIALIZED VIEW %I.%I IS %L', n.nspname, c.relname, obj_description(c.oid, 'pg_class'))],
                    '{}')
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = mv
$$;

-- Replaces (replace_public => true) or shows what it would replace (false) in LA-CAJA's
-- schema: sales_heatmap and the mv_* materialized views become views over the rollups, and
-- refresh_analytics_views() refreshes only what is still materialized. The sales_heatmap table
-- is kept under another name (it may hold rows); a materialized view is dropped and its
-- definition kept, so that nothing left behind reads sales (a kept copy would block
-- create_hypertable, whose hint points here). Nothing changes when anything is in the way;
-- the error says what.
-- The work of install_compat(replace_public => true), as one try of _by_short_tries.
CREATE FUNCTION analytics_internal._install_compat_apply(source_schema name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target record;
    original regclass;
    owner name;
    kept_as name;
    refresh constant regprocedure := to_regprocedure(format('%I.refresh_analytics_views()', source_schema));
    grant_sql text;
    grants text[];
    view_sql text;
    restore text[];
BEGIN
    FOR target IN
        SELECT o.* FROM analytics_internal._compat_objects() AS o
        WHERE NOT EXISTS (SELECT 1 FROM analytics_internal.compat_replaced r WHERE r.object = o.object)
    LOOP
        original := to_regclass(format('%I.%I', source_schema, target.object));
        CONTINUE WHEN original IS NULL OR (SELECT c.relkind FROM pg_class c WHERE c.oid = original) <> target.kind;
        kept_as := CASE target.kind WHEN 'r' THEN left(target.object || '_replaced', 63) END;
        owner := (SELECT pg_get_userbyid(c.relowner) FROM pg_class c WHERE c.oid = original);  -- unquoted: %I quotes it
        -- Written while the original still stands: the view takes its columns, the grants its readers.
        view_sql := analytics_internal._compat_view_sql(original, target.replacement, target.row_key, source_schema, target.object);
        grants := ARRAY(
            SELECT format('GRANT %s ON %I.%I TO %s%s', a.privilege_type, source_schema, target.object,
                          CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                          CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
            FROM pg_class c, aclexplode(c.relacl) AS a
            WHERE c.oid = original AND a.grantee <> c.relowner);
        restore := CASE target.kind WHEN 'm' THEN analytics_internal._matview_restore_statements(original) END;
        IF target.kind = 'm' THEN
            EXECUTE format('DROP MATERIALIZED VIEW %s', original);
        ELSE
            EXECUTE format('ALTER TABLE %s RENAME TO %I', original, kept_as);
        END IF;
        EXECUTE view_sql;
        EXECUTE format('ALTER VIEW %I.%I OWNER TO %I', source_schema, target.object, owner);
        EXECUTE format('GRANT SELECT ON %s TO %I', target.replacement, owner);
        FOREACH grant_sql IN ARRAY grants LOOP
            EXECUTE grant_sql;  -- whoever could read the original reads the view
        END LOOP;
        EXECUTE format('COMMENT ON VIEW %I.%I IS %L', source_schema, target.object,
                       format('Always fresh: lacaja_analytics reads it from its rollups. %s SELECT analytics.uninstall_compat() puts it back.',
                              CASE target.kind WHEN 'r' THEN format('The original is %I.%I;', source_schema, kept_as)
                                   ELSE 'The original materialized view''s definition is kept;' END));
        INSERT INTO analytics_internal.compat_replaced (object, schema_name, kind, kept_as, restore)
        VALUES (target.object, source_schema, target.kind, kept_as, restore);
    END LOOP;

    IF refresh IS NOT NULL AND NOT EXISTS (SELECT 1 FROM analytics_internal.compat_replaced r WHERE r.object = 'refresh_analytics_views') THEN
        INSERT INTO analytics_internal.compat_replaced (object, schema_name, kind, definition)
        VALUES ('refresh_analytics_views', source_schema, 'f', pg_get_functiondef(refresh));
        BEGIN
            -- A SQL-standard body, bound now: LA-CAJA's role needs no USAGE on analytics to call it.
            EXECUTE format($f$CREATE OR REPLACE FUNCTION %I.refresh_analytics_views() RETURNS void
                LANGUAGE sql BEGIN ATOMIC SELECT analytics.refresh_analytics_views(); END$f$, source_schema);
        EXCEPTION WHEN invalid_function_definition THEN
            RAISE EXCEPTION 'install_compat changed nothing: % does not return void, so it cannot be redefined', refresh
                USING HINT = 'Rename your refresh_analytics_views() and run install_compat again.';
        END;
    END IF;
END
$$;

CREATE FUNCTION analytics.install_compat(replace_public boolean DEFAULT false) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source_schema name := (SELECT c.source_schema FROM analytics_internal.source_config c);
    target record;
    original regclass;
    kept_as name;
    refresh regprocedure;
    plan jsonb := '[]';
    blockers text[] := '{}';
    readers text[];
BEGIN
    IF source_schema IS NULL THEN
        RAISE EXCEPTION 'lacaja_analytics is not attached to LA-CAJA''s tables'
            USING HINT = 'Run SELECT analytics.attach(''public'') first.';
    END IF;
    FOR target IN SELECT * FROM analytics_internal._compat_objects() LOOP
        original := to_regclass(format('%I.%I', source_schema, target.object));
        kept_as := left(target.object || '_replaced', 63);
        IF EXISTS (SELECT 1 FROM analytics_internal.compat_replaced r WHERE r.object = target.object) THEN
            plan := plan || jsonb_build_object('object', target.object, 'action', 'already replaced');
        ELSIF original IS NULL THEN
            plan := plan || jsonb_build_object('object', target.object, 'action', 'absent, nothing to do');
        ELSIF (SELECT c.relkind FROM pg_class c WHERE c.oid = original) <> target.kind THEN
            plan := plan || jsonb_build_object('object', target.object, 'action', 'left alone: not the expected kind of relation');
        ELSE
            IF target.kind = 'r' AND to_regclass(format('%I.%I', source_schema, kept_as)) IS NOT NULL THEN
                blockers := blockers || format('%I.%I already exists, so %s cannot be kept under that name; rename or drop it',
                                               source_schema, kept_as, original);
            END IF;
            readers := analytics_internal._readers_of(original);
            IF cardinality(readers) > 0 THEN
                blockers := blockers || format('%s is read by %s, which would keep reading the stale original; drop or redefine them first',
                                               original, array_to_string(readers, ', '));
            END IF;
            plan := plan || jsonb_build_object('object', target.object, 'action', 'replace with a view of ' || target.replacement,
                                               'original_kept_as', CASE target.kind WHEN 'r' THEN kept_as
                                                                   ELSE 'its definition (uninstall_compat() creates it again)' END,
                                               'columns_left_null', analytics_internal._compat_unfilled(original, target.replacement));
        END IF;
    END LOOP;
    refresh := to_regprocedure(format('%I.refresh_analytics_views()', source_schema));
    IF refresh IS NOT NULL AND NOT EXISTS (SELECT 1 FROM analytics_internal.compat_replaced r WHERE r.object = 'refresh_analytics_views') THEN
        plan := plan || jsonb_build_object('object', 'refresh_analytics_views()',
                                           'action', 'redefine to refresh only what is still materialized (original kept)');
    END IF;
    IF NOT replace_public THEN
        RETURN jsonb_build_object('replaced', false, 'plan', plan, 'blockers', to_jsonb(blockers),
                                  'hint', 'Run SELECT analytics.install_compat(replace_public => true) to apply.');
    END IF;
    IF cardinality(blockers) > 0 THEN
        RAISE EXCEPTION 'install_compat changed nothing: %', array_to_string(blockers, '; ');
    END IF;
    -- Dropping, renaming and creating take ACCESS EXCLUSIVE on what LA-CAJA's API reads (and
    -- LOCK TABLE cannot name a materialized view): the whole change is one try, by short tries,
    -- so that its readers never queue behind a report for it.
    PERFORM analytics_internal._by_short_tries(ARRAY[format('SELECT analytics_internal._install_compat_apply(%L)', source_schema)],
                                               'replace LA-CAJA''s views');
    RETURN jsonb_build_object('replaced', true, 'plan', plan);
END
$$;

-- Puts back what install_compat() replaced; the materialized views are refreshed (without
-- blocking their readers where they have a unique index), since they went stale meanwhile.
-- The work of uninstall_compat(), as one try of _by_short_tries.
CREATE FUNCTION analytics_internal._uninstall_compat_apply() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    replaced analytics_internal.compat_replaced;
    current regclass;
    readers text[];
    statement text;
BEGIN
    FOR replaced IN SELECT * FROM analytics_internal.compat_replaced ORDER BY replaced_at, object LOOP
        IF replaced.kind = 'f' THEN
            -- CREATE OR REPLACE keeps the function's owner. Were it gone, replaying LA-CAJA's text
            -- would create it owned by the extension's owner (possibly SECURITY DEFINER): then it
            -- stays gone, and the report says so.
            IF to_regprocedure(format('%I.refresh_analytics_views()', replaced.schema_name)) IS NOT NULL THEN
                EXECUTE replaced.definition;
            ELSE
                RAISE WARNING '%.refresh_analytics_views() was dropped since install_compat(); it is not re-created',
                    quote_ident(replaced.schema_name);
            END IF;
        ELSE
            current := to_regclass(format('%I.%I', replaced.schema_name, replaced.object));
            IF current IS NOT NULL AND (SELECT c.relkind FROM pg_class c WHERE c.oid = current) = 'v' THEN
                readers := analytics_internal._readers_of(current);
                IF cardinality(readers) > 0 THEN
                    RAISE EXCEPTION 'uninstall_compat changed nothing: % is read by %', current,
                        array_to_string(readers, ', ')
                        USING HINT = 'Drop or redefine them first.';
                END IF;
                EXECUTE format('DROP VIEW %s', current);
            ELSIF current IS NOT NULL THEN
                RAISE EXCEPTION 'uninstall_compat changed nothing: % is no longer the view install_compat() created', current
                    USING HINT = format('Move it away; then uninstall_compat() puts the original %I.%I back.', replaced.schema_name, replaced.object);
            END IF;
            IF replaced.restore IS NOT NULL THEN
                FOREACH statement IN ARRAY replaced.restore LOOP
                    EXECUTE statement;
                END LOOP;
            ELSE
                EXECUTE format('ALTER %s %I.%I RENAME TO %I',
                               CASE replaced.kind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                               replaced.schema_name, replaced.kept_as, replaced.object);
            END IF;
        END IF;
        DELETE FROM analytics_internal.compat_replaced r WHERE r.object = replaced.object;
    END LOOP;
END
$$;

CREATE FUNCTION analytics.uninstall_compat() RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    restored constant jsonb := coalesce((SELECT jsonb_agg(r.object::text ORDER BY r.replaced_at, r.object)
                                         FROM analytics_internal.compat_replaced r), '[]');
BEGIN
    -- Dropping the views and putting the originals back take ACCESS EXCLUSIVE on what LA-CAJA's
    -- API reads (and LOCK TABLE cannot name a materialized view): the whole change is one try,
    -- by short tries, so that its readers never queue behind a report for it.
    PERFORM analytics_internal._by_short_tries(ARRAY['SELECT analytics_internal._uninstall_compat_apply()'],
                                               'put LA-CAJA''s views back');
    PERFORM analytics.refresh_analytics_views();
    RETURN jsonb_build_object('restored', restored);
END
$$;
