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
