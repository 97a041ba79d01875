-- Time series: TimescaleDB's API over native partitioning (hypertables, chunks, retention,
-- continuous-aggregate policies) and the SQL variants of time_bucket.

-- time_bucket with an offset: TimescaleDB defines them the same way (bucket the shifted
-- time, shift the bucket back), with the same volatility.
CREATE FUNCTION analytics.time_bucket(bucket_width interval, ts timestamp, "offset" interval) RETURNS timestamp
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT analytics.time_bucket(bucket_width, ts - "offset") + "offset"
$$;
CREATE FUNCTION analytics.time_bucket(bucket_width interval, ts timestamptz, "offset" interval) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT analytics.time_bucket(bucket_width, ts - "offset") + "offset"
$$;
CREATE FUNCTION analytics.time_bucket(bucket_width interval, ts date, "offset" interval) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT (analytics.time_bucket(bucket_width, ts - "offset") + "offset")::date
$$;

-- Hypertables ----------------------------------------------------------------------------
--
-- A hypertable is a table partitioned by range of its time column into chunks of
-- chunk_interval, aligned to the Unix epoch as TimescaleDB aligns them, plus a default
-- partition that takes any row no chunk covers (an offline register's sale from last year,
-- a clock in the future): the POS is never refused. The maintenance job creates chunks
-- ahead of time and drains the default partition into proper chunks.

