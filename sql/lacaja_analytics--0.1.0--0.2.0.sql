-- lacaja_analytics 0.1.0 -> 0.2.0 (ALTER EXTENSION lacaja_analytics UPDATE).
--
-- 0.2.0: a dump restores exact and capturing (the extension's tables dumped with the source,
-- the capture re-established when pg_restore re-creates its triggers), and writes made with
-- session_replication_role = replica are noted and repaired (sql/restore.sql, docs/design.md
-- "Dump and restore"). The definitions below are those of the 0.2.0 sources; tests/upgrade.rs
-- checks that an updated database's catalog equals a fresh 0.2.0 install's.
--
-- An attached database gets its new triggers here: that takes the capture tables' locks by
-- short tries (lacaja_analytics.maintenance_lock_timeout, retried until maintenance_lock_wait),
-- as attach() does; if a long report holds them that long, the update fails with 55P03 and
-- changed nothing — run it again.

\echo Use "ALTER EXTENSION lacaja_analytics UPDATE" to load this file. \quit

-- Tables ------------------------------------------------------------------------------------

-- A dump keeps the schema's name, so a restored database checks its own schema. The guard
-- that reads the column is replaced first: this ALTER fires it, and a plan it kept from
-- earlier in this session would still expect an oid.
CREATE OR REPLACE FUNCTION analytics_internal._guard_source_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    config analytics_internal.source_config;
    problems text;
BEGIN
    SELECT * INTO config FROM analytics_internal.source_config;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF to_regnamespace(quote_ident(config.source_schema)) IS DISTINCT FROM config.source_schema_oid THEN
        problems := format('schema %I is no longer the schema that was attached', config.source_schema);
    ELSE
        problems := analytics_internal._source_table_problems(config.source_schema);
    END IF;
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION 'lacaja_analytics is attached to schema % and refuses this change: %', quote_ident(config.source_schema), problems
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'The extension reads those as tables of built-in types, with its own rights. SELECT analytics.detach() first.';
    END IF;
END
$$;

ALTER TABLE analytics_internal.source_config ALTER COLUMN source_schema_oid TYPE regnamespace USING source_schema_oid::regnamespace;

CREATE TABLE analytics_internal.capture_established (
    singleton      boolean      PRIMARY KEY DEFAULT true CHECK (singleton),
    source_schema  regnamespace NOT NULL,
    established_at timestamptz  NOT NULL DEFAULT now()
);
COMMENT ON TABLE analytics_internal.capture_established IS
    'The capture''s generated functions were built in this database (not dumped: empty after a restore until its triggers are restored).';

CREATE TABLE analytics_internal.replica_writes (
    source   text        NOT NULL,  -- sales, items, item_returns, stock; truncate: everything
    store_id uuid,
    utc_day  date,
    sale_id  uuid,                  -- items: resolved to store and day when repaired
    item_id  uuid,                  -- item returns: likewise
    noted_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX replica_writes_key ON analytics_internal.replica_writes (source, store_id, utc_day, sale_id, item_id)
    NULLS NOT DISTINCT;
COMMENT ON TABLE analytics_internal.replica_writes IS
    'Keys of source rows written while the capture triggers did not fire (session_replication_role = replica), until repaired.';

REVOKE ALL ON analytics_internal.capture_established, analytics_internal.replica_writes FROM PUBLIC;

-- Changed functions -------------------------------------------------------------------------

-- src/rollups.rs
CREATE FUNCTION analytics_internal."_library_version"() RETURNS TEXT /* &str */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'library_version_wrapper';

-- Replaced by versions with a create_triggers argument (the restore binds, creates nothing).
DROP FUNCTION analytics_internal._create_capture_triggers(regclass, text, text[], text);
DROP FUNCTION analytics_internal._attach_items(name, text);
DROP FUNCTION analytics_internal._attach_warehouse(name);
-- attach() now sets the warehouse's reload flag itself.
DROP FUNCTION analytics_internal._warehouse_reattached(name, boolean);

CREATE FUNCTION analytics_internal._bind_trigger(relation regclass, trigger_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT analytics_internal._is_extension_trigger(relation, trigger_name) THEN
        PERFORM analytics_internal._bind_trigger_to_extension(relation::oid, trigger_name);
    END IF;
END
$$;

CREATE FUNCTION analytics_internal._create_capture_triggers(rel regclass, source text,
                                                   events text[] DEFAULT '{insert,update,delete,truncate}',
                                                   argument text DEFAULT NULL, create_triggers boolean DEFAULT true)
RETURNS text[] LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn constant text := format('analytics_internal.%I(%s)', '_capture_' || source, coalesce(quote_literal(argument), ''));
    prefix constant text := 'lacaja_analytics_' || source;
    event text;
    created text[] := '{}';
BEGIN
    FOREACH event IN ARRAY events LOOP
        IF NOT create_triggers THEN
            -- A restore: bind what pg_restore created, create nothing (it may be coming).
            IF EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = rel AND t.tgname = prefix || '_' || event) THEN
                PERFORM analytics_internal._bind_trigger(rel, prefix || '_' || event);
                created := created || (prefix || '_' || event);
            END IF;
            CONTINUE;
        END IF;
        EXECUTE CASE event
            WHEN 'insert' THEN format('CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows
                                       FOR EACH STATEMENT EXECUTE FUNCTION %s', prefix || '_insert', rel, fn)
            WHEN 'update' THEN format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                                       FOR EACH STATEMENT EXECUTE FUNCTION %s', prefix || '_update', rel, fn)
            WHEN 'delete' THEN format('CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows
                                       FOR EACH STATEMENT EXECUTE FUNCTION %s', prefix || '_delete', rel, fn)
            WHEN 'truncate' THEN format('CREATE TRIGGER %I AFTER TRUNCATE ON %s
                                         FOR EACH STATEMENT EXECUTE FUNCTION analytics_internal._capture_truncate(%L)',
                                        prefix || '_truncate', rel, source)
        END;
        PERFORM analytics_internal._bind_trigger(rel, prefix || '_' || event);
        created := created || (prefix || '_' || event);
    END LOOP;
    RETURN created;
END
$$;

CREATE FUNCTION analytics_internal._attach_items(source_schema name, valid_sale text, create_triggers boolean DEFAULT true) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    items regclass := to_regclass(format('%I.sale_items', source_schema));
    returns regclass := to_regclass(format('%I.sale_return_items', source_schema));
    triggers text[];
BEGIN
    IF NOT analytics_internal._has_columns(items, '{id,sale_id,product_id,qty,unit_price_bs,unit_price_usd}') THEN
        RETURN '{}';
    END IF;
    UPDATE analytics_internal.source_config SET captures_items = true;
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._fold_items(target_shard int, new_sale_ids uuid[],
            changed_sale_ids uuid[], moved_sale_ids uuid[], moved_stores uuid[], moved_times timestamptz[],
            returned_item_ids uuid[]) RETURNS void
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
        -- A POS commit folds one or two sales: plan once per session, not per commit.
        SET plan_cache_mode = force_generic_plan AS %L$f$, analytics_internal._fold_items_body());
    -- `direct`: the capture copies new items for the fold in Rust (src/capture/direct.rs),
    -- which counts no returns for an item inserted by the committing transaction. True when a
    -- return can only be recorded after its item: the returns table references the items.
    triggers := analytics_internal._create_capture_triggers(items, 'items', argument =>
        CASE WHEN NOT analytics_internal._has_columns(returns, '{sale_item_id,qty,total_bs,total_usd}')
                  OR EXISTS (SELECT 1 FROM pg_constraint c
                             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = 'sale_item_id'
                             WHERE c.conrelid = returns AND c.contype = 'f' AND c.confrelid = items
                               AND c.conkey = ARRAY[a.attnum])
             THEN 'direct' END, create_triggers => create_triggers);
    IF analytics_internal._has_columns(returns, '{sale_item_id,qty,total_bs,total_usd}') THEN
        triggers := triggers || analytics_internal._create_capture_triggers(returns, 'item_returns', create_triggers => create_triggers);
    END IF;
    RETURN triggers;
END
$$;

CREATE FUNCTION analytics_internal._attach_warehouse(source_schema name, create_triggers boolean DEFAULT true) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sales constant regclass := to_regclass(format('%I.sales', source_schema));
    items constant regclass := to_regclass(format('%I.sale_items', source_schema));
    returns constant regclass := to_regclass(format('%I.sale_return_items', source_schema));
    products constant regclass := to_regclass(format('%I.products', source_schema));
    -- What a fact reads from its sale: an update that changes none of it (a return's
    -- rewrite of totals, a note) is not logged.
    sale_columns constant text := (
        SELECT string_agg(CASE c WHEN 'payment' THEN 'analytics.payment_method(%1$s.payment)' ELSE '%1$s.' || quote_ident(c) END, ', ')
        FROM unnest(ARRAY['store_id', 'sold_at', 'customer_id', 'payment', 'exchange_rate', 'voided_at', 'status']) AS c
        WHERE analytics_internal._has_columns(sales, ARRAY[c]));
    triggers text[] := '{}';
BEGIN
    PERFORM analytics_internal._set_capture_body('warehouse_sales', format($b$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO analytics_internal.warehouse_changes (sale_id) SELECT id FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO analytics_internal.warehouse_changes (sale_id) SELECT id FROM old_rows;
    ELSE
        INSERT INTO analytics_internal.warehouse_changes (sale_id)
        SELECT n.id FROM new_rows n LEFT JOIN old_rows o ON o.id = n.id
        WHERE o.id IS NULL OR (%s) IS DISTINCT FROM (%s)
        UNION ALL
        SELECT o.id FROM old_rows o WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.id = o.id);
    END IF;
    RETURN NULL;
END$b$, format(sale_columns, 'n'), format(sale_columns, 'o')));
    triggers := analytics_internal._create_capture_triggers(sales, 'warehouse_sales', create_triggers => create_triggers);

    IF analytics_internal._has_columns(items, '{id,sale_id}') THEN
        PERFORM analytics_internal._set_capture_body('warehouse_items', $b$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO analytics_internal.warehouse_changes (sale_id) SELECT DISTINCT sale_id FROM new_rows WHERE sale_id IS NOT NULL;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO analytics_internal.warehouse_changes (sale_id) SELECT DISTINCT sale_id FROM old_rows WHERE sale_id IS NOT NULL;
    ELSE
        INSERT INTO analytics_internal.warehouse_changes (sale_id)
        SELECT sale_id FROM new_rows WHERE sale_id IS NOT NULL UNION SELECT sale_id FROM old_rows WHERE sale_id IS NOT NULL;
    END IF;
    RETURN NULL;
END$b$);
        triggers := triggers || analytics_internal._create_capture_triggers(items, 'warehouse_items', create_triggers => create_triggers);
    END IF;

    IF analytics_internal._has_columns(returns, '{sale_item_id}') AND analytics_internal._has_columns(items, '{id,sale_id}') THEN
        PERFORM analytics_internal._set_capture_body('warehouse_item_returns', format($b$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO analytics_internal.warehouse_changes (sale_id)
        SELECT DISTINCT i.sale_id FROM %1$s i WHERE i.id IN (SELECT sale_item_id FROM new_rows);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO analytics_internal.warehouse_changes (sale_id)
        SELECT DISTINCT i.sale_id FROM %1$s i WHERE i.id IN (SELECT sale_item_id FROM old_rows);
    ELSE
        INSERT INTO analytics_internal.warehouse_changes (sale_id)
        SELECT DISTINCT i.sale_id FROM %1$s i
        WHERE i.id IN (SELECT sale_item_id FROM new_rows UNION SELECT sale_item_id FROM old_rows);
    END IF;
    RETURN NULL;
END$b$, items));
        triggers := triggers || analytics_internal._create_capture_triggers(returns, 'warehouse_item_returns', create_triggers => create_triggers);
    END IF;

    IF analytics_internal._has_columns(products, '{id}') THEN
        PERFORM analytics_internal._set_capture_body('warehouse_products', format($b$
BEGIN
    -- Each branch names only the transition tables its event has.
    IF TG_OP = 'INSERT' THEN
        INSERT INTO analytics_internal.warehouse_product_changes (product_id, deleted, store_id, name, category, sku)
        SELECT n.id, false, %1$s FROM new_rows n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO analytics_internal.warehouse_product_changes (product_id, deleted) SELECT o.id, true FROM old_rows o;
    ELSE
        INSERT INTO analytics_internal.warehouse_product_changes (product_id, deleted) SELECT o.id, true FROM old_rows o
        WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.id = o.id);
        INSERT INTO analytics_internal.warehouse_product_changes (product_id, deleted, store_id, name, category, sku)
        SELECT n.id, false, %1$s FROM new_rows n
        WHERE NOT EXISTS (SELECT 1 FROM old_rows o WHERE o.id = n.id AND (%2$s) IS NOT DISTINCT FROM (%1$s));
    END IF;
    RETURN NULL;
END$b$, analytics_internal._product_attributes(products, 'n'), analytics_internal._product_attributes(products, 'o')));
        triggers := triggers || analytics_internal._create_capture_triggers(products, 'warehouse_products', create_triggers => create_triggers);
    END IF;
    RETURN triggers;
END
$$;

CREATE FUNCTION analytics_internal._establish_capture(create_triggers boolean) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg analytics_internal.source_config;
    triggers text[];
BEGIN
    SELECT * INTO STRICT cfg FROM analytics_internal.source_config;
    -- First: a CREATE TRIGGER below fires the restore event trigger, which must see it done.
    INSERT INTO analytics_internal.capture_established AS e (source_schema) VALUES (cfg.source_schema_oid)
    ON CONFLICT (singleton) DO UPDATE SET source_schema = excluded.source_schema, established_at = now();
    PERFORM analytics_internal._set_fold_rows_body(analytics_internal._fold_rows_body());
    PERFORM analytics_internal._generate_readers();
    -- The triggers read the columns themselves (src/capture); validity is their argument.
    triggers := analytics_internal._create_capture_triggers(to_regclass(format('%I.sales', cfg.source_schema)), 'sales', argument =>
        CASE WHEN cfg.sales_has_status AND cfg.sales_has_voided_at THEN 'status_voided_at' WHEN cfg.sales_has_status THEN 'status'
             WHEN cfg.sales_has_voided_at THEN 'voided_at' ELSE 'all' END, create_triggers => create_triggers);
    IF cfg.stock_source IS NOT NULL THEN
        triggers := triggers || analytics_internal._create_capture_triggers(
            to_regclass(format('%I.%I', cfg.source_schema,
                               CASE cfg.stock_source WHEN 'movements' THEN 'inventory_movements' ELSE 'products' END)),
            'stock', argument => cfg.stock_source, create_triggers => create_triggers);
    END IF;
    triggers := triggers || analytics_internal._attach_items(cfg.source_schema, cfg.valid_sale, create_triggers);
    IF (SELECT w.enabled FROM analytics_internal.warehouse_state w) THEN
        triggers := triggers || analytics_internal._attach_warehouse(cfg.source_schema, create_triggers);
    END IF;
    RETURN triggers || analytics_internal._create_replica_triggers(cfg.source_schema, create_triggers);
END
$$;

CREATE FUNCTION analytics_internal._on_trigger_created() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    created record;
    restored boolean := false;
    stray name;
BEGIN
    FOR created IN
        SELECT t.tgrelid::regclass AS rel, t.tgname,
               EXISTS (SELECT 1 FROM analytics_internal._expected_capture_triggers() e
                       WHERE e.rel = t.tgrelid AND e.trigger_name = t.tgname) AS expected
        FROM pg_event_trigger_ddl_commands() AS c
        JOIN pg_trigger t ON c.classid = 'pg_trigger'::regclass AND t.oid = c.objid
        WHERE NOT t.tgisinternal AND starts_with(t.tgname, 'lacaja_analytics_')
          AND EXISTS (SELECT 1 FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'lacaja_analytics'
                      WHERE d.classid = 'pg_proc'::regclass AND d.objid = t.tgfoid AND d.deptype = 'e'
                        AND d.refclassid = 'pg_extension'::regclass)
    LOOP
        IF created.expected THEN
            PERFORM analytics_internal._bind_trigger(created.rel, created.tgname);
            restored := true;
        ELSE
            stray := created.tgname;
        END IF;
    END LOOP;
    IF stray IS NOT NULL AND NOT EXISTS (SELECT 1 FROM analytics_internal.source_config) THEN
        -- A dump without the extension's state (made by 0.1.0, or with --exclude-table-data).
        RAISE WARNING 'lacaja_analytics: capture trigger % restored, but the dump did not hold what was attached', stray
            USING HINT = 'After the restore: SELECT analytics.attach(''public''); SELECT analytics.refresh_all();';
    END IF;
    IF NOT restored OR EXISTS (SELECT 1 FROM analytics_internal.capture_established) THEN
        RETURN;
    END IF;
    -- pg_restore --jobs creates triggers of several tables at once: one rebuild.
    PERFORM pg_advisory_xact_lock(1279345482, 4);
    IF NOT EXISTS (SELECT 1 FROM analytics_internal.capture_established) THEN
        PERFORM analytics_internal._establish_capture(create_triggers => false);
        RAISE NOTICE 'lacaja_analytics: capture of schema % re-established in this restored database',
            (SELECT c.source_schema FROM analytics_internal.source_config c);
    END IF;
END
$$;

CREATE FUNCTION analytics_internal._note_replica_write() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source constant text := TG_ARGV[0];
    warehouse constant boolean := coalesce((SELECT w.enabled FROM analytics_internal.warehouse_state w), false);
    r jsonb;
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN  -- TRUNCATE
        INSERT INTO analytics_internal.replica_writes (source) VALUES ('truncate') ON CONFLICT DO NOTHING;
        UPDATE analytics_internal.warehouse_state SET full_load_pending = true WHERE enabled;
        RETURN NULL;
    END IF;
    FOR r IN SELECT x FROM unnest(ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
                                        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END]) AS x WHERE x IS NOT NULL LOOP
        INSERT INTO analytics_internal.replica_writes (source, store_id, utc_day, sale_id, item_id)
        VALUES (source,
                CASE WHEN source IN ('sales', 'stock') THEN (r ->> 'store_id')::uuid END,
                CASE WHEN source = 'sales' THEN ((r ->> 'sold_at')::timestamptz AT TIME ZONE 'UTC')::date END,
                CASE WHEN source = 'items' THEN (r ->> 'sale_id')::uuid END,
                CASE WHEN source = 'item_returns' THEN (r ->> 'sale_item_id')::uuid END)
        ON CONFLICT DO NOTHING;
        -- The warehouse reloads a changed sale from the source: logging it twice is harmless.
        IF warehouse AND source IN ('sales', 'items') THEN
            INSERT INTO analytics_internal.warehouse_changes (sale_id)
            VALUES ((r ->> CASE source WHEN 'sales' THEN 'id' ELSE 'sale_id' END)::uuid);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

