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
CREATE TABLE analytics_internal.replaced_foreign_keys (
    constraint_name name     NOT NULL,
    child           regclass NOT NULL,
    parent          regclass NOT NULL,
    definition      text     NOT NULL,
    child_columns   name[]   NOT NULL,
    parent_columns  name[]   NOT NULL,
    on_delete       "char"   NOT NULL,
    on_update       "char"   NOT NULL,
    replaced_at     timestamptz NOT NULL DEFAULT now(),
    -- the check generated for this key when the parent keeps a registry of the referenced
    -- columns (NULL: the generic _fk_check_parent)
    check_function  regprocedure,
    PRIMARY KEY (child, constraint_name)
);

-- Whether the calling role owns `relation` (or is a member of its owner). The hypertable API is
-- the DBA's (docs/api.md): its helpers run with the caller's rights, and check ownership
-- anyway so that a grant of one of them to a table owner stays safe.
CREATE FUNCTION analytics_internal._session_owns(relation oid) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = relation), 'MEMBER')
$$;

CREATE FUNCTION analytics_internal._require_owner(relation oid) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT analytics_internal._session_owns(relation) THEN
        RAISE EXCEPTION 'must be owner of table %', relation::regclass USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- The chunk interval as the fixed length TimescaleDB uses (a month counts 30 days).
CREATE FUNCTION analytics_internal._fixed_interval(i interval) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$
    SELECT make_interval(secs => extract(epoch FROM i))
$$;

-- Time values as instants: timestamp and date columns are read as UTC wall time.
CREATE FUNCTION analytics_internal._as_instant_sql(h analytics.hypertables, value text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE h.time_type
        WHEN 'timestamp with time zone'::regtype THEN value
        WHEN 'timestamp without time zone'::regtype THEN format('(%s AT TIME ZONE ''UTC'')', value)
        ELSE format('(%s::timestamp AT TIME ZONE ''UTC'')', value) END
$$;

-- An instant as a literal of the time column's type, for partition bounds and filters.
CREATE FUNCTION analytics_internal._time_literal(h analytics.hypertables, instant timestamptz) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE h.time_type
        WHEN 'timestamp with time zone'::regtype THEN format('%L::timestamptz', to_char(instant AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00')
        WHEN 'timestamp without time zone'::regtype THEN format('%L::timestamp', (instant AT TIME ZONE 'UTC')::text)
        ELSE format('%L::date', (instant AT TIME ZONE 'UTC')::date::text) END
$$;

-- Start of the chunk holding `instant`.
CREATE FUNCTION analytics_internal._chunk_start(h analytics.hypertables, instant timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT analytics.time_bucket(analytics_internal._fixed_interval(h.chunk_interval), instant, '1970-01-01 00:00:00+00'::timestamptz)
$$;

CREATE FUNCTION analytics_internal._default_partition_name(h analytics.hypertables) RETURNS name
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

CREATE FUNCTION analytics_internal._hypertable(relation regclass) RETURNS analytics.hypertables
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
--
-- Never ahead of a sale: CREATE TABLE … PARTITION OF would take ACCESS EXCLUSIVE on the
-- hypertable, and behind a report reading it every sale would queue. So the chunk is made
-- as a table of its own and attached (SHARE UPDATE EXCLUSIVE on the hypertable: writers go
-- on); the default partition (moved from, and proved empty of the range by the attach) and
-- the tables the hypertable's foreign keys reference are taken by short tries
-- (_lock_tables).
CREATE FUNCTION analytics_internal._create_chunk(h analytics.hypertables, chunk_start timestamptz) RETURNS regclass
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    chunk_end constant timestamptz := chunk_start + analytics_internal._fixed_interval(h.chunk_interval);
    schema_name name;
    base name;
    suffix text;
    chunk_name text;
    chunk text;
    default_part regclass;
    role_before text;
    rows_in_range text;
    lock_tables text[];
    lock_modes text[];
BEGIN
    -- Moving rows needs session_replication_role (a superuser's setting); only for the table's owner.
    SELECT * INTO STRICT h FROM analytics.hypertables t WHERE t.hypertable_id = h.hypertable_id;
    PERFORM analytics_internal._require_owner(h.relation);
    IF EXISTS (SELECT 1 FROM analytics.chunks c WHERE c.hypertable_id = h.hypertable_id
               AND c.range_start < chunk_end AND c.range_end > chunk_start) THEN
        RETURN NULL;
    END IF;
    SELECT n.nspname, h.chunk_prefix INTO schema_name, base
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = h.relation;
    suffix := to_char(chunk_start AT TIME ZONE 'UTC',
                      CASE WHEN analytics_internal._fixed_interval(h.chunk_interval) >= interval '1 day' THEN 'YYYYMMDD' ELSE 'YYYYMMDD"_"HH24MI' END);
    chunk_name := left(base, 62 - length(suffix)) || '_' || suffix;
    IF to_regclass(format('%I.%I', schema_name, chunk_name)) IS NOT NULL THEN
        chunk_name := left(base, 52 - length(suffix)) || '_' || suffix || '_' || h.hypertable_id;
    END IF;
    chunk := format('%I.%I', schema_name, chunk_name);
    default_part := to_regclass(format('%I.%I', schema_name, analytics_internal._default_partition_name(h)));
    rows_in_range := format('%I >= %s AND %I < %s', h.time_column, analytics_internal._time_literal(h, chunk_start),
                            h.time_column, analytics_internal._time_literal(h, chunk_end));
    -- What a partition must carry for the attach (columns, NOT NULL, CHECK and generated
    -- columns); the attach itself adds the hypertable's indexes, foreign keys and row triggers.
    EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED
                    INCLUDING STORAGE INCLUDING COMPRESSION)', chunk, h.relation);
    -- the table's owner owns its chunks (drop_chunks runs as the caller)
    EXECUTE format('ALTER TABLE %s OWNER TO %I', chunk, (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = h.relation));
    SELECT array_agg(l.t), array_agg(l.mode) INTO lock_tables, lock_modes FROM (
        SELECT h.relation::text AS t, 'SHARE UPDATE EXCLUSIVE' AS mode
        UNION SELECT k.confrelid::regclass::text, 'SHARE ROW EXCLUSIVE' FROM pg_constraint k
              WHERE k.conrelid = h.relation AND k.contype = 'f' AND k.confrelid <> h.relation
        UNION SELECT default_part::text, 'ACCESS EXCLUSIVE' WHERE default_part IS NOT NULL) AS l;
    PERFORM analytics_internal._lock_tables_in_modes(lock_tables, lock_modes);
    IF default_part IS NOT NULL THEN
        role_before := current_setting('session_replication_role');
        PERFORM set_config('session_replication_role', 'replica', true);
        EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %s RETURNING *) INSERT INTO %s (%s) SELECT %s FROM moved',
                       default_part, rows_in_range, chunk, analytics_internal._stored_columns(h.relation),
                       analytics_internal._stored_columns(h.relation));
        PERFORM set_config('session_replication_role', role_before, true);
    END IF;
    EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM (%s) TO (%s)', h.relation, chunk,
                   analytics_internal._time_literal(h, chunk_start), analytics_internal._time_literal(h, chunk_end));
    RETURN chunk::regclass;
END
$$;

-- Chunks for now and the next `chunks_ahead` intervals, and for every row waiting in the
-- default partition. Returns how many chunks it created.
CREATE FUNCTION analytics_internal._maintain_chunks(h analytics.hypertables) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    created int := 0;
    chunk_start timestamptz;
    default_part regclass := to_regclass(format('%I.%I', (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                                           WHERE c.oid = h.relation),
                                                analytics_internal._default_partition_name(h)));
BEGIN
    FOR chunk_start IN
        SELECT analytics_internal._chunk_start(h, now()) + analytics_internal._fixed_interval(h.chunk_interval) * i
        FROM generate_series(0, h.chunks_ahead) AS i
    LOOP
        created := created + (analytics_internal._create_chunk(h, chunk_start) IS NOT NULL)::int;
    END LOOP;
    IF default_part IS NOT NULL THEN
        FOR chunk_start IN EXECUTE format('SELECT DISTINCT analytics_internal._chunk_start($1, %s) FROM %s ORDER BY 1',
                                          analytics_internal._as_instant_sql(h, quote_ident(h.time_column)), default_part) USING h
        LOOP
            created := created + (analytics_internal._create_chunk(h, chunk_start) IS NOT NULL)::int;
        END LOOP;
    END IF;
    RETURN created;
END
$$;

CREATE FUNCTION analytics_internal._job_hypertable(config jsonb) RETURNS analytics.hypertables
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
CREATE PROCEDURE analytics_internal.policy_chunk_maintenance(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    h analytics.hypertables := analytics_internal._job_hypertable(config);
BEGIN
    PERFORM analytics_internal._maintain_chunks(h);
END
$$;

-- Foreign keys into a hypertable, enforced by triggers --------------------------------------

-- Both triggers act only on what analytics_internal.replaced_foreign_keys says, found by the
-- table they fire on and the constraint name (TG_ARGV[0]); the other arguments are for people
-- reading the trigger (and they go stale when a table or column is renamed, which must not
-- stop a sale), so nothing is read from them. Attached to a table the catalog does not name,
-- they refuse: nothing from a trigger definition reaches SQL.
CREATE FUNCTION analytics_internal._replaced_foreign_key(fired_on oid, side text, args text[])
RETURNS analytics_internal.replaced_foreign_keys
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    k analytics_internal.replaced_foreign_keys;
BEGIN
    args := args[array_lower(args, 1):array_upper(args, 1)];  -- TG_ARGV counts from 0, a slice from 1
    SELECT * INTO k FROM analytics_internal.replaced_foreign_keys r
    WHERE r.constraint_name = args[1]
      -- row triggers of a hypertable fire on its chunks
      AND CASE side WHEN 'child' THEN r.child ELSE r.parent END = coalesce(pg_partition_root(fired_on), fired_on)
    -- two children may name their keys alike: the one the trigger names first
    ORDER BY side = 'parent' AND r.child = to_regclass(args[2]) DESC
    LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'trigger arguments % on % do not describe a foreign key lacaja_analytics replaced', args, fired_on::regclass
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'These trigger functions serve only the triggers create_hypertable(replace_foreign_keys => true) creates.';
    END IF;
    RETURN k;
END
$$;

-- A column's type as SQL (format_type quotes what needs quoting).
CREATE FUNCTION analytics_internal._column_type(relation regclass, column_name name) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
    WHERE a.attrelid = relation AND a.attname = column_name AND NOT a.attisdropped
$$;

-- `alias.col1 = (<param> ->> 'key1')::type1 AND ...`: a row of `relation` whose `columns` equal
-- the `keys` of a row passed as JSON (to_jsonb of the other table's row).
CREATE FUNCTION analytics_internal._key_matches(alias text, relation regclass, columns name[], param text, keys name[])
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT string_agg(format('%s.%I = (%s ->> %L)::%s', alias, c, param, k, analytics_internal._column_type(relation, c)), ' AND ')
    FROM unnest(columns, keys) AS m (c, k)
$$;

-- The key columns of a row as JSON text, each through its type's output function: never
-- to_jsonb() or a cast, which would run a cast function the type's owner wrote with the
-- extension's rights. Statements run as the tables' owners turn them back into values.
CREATE FUNCTION analytics_internal._key_values(row_value anyelement, columns name[]) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
    -- text that reads back as the same value, whatever the session set
    SET extra_float_digits = 3 SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' AS $$
DECLARE
    keys jsonb;
BEGIN
    EXECUTE format('SELECT jsonb_build_object(%s)',
                   (SELECT string_agg(format('%L, CASE WHEN ($1).%I IS NULL THEN NULL ELSE format(''%%s'', ($1).%I) END', c, c, c), ', ')
                    FROM unnest(columns) AS c))
       INTO keys USING row_value;
    RETURN keys;
END
$$;

-- Child side: the referenced row must exist (locked FOR KEY SHARE, as Postgres' own check
-- does), looked up in the parent table as its owner. `row_value` is the child's new row.
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

-- The check trigger of a replaced key whose parent keeps no registry of the referenced columns.
-- TG_ARGV: constraint name, parent, child columns, parent columns.
CREATE FUNCTION analytics_internal._fk_check_parent() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._fk_require_parent(TG_RELID, TG_ARGV, TG_TABLE_NAME, NEW);
    RETURN NULL;
END
$$;

-- The check trigger function of a replaced key whose parent keeps a registry of the referenced
-- columns with the parent row's time (create_hypertable(replace_foreign_keys => true) keeps one
-- for the referenced key): static SQL, one probe of the registry's primary key for the time,
-- then the parent row locked FOR KEY SHARE in its one chunk (planned per row with that time, so
-- only that chunk is opened), as Postgres' own check locks it: the number of chunks costs
-- nothing. Child, registry and parent columns have the same types and collations, compared with
-- pg_catalog's operators. tests/expected/foreign_key_check.sql shows one.
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

-- The registry of hypertable `parent`'s keys on exactly `parent_columns` that keeps the time
-- beside them (NULL when it keeps none).
CREATE FUNCTION analytics_internal._key_registry(parent regclass, parent_columns name[]) RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT r.registry FROM analytics_internal.replaced_unique_indexes r
    JOIN analytics.hypertables h ON h.relation = r.hypertable
    WHERE r.hypertable = parent AND r.key_columns = parent_columns
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = r.registry AND a.attname = h.time_column AND NOT a.attisdropped)
    LIMIT 1
$$;

-- Parent side: what the constraint's ON DELETE / ON UPDATE rule says. TG_ARGV: constraint
-- name, child, child columns, parent columns, delete action, update action (pg_constraint codes:
-- a no action, r restrict, c cascade, n set null, d set default).
CREATE FUNCTION analytics_internal._fk_parent_action() RETURNS trigger
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

-- Replaces the foreign key `con` (which references a table about to become a hypertable)
-- by two triggers: the child's check (generated when the parent keeps a registry of the
-- referenced columns and the child's columns have their types and collations, else the generic
-- one) and the parent's actions. `parent` is the table's name once converted.
CREATE FUNCTION analytics_internal._replace_foreign_key(con oid, parent text) RETURNS text
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