CREATE TABLE analytics.hypertables (
    hypertable_id  serial      PRIMARY KEY,
    relation       regclass    NOT NULL UNIQUE,
    time_column    name        NOT NULL,
    time_type      regtype     NOT NULL,
    chunk_interval interval    NOT NULL,
    chunks_ahead   int         NOT NULL DEFAULT 7 CHECK (chunks_ahead >= 0),
    chunk_prefix   name        NOT NULL,
    dropped_before timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE analytics.hypertables IS
    'Tables converted by analytics.create_hypertable; dropped_before: rows older than this were dropped by retention.';
COMMENT ON COLUMN analytics.hypertables.dropped_before IS
    'Retention dropped every chunk before this instant; rollups keep those days, verify and refresh leave them alone.';

-- Foreign keys that pointed at a table before it became a hypertable (Postgres 15 cannot
-- reference a partitioned table's key without the time column), now enforced by triggers.
CREATE TABLE analytics.replaced_foreign_keys (
    constraint_name name     NOT NULL,
    child           regclass NOT NULL,
    parent          regclass NOT NULL,
    definition      text     NOT NULL,
    replaced_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (child, constraint_name)
);

-- The chunk interval as the fixed length TimescaleDB uses (a month counts 30 days).
CREATE FUNCTION analytics._fixed_interval(i interval) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT make_interval(secs => extract(epoch FROM i))
$$;

-- Time values as instants: timestamp and date columns are read as UTC wall time.
CREATE FUNCTION analytics._as_instant_sql(h analytics.hypertables, value text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE h.time_type
        WHEN 'timestamp with time zone'::regtype THEN value
        WHEN 'timestamp without time zone'::regtype THEN format('(%s AT TIME ZONE ''UTC'')', value)
        ELSE format('(%s::timestamp AT TIME ZONE ''UTC'')', value) END
$$;

-- An instant as a literal of the time column's type, for partition bounds and filters.
CREATE FUNCTION analytics._time_literal(h analytics.hypertables, instant timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE h.time_type
        WHEN 'timestamp with time zone'::regtype THEN format('%L::timestamptz', to_char(instant AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00')
        WHEN 'timestamp without time zone'::regtype THEN format('%L::timestamp', (instant AT TIME ZONE 'UTC')::text)
        ELSE format('%L::date', (instant AT TIME ZONE 'UTC')::date::text) END
$$;

-- Start of the chunk holding `instant`.
CREATE FUNCTION analytics._chunk_start(h analytics.hypertables, instant timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT analytics.time_bucket(analytics._fixed_interval(h.chunk_interval), instant, '1970-01-01 00:00:00+00'::timestamptz)
$$;

CREATE FUNCTION analytics._default_partition_name(h analytics.hypertables) RETURNS name
LANGUAGE sql IMMUTABLE AS $$
    SELECT left(h.chunk_prefix, 55) || '_default'
$$;

-- Chunks: every partition of a hypertable but the default one, with its range as instants.
CREATE VIEW analytics.chunks AS
SELECT h.hypertable_id, hn.nspname AS hypertable_schema, hc.relname AS hypertable_name,
       cn.nspname AS chunk_schema, cc.relname AS chunk_name, cc.oid::regclass AS chunk,
       b.range_start, b.range_end, h.time_column, pg_total_relation_size(cc.oid) AS total_bytes
FROM analytics.hypertables h
JOIN pg_class hc ON hc.oid = h.relation
JOIN pg_namespace hn ON hn.oid = hc.relnamespace
JOIN pg_inherits i ON i.inhparent = h.relation
JOIN pg_class cc ON cc.oid = i.inhrelid
JOIN pg_namespace cn ON cn.oid = cc.relnamespace
CROSS JOIN LATERAL (
    SELECT (regexp_match(pg_get_expr(cc.relpartbound, cc.oid), '^FOR VALUES FROM \((.*)\) TO \((.*)\)$')) AS m
) AS bound
CROSS JOIN LATERAL (
    SELECT CASE WHEN h.time_type = 'date'::regtype THEN (trim(both '''' FROM bound.m[1])::date::timestamp AT TIME ZONE 'UTC')
                WHEN h.time_type = 'timestamp without time zone'::regtype THEN (trim(both '''' FROM bound.m[1])::timestamp AT TIME ZONE 'UTC')
                ELSE trim(both '''' FROM bound.m[1])::timestamptz END AS range_start,
           CASE WHEN h.time_type = 'date'::regtype THEN (trim(both '''' FROM bound.m[2])::date::timestamp AT TIME ZONE 'UTC')
                WHEN h.time_type = 'timestamp without time zone'::regtype THEN (trim(both '''' FROM bound.m[2])::timestamp AT TIME ZONE 'UTC')
                ELSE trim(both '''' FROM bound.m[2])::timestamptz END AS range_end
) AS b
WHERE bound.m IS NOT NULL;

CREATE FUNCTION analytics._hypertable(relation regclass) RETURNS analytics.hypertables
LANGUAGE plpgsql STABLE AS $$
DECLARE
    h analytics.hypertables;
BEGIN
    SELECT * INTO h FROM analytics.hypertables t WHERE t.relation = _hypertable.relation;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not a hypertable', relation USING ERRCODE = 'undefined_table',
            HINT = format('Convert it first: SELECT analytics.create_hypertable(%L, ''<time column>'');', relation::text);
    END IF;
    RETURN h;
END
$$;

-- Creates the chunk starting at `chunk_start` unless it exists; rows of its range waiting
-- in the default partition move into it. The move is not a sale being written or deleted:
-- it runs with triggers off (session_replication_role = replica), so rollups, replaced
-- foreign keys and users' row triggers see nothing. Returns the chunk, NULL if it existed.
CREATE FUNCTION analytics._create_chunk(h analytics.hypertables, chunk_start timestamptz) RETURNS regclass
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chunk_end constant timestamptz := chunk_start + analytics._fixed_interval(h.chunk_interval);
    schema_name name;
    base name;
    suffix text;
    chunk_name text;
    default_part regclass;
    moved bigint;
    role_before text;
    rows_in_range text;
BEGIN
    -- SECURITY DEFINER (moving rows needs session_replication_role): only for the table's owner.
    SELECT * INTO STRICT h FROM analytics.hypertables t WHERE t.hypertable_id = h.hypertable_id;
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = h.relation), 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table %', h.relation USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM analytics.chunks c WHERE c.hypertable_id = h.hypertable_id
               AND c.range_start < chunk_end AND c.range_end > chunk_start) THEN
        RETURN NULL;
    END IF;
    SELECT n.nspname, h.chunk_prefix INTO schema_name, base
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = h.relation;
    suffix := to_char(chunk_start AT TIME ZONE 'UTC',
                      CASE WHEN analytics._fixed_interval(h.chunk_interval) >= interval '1 day' THEN 'YYYYMMDD' ELSE 'YYYYMMDD"_"HH24MI' END);
    chunk_name := left(base, 62 - length(suffix)) || '_' || suffix;
    IF to_regclass(format('%I.%I', schema_name, chunk_name)) IS NOT NULL THEN
        chunk_name := left(base, 52 - length(suffix)) || '_' || suffix || '_' || h.hypertable_id;
    END IF;
    default_part := to_regclass(format('%I.%I', schema_name, analytics._default_partition_name(h)));
    rows_in_range := format('%I >= %s AND %I < %s', h.time_column, analytics._time_literal(h, chunk_start),
                            h.time_column, analytics._time_literal(h, chunk_end));
    role_before := current_setting('session_replication_role');
    IF default_part IS NOT NULL THEN
        PERFORM set_config('session_replication_role', 'replica', true);
        EXECUTE format('CREATE TEMP TABLE lacaja_moving ON COMMIT DROP AS
                        WITH moved AS (DELETE FROM %s WHERE %s RETURNING *) SELECT * FROM moved', default_part, rows_in_range);
        GET DIAGNOSTICS moved = ROW_COUNT;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%s) TO (%s)', schema_name, chunk_name, h.relation,
                   analytics._time_literal(h, chunk_start), analytics._time_literal(h, chunk_end));
    IF default_part IS NOT NULL THEN
        IF moved > 0 THEN
            EXECUTE format('INSERT INTO %I.%I SELECT * FROM lacaja_moving', schema_name, chunk_name);
        END IF;
        DROP TABLE lacaja_moving;
        PERFORM set_config('session_replication_role', role_before, true);
    END IF;
    RETURN format('%I.%I', schema_name, chunk_name)::regclass;
END
$$;

-- Chunks for now and the next `chunks_ahead` intervals, and for every row waiting in the
-- default partition. Returns how many chunks it created.
CREATE FUNCTION analytics._maintain_chunks(h analytics.hypertables) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    created int := 0;
    chunk_start timestamptz;
    default_part regclass := to_regclass(format('%I.%I', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                                           WHERE c.oid = h.relation),
                                                analytics._default_partition_name(h)));
BEGIN
    FOR chunk_start IN
        SELECT analytics._chunk_start(h, now()) + analytics._fixed_interval(h.chunk_interval) * i
        FROM generate_series(0, h.chunks_ahead) AS i
    LOOP
        created := created + (analytics._create_chunk(h, chunk_start) IS NOT NULL)::int;
    END LOOP;
    IF default_part IS NOT NULL THEN
        FOR chunk_start IN EXECUTE format('SELECT DISTINCT analytics._chunk_start($1, %s) FROM %s ORDER BY 1',
                                          analytics._as_instant_sql(h, quote_ident(h.time_column)), default_part) USING h
        LOOP
            created := created + (analytics._create_chunk(h, chunk_start) IS NOT NULL)::int;
        END LOOP;
    END IF;
    RETURN created;
END
$$;

CREATE FUNCTION analytics._job_hypertable(config jsonb) RETURNS analytics.hypertables
LANGUAGE plpgsql STABLE AS $$
DECLARE
    h analytics.hypertables;
BEGIN
    SELECT * INTO h FROM analytics.hypertables WHERE hypertable_id = (config ->> 'hypertable_id')::int;
    IF NOT FOUND OR to_regclass(h.relation::text) IS NULL THEN
        RAISE EXCEPTION 'hypertable % of this job no longer exists', coalesce(config ->> 'hypertable_id', 'NULL')
            USING HINT = 'Delete the job: SELECT analytics.delete_job(<job_id>).';
    END IF;
    RETURN h;
END
$$;

-- The maintenance job of one hypertable (config: {"hypertable_id": n}).
CREATE PROCEDURE analytics.policy_chunk_maintenance(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    h analytics.hypertables := analytics._job_hypertable(config);
BEGIN
    PERFORM analytics._maintain_chunks(h);
END
$$;

-- Foreign keys into a hypertable, enforced by triggers --------------------------------------

-- Child side: the referenced row must exist (locked FOR KEY SHARE, as Postgres' own check
-- does). TG_ARGV: constraint name, parent, child columns, parent columns.
CREATE FUNCTION analytics._fk_check_parent() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    child_cols constant text[] := TG_ARGV[2]::text[];
    parent_cols constant text[] := TG_ARGV[3]::text[];
    found_rows int;
    has_null boolean;
BEGIN
    EXECUTE format('SELECT %s', (SELECT string_agg(format('($1).%I IS NULL', c), ' OR ') FROM unnest(child_cols) c))
       INTO has_null USING NEW;
    IF has_null THEN
        RETURN NULL;  -- MATCH SIMPLE: a key with a NULL references nothing
    END IF;
    EXECUTE format('SELECT 1 FROM %s AS p WHERE (%s) = (%s) LIMIT 1 FOR KEY SHARE OF p', TG_ARGV[1],
                   (SELECT string_agg(format('p.%I', c), ', ') FROM unnest(parent_cols) c),
                   (SELECT string_agg(format('($1).%I', c), ', ') FROM unnest(child_cols) c))
       USING NEW;
    GET DIAGNOSTICS found_rows = ROW_COUNT;
    IF found_rows = 0 THEN
        RAISE EXCEPTION 'insert or update on table "%" violates foreign key constraint "%"', TG_TABLE_NAME, TG_ARGV[0]
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (%s) is not present in table %s.', array_to_string(child_cols, ', '), TG_ARGV[1]);
    END IF;
    RETURN NULL;
END
$$;

-- Parent side: what the constraint's ON DELETE / ON UPDATE rule says. TG_ARGV: constraint
-- name, child, child columns, parent columns, delete action, update action (pg_constraint codes:
-- a no action, r restrict, c cascade, n set null, d set default).
CREATE FUNCTION analytics._fk_parent_action() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    child constant text := TG_ARGV[1];
    child_cols constant text[] := TG_ARGV[2]::text[];
    parent_cols constant text[] := TG_ARGV[3]::text[];
    action constant text := CASE TG_OP WHEN 'DELETE' THEN TG_ARGV[4] ELSE TG_ARGV[5] END;
    matches text := (SELECT string_agg(format('c.%I = ($1).%I', cc, pc), ' AND ') FROM unnest(child_cols, parent_cols) AS k (cc, pc));
    key_changed boolean;
    referencing boolean;
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
    IF action IN ('a', 'r') THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s AS c WHERE %s)', child, matches) INTO referencing USING OLD;
        IF referencing THEN
            RAISE EXCEPTION 'update or delete on table "%" violates foreign key constraint "%" on table "%"',
                TG_TABLE_NAME, TG_ARGV[0], child
                USING ERRCODE = 'foreign_key_violation',
                      DETAIL = format('Key (%s) is still referenced from table %s.', array_to_string(parent_cols, ', '), child);
        END IF;
    ELSIF action = 'c' AND TG_OP = 'DELETE' THEN
        EXECUTE format('DELETE FROM %s AS c WHERE %s', child, matches) USING OLD;
    ELSIF action = 'c' THEN
        EXECUTE format('UPDATE %s AS c SET %s WHERE %s', child,
                       (SELECT string_agg(format('%I = ($2).%I', cc, pc), ', ') FROM unnest(child_cols, parent_cols) AS k (cc, pc)),
                       matches) USING OLD, NEW;
    ELSIF action IN ('n', 'd') THEN
        EXECUTE format('UPDATE %s AS c SET %s WHERE %s', child,
                       (SELECT string_agg(format('%I = %s', cc, CASE action WHEN 'n' THEN 'NULL' ELSE 'DEFAULT' END), ', ')
                          FROM unnest(child_cols) AS cc),
                       matches) USING OLD;
    END IF;
    RETURN NULL;
END
$$;

-- Replaces the foreign key `con` (which references a table about to become a hypertable)
-- by the two triggers above; `parent` is the table's name once converted.
CREATE FUNCTION analytics._replace_foreign_key(con oid, parent text) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c record;
BEGIN
    SELECT k.conname, k.conrelid::regclass AS child, k.confdeltype, k.confupdtype, pg_get_constraintdef(k.oid) AS definition,
           ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, i) JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.i)::text AS child_cols,
           ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, i) JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.i)::text AS parent_cols,
           ARRAY(SELECT a.attname FROM unnest(k.confkey) u(n) JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n) AS parent_names
      INTO c FROM pg_constraint k WHERE k.oid = con;
    EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.child, c.conname);
    INSERT INTO analytics.replaced_foreign_keys (constraint_name, child, parent, definition)
    VALUES (c.conname, c.child, parent::regclass, c.definition)
    ON CONFLICT (child, constraint_name) DO UPDATE SET definition = excluded.definition, replaced_at = now();
    EXECUTE format('CREATE TRIGGER %I AFTER INSERT OR UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION analytics._fk_check_parent(%L, %L, %L, %L)',
                   left(c.conname, 50) || '_check', (SELECT string_agg(quote_ident(x), ', ') FROM unnest(c.child_cols::text[]) x),
                   c.child, c.conname, parent, c.child_cols, c.parent_cols);
    EXECUTE format('CREATE TRIGGER %I AFTER DELETE OR UPDATE OF %s ON %s FOR EACH ROW EXECUTE FUNCTION analytics._fk_parent_action(%L, %L, %L, %L, %L, %L)',
                   left(c.conname, 50) || '_action', (SELECT string_agg(quote_ident(x), ', ') FROM unnest(c.parent_names) x),
                   parent, c.conname, c.child::text, c.child_cols, c.parent_cols, c.confdeltype, c.confupdtype);
    RETURN format('%s.%s', c.child, c.conname);
END
$$;

-- create_hypertable ---------------------------------------------------------------------

-- Why `relation` cannot become a hypertable as it is, one line per blocker with its way out
-- (empty when it can). Reads only the catalogs.
CREATE FUNCTION analytics._hypertable_blockers(relation regclass, time_column name, extend_unique boolean,
                                               replace_foreign_keys boolean) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(b ORDER BY b), '{}') FROM (
        SELECT format('%s %I %s does not include the time column %I: a partitioned table can only enforce it per time value. '
                      'Pass extend_unique => true to make it unique on (%s, %I), or drop it first',
                      CASE k.contype WHEN 'p' THEN 'primary key' ELSE 'unique constraint' END, k.conname,
                      pg_get_constraintdef(k.oid), time_column,
                      (SELECT string_agg(quote_ident(a.attname), ', ') FROM pg_attribute a WHERE a.attrelid = relation AND a.attnum = ANY (k.conkey)),
                      time_column) AS b
        FROM pg_constraint k
        WHERE k.conrelid = relation AND k.contype IN ('p', 'u') AND NOT extend_unique
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = time_column AND a.attnum = ANY (k.conkey))
        UNION ALL
        SELECT format('exclusion constraint %I cannot be kept on a partitioned table; drop it first', k.conname)
        FROM pg_constraint k WHERE k.conrelid = relation AND k.contype = 'x'
        UNION ALL
        SELECT format('unique index %s does not include the time column %I; drop it, or make it include %I', i.indexrelid::regclass, time_column, time_column)
        FROM pg_index i
        WHERE i.indrelid = relation AND i.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = relation)
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = time_column AND a.attnum = ANY (i.indkey))
        UNION ALL
        SELECT format('foreign key %I on %s references %s: Postgres 15 cannot reference a partitioned table by a key without the time column. '
                      'Pass replace_foreign_keys => true to enforce it with triggers (same ON DELETE / ON UPDATE rule), or drop it first',
                      k.conname, k.conrelid::regclass, relation)
        FROM pg_constraint k
        WHERE k.confrelid = relation AND k.contype = 'f' AND (NOT replace_foreign_keys OR k.conrelid = relation)
        UNION ALL
        SELECT format('materialized view %s reads %s and would keep the old table; drop it and create it again afterwards '
                      '(LA-CAJA''s mv_*: SELECT analytics.install_compat(replace_public => true) replaces them by views)', v.oid::regclass, relation)
        FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        JOIN pg_class v ON v.oid = r.ev_class
        WHERE d.refobjid = relation AND v.oid <> relation AND v.relkind = 'm'
        GROUP BY v.oid
        UNION ALL
        SELECT format('function %s has a SQL body that reads %s; drop it and create it again afterwards', p.oid::regprocedure, relation)
        FROM pg_depend d JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
        WHERE d.refobjid = relation
        GROUP BY p.oid
        UNION ALL
        SELECT format('row trigger %I uses transition tables, which partitioned tables do not support; make it a statement trigger or drop it', t.tgname)
        FROM pg_trigger t
        WHERE t.tgrelid = relation AND NOT t.tgisinternal AND (t.tgtype & 1) = 1
          AND (t.tgoldtable IS NOT NULL OR t.tgnewtable IS NOT NULL)
    ) AS blockers (b)