CREATE FUNCTION analytics_internal._create_replica_triggers(source_schema name, create_triggers boolean) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    name name;
    made text[] := '{}';
    only_in_replica constant text := $w$WHEN (pg_catalog.current_setting('session_replication_role') = 'replica')$w$;
BEGIN
    FOR t IN
        SELECT e.rel, e.source FROM (
            SELECT DISTINCT x.rel, substring(x.trigger_name FROM '^lacaja_analytics_(.*)_insert$') AS source
            FROM analytics_internal._expected_capture_triggers() x) AS e
        WHERE e.source IS NOT NULL AND NOT starts_with(e.source, 'warehouse_')
        ORDER BY e.source
    LOOP
        IF create_triggers THEN
            EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW %s
                            EXECUTE FUNCTION analytics_internal._note_replica_write(%L)',
                           format('lacaja_analytics_%s_replica', t.source), t.rel, only_in_replica, t.source);
            EXECUTE format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT %s
                            EXECUTE FUNCTION analytics_internal._note_replica_write(%L)',
                           format('lacaja_analytics_%s_replica_truncate', t.source), t.rel, only_in_replica, t.source);
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, format('lacaja_analytics_%s_replica', t.source));
            EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', t.rel, format('lacaja_analytics_%s_replica_truncate', t.source));
        END IF;
        FOR name IN SELECT tg.tgname FROM pg_trigger tg
                    WHERE tg.tgrelid = t.rel AND tg.tgname IN (format('lacaja_analytics_%s_replica', t.source),
                                                               format('lacaja_analytics_%s_replica_truncate', t.source))
                    ORDER BY 1 LOOP
            PERFORM analytics_internal._bind_trigger(t.rel, name);
            made := made || name::text;
        END LOOP;
    END LOOP;
    RETURN made;
END
$$;

CREATE FUNCTION analytics_internal._repair_replica_writes() RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg analytics_internal.source_config;
    noted bigint;
    everything boolean;
    runs jsonb;
    run jsonb;
    repairs jsonb := '[]';
BEGIN
    SELECT * INTO cfg FROM analytics_internal.source_config;
    IF NOT FOUND OR NOT EXISTS (SELECT 1 FROM analytics_internal.replica_writes) THEN
        RETURN NULL;
    END IF;
    -- What this snapshot sees is repaired below and deleted with it; later notes stay.
    EXECUTE format($q$
        WITH taken AS MATERIALIZED (DELETE FROM analytics_internal.replica_writes RETURNING *),
        placed AS (
            SELECT t.store_id, t.utc_day FROM taken t WHERE t.store_id IS NOT NULL
            UNION
            SELECT s.store_id, (s.sold_at AT TIME ZONE 'UTC')::date FROM taken t JOIN %1$s s ON s.id = t.sale_id
            UNION
            SELECT f.store_id, (f.sold_at AT TIME ZONE 'UTC')::date FROM taken t JOIN analytics_internal.item_facts f ON f.sale_id = t.sale_id
            UNION
            SELECT s.store_id, (s.sold_at AT TIME ZONE 'UTC')::date
            FROM taken t JOIN %2$s i ON i.id = t.item_id JOIN %1$s s ON s.id = i.sale_id
            UNION
            SELECT f.store_id, (f.sold_at AT TIME ZONE 'UTC')::date FROM taken t JOIN analytics_internal.item_facts f ON f.sale_item_id = t.item_id),
        -- Days of a store less than four apart make one run.
        numbered AS (
            SELECT p.store_id, p.utc_day,
                   count(*) FILTER (WHERE p.utc_day - p.previous > 3) OVER (PARTITION BY p.store_id ORDER BY p.utc_day) AS run
            FROM (SELECT store_id, utc_day, lag(utc_day) OVER (PARTITION BY store_id ORDER BY utc_day) AS previous
                  FROM placed WHERE utc_day IS NOT NULL) AS p)
        SELECT (SELECT count(*) FROM taken),
               (SELECT bool_or(t.source = 'truncate') FROM taken t),
               (SELECT coalesce(jsonb_agg(jsonb_build_object('store_id', r.store_id, 'from_day', r.from_day, 'to_day', r.to_day)
                                          ORDER BY r.store_id, r.from_day), '[]')
                FROM (SELECT store_id, min(utc_day) - 1 AS from_day, max(utc_day) + 2 AS to_day FROM numbered GROUP BY store_id, run
                      UNION ALL
                      -- stock has no day: any window repairs the store's stock
                      SELECT store_id, current_date, current_date + 1 FROM placed p
                      WHERE p.utc_day IS NULL AND NOT EXISTS (SELECT 1 FROM placed q WHERE q.store_id = p.store_id AND q.utc_day IS NOT NULL)) AS r)
        $q$, to_regclass(format('%I.sales', cfg.source_schema)),
             coalesce(to_regclass(format('%I.sale_items', cfg.source_schema))::text, '(SELECT NULL::uuid AS id, NULL::uuid AS sale_id)'))
      INTO noted, everything, runs;
    IF everything THEN
        RETURN jsonb_build_object('noted', noted, 'repairs', jsonb_build_array(analytics_internal._repair(NULL)));
    END IF;
    FOR run IN SELECT * FROM jsonb_array_elements(runs) LOOP
        repairs := repairs || analytics_internal._repair((run ->> 'store_id')::uuid, (run ->> 'from_day')::date, (run ->> 'to_day')::date);
    END LOOP;
    RETURN jsonb_build_object('noted', noted, 'repairs', repairs);
END
$$;

CREATE OR REPLACE FUNCTION analytics.attach(source_schema name DEFAULT 'public') RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    sales regclass := to_regclass(format('%I.sales', source_schema));
    has_status bool;
    has_voided_at bool;
    missing text[];
    valid_sale text;
    optional_tables text[];
    found_tables text[];
    stock_source text;
    triggers text[];
    problems text;
    -- Re-attaching in one transaction misses no change: the warehouse needs no reload then.
    warehouse_reload constant boolean := (SELECT w.full_load_pending FROM analytics_internal.warehouse_state w)
        OR (SELECT c.source_schema FROM analytics_internal.source_config c) IS DISTINCT FROM source_schema;
BEGIN
    IF sales IS NULL THEN
        RAISE EXCEPTION 'no table "sales" in schema "%"', source_schema
            USING HINT = 'Pass the schema holding LA-CAJA''s tables: SELECT analytics.attach(''public'').';
    END IF;

    SELECT array_agg(need ORDER BY need) INTO missing
    FROM unnest(ARRAY['id', 'store_id', 'sold_at', 'totals', 'payment', 'customer_id']) AS need
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                      WHERE a.attrelid = sales AND a.attname = need AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION '% lacks columns LA-CAJA''s sales always have: %', sales, array_to_string(missing, ', ')
            USING HINT = 'See SPEC §1 for the columns analytics needs.';
    END IF;

    SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = sales AND attname = 'status' AND NOT attisdropped),
           EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = sales AND attname = 'voided_at' AND NOT attisdropped)
      INTO has_status, has_voided_at;
    valid_sale := CASE
        WHEN has_status AND has_voided_at THEN $v$r.status = 'completed' AND r.voided_at IS NULL$v$
        WHEN has_status THEN $v$r.status = 'completed'$v$
        WHEN has_voided_at THEN 'r.voided_at IS NULL'
        ELSE 'true' END;

    -- Stock: products.current_stock when the table has it (simplified variant), else the
    -- sum of inventory_movements.
    stock_source := CASE
        WHEN EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(format('%I.products', source_schema))
                                                  AND attname = 'current_stock' AND NOT attisdropped)
             AND analytics_internal._has_columns(to_regclass(format('%I.products', source_schema)), '{id,store_id}')
            THEN 'current_stock'
        WHEN analytics_internal._has_columns(to_regclass(format('%I.inventory_movements', source_schema)),
                                    '{store_id,product_id,qty_delta}')
            THEN 'movements' END;

    -- What the owner's code will read must be tables of built-in column types, and stay so.
    problems := analytics_internal._source_table_problems(source_schema);
    IF problems IS NOT NULL THEN
        RAISE EXCEPTION 'cannot attach to schema %: %', source_schema, problems
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'lacaja_analytics reads these as tables with columns of built-in types (anything else would run its code with the extension''s rights).';
    END IF;

    PERFORM analytics_internal._lock_capture_tables(source_schema);
    PERFORM analytics.detach();
    INSERT INTO analytics_internal.source_config (source_schema, source_schema_oid, variant, sales_has_status, sales_has_voided_at,
                                                  valid_sale, stock_source)
    VALUES (source_schema, to_regnamespace(quote_ident(source_schema)), CASE WHEN has_status THEN 'simplified' ELSE 'real' END,
            has_status, has_voided_at, valid_sale, stock_source);

    UPDATE analytics_internal.warehouse_state SET full_load_pending = warehouse_reload WHERE enabled;
    triggers := analytics_internal._establish_capture(create_triggers => true);

    optional_tables := ARRAY['stores', 'products', 'sale_items', 'sale_returns', 'sale_return_items',
                             'inventory_movements', 'events', 'sales_heatmap', 'real_time_metrics'];
    SELECT array_agg(o ORDER BY o) FILTER (WHERE to_regclass(format('%I.%I', source_schema, o)) IS NOT NULL)
      INTO found_tables FROM unnest(optional_tables) AS o;

    RETURN jsonb_build_object(
        'attached', true,
        'source_schema', source_schema,
        'sales', sales::text,
        'variant', CASE WHEN has_status THEN 'simplified' ELSE 'real' END,
        'valid_sale', valid_sale,
        'stock', coalesce(stock_source, 'not captured: no inventory_movements or products.current_stock'),
        'products', CASE WHEN (SELECT captures_items FROM analytics_internal.source_config) THEN 'sale_items'
                         ELSE 'not captured: no sale_items with id, sale_id, product_id, qty, unit_price_bs, unit_price_usd' END,
        'triggers', to_jsonb(triggers),
        'tables_found', coalesce(to_jsonb(found_tables), '[]'),
        'tables_missing', coalesce((SELECT jsonb_agg(o ORDER BY o) FROM unnest(optional_tables) o
                                    WHERE o <> ALL (coalesce(found_tables, '{}'))), '[]'),
        'warnings', to_jsonb(analytics_internal._unindexed_lookups(source_schema)),
        'next_step', 'SELECT analytics.refresh_all();  -- backfills the rollups from history');
END
$$;

CREATE OR REPLACE FUNCTION analytics.detach() RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dropped text[];
BEGIN
    PERFORM analytics_internal._lock_capture_tables(NULL);
    dropped := analytics_internal._drop_capture_triggers('lacaja_analytics_');
    DELETE FROM analytics_internal.source_config;
    DELETE FROM analytics_internal.capture_established;
    PERFORM analytics_internal._set_fold_rows_body('BEGIN RETURN; END');
    PERFORM analytics_internal._generate_readers();
    PERFORM analytics_internal._detach_items();
    PERFORM analytics_internal._warehouse_detached();
    RETURN jsonb_build_object('detached', true, 'dropped_triggers', to_jsonb(dropped));
END
$$;

CREATE OR REPLACE FUNCTION analytics.enable_warehouse(schedule_interval interval DEFAULT interval '15 minutes') RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg analytics_internal.source_config;
    triggers text[];
    job int;
BEGIN
    SELECT * INTO cfg FROM analytics_internal.source_config;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lacaja_analytics is not attached to LA-CAJA''s tables'
            USING HINT = 'SELECT analytics.attach(''public'');  -- then enable the warehouse';
    END IF;
    PERFORM analytics_internal._detach_warehouse();
    triggers := analytics_internal._attach_warehouse(cfg.source_schema);
    INSERT INTO analytics_internal.warehouse_state AS w (enabled, enabled_at) VALUES (true, now())
    ON CONFLICT (singleton) DO UPDATE SET enabled = true, enabled_at = coalesce(CASE WHEN w.enabled THEN w.enabled_at END, now());
    SELECT j.job_id INTO job FROM analytics.jobs j WHERE j.proc = 'analytics_internal.policy_etl_load_sales'::regproc;
    IF job IS NULL AND schedule_interval IS NOT NULL THEN
        job := analytics.add_job('analytics_internal.policy_etl_load_sales'::regproc, schedule_interval);
        PERFORM analytics_internal._label_job(job, format('Warehouse ETL [%s]', job), NULL);
    ELSIF job IS NOT NULL AND schedule_interval IS NOT NULL THEN
        PERFORM analytics.alter_job(job, schedule_interval => schedule_interval);
    END IF;
    RETURN jsonb_build_object(
        'enabled', true,
        'triggers', to_jsonb(triggers),
        'job_id', job,
        'full_load_pending', (SELECT full_load_pending FROM analytics_internal.warehouse_state),
        'next_step', CASE WHEN (SELECT full_load_pending FROM analytics_internal.warehouse_state)
                          THEN 'SELECT analytics.etl_load_sales();  -- loads all history once (or wait for the job)' END);
END
$$;

CREATE OR REPLACE FUNCTION analytics.etl_load_sales(full_reload boolean DEFAULT false) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET jit = off SET random_page_cost = 1.1 AS $$
DECLARE
    started constant timestamptz := clock_timestamp();
    state analytics_internal.warehouse_state;
    cfg analytics_internal.source_config;
    everything boolean;
    changes bigint;
    sale_ids uuid[];
    products record;
    rezoned uuid[];
    facts record;
    repointed bigint := 0;
    customers bigint;
    result jsonb;
BEGIN
    SELECT * INTO state FROM analytics_internal.warehouse_state FOR UPDATE;
    IF NOT coalesce(state.enabled, false) THEN
        RAISE EXCEPTION 'the warehouse is not enabled'
            USING HINT = 'SELECT analytics.enable_warehouse();  -- captures changes from then on; the first etl_load_sales() loads all history';
    END IF;
    SELECT * INTO cfg FROM analytics_internal.source_config;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lacaja_analytics is detached from LA-CAJA''s tables: nothing to load from'
            USING HINT = 'SELECT analytics.attach(''public'');  -- the next run then reloads the warehouse';
    END IF;
    everything := full_reload OR state.full_load_pending;

    -- What this snapshot sees of the log is loaded below; later changes stay for the next run.
    WITH consumed AS (DELETE FROM analytics_internal.warehouse_changes RETURNING sale_id)
    SELECT count(*), array_agg(DISTINCT sale_id) INTO changes, sale_ids FROM consumed;
    sale_ids := coalesce(sale_ids, '{}');

    products := analytics_internal._etl_products(cfg.source_schema);
    rezoned := analytics_internal._etl_stores(cfg.source_schema);
    IF cardinality(rezoned) > 0 AND NOT everything THEN
        EXECUTE format('SELECT array_agg(DISTINCT id) FROM (SELECT unnest($1) AS id UNION SELECT id FROM %I.sales WHERE store_id = ANY($2)) AS s',
                       cfg.source_schema)
           INTO sale_ids USING sale_ids, rezoned;
    END IF;

    facts := analytics_internal._etl_facts(CASE WHEN everything THEN NULL ELSE sale_ids END);
    IF NOT everything THEN
        repointed := analytics_internal._etl_repoint(products.touched);
    END IF;
    customers := analytics_internal._etl_customers(cfg.source_schema, CASE WHEN everything THEN NULL ELSE sale_ids END);

    UPDATE analytics_internal.warehouse_state SET full_load_pending = false, last_run_at = now();
    result := jsonb_build_object(
        'mode', CASE WHEN everything THEN 'full' ELSE 'incremental' END,
        'changes', changes,
        'sales', CASE WHEN everything THEN NULL ELSE cardinality(sale_ids) END,
        'facts_inserted', facts.inserted, 'facts_updated', facts.updated, 'facts_deleted', facts.deleted,
        'facts_repointed', repointed,
        'product_versions_opened', products.versions_opened, 'product_versions_closed', products.versions_closed,
        'stores_rezoned', cardinality(rezoned),
        'customers_written', customers,
        'duration_ms', round(extract(epoch FROM clock_timestamp() - started)::numeric * 1000, 1));
    INSERT INTO analytics.etl_runs (started_at, finished_at, result) VALUES (started, clock_timestamp(), result);
    RETURN result;
END
$$;

CREATE OR REPLACE FUNCTION analytics.health()
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

CREATE OR REPLACE FUNCTION analytics_internal._conversion_swap(c analytics.hypertable_conversions) RETURNS analytics.hypertable_conversions
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names record := analytics_internal._conversion_names(c);
    rel record;
    statements text[];
    views text[];
    fk_constraints oid[];
    replaced text[] := '{}';
    stmt text;
    locked_at timestamptz;
    h analytics.hypertables;
    job int;
    ix record;