-- Unique keys across chunks ----------------------------------------------------------------
--
-- Postgres enforces a unique index on a partitioned table only when it contains the partition
-- column. LA-CAJA has two that cannot: invoice numbers, UNIQUE (store_id, sale_number) WHERE
-- sale_number IS NOT NULL, and idempotent sync, UNIQUE (request_id) WHERE request_id IS NOT
-- NULL. With replace_unique => true such an index stays enforced over every chunk by a
-- registry: a table of the keys alone, with a primary key, kept by statement triggers on the
-- hypertable. The registry's own unique index does the enforcing, so concurrent inserts of one
-- key wait for each other and the second fails, at every isolation level, exactly as with the
-- original index; the error carries the original index's name. The hypertable keeps a plain
-- index of the same definition for LA-CAJA's lookups.
CREATE TABLE analytics_internal.replaced_unique_indexes (
    hypertable   regclass NOT NULL,
    index_name   name     NOT NULL,
    registry     regclass NOT NULL,
    key_columns  name[]   NOT NULL,
    definition   text     NOT NULL,
    replaced_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hypertable, index_name)
);
COMMENT ON TABLE analytics_internal.replaced_unique_indexes IS
    'Unique indexes without the time column, enforced across a hypertable''s chunks by a registry of their keys (create_hypertable(replace_unique => true)).';

-- The key columns of an index, in order (INCLUDE columns left out).
CREATE FUNCTION analytics_internal._index_key_columns(index oid) RETURNS name[]
LANGUAGE sql STABLE AS $$
    SELECT ARRAY(SELECT a.attname FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY k(n, o)
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
                 WHERE i.indexrelid = index ORDER BY k.o)
$$;

-- `alias.c1, alias.c2, …`: columns as a list, optionally qualified.
CREATE FUNCTION analytics_internal._key_list(columns name[], alias text DEFAULT NULL) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(CASE WHEN alias IS NULL THEN quote_ident(c) ELSE alias || '.' || quote_ident(c) END, ', ')
    FROM unnest(columns) c