$$;

-- Takes every lock the conversion needs, at once and in a fixed order, so that it can never
-- deadlock with a POS transaction (which would then be the one to fail): the table, the
-- tables whose foreign keys point at it, the views over it, and the tables it references
-- (dropping and adding its foreign keys changes their triggers). Each try waits at most
-- 200 ms, so the conversion never stands long in the queue in front of sales; a busy POS
-- makes it try again.
CREATE FUNCTION analytics._lock_for_conversion(relation regclass, attempts int DEFAULT 100) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    tables text;
    attempt int := 0;
BEGIN
    SELECT string_agg(r::text, ', ' ORDER BY r::oid) INTO tables FROM (
        SELECT relation AS r
        UNION SELECT k.conrelid::regclass FROM pg_constraint k WHERE k.confrelid = relation AND k.contype = 'f'
        UNION SELECT k.confrelid::regclass FROM pg_constraint k WHERE k.conrelid = relation AND k.contype = 'f'
        UNION SELECT r.ev_class::regclass FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
              WHERE d.refobjid = relation AND r.ev_class <> relation) AS t;
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '200ms', true);
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', tables);
            PERFORM set_config('lock_timeout', '0', true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            attempt := attempt + 1;
            IF attempt >= attempts THEN
                RAISE EXCEPTION 'could not lock % for the conversion: POS transactions kept them busy', tables
                    USING ERRCODE = 'lock_not_available', HINT = 'Nothing was changed. Try again at a quieter time.';
            END IF;
            PERFORM pg_sleep(0.05 + random() * 0.2);
        END;
    END LOOP;
END
$$;

CREATE FUNCTION analytics._register_hypertable(relation regclass, time_column name, time_type regtype,
                                               chunk_interval interval, chunks_ahead int, chunk_prefix name)
RETURNS analytics.hypertables
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h analytics.hypertables;
BEGIN
    IF NOT pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = relation), 'MEMBER') THEN
        RAISE EXCEPTION 'must be owner of table %', relation USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO analytics.hypertables (relation, time_column, time_type, chunk_interval, chunks_ahead, chunk_prefix)
    VALUES (relation, time_column, time_type, chunk_interval, chunks_ahead, chunk_prefix)
    RETURNING * INTO h;
    RETURN h;