BEGIN
    locked_at := clock_timestamp();
    IF c.online THEN
        PERFORM analytics_internal._lock_tables(analytics_internal._conversion_lock_set(c.relation), 'ACCESS EXCLUSIVE');
        locked_at := clock_timestamp();
        c := analytics_internal._conversion_apply_log(c, NULL);
    END IF;
    SELECT cl.relowner, cl.relrowsecurity, cl.relforcerowsecurity, cl.relacl INTO rel FROM pg_class cl WHERE cl.oid = c.relation;
    SELECT * INTO h FROM analytics.hypertables WHERE hypertable_id = c.hypertable_id;

    -- Written while the names still mean the old table; run once the new one has its name.
    statements := ARRAY(
        SELECT s FROM pg_trigger t
        CROSS JOIN LATERAL unnest(ARRAY[pg_get_triggerdef(t.oid),
            -- a trigger's firing mode (the capture's replica triggers are ENABLE ALWAYS)
            CASE WHEN t.tgenabled <> 'O' THEN
                format('ALTER TABLE %s %s TRIGGER %I', names.old_table,
                       CASE t.tgenabled WHEN 'A' THEN 'ENABLE ALWAYS' WHEN 'R' THEN 'ENABLE REPLICA' ELSE 'DISABLE' END, t.tgname) END])
            WITH ORDINALITY AS x (s, n)
        WHERE t.tgrelid = c.relation AND NOT t.tgisinternal AND t.tgname NOT LIKE 'lacaja\_conversion\_log\_%' AND s IS NOT NULL
        ORDER BY t.tgname, n);
    statements := statements || ARRAY(
        SELECT format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname, names.old_table,
                      CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                      CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                      (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END, ', ') FROM unnest(p.polroles) r),
                      ' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')',
                      ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')')
        FROM pg_policy p WHERE p.polrelid = c.relation ORDER BY p.polname);
    IF rel.relrowsecurity THEN
        statements := statements || format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', names.old_table);
    END IF;
    IF rel.relforcerowsecurity THEN
        statements := statements || format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', names.old_table);
    END IF;
    statements := statements || format('ALTER TABLE %s OWNER TO %I', names.old_table, pg_get_userbyid(rel.relowner));
    statements := statements || ARRAY(
        SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, names.old_table,
                      CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                      CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
        FROM aclexplode(rel.relacl) a WHERE a.grantee <> rel.relowner);
    IF obj_description(c.relation, 'pg_class') IS NOT NULL THEN
        statements := statements || format('COMMENT ON TABLE %s IS %L', names.old_table, obj_description(c.relation, 'pg_class'));
    END IF;
    -- Views over the table follow it to the new one (same definition, grants and owner kept).
    views := ARRAY(
        SELECT format('CREATE OR REPLACE VIEW %I.%I%s AS %s', n.nspname, v.relname,
                      ' WITH (' || array_to_string(v.reloptions, ', ') || ')', pg_get_viewdef(v.oid))
        FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace n ON n.oid = v.relnamespace
        WHERE d.refobjid = c.relation AND v.oid <> c.relation AND v.relkind = 'v'
        GROUP BY v.oid, n.nspname ORDER BY v.oid);
    fk_constraints := ARRAY(SELECT k.oid FROM pg_constraint k WHERE k.confrelid = c.relation AND k.contype = 'f'
                            AND k.conrelid <> c.relation);

    EXECUTE format('ALTER TABLE %s RENAME TO %I', names.old_table, names.retired);
    EXECUTE format('ALTER TABLE %s RENAME TO %I', names.staging, c.table_name);
    FOREACH stmt IN ARRAY views LOOP
        EXECUTE stmt;
    END LOOP;
    -- serial columns keep their sequence (it would go with the old table); identity columns
    -- continue where the old table's sequence was
    PERFORM analytics_internal._exec(format('ALTER SEQUENCE %s OWNED BY %s.%I', s.oid::regclass, names.old_table, a.attname))
    FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    JOIN pg_attribute a ON a.attrelid = c.relation AND a.attnum = d.refobjsubid
    WHERE d.refobjid = c.relation AND d.classid = 'pg_class'::regclass AND d.deptype = 'a';
    PERFORM setval(pg_get_serial_sequence(names.old_table, a.attname),
                   (SELECT s.last_value FROM pg_sequences s
                    WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass
                          = pg_get_serial_sequence(format('%I.%I', c.schema_name, names.retired), a.attname)::regclass))
    FROM pg_attribute a WHERE a.attrelid = c.relation AND a.attidentity <> '' AND NOT a.attisdropped;
    FOREACH stmt IN ARRAY ARRAY(SELECT k::text FROM unnest(fk_constraints) k) LOOP
        replaced := replaced || analytics_internal._replace_foreign_key(stmt::oid, names.old_table);
    END LOOP;
    EXECUTE format('DROP TABLE %I.%I', c.schema_name, names.retired);
    IF c.online THEN
        EXECUTE format('DROP TABLE %s', names.log_table);
    END IF;
    -- index-backed names, free now
    FOR ix IN SELECT k.conname FROM pg_constraint k WHERE k.conrelid = h.relation AND k.contype IN ('p', 'u')
                AND k.conname LIKE '%\_lacaja\_' || c.conversion_id LOOP
        EXECUTE format('ALTER TABLE %s RENAME CONSTRAINT %I TO %I', names.old_table, ix.conname,
                       regexp_replace(ix.conname, '_lacaja_' || c.conversion_id || '$', ''));
    END LOOP;
    FOR ix IN SELECT i.indexrelid::regclass AS idx, ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = h.relation AND ic.relname LIKE '%\_lacaja\_' || c.conversion_id LOOP
        EXECUTE format('ALTER INDEX %s RENAME TO %I', ix.idx, regexp_replace(ix.relname, '_lacaja_' || c.conversion_id || '$', ''));
    END LOOP;
    FOREACH stmt IN ARRAY statements LOOP
        EXECUTE stmt;
    END LOOP;
    PERFORM analytics_internal._bind_trigger_to_extension(h.relation::oid, t.tgname)
    FROM pg_trigger t WHERE t.tgrelid = h.relation AND t.tgname LIKE 'lacaja\_analytics\_%';
    job := analytics.add_job('analytics_internal.policy_chunk_maintenance'::regproc,
                             least(analytics_internal._fixed_interval(h.chunk_interval), interval '1 hour'),
                             jsonb_build_object('hypertable_id', h.hypertable_id));
    PERFORM analytics_internal._label_job(job, format('Chunk Maintenance [%s]', job), h.relation);
    IF c.online THEN
        c.longest_lock_ms := greatest(c.longest_lock_ms, round(extract(epoch FROM clock_timestamp() - locked_at) * 1000, 1));
    END IF;
    c.status := 'done';
    c.finished_at := clock_timestamp();
    IF replaced <> '{}' THEN
        RAISE NOTICE 'foreign keys now enforced by triggers: %', array_to_string(replaced, ', ');
    END IF;
    RETURN c;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._drop_capture_triggers(prefix text) RETURNS text[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t record;
    dropped text[] := '{}';
BEGIN
    FOR t IN
        SELECT tg.tgname, tg.tgrelid::regclass AS rel
        FROM pg_trigger tg
        -- a partition's clone of a row trigger goes with the partitioned table's
        WHERE starts_with(tg.tgname, prefix) AND NOT tg.tgisinternal AND tg.tgparentid = 0
        ORDER BY 2, 1
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
        dropped := dropped || format('%s.%s', t.rel, t.tgname);
    END LOOP;
    RETURN dropped;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._expected_capture_triggers()
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


CREATE OR REPLACE FUNCTION analytics_internal._repair(store_id uuid, from_day date DEFAULT NULL, to_day date DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    measured record;
    ctes text[];
    counts text[] := '{}';
    c analytics_internal.rollup_catalog;
    corrected jsonb;
    items_fixed bigint;
    started timestamptz := clock_timestamp();
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'analytics refresh must run at READ COMMITTED, not %', current_setting('transaction_isolation')
            USING HINT = 'Run it in its own transaction; it never blocks sales.';
    END IF;
    -- Repairs add corrections to shard 0; two at once would both add the same correction.
    -- Taken before the repair statement so that its snapshot sees the previous repair.
    PERFORM pg_advisory_xact_lock(1279345482, 1);
    IF store_id IS NULL AND from_day IS NULL AND to_day IS NULL THEN
        -- Everything is compared: writes noted with triggers off (restore.sql) are covered.
        DELETE FROM analytics_internal.replica_writes;
    END IF;
    -- Item facts first (they lock the sales they fix); the rollups are then sums of facts.
    items_fixed := analytics_internal._repair_item_facts(store_id, from_day, to_day);
    measured := analytics_internal._measured_ctes(store_id, from_day, to_day);
    ctes := measured.ctes;
    FOREACH c IN ARRAY measured.rollups LOOP
        ctes := ctes || format('fix_%s AS (%s RETURNING 1)', c.position,
            analytics_internal._add_to_parts_sql(c, analytics_internal._difference_sql(c, 'measured_' || c.source,
                                                                     analytics_internal._parts_filter(c, store_id, from_day, to_day)), '0', false));
        counts := counts || format('%L, (SELECT count(*) FROM fix_%s)', c.name, c.position);
    END LOOP;
    counts := counts || $q$'valid_sales', (SELECT count(*) FROM measured_sales)$q$::text;
    -- One statement: the sources and every rollup are read in the same snapshot.
    EXECUTE format('WITH %s SELECT jsonb_build_object(%s)', array_to_string(ctes, ', '), array_to_string(counts, ', '))
      INTO corrected;
    corrected := jsonb_build_object(
        'store_id', store_id,
        'keys_corrected', corrected - 'valid_sales',
        'valid_sales', corrected -> 'valid_sales',
        'sales_with_item_facts_rebuilt', items_fixed,
        'duration_ms', round(extract(epoch FROM clock_timestamp() - started) * 1000, 1));
    PERFORM analytics_internal._log_repair(store_id, from_day, to_day, corrected);  -- for analytics.health()
    RETURN corrected;
END
$$;

CREATE OR REPLACE PROCEDURE analytics_internal.policy_refresh_continuous_aggregate(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    w record := analytics_internal._policy_window(config);
    result jsonb;
    noted jsonb;
BEGIN
    -- First what was written with triggers off, wherever it is (restore.sql).
    noted := analytics_internal._repair_replica_writes();
    IF noted IS NOT NULL THEN
        RAISE LOG 'lacaja_analytics job %: writes made with triggers off repaired: %', job_id, noted;
    END IF;
    result := analytics_internal._repair(NULL, w.from_day, w.to_day);
    RAISE LOG 'lacaja_analytics job %: % over [%, %): %', job_id, config ->> 'continuous_aggregate', w.from_day, w.to_day, result;
END
$$;

CREATE FUNCTION analytics_internal._interrupted_conversions() RETURNS SETOF analytics.hypertable_conversions
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.* FROM analytics.hypertable_conversions c
    WHERE c.online AND c.status NOT IN ('done', 'failed')
      AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a
                      WHERE a.pid = c.worker_pid AND a.backend_type = 'lacaja_analytics hypertable conversion'
                        AND a.backend_start <= c.started_at)
$$;

CREATE FUNCTION analytics_internal._recover_interrupted_conversions() RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id int;
    undone int := 0;
BEGIN
    FOR id IN SELECT c.conversion_id FROM analytics_internal._interrupted_conversions() c ORDER BY 1 LOOP
        PERFORM analytics_internal._conversion_abandon(id, '57P01',
            'interrupted: the server stopped during the conversion (killed, crashed or restarted); it was undone, the table is as it was; run create_hypertable again');
        undone := undone + 1;
    END LOOP;
    RETURN undone;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._recover_crashed_runs() RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    crashed int;
    id int;
BEGIN
    crashed := 0;
    FOR id IN
        SELECT s.job_id FROM analytics_internal.job_run_state s
        WHERE s.running_pid IS NOT NULL
          -- this backend runs one job at a time: a run still marked as its own is over
          AND (s.running_pid = pg_backend_pid()
               OR NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.running_pid))
    LOOP
        PERFORM analytics_internal._record_job_run(id, 'crash', 'the job''s process ended without finishing it (killed, or the server restarted)');
        crashed := crashed + 1;
    END LOOP;
    -- The same for an online create_hypertable whose worker died (sql/timeseries.sql); it may
    -- wait for the table's locks by short tries, and never fails the jobs that follow.
    BEGIN
        PERFORM analytics_internal._recover_interrupted_conversions();
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'lacaja_analytics: an interrupted conversion could not be undone yet: %', SQLERRM;
    END;
    RETURN crashed;
END
$$;

-- Names in generated comments (rollups.sql)
CREATE FUNCTION analytics_internal._in_comment(name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT translate(name, E'\n\r', '  ')
$$;

-- Replaced foreign keys probe a registry of the parent's key (timeseries.sql) -------------
-- Keys replaced before this version keep the generic check; conversions from now on keep the
-- referenced key in a registry and generate each key's check.

ALTER TABLE analytics_internal.replaced_foreign_keys ADD COLUMN check_function regprocedure;

CREATE FUNCTION analytics_internal._fk_require_parent(fired_on oid, args text[], table_name name, row_value anyelement)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k constant analytics_internal.replaced_foreign_keys := analytics_internal._replaced_foreign_key(fired_on, 'child', args);
    found_rows int;
    has_null boolean;
BEGIN
    EXECUTE format('SELECT %s', (SELECT string_agg(format('($1).%I IS NULL', c), ' OR ') FROM unnest(k.child_columns) c))
       INTO has_null USING row_value;
    IF has_null THEN
        RETURN;  -- MATCH SIMPLE: a key with a NULL references nothing
    END IF;
    -- As the parent's owner, as Postgres checks a foreign key (never with the extension's rights).
    found_rows := analytics_internal._execute_as(
        (SELECT c.relowner FROM pg_class c WHERE c.oid = k.parent),
        format('SELECT 1 FROM %s AS p WHERE %s LIMIT 1 FOR KEY SHARE OF p', k.parent,
               analytics_internal._key_matches('p', k.parent, k.parent_columns, '$1', k.child_columns)),
        analytics_internal._key_values(row_value, k.child_columns), NULL);
    IF found_rows = 0 THEN
        RAISE EXCEPTION 'insert or update on table "%" violates foreign key constraint "%"', table_name, k.constraint_name
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (%s) is not present in table %s.', array_to_string(k.child_columns, ', '), k.parent);
    END IF;
END
$$;

CREATE FUNCTION analytics_internal._fk_check_function_sql(constraint_name name, registry regclass, parent regclass,
                                                          time_column name, child_columns name[], parent_columns name[])
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format($f$
DECLARE
    parent_time %7$s;
BEGIN
    -- generated by create_hypertable(replace_foreign_keys => true) for foreign key %1$s
    IF %2$s THEN
        RETURN NULL;  -- MATCH SIMPLE: a key with a NULL references nothing
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF (%3$s) IS NOT DISTINCT FROM (%4$s) THEN
            RETURN NULL;  -- the key did not change
        END IF;
    END IF;
    SELECT k.%8$I INTO parent_time FROM %5$s AS k WHERE %6$s;
    IF FOUND THEN
        PERFORM 1 FROM %9$s AS p WHERE %10$s AND p.%8$I OPERATOR(pg_catalog.=) parent_time FOR KEY SHARE OF p;
    END IF;
    IF NOT FOUND THEN
        -- Not among the keys, gone meanwhile, or a parent key changed by the statement whose
        -- cascade fired this check (the registry follows at that statement's end): the parent
        -- table decides.
        PERFORM analytics_internal._fk_require_parent(TG_RELID, TG_ARGV, TG_TABLE_NAME, NEW);
    END IF;
    RETURN NULL;
END$f$,
        analytics_internal._in_comment(quote_ident(constraint_name)),
        (SELECT string_agg(format('NEW.%I IS NULL', c), ' OR ') FROM unnest(child_columns) c),
        (SELECT string_agg(format('NEW.%I', c), ', ') FROM unnest(child_columns) c),
        (SELECT string_agg(format('OLD.%I', c), ', ') FROM unnest(child_columns) c),
        registry,
        (SELECT string_agg(format('k.%I OPERATOR(pg_catalog.=) NEW.%I', pc, cc), ' AND ')
         FROM unnest(parent_columns, child_columns) AS m (pc, cc)),
        analytics_internal._column_type(registry, time_column),
        time_column,
        parent,
        (SELECT string_agg(format('p.%I OPERATOR(pg_catalog.=) NEW.%I', pc, cc), ' AND ')
         FROM unnest(parent_columns, child_columns) AS m (pc, cc)))
$$;

CREATE FUNCTION analytics_internal._key_registry(parent regclass, parent_columns name[]) RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT r.registry FROM analytics_internal.replaced_unique_indexes r
    JOIN analytics.hypertables h ON h.relation = r.hypertable
    WHERE r.hypertable = parent AND r.key_columns = parent_columns
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = r.registry AND a.attname = h.time_column AND NOT a.attisdropped)
    LIMIT 1
$$;

DROP FUNCTION analytics_internal._unique_registry_trigger_sql(regclass, name, name[]);
DROP FUNCTION analytics_internal._create_unique_registry(regclass, int, oid, name);
CREATE FUNCTION analytics_internal._unique_registry_trigger_sql(registry regclass, index_name name, key_columns name[],
                                                               stored_columns name[])
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT format($f$
DECLARE
    detail text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE %1$s;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM %1$s AS k USING old_rows AS o WHERE %2$s;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO %1$s (%3$s) SELECT %4$s FROM new_rows AS n WHERE %5$s;
    ELSE
        -- Only keys that changed (a void leaves the numbers alone and writes nothing here);
        -- counted, so that two rows given one number in one statement still collide.
        DELETE FROM %1$s AS k USING (SELECT %3$s FROM old_rows EXCEPT ALL SELECT %3$s FROM new_rows) AS o WHERE %2$s;
        INSERT INTO %1$s (%3$s) SELECT %4$s FROM (SELECT %3$s FROM new_rows EXCEPT ALL SELECT %3$s FROM old_rows) AS n WHERE %5$s;
    END IF;
    RETURN NULL;
EXCEPTION WHEN unique_violation THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RAISE EXCEPTION 'duplicate key value violates unique constraint %6$s', %7$L USING ERRCODE = 'unique_violation',
        CONSTRAINT = %7$L, DETAIL = detail, TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END$f$,
        registry,
        analytics_internal._keys_equal(key_columns, 'k', 'o'),
        analytics_internal._key_list(stored_columns),
        analytics_internal._key_list(stored_columns, 'n'),
        analytics_internal._keys_present(key_columns, 'n'),
        '"%"', index_name)
$$;

CREATE FUNCTION analytics_internal._create_unique_registry(hypertable regclass, hypertable_id int, index oid, index_name name,
                                                           beside_keys name[] DEFAULT '{}')
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source constant regclass := (SELECT i.indrelid::regclass FROM pg_index i WHERE i.indexrelid = index);
    key_columns constant name[] := analytics_internal._index_key_columns(index);
    stored_columns constant name[] := key_columns || beside_keys;
    registry_name name := left(index_name, 55) || '_keys';
    registry regclass;
    extension_owner constant name := (SELECT pg_get_userbyid(e.extowner) FROM pg_extension e WHERE e.extname = 'lacaja_analytics');
    event text;
BEGIN
    IF to_regclass(format('analytics_internal.%I', registry_name)) IS NOT NULL
       OR EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = registry_name AND p.pronamespace = 'analytics_internal'::regnamespace) THEN
        registry_name := left(index_name, 48) || '_keys_' || hypertable_id;
    END IF;
    EXECUTE format('CREATE TABLE analytics_internal.%I (%s, PRIMARY KEY (%s))', registry_name,
                   (SELECT string_agg(format('%I %s%s', a.attname, format_type(a.atttypid, a.atttypmod),
                                             CASE WHEN a.attcollation <> 0 AND a.attcollation <> (SELECT t.typcollation FROM pg_type t WHERE t.oid = a.atttypid)
                                                  THEN ' COLLATE ' || (SELECT format('%I.%I', n.nspname, co.collname) FROM pg_collation co
                                                                       JOIN pg_namespace n ON n.oid = co.collnamespace WHERE co.oid = a.attcollation)
                                                  ELSE '' END), ', ' ORDER BY k.o)
                    FROM unnest(stored_columns) WITH ORDINALITY k(c, o) JOIN pg_attribute a ON a.attrelid = source AND a.attname = k.c),
                   analytics_internal._key_list(key_columns));
    registry := format('analytics_internal.%I', registry_name)::regclass;
    EXECUTE format('COMMENT ON TABLE %s IS %L', registry,
                   format('Keys of %s across the chunks of %s (replace_unique): enforced here.', index_name, source));
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM %s AS n WHERE %s', registry, analytics_internal._key_list(stored_columns),
                   analytics_internal._key_list(stored_columns, 'n'), hypertable, analytics_internal._keys_present(key_columns, 'n'));
    EXECUTE format('CREATE FUNCTION analytics_internal.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
                    SET search_path = pg_catalog, pg_temp AS %L', registry_name,
                   analytics_internal._unique_registry_trigger_sql(registry, index_name, key_columns, stored_columns));
    EXECUTE format('ALTER TABLE %s OWNER TO %I', registry, extension_owner);
    EXECUTE format('ALTER FUNCTION analytics_internal.%I() OWNER TO %I', registry_name, extension_owner);
    EXECUTE format('REVOKE ALL ON FUNCTION analytics_internal.%I() FROM PUBLIC', registry_name);
    FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION analytics_internal.%I()',
                       left('lacaja_unique_' || index_name, 54) || '_' || event, upper(event), hypertable,
                       CASE event WHEN 'insert' THEN 'REFERENCING NEW TABLE AS new_rows'
                                  WHEN 'update' THEN 'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows'
                                  WHEN 'delete' THEN 'REFERENCING OLD TABLE AS old_rows' ELSE '' END,
                       registry_name);
    END LOOP;
    INSERT INTO analytics_internal.replaced_unique_indexes (hypertable, index_name, registry, key_columns, definition)
    VALUES (hypertable, index_name, registry, key_columns, pg_get_indexdef(index));
    RETURN registry;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._conversion_apply_log(c analytics.hypertable_conversions, batch int) RETURNS analytics.hypertable_conversions
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names record := analytics_internal._conversion_names(c);
    columns text := analytics_internal._stored_columns(c.relation);
    keys text := analytics_internal._key_list(c.key_columns);
    logged text := analytics_internal._key_list(analytics_internal._logged_columns(c));
    h analytics.hypertables := (SELECT t FROM analytics.hypertables t WHERE t.hypertable_id = c.hypertable_id);
    part text;
    applied bigint;
    remaining bigint;