$$;

-- `left.c1 = right.c1 AND …` and `alias.c1 IS NOT NULL AND …` over key columns, for the
-- registry's statements.
CREATE FUNCTION analytics_internal._keys_equal(columns name[], left_alias text, right_alias text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(format('%1$s.%3$I = %2$s.%3$I', left_alias, right_alias, c), ' AND ') FROM unnest(columns) c
$$;
CREATE FUNCTION analytics_internal._keys_present(columns name[], alias text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT string_agg(format('%s.%I IS NOT NULL', alias, c), ' AND ') FROM unnest(columns) c
$$;

-- Why unique index `index` cannot be kept by a registry (NULL when it can): a btree over
-- plain columns of built-in types with their default operator classes (the registry compares
-- with the same operators, as the extension's owner), and a predicate that is at most "key
-- column IS NOT NULL" for some key columns (rows with a NULL key never conflict anyway).
CREATE FUNCTION analytics_internal._unique_registry_refusal(index oid) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    i pg_index;
    keys name[];
    predicate text;
    conjunct text;
BEGIN
    SELECT * INTO STRICT i FROM pg_index WHERE indexrelid = index;
    IF (SELECT c.relam FROM pg_class c WHERE c.oid = index) <> (SELECT oid FROM pg_am WHERE amname = 'btree') THEN
        RETURN 'it is not a btree index';
    ELSIF i.indexprs IS NOT NULL THEN
        RETURN 'it indexes expressions';
    ELSIF i.indnullsnotdistinct THEN
        RETURN 'it treats NULLs as equal';
    END IF;
    keys := analytics_internal._index_key_columns(index);
    IF EXISTS (SELECT 1 FROM unnest(i.indkey[0:i.indnkeyatts - 1]) k(n) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n
               JOIN pg_type t ON t.oid = a.atttypid WHERE t.typnamespace <> 'pg_catalog'::regnamespace) THEN
        RETURN 'a key column has a type of its own';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(i.indclass::oid[]) WITH ORDINALITY c(opclass, o) JOIN pg_opclass oc ON oc.oid = c.opclass
               WHERE c.o <= i.indnkeyatts AND NOT oc.opcdefault) THEN
        RETURN 'it uses an operator class that is not the default one';
    END IF;
    IF i.indpred IS NOT NULL THEN
        predicate := pg_get_expr(i.indpred, i.indrelid);
        FOREACH conjunct IN ARRAY regexp_split_to_array(translate(predicate, '()', ''), ' AND ') LOOP
            IF NOT EXISTS (SELECT 1 FROM unnest(keys) k WHERE conjunct = quote_ident(k) || ' IS NOT NULL') THEN
                RETURN format('its predicate (%s) is more than "key column IS NOT NULL"', predicate);
            END IF;
        END LOOP;
    END IF;
    RETURN NULL;
END
$$;

-- The statement trigger function of one registry: static SQL, generated when the registry is
-- made (its plans are kept per session; tests/expected/unique_registry_trigger.sql shows one).
-- `stored_columns`: the key columns, then what the registry keeps beside them (the time, for a
-- key that replaced foreign keys look up).
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

-- Makes the registry of unique index `index` (of the table being converted) for `hypertable`
-- (the new partitioned table, still filled by the conversion): the keys table, filled from the
-- rows present, its trigger function and triggers. The registry belongs to the extension's
-- owner: the triggers write it for any role that writes the hypertable. `beside_keys`: columns
-- it keeps beside the keys (the time column of a key that foreign keys reference: their checks
-- find the parent row's chunk by it).
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

-- Removes the keys of rows about to leave `hypertable` without a trigger seeing them (a dropped
-- chunk, rows deleted by retention): `rows` is a relation or subquery of those rows.
CREATE FUNCTION analytics_internal._forget_unique_keys(hypertable regclass, rows text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r analytics_internal.replaced_unique_indexes;
BEGIN
    FOR r IN SELECT * FROM analytics_internal.replaced_unique_indexes u WHERE u.hypertable = _forget_unique_keys.hypertable LOOP
        EXECUTE format('DELETE FROM %s AS k USING %s AS o WHERE %s', r.registry, rows,
                       analytics_internal._keys_equal(r.key_columns, 'k', 'o'));
    END LOOP;
END
$$;

-- Drops the registries of `hypertable` (a failed conversion, a hypertable forgotten).
CREATE FUNCTION analytics_internal._drop_unique_registries(hypertable regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r analytics_internal.replaced_unique_indexes;
BEGIN
    FOR r IN DELETE FROM analytics_internal.replaced_unique_indexes u WHERE u.hypertable = _drop_unique_registries.hypertable RETURNING * LOOP
        -- the function carries the registry's name (and its triggers go with it)
        EXECUTE format('DROP FUNCTION IF EXISTS %s() CASCADE', r.registry::text);
        EXECUTE format('DROP TABLE IF EXISTS %s', r.registry);
    END LOOP;
END
$$;

-- create_hypertable ---------------------------------------------------------------------

-- Why `relation` cannot become a hypertable as it is, one line per blocker with its way out
-- (empty when it can). Reads only the catalogs.
CREATE FUNCTION analytics_internal._hypertable_blockers(relation regclass, time_column name, extend_unique boolean,
                                               replace_foreign_keys boolean, replace_unique boolean DEFAULT false) RETURNS text[]
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
        SELECT CASE WHEN refusal IS NULL
                    THEN format('unique index %s does not include the time column %I: a partitioned table can only enforce it per chunk. '
                                'Pass replace_unique => true to keep it enforced across all chunks (by a registry of its keys), '
                                'or make it include %I', i.indexrelid::regclass, time_column, time_column)
                    ELSE format('unique index %s does not include the time column %I, and replace_unique cannot keep it: %s; '
                                'drop it, or make it include %I', i.indexrelid::regclass, time_column, refusal, time_column) END
        FROM pg_index i
        CROSS JOIN LATERAL (SELECT analytics_internal._unique_registry_refusal(i.indexrelid) AS refusal) AS r
        WHERE i.indrelid = relation AND i.indisunique
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.conrelid = relation)
          AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = time_column AND a.attnum = ANY (i.indkey))
          AND NOT (replace_unique AND r.refusal IS NULL)
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
        SELECT format('temporary view %s of another session reads %s; wait for that session to end', v.oid::regclass, relation)
        FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
        JOIN pg_class v ON v.oid = r.ev_class
        WHERE d.refobjid = relation AND v.relkind = 'v' AND v.relpersistence = 't' AND v.relnamespace <> pg_my_temp_schema()
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

CREATE FUNCTION analytics_internal._register_hypertable(relation regclass, time_column name, time_type regtype,
                                               chunk_interval interval, chunks_ahead int, chunk_prefix name)
RETURNS analytics.hypertables
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h analytics.hypertables;
BEGIN
    PERFORM analytics_internal._require_owner(relation);
    INSERT INTO analytics.hypertables (relation, time_column, time_type, chunk_interval, chunks_ahead, chunk_prefix)
    VALUES (relation, time_column, time_type, chunk_interval, chunks_ahead, chunk_prefix)
    RETURNING * INTO h;
    RETURN h;
END
$$;

-- A conversion in progress or done: create_hypertable runs these steps in the caller's
-- transaction (plain mode), or a background worker runs each in a transaction of its own
-- (online mode) while the caller waits: POS writes go on during the copy, logged by key
-- and applied to the new table; only the final swap stops them, for a moment.
CREATE TABLE analytics.hypertable_conversions (
    conversion_id          serial      PRIMARY KEY,
    relation               oid         NOT NULL,
    schema_name            name        NOT NULL,
    table_name             name        NOT NULL,
    time_column            name        NOT NULL,
    time_type              regtype     NOT NULL,
    chunk_interval         interval    NOT NULL,
    chunks_ahead           int         NOT NULL,
    extend_unique          boolean     NOT NULL,
    replace_foreign_keys   boolean     NOT NULL,
    replace_unique         boolean     NOT NULL DEFAULT false,
    create_default_indexes boolean     NOT NULL,
    migrate_data           boolean     NOT NULL,
    online                 boolean     NOT NULL,
    status                 text        NOT NULL DEFAULT 'starting'
                           CHECK (status IN ('starting', 'copying', 'indexing', 'catching_up', 'swapping', 'done', 'failed')),
    hypertable_id          int,
    staging                name,
    key_columns            name[],
    last_key               jsonb,
    indexed                boolean     NOT NULL DEFAULT false,
    rows_copied            bigint      NOT NULL DEFAULT 0,
    changes_applied        bigint      NOT NULL DEFAULT 0,
    requested_by           name        NOT NULL DEFAULT current_user,
    caller_pid             int,
    worker_pid             int,
    started_at             timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at            timestamptz,
    longest_lock_ms        numeric,
    sqlstate               text,
    error                  text
);
COMMENT ON TABLE analytics.hypertable_conversions IS
    'Every create_hypertable: how far it got, rows copied, changes applied while copying, the longest time it held POS writes back.';

CREATE FUNCTION analytics_internal._save_conversion(c analytics.hypertable_conversions) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE analytics.hypertable_conversions t SET
        status = c.status, hypertable_id = c.hypertable_id, staging = c.staging, key_columns = c.key_columns,
        last_key = c.last_key, indexed = c.indexed, rows_copied = c.rows_copied, changes_applied = c.changes_applied,
        worker_pid = c.worker_pid, finished_at = c.finished_at, longest_lock_ms = c.longest_lock_ms,
        sqlstate = c.sqlstate, error = c.error
    WHERE t.conversion_id = c.conversion_id AND t.requested_by = current_user;
END
$$;

-- Records a conversion of `relation` (the caller must own it) and returns it.
CREATE FUNCTION analytics_internal._request_conversion(relation regclass, time_column name, chunk_interval interval, chunks_ahead int,
                                              extend_unique boolean, replace_foreign_keys boolean,
                                              create_default_indexes boolean, migrate_data boolean, online boolean,
                                              caller_pid int, replace_unique boolean DEFAULT false)
RETURNS analytics.hypertable_conversions
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c analytics.hypertable_conversions;
BEGIN
    PERFORM analytics_internal._require_owner(relation);
    INSERT INTO analytics.hypertable_conversions (relation, schema_name, table_name, time_column, time_type, chunk_interval,
        chunks_ahead, extend_unique, replace_foreign_keys, replace_unique, create_default_indexes, migrate_data, online, key_columns,
        caller_pid, worker_pid)
    SELECT relation, n.nspname, cl.relname, time_column, a.atttypid::regtype, chunk_interval, chunks_ahead, extend_unique,
           replace_foreign_keys, replace_unique, create_default_indexes, migrate_data, online, analytics_internal._row_key(relation),
           caller_pid, CASE WHEN online THEN pg_backend_pid() END
    FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
    JOIN pg_attribute a ON a.attrelid = cl.oid AND a.attname = time_column
    WHERE cl.oid = relation
    RETURNING * INTO c;
    RETURN c;
END
$$;

-- The columns that identify a row (primary key, else a unique key of NOT NULL columns):
-- what the online copy pages by and logs changes by. NULL when the table has none.
CREATE FUNCTION analytics_internal._row_key(relation regclass) RETURNS name[]
LANGUAGE sql STABLE AS $$
    SELECT ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, i)
                 JOIN pg_attribute a ON a.attrelid = relation AND a.attnum = u.n ORDER BY u.i)
    FROM pg_constraint k
    WHERE k.conrelid = relation AND k.contype IN ('p', 'u')
      AND NOT EXISTS (SELECT 1 FROM unnest(k.conkey) u(n) JOIN pg_attribute a ON a.attrelid = relation AND a.attnum = u.n
                      WHERE NOT a.attnotnull)
    ORDER BY k.contype, cardinality(k.conkey)
    LIMIT 1
$$;

-- What the log records of a changed row: its key and its time (where its copy is).
CREATE FUNCTION analytics_internal._logged_columns(c analytics.hypertable_conversions) RETURNS name[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN c.time_column = ANY (c.key_columns) THEN c.key_columns ELSE c.key_columns || c.time_column END
$$;

-- Writes the keys of changed rows into the conversion's log (statement level: one insert
-- per POS statement). SECURITY DEFINER: POS roles write sales, not our log. The log and its
-- columns come from the conversion of the table the trigger fires on, never from TG_ARGV (it
-- only shows them): attached to any other table it refuses.
CREATE FUNCTION analytics_internal._log_changed_keys() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c analytics.hypertable_conversions;
    log_table text;
    columns text;
BEGIN
    SELECT * INTO c FROM analytics.hypertable_conversions t
    WHERE t.relation = TG_RELID AND t.online AND t.status NOT IN ('done', 'failed')
    ORDER BY t.conversion_id DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no conversion of % is logging changes', TG_RELID::regclass
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'This trigger function serves only the triggers an online create_hypertable creates.';
    END IF;
    log_table := (analytics_internal._conversion_names(c)).log_table;
    -- Found by name in LA-CAJA's schema, whose owner could put another table there: only the
    -- table the conversion made (its requester's, plain, no triggers) is written.
    IF NOT EXISTS (SELECT 1 FROM pg_class l WHERE l.oid = to_regclass(log_table) AND l.relkind = 'r'
                   AND l.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = c.requested_by)
                   AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = l.oid)) THEN
        RAISE EXCEPTION 'the change log % of the conversion of % is not the one it made', log_table, TG_RELID::regclass
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    columns := analytics_internal._key_list(analytics_internal._logged_columns(c));
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM old_rows', log_table, columns, columns);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM new_rows', log_table, columns, columns);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION analytics_internal._conversion_names(c analytics.hypertable_conversions, OUT old_table text, OUT staging text,
                                            OUT log_table text, OUT retired text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('%I.%I', c.schema_name, c.table_name),
           format('%I.%I', c.schema_name, left(c.table_name, 40) || '_lacaja_new_' || c.conversion_id),
           format('%I.%I', c.schema_name, left(c.table_name, 40) || '_lacaja_log_' || c.conversion_id),
           left(c.table_name, 40) || '_lacaja_old_' || c.conversion_id
$$;

-- Step 1: checks that need the data, the new partitioned table with chunks for every row
-- present and ahead, and (online) the log of changes made while the copy runs.
CREATE FUNCTION analytics_internal._conversion_start(c analytics.hypertable_conversions) RETURNS analytics.hypertable_conversions
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names record := analytics_internal._conversion_names(c);
    has_rows boolean;
    h analytics.hypertables;
    chunk_start timestamptz;
    locked_at timestamptz;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s)', names.old_table) INTO has_rows;
    IF has_rows AND NOT c.migrate_data THEN
        RAISE EXCEPTION 'table "%" is not empty', c.table_name USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'You can migrate data by specifying ''migrate_data => true'' when calling this function.';
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s WHERE %I IS NULL)', names.old_table, c.time_column) INTO has_rows;
    IF has_rows THEN
        RAISE EXCEPTION 'column "%" of % has NULL values; a hypertable needs a time on every row', c.time_column, names.old_table
            USING ERRCODE = 'not_null_violation',
                  HINT = format('Fill them first: UPDATE %s SET %I = ... WHERE %I IS NULL;', names.old_table, c.time_column, c.time_column);
    END IF;
    EXECUTE format('CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED INCLUDING IDENTITY
                    INCLUDING STORAGE INCLUDING COMMENTS INCLUDING STATISTICS) PARTITION BY RANGE (%I)',
                   names.staging, names.old_table, c.time_column);
    EXECUTE format('ALTER TABLE %s ALTER COLUMN %I SET NOT NULL', names.staging, c.time_column);
    -- The table's owner owns the new table from the start, and so its chunks and sequences
    -- (nothing to re-own while the swap holds POS writes back).
    EXECUTE format('ALTER TABLE %s OWNER TO %I', names.staging,
                   (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = c.relation));
    h := analytics_internal._register_hypertable(names.staging::regclass, c.time_column, c.time_type, c.chunk_interval,
                                        c.chunks_ahead, c.table_name);
    FOR chunk_start IN EXECUTE format('SELECT DISTINCT analytics_internal._chunk_start($1, %s) FROM %s ORDER BY 1',
                                      analytics_internal._as_instant_sql(h, quote_ident(c.time_column)), names.old_table) USING h
    LOOP
        PERFORM analytics_internal._create_chunk(h, chunk_start);
    END LOOP;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT', c.schema_name, analytics_internal._default_partition_name(h), names.staging);
    EXECUTE format('ALTER TABLE %I.%I OWNER TO %I', c.schema_name, analytics_internal._default_partition_name(h),
                   (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = c.relation));
    PERFORM analytics_internal._maintain_chunks(h);
    IF c.online THEN
        EXECUTE format('CREATE TABLE %s AS SELECT %s FROM %s WITH NO DATA', names.log_table, analytics_internal._key_list(analytics_internal._logged_columns(c)),
                       names.old_table);
        -- CREATE TRIGGER holds POS writes back until this step commits: measured.
        locked_at := clock_timestamp();
        PERFORM analytics_internal._lock_tables(ARRAY[names.old_table], 'SHARE ROW EXCLUSIVE');
        EXECUTE format('CREATE TRIGGER lacaja_conversion_log_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION analytics_internal._log_changed_keys(%L, %L)',
                       names.old_table, names.log_table, analytics_internal._key_list(analytics_internal._logged_columns(c)));
        EXECUTE format('CREATE TRIGGER lacaja_conversion_log_update AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION analytics_internal._log_changed_keys(%L, %L)',
                       names.old_table, names.log_table, analytics_internal._key_list(analytics_internal._logged_columns(c)));
        EXECUTE format('CREATE TRIGGER lacaja_conversion_log_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows
                        FOR EACH STATEMENT EXECUTE FUNCTION analytics_internal._log_changed_keys(%L, %L)',
                       names.old_table, names.log_table, analytics_internal._key_list(analytics_internal._logged_columns(c)));
        c.longest_lock_ms := round(extract(epoch FROM clock_timestamp() - locked_at) * 1000, 1);
    END IF;
    c.hypertable_id := h.hypertable_id;
    c.staging := split_part(names.staging, '.', 2);
    c.status := 'copying';
    RETURN c;