END
$$;

CREATE FUNCTION analytics.create_hypertable(relation regclass, time_column_name name,
                                            chunk_time_interval interval DEFAULT interval '7 days',
                                            if_not_exists boolean DEFAULT false, migrate_data boolean DEFAULT false,
                                            create_default_indexes boolean DEFAULT true,
                                            extend_unique boolean DEFAULT false, replace_foreign_keys boolean DEFAULT false,
                                            chunks_ahead int DEFAULT 7)
RETURNS TABLE (hypertable_id int, schema_name name, table_name name, created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
    time_att record;
    blockers text[];
    has_rows boolean;
    staging name;
    retired name;
    qualified text;
    h analytics.hypertables;
    chunk_start timestamptz;
    con record;
    statements text[] := '{}';
    after_drop text[] := '{}';
    fk_constraints oid[];
    replaced text[] := '{}';
    stmt text;
    cols text;
    started constant timestamptz := clock_timestamp();
    job int;
BEGIN
    SELECT c.oid, c.relkind, c.relispartition, c.relowner, c.relrowsecurity, c.relforcerowsecurity, c.relacl,
           n.nspname, c.relname
      INTO rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = relation;
    IF EXISTS (SELECT 1 FROM analytics.hypertables t WHERE t.relation = create_hypertable.relation) THEN
        IF if_not_exists THEN
            RAISE NOTICE 'table "%" is already a hypertable, skipping', rel.relname;
            RETURN QUERY SELECT t.hypertable_id, rel.nspname, rel.relname, false FROM analytics.hypertables t
                         WHERE t.relation = create_hypertable.relation;
            RETURN;
        END IF;
        RAISE EXCEPTION 'table "%" is already a hypertable', rel.relname USING ERRCODE = 'duplicate_object';
    END IF;
    IF rel.relkind <> 'r' OR rel.relispartition OR EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = relation OR inhparent = relation) THEN
        RAISE EXCEPTION 'table "%" cannot become a hypertable: it is not a plain table outside any inheritance or partitioning', rel.relname
            USING ERRCODE = 'wrong_object_type';
    END IF;
    SELECT a.attnum, a.atttypid::regtype AS type, a.attgenerated INTO time_att
    FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = time_column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" does not exist', time_column_name USING ERRCODE = 'undefined_column';
    END IF;
    IF time_att.type NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RAISE EXCEPTION 'invalid type for dimension "%"', time_column_name USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use a timestamptz, timestamp or date column.';
    END IF;
    IF chunk_time_interval IS NULL OR analytics._fixed_interval(chunk_time_interval) < interval '1 minute' THEN
        RAISE EXCEPTION 'invalid chunk_time_interval %', coalesce(chunk_time_interval::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use an interval of at least one minute, e.g. INTERVAL ''1 day''.';
    END IF;

    blockers := analytics._hypertable_blockers(relation, time_column_name, extend_unique, replace_foreign_keys);
    IF blockers <> '{}' THEN
        RAISE EXCEPTION 'cannot turn % into a hypertable; nothing was changed:%', relation, E'\n  - ' || array_to_string(blockers, E'\n  - ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Each line says what to do. extend_unique and replace_foreign_keys accept those changes explicitly.';
    END IF;

    PERFORM analytics._lock_for_conversion(relation);
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', relation) INTO has_rows;
    IF has_rows AND NOT migrate_data THEN
        RAISE EXCEPTION 'table "%" is not empty', rel.relname USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'You can migrate data by specifying ''migrate_data => true'' when calling this function.';
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I IS NULL)', relation, time_column_name) INTO has_rows;
    IF has_rows THEN
        RAISE EXCEPTION 'column "%" of % has NULL values; a hypertable needs a time on every row', time_column_name, relation
            USING ERRCODE = 'not_null_violation', HINT = format('Fill them first: UPDATE %s SET %I = ... WHERE %I IS NULL;', relation, time_column_name, time_column_name);
    END IF;

    qualified := format('%I.%I', rel.nspname, rel.relname);
    staging := left(rel.relname, 45) || '_lacaja_staging';
    retired := left(rel.relname, 45) || '_lacaja_retired';

    -- Everything to recreate, written while the names still mean the old table; run once the
    -- new table has taken its name.
    SELECT array_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid) INTO statements
    FROM pg_index i WHERE i.indrelid = relation
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = relation);
    statements := coalesce(statements, '{}');
    FOR con IN SELECT k.* FROM pg_constraint k WHERE k.conrelid = relation AND k.contype IN ('p', 'u') ORDER BY k.contype, k.conname LOOP
        cols := (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY u.i)
                 FROM unnest(con.conkey) WITH ORDINALITY u(n, i) JOIN pg_attribute a ON a.attrelid = relation AND a.attnum = u.n);
        IF NOT time_att.attnum = ANY (con.conkey) THEN
            cols := cols || ', ' || quote_ident(time_column_name);
        END IF;
        statements := statements || format('ALTER TABLE %s ADD CONSTRAINT %I %s (%s)', qualified, con.conname,
                                           CASE con.contype WHEN 'p' THEN 'PRIMARY KEY' ELSE 'UNIQUE' END, cols);
    END LOOP;
    statements := statements || ARRAY(
        SELECT format('ALTER TABLE %s ADD CONSTRAINT %I %s', qualified, k.conname, pg_get_constraintdef(k.oid))
        FROM pg_constraint k WHERE k.conrelid = relation AND k.contype = 'f' ORDER BY k.conname);
    IF create_default_indexes AND NOT EXISTS (
        SELECT 1 FROM pg_index i WHERE i.indrelid = relation AND i.indkey[0] = time_att.attnum) THEN
        statements := statements || format('CREATE INDEX %I ON %s (%I DESC)', left(rel.relname, 40) || '_' || left(time_column_name, 15) || '_idx',
                                           qualified, time_column_name);
    END IF;
    statements := statements || ARRAY(
        SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE t.tgrelid = relation AND NOT t.tgisinternal ORDER BY t.tgname);
    statements := statements || ARRAY(
        SELECT format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname, qualified,
                      CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                      CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                      (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(r::regrole::text) END, ', ') FROM unnest(p.polroles) r),
                      ' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')',
                      ' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')')
        FROM pg_policy p WHERE p.polrelid = relation ORDER BY p.polname);
    IF rel.relrowsecurity THEN
        statements := statements || format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', qualified);
    END IF;
    IF rel.relforcerowsecurity THEN
        statements := statements || format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', qualified);
    END IF;
    statements := statements || format('ALTER TABLE %s OWNER TO %I', qualified, rel.relowner::regrole::text);
    statements := statements || ARRAY(
        SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, qualified,
                      CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(a.grantee::regrole::text) END,
                      CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
        FROM aclexplode(rel.relacl) a WHERE a.grantee <> rel.relowner);
    IF obj_description(relation, 'pg_class') IS NOT NULL THEN
        statements := statements || format('COMMENT ON TABLE %s IS %L', qualified, obj_description(relation, 'pg_class'));
    END IF;
    -- Views over the table follow it to the new one (same definition, grants and owner kept).
    after_drop := ARRAY(
        SELECT format('CREATE OR REPLACE VIEW %s AS %s', v.oid::regclass, pg_get_viewdef(v.oid))
        FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        JOIN pg_class v ON v.oid = r.ev_class
        WHERE d.refobjid = relation AND v.oid <> relation AND v.relkind = 'v'
        GROUP BY v.oid ORDER BY v.oid);
    -- serial columns keep their sequence (it would go with the old table)
    statements := statements || ARRAY(
        SELECT format('ALTER SEQUENCE %s OWNED BY %s.%I', s.oid::regclass, qualified, a.attname)
        FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_attribute a ON a.attrelid = relation AND a.attnum = d.refobjsubid
        WHERE d.refobjid = relation AND d.classid = 'pg_class'::regclass AND d.deptype = 'a');
    fk_constraints := ARRAY(SELECT k.oid FROM pg_constraint k WHERE k.confrelid = relation AND k.contype = 'f' AND k.conrelid <> relation);

    -- The new table, its chunks and the data, under a staging name.
    cols := (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM pg_attribute a
             WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '');
    EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY
                    INCLUDING STORAGE INCLUDING COMMENTS INCLUDING STATISTICS) PARTITION BY RANGE (%I)',
                   rel.nspname, staging, relation, time_column_name);
    EXECUTE format('ALTER TABLE %I.%I ALTER COLUMN %I SET NOT NULL', rel.nspname, staging, time_column_name);
    h := analytics._register_hypertable(format('%I.%I', rel.nspname, staging)::regclass, time_column_name, time_att.type,
                                        chunk_time_interval, chunks_ahead, rel.relname);
    FOR chunk_start IN EXECUTE format('SELECT DISTINCT analytics._chunk_start($1, %s) FROM %s ORDER BY 1',
                                      analytics._as_instant_sql(h, quote_ident(time_column_name)), relation) USING h
    LOOP
        PERFORM analytics._create_chunk(h, chunk_start);
    END LOOP;
    EXECUTE format('INSERT INTO %I.%I (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM ONLY %s', rel.nspname, staging, cols, cols, relation);

    -- The swap.
    EXECUTE format('ALTER TABLE %s RENAME TO %I', relation, retired);
    EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', rel.nspname, staging, rel.relname);
    FOREACH stmt IN ARRAY after_drop LOOP
        EXECUTE stmt;
    END LOOP;
    -- identity columns continue from where the old table's sequence was
    PERFORM setval(pg_get_serial_sequence(qualified, a.attname),
                   (SELECT s.last_value FROM pg_sequences s WHERE format('%I.%I', s.schemaname, s.sequencename)::regclass
                        = pg_get_serial_sequence(format('%I.%I', rel.nspname, retired), a.attname)::regclass))
    FROM pg_attribute a WHERE a.attrelid = relation AND a.attidentity <> '' AND NOT a.attisdropped;
    FOREACH con IN ARRAY ARRAY(SELECT k FROM pg_constraint k WHERE k.oid = ANY (fk_constraints)) LOOP
        replaced := replaced || analytics._replace_foreign_key(con.oid, qualified);
    END LOOP;
    FOREACH stmt IN ARRAY statements LOOP
        IF stmt LIKE 'ALTER SEQUENCE%' THEN
            EXECUTE stmt;
        END IF;
    END LOOP;
    EXECUTE format('DROP TABLE %I.%I', rel.nspname, retired);
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT', rel.nspname, analytics._default_partition_name(h), qualified);
    FOREACH stmt IN ARRAY statements LOOP
        CONTINUE WHEN stmt LIKE 'ALTER SEQUENCE%';
        EXECUTE stmt;
    END LOOP;
    PERFORM analytics._bind_trigger_to_extension(h.relation::oid, t.tgname)
    FROM pg_trigger t WHERE t.tgrelid = h.relation AND t.tgname LIKE 'lacaja\_analytics\_%';
    PERFORM analytics._maintain_chunks(h);

    job := analytics.add_job('analytics.policy_chunk_maintenance'::regproc, least(analytics._fixed_interval(chunk_time_interval), interval '1 hour'),
                             jsonb_build_object('hypertable_id', h.hypertable_id));
    PERFORM analytics._label_job(job, format('Chunk Maintenance [%s]', job), h.relation);
    RAISE NOTICE 'converted % into a hypertable in % ms%', qualified,
        round(extract(epoch FROM clock_timestamp() - started) * 1000),
        CASE WHEN replaced <> '{}' THEN '; foreign keys now enforced by triggers: ' || array_to_string(replaced, ', ') ELSE '' END;
    RETURN QUERY SELECT h.hypertable_id, rel.nspname, rel.relname, true;