BEGIN
    EXECUTE format($q$CREATE TEMP TABLE lacaja_changed ON COMMIT DROP AS
                      WITH taken AS (DELETE FROM %1$s WHERE ctid = ANY (ARRAY(SELECT ctid FROM %1$s %3$s)) RETURNING %2$s)
                      SELECT DISTINCT %2$s FROM taken$q$,
                   names.log_table, logged, CASE WHEN batch IS NULL THEN '' ELSE 'LIMIT ' || batch END);
    GET DIAGNOSTICS applied = ROW_COUNT;
    ANALYZE lacaja_changed;
    EXECUTE format('CREATE TEMP TABLE lacaja_gone ON COMMIT DROP AS SELECT %s FROM %s LIMIT 0', columns, names.staging);
    -- Chunk by chunk, by key and time: a statement on the parent would plan every chunk.
    FOR part IN EXECUTE format(
        $q$SELECT ch.chunk::text FROM analytics.chunks ch
           WHERE ch.hypertable_id = $1 AND EXISTS (SELECT 1 FROM lacaja_changed k WHERE %1$s >= ch.range_start AND %1$s < ch.range_end)
           UNION ALL SELECT format('%%I.%%I', $2, $3)$q$,
        analytics_internal._as_instant_sql(h, 'k.' || quote_ident(c.time_column)))
        USING c.hypertable_id, c.schema_name, analytics_internal._default_partition_name(h)
    LOOP
        EXECUTE format('WITH gone AS (DELETE FROM %s AS s USING lacaja_changed AS k WHERE (%s) = (%s) RETURNING %s)
                        INSERT INTO lacaja_gone SELECT * FROM gone', part,
                       analytics_internal._key_list(analytics_internal._logged_columns(c), 's'),
                       analytics_internal._key_list(analytics_internal._logged_columns(c), 'k'),
                       analytics_internal._stored_columns(c.relation, 's'));
    END LOOP;
    -- A statement on a chunk fires no statement trigger of the hypertable: the registries of its
    -- unique keys forget the deleted rows' keys here (the rows' current versions come back below).
    PERFORM analytics_internal._forget_unique_keys(names.staging::regclass, 'lacaja_gone');
    DROP TABLE lacaja_gone;
    EXECUTE format('INSERT INTO %1$s (%2$s) OVERRIDING SYSTEM VALUE SELECT %3$s FROM ONLY %4$s AS o
                    WHERE (%5$s) IN (SELECT %6$s FROM lacaja_changed)',
                   names.staging, columns, analytics_internal._stored_columns(c.relation, 'o'),
                   names.old_table, analytics_internal._key_list(c.key_columns, 'o'), keys);
    DROP TABLE lacaja_changed;
    c.changes_applied := c.changes_applied + applied;
    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s LIMIT 1001) AS l', names.log_table) INTO remaining;
    IF NOT c.indexed THEN
        c.status := 'indexing';  -- every change made during the copy is applied: no key has two rows
    ELSIF remaining <= 1000 THEN
        c.status := 'swapping';
    END IF;
    RETURN c;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._fk_check_parent() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._fk_require_parent(TG_RELID, TG_ARGV, TG_TABLE_NAME, NEW);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._fk_parent_action() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k constant analytics_internal.replaced_foreign_keys := analytics_internal._replaced_foreign_key(TG_RELID, 'parent', TG_ARGV);
    child constant regclass := k.child;
    child_owner constant oid := (SELECT c.relowner FROM pg_class c WHERE c.oid = k.child);
    child_cols constant name[] := k.child_columns;
    parent_cols constant name[] := k.parent_columns;
    action constant "char" := CASE TG_OP WHEN 'DELETE' THEN k.on_delete ELSE k.on_update END;
    -- the old parent row is $1 (the new one $2), as JSON, in statements run as the child's owner
    matches constant text := analytics_internal._key_matches('c', k.child, child_cols, '$1', parent_cols);
    key_changed boolean;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        EXECUTE format('SELECT (%s) IS DISTINCT FROM (%s)',
                       (SELECT string_agg(format('($1).%I', c), ', ') FROM unnest(parent_cols) c),
                       (SELECT string_agg(format('($2).%I', c), ', ') FROM unnest(parent_cols) c))
           INTO key_changed USING OLD, NEW;
        IF NOT key_changed THEN
            RETURN NULL;
        END IF;
    END IF;
    -- The child's triggers, defaults and checks run with its owner's rights, as in Postgres'
    -- own foreign keys: never with the extension's.
    IF action IN ('a', 'r') THEN
        IF analytics_internal._execute_as(child_owner, format('SELECT 1 FROM %s AS c WHERE %s LIMIT 1', child, matches),
                                          analytics_internal._key_values(OLD, parent_cols), NULL) > 0 THEN
            RAISE EXCEPTION 'update or delete on table "%" violates foreign key constraint "%" on table "%"',
                TG_TABLE_NAME, k.constraint_name, child
                USING ERRCODE = 'foreign_key_violation',
                      DETAIL = format('Key (%s) is still referenced from table %s.', array_to_string(parent_cols, ', '), child);
        END IF;
    ELSIF action = 'c' AND TG_OP = 'DELETE' THEN
        PERFORM analytics_internal._execute_as(child_owner, format('DELETE FROM %s AS c WHERE %s', child, matches),
                                               analytics_internal._key_values(OLD, parent_cols), NULL);
    ELSIF action = 'c' THEN
        PERFORM analytics_internal._execute_as(child_owner, format('UPDATE %s AS c SET %s WHERE %s', child,
                       (SELECT string_agg(format('%I = ($2 ->> %L)::%s', cc, pc, analytics_internal._column_type(k.child, cc)), ', ')
                          FROM unnest(child_cols, parent_cols) AS k (cc, pc)),
                       matches), analytics_internal._key_values(OLD, parent_cols), analytics_internal._key_values(NEW, parent_cols));
    ELSIF action IN ('n', 'd') THEN
        PERFORM analytics_internal._execute_as(child_owner, format('UPDATE %s AS c SET %s WHERE %s', child,
                       (SELECT string_agg(format('%I = %s', cc, CASE action WHEN 'n' THEN 'NULL' ELSE 'DEFAULT' END), ', ')
                          FROM unnest(child_cols) AS cc),
                       matches), analytics_internal._key_values(OLD, parent_cols), NULL);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._replace_foreign_key(con oid, parent text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
    registry regclass;
    check_function regprocedure;
    check_name name;
    extension_owner constant name := (SELECT pg_get_userbyid(e.extowner) FROM pg_extension e WHERE e.extname = 'lacaja_analytics');
BEGIN
    SELECT k.conname, k.conrelid::regclass AS child, k.confdeltype, k.confupdtype, pg_get_constraintdef(k.oid) AS definition,
           ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, i) JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i)::text AS child_cols,
           ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, i) JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i)::text AS parent_cols,
           ARRAY(SELECT a.attname FROM unnest(k.confkey) u(n) JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n) AS parent_names,
           -- every child column of the parent column's type and collation
           NOT EXISTS (SELECT 1 FROM unnest(k.conkey, k.confkey) AS m (cn, pn)
                       JOIN pg_attribute ca ON ca.attrelid = k.conrelid AND ca.attnum = m.cn
                       JOIN pg_attribute pa ON pa.attrelid = k.confrelid AND pa.attnum = m.pn
                       WHERE (ca.atttypid, ca.attcollation) IS DISTINCT FROM (pa.atttypid, pa.attcollation)) AS same_types
      INTO c FROM pg_constraint k WHERE k.oid = con;
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.child, c.conname);
    registry := CASE WHEN c.same_types THEN analytics_internal._key_registry(parent::regclass, c.parent_cols::name[]) END;
    IF registry IS NOT NULL THEN
        check_name := left(c.conname, 40) || '_check_' || c.child::oid;
        EXECUTE format('CREATE OR REPLACE FUNCTION analytics_internal.%I() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
                        SET search_path = pg_catalog, pg_temp AS %L', check_name,
                       analytics_internal._fk_check_function_sql(c.conname, registry, parent::regclass,
                                                                 (SELECT h.time_column FROM analytics.hypertables h WHERE h.relation = parent::regclass),
                                                                 c.child_cols::name[], c.parent_cols::name[]));
        check_function := format('analytics_internal.%I()', check_name)::regprocedure;
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', check_function, extension_owner);
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', check_function);
    END IF;
    INSERT INTO analytics_internal.replaced_foreign_keys (constraint_name, child, parent, definition, child_columns,
                                                          parent_columns, on_delete, on_update, check_function)
    VALUES (c.conname, c.child, parent::regclass, c.definition, c.child_cols::name[], c.parent_cols::name[],
            c.confdeltype, c.confupdtype, check_function)
    ON CONFLICT (child, constraint_name) DO UPDATE SET definition = excluded.definition, child_columns = excluded.child_columns,
        parent_columns = excluded.parent_columns, on_delete = excluded.on_delete, on_update = excluded.on_update,
        replaced_at = now(), check_function = excluded.check_function;
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION %s(%L, %L, %L, %L)',
                   left(c.conname, 50) || '_check', (SELECT string_agg(quote_ident(x), ', ') FROM unnest(c.child_cols::text[]) x),
                   c.child, coalesce(check_function::regproc::text, 'analytics_internal._fk_check_parent'),
                   c.conname, parent, c.child_cols, c.parent_cols);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE OR UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION analytics_internal._fk_parent_action(%L, %L, %L, %L, %L, %L)',
                   left(c.conname, 50) || '_action', (SELECT string_agg(quote_ident(x), ', ') FROM unnest(c.parent_names) x),
                   parent, c.conname, c.child::text, c.child_cols, c.parent_cols, c.confdeltype, c.confupdtype);
    RETURN format('%s.%s', c.child, c.conname);
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._conversion_index(c analytics.hypertable_conversions) RETURNS analytics.hypertable_conversions
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names record := analytics_internal._conversion_names(c);
    ix record;
    con record;
    cols text;
    time_attnum int := (SELECT attnum FROM pg_attribute WHERE attrelid = c.relation AND attname = c.time_column);
    registered boolean;
BEGIN
    FOR ix IN
        SELECT i.indexrelid, ic.relname, i.indisunique, i.indkey::int2[] AS indkey, pg_get_indexdef(i.indexrelid) AS def,
               -- what pg_get_indexdef() writes before "USING": names chosen by the table's owner
               -- may contain anything, " USING " included, so the prefix is matched whole
               format('CREATE %sINDEX %s ON %s.%s ', CASE WHEN i.indisunique THEN 'UNIQUE ' ELSE '' END,
                      quote_ident(ic.relname), quote_ident(c.schema_name), quote_ident(c.table_name)) AS prefix
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        WHERE i.indrelid = c.relation
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = c.relation)
        ORDER BY i.indexrelid
    LOOP
        IF left(ix.def, length(ix.prefix)) <> ix.prefix OR substring(ix.def FROM length(ix.prefix) + 1 FOR 6) <> 'USING ' THEN
            RAISE EXCEPTION 'cannot read the definition of index %: %', quote_ident(ix.relname), ix.def
                USING ERRCODE = 'internal_error';
        END IF;
        -- A unique index without the time column (replace_unique): a plain index of the same
        -- definition for lookups, uniqueness kept by a registry of its keys.
        registered := ix.indisunique AND c.replace_unique AND NOT (time_attnum = ANY (ix.indkey))
                      AND analytics_internal._unique_registry_refusal(ix.indexrelid) IS NULL;
        EXECUTE format('CREATE %sINDEX %I ON %s %s', CASE WHEN ix.indisunique AND NOT registered THEN 'UNIQUE ' ELSE '' END,
                       analytics_internal._staging_name(ix.relname, c.conversion_id), names.staging,
                       substring(ix.def FROM length(ix.prefix) + 1));
        IF registered THEN
            PERFORM analytics_internal._create_unique_registry(names.staging::regclass, c.hypertable_id, ix.indexrelid, ix.relname);
        END IF;
    END LOOP;
    FOR con IN SELECT k.* FROM pg_constraint k WHERE k.conrelid = c.relation AND k.contype IN ('p', 'u') ORDER BY k.contype, k.conname LOOP
        cols := (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY u.i)
                 FROM unnest(con.conkey) WITH ORDINALITY u(n, i) JOIN pg_attribute a ON a.attrelid = c.relation AND a.attnum = u.n);
        IF NOT time_attnum = ANY (con.conkey) THEN
            cols := cols || ', ' || quote_ident(c.time_column);
        END IF;
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s (%s)', names.staging, analytics_internal._staging_name(con.conname, c.conversion_id),
                       CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, cols);
        -- A key that foreign keys reference, made unique only with the time column: with
        -- replace_foreign_keys its keys are also kept in a registry, which keeps the original
        -- uniqueness across chunks and lets the replaced keys' checks find a parent with one probe
        -- instead of one per chunk.
        IF c.replace_foreign_keys AND NOT time_attnum = ANY (con.conkey)
           AND EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' AND f.confrelid = c.relation AND f.conindid = con.conindid)
           AND analytics_internal._unique_registry_refusal(con.conindid) IS NULL THEN
            PERFORM analytics_internal._create_unique_registry(names.staging::regclass, c.hypertable_id, con.conindid,
                                                               (SELECT ic.relname FROM pg_class ic WHERE ic.oid = con.conindid),
                                                               ARRAY[c.time_column]);
        END IF;
    END LOOP;
    FOR con IN SELECT k.conname, pg_get_constraintdef(k.oid) AS def FROM pg_constraint k
               WHERE k.conrelid = c.relation AND k.contype = 'f' ORDER BY k.conname LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', names.staging, con.conname, con.def);
    END LOOP;
    IF c.create_default_indexes AND NOT EXISTS (
        SELECT 1 FROM pg_index i WHERE i.indrelid = c.relation AND i.indkey[0] = time_attnum) THEN
        EXECUTE format('CREATE INDEX %I ON %s (%I DESC)', left(c.table_name, 40) || '_' || left(c.time_column, 15) || '_idx',
                       names.staging, c.time_column);
    END IF;
    c.indexed := true;
    c.status := CASE WHEN c.online THEN 'catching_up' ELSE 'swapping' END;
    RETURN c;
END
$$;

-- Stock as the owner sees it (rollups.sql): warehouse_stock, lots, weight units, BCV rate ----

CREATE OR REPLACE FUNCTION analytics_internal._customer_figures_body(customers regclass, debts regclass) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    has_debts constant boolean := analytics_internal._has_columns(debts, '{store_id,customer_id,status,amount_bs,amount_usd}');
BEGIN
    IF NOT analytics_internal._has_columns(customers, '{id,store_id}') THEN
        RETURN 'BEGIN RETURN; END';
    END IF;
    RETURN format($f$
BEGIN
    -- generated by analytics.attach() for %5$s
    RETURN QUERY
    SELECT s.store_id, s.total_customers, %3$s,
           (SELECT count(DISTINCT a.customer_id) FROM (
                SELECT p.customer_id FROM analytics_internal.customer_daily_parts p
                WHERE p.store_id = s.store_id
                  AND p.day BETWEEN analytics.store_today(s.store_id) - 29 AND analytics.store_today(s.store_id)
                GROUP BY p.customer_id, p.day HAVING sum(p.sales_count) > 0) AS a)
    FROM (SELECT c.store_id, count(*) AS total_customers FROM %1$s AS c
          WHERE c.store_id IS NOT NULL AND (for_store IS NULL OR c.store_id = for_store) GROUP BY c.store_id) AS s
    %4$s;
END$f$,
        customers, coalesce(debts::text, '(no debts table)'),
        CASE WHEN has_debts THEN 'coalesce(d.customers, 0), coalesce(d.bs, 0), coalesce(d.usd, 0)' ELSE '0::bigint, 0::numeric, 0::numeric' END,
        CASE WHEN has_debts THEN format('LEFT JOIN LATERAL (SELECT count(DISTINCT d.customer_id) AS customers, sum(d.amount_bs) AS bs,
                                                                  sum(d.amount_usd) AS usd
                                                           FROM %s AS d WHERE d.store_id = s.store_id AND d.status IN (''open'', ''partial'')) AS d ON true',
                                        debts)
             ELSE '' END,
        analytics_internal._in_comment(concat(customers, ' and ', coalesce(debts::text, '(no debts table)'))));
