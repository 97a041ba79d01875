-- Dump and restore, and writes that bypass the capture triggers.
--
-- pg_dump keeps the rollups together with the source rows they sum, in its one snapshot (the
-- extension's tables are marked with pg_extension_config_dump, install.sql), and the capture
-- triggers with their tables. It cannot keep what attach() generated into the extension's own
-- functions, nor the triggers' binding to the extension. pg_restore creates the extension first
-- (nothing to attach to yet), then the tables and every table's data, then the triggers: each
-- capture trigger it creates fires the event trigger below, which binds it and — once — rebuilds
-- the generated bodies from the restored source_config. A restored database so captures at once,
-- with rollups equal to the source's, without a refresh. docs/operations.md says what a DBA sees.

-- Whether this database's capture was built by attach() (or rebuilt after a restore). Not
-- dumped: empty in a restored database until its capture triggers are back.
CREATE TABLE analytics_internal.capture_established (
    singleton      boolean      PRIMARY KEY DEFAULT true CHECK (singleton),
    source_schema  regnamespace NOT NULL,
    established_at timestamptz  NOT NULL DEFAULT now()
);
COMMENT ON TABLE analytics_internal.capture_established IS
    'The capture''s generated functions were built in this database (not dumped: empty after a restore until its triggers are restored).';

-- A capture trigger pg_restore creates is bound to the extension when it is one attach() makes
-- (its name on its table, _expected_capture_triggers, from the restored source_config) and
-- calls the extension's function; a trigger of that name anywhere else stays nobody's, and the
-- capture's functions refuse to run for it.
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

-- ALWAYS: a restore run with session_replication_role = replica re-establishes capture too.
CREATE EVENT TRIGGER lacaja_analytics_restore_capture ON ddl_command_end WHEN TAG IN ('CREATE TRIGGER')
    EXECUTE FUNCTION analytics_internal._on_trigger_created();
ALTER EVENT TRIGGER lacaja_analytics_restore_capture ENABLE ALWAYS;

-- Writes with triggers off -------------------------------------------------------------------
--
-- With session_replication_role = replica (a restore or bulk load run that way, a logical
-- replication apply worker) the capture triggers do not fire. Capturing such writes anyway
-- could count them twice (the rollups may be loaded or replicated along with them), so they are
-- noted instead — by row triggers that fire only in that mode (ENABLE ALWAYS with a WHEN on the
-- setting: a POS write pays one comparison) — and the continuous-aggregate policy compares the
-- noted keys with the source and repairs them (_repair_replica_writes below).

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

-- The two noting triggers of each captured table (bound to the extension; see
-- _create_capture_triggers for create_triggers).
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

-- Repairs the keys noted above (called by the continuous-aggregate policy): sales and their
-- items by the UTC days noted, widened by a day on each side for every zone, in runs of days
-- close together; stock by store; a truncate, or anything that cannot be placed, everything.
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