END
$$;

CREATE FUNCTION analytics._label_job(id int, application_name text, hypertable regclass) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE analytics.jobs j SET application_name = _label_job.application_name, hypertable = _label_job.hypertable
    WHERE j.job_id = id AND pg_has_role(session_user, j.owner, 'MEMBER')
$$;

-- Chunks and retention --------------------------------------------------------------------

CREATE FUNCTION analytics.show_chunks(relation regclass, older_than timestamptz DEFAULT NULL, newer_than timestamptz DEFAULT NULL)
RETURNS SETOF regclass LANGUAGE sql STABLE AS $$
    SELECT c.chunk FROM analytics.chunks c
    WHERE c.hypertable_id = (analytics._hypertable(relation)).hypertable_id
      AND (older_than IS NULL OR c.range_end <= older_than)
      AND (newer_than IS NULL OR c.range_start >= newer_than)
    ORDER BY c.range_start
$$;
CREATE FUNCTION analytics.show_chunks(relation regclass, older_than interval, newer_than interval DEFAULT NULL)
RETURNS SETOF regclass LANGUAGE sql STABLE AS $$
    SELECT analytics.show_chunks(relation, now() - older_than, now() - newer_than)
$$;

-- Drops whole chunks that end at or before `older_than`. Rows of those chunks waiting in
-- the default partition are moved into their chunks first, so they go too. Rollups keep
-- their history: dropping a chunk deletes nothing row by row, no trigger sees it, and
-- verify / refresh leave the days before hypertables.dropped_before alone.
CREATE FUNCTION analytics.drop_chunks(relation regclass, older_than timestamptz, newer_than timestamptz DEFAULT NULL,
                                      verbose boolean DEFAULT false)