END
$$;

DROP FUNCTION analytics_internal._inventory_figures_body(regclass);
CREATE FUNCTION analytics_internal._inventory_figures_body(products regclass, warehouse_stock regclass, warehouses regclass,
                                                           lots regclass, rates regclass) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    by_warehouse constant boolean := analytics_internal._has_columns(warehouse_stock, '{warehouse_id,product_id,stock}')
                                     AND analytics_internal._has_columns(warehouses, '{id,store_id}');
    with_lots constant boolean := analytics_internal._has_columns(lots, '{product_id,remaining_quantity,unit_cost_bs,unit_cost_usd}');
    with_rates constant boolean := analytics_internal._has_columns(rates, '{store_id,rate,rate_type,is_active,is_preferred,effective_from,effective_until,updated_at,created_at}');
    by_weight constant boolean := analytics_internal._has_columns(products, '{is_weight_product,weight_unit,cost_per_weight_bs,cost_per_weight_usd}');
    stock_rows text;
    lot_join text;
    unit_cost text;
    queries text[];
    filter_stock text;
    filter_product text;
BEGIN
    IF NOT analytics_internal._has_columns(products, '{id,store_id,is_active,low_stock_threshold,cost_bs,cost_usd}') THEN
        RETURN 'BEGIN RETURN; END';
    END IF;
    -- %1$s: bs or usd (formatted before any name is put in)
    unit_cost := concat('CASE ',
        CASE WHEN by_weight THEN
            'WHEN p.is_weight_product THEN coalesce(p.cost_per_weight_%1$s, p.cost_%1$s * CASE p.weight_unit WHEN ''g'' THEN 0.001
                 WHEN ''lb'' THEN 0.45359237 WHEN ''oz'' THEN 0.028349523125 ELSE 1 END) ' END,
        'WHEN lot.remaining > 0 THEN lot.cost_%1$s / lot.remaining ELSE p.cost_%1$s END');
    -- all stores, then one store: each text formatted once (names are never formatted again)
    FOREACH filter_product IN ARRAY ARRAY['true', 'p.store_id = for_store'] LOOP
        filter_stock := CASE WHEN filter_product = 'true' THEN 'true'
                             WHEN by_warehouse THEN 'w.store_id = for_store' ELSE 'x.store_id = for_store' END;
        -- The lots of the products read, summed once per product (grouped, not per product row:
        -- whether product_lots has an index on product_id or not, one pass).
        lot_join := CASE WHEN with_lots THEN format(
            'LEFT JOIN (SELECT l.product_id, count(*) AS lots, sum(l.remaining_quantity) AS quantity,
                               sum(l.remaining_quantity) FILTER (WHERE l.remaining_quantity > 0) AS remaining,
                               sum(l.remaining_quantity * l.unit_cost_bs) FILTER (WHERE l.remaining_quantity > 0) AS cost_bs,
                               sum(l.remaining_quantity * l.unit_cost_usd) FILTER (WHERE l.remaining_quantity > 0) AS cost_usd
                        FROM %s AS l WHERE %s GROUP BY l.product_id) AS lot ON lot.product_id = p.id', lots,
            CASE WHEN filter_product = 'true' THEN 'true'
                 ELSE format('l.product_id IN (SELECT q.id FROM %s AS q WHERE q.store_id = for_store)', products) END)
            ELSE 'CROSS JOIN LATERAL (SELECT 0::bigint AS lots, NULL::numeric AS quantity, NULL::numeric AS remaining,
                                             NULL::numeric AS cost_bs, NULL::numeric AS cost_usd) AS lot' END;
        stock_rows := CASE WHEN by_warehouse THEN format(
            'SELECT w.store_id, s.product_id, sum(s.stock) AS stock FROM %s AS s JOIN %s AS w ON w.id = s.warehouse_id
             WHERE %s GROUP BY w.store_id, s.product_id', warehouse_stock, warehouses, filter_stock)
            ELSE format('SELECT x.store_id, x.product_id, sum(x.stock) AS stock FROM analytics_internal.product_stock_parts x
                         WHERE %s GROUP BY x.store_id, x.product_id HAVING sum(x.movements) <> 0', filter_stock) END;
        queries := queries || format($q$
        SELECT f.store_id, f.total_products, f.low_stock_count, f.out_of_stock_count,
               CASE WHEN f.value_usd > 0 AND f.bcv_rate IS NOT NULL THEN f.value_usd * f.bcv_rate ELSE f.value_bs END,
               f.value_usd, f.avg_stock_level, f.categories_count
        FROM (SELECT p.store_id, count(*) AS total_products,
                     count(*) FILTER (WHERE p.low_stock_threshold > 0
                                        AND CASE WHEN lot.lots > 0 THEN lot.quantity ELSE coalesce(s.stock, 0) END <= p.low_stock_threshold)
                         AS low_stock_count,
                     count(*) FILTER (WHERE coalesce(s.stock, 0) <= 0) AS out_of_stock_count,
                     coalesce(sum(greatest(coalesce(s.stock, 0), 0) * (%1$s)), 0) AS value_bs,
                     coalesce(sum(greatest(coalesce(s.stock, 0), 0) * (%2$s)), 0) AS value_usd,
                     avg(coalesce(s.stock, 0)) AS avg_stock_level,
                     count(DISTINCT %3$s) AS categories_count,
                     %5$s AS bcv_rate
              FROM %4$s AS p
              LEFT JOIN (%6$s) AS s ON s.store_id = p.store_id AND s.product_id = p.id
              %7$s
              WHERE p.is_active AND %8$s
              GROUP BY p.store_id) AS f$q$,
            format(unit_cost, 'bs'), format(unit_cost, 'usd'),
            CASE WHEN analytics_internal._has_columns(products, '{category}') THEN 'p.category' ELSE 'NULL::text' END,
            products,
            -- the store's BCV rate in force (LA-CAJA's order of preference)
            CASE WHEN with_rates THEN format(
                '(SELECT r.rate FROM %s AS r WHERE r.store_id = p.store_id AND r.rate_type = ''BCV'' AND r.is_active
                     AND r.effective_from <= now() AND (r.effective_until IS NULL OR r.effective_until > now())
                  ORDER BY r.is_preferred DESC, r.effective_from DESC, r.updated_at DESC, r.created_at DESC LIMIT 1)', rates)
                 ELSE 'NULL::numeric' END,
            stock_rows, lot_join, filter_product);
    END LOOP;
    RETURN format($f$
BEGIN
    -- generated by analytics.attach() for %s
    IF for_store IS NULL THEN
        RETURN QUERY %s;
    ELSE
        RETURN QUERY %s;
    END IF;
END$f$, analytics_internal._in_comment(concat_ws(', ', products, CASE WHEN by_warehouse THEN warehouse_stock END, CASE WHEN by_warehouse THEN warehouses END,
                  CASE WHEN with_lots THEN lots END, CASE WHEN with_rates THEN rates END)),
        queries[1], queries[2]);
END
$$;

CREATE FUNCTION analytics_internal._stock_stores()
RETURNS SETOF uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN;
END
$$;
CREATE FUNCTION analytics_internal._product_stock(for_store uuid)
RETURNS TABLE (product_id uuid, stock numeric)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN;
END
$$;
CREATE FUNCTION analytics_internal._product_stock_bodies(warehouse_stock regclass, warehouses regclass) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE WHEN analytics_internal._has_columns(warehouse_stock, '{warehouse_id,product_id,stock}')
                     AND analytics_internal._has_columns(warehouses, '{id,store_id}')
           THEN ARRAY[format($f$
BEGIN
    -- generated by analytics.attach() for %2$s
    RETURN QUERY SELECT DISTINCT w.store_id FROM %1$s AS w WHERE w.store_id IS NOT NULL;
END$f$, warehouses, analytics_internal._in_comment(warehouses::text)),
                      format($f$
BEGIN
    -- generated by analytics.attach() for %3$s
    RETURN QUERY SELECT s.product_id, sum(s.stock)::numeric
                 FROM %1$s AS s JOIN %2$s AS w ON w.id = s.warehouse_id
                 WHERE w.store_id = for_store
                 GROUP BY s.product_id;
END$f$, warehouse_stock, warehouses, analytics_internal._in_comment(concat(warehouse_stock, ' and ', warehouses)))]
           ELSE ARRAY[$f$
BEGIN
    -- generated by analytics.attach(): the ledger rollup (no warehouse_stock in the source)
    RETURN QUERY SELECT DISTINCT p.store_id FROM analytics_internal.product_stock_parts p;
END$f$, $f$
BEGIN
    -- generated by analytics.attach(): the ledger rollup (no warehouse_stock in the source)
    RETURN QUERY SELECT p.product_id, sum(p.stock)
                 FROM analytics_internal.product_stock_parts p
                 WHERE p.store_id = for_store
                 GROUP BY p.product_id HAVING sum(p.movements) <> 0;
END$f$] END;
END
$$;

CREATE OR REPLACE FUNCTION analytics_internal._generate_readers() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source_schema constant name := (SELECT c.source_schema FROM analytics_internal.source_config c);
    products constant regclass := CASE WHEN source_schema IS NOT NULL THEN to_regclass(format('%I.products', source_schema)) END;
    warehouse_stock constant regclass := CASE WHEN source_schema IS NOT NULL THEN analytics_internal._source_table(source_schema, 'warehouse_stock') END;
    warehouses constant regclass := CASE WHEN source_schema IS NOT NULL THEN analytics_internal._source_table(source_schema, 'warehouses') END;
    lots constant regclass := CASE WHEN source_schema IS NOT NULL THEN analytics_internal._source_table(source_schema, 'product_lots') END;
    rates constant regclass := CASE WHEN source_schema IS NOT NULL THEN analytics_internal._source_table(source_schema, 'exchange_rates') END;
    stock_bodies text[];
BEGIN
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._inventory_figures(for_store uuid DEFAULT NULL)
        RETURNS TABLE (store_id uuid, total_products bigint, low_stock_count bigint, out_of_stock_count bigint,
                       stock_value_bs numeric, stock_value_usd numeric, avg_stock_level numeric, categories_count bigint)
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$,
        analytics_internal._inventory_figures_body(products, warehouse_stock, warehouses, lots, rates));
    stock_bodies := CASE WHEN source_schema IS NULL THEN ARRAY['BEGIN RETURN; END', 'BEGIN RETURN; END']
                         ELSE analytics_internal._product_stock_bodies(warehouse_stock, warehouses) END;
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._stock_stores()
        RETURNS SETOF uuid
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$, stock_bodies[1]);
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._product_stock(for_store uuid)
        RETURNS TABLE (product_id uuid, stock numeric)
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$, stock_bodies[2]);
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._stock_drift(for_store uuid)
        RETURNS SETOF analytics.stock_drift
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$,
        CASE WHEN source_schema IS NULL THEN 'BEGIN RETURN; END'
             ELSE analytics_internal._stock_drift_body(warehouse_stock, warehouses) END);
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._products_sold(store_id uuid, from_day date, to_day date)
        RETURNS TABLE (product_id uuid, name text, category text, qty numeric, returned_qty numeric, net_qty numeric,
                       revenue_bs numeric, revenue_usd numeric, times_sold bigint, returned_bs numeric, returned_usd numeric)
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$,
        analytics_internal._products_sold_body(products));
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._forecast_products(for_store uuid)
        RETURNS TABLE (product_id uuid, name text, unit text, by_weight boolean, low_stock_threshold numeric)
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$,
        analytics_internal._forecast_products_body(products));
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._customer_figures(for_store uuid DEFAULT NULL)
        RETURNS TABLE (store_id uuid, total_customers bigint, customers_with_debt bigint, total_debt_bs numeric, total_debt_usd numeric,
                       active_customers_30d bigint)
        LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$,
        analytics_internal._customer_figures_body(
            CASE WHEN source_schema IS NOT NULL THEN to_regclass(format('%I.customers', source_schema)) END,
            CASE WHEN source_schema IS NOT NULL THEN to_regclass(format('%I.debts', source_schema)) END));
END
$$;