END
$$;

-- The columns a copy writes (not generated ones), in table order, optionally qualified.
CREATE FUNCTION analytics_internal._stored_columns(relation oid, alias text DEFAULT NULL) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT string_agg(concat(alias || '.', quote_ident(a.attname)), ', ' ORDER BY a.attnum) FROM pg_attribute a
    WHERE a.attrelid = relation AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
$$;

-- Step 2: copies the next `batch` blocks of the old table in physical order (all of it when
-- NULL): a TID range scan reads it sequentially. A row a POS session changes meanwhile may
-- be copied twice (an old and a new version): its key is in the log, and applying the log
-- replaces every copy by the current row before the keys are built.
CREATE FUNCTION analytics_internal._conversion_copy(c analytics.hypertable_conversions, batch int) RETURNS analytics.hypertable_conversions
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names record := analytics_internal._conversion_names(c);
    columns text := analytics_internal._stored_columns(c.relation);
    copied bigint;
    first_block bigint := coalesce((c.last_key ->> 'next_block')::bigint, 0);
    end_block bigint := coalesce((c.last_key ->> 'end_block')::bigint,
                                 pg_relation_size(c.relation) / current_setting('block_size')::bigint);
BEGIN
    IF batch IS NULL THEN
        EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM ONLY %s', names.staging, columns, columns,
                       names.old_table);
        GET DIAGNOSTICS copied = ROW_COUNT;
        c.rows_copied := c.rows_copied + copied;
        c.status := 'indexing';
        RETURN c;
    END IF;
    -- Rows written before the log existed are within the blocks the table had once it did.
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM ONLY %s
                    WHERE ctid >= format(''(%%s,0)'', $1::bigint)::tid AND ctid < format(''(%%s,0)'', $2::bigint)::tid',
                   names.staging, columns, columns, names.old_table)
       USING first_block, first_block + batch;
    GET DIAGNOSTICS copied = ROW_COUNT;
    c.rows_copied := c.rows_copied + copied;
    c.last_key := jsonb_build_object('next_block', first_block + batch, 'end_block', end_block);
    IF first_block + batch >= end_block THEN
        c.status := 'catching_up';  -- then indexing, then catching up again before the swap
    END IF;
    RETURN c;