RETURNS SETOF text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h analytics.hypertables := analytics._hypertable(relation);
    c record;
    horizon timestamptz;
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'drop_chunks needs older_than' USING HINT = 'e.g. SELECT analytics.drop_chunks(''events'', INTERVAL ''2 years'');';
    END IF;
    PERFORM analytics._maintain_chunks(h);
    FOR c IN
        SELECT * FROM analytics.chunks ch
        WHERE ch.hypertable_id = h.hypertable_id AND ch.range_end <= older_than
          AND (newer_than IS NULL OR ch.range_start >= newer_than)
        ORDER BY ch.range_start
    LOOP
        EXECUTE format('DROP TABLE %s', c.chunk);
        IF drop_chunks.verbose THEN
            RAISE INFO 'dropping chunk %', c.chunk;
        END IF;
        IF newer_than IS NULL THEN
            horizon := greatest(horizon, c.range_end);
        END IF;
        RETURN NEXT format('%I.%I', c.chunk_schema, c.chunk_name);
    END LOOP;
    IF horizon IS NOT NULL THEN
        PERFORM analytics._set_dropped_before(h.hypertable_id, horizon);
    END IF;
END
$$;
CREATE FUNCTION analytics.drop_chunks(relation regclass, older_than interval, newer_than interval DEFAULT NULL,
                                      verbose boolean DEFAULT false)
