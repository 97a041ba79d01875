-- Who may read what (docs/security.md). Runs before every other capability's SQL: views and
-- functions below call these checks.

REVOKE ALL ON SCHEMA analytics_internal FROM PUBLIC;
COMMENT ON SCHEMA analytics_internal IS
    'lacaja_analytics internals: only the extension''s owner may use this schema. The API is schema analytics.';

-- Store isolation: one predicate of store_id decides which stores a role sees.
CREATE TABLE analytics_internal.store_isolation (
    singleton  boolean      PRIMARY KEY DEFAULT true CHECK (singleton),
    predicate  regprocedure NOT NULL,
    enabled_at timestamptz  NOT NULL DEFAULT now()
);

-- The dashboard functions' check of their caller: it may read the rollups (it has SELECT on
-- analytics.sales_daily, as a dashboard role given the README's grants has) and, when a store
-- is named, may see that store. Raises insufficient_privilege otherwise; returns true.
CREATE FUNCTION analytics_internal._check_reader(caller oid, store_id uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT has_table_privilege(caller, 'analytics.sales_daily', 'SELECT') THEN
        RAISE EXCEPTION 'permission denied to read the analytics rollups'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'GRANT USAGE ON SCHEMA analytics and SELECT ON ALL TABLES IN SCHEMA analytics to this role.';
    END IF;
    IF store_id IS NOT NULL AND NOT analytics_internal._store_visible_to(caller, store_id) THEN
        RAISE EXCEPTION 'store % is not visible to role %', store_id, pg_get_userbyid(caller)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Store isolation is on: its predicate decides which stores a role sees.';
    END IF;
    RETURN true;
END
$$;

-- The tables of analytics readers may be granted that hold per-store rows.
CREATE FUNCTION analytics_internal._per_store_tables() RETURNS SETOF regclass
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'store_id' AND NOT a.attisdropped
    WHERE c.relnamespace = 'analytics'::regnamespace AND c.relkind IN ('r', 'p')
    ORDER BY c.relname
$$;

-- Row-level security changes need ACCESS EXCLUSIVE, and the capture reads store_settings on
-- every sale: all the tables are locked at once with short, retried tries (the conversion's
-- way), so that the change gives way to sales instead of queueing them behind a report.
CREATE FUNCTION analytics_internal._lock_per_store_tables() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._lock_tables(ARRAY(SELECT t::text FROM analytics_internal._per_store_tables() AS t),
                                            'ACCESS EXCLUSIVE');
END
$$;

CREATE FUNCTION analytics.enable_store_isolation(predicate regprocedure) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass;
    tables text[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = predicate AND p.prokind = 'f' AND p.pronargs = 1
                   AND p.proargtypes[0] = 'uuid'::regtype AND p.prorettype = 'boolean'::regtype AND NOT p.proretset) THEN
        RAISE EXCEPTION 'store predicate % must be a function (store_id uuid) RETURNS boolean', predicate
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example: CREATE FUNCTION app.may_see_store(store_id uuid) RETURNS boolean ... current_user ...';
    END IF;
    INSERT INTO analytics_internal.store_isolation AS i (predicate) VALUES (predicate)
    ON CONFLICT (singleton) DO UPDATE SET predicate = excluded.predicate, enabled_at = now();
    PERFORM analytics_internal._lock_per_store_tables();
    FOR t IN SELECT * FROM analytics_internal._per_store_tables() LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS lacaja_store_isolation ON %s', t);
        -- rows of no store (national holidays) are everyone's
        EXECUTE format('CREATE POLICY lacaja_store_isolation ON %s USING (store_id IS NULL OR analytics_internal._store_visible(store_id))', t);
        tables := tables || t::text;
    END LOOP;
    RETURN jsonb_build_object('predicate', predicate::text, 'row_level_security', to_jsonb(tables),
        'views_and_functions', 'every view and dashboard function of analytics filters by the predicate, run as the reader');
END
$$;

CREATE FUNCTION analytics.disable_store_isolation() RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass;
    tables text[] := '{}';
BEGIN
    DELETE FROM analytics_internal.store_isolation;
    PERFORM analytics_internal._lock_per_store_tables();
    FOR t IN SELECT * FROM analytics_internal._per_store_tables() LOOP
        EXECUTE format('DROP POLICY IF EXISTS lacaja_store_isolation ON %s', t);
        EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', t);
        tables := tables || t::text;
    END LOOP;
    RETURN jsonb_build_object('row_level_security_removed', to_jsonb(tables));
END
$$;