END
$$;
-- Step 4: indexes, keys (with the time column added where extend_unique allows) and
-- outbound foreign keys, built on the new table while the POS still writes the old one.
-- Index-backed names are taken at the swap.
CREATE FUNCTION analytics_internal._conversion_index(c analytics.hypertable_conversions) RETURNS analytics.hypertable_conversions
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

CREATE FUNCTION analytics_internal._staging_name(name name, conversion_id int) RETURNS name
LANGUAGE sql IMMUTABLE AS $$
    SELECT left(name, 45) || '_lacaja_' || conversion_id
$$;

-- Step 3 and 5 (online): applies up to `batch` logged changes (all when NULL) to the new
-- table: each changed key is deleted there and copied again from the old table as it is now.
CREATE FUNCTION analytics_internal._conversion_apply_log(c analytics.hypertable_conversions, batch int) RETURNS analytics.hypertable_conversions
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

-- Runs `statements` (the extension's own, never a caller's text) as one try, by short tries: while a
-- request for a lock that conflicts with POS writes waits, every sale queues behind it
-- (Postgres grants in order), so each try waits at most lacaja_analytics.maintenance_lock_timeout
-- (20 ms) for any lock, and a failed try — rolled back whole — is followed by a jittered backoff
-- (50 ms doubling to 1 s) and another, until lacaja_analytics.maintenance_lock_wait (2
-- minutes). A report holding a table for minutes thus costs sales a few short waits, never the
-- report's length; and the caller never deadlocks with a POS transaction (which would then be
-- the one to fail). Gives up with SQLSTATE 55P03 (lock_not_available), having changed nothing.
CREATE FUNCTION analytics_internal._by_short_tries(statements text[], what text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    try_for constant text := coalesce(nullif(current_setting('lacaja_analytics.maintenance_lock_timeout', true), ''), '20ms');
    wait_for constant text := coalesce(nullif(current_setting('lacaja_analytics.maintenance_lock_wait', true), ''), '2min');
    give_up_at constant timestamptz := clock_timestamp() + wait_for::interval;
    lock_timeout_before constant text := current_setting('lock_timeout');
    backoff float8 := 0.05;
    tries int := 0;
    statement text;
BEGIN
    -- A concurrent index build (the builder of create_recommended_indexes) waits for every
    -- transaction older than its snapshots, this one included, while holding what this one
    -- waits for: neither would move until this gave up. So this gives way at once (a job
    -- retries at its next run), and the builder waits for this transaction before each build.
    IF NOT pg_try_advisory_xact_lock_shared(1279345482, 3) THEN
        RAISE EXCEPTION 'could not %: an index build is running', what
            USING ERRCODE = 'lock_not_available',
                  HINT = 'Nothing was changed. Try again when analytics.index_builds shows no build in progress; a job retries at its next run.';
    END IF;
    LOOP
        tries := tries + 1;
        BEGIN
            PERFORM set_config('lock_timeout', try_for, true);
            FOREACH statement IN ARRAY statements LOOP
                EXECUTE statement;
            END LOOP;
            PERFORM set_config('lock_timeout', lock_timeout_before, true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            PERFORM set_config('lock_timeout', lock_timeout_before, true);
            IF clock_timestamp() >= give_up_at THEN
                RAISE EXCEPTION 'could not %: % tries of % each over %; other sessions kept the tables busy', what, tries, try_for, wait_for
                    USING ERRCODE = 'lock_not_available',
                          HINT = 'Nothing was changed. A job retries at its next run; otherwise try again when the long transactions '
                                 'on those tables (see pg_stat_activity) have ended, or raise lacaja_analytics.maintenance_lock_wait.';
            END IF;
            PERFORM pg_sleep(backoff * (0.5 + random()));
            backoff := least(backoff * 2, 1.0);
        END;
    END LOOP;
END
$$;

-- Locks each of `tables` in the mode at the same position of `modes`, all at once, by short
-- tries: one try takes every lock or none, so two maintenance operations never hold one lock
-- each while waiting for the other's. In a fixed order (modes weakest first, then names).
-- Each table by itself (ONLY): a hypertable's chunks are named when they are meant, and a lock
-- on every chunk would wait for any reader of any of them. Everything a later statement of the
-- caller locks must be named here: after it, locks are waited for as usual.
CREATE FUNCTION analytics_internal._lock_tables_in_modes(tables text[], modes text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    strength constant text[] := ARRAY['ACCESS SHARE', 'ROW SHARE', 'ROW EXCLUSIVE', 'SHARE UPDATE EXCLUSIVE', 'SHARE',
                                      'SHARE ROW EXCLUSIVE', 'EXCLUSIVE', 'ACCESS EXCLUSIVE'];
    statements text[];
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(modes) m WHERE NOT m = ANY (strength)) THEN
        RAISE EXCEPTION 'unknown lock mode in %', modes;
    END IF;
    statements := ARRAY(
        SELECT format('LOCK TABLE %s IN %s MODE', string_agg(DISTINCT 'ONLY ' || l.t, ', ' ORDER BY 'ONLY ' || l.t), l.mode)
        FROM (SELECT u.t::regclass::text AS t, u.mode FROM unnest(tables, modes) AS u(t, mode) WHERE u.t IS NOT NULL) AS l
        GROUP BY l.mode ORDER BY array_position(strength, l.mode));
    IF cardinality(statements) > 0 THEN
        PERFORM analytics_internal._by_short_tries(statements, 'take ' || array_to_string(statements, '; '));
    END IF;
END
$$;

-- The same, every table in one mode.
CREATE FUNCTION analytics_internal._lock_tables(tables text[], mode text) RETURNS void
LANGUAGE sql AS $$
    SELECT analytics_internal._lock_tables_in_modes(tables, array_fill(mode, ARRAY[cardinality(tables)]))
$$;

-- Everything a swap locks: the table, the tables whose foreign keys point at it, the views
-- over it, and the tables it references (dropping its foreign keys changes their triggers).
CREATE FUNCTION analytics_internal._conversion_lock_set(relation oid) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(r::regclass::text) FROM (
        SELECT relation AS r
        UNION SELECT k.conrelid FROM pg_constraint k WHERE k.confrelid = relation AND k.contype = 'f'
        UNION SELECT k.confrelid FROM pg_constraint k WHERE k.conrelid = relation AND k.contype = 'f'
        UNION SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
              WHERE d.refobjid = relation AND r.ev_class <> relation) AS t
$$;

-- Step 6: the swap. With every lock taken at once, applies the last logged changes, puts
-- the new table in the old one's place with its name, indexes, keys, triggers (ours
-- included), policies, grants, owner, comment, views over it and sequences, replaces the
-- foreign keys that pointed at it, drops the old table and schedules chunk maintenance.
CREATE FUNCTION analytics_internal._conversion_swap(c analytics.hypertable_conversions) RETURNS analytics.hypertable_conversions
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

CREATE FUNCTION analytics_internal._exec(statement text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE statement;
END
$$;

-- One step of conversion `id`, as its own transaction in online mode; returns the status
-- reached. A step copies about `batch` rows (batch / 50 blocks) or applies `batch` changes.
CREATE FUNCTION analytics_internal._conversion_step(id int, batch int DEFAULT 50000) RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c analytics.hypertable_conversions;
BEGIN
    SELECT * INTO STRICT c FROM analytics.hypertable_conversions WHERE conversion_id = id;
    -- A caller that gave up (cancelled, disconnected) takes the conversion with it.
    IF c.online AND c.status NOT IN ('done', 'failed')
       AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = c.caller_pid AND a.state = 'active') THEN
        RAISE EXCEPTION 'create_hypertable(%) was cancelled by its caller', c.table_name USING ERRCODE = 'query_canceled';
    END IF;
    c := CASE c.status
        WHEN 'starting' THEN analytics_internal._conversion_start(c)
        WHEN 'copying' THEN analytics_internal._conversion_copy(c, CASE WHEN c.online THEN greatest(batch / 50, 1) END)
        WHEN 'indexing' THEN analytics_internal._conversion_index(c)
        -- before the keys are built, all changes logged during the copy at once
        WHEN 'catching_up' THEN analytics_internal._conversion_apply_log(c, CASE WHEN c.indexed THEN batch END)
        WHEN 'swapping' THEN analytics_internal._conversion_swap(c)
        ELSE c END;
    PERFORM analytics_internal._save_conversion(c);
    RETURN c.status;
END
$$;

-- After a failed step (its transaction rolled back): removes what earlier steps left (the new
-- table, its chunks, the log and its triggers), so the table is as it was.
CREATE FUNCTION analytics_internal._conversion_abandon(id int, failed_sqlstate text, message text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c analytics.hypertable_conversions;
    names record;
    t text;
BEGIN
    SELECT * INTO STRICT c FROM analytics.hypertable_conversions WHERE conversion_id = id;
    IF c.status IN ('done', 'failed') THEN
        RETURN;
    END IF;
    names := analytics_internal._conversion_names(c);
    IF to_regclass(names.old_table) IS NOT NULL AND to_regclass(names.old_table) = c.relation THEN
        PERFORM analytics_internal._lock_tables(ARRAY[names.old_table], 'SHARE ROW EXCLUSIVE');
        FOREACH t IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'lacaja_conversion_log_' || t, names.old_table);
        END LOOP;
    END IF;
    IF to_regclass(names.staging) IS NOT NULL THEN
        PERFORM analytics_internal._drop_unique_registries(names.staging::regclass);
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %s, %s', names.staging, names.log_table);
    PERFORM analytics_internal._forget_hypertable(c.hypertable_id);
    c.status := 'failed';
    c.sqlstate := failed_sqlstate;
    c.error := message;
    c.finished_at := clock_timestamp();
    PERFORM analytics_internal._save_conversion(c);
END
$$;

-- An online conversion whose worker is gone without finishing (the server was killed or
-- restarted: a worker is not restarted) is undone as a failed step is: the table is as it
-- was, and create_hypertable can run again. Its worker is alive when a process of that pid and
-- type started before the conversion (a pid reused after a restart started later).
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

CREATE FUNCTION analytics_internal._forget_hypertable(id int) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM analytics.hypertables h WHERE h.hypertable_id = id
      AND (to_regclass(h.relation::text) IS NULL
           OR analytics_internal._session_owns(h.relation))
$$;

CREATE FUNCTION analytics.create_hypertable(relation regclass, time_column_name name,
                                            chunk_time_interval interval DEFAULT interval '7 days',
                                            if_not_exists boolean DEFAULT false, migrate_data boolean DEFAULT false,
                                            create_default_indexes boolean DEFAULT true,
                                            extend_unique boolean DEFAULT false, replace_foreign_keys boolean DEFAULT false,
                                            chunks_ahead int DEFAULT 7, online boolean DEFAULT NULL,
                                            replace_unique boolean DEFAULT false)
RETURNS TABLE (hypertable_id int, schema_name name, table_name name, created boolean)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel record;
    time_type regtype;
    blockers text[];
    c analytics.hypertable_conversions;
    run_online boolean;
    worker_pid int;
    gone int := 0;
    started constant timestamptz := clock_timestamp();
BEGIN
    SELECT cl.oid, cl.relkind, cl.relispartition, n.nspname, cl.relname
      INTO rel FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE cl.oid = relation;
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
    SELECT a.atttypid::regtype INTO time_type
    FROM pg_attribute a WHERE a.attrelid = relation AND a.attname = time_column_name AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column "%" does not exist', time_column_name USING ERRCODE = 'undefined_column';
    END IF;
    IF time_type NOT IN ('timestamptz'::regtype, 'timestamp'::regtype, 'date'::regtype) THEN
        RAISE EXCEPTION 'invalid type for dimension "%"', time_column_name USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Use a timestamptz, timestamp or date column.';
    END IF;
    IF chunk_time_interval IS NULL OR analytics_internal._fixed_interval(chunk_time_interval) < interval '1 minute' THEN
        RAISE EXCEPTION 'invalid chunk_time_interval %', coalesce(chunk_time_interval::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use an interval of at least one minute, e.g. INTERVAL ''1 day''.';
    END IF;
    blockers := analytics_internal._hypertable_blockers(relation, time_column_name, extend_unique, replace_foreign_keys, replace_unique);
    IF blockers <> '{}' THEN
        RAISE EXCEPTION 'cannot turn % into a hypertable; nothing was changed:%', relation, E'\n  - ' || array_to_string(blockers, E'\n  - ')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Each line says what to do. extend_unique, replace_unique and replace_foreign_keys accept those changes explicitly.';
    END IF;

    -- Online needs its own transactions (a background worker), a key to page and log by, and
    -- a caller holding no lock on the table; otherwise the conversion runs here, holding the
    -- table until this transaction commits (as TimescaleDB does).
    run_online := coalesce(online, migrate_data)
                  AND analytics_internal._row_key(relation) IS NOT NULL
                  AND NOT analytics_internal._in_transaction_block()
                  AND NOT EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = pg_backend_pid() AND l.relation = create_hypertable.relation);
    IF online AND NOT run_online THEN
        RAISE EXCEPTION 'cannot convert % online', relation USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'Online conversion needs a primary key on the table, and a call outside BEGIN ... COMMIT that has not touched the table.';
    END IF;
    IF run_online THEN
        worker_pid := analytics_internal._start_conversion_worker(relation, time_column_name, chunk_time_interval, chunks_ahead,
                                                         extend_unique, replace_foreign_keys, create_default_indexes, migrate_data,
                                                         replace_unique);
        LOOP
            SELECT * INTO c FROM analytics.hypertable_conversions t
            WHERE t.caller_pid = pg_backend_pid() AND t.relation = create_hypertable.relation AND t.started_at >= started
            ORDER BY t.conversion_id DESC LIMIT 1;
            EXIT WHEN c.status IN ('done', 'failed');
            -- pg_stat_activity is read once per transaction unless told otherwise
            PERFORM pg_stat_clear_snapshot();
            IF NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = worker_pid) THEN
                gone := gone + 1;
            ELSE
                gone := 0;
            END IF;
            IF gone >= 10 THEN
                -- it may have finished between the two reads
                SELECT * INTO c FROM analytics.hypertable_conversions t
                WHERE t.caller_pid = pg_backend_pid() AND t.relation = create_hypertable.relation AND t.started_at >= started
                ORDER BY t.conversion_id DESC LIMIT 1;
                EXIT WHEN c.status IN ('done', 'failed');
                RAISE EXCEPTION 'the conversion of % stopped (its background worker ended)', relation
                    USING HINT = 'See analytics.hypertable_conversions and the server log; the table is unchanged until the swap.';
            END IF;
            PERFORM pg_sleep(0.05);
        END LOOP;
        IF c.status = 'failed' THEN
            RAISE EXCEPTION '%', c.error USING ERRCODE = coalesce(c.sqlstate, 'XX000'),
                HINT = format('Nothing was changed (conversion %s in analytics.hypertable_conversions).', c.conversion_id);
        END IF;
    ELSE
        PERFORM analytics_internal._lock_tables(analytics_internal._conversion_lock_set(relation), 'ACCESS EXCLUSIVE');
        c := analytics_internal._request_conversion(relation, time_column_name, chunk_time_interval, chunks_ahead, extend_unique,
                                           replace_foreign_keys, create_default_indexes, migrate_data, false, pg_backend_pid(),
                                           replace_unique);
        WHILE analytics_internal._conversion_step(c.conversion_id) <> 'done' LOOP
        END LOOP;
        SELECT * INTO c FROM analytics.hypertable_conversions t WHERE t.conversion_id = c.conversion_id;
    END IF;
    RAISE NOTICE 'converted %.% into a hypertable in % ms (% rows%; POS writes held back: %)', quote_ident(rel.nspname), quote_ident(rel.relname),
        round(extract(epoch FROM clock_timestamp() - started) * 1000),
        c.rows_copied, CASE WHEN c.online THEN format(', %s changes made meanwhile applied', c.changes_applied) ELSE '' END,
        coalesce(c.longest_lock_ms::text || ' ms', 'until this transaction commits');
    RETURN QUERY SELECT c.hypertable_id, rel.nspname, rel.relname, true;