RETURNS SETOF text LANGUAGE sql AS $$
    SELECT analytics.drop_chunks(relation, now() - older_than, now() - newer_than, verbose)
$$;

CREATE FUNCTION analytics._set_dropped_before(id int, horizon timestamptz) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE analytics.hypertables h SET dropped_before = greatest(h.dropped_before, horizon)
    WHERE h.hypertable_id = id AND pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = h.relation), 'MEMBER')
$$;

-- What retention on `relation` would do wrong, if anything: an error to refuse, warnings to
-- say. Stock is the sum of every movement ever made (SPEC §1): dropping old movements
-- changes LA-CAJA's own product_stock view, so it is refused; dropping sales leaves their
-- items and returns behind and is said.
CREATE FUNCTION analytics._retention_concerns(relation regclass, OUT refusal text, OUT warnings text[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cfg analytics.source_config;
BEGIN
    warnings := '{}';
    SELECT * INTO cfg FROM analytics.source_config;
    IF cfg.source_schema IS NOT NULL AND relation = to_regclass(format('%I.inventory_movements', cfg.source_schema)) THEN
        refusal := format('%s holds every stock movement; stock is their sum since the first one, so dropping old movements '
                          'would change the stock LA-CAJA shows. Consolidate old movements into an opening balance first, '
                          'or call analytics.drop_chunks explicitly if that is what you want', relation);
    END IF;
    IF cfg.source_schema IS NOT NULL AND relation = to_regclass(format('%I.sales', cfg.source_schema)) THEN
        warnings := warnings || format('dropping chunks of %s keeps the rollups (dashboards keep those days) but not the sales: '
                                       'their items and returns stay in their tables, and a return or void of a dropped sale '
                                       'can no longer be recorded', relation);
    END IF;
    warnings := warnings || ARRAY(
        SELECT format('%s references %s (foreign key %s, now a trigger): its rows that point at dropped chunks stay', r.child, relation, r.constraint_name)
        FROM analytics.replaced_foreign_keys r WHERE r.parent = relation);
END
$$;

CREATE PROCEDURE analytics.policy_retention(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    h analytics.hypertables := analytics._job_hypertable(config);
BEGIN
    PERFORM analytics.drop_chunks(h.relation, now() - (config ->> 'drop_after')::interval);
END
$$;

CREATE FUNCTION analytics.add_retention_policy(relation regclass, drop_after interval, if_not_exists boolean DEFAULT false,
                                               schedule_interval interval DEFAULT NULL, initial_start timestamptz DEFAULT NULL,
                                               timezone text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h analytics.hypertables := analytics._hypertable(relation);
    concerns record := analytics._retention_concerns(relation);
    existing int;
    job int;
    warning text;
BEGIN
    IF drop_after IS NULL OR drop_after <= interval '0' THEN
        RAISE EXCEPTION 'drop_after must be a positive interval, not %', coalesce(drop_after::text, 'NULL');
    END IF;
    SELECT j.job_id INTO existing FROM analytics.jobs j
    WHERE j.proc = 'analytics.policy_retention'::regproc AND (j.config ->> 'hypertable_id')::int = h.hypertable_id;
    IF existing IS NOT NULL THEN
        IF if_not_exists THEN
            RAISE NOTICE 'retention policy already exists for hypertable "%", skipping', relation;
            RETURN existing;
        END IF;
        RAISE EXCEPTION 'retention policy already exists for hypertable "%"', relation USING ERRCODE = 'duplicate_object',
            HINT = format('Remove it first: SELECT analytics.remove_retention_policy(%L);', relation::text);
    END IF;
    IF concerns.refusal IS NOT NULL THEN
        RAISE EXCEPTION 'no retention policy on %', relation USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = concerns.refusal;
    END IF;
    FOREACH warning IN ARRAY concerns.warnings LOOP
        RAISE WARNING '%', warning;
    END LOOP;
    job := analytics.add_job('analytics.policy_retention'::regproc,
                             coalesce(schedule_interval, least(analytics._fixed_interval(h.chunk_interval), interval '1 day')),
                             jsonb_build_object('hypertable_id', h.hypertable_id, 'drop_after', drop_after),
                             initial_start => initial_start, timezone => timezone);
    PERFORM analytics._label_job(job, format('Retention Policy [%s]', job), relation);
    RETURN job;
END
$$;

CREATE FUNCTION analytics.remove_retention_policy(relation regclass, if_exists boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id int := (SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics.policy_retention'::regproc
               AND (j.config ->> 'hypertable_id')::int = (analytics._hypertable(relation)).hypertable_id);
BEGIN
    IF id IS NULL THEN
        IF if_exists THEN
            RAISE NOTICE 'retention policy not found for hypertable "%", skipping', relation;
            RETURN;
        END IF;
        RAISE EXCEPTION 'retention policy not found for hypertable "%"', relation USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM analytics.delete_job(id);
END
$$;

-- Continuous-aggregate policies on our rollups -------------------------------------------
--
-- Our rollups are exact at commit, so unlike TimescaleDB's there is nothing to materialise.
-- What the policy guards against are writes that bypassed the triggers (a restore with
-- session_replication_role = replica, triggers disabled by hand): each run compares the
-- window's days with the definitions and repairs only what differs.

CREATE FUNCTION analytics._rollup_views() RETURNS regclass[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(to_regclass('analytics.' || v)) FILTER (WHERE to_regclass('analytics.' || v) IS NOT NULL)
    FROM unnest(ARRAY['sales_hourly', 'sales_daily', 'sales_by_payment_daily', 'sales_heatmap', 'product_sales_daily',
                      'product_stock', 'inventory_metrics', 'mv_sales_daily', 'mv_top_products_30d', 'mv_inventory_metrics']) AS v
$$;

-- The window of a policy as local days: [from_day, to_day), widened by a day on each side
-- so that every store's zone is covered (rows outside it are exact anyway).
CREATE FUNCTION analytics._policy_window(config jsonb, OUT from_day date, OUT to_day date)
LANGUAGE sql STABLE AS $$
    SELECT ((now() - (config ->> 'start_offset')::interval) AT TIME ZONE 'UTC')::date - 1,
           ((now() - (config ->> 'end_offset')::interval) AT TIME ZONE 'UTC')::date + 2
$$;

CREATE PROCEDURE analytics.policy_refresh_continuous_aggregate(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    w record := analytics._policy_window(config);
    result jsonb;
BEGIN
    result := analytics._repair(NULL, w.from_day, w.to_day);
    RAISE LOG 'lacaja_analytics job %: % over [%, %): %', job_id, config ->> 'continuous_aggregate', w.from_day, w.to_day, result;
END
$$;

CREATE FUNCTION analytics.add_continuous_aggregate_policy(continuous_aggregate regclass, start_offset interval, end_offset interval,
                                                          schedule_interval interval, if_not_exists boolean DEFAULT false,
                                                          initial_start timestamptz DEFAULT NULL, timezone text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    existing int;
    job int;
BEGIN
    IF continuous_aggregate IS NULL OR NOT continuous_aggregate = ANY (analytics._rollup_views()) THEN
        RAISE EXCEPTION '% is not a rollup of lacaja_analytics', coalesce(continuous_aggregate::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of: ' || array_to_string(analytics._rollup_views()::text[], ', ');
    END IF;
    IF start_offset IS NOT NULL AND end_offset IS NOT NULL AND start_offset <= end_offset THEN
        RAISE EXCEPTION 'policy refresh window too small' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = 'The start of the window must be before the end: start_offset must be larger than end_offset.';
    END IF;
    SELECT j.job_id INTO existing FROM analytics.jobs j
    WHERE j.proc = 'analytics.policy_refresh_continuous_aggregate'::regproc AND j.hypertable = continuous_aggregate;
    IF existing IS NOT NULL THEN
        IF if_not_exists THEN
            RAISE NOTICE 'continuous aggregate policy already exists for "%", skipping', continuous_aggregate;
            RETURN existing;
        END IF;
        RAISE EXCEPTION 'continuous aggregate policy already exists for "%"', continuous_aggregate USING ERRCODE = 'duplicate_object';
    END IF;
    job := analytics.add_job('analytics.policy_refresh_continuous_aggregate'::regproc, schedule_interval,
                             jsonb_build_object('continuous_aggregate', continuous_aggregate::text,
                                                'start_offset', start_offset, 'end_offset', end_offset),
                             initial_start => initial_start, timezone => timezone);
    PERFORM analytics._label_job(job, format('Refresh Continuous Aggregate Policy [%s]', job), continuous_aggregate);
    RETURN job;
END
$$;

CREATE FUNCTION analytics.remove_continuous_aggregate_policy(continuous_aggregate regclass, if_exists boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id int := (SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics.policy_refresh_continuous_aggregate'::regproc
               AND j.hypertable = continuous_aggregate);
BEGIN
    IF id IS NULL THEN
        IF if_exists THEN
            RAISE NOTICE 'continuous aggregate policy not found for "%", skipping', continuous_aggregate;
            RETURN;
        END IF;
        RAISE EXCEPTION 'continuous aggregate policy not found for "%"', continuous_aggregate USING ERRCODE = 'undefined_object';
    END IF;
    PERFORM analytics.delete_job(id);
END
$$;