CREATE OR REPLACE VIEW analytics.product_stock WITH (security_barrier) AS
SELECT st.store_id, s.product_id, s.stock
FROM analytics_internal._stock_stores() AS st (store_id)
CROSS JOIN LATERAL analytics_internal._product_stock(st.store_id) AS s
WHERE analytics_internal._store_visible(st.store_id);
-- named by a view that PUBLIC reads: as install.sql leaves those (revoked, then granted)
REVOKE ALL ON FUNCTION analytics_internal._stock_stores(), analytics_internal._product_stock(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION analytics_internal._stock_stores(), analytics_internal._product_stock(uuid) TO PUBLIC;

-- The stock ledger per warehouse and stock_drift() (rollups.sql) ---------------------------
-- The parts gain the warehouse and the escrow movements' part: the table is made anew (the
-- library keeps folding into 0.1.0's shape until it is) and, in an attached database,
-- recomputed from the movements below, under the capture tables' locks.
DROP TABLE analytics_internal.product_stock_parts;
CREATE TABLE analytics_internal.product_stock_parts (
    store_id     uuid    NOT NULL,
    warehouse_id uuid    NOT NULL,
    product_id   uuid    NOT NULL,
    shard        int     NOT NULL,
    stock        numeric NOT NULL,
    movements    bigint  NOT NULL,
    escrow       numeric NOT NULL,
    PRIMARY KEY (store_id, warehouse_id, product_id, shard)
) WITH (fillfactor = 80);
REVOKE ALL ON analytics_internal.product_stock_parts FROM PUBLIC;
UPDATE analytics_internal.rollup_catalog
SET parts = 'analytics_internal.product_stock_parts',  -- the new table's
    keys = '{store_id,warehouse_id,product_id}',
    key_exprs = '{store_id,"coalesce(warehouse_id, ''00000000-0000-0000-0000-000000000000'')",product_id}',
    vals = '{stock,movements,escrow}', val_exprs = '{sum(qty),sum(sign),sum(escrow)}'
WHERE name = 'product_stock';

DROP FUNCTION analytics_internal._fold_rows(int, int[], uuid[], uuid[], timestamptz[], uuid[], jsonb[], jsonb[], boolean[],
                                            int[], uuid[], uuid[], text[]);
CREATE FUNCTION analytics_internal._fold_rows(target_shard int, sale_signs int[], sale_ids uuid[], sale_stores uuid[],
        sale_times timestamptz[], sale_customers uuid[], sale_totals jsonb[], sale_payments jsonb[], sale_counts boolean[],
        stock_signs int[], stock_stores uuid[], stock_warehouses uuid[], stock_products uuid[], stock_quantities text[],
        stock_escrow boolean[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RETURN;
END
$$;
CREATE OR REPLACE FUNCTION analytics_internal._fold_rows_body() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    rows_of constant jsonb := jsonb_build_object(
        'sales', $q$SELECT r.sign, r.store_id, r.sold_at, r.customer_id, r.totals, r.payment
                    FROM unnest(sale_signs, sale_stores, sale_times, sale_customers, sale_totals, sale_payments, sale_counts)
                         AS r (sign, store_id, sold_at, customer_id, totals, payment, counts)
                    WHERE r.counts$q$,
        'stock', $q$SELECT r.sign, r.store_id, r.warehouse_id, r.product_id, r.qty, r.from_escrow
                    FROM unnest(stock_signs, stock_stores, stock_warehouses, stock_products, stock_quantities, stock_escrow)
                         AS r (sign, store_id, warehouse_id, product_id, qty, from_escrow)$q$);
    -- What could not be read is reported, once, without failing the sale: a cheap test first,
    -- the report only for the rare malformed sale.
    problems constant text := $q$
    IF EXISTS (SELECT 1 FROM unnest(sale_signs, sale_totals, sale_payments) AS r (sign, totals, payment)
               WHERE r.sign > 0 AND NOT analytics_internal.sale_is_well_formed(r.totals, r.payment)) THEN
        INSERT INTO analytics.ingest_errors (source_table, source_id, column_name, problem, value)
        SELECT 'sales', r.id::text, p.column_name, p.problem, p.value
        FROM unnest(sale_signs, sale_ids, sale_totals, sale_payments) AS r (sign, id, totals, payment)
        CROSS JOIN LATERAL analytics_internal.sale_problems(r.totals, r.payment) AS p
        WHERE r.sign > 0 AND NOT analytics_internal.sale_is_well_formed(r.totals, r.payment)
        ON CONFLICT DO NOTHING;
    END IF;$q$;
    fold_source text;
    upserts text[];
    statement text;
    body text := '';
BEGIN
    FOREACH fold_source IN ARRAY ARRAY['sales', 'stock'] LOOP
        SELECT array_agg(analytics_internal._add_to_parts_sql(c, analytics_internal._aggregate_sql(c, 'measured'),
                                                              'target_shard', true) ORDER BY c.position)
          INTO upserts FROM analytics_internal.rollup_catalog c WHERE c.source = fold_source;
        statement := format('WITH changed AS (%s), measured AS (%s)', rows_of ->> fold_source,
                            analytics_internal._measured_sql(fold_source, 'SELECT * FROM changed'));
        FOR j IN 1..cardinality(upserts) - 1 LOOP
            statement := statement || format(', add_%s AS (%s)', j, upserts[j]);
        END LOOP;
        body := body || format(E'\n    IF cardinality(%s) > 0 THEN\n        %s\n        %s;%s\n    END IF;',
                               CASE fold_source WHEN 'sales' THEN 'sale_signs' ELSE 'stock_signs' END,
                               statement, upserts[cardinality(upserts)],
                               CASE fold_source WHEN 'sales' THEN problems ELSE '' END);
    END LOOP;
    RETURN format(E'\nBEGIN\n    -- generated by analytics.attach() from analytics_internal.rollup_catalog%s\nEND', body);
END
$$;
CREATE OR REPLACE FUNCTION analytics_internal._set_fold_rows_body(body text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal._fold_rows(target_shard int, sale_signs int[],
            sale_ids uuid[], sale_stores uuid[], sale_times timestamptz[], sale_customers uuid[], sale_totals jsonb[],
            sale_payments jsonb[], sale_counts boolean[], stock_signs int[], stock_stores uuid[], stock_warehouses uuid[],
            stock_products uuid[], stock_quantities text[], stock_escrow boolean[]) RETURNS void
        LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
        -- Called at every commit that sold something: plan once per session.
        SET plan_cache_mode = force_generic_plan AS %L$f$, body);
END
$$;
CREATE OR REPLACE FUNCTION analytics_internal._measure_stock_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
        SELECT c.sign, c.store_id, c.warehouse_id, c.product_id, c.sign * coalesce(c.qty::numeric, 0) AS qty,
               CASE WHEN c.from_escrow THEN c.sign * coalesce(c.qty::numeric, 0) ELSE 0 END AS escrow
        FROM (%s) AS c
        WHERE c.store_id IS NOT NULL AND c.product_id IS NOT NULL$q$, source)
$$;
DROP FUNCTION analytics_internal._capture_columns(text, text);
CREATE FUNCTION analytics_internal._column_or(rel regclass, column_name name, column_type regtype, otherwise text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a
                             WHERE a.attrelid = rel AND a.attname = column_name AND a.atttypid = column_type
                               AND a.attnum > 0 AND NOT a.attisdropped)
                THEN format('r.%I', column_name) ELSE otherwise END
$$;
CREATE FUNCTION analytics_internal._capture_columns(source text, stock_source text, movements regclass) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN source = 'sales' THEN 'r.store_id, r.sold_at, r.customer_id, r.totals, r.payment'
        WHEN stock_source = 'movements' THEN
            format('r.store_id, r.product_id, r.qty_delta AS qty, %s AS warehouse_id, %s AS from_escrow',
                   analytics_internal._column_or(movements, 'warehouse_id', 'uuid', 'NULL::uuid'),
                   analytics_internal._column_or(movements, 'from_escrow', 'boolean', 'false'))
        WHEN stock_source = 'current_stock' THEN
            'r.store_id, r.id AS product_id, r.current_stock AS qty, NULL::uuid AS warehouse_id, false AS from_escrow'
    END
$$;
CREATE OR REPLACE FUNCTION analytics_internal._source_rows_sql(source text, store_filter text) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cfg analytics_internal.source_config;
BEGIN
    SELECT * INTO cfg FROM analytics_internal.source_config;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lacaja_analytics is not attached to any sales table'
            USING HINT = 'Run SELECT analytics.attach(''public'') (or the schema holding LA-CAJA''s tables).';
    END IF;
    RETURN CASE
        WHEN source = 'sales' THEN
            format('SELECT 1 AS sign, %s FROM %I.sales AS r WHERE (%s) AND (%s)',
                   analytics_internal._capture_columns('sales', NULL, NULL), cfg.source_schema, cfg.valid_sale, store_filter)
        WHEN source = 'stock' AND cfg.stock_source = 'movements' THEN
            format('SELECT 1 AS sign, %s FROM %I.inventory_movements AS r WHERE %s',
                   analytics_internal._capture_columns('stock', cfg.stock_source,
                       to_regclass(format('%I.inventory_movements', cfg.source_schema))), cfg.source_schema, store_filter)
        WHEN source = 'stock' AND cfg.stock_source = 'current_stock' THEN
            format('SELECT 1 AS sign, %s FROM %I.products AS r WHERE %s',
                   analytics_internal._capture_columns('stock', cfg.stock_source, NULL), cfg.source_schema, store_filter)
        -- Product rollups are sums of the item facts (see sql/products.sql).
        WHEN source = 'items' AND cfg.captures_items THEN
            format('SELECT 1 AS sign, r.* FROM analytics_internal.item_facts AS r WHERE %s', store_filter)
    END;
END
$$;
CREATE OR REPLACE FUNCTION analytics_internal._read_source_tables() RETURNS SETOF name
LANGUAGE sql IMMUTABLE AS $$
    SELECT unnest(ARRAY['sales', 'sale_items', 'sale_returns', 'sale_return_items', 'products', 'inventory_movements',
                        'stores', 'customers', 'debts', 'warehouses', 'warehouse_stock', 'product_lots', 'exchange_rates',
                        'real_time_metrics', 'alert_thresholds', 'real_time_alerts']::name[])
$$;

CREATE TYPE analytics.stock_drift AS (
    store_id     uuid,
    warehouse_id uuid,
    product_id   uuid,
    ledger       numeric,
    stock        numeric,
    reserved     numeric,
    difference   numeric,
    escrow       numeric,
    cause        text
);
CREATE FUNCTION analytics_internal._stock_drift(for_store uuid)
RETURNS SETOF analytics.stock_drift
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN;
END
$$;
CREATE FUNCTION analytics_internal._stock_drift_body(warehouse_stock regclass, warehouses regclass) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    queries text[] := '{}';
    filter_ledger text;
    filter_held text;
BEGIN
    IF NOT (analytics_internal._has_columns(warehouse_stock, '{warehouse_id,product_id,stock,reserved}')
            AND analytics_internal._has_columns(warehouses, '{id,store_id}')) THEN
        RETURN $f$
BEGIN
    -- generated by analytics.attach(): no warehouse_stock in the source
    RAISE EXCEPTION 'stock_drift() compares the movement ledger with warehouse_stock, and the attached schema has no warehouse_stock (with warehouse_id, product_id, stock, reserved) and warehouses (id, store_id)'
        USING ERRCODE = 'object_not_in_prerequisite_state',
              HINT = 'Without warehouse_stock the ledger is the stock (analytics.product_stock): there is nothing to reconcile.';
END$f$;
    END IF;
    -- all stores, then one store: each text formatted once (names are never formatted again)
    FOREACH filter_ledger IN ARRAY ARRAY['true', 'p.store_id = for_store'] LOOP
        filter_held := CASE WHEN filter_ledger = 'true' THEN 'true' ELSE 'w.store_id = for_store' END;
        queries := queries || format($q$
        SELECT d.store_id, d.warehouse_id, d.product_id, d.ledger, d.stock, d.reserved, d.difference, d.escrow,
               CASE WHEN d.warehouse_id IS NULL THEN 'movements without a warehouse'
                    ELSE nullif(concat_ws(' and ',
                        CASE WHEN d.escrow <> 0 THEN 'escrow sales' END,
                        CASE WHEN d.difference - d.escrow < 0 AND d.reserved > 0 AND d.ledger - d.escrow < d.reserved
                                  THEN 'transfer in transit'
                             WHEN d.difference - d.escrow < 0 AND d.ledger - d.escrow < 0 THEN 'clamp hid a negative' END), '') END
        FROM (SELECT store_id, warehouse_id, product_id,
                     coalesce(l.ledger, 0) AS ledger, coalesce(h.stock, 0) AS stock, coalesce(h.reserved, 0) AS reserved,
                     coalesce(l.ledger, 0) - coalesce(h.stock, 0) - coalesce(h.reserved, 0) AS difference,
                     coalesce(l.escrow, 0) AS escrow
              FROM (SELECT p.store_id, nullif(p.warehouse_id, '00000000-0000-0000-0000-000000000000') AS warehouse_id,
                           p.product_id, sum(p.stock) AS ledger, sum(p.escrow) AS escrow
                    FROM analytics_internal.product_stock_parts p
                    WHERE %3$s
                    GROUP BY p.store_id, p.warehouse_id, p.product_id) AS l
              FULL JOIN (SELECT w.store_id, s.warehouse_id, s.product_id, sum(s.stock)::numeric AS stock,
                                sum(s.reserved)::numeric AS reserved
                         FROM %1$s AS s JOIN %2$s AS w ON w.id = s.warehouse_id
                         WHERE %4$s
                         GROUP BY w.store_id, s.warehouse_id, s.product_id) AS h
                   USING (store_id, warehouse_id, product_id)) AS d
        WHERE d.difference <> 0$q$, warehouse_stock, warehouses, filter_ledger, filter_held);
    END LOOP;
    RETURN format($f$
BEGIN
    -- generated by analytics.attach() for %3$s
    IF for_store IS NULL THEN
        RETURN QUERY %1$s;
    ELSE
        RETURN QUERY %2$s;
    END IF;
END$f$, queries[1], queries[2], analytics_internal._in_comment(concat(warehouse_stock, ' and ', warehouses)));
END
$$;
CREATE FUNCTION analytics_internal._stock_drift_of(for_store uuid, token bigint)
RETURNS SETOF analytics.stock_drift
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller constant oid := analytics_internal._redeem_caller(token);
BEGIN
    PERFORM analytics_internal._check_reader(caller, for_store);
    RETURN QUERY
    SELECT d.* FROM analytics_internal._stock_drift(for_store) AS d
    WHERE analytics_internal._store_visible_to(caller, d.store_id)
    ORDER BY d.store_id, d.warehouse_id NULLS FIRST, d.product_id;
END
$$;
CREATE FUNCTION analytics.stock_drift(store_id uuid DEFAULT NULL)
RETURNS SETOF analytics.stock_drift
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._stock_drift_of(store_id, analytics_internal._caller_token());
END;
REVOKE ALL ON FUNCTION analytics_internal._fold_rows(int, int[], uuid[], uuid[], timestamptz[], uuid[], jsonb[], jsonb[], boolean[],
                                                     int[], uuid[], uuid[], uuid[], text[], boolean[]),
                       analytics_internal._column_or(regclass, name, regtype, text),
                       analytics_internal._capture_columns(text, text, regclass),
                       analytics_internal._stock_drift(uuid),
                       analytics_internal._stock_drift_body(regclass, regclass),
                       analytics.stock_drift(uuid),
                       analytics_internal._stock_drift_of(uuid, bigint)
    FROM PUBLIC;
-- the public wrapper and what it names: as install.sql leaves those (revoked, then granted)
GRANT EXECUTE ON FUNCTION analytics.stock_drift(uuid), analytics_internal._stock_drift_of(uuid, bigint) TO PUBLIC;

REVOKE ALL ON FUNCTION analytics_internal._library_version(),
                       analytics_internal._interrupted_conversions(),
                       analytics_internal._recover_interrupted_conversions(),
                       analytics_internal._bind_trigger(regclass, name),
                       analytics_internal._create_capture_triggers(regclass, text, text[], text, boolean),
                       analytics_internal._attach_items(name, text, boolean),
                       analytics_internal._attach_warehouse(name, boolean),
                       analytics_internal._establish_capture(boolean),
                       analytics_internal._on_trigger_created(),
                       analytics_internal._note_replica_write(),
                       analytics_internal._create_replica_triggers(name, boolean),
                       analytics_internal._repair_replica_writes(),
                       analytics_internal._fk_require_parent(oid, text[], name, anyelement),
                       analytics_internal._fk_check_function_sql(name, regclass, regclass, name, name[], name[]),
                       analytics_internal._key_registry(regclass, name[]),
                       analytics_internal._unique_registry_trigger_sql(regclass, name, name[], name[]),
                       analytics_internal._create_unique_registry(regclass, int, oid, name, name[]),
                       analytics_internal._inventory_figures_body(regclass, regclass, regclass, regclass, regclass),
                       analytics_internal._product_stock_bodies(regclass, regclass),
                       analytics_internal._in_comment(text)
    FROM PUBLIC;

CREATE EVENT TRIGGER lacaja_analytics_restore_capture ON ddl_command_end WHEN TAG IN ('CREATE TRIGGER')
    EXECUTE FUNCTION analytics_internal._on_trigger_created();
ALTER EVENT TRIGGER lacaja_analytics_restore_capture ENABLE ALWAYS;


-- What pg_dump keeps (install.sql) ---------------------------------------------------------

DO $$
DECLARE
    t regclass;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'analytics_internal.source_config', 'analytics_internal.store_isolation', 'analytics_internal.zone_changes',
        'analytics.job_errors_id_seq',
        'analytics_internal.sale_measures', 'analytics_internal.sales_hourly_parts', 'analytics_internal.sales_daily_parts',
        'analytics_internal.customer_daily_parts', 'analytics_internal.product_stock_parts',
        'analytics_internal.item_facts', 'analytics_internal.product_daily_parts', 'analytics_internal.cost_daily_parts',
        'analytics_internal.replica_writes',
        'analytics_internal.repair_log', 'analytics_internal.repair_log_id_seq',
        'analytics.index_builds', 'analytics.index_builds_id_seq',
        'analytics.hypertable_conversions', 'analytics.hypertable_conversions_conversion_id_seq',
        'analytics.anomaly_predictions', 'analytics.anomaly_predictions_id_seq',
        'analytics_internal.real_time_metric_state', 'analytics_internal.alert_state',
        'analytics_internal.warehouse_state', 'analytics_internal.warehouse_changes',
        'analytics_internal.warehouse_product_changes', 'analytics_internal.warehouse_product_changes_change_id_seq',
        'analytics.dim_store', 'analytics.dim_customer', 'analytics.fact_sales', 'analytics.etl_runs',
        'analytics.etl_runs_run_id_seq']::regclass[] LOOP
        PERFORM pg_catalog.pg_extension_config_dump(t, '');
    END LOOP;
END
$$;
SELECT pg_catalog.pg_extension_config_dump('analytics_internal.job_run_state', 'WHERE job_id >= 1000');

-- Compression (new in 0.2.0): sql/compression.sql as it stands, and the Rust it calls ------------

-- src/compression/chunks.rs
CREATE  FUNCTION analytics_internal."_decompress_chunk_rows"(
	"chunk" oid /* pg_sys :: Oid */
) RETURNS bigint /* i64 */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_decompress_chunk_rows_wrapper';
CREATE  FUNCTION analytics_internal."_compress_chunk_rows"(
	"chunk" oid, /* pg_sys :: Oid */
	"segment_by" TEXT, /* Option < & str > */
	"order_by" TEXT /* & str */
) RETURNS TABLE (
	"rows" bigint,  /* i64 */
	"batches" INT,  /* i32 */
	"compressed_bytes" bigint  /* i64 */
)

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_compress_chunk_rows_wrapper';

-- Columnar compression of old chunks (SPEC §3). A compressed chunk keeps its place in the
-- hypertable under the table access method lacaja_compressed (src/compression/am.rs): same
-- table, same rows, same constraints; its rows live in batches below, plus a heap for what
-- arrives later (late syncs, new versions of updated rows) until the next compression.

CREATE FUNCTION analytics_internal.lacaja_compressed_am_handler(internal) RETURNS table_am_handler
LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'lacaja_compressed_am_handler';
CREATE ACCESS METHOD lacaja_compressed TYPE TABLE HANDLER analytics_internal.lacaja_compressed_am_handler;
COMMENT ON ACCESS METHOD lacaja_compressed IS
    'lacaja_analytics: a chunk compressed by analytics.compress_chunk (its rows in analytics_internal.compressed_batches).';

-- Batch ids are never reused (a recompression writes new ones), so a row's item pointer
-- (block 0x80000000 | batch_id) names one row for as long as it exists.
CREATE SEQUENCE analytics_internal.compressed_batch_ids AS integer MINVALUE 0 MAXVALUE 2147483646 START 0;

-- The chunks compressed, what they held before the first compression, and their batches'
-- totals for the planner. Keyed by OID: a dropped chunk's rows go with it (_forget_dropped_chunks).
CREATE TABLE analytics_internal.compressed_chunks (
    chunk             oid         PRIMARY KEY,
    hypertable        oid         NOT NULL,
    segment_by        name,
    order_by          name        NOT NULL,
    row_count         bigint      NOT NULL,
    compressed_bytes  bigint      NOT NULL,
    batch_count       int         NOT NULL,
    rows_before       bigint      NOT NULL,
    heap_bytes_before bigint      NOT NULL,
    toast_bytes_before bigint     NOT NULL,
    index_bytes_before bigint     NOT NULL,
    compressed_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per batch: up to 1,000 rows of one segment value, ordered by order_by; data holds
-- every column's stream (codec.rs), already compressed: stored out of line as it is.
CREATE TABLE analytics_internal.compressed_batches (
    chunk      oid    NOT NULL,
    batch_id   int    NOT NULL,
    row_count  int    NOT NULL,
    segment    bytea,
    min_order  bigint,
    max_order  bigint,
    data       bytea  NOT NULL,
    PRIMARY KEY (chunk, batch_id)
);
ALTER TABLE analytics_internal.compressed_batches ALTER COLUMN data SET STORAGE EXTERNAL;

-- Compressed rows deleted, or updated (moved_to: the new version, a heap row of the chunk).
CREATE TABLE analytics_internal.compressed_row_deletions (
    chunk     oid NOT NULL,
    batch_id  int NOT NULL,
    row_no    int NOT NULL,
    moved_to  tid,
    PRIMARY KEY (chunk, batch_id, row_no)
);

-- What compress_chunk segments and orders a hypertable's chunks by (add_compression_policy,
-- or the defaults: store_id when the table has it, and the time column).
CREATE TABLE analytics_internal.compression_settings (
    hypertable regclass PRIMARY KEY,
    segment_by name,
    order_by   name NOT NULL
);

-- The hypertable a chunk belongs to; raises when it is not a chunk.
CREATE FUNCTION analytics_internal._chunk_hypertable(chunk regclass) RETURNS analytics.hypertables
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h analytics.hypertables;
BEGIN
    SELECT hy.* INTO h FROM analytics.chunks c JOIN analytics.hypertables hy USING (hypertable_id) WHERE c.chunk = _chunk_hypertable.chunk;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% is not a chunk of a hypertable', chunk
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'SELECT chunk FROM analytics.chunks lists them (the default partition is not compressed).';
    END IF;
    RETURN h;
END
$$;

CREATE FUNCTION analytics_internal._compression_columns(h analytics.hypertables, OUT segment_by name, OUT order_by name)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(s.segment_by, d.segment_by), coalesce(s.order_by, h.time_column)
    FROM (SELECT (SELECT a.attname FROM pg_attribute a
                  WHERE a.attrelid = h.relation AND a.attname = 'store_id' AND NOT a.attisdropped AND a.attname <> h.time_column)
                 AS segment_by) AS d
    LEFT JOIN analytics_internal.compression_settings s ON s.hypertable = h.relation
$$;

-- 'uncompressed', 'compressed', or 'partially compressed' (rows arrived, or compressed rows
-- changed, since the last compression: the policy compresses it again).
CREATE FUNCTION analytics_internal._compression_state(chunk regclass) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN a.amname IS DISTINCT FROM 'lacaja_compressed' THEN 'uncompressed'
                WHEN pg_relation_size(c.oid) = 0
                     AND NOT EXISTS (SELECT 1 FROM analytics_internal.compressed_row_deletions d WHERE d.chunk = c.oid)
                THEN 'compressed'
                ELSE 'partially compressed' END
    FROM pg_class c LEFT JOIN pg_am a ON a.oid = c.relam
    WHERE c.oid = chunk
$$;

-- Switches a chunk between heap and lacaja_compressed in the catalog, with the dependency
-- that keeps DROP EXTENSION from leaving a table without its access method. No rewrite: the
-- heap file is the same under both. The caller holds ACCESS EXCLUSIVE on the chunk.
CREATE FUNCTION analytics_internal._set_access_method(chunk regclass, method name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    method_oid constant oid := (SELECT a.oid FROM pg_am a WHERE a.amname = method AND a.amtype = 't');
    compressed constant oid := (SELECT a.oid FROM pg_am a WHERE a.amname = 'lacaja_compressed');
BEGIN
    UPDATE pg_class SET relam = method_oid WHERE oid = chunk;
    DELETE FROM pg_depend d
    WHERE d.classid = 'pg_class'::regclass AND d.objid = chunk AND d.refclassid = 'pg_am'::regclass AND d.refobjid = compressed;
    IF method_oid = compressed THEN
        INSERT INTO pg_depend (classid, objid, objsubid, refclassid, refobjid, refobjsubid, deptype)
        VALUES ('pg_class'::regclass, chunk, 0, 'pg_am'::regclass, compressed, 0, 'n');
    END IF;
END
$$;

-- The unique btree indexes of a chunk keep an entry per compressed row (Postgres enforces the
-- keys with them, and INSERT … ON CONFLICT, LA-CAJA's sync, finds its conflicts there). Nobody
-- adds to them in sorted order once the chunk is compressed, so they are built packed
-- (fillfactor 100: about 10 % smaller than the default 90); decompressing gives them back the
-- fillfactor of the hypertable's index they belong to. The caller rebuilds them.
CREATE FUNCTION analytics_internal._pack_unique_indexes(chunk regclass, packed boolean) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    unique_index record;
BEGIN
    FOR unique_index IN
        SELECT i.indexrelid::regclass AS index_name,
               (SELECT o.option_value FROM pg_inherits inh JOIN pg_class parent ON parent.oid = inh.inhparent,
                       pg_options_to_table(parent.reloptions) o
                WHERE inh.inhrelid = i.indexrelid AND o.option_name = 'fillfactor') AS parent_fillfactor
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam
        WHERE i.indrelid = chunk AND i.indisunique AND a.amname = 'btree'
    LOOP
        IF packed THEN
            EXECUTE format('ALTER INDEX %s SET (fillfactor = 100)', unique_index.index_name);
        ELSIF unique_index.parent_fillfactor IS NOT NULL THEN
            EXECUTE format('ALTER INDEX %s SET (fillfactor = %s)', unique_index.index_name, unique_index.parent_fillfactor::integer);
        ELSE
            EXECUTE format('ALTER INDEX %s RESET (fillfactor)', unique_index.index_name);
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION analytics.compress_chunk(uncompressed_chunk regclass, if_not_compressed boolean DEFAULT true)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    the_chunk constant regclass := uncompressed_chunk;
    h constant analytics.hypertables := analytics_internal._chunk_hypertable(uncompressed_chunk);
    columns record;
    state text;
    result record;
BEGIN
    PERFORM analytics_internal._require_owner(h.relation);
    state := analytics_internal._compression_state(the_chunk);
    IF state = 'compressed' THEN
        IF if_not_compressed THEN
            RAISE NOTICE 'chunk % is already compressed', the_chunk;
            RETURN the_chunk;
        END IF;
        RAISE EXCEPTION 'chunk % is already compressed', the_chunk
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Pass if_not_compressed => true to accept that.';
    END IF;
    -- readers and late writers of this one chunk wait for it; never queued in front of them
    PERFORM analytics_internal._lock_tables(ARRAY[the_chunk::text], 'ACCESS EXCLUSIVE');
    columns := analytics_internal._compression_columns(h);
    IF state = 'uncompressed' THEN
        INSERT INTO analytics_internal.compressed_chunks AS cc
            (chunk, hypertable, segment_by, order_by, row_count, compressed_bytes, batch_count, rows_before,
             heap_bytes_before, toast_bytes_before, index_bytes_before)
        SELECT the_chunk, h.relation, columns.segment_by, columns.order_by, 0, 0, 0, coalesce(greatest(c.reltuples, 0), 0)::bigint,
               pg_relation_size(the_chunk), pg_table_size(the_chunk) - pg_relation_size(the_chunk), pg_indexes_size(the_chunk)
        FROM pg_class c WHERE c.oid = the_chunk;
        PERFORM analytics_internal._set_access_method(the_chunk, 'lacaja_compressed');
        -- a parallel scan of the heap would hand every worker all the batches
        EXECUTE format('ALTER TABLE %s SET (parallel_workers = 0)', the_chunk);
    ELSE
        -- rows that arrived since count as they were stored before this compression
        UPDATE analytics_internal.compressed_chunks cc
        SET heap_bytes_before = cc.heap_bytes_before + pg_relation_size(the_chunk),
            toast_bytes_before = cc.toast_bytes_before + pg_table_size(the_chunk) - pg_relation_size(the_chunk)
        WHERE cc.chunk = the_chunk;
    END IF;
    SELECT * INTO result FROM analytics_internal._compress_chunk_rows(the_chunk, columns.segment_by, columns.order_by);
    PERFORM analytics_internal._pack_unique_indexes(the_chunk, true);
    EXECUTE format('REINDEX TABLE %s', the_chunk);
    UPDATE analytics_internal.compressed_chunks cc
    SET row_count = result.rows, compressed_bytes = result.compressed_bytes, batch_count = result.batches,
        rows_before = CASE WHEN state = 'uncompressed' THEN result.rows ELSE cc.rows_before END,
        segment_by = columns.segment_by, order_by = columns.order_by, compressed_at = now()
    WHERE cc.chunk = the_chunk;
    RETURN the_chunk;
END
$$;

CREATE FUNCTION analytics.decompress_chunk(compressed_chunk regclass, if_compressed boolean DEFAULT true)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    the_chunk constant regclass := compressed_chunk;
    h constant analytics.hypertables := analytics_internal._chunk_hypertable(compressed_chunk);
BEGIN
    PERFORM analytics_internal._require_owner(h.relation);
    IF analytics_internal._compression_state(the_chunk) = 'uncompressed' THEN
        IF if_compressed THEN
            RAISE NOTICE 'chunk % is not compressed', the_chunk;
            RETURN the_chunk;
        END IF;
        RAISE EXCEPTION 'chunk % is not compressed', the_chunk
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Pass if_compressed => true to accept that.';
    END IF;
    PERFORM analytics_internal._lock_tables(ARRAY[the_chunk::text], 'ACCESS EXCLUSIVE');
    PERFORM analytics_internal._decompress_chunk_rows(the_chunk);
    DELETE FROM analytics_internal.compressed_batches b WHERE b.chunk = the_chunk;
    DELETE FROM analytics_internal.compressed_row_deletions d WHERE d.chunk = the_chunk;
    DELETE FROM analytics_internal.compressed_chunks cc WHERE cc.chunk = the_chunk;
    PERFORM analytics_internal._set_access_method(the_chunk, 'heap');
    EXECUTE format('ALTER TABLE %s RESET (parallel_workers)', the_chunk);
    PERFORM analytics_internal._pack_unique_indexes(the_chunk, false);
    EXECUTE format('REINDEX TABLE %s', the_chunk);
    RETURN the_chunk;
END
$$;

-- Bytes per chunk before and after, every part counted: the chunk's heap, TOAST and indexes
-- as they are now, and what compression keeps beside them (its batches, each row with its
-- tuple header and line pointer, its share of the batches' primary key, and its deletions).
-- Before: what the chunk held when first compressed, plus what arrived and was folded in since.
CREATE FUNCTION analytics.compression_stats(hypertable regclass)
RETURNS TABLE (chunk regclass, status text, row_count bigint, before_heap bigint, before_toast bigint, before_indexes bigint,
               before_total bigint, after_heap bigint, after_toast bigint, after_indexes bigint, after_compressed bigint,
               after_total bigint, ratio numeric)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h constant analytics.hypertables := analytics_internal._hypertable(hypertable);
    batch_key_bytes_per_batch constant float8 := (
        SELECT pg_relation_size('analytics_internal.compressed_batches_pkey')::float8 / greatest(count(*), 1)
        FROM analytics_internal.compressed_batches);
BEGIN
    PERFORM analytics_internal._require_owner(h.relation);
    RETURN QUERY
    SELECT c.chunk, analytics_internal._compression_state(c.chunk),
           coalesce(cc.row_count, greatest(k.reltuples, 0)::bigint),
           coalesce(cc.heap_bytes_before, pg_relation_size(c.chunk)),
           coalesce(cc.toast_bytes_before, pg_table_size(c.chunk) - pg_relation_size(c.chunk)),
           coalesce(cc.index_bytes_before, pg_indexes_size(c.chunk)),
           coalesce(cc.heap_bytes_before + cc.toast_bytes_before + cc.index_bytes_before, pg_total_relation_size(c.chunk)),
           pg_relation_size(c.chunk), pg_table_size(c.chunk) - pg_relation_size(c.chunk), pg_indexes_size(c.chunk),
           b.bytes, pg_total_relation_size(c.chunk) + b.bytes,
           round((coalesce(cc.heap_bytes_before + cc.toast_bytes_before + cc.index_bytes_before, pg_total_relation_size(c.chunk))::numeric
                  / greatest(pg_total_relation_size(c.chunk) + b.bytes, 1)), 2)
    FROM analytics.chunks c
    JOIN pg_class k ON k.oid = c.chunk
    LEFT JOIN analytics_internal.compressed_chunks cc ON cc.chunk = c.chunk
    CROSS JOIN LATERAL (
        SELECT (coalesce((SELECT sum(pg_column_size(x.*) + 28 + batch_key_bytes_per_batch)
                          FROM analytics_internal.compressed_batches x WHERE x.chunk = c.chunk), 0)
                + coalesce((SELECT sum(pg_column_size(d.*) + 28 + 16)
                            FROM analytics_internal.compressed_row_deletions d WHERE d.chunk = c.chunk), 0))::bigint AS bytes
    ) AS b
    WHERE c.hypertable_id = h.hypertable_id
    ORDER BY c.range_start;
END
$$;

-- A policy: a job that compresses, at each run, the oldest chunk that ended compress_after ago
-- and is not (fully) compressed — one chunk per run and transaction, so that each chunk's lock
-- is held only for its own compression and a failure leaves the others as they were.
CREATE PROCEDURE analytics_internal.policy_compression(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    h constant analytics.hypertables := analytics_internal._job_hypertable(config);
    next_chunk regclass;
BEGIN
    SELECT c.chunk INTO next_chunk FROM analytics.chunks c
    WHERE c.hypertable_id = h.hypertable_id AND c.range_end <= now() - (config ->> 'compress_after')::interval
      AND analytics_internal._compression_state(c.chunk) <> 'compressed'
    ORDER BY c.range_start LIMIT 1;
    IF next_chunk IS NOT NULL THEN
        PERFORM analytics.compress_chunk(next_chunk);
    END IF;
END
$$;

CREATE FUNCTION analytics.add_compression_policy(hypertable regclass, compress_after interval, if_not_exists boolean DEFAULT false,
                                                 schedule_interval interval DEFAULT NULL, initial_start timestamptz DEFAULT NULL,
                                                 timezone text DEFAULT NULL, segment_by name DEFAULT NULL, order_by name DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h constant analytics.hypertables := analytics_internal._hypertable(hypertable);
    existing int;
    job int;
    order_type regtype;
BEGIN
    PERFORM analytics_internal._require_owner(h.relation);
    IF compress_after IS NULL OR compress_after <= interval '0' THEN
        RAISE EXCEPTION 'compress_after must be a positive interval, not %', coalesce(compress_after::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF segment_by IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = h.relation AND a.attname = segment_by
                                              AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column % of % does not exist', segment_by, hypertable USING ERRCODE = 'undefined_column',
            HINT = 'segment_by names the column whose value every row of a batch shares (store_id for LA-CAJA''s tables).';
    END IF;
    SELECT a.atttypid::regtype INTO order_type FROM pg_attribute a
    WHERE a.attrelid = h.relation AND a.attname = coalesce(order_by, h.time_column) AND a.attnum > 0 AND NOT a.attisdropped;
    IF order_type IS NULL OR order_type NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype,
                                                 'smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
        RAISE EXCEPTION 'order_by % of % must be a time or integer column', coalesce(order_by, h.time_column), hypertable
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave it out to order by the time column.';
    END IF;
    SELECT j.job_id INTO existing FROM analytics.jobs j
    WHERE j.proc = 'analytics_internal.policy_compression'::regproc AND (j.config ->> 'hypertable_id')::int = h.hypertable_id;
    IF existing IS NOT NULL THEN
        IF if_not_exists THEN
            RAISE NOTICE 'compression policy already exists for hypertable "%", skipping', hypertable;
            RETURN existing;
        END IF;
        RAISE EXCEPTION 'compression policy already exists for hypertable "%"', hypertable USING ERRCODE = 'duplicate_object',
            HINT = format('Remove it first: SELECT analytics.remove_compression_policy(%L);', hypertable::text);
    END IF;
    IF segment_by IS NOT NULL OR order_by IS NOT NULL THEN
        INSERT INTO analytics_internal.compression_settings AS s (hypertable, segment_by, order_by)
        VALUES (h.relation, segment_by, coalesce(order_by, h.time_column))
        ON CONFLICT ON CONSTRAINT compression_settings_pkey DO UPDATE SET segment_by = excluded.segment_by, order_by = excluded.order_by;
    END IF;
    job := analytics.add_job('analytics_internal.policy_compression'::regproc,
                             coalesce(schedule_interval, least(analytics_internal._fixed_interval(h.chunk_interval), interval '1 hour')),
                             jsonb_build_object('hypertable_id', h.hypertable_id, 'compress_after', compress_after),
                             initial_start => initial_start, timezone => timezone);
    PERFORM analytics_internal._label_job(job, format('Compression Policy [%s]', job), hypertable);
    RETURN job;
END
$$;

CREATE FUNCTION analytics.remove_compression_policy(hypertable regclass, if_exists boolean DEFAULT false) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h constant analytics.hypertables := analytics_internal._hypertable(hypertable);
    id constant int := (SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics_internal.policy_compression'::regproc
                        AND (j.config ->> 'hypertable_id')::int = h.hypertable_id);
BEGIN
    IF id IS NULL THEN
        IF if_exists THEN
            RAISE NOTICE 'compression policy not found for hypertable "%", skipping', hypertable;
            RETURN false;
        END IF;
        RAISE EXCEPTION 'compression policy not found for hypertable "%"', hypertable USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM analytics.delete_job(id);
    RETURN true;
END
$$;

-- A rewrite (ALTER COLUMN … TYPE, SET LOGGED) would copy the rows into a new heap and leave
-- the batches behind under the same OID: refused, with what to do instead.
CREATE FUNCTION analytics_internal._refuse_compressed_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rewritten constant oid := pg_event_trigger_table_rewrite_oid();
BEGIN
    IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_am a ON a.oid = c.relam
               WHERE c.oid = rewritten AND a.amname = 'lacaja_compressed') THEN
        RAISE EXCEPTION 'cannot rewrite compressed chunk %', rewritten::regclass
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Decompress it first: SELECT analytics.decompress_chunk(''' || rewritten::regclass::text || ''');';
    END IF;
END
$$;
CREATE EVENT TRIGGER lacaja_analytics_compressed_rewrite ON table_rewrite
    EXECUTE FUNCTION analytics_internal._refuse_compressed_rewrite();

-- A dropped chunk's batches go with it (drop_chunks, DROP TABLE, DROP … CASCADE).
CREATE FUNCTION analytics_internal._forget_dropped_chunks() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM analytics_internal.compressed_batches b
    WHERE b.chunk IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o
                      WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0);
    DELETE FROM analytics_internal.compressed_row_deletions d
    WHERE d.chunk IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o
                      WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0);
    DELETE FROM analytics_internal.compressed_chunks c
    WHERE c.chunk IN (SELECT o.objid FROM pg_event_trigger_dropped_objects() o
                      WHERE o.classid = 'pg_class'::regclass AND o.objsubid = 0);
END
$$;
CREATE EVENT TRIGGER lacaja_analytics_compressed_drop ON sql_drop
    EXECUTE FUNCTION analytics_internal._forget_dropped_chunks();

SELECT pg_catalog.pg_extension_config_dump('analytics_internal.compression_settings', '');
REVOKE ALL ON analytics_internal.compressed_chunks, analytics_internal.compressed_batches,
              analytics_internal.compressed_row_deletions, analytics_internal.compression_settings,
              analytics_internal.compressed_batch_ids FROM PUBLIC;
REVOKE ALL ON FUNCTION analytics_internal."_decompress_chunk_rows"(oid), analytics_internal."_compress_chunk_rows"(oid, text, text),
              analytics_internal.lacaja_compressed_am_handler(internal), analytics_internal._chunk_hypertable(regclass),
              analytics_internal._compression_columns(analytics.hypertables), analytics_internal._compression_state(regclass),
              analytics_internal._set_access_method(regclass, name), analytics_internal._pack_unique_indexes(regclass, boolean),
              analytics.compress_chunk(regclass, boolean),
              analytics.decompress_chunk(regclass, boolean), analytics_internal._refuse_compressed_rewrite(),
              analytics_internal._forget_dropped_chunks(), analytics.compression_stats(regclass),
              analytics.add_compression_policy(regclass, interval, boolean, interval, timestamptz, text, name, name),
              analytics.remove_compression_policy(regclass, boolean) FROM PUBLIC;
REVOKE ALL ON PROCEDURE analytics_internal.policy_compression(int, jsonb) FROM PUBLIC;

-- Streaming to Redis (new in 0.2.0): sql/streaming.sql as it stands, and the Rust it calls ---------

-- src/streaming.rs
CREATE  FUNCTION analytics_internal."_streaming_enabled"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE  
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'streaming_enabled_wrapper';
-- src/capture/triggers.rs
CREATE FUNCTION analytics_internal."_stream_events"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', '_stream_events_wrapper';

-- Events to Redis Streams (SPEC §3, `lacaja_analytics.redis_url`): an outbox written in the
-- writer's transaction, drained by the publisher worker (src/streaming.rs).
--
-- Only committed events are published, and none is forgotten: an event reaches the outbox in
-- the transaction that inserts it (rolled back with it), and leaves it only once Redis has
-- acknowledged its XADD. The worker reads what is visible (committed), oldest transaction
-- first, and deletes what it shipped: no "last shipped position" that a transaction
-- committing out of sequence order would slip behind.

-- No primary key: the publisher deletes what it sent by ctid, so an event costs one index entry.
-- Written by the Rust trigger on LA-CAJA's events (src/capture/triggers.rs, `_stream_events`)
-- without SQL, every column given: the defaults are documentation.
CREATE TABLE analytics_internal.stream_outbox (
    id bigint GENERATED BY DEFAULT AS IDENTITY,
    -- the writing transaction: the publisher ships transactions in this order among those that
    -- committed since its last look, so a transaction's events follow those of every
    -- transaction that committed before it began
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    -- the event as LA-CAJA stored it, copied (no output function on the POS path; the
    -- publisher renders the text); NULL where LA-CAJA's column is missing or of another type
    store_id uuid,
    event_id uuid,
    type text,
    payload jsonb,
    created_at timestamptz,
    seq bigint
);
CREATE INDEX stream_outbox_order ON analytics_internal.stream_outbox (xid, id);

-- Stores whose figures a committed transaction changed (written at commit by the capture,
-- src/capture/fold.rs, only while streaming is on): the publisher rewrites their cached
-- dashboard. A row per transaction and store, no key: two registers of one store never wait
-- for each other here; the publisher coalesces.
CREATE TABLE analytics_internal.cache_outbox (
    store_id uuid NOT NULL,
    noted_at timestamptz NOT NULL DEFAULT now()
);

-- What the publisher last did, for stream_status and health().
CREATE TABLE analytics_internal.stream_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    published bigint NOT NULL DEFAULT 0,
    last_published_at timestamptz,
    connected boolean NOT NULL DEFAULT false,
    last_error text,
    last_error_at timestamptz,
    cache_refreshes bigint NOT NULL DEFAULT 0,
    last_cache_refresh_at timestamptz,
    -- events dropped from a full outbox (lacaja_analytics.stream_outbox_max_rows) during an
    -- outage: they stay in LA-CAJA's events table, not on the streams
    dropped bigint NOT NULL DEFAULT 0,
    last_dropped_at timestamptz
);
INSERT INTO analytics_internal.stream_state DEFAULT VALUES;

-- Puts the trigger on the attached schema's events once streaming is on (the publisher calls
-- it): with the lock taken by short tries, never queued in front of a sync. Bound to the
-- extension, so that DROP EXTENSION removes it.
CREATE FUNCTION analytics_internal._ensure_stream_trigger() RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    events constant regclass := (SELECT analytics_internal._source_table(c.source_schema, 'events')
                                 FROM analytics_internal.source_config c);
BEGIN
    IF events IS NULL THEN
        RETURN 'no events table in the attached schema';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = events AND t.tgname = 'lacaja_analytics_stream_events') THEN
        PERFORM analytics_internal._lock_tables(ARRAY[events::text], 'SHARE ROW EXCLUSIVE');
        EXECUTE format('CREATE TRIGGER lacaja_analytics_stream_events AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION analytics_internal._stream_events()', events);
    END IF;
    -- also one a restore brought back (a dump holds it; pg_restore creates it unbound)
    PERFORM analytics_internal._bind_trigger(events, 'lacaja_analytics_stream_events');
    RETURN 'capturing ' || events::text;
END
$$;

-- Called by the capture as a transaction commits: the stores it changed (those of its sales,
-- stock rows and moved sales), and the stores of the sales and sale items whose item facts it
-- recomputes (returns), looked up in the attached schema.
CREATE FUNCTION analytics_internal._note_changed_stores(stores uuid[], sale_ids uuid[], item_ids uuid[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source constant name := (SELECT c.source_schema FROM analytics_internal.source_config c);
    found uuid[] := stores;
    more uuid[];
BEGIN
    IF cardinality(sale_ids) > 0 AND source IS NOT NULL THEN
        EXECUTE format('SELECT array_agg(s.store_id) FROM %I.sales s WHERE s.id = ANY ($1)', source) INTO more USING sale_ids;
        found := found || more;
    END IF;
    IF cardinality(item_ids) > 0 AND source IS NOT NULL THEN
        EXECUTE format('SELECT array_agg(s.store_id) FROM %1$I.sale_items i JOIN %1$I.sales s ON s.id = i.sale_id WHERE i.id = ANY ($1)',
                       source) INTO more USING item_ids;
        found := found || more;
    END IF;
    INSERT INTO analytics_internal.cache_outbox (store_id) SELECT DISTINCT f FROM unnest(found) AS f WHERE f IS NOT NULL;
END
$$;

-- An outage longer than the outbox holds: the oldest events beyond `max_rows` are dropped
-- (counted in stream_state; LA-CAJA's events table keeps them), and the cache outbox is
-- folded to one row per store. Returns the events dropped. Called by the publisher while it
-- cannot publish.
CREATE FUNCTION analytics_internal._bound_outbox(max_rows bigint) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    excess constant bigint := (SELECT count(*) FROM analytics_internal.stream_outbox) - max_rows;
    stores uuid[];
BEGIN
    IF excess > 0 THEN
        DELETE FROM analytics_internal.stream_outbox o
        WHERE o.ctid = ANY (ARRAY(SELECT x.ctid FROM analytics_internal.stream_outbox x ORDER BY x.xid, x.id LIMIT excess));
        UPDATE analytics_internal.stream_state SET dropped = dropped + excess, last_dropped_at = now();
    END IF;
    WITH gone AS (DELETE FROM analytics_internal.cache_outbox RETURNING store_id)
    SELECT array_agg(DISTINCT g.store_id) INTO stores FROM gone g;
    INSERT INTO analytics_internal.cache_outbox (store_id) SELECT unnest(stores);
    RETURN greatest(excess, 0);
END
$$;

CREATE VIEW analytics.stream_status AS
SELECT analytics_internal._streaming_enabled() AS enabled,
       EXISTS (SELECT 1 FROM analytics_internal.source_config c
               JOIN pg_trigger t ON t.tgrelid = to_regclass(format('%I.events', c.source_schema))
               WHERE t.tgname = 'lacaja_analytics_stream_events' AND t.tgenabled <> 'D') AS capturing,
       EXISTS (SELECT 1 FROM pg_stat_activity a
               WHERE a.backend_type = 'lacaja_analytics publisher' AND a.datname = current_database()) AS publisher_running,
       s.connected,
       (SELECT count(*) FROM analytics_internal.stream_outbox) AS backlog,
       (SELECT min(o.enqueued_at) FROM analytics_internal.stream_outbox o) AS oldest_pending,
       s.published, s.last_published_at, s.last_error, s.last_error_at,
       (SELECT count(DISTINCT c.store_id) FROM analytics_internal.cache_outbox c) AS cache_stores_pending,
       s.cache_refreshes, s.last_cache_refresh_at, s.dropped, s.last_dropped_at
FROM analytics_internal.stream_state s;
COMMENT ON VIEW analytics.stream_status IS
    'Events to Redis: whether it is on, the outbox backlog and its oldest event, what was published, the last error.';

-- health()'s lines about streaming: nothing while it is off.
CREATE FUNCTION analytics_internal._streaming_health() RETURNS TABLE (check_name text, status text, detail text, hint text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT 'streaming',
           CASE WHEN NOT s.publisher_running OR NOT s.capturing OR (s.backlog > 0 AND NOT s.connected)
                     OR s.oldest_pending < now() - interval '1 minute' OR s.last_dropped_at > now() - interval '1 day'
                THEN 'problem' ELSE 'ok' END,
           format('%s; %s event(s) waiting%s, %s published%s%s',
                  CASE WHEN NOT s.publisher_running THEN 'no publisher is running'
                       WHEN NOT s.capturing THEN 'events are not captured yet' ELSE 'publishing to Redis' END,
                  s.backlog, CASE WHEN s.oldest_pending IS NOT NULL
                                  THEN format(' (oldest since %s)', date_trunc('second', now() - s.oldest_pending)) ELSE '' END,
                  s.published,
                  CASE WHEN s.last_error IS NOT NULL AND (NOT s.connected OR NOT s.capturing)
                       THEN format('; last error: %s', s.last_error) ELSE '' END,
                  CASE WHEN s.dropped > 0 THEN format('; %s event(s) dropped from a full outbox, the last at %s', s.dropped, s.last_dropped_at)
                       ELSE '' END),
           CASE WHEN NOT s.publisher_running
                THEN 'Add lacaja_analytics to shared_preload_libraries, set lacaja_analytics.database to this database, restart.'
                WHEN NOT s.capturing
                THEN 'The publisher puts its trigger on events by short lock tries every 5 s and gives way to writers; '
                     'a long transaction that wrote to events (see pg_stat_activity) delays it. Events are streamed from then on.'
                WHEN s.backlog > 0 AND NOT s.connected THEN 'Check that Redis is reachable at lacaja_analytics.redis_url; events wait in the outbox.'
           END
    FROM analytics.stream_status s
    WHERE s.enabled
$$;

REVOKE ALL ON analytics_internal.stream_outbox, analytics_internal.stream_state, analytics_internal.cache_outbox,
              analytics.stream_status FROM PUBLIC;
REVOKE ALL ON SEQUENCE analytics_internal.stream_outbox_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION analytics_internal._stream_events(), analytics_internal._ensure_stream_trigger(),
              analytics_internal._streaming_enabled(), analytics_internal._note_changed_stores(uuid[], uuid[], uuid[]),
              analytics_internal._bound_outbox(bigint), analytics_internal._streaming_health() FROM PUBLIC;
-- the view runs them with its reader's rights (as install.sql grants what views name)
GRANT EXECUTE ON FUNCTION analytics_internal._streaming_enabled() TO PUBLIC;

-- Predictions (new in 0.2.0): src/forecast/forecast.sql as it stands, and the Rust it calls ------

CREATE  FUNCTION analytics_internal."_forecast_sales_json"(
	"stores" uuid[], /* Vec < Uuid > */
	"at" timestamp with time zone, /* TimestampWithTimeZone */
	"days" INT /* i32 */
) RETURNS jsonb /* JsonB */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_forecast_sales_json_wrapper';
CREATE  FUNCTION analytics_internal."_forecast_hourly_json"(
	"store" uuid, /* Uuid */
	"at" timestamp with time zone /* TimestampWithTimeZone */
) RETURNS jsonb /* JsonB */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_forecast_hourly_json_wrapper';
CREATE  FUNCTION analytics_internal."_stock_forecast_json"(
	"at" timestamp with time zone, /* TimestampWithTimeZone */
	"cover_days" INT, /* i32 */
	"products" jsonb /* JsonB */
) RETURNS jsonb /* JsonB */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_stock_forecast_json_wrapper';

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

-- kpis() gains forecast_today
CREATE OR REPLACE FUNCTION analytics_internal._kpis(store_id uuid, period_start date, period_end date, token bigint)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    allowed constant boolean := analytics_internal._check_reader(analytics_internal._redeem_caller(token), store_id);
    today constant date := analytics.store_today(store_id);
    last_day date := coalesce(period_end, CASE WHEN period_start IS NULL THEN today END);
    first_day date;
    days int;
    figures jsonb;
    period jsonb;
    previous jsonb;
    top jsonb;
    top_category jsonb;
    forecast jsonb;
BEGIN
    IF store_id IS NULL THEN
        RAISE EXCEPTION 'kpis needs a store id';
    END IF;
    first_day := coalesce(period_start, last_day - 29);
    last_day := coalesce(last_day, first_day + 29);
    IF first_day > last_day THEN
        RAISE EXCEPTION 'period_start % is after period_end %', first_day, last_day;
    END IF;
    days := last_day - first_day + 1;
    figures := analytics_internal._period_figures(store_id, ARRAY['today', 'period', 'previous_period'],
                                         ARRAY[today, first_day, first_day - days], ARRAY[today, last_day, first_day - 1]);
    period := figures -> 'period';
    previous := figures -> 'previous_period';
    WITH sold AS MATERIALIZED (SELECT * FROM analytics_internal._products_sold(store_id, first_day, last_day))
    SELECT (SELECT jsonb_build_object('product_id', p.product_id, 'name', p.name, 'net_qty', p.net_qty)
            FROM sold p WHERE p.net_qty <> 0 ORDER BY p.net_qty DESC, p.product_id LIMIT 1),
           (SELECT jsonb_build_object('category', p.category, 'net_qty', sum(p.net_qty))
            FROM sold p WHERE p.category IS NOT NULL
            GROUP BY p.category HAVING sum(p.net_qty) <> 0 ORDER BY sum(p.net_qty) DESC, p.category LIMIT 1)
      INTO top, top_category;
    -- what today should bring (src/forecast): the figures and the 80 % interval, or why not;
    -- the dashboard never fails for it
    BEGIN
        forecast := (SELECT f - 'store_id' - 'day'
                     FROM jsonb_array_elements(analytics_internal._forecast_sales_json(ARRAY[_kpis.store_id], now(), 1)) AS f);
    EXCEPTION WHEN OTHERS THEN
        forecast := jsonb_build_object('status', 'unavailable', 'note', SQLERRM);
    END;
    RETURN jsonb_build_object(
        'store_id', store_id,
        'timezone', analytics.store_timezone(store_id),
        'today', figures -> 'today',
        'period', period,
        'previous_period', previous,
        'growth_percentage', CASE WHEN (previous ->> 'total_bs')::numeric <> 0
            THEN round(((period ->> 'total_bs')::numeric - (previous ->> 'total_bs')::numeric)
                       / (previous ->> 'total_bs')::numeric * 100, 2) END,
        'inventory', (SELECT to_jsonb(m) FROM (
                          SELECT f.total_products, f.low_stock_count, f.out_of_stock_count, f.stock_value_bs, f.stock_value_usd
                          FROM analytics_internal._inventory_figures(_kpis.store_id) AS f) AS m),
        'top_product', top,
        'top_category', top_category,
        'forecast_today', forecast);
END
$$;


REVOKE ALL ON analytics_internal.stock_out_alert_state FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('analytics_internal.stock_out_alert_state', '');
REVOKE ALL ON FUNCTION analytics_internal._forecast_sales_json(uuid[], timestamptz, int), analytics_internal._forecast_hourly_json(uuid, timestamptz),
              analytics_internal._stock_forecast_json(timestamptz, int, jsonb), analytics_internal._forecast_origins(uuid[], timestamptz),
              analytics_internal._forecast_history(uuid[], timestamptz, int), analytics_internal._forecast_days(uuid[], timestamptz, int),
              analytics_internal._forecast_hours(uuid[], timestamptz, int), analytics_internal._forecast_holidays(uuid[], timestamptz, int),
              analytics_internal._forecast_demand(uuid[], timestamptz, int),
              analytics_internal._forecast_products(uuid), analytics_internal._forecast_products_body(regclass),
              analytics_internal._forecast_sales(uuid, int, timestamptz, bigint), analytics.forecast_sales(uuid, int, timestamptz),
              analytics_internal._forecast_sales_hourly(uuid, timestamptz, bigint), analytics.forecast_sales_hourly(uuid, timestamptz),
              analytics_internal._stock_outlook(int, timestamptz, jsonb), analytics_internal._products_in_stock(uuid[]),
              analytics_internal._stock_forecast(uuid, int, bigint), analytics.stock_forecast(uuid, int),
              analytics.refresh_forecast_alerts(int, timestamptz), analytics.add_forecast_alerts_policy(interval, int)
    FROM PUBLIC;
REVOKE ALL ON PROCEDURE analytics_internal.policy_forecast_alerts(int, jsonb) FROM PUBLIC;
-- the public API and what its wrappers name (as install.sql grants them)
GRANT EXECUTE ON FUNCTION analytics.forecast_sales(uuid, int, timestamptz), analytics.forecast_sales_hourly(uuid, timestamptz),
                          analytics.stock_forecast(uuid, int), analytics_internal._forecast_sales(uuid, int, timestamptz, bigint),
                          analytics_internal._forecast_sales_hourly(uuid, timestamptz, bigint),
                          analytics_internal._stock_forecast(uuid, int, bigint)
    TO PUBLIC;

-- An attached database: its capture was built by 0.1.0's attach() (the generated fold bodies
-- are the same in 0.2.0); it gains the triggers that note writes made with triggers off, and
-- readers of the stock that follow warehouse_stock.
DO $$
DECLARE
    schema_name constant name := (SELECT c.source_schema FROM analytics_internal.source_config c);
BEGIN
    IF schema_name IS NOT NULL THEN
        PERFORM analytics_internal._lock_capture_tables(schema_name);
        INSERT INTO analytics_internal.capture_established (source_schema)
        SELECT c.source_schema_oid FROM analytics_internal.source_config c;
        PERFORM analytics_internal._create_replica_triggers(schema_name, true);
        -- the readers of LA-CAJA's stock, lots and rates, and the drift
        PERFORM analytics_internal._generate_readers();
        -- the fold of the ledger per warehouse, and the ledger recomputed (its table is new)
        PERFORM analytics_internal._set_fold_rows_body(analytics_internal._fold_rows_body());
        EXECUTE (SELECT format('WITH measured AS (%s) %s',
                               analytics_internal._measured_sql('stock', analytics_internal._source_rows_sql('stock', 'true')),
                               analytics_internal._add_to_parts_sql(c, analytics_internal._aggregate_sql(c, 'measured'), '0', true))
                 FROM analytics_internal.rollup_catalog c WHERE c.name = 'product_stock')
        WHERE EXISTS (SELECT 1 FROM analytics_internal.source_config c WHERE c.stock_source IS NOT NULL);
    END IF;
END
$$;