END
$$;

CREATE FUNCTION analytics_internal._label_job(id int, application_name text, hypertable regclass) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE analytics.jobs j SET application_name = _label_job.application_name, hypertable = _label_job.hypertable
    WHERE j.job_id = id AND pg_has_role(current_user, j.owner, 'MEMBER')
$$;


-- Chunks and retention --------------------------------------------------------------------

CREATE FUNCTION analytics.show_chunks(relation regclass, older_than timestamptz DEFAULT NULL, newer_than timestamptz DEFAULT NULL)
RETURNS SETOF regclass LANGUAGE sql STABLE AS $$
    SELECT c.chunk FROM analytics.chunks c
    WHERE c.hypertable_id = (analytics_internal._hypertable(relation)).hypertable_id
      AND (older_than IS NULL OR c.range_end <= older_than)
      AND (newer_than IS NULL OR c.range_start >= newer_than)
    ORDER BY c.range_start
$$;
CREATE FUNCTION analytics.show_chunks(relation regclass, older_than interval, newer_than interval DEFAULT NULL)
RETURNS SETOF regclass LANGUAGE sql STABLE AS $$
    SELECT analytics.show_chunks(relation, now() - older_than, now() - newer_than)
$$;

-- Drops whole chunks that end at or before `older_than`. Rows of those ranges waiting in the
-- default partition go too. Rollups keep their history: dropping a chunk deletes nothing row
-- by row, no trigger sees it, and verify / refresh leave the days before
-- hypertables.dropped_before alone.
--
-- Dropping a partition takes ACCESS EXCLUSIVE on the hypertable: the hypertable and every
-- chunk to drop are locked at once by short tries (_lock_tables), so that sales never queue
-- behind a report for it, and held only for the drops themselves.
CREATE FUNCTION analytics.drop_chunks(relation regclass, older_than timestamptz, newer_than timestamptz DEFAULT NULL,
                                      verbose boolean DEFAULT false)
