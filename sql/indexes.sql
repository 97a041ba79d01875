-- Recommended indexes for LA-CAJA's own queries over its tables: the original design's list
-- (composite, partial, GIN on totals/payment, INCLUDE) adapted to the real schema (no
-- sales.status, no sale_items.store_id), plus the foreign-key indexes returns need.

CREATE TABLE analytics.index_builds (
    id           bigserial   PRIMARY KEY,
    table_name   text        NOT NULL,
    index_name   name        NOT NULL,
    statement    text        NOT NULL,
    status       text        NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'building', 'built', 'failed')),
    requested_by name        NOT NULL DEFAULT current_user,
    requested_at timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    worker_pid   int,
    error        text
);
COMMENT ON TABLE analytics.index_builds IS
    'Index builds queued by analytics.create_recommended_indexes(dry_run => false), run CONCURRENTLY by a background worker.';

-- The list. `definition` follows "ON <table>"; {valid_sale} is the variant's validity test.
CREATE FUNCTION analytics_internal._recommended_indexes()
RETURNS TABLE (table_name name, index_name name, definition text, needs text[], purpose text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES
    ('sales'::name, 'lacaja_sales_store_sold_at'::name, 'USING btree (store_id, sold_at DESC)', '{store_id,sold_at}'::text[],
     'sales of a store by time'),
    ('sales', 'lacaja_sales_store_valid_sold_at', 'USING btree (store_id, sold_at DESC) WHERE {valid_sale}', '{store_id,sold_at}',
     'valid sales of a store by time (LA-CAJA''s reports)'),
    ('sales', 'lacaja_sales_store_customer_sold_at', 'USING btree (store_id, customer_id, sold_at DESC) WHERE customer_id IS NOT NULL',
     '{store_id,customer_id,sold_at}', 'a customer''s purchases'),
    ('sales', 'lacaja_sales_totals_gin', 'USING gin (totals jsonb_path_ops)', '{totals}', 'containment searches in totals'),
    ('sales', 'lacaja_sales_payment_gin', 'USING gin (payment jsonb_path_ops)', '{payment}', 'sales by payment method (payment @> ...)'),
    ('sale_items', 'lacaja_sale_items_sale_product',
     'USING btree (sale_id, product_id) INCLUDE (qty, unit_price_bs, unit_price_usd, discount_bs, discount_usd)',
     '{sale_id,product_id,qty,unit_price_bs,unit_price_usd,discount_bs,discount_usd}', 'a sale''s lines without heap visits'),
    ('sale_items', 'lacaja_sale_items_product', 'USING btree (product_id)', '{product_id}', 'a product''s sales; deleting products'),
    ('sale_returns', 'lacaja_sale_returns_sale', 'USING btree (sale_id)', '{sale_id}', 'a sale''s returns; deleting sales'),
    ('sale_return_items', 'lacaja_sale_return_items_sale_item', 'USING btree (sale_item_id)', '{sale_item_id}',
     'an item''s returns (the product rollup reads them on every return)'),
    ('sale_return_items', 'lacaja_sale_return_items_return', 'USING btree (return_id)', '{return_id}', 'a return''s lines'),
    ('products', 'lacaja_products_active_category', 'USING btree (store_id, category, name) WHERE is_active',
     '{store_id,category,name,is_active}', 'active catalogue by category'),
    ('products', 'lacaja_products_low_stock_threshold',
     'USING btree (store_id, low_stock_threshold) WHERE is_active AND low_stock_threshold > 0',
     '{store_id,low_stock_threshold,is_active}', 'stock alerts'),
    ('inventory_movements', 'lacaja_inventory_movements_store_product_time',
     'USING btree (store_id, product_id, happened_at DESC)', '{store_id,product_id,happened_at}', 'a product''s stock history'),
    ('inventory_movements', 'lacaja_inventory_movements_store_type_time',
     'USING btree (store_id, movement_type, happened_at DESC)', '{store_id,movement_type,happened_at}', 'movements by type'),
    ('events', 'lacaja_events_store_type_created', 'USING btree (store_id, type, created_at DESC)', '{store_id,type,created_at}',
     'events of a kind'),
    ('events', 'lacaja_events_store_device_seq', 'USING btree (store_id, device_id, seq DESC)', '{store_id,device_id,seq}',
     'a device''s sync position'),
    ('events', 'lacaja_events_payload_gin', 'USING gin (payload jsonb_path_ops)', '{payload}', 'containment searches in payloads'),
    ('real_time_metrics', 'lacaja_real_time_metrics_store_name_created',
     'USING btree (store_id, metric_name, created_at DESC)', '{store_id,metric_name,created_at}', 'latest value of a metric'),
    ('real_time_metrics', 'lacaja_real_time_metrics_store_type_period',
     'USING btree (store_id, metric_type, period_type, period_start DESC)', '{store_id,metric_type,period_type,period_start}',
     'metrics by period')
$$;

-- An index definition without its name and table, to recognise the same index under another name.
CREATE FUNCTION analytics_internal._index_shape(definition text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT regexp_replace(definition, '^CREATE (UNIQUE )?INDEX \S+ ON (ONLY )?\S+ ', '')
$$;

-- A partitioned table (a hypertable) cannot be indexed CONCURRENTLY, and a plain CREATE INDEX
-- on it would hold sales back for the whole build. So: each partition (chunks and the default
-- one) is indexed CONCURRENTLY under a name of its own, then the hypertable gets the index
-- ON ONLY (catalog only) and every partition's index is attached to it; once all are
-- attached it is valid, and chunks created later get it from the attach. The builder takes
-- the locks of the last two steps by short tries (src/indexes.rs). A partition that already
-- has a valid index of this shape, under any name, has it attached instead.
CREATE FUNCTION analytics_internal._partitioned_index_statements(parent regclass, index_name name, definition text, shape text)
RETURNS text[] LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    schema_name constant name := (SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent);
    parent_index constant regclass := to_regclass(format('%I.%I', schema_name, index_name));
    part record;
    part_index text;
    builds text[] := '{}';
    attaches text[] := '{}';
BEGIN
    FOR part IN
        SELECT i.inhrelid::regclass AS rel, c.relname, n.nspname,
               (SELECT x.indexrelid::regclass FROM pg_index x
                WHERE x.indrelid = i.inhrelid AND x.indisvalid AND analytics_internal._index_shape(pg_get_indexdef(x.indexrelid)) = shape
                ORDER BY (x.indexrelid IN (SELECT h.inhrelid FROM pg_inherits h WHERE h.inhparent = parent_index)) DESC, x.indexrelid
                LIMIT 1) AS existing
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.inhparent = parent
        ORDER BY c.relname
    LOOP
        IF part.existing IS NULL THEN
            part_index := left(part.relname, 54) || '_' || left(md5(index_name), 8);
            IF to_regclass(format('%I.%I', part.nspname, part_index)) IS NOT NULL THEN
                builds := builds || format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', part.nspname, part_index);
            END IF;
            builds := builds || format('CREATE INDEX CONCURRENTLY %I ON %s %s', part_index, part.rel, definition);
            part_index := format('%I.%I', part.nspname, part_index);
        ELSIF parent_index IS NOT NULL AND EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhparent = parent_index AND h.inhrelid = part.existing) THEN
            CONTINUE;
        ELSE
            part_index := part.existing::text;
        END IF;
        attaches := attaches || format('ALTER INDEX %I.%I ATTACH PARTITION %s', schema_name, index_name, part_index);
    END LOOP;
    RETURN builds
        || CASE WHEN parent_index IS NULL THEN ARRAY[format('CREATE INDEX %I ON ONLY %s %s', index_name, parent, definition)] ELSE '{}' END
        || attaches;
END
$$;

-- What to do about each recommended index. An index counts as present when the table already
-- has a valid index of the same shape, whatever its name (the shape is found by building the
-- candidate on an empty copy of the table's columns).
CREATE FUNCTION analytics_internal._index_plan()
RETURNS TABLE (table_name text, index_name text, action text, statements text[])
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cfg analytics_internal.source_config;
    wanted record;
    target regclass;
    definition text;
    shape text;
    same_shape name;
    named pg_index;
BEGIN
    SELECT * INTO cfg FROM analytics_internal.source_config;
    IF cfg.source_schema IS NULL THEN
        RAISE EXCEPTION 'lacaja_analytics is not attached to LA-CAJA''s tables'
            USING HINT = 'Run SELECT analytics.attach(''public'') first.';
    END IF;
    FOR wanted IN SELECT * FROM analytics_internal._recommended_indexes() LOOP
        target := to_regclass(format('%I.%I', cfg.source_schema, wanted.table_name));
        table_name := coalesce(target::text, format('%I.%I', cfg.source_schema, wanted.table_name));
        index_name := wanted.index_name;
        statements := '{}';
        definition := replace(wanted.definition, '{valid_sale}', replace(cfg.valid_sale, 'r.', ''));
        IF target IS NULL THEN
            action := 'skipped: no such table';
        ELSIF NOT analytics_internal._has_columns(target, wanted.needs) THEN
            action := 'skipped: the table lacks a column it needs';
        ELSIF definition LIKE '%WHERE true' THEN
            action := 'skipped: every sale is valid in this variant, the index above serves';
        ELSE
            EXECUTE format('CREATE TEMP TABLE lacaja_index_probe (LIKE %s)', target);
            EXECUTE format('CREATE INDEX lacaja_index_probe_index ON lacaja_index_probe %s', definition);
            shape := analytics_internal._index_shape(pg_get_indexdef('lacaja_index_probe_index'::regclass));
            DROP TABLE lacaja_index_probe;
            SELECT c.relname INTO same_shape
            FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE i.indrelid = target AND i.indisvalid AND analytics_internal._index_shape(pg_get_indexdef(i.indexrelid)) = shape
            ORDER BY c.relname LIMIT 1;
            SELECT i.* INTO named FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
            WHERE c.relname = wanted.index_name AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = target);
            IF same_shape IS NOT NULL THEN
                action := CASE WHEN same_shape = wanted.index_name THEN 'exists' ELSE 'exists as ' || quote_ident(same_shape) END;
            ELSIF (SELECT c.relkind FROM pg_class c WHERE c.oid = target) = 'p'
                  AND (named.indexrelid IS NULL OR (named.indrelid = target AND NOT named.indisvalid)) THEN
                action := CASE WHEN named.indexrelid IS NULL THEN 'create on each chunk, then on the hypertable'
                               ELSE 'complete: index the chunks it lacks and attach them' END;
                statements := analytics_internal._partitioned_index_statements(target, wanted.index_name, definition, shape);
            ELSIF named.indexrelid IS NOT NULL AND NOT named.indisvalid AND named.indrelid = target THEN
                action := 'rebuild: an interrupted build left it invalid';
                statements := ARRAY[format('DROP INDEX CONCURRENTLY IF EXISTS %I.%I', cfg.source_schema, wanted.index_name),
                                    format('CREATE INDEX CONCURRENTLY %I ON %s %s', wanted.index_name, target, definition)];
            ELSIF named.indexrelid IS NOT NULL THEN
                action := 'skipped: the name is taken by a different index';
            ELSE
                action := 'create';
                statements := ARRAY[format('CREATE INDEX CONCURRENTLY %I ON %s %s', wanted.index_name, target, definition)];
            END IF;
            named := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- dry_run (the default) shows what would be built; false queues the builds, which a background
-- worker runs CONCURRENTLY once this transaction commits (LA-CAJA keeps selling meanwhile).
-- Follow them in analytics.index_builds.
CREATE FUNCTION analytics.create_recommended_indexes(dry_run boolean DEFAULT true)
RETURNS TABLE (table_name text, index_name text, action text, statement text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    planned record;
    queued int := 0;
BEGIN
    FOR planned IN SELECT * FROM analytics_internal._index_plan() LOOP
        table_name := planned.table_name;
        index_name := planned.index_name;
        statement := array_to_string(planned.statements, '; ');
        action := planned.action;
        IF NOT dry_run AND cardinality(planned.statements) > 0 THEN
            IF EXISTS (SELECT 1 FROM analytics.index_builds b
                       WHERE b.index_name = planned.index_name AND b.status IN ('queued', 'building')) THEN
                action := 'already queued';
            ELSE
                INSERT INTO analytics.index_builds (table_name, index_name, statement)
                SELECT planned.table_name, planned.index_name, s FROM unnest(planned.statements) AS s;
                queued := queued + 1;
                action := 'queued: ' || action;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
    IF queued > 0 THEN
        PERFORM analytics_internal._start_index_builder();
    END IF;
END
$$;