RETURNS SETOF text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h analytics.hypertables := analytics_internal._hypertable(relation);
    doomed analytics.chunks[];
    c analytics.chunks;
    default_part regclass;
    role_before text;
    horizon timestamptz;
    waiting_until timestamptz;
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'drop_chunks needs older_than' USING HINT = 'e.g. SELECT analytics.drop_chunks(''events'', INTERVAL ''2 years'');';
    END IF;
    PERFORM analytics_internal._require_owner(h.relation);
    doomed := ARRAY(SELECT ch FROM analytics.chunks ch
                    WHERE ch.hypertable_id = h.hypertable_id AND ch.range_end <= older_than
                      AND (newer_than IS NULL OR ch.range_start >= newer_than)
                    ORDER BY ch.range_start);
    default_part := to_regclass(format('%I.%I', (SELECT n.nspname FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
                                                  WHERE k.oid = h.relation),
                                       analytics_internal._default_partition_name(h)));
    IF cardinality(doomed) > 0 THEN
        -- dropping a partition also takes the default partition, whose range grows
        PERFORM analytics_internal._lock_tables(h.relation::text || ARRAY(SELECT (d).chunk::text FROM unnest(doomed) AS d)
                                                || default_part::text, 'ACCESS EXCLUSIVE');
    END IF;
    IF default_part IS NOT NULL THEN
        -- A row delete (writers are not stopped), unseen by triggers like a dropped chunk's rows.
        role_before := current_setting('session_replication_role');
        PERFORM set_config('session_replication_role', 'replica', true);
        EXECUTE format('CREATE TEMP TABLE lacaja_retired ON COMMIT DROP AS
                        WITH gone AS (DELETE FROM %1$s AS d WHERE analytics_internal._chunk_start($1, %2$s) + $2 <= $3
                                          AND ($4 IS NULL OR analytics_internal._chunk_start($1, %2$s) >= $4)
                                      RETURNING *)
                        SELECT * FROM gone',
                       default_part, analytics_internal._as_instant_sql(h, 'd.' || quote_ident(h.time_column)))
            USING h, analytics_internal._fixed_interval(h.chunk_interval), older_than, newer_than;
        PERFORM set_config('session_replication_role', role_before, true);
        EXECUTE format('SELECT max(analytics_internal._chunk_start($1, %s)) + $2 FROM pg_temp.lacaja_retired AS d',
                       analytics_internal._as_instant_sql(h, 'd.' || quote_ident(h.time_column)))
            INTO waiting_until USING h, analytics_internal._fixed_interval(h.chunk_interval);
        PERFORM analytics_internal._forget_unique_keys(h.relation, 'pg_temp.lacaja_retired');
        DROP TABLE pg_temp.lacaja_retired;
    END IF;
    FOREACH c IN ARRAY doomed LOOP
        PERFORM analytics_internal._forget_unique_keys(h.relation, c.chunk::text);
        EXECUTE format('DROP TABLE %s', c.chunk);
        IF drop_chunks.verbose THEN
            RAISE INFO 'dropping chunk %', c.chunk;
        END IF;
        horizon := greatest(horizon, c.range_end);
        RETURN NEXT format('%I.%I', c.chunk_schema, c.chunk_name);
    END LOOP;
    IF newer_than IS NULL AND greatest(horizon, waiting_until) IS NOT NULL THEN
        PERFORM analytics_internal._set_dropped_before(h.hypertable_id, greatest(horizon, waiting_until));
    END IF;
END
$$;
CREATE FUNCTION analytics.drop_chunks(relation regclass, older_than interval, newer_than interval DEFAULT NULL,
                                      verbose boolean DEFAULT false)
RETURNS SETOF text LANGUAGE sql AS $$
    SELECT analytics.drop_chunks(relation, now() - older_than, now() - newer_than, drop_chunks.verbose)
$$;

CREATE FUNCTION analytics_internal._set_dropped_before(id int, horizon timestamptz) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    UPDATE analytics.hypertables h SET dropped_before = greatest(h.dropped_before, horizon)
    WHERE h.hypertable_id = id AND analytics_internal._session_owns(h.relation)
$$;

-- What retention on `relation` would do wrong, if anything: an error to refuse, warnings to
-- say. Stock is the sum of every movement ever made (SPEC §1): dropping old movements
-- changes LA-CAJA's own product_stock view, so it is refused; dropping sales leaves their
-- items and returns behind and is said.
CREATE FUNCTION analytics_internal._retention_concerns(relation regclass, OUT refusal text, OUT warnings text[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cfg analytics_internal.source_config;
BEGIN
    warnings := '{}';
    SELECT * INTO cfg FROM analytics_internal.source_config;
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
        FROM analytics_internal.replaced_foreign_keys r WHERE r.parent = relation);
END
$$;

CREATE PROCEDURE analytics_internal.policy_retention(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    h analytics.hypertables := analytics_internal._job_hypertable(config);
BEGIN
    PERFORM analytics.drop_chunks(h.relation, now() - (config ->> 'drop_after')::interval);
END
$$;

CREATE FUNCTION analytics.add_retention_policy(relation regclass, drop_after interval, if_not_exists boolean DEFAULT false,
                                               schedule_interval interval DEFAULT NULL, initial_start timestamptz DEFAULT NULL,
                                               timezone text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h analytics.hypertables := analytics_internal._hypertable(relation);
    concerns record := analytics_internal._retention_concerns(relation);
    existing int;
    job int;
    warning text;
BEGIN
    IF drop_after IS NULL OR drop_after <= interval '0' THEN
        RAISE EXCEPTION 'drop_after must be a positive interval, not %', coalesce(drop_after::text, 'NULL');
    END IF;
    SELECT j.job_id INTO existing FROM analytics.jobs j
    WHERE j.proc = 'analytics_internal.policy_retention'::regproc AND (j.config ->> 'hypertable_id')::int = h.hypertable_id;
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
    job := analytics.add_job('analytics_internal.policy_retention'::regproc,
                             coalesce(schedule_interval, least(analytics_internal._fixed_interval(h.chunk_interval), interval '1 day')),
                             jsonb_build_object('hypertable_id', h.hypertable_id, 'drop_after', drop_after),
                             initial_start => initial_start, timezone => timezone);
    PERFORM analytics_internal._label_job(job, format('Retention Policy [%s]', job), relation);
    RETURN job;
END
$$;

CREATE FUNCTION analytics.remove_retention_policy(relation regclass, if_exists boolean DEFAULT false) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id int := (SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics_internal.policy_retention'::regproc
               AND (j.config ->> 'hypertable_id')::int = (analytics_internal._hypertable(relation)).hypertable_id);
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

CREATE FUNCTION analytics_internal._rollup_views() RETURNS regclass[]
LANGUAGE sql STABLE AS $$
    SELECT array_agg(to_regclass('analytics.' || v)) FILTER (WHERE to_regclass('analytics.' || v) IS NOT NULL)
    FROM unnest(ARRAY['sales_hourly', 'sales_daily', 'sales_by_payment_daily', 'sales_heatmap', 'product_sales_daily',
                      'product_stock', 'inventory_metrics', 'mv_sales_daily', 'mv_top_products_30d', 'mv_inventory_metrics',
                      'mv_customer_metrics']) AS v
$$;

-- The window of a policy as local days: [from_day, to_day), widened by a day on each side
-- so that every store's zone is covered (rows outside it are exact anyway).
CREATE FUNCTION analytics_internal._policy_window(config jsonb, OUT from_day date, OUT to_day date)
LANGUAGE sql STABLE AS $$
    SELECT ((now() - (config ->> 'start_offset')::interval) AT TIME ZONE 'UTC')::date - 1,
           ((now() - (config ->> 'end_offset')::interval) AT TIME ZONE 'UTC')::date + 2
$$;

CREATE PROCEDURE analytics_internal.policy_refresh_continuous_aggregate(job_id int, config jsonb)
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

CREATE FUNCTION analytics.add_continuous_aggregate_policy(continuous_aggregate regclass, start_offset interval, end_offset interval,
                                                          schedule_interval interval, if_not_exists boolean DEFAULT false,
                                                          initial_start timestamptz DEFAULT NULL, timezone text DEFAULT NULL)
RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    existing int;
    job int;
BEGIN
    IF continuous_aggregate IS NULL OR NOT continuous_aggregate = ANY (analytics_internal._rollup_views()) THEN
        RAISE EXCEPTION '% is not a rollup of lacaja_analytics', coalesce(continuous_aggregate::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use one of: ' || array_to_string(analytics_internal._rollup_views()::text[], ', ');
    END IF;
    IF start_offset IS NOT NULL AND end_offset IS NOT NULL AND start_offset <= end_offset THEN
        RAISE EXCEPTION 'policy refresh window too small' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = 'The start of the window must be before the end: start_offset must be larger than end_offset.';
    END IF;
    SELECT j.job_id INTO existing FROM analytics.jobs j
    WHERE j.proc = 'analytics_internal.policy_refresh_continuous_aggregate'::regproc AND j.hypertable = continuous_aggregate;
    IF existing IS NOT NULL THEN
        IF if_not_exists THEN
            RAISE NOTICE 'continuous aggregate policy already exists for "%", skipping', continuous_aggregate;
            RETURN existing;
        END IF;
        RAISE EXCEPTION 'continuous aggregate policy already exists for "%"', continuous_aggregate USING ERRCODE = 'duplicate_object';
    END IF;
    job := analytics.add_job('analytics_internal.policy_refresh_continuous_aggregate'::regproc, schedule_interval,
                             jsonb_build_object('continuous_aggregate', continuous_aggregate::text,
                                                'start_offset', start_offset, 'end_offset', end_offset),
                             initial_start => initial_start, timezone => timezone);
    PERFORM analytics_internal._label_job(job, format('Refresh Continuous Aggregate Policy [%s]', job), continuous_aggregate);
    RETURN job;
END
$$;

CREATE FUNCTION analytics.remove_continuous_aggregate_policy(continuous_aggregate regclass, if_exists boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    id int := (SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics_internal.policy_refresh_continuous_aggregate'::regproc
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
