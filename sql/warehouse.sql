-- Warehouse (issue 7): a star schema inside the database — facts at sale-item grain, a
-- type-2 product dimension, stores, customers and a calendar — loaded incrementally by
-- analytics.etl_load_sales() from a change log the POS writes through opt-in triggers.

-- Easter Sunday of `year` (Gregorian, anonymous algorithm): Venezuela's movable holidays
-- (Carnival, Holy Thursday, Good Friday) hang from it.
CREATE FUNCTION analytics.easter_sunday(year int) RETURNS date
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    WITH s AS (SELECT year % 19 AS a, year / 100 AS b, year % 100 AS c),
    t AS (SELECT a, b, c, b / 4 AS d, b % 4 AS e, (b + 8) / 25 AS f, c / 4 AS i, c % 4 AS k FROM s),
    u AS (SELECT a, b, c, d, e, i, k, (b - f + 1) / 3 AS g FROM t),
    v AS (SELECT a, i, k, e, (19 * a + b - d - g + 15) % 30 AS h FROM u),
    w AS (SELECT a, h, (32 + 2 * e + 2 * i - h - k) % 7 AS l FROM v),
    x AS (SELECT h, l, (a + 11 * h + 22 * l) / 451 AS m FROM w)
    SELECT make_date(year, (h + l - 7 * m + 114) / 31, ((h + l - 7 * m + 114) % 31) + 1) FROM x
$$;

-- Venezuela's national holidays of `year`, by name.
CREATE FUNCTION analytics.venezuela_holidays(year int) RETURNS TABLE (day date, name text)
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT d, n FROM (VALUES
        (make_date(year, 1, 1), 'Año Nuevo'),
        (analytics.easter_sunday(year) - 48, 'Lunes de Carnaval'),
        (analytics.easter_sunday(year) - 47, 'Martes de Carnaval'),
        (analytics.easter_sunday(year) - 3, 'Jueves Santo'),
        (analytics.easter_sunday(year) - 2, 'Viernes Santo'),
        (make_date(year, 4, 19), 'Declaración de la Independencia'),
        (make_date(year, 5, 1), 'Día del Trabajador'),
        (make_date(year, 6, 24), 'Batalla de Carabobo'),
        (make_date(year, 7, 5), 'Día de la Independencia'),
        (make_date(year, 7, 24), 'Natalicio del Libertador'),
        (make_date(year, 10, 12), 'Día de la Resistencia Indígena'),
        (make_date(year, 12, 24), 'Nochebuena'),
        (make_date(year, 12, 25), 'Navidad'),
        (make_date(year, 12, 31), 'Fin de Año')) AS h (d, n)
    ORDER BY d
$$;

-- Loads Venezuela's holidays for every store (store_id NULL) into analytics.holidays, which
-- anomaly detection does not judge and the time dimension flags. Idempotent.
CREATE FUNCTION analytics.load_venezuela_holidays(from_year int, to_year int) RETURNS int
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    added int;
BEGIN
    INSERT INTO analytics.holidays (day, store_id, name)
    SELECT h.day, NULL, h.name FROM generate_series(from_year, to_year) AS y CROSS JOIN LATERAL analytics.venezuela_holidays(y) AS h
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN added;
END
$$;

-- The time dimension: one row per calendar day, keyed by date, with the holiday flag read from
-- analytics.holidays (national ones: store_id NULL) when queried, so that loading holidays
-- later needs no rebuild.
CREATE VIEW analytics.dim_time AS
SELECT d::date AS date_key,
       extract(year FROM d)::int AS year,
       extract(quarter FROM d)::int AS quarter,
       extract(month FROM d)::int AS month,
       to_char(d, 'TMMonth') AS month_name,
       extract(isoyear FROM d)::int AS iso_year,
       extract(week FROM d)::int AS iso_week,
       extract(isodow FROM d)::int AS iso_day_of_week,
       extract(dow FROM d)::int AS day_of_week,
       extract(day FROM d)::int AS day_of_month,
       extract(doy FROM d)::int AS day_of_year,
       extract(isodow FROM d) >= 6 AS is_weekend,
       h.name IS NOT NULL AS is_holiday,
       h.name AS holiday_name
FROM generate_series(date '2000-01-01', date '2099-12-31', interval '1 day') AS d
LEFT JOIN LATERAL (SELECT min(x.name) AS name FROM analytics.holidays x WHERE x.day = d::date AND x.store_id IS NULL) AS h ON true;
COMMENT ON VIEW analytics.dim_time IS
    'Calendar days 2000–2099 with ISO week, weekday, weekend and national holiday (analytics.holidays); filter by date_key.';

-- State and change capture -----------------------------------------------------------------
--
-- The warehouse is opt-in (enable_warehouse()): only then do POS statements pay for one more
-- insert, of the ids of the sales they touched, into analytics_internal.warehouse_changes. The ETL
-- consumes that log: it deletes the rows its snapshot sees and loads those sales' facts in
-- the same transaction. So the watermark is the ETL's snapshot, not a number: a sequence or a
-- timestamp would skip a transaction that took its number first and committed after the run
-- (offline registers' long syncs do exactly that). A killed run rolls its delete back.

CREATE TABLE analytics_internal.warehouse_state (
    singleton         boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    enabled           boolean NOT NULL DEFAULT false,
    -- Nothing was captured for a while (never enabled, detached, a source table truncated):
    -- the next run loads everything.
    full_load_pending boolean NOT NULL DEFAULT true,
    enabled_at        timestamptz,
    last_run_at       timestamptz
);
-- No row until enable_warehouse(): the table is dumped (pg_extension_config_dump), and a row
-- made by CREATE EXTENSION would collide with the restored one. No row reads as not enabled.

CREATE TABLE analytics_internal.warehouse_changes (
    sale_id    uuid        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE analytics_internal.warehouse_changes IS
    'Sales changed since the last etl_load_sales() (written by the warehouse''s capture triggers, consumed by the ETL).';

-- Product attributes as they change, with the moment: the type-2 dimension's history.
CREATE TABLE analytics_internal.warehouse_product_changes (
    change_id  bigserial   PRIMARY KEY,
    product_id uuid        NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    deleted    boolean     NOT NULL,
    store_id   uuid,
    name       text,
    category   text,
    sku        text
);

-- Dimensions ---------------------------------------------------------------------------------

-- Type 2: a change of name, category, SKU or store closes the current version and opens a
-- new one at the moment of the change; facts point to the version valid when the sale was made.
CREATE TABLE analytics.dim_product (
    product_key bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    product_id  uuid        NOT NULL,
    version     int         NOT NULL,
    store_id    uuid,
    name        text,
    category    text,
    sku         text,
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz NOT NULL DEFAULT 'infinity',
    is_current  boolean     NOT NULL GENERATED ALWAYS AS (valid_to = 'infinity') STORED,
    UNIQUE (product_id, valid_from),
    CHECK (valid_from < valid_to)
);
COMMENT ON TABLE analytics.dim_product IS
    'Products, one row per version (type 2): valid_from <= sold_at < valid_to; the first version is valid from -infinity.';

CREATE TABLE analytics.dim_store (
    store_id       uuid PRIMARY KEY,
    name           text,
    license_status text,
    -- The zone the facts' sale_date and sale_time are in; a change re-dates the store's facts.
    timezone       text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE analytics.dim_customer (
    customer_id uuid PRIMARY KEY,
    store_id    uuid,
    name        text,
    created_at  timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Facts ----------------------------------------------------------------------------------------

-- One row per sale item. Amounts are the line's (price × qty − line discount); cost is the
-- unit cost captured when the item was recorded (SPEC §2) times qty; returns are kept apart
-- and profit is net of them. A voided sale's facts stay, flagged.
CREATE TABLE analytics.fact_sales (
    sale_item_id      uuid        PRIMARY KEY,
    sale_id           uuid        NOT NULL,
    store_id          uuid,
    customer_id       uuid,
    product_id        uuid,
    product_key       bigint,
    sale_date         date,
    sale_time         time,
    sold_at           timestamptz,
    payment_method    text,
    exchange_rate     numeric,
    is_weight_product boolean     NOT NULL,
    is_voided         boolean     NOT NULL,
    qty               numeric     NOT NULL,
    amount_bs         numeric     NOT NULL,
    amount_usd        numeric     NOT NULL,
    unit_cost_bs      numeric     NOT NULL,
    unit_cost_usd     numeric     NOT NULL,
    returned_qty      numeric     NOT NULL,
    returned_bs       numeric     NOT NULL,
    returned_usd      numeric     NOT NULL,
    cost_bs           numeric     NOT NULL GENERATED ALWAYS AS (qty * unit_cost_bs) STORED,
    cost_usd          numeric     NOT NULL GENERATED ALWAYS AS (qty * unit_cost_usd) STORED,
    returned_cost_bs  numeric     NOT NULL GENERATED ALWAYS AS (returned_qty * unit_cost_bs) STORED,
    returned_cost_usd numeric     NOT NULL GENERATED ALWAYS AS (returned_qty * unit_cost_usd) STORED,
    profit_bs         numeric     NOT NULL GENERATED ALWAYS AS ((amount_bs - returned_bs) - (qty - returned_qty) * unit_cost_bs) STORED,
    profit_usd        numeric     NOT NULL GENERATED ALWAYS AS ((amount_usd - returned_usd) - (qty - returned_qty) * unit_cost_usd) STORED,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fact_sales_store_date ON analytics.fact_sales (store_id, sale_date);
CREATE INDEX fact_sales_sale ON analytics.fact_sales (sale_id);
CREATE INDEX fact_sales_product ON analytics.fact_sales (product_id, sold_at);
COMMENT ON TABLE analytics.fact_sales IS
    'Sales at sale-item grain (key sale_item_id), loaded by analytics.etl_load_sales(); filter NOT is_voided for sales that count.';

CREATE TABLE analytics.etl_runs (
    run_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    result      jsonb       NOT NULL
);

-- Capture -----------------------------------------------------------------------------------

-- The product attributes the dimension versions (store_id, name, category, sku), as
-- expressions over alias `alias`; NULL for a column the source lacks.
CREATE FUNCTION analytics_internal._product_attributes(products regclass, alias text, named boolean DEFAULT false) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT string_agg(CASE WHEN analytics_internal._has_columns(products, ARRAY[c]) THEN format('%I.%I', alias, c)
                           ELSE format('NULL::%s', t) END || CASE WHEN named THEN format(' AS %I', c) ELSE '' END,
                      ', ' ORDER BY o)
    FROM (VALUES (1, 'store_id', 'uuid'), (2, 'name', 'text'), (3, 'category', 'text'), (4, 'sku', 'text')) AS a (o, c, t)
$$;

-- Called by enable_warehouse() and by attach() while the warehouse is enabled.
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

-- Drops the warehouse's capture triggers and empties its capture functions.
CREATE FUNCTION analytics_internal._detach_warehouse() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._drop_capture_triggers('lacaja_analytics_warehouse_');
    PERFORM analytics_internal._set_capture_body(source, 'BEGIN RETURN NULL; END')
    FROM unnest(ARRAY['warehouse_sales', 'warehouse_items', 'warehouse_item_returns', 'warehouse_products']) AS source;
END
$$;
-- The capture functions exist from install on, so that triggers and privileges can name them.
SELECT analytics_internal._detach_warehouse();

-- detach() dropped the capture triggers: what changes from now on is not captured.
CREATE FUNCTION analytics_internal._warehouse_detached() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._detach_warehouse();
    UPDATE analytics_internal.warehouse_state SET full_load_pending = true WHERE enabled;
END
$$;

-- Turns the warehouse on: change capture from now on, and (unless schedule_interval is NULL)
-- a job running etl_load_sales(). Returns at once; the first run loads all history.
CREATE FUNCTION analytics.enable_warehouse(schedule_interval interval DEFAULT interval '15 minutes') RETURNS jsonb
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

-- Turns capture off and unschedules the ETL; the warehouse keeps its rows, and enabling it
-- again reloads everything (what changed meanwhile was not captured).
CREATE FUNCTION analytics.disable_warehouse() RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    job int;
BEGIN
    PERFORM analytics_internal._detach_warehouse();
    FOR job IN SELECT j.job_id FROM analytics.jobs j WHERE j.proc = 'analytics_internal.policy_etl_load_sales'::regproc LOOP
        PERFORM analytics.delete_job(job);
    END LOOP;
    UPDATE analytics_internal.warehouse_state SET enabled = false, full_load_pending = true;
    DELETE FROM analytics_internal.warehouse_changes;
    DELETE FROM analytics_internal.warehouse_product_changes;
    RETURN jsonb_build_object('enabled', false);
END
$$;

-- ETL -------------------------------------------------------------------------------------------

-- Applies the captured product changes in order, then brings the dimension in line with
-- products for whatever capture could not see (history before enabling, a gap while
-- detached): new versions then start now. Returns the products whose versions changed.
CREATE FUNCTION analytics_internal._etl_products(source_schema name, OUT touched uuid[], OUT versions_opened int, OUT versions_closed int)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    products constant regclass := to_regclass(format('%I.products', source_schema));
    changes analytics_internal.warehouse_product_changes[];
    c analytics_internal.warehouse_product_changes;
    cur analytics.dim_product;
    opened int;
    closed int;
    reconciled uuid[];
BEGIN
    versions_opened := 0;
    versions_closed := 0;
    WITH consumed AS (DELETE FROM analytics_internal.warehouse_product_changes RETURNING *)
    SELECT array_agg(consumed ORDER BY change_id) INTO changes FROM consumed;
    FOREACH c IN ARRAY coalesce(changes, '{}') LOOP
        SELECT * INTO cur FROM analytics.dim_product v WHERE v.product_id = c.product_id AND v.valid_to = 'infinity';
        IF c.deleted THEN
            IF cur.product_key IS NOT NULL THEN
                UPDATE analytics.dim_product SET valid_to = greatest(c.changed_at, cur.valid_from + interval '1 microsecond')
                WHERE product_key = cur.product_key;
                versions_closed := versions_closed + 1;
            END IF;
        ELSIF cur.product_key IS NULL THEN
            INSERT INTO analytics.dim_product (product_id, version, store_id, name, category, sku, valid_from)
            SELECT c.product_id, coalesce(max(v.version), 0) + 1, c.store_id, c.name, c.category, c.sku,
                   CASE WHEN max(v.valid_to) IS NULL THEN '-infinity' ELSE greatest(max(v.valid_to), c.changed_at) END
            FROM analytics.dim_product v WHERE v.product_id = c.product_id;
            versions_opened := versions_opened + 1;
        ELSIF (cur.store_id, cur.name, cur.category, cur.sku) IS DISTINCT FROM (c.store_id, c.name, c.category, c.sku) THEN
            IF c.changed_at <= cur.valid_from THEN
                -- Committed out of order with the change that opened this version: same instant.
                UPDATE analytics.dim_product SET (store_id, name, category, sku) = (c.store_id, c.name, c.category, c.sku)
                WHERE product_key = cur.product_key;
            ELSE
                UPDATE analytics.dim_product SET valid_to = c.changed_at WHERE product_key = cur.product_key;
                INSERT INTO analytics.dim_product (product_id, version, store_id, name, category, sku, valid_from)
                VALUES (c.product_id, cur.version + 1, c.store_id, c.name, c.category, c.sku, c.changed_at);
                versions_opened := versions_opened + 1;
                versions_closed := versions_closed + 1;
            END IF;
        ELSE
            CONTINUE;
        END IF;
        touched := touched || c.product_id;
    END LOOP;
    touched := coalesce(touched, '{}');

    IF NOT analytics_internal._has_columns(products, '{id}') THEN
        RETURN;
    END IF;
    -- Reconciliation with products as they are now, for what capture did not see. A product
    -- with a change committed since the log was read waits for the next run, which dates
    -- that change exactly.
    EXECUTE format($q$
        WITH source AS (SELECT p.id AS product_id, %1$s FROM %2$s p
                        WHERE NOT EXISTS (SELECT 1 FROM analytics_internal.warehouse_product_changes q WHERE q.product_id = p.id)),
        gone AS (
            UPDATE analytics.dim_product v SET valid_to = greatest(clock_timestamp(), v.valid_from + interval '1 microsecond')
            WHERE v.valid_to = 'infinity' AND NOT EXISTS (SELECT 1 FROM %2$s p WHERE p.id = v.product_id)
              AND NOT EXISTS (SELECT 1 FROM analytics_internal.warehouse_product_changes q WHERE q.product_id = v.product_id)
            RETURNING v.product_id),
        changed AS (
            UPDATE analytics.dim_product v SET valid_to = greatest(clock_timestamp(), v.valid_from + interval '1 microsecond')
            FROM source s
            WHERE v.product_id = s.product_id AND v.valid_to = 'infinity'
              AND (v.store_id, v.name, v.category, v.sku) IS DISTINCT FROM (s.store_id, s.name, s.category, s.sku)
            RETURNING v.product_id, v.version, v.valid_to),
        opened AS (
            INSERT INTO analytics.dim_product (product_id, version, store_id, name, category, sku, valid_from)
            SELECT s.product_id, coalesce(ch.version, last.version, 0) + 1, s.store_id, s.name, s.category, s.sku,
                   CASE WHEN ch.product_id IS NOT NULL THEN ch.valid_to
                        WHEN last.version IS NULL THEN '-infinity'
                        ELSE greatest(last.valid_to, clock_timestamp()) END
            FROM source s
            LEFT JOIN changed ch ON ch.product_id = s.product_id
            LEFT JOIN LATERAL (SELECT v.version, v.valid_to FROM analytics.dim_product v
                               WHERE v.product_id = s.product_id ORDER BY v.valid_from DESC LIMIT 1) AS last ON true
            WHERE ch.product_id IS NOT NULL OR last.version IS NULL OR last.valid_to <> 'infinity'
            RETURNING product_id, version)
        SELECT (SELECT count(*) FROM opened)::int,
               (SELECT count(*) FROM gone)::int + (SELECT count(*) FROM changed)::int,
               ARRAY(SELECT product_id FROM gone UNION SELECT product_id FROM opened)$q$,
        analytics_internal._product_attributes(products, 'p', true), products)
    INTO opened, closed, reconciled;
    versions_opened := versions_opened + opened;
    versions_closed := versions_closed + closed;
    touched := ARRAY(SELECT DISTINCT unnest(touched || reconciled));
END
$$;

-- Stores from the source's stores (names, license) and the zone each store's facts are dated
-- in. Returns the stores whose zone changed since their facts were loaded.
CREATE FUNCTION analytics_internal._etl_stores(source_schema name) RETURNS uuid[]
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    stores constant regclass := to_regclass(format('%I.stores', source_schema));
    rezoned uuid[];
BEGIN
    IF analytics_internal._has_columns(stores, '{id}') THEN
        EXECUTE format($q$
            INSERT INTO analytics.dim_store AS d (store_id, name, license_status)
            SELECT s.id, %s, %s FROM %s s
            ON CONFLICT (store_id) DO UPDATE SET name = excluded.name, license_status = excluded.license_status, updated_at = now()
            WHERE (d.name, d.license_status) IS DISTINCT FROM (excluded.name, excluded.license_status)$q$,
            CASE WHEN analytics_internal._has_columns(stores, '{name}') THEN 's.name::text' ELSE 'NULL' END,
            CASE WHEN analytics_internal._has_columns(stores, '{license_status}') THEN 's.license_status::text' ELSE 'NULL' END,
            stores);
    END IF;
    INSERT INTO analytics.dim_store (store_id) SELECT st.store_id FROM analytics.store_settings st ON CONFLICT DO NOTHING;
    -- A store seen for the first time has no zone yet: its facts are dated in the current one.
    SELECT array_agg(d.store_id) INTO rezoned FROM analytics.dim_store d
    WHERE d.timezone IS NOT NULL AND d.timezone IS DISTINCT FROM analytics.store_timezone(d.store_id);
    UPDATE analytics.dim_store d SET timezone = analytics.store_timezone(d.store_id), updated_at = now()
    WHERE d.timezone IS DISTINCT FROM analytics.store_timezone(d.store_id);
    RETURN coalesce(rezoned, '{}');
END
$$;

-- Customers from the source's customers; ids no customers row explains (no such table, a
-- customer deleted since) from the facts of `sale_ids` (all facts when NULL), so they join.
CREATE FUNCTION analytics_internal._etl_customers(source_schema name, sale_ids uuid[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    customers constant regclass := to_regclass(format('%I.customers', source_schema));
    written bigint;
BEGIN
    IF analytics_internal._has_columns(customers, '{id}') THEN
        EXECUTE format($q$
            INSERT INTO analytics.dim_customer AS d (customer_id, store_id, name, created_at)
            SELECT c.id, %s, %s, %s FROM %s c
            ON CONFLICT (customer_id) DO UPDATE
                SET store_id = excluded.store_id, name = excluded.name, created_at = excluded.created_at, updated_at = now()
            WHERE (d.store_id, d.name, d.created_at) IS DISTINCT FROM (excluded.store_id, excluded.name, excluded.created_at)$q$,
            CASE WHEN analytics_internal._has_columns(customers, '{store_id}') THEN 'c.store_id' ELSE 'NULL::uuid' END,
            CASE WHEN analytics_internal._has_columns(customers, '{name}') THEN 'c.name::text' ELSE 'NULL' END,
            CASE WHEN analytics_internal._has_columns(customers, '{created_at}') THEN 'c.created_at::timestamptz' ELSE 'NULL' END,
            customers);
        GET DIAGNOSTICS written = ROW_COUNT;
    END IF;
    INSERT INTO analytics.dim_customer (customer_id, store_id)
    SELECT DISTINCT ON (f.customer_id) f.customer_id, f.store_id
    FROM analytics.fact_sales f
    WHERE f.customer_id IS NOT NULL AND (sale_ids IS NULL OR f.sale_id = ANY(sale_ids))
      AND NOT EXISTS (SELECT 1 FROM analytics.dim_customer d WHERE d.customer_id = f.customer_id)
    ON CONFLICT DO NOTHING;
    -- Likewise stores no stores row names.
    INSERT INTO analytics.dim_store (store_id, timezone)
    SELECT DISTINCT f.store_id, analytics.store_timezone(f.store_id) FROM analytics.fact_sales f
    WHERE f.store_id IS NOT NULL AND (sale_ids IS NULL OR f.sale_id = ANY(sale_ids))
      AND NOT EXISTS (SELECT 1 FROM analytics.dim_store d WHERE d.store_id = f.store_id)
    ON CONFLICT DO NOTHING;
    RETURN coalesce(written, 0);
END
$$;

-- The facts of the sales whose items match `filter` (aliases i, r; $1 is bound to the ETL's
-- sale ids), each pointing to the product version valid when the sale was made.
CREATE FUNCTION analytics_internal._fact_sales_sql(filter text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT format($q$
        SELECT n.sale_item_id, n.sale_id, n.sale_store_id AS store_id, n.customer_id, n.product_id, v.product_key,
               n.day AS sale_date, n.sale_time, n.sale_sold_at AS sold_at, n.payment_method, n.exchange_rate, n.is_weight_product,
               n.is_voided, n.qty, n.revenue_bs AS amount_bs, n.revenue_usd AS amount_usd,
               n.unit_cost_bs, n.unit_cost_usd, n.returned_qty, n.returned_bs, n.returned_usd
        FROM (%s) AS n
        LEFT JOIN analytics.dim_product v
               ON v.product_id = n.product_id AND v.valid_from <= n.sale_sold_at AND n.sale_sold_at < v.valid_to$q$,
        analytics_internal._item_facts_sql('analytics_internal.item_facts', filter, true, true))
$$;

CREATE FUNCTION analytics_internal._fact_columns() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT '{sale_item_id,sale_id,store_id,customer_id,product_id,product_key,sale_date,sale_time,sold_at,payment_method,exchange_rate,is_weight_product,is_voided,qty,amount_bs,amount_usd,unit_cost_bs,unit_cost_usd,returned_qty,returned_bs,returned_usd}'::text[]
$$;

-- Loads the facts of `sale_ids` (of every sale when NULL): new items inserted, changed ones
-- updated, facts of items gone deleted; rows already right are not touched.
CREATE FUNCTION analytics_internal._etl_facts(sale_ids uuid[], OUT inserted bigint, OUT updated bigint, OUT deleted bigint)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    columns constant text := array_to_string(analytics_internal._fact_columns(), ', ');
    everything constant boolean := sale_ids IS NULL;
    index_definitions text[];
    index_names text[];
BEGIN
    IF everything AND NOT EXISTS (SELECT 1 FROM analytics.fact_sales) THEN
        -- The first load: nothing to compare with. The indexes are built once afterwards
        -- (sorted, not entry by entry) and the facts go in store and day order, so that a
        -- store's report reads neighbouring pages. Readers of the (empty) table wait for it.
        SELECT array_agg(pg_get_indexdef(i.indexrelid)), array_agg(format('%s', i.indexrelid::regclass))
          INTO index_definitions, index_names
        FROM pg_index i WHERE i.indrelid = 'analytics.fact_sales'::regclass AND NOT i.indisprimary;
        ALTER TABLE analytics.fact_sales DROP CONSTRAINT fact_sales_pkey;
        IF index_names IS NOT NULL THEN
            EXECUTE 'DROP INDEX ' || array_to_string(index_names, ', ');
        END IF;
        EXECUTE format('INSERT INTO analytics.fact_sales (%s) SELECT * FROM (%s) AS n ORDER BY n.store_id, n.sale_date',
                       columns, analytics_internal._fact_sales_sql('true'));
        GET DIAGNOSTICS inserted = ROW_COUNT;
        ALTER TABLE analytics.fact_sales ADD CONSTRAINT fact_sales_pkey PRIMARY KEY (sale_item_id);
        FOR i IN 1..coalesce(cardinality(index_definitions), 0) LOOP
            EXECUTE index_definitions[i];
        END LOOP;
        updated := 0;
        deleted := 0;
        RETURN;
    END IF;
    IF NOT everything AND cardinality(sale_ids) = 0 THEN
        inserted := 0;
        updated := 0;
        deleted := 0;
        RETURN;
    END IF;
    EXECUTE format($q$
        WITH new AS (%1$s),
        written AS (
            INSERT INTO analytics.fact_sales AS f (%2$s) SELECT %2$s FROM new
            ON CONFLICT (sale_item_id) DO UPDATE SET (%2$s, updated_at) = ROW(%3$s, now())
            WHERE (%4$s) IS DISTINCT FROM (%3$s)
            RETURNING (f.xmax = 0) AS inserted),
        gone AS (
            DELETE FROM analytics.fact_sales f
            WHERE %5$s AND NOT EXISTS (SELECT 1 FROM new WHERE new.sale_item_id = f.sale_item_id)
            RETURNING 1)
        SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted), (SELECT count(*) FROM gone)
        FROM written$q$,
        analytics_internal._fact_sales_sql(CASE WHEN everything THEN 'true' ELSE 'i.sale_id = ANY($1)' END),
        columns,
        (SELECT string_agg('excluded.' || c, ', ') FROM unnest(analytics_internal._fact_columns()) AS c),
        (SELECT string_agg('f.' || c, ', ') FROM unnest(analytics_internal._fact_columns()) AS c),
        CASE WHEN everything THEN 'true' ELSE 'f.sale_id = ANY($1)' END)
    INTO inserted, updated, deleted USING sale_ids;
END
$$;

-- Facts of `products` made while another version was valid point to the right one now.
CREATE FUNCTION analytics_internal._etl_repoint(products uuid[]) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    moved bigint;
BEGIN
    IF cardinality(products) = 0 THEN
        RETURN 0;
    END IF;
    WITH right_keys AS (
        SELECT f.sale_item_id, v.product_key
        FROM analytics.fact_sales f
        LEFT JOIN analytics.dim_product v
               ON v.product_id = f.product_id AND v.valid_from <= f.sold_at AND f.sold_at < v.valid_to
        WHERE f.product_id = ANY(products))
    UPDATE analytics.fact_sales f SET product_key = r.product_key, updated_at = now()
    FROM right_keys r
    WHERE f.sale_item_id = r.sale_item_id AND f.product_key IS DISTINCT FROM r.product_key;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END
$$;

-- Loads into the warehouse everything that changed since the last run (all history on the
-- first run, or with full_reload): product versions, stores, facts of changed sales,
-- customers. One run at a time; idempotent; a killed run loses nothing (its consumption of
-- the change log rolls back with it). An incremental run looks up a few sales' rows by index
-- in tables of millions; with the default random_page_cost the planner over-estimates the
-- items of the sales (from sale_id's statistics) and scans sales and item facts instead
-- (10 s instead of 0.6 s for 10,000 sales at 10M), and JIT compiles for longer than small
-- runs take: the run plans as for cached data, without JIT.
CREATE FUNCTION analytics.etl_load_sales(full_reload boolean DEFAULT false) RETURNS jsonb
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

-- The scheduler's job (enable_warehouse() adds it).
CREATE PROCEDURE analytics_internal.policy_etl_load_sales(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM analytics.etl_load_sales();
END
$$;

-- Reports --------------------------------------------------------------------------------------
--
-- Over the facts of valid sales, net of returns: qty − returned, amount − returned, cost of
-- what was kept, profit; money at the scale of its digits (at least cents), as the rollups
-- give it. A NULL store or day bound means no bound. Categories are the product's version at
-- the time of sale. Plain SQL functions, inlined into the caller's query (and the helper into
-- them), so constant arguments reach the (store_id, sale_date) index.

-- The lines the reports count (public: the reports are inlined into the caller's query and
-- read fact_sales with the caller's rights, row-level security included).
CREATE FUNCTION analytics.report_lines(store_id uuid, from_day date, to_day date)
RETURNS TABLE (sale_id uuid, product_id uuid, product_key bigint, sale_date date, sale_time time, payment_method text,
               qty numeric, revenue_bs numeric, revenue_usd numeric, cost_bs numeric, cost_usd numeric,
               profit_bs numeric, profit_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT f.sale_id, f.product_id, f.product_key, f.sale_date, f.sale_time, f.payment_method,
           f.qty - f.returned_qty, f.amount_bs - f.returned_bs, f.amount_usd - f.returned_usd,
           f.cost_bs - f.returned_cost_bs, f.cost_usd - f.returned_cost_usd, f.profit_bs, f.profit_usd
    FROM analytics.fact_sales f
    WHERE NOT f.is_voided AND ($1 IS NULL OR f.store_id = $1)
      AND ($2 IS NULL OR f.sale_date >= $2) AND ($3 IS NULL OR f.sale_date <= $3)
$$;

CREATE FUNCTION analytics.report_sales_by_category_month(store_id uuid DEFAULT NULL, from_day date DEFAULT NULL,
                                                         to_day date DEFAULT NULL)
RETURNS TABLE (month date, category text, sales_count bigint, qty numeric, revenue_bs numeric, revenue_usd numeric,
               cost_bs numeric, cost_usd numeric, profit_bs numeric, profit_usd numeric, margin_pct numeric)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('month', l.sale_date)::date, v.category, count(DISTINCT l.sale_id), sum(l.qty),
           analytics.money(sum(l.revenue_bs)), analytics.money(sum(l.revenue_usd)),
           analytics.money(sum(l.cost_bs)), analytics.money(sum(l.cost_usd)),
           analytics.money(sum(l.profit_bs)), analytics.money(sum(l.profit_usd)),
           round(100 * sum(l.profit_bs) / nullif(sum(l.revenue_bs), 0), 2)
    FROM analytics.report_lines($1, $2, $3) l
    LEFT JOIN analytics.dim_product v ON v.product_key = l.product_key
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;

-- day_of_week: 0 = Sunday (as LA-CAJA's sales_heatmap); hour: store-local.
CREATE FUNCTION analytics.report_sales_by_weekday_hour(store_id uuid DEFAULT NULL, from_day date DEFAULT NULL,
                                                       to_day date DEFAULT NULL)
RETURNS TABLE (day_of_week int, hour int, sales_count bigint, qty numeric, revenue_bs numeric, revenue_usd numeric,
               profit_bs numeric, profit_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT extract(dow FROM l.sale_date)::int, extract(hour FROM l.sale_time)::int, count(DISTINCT l.sale_id), sum(l.qty),
           analytics.money(sum(l.revenue_bs)), analytics.money(sum(l.revenue_usd)),
           analytics.money(sum(l.profit_bs)), analytics.money(sum(l.profit_usd))
    FROM analytics.report_lines($1, $2, $3) l
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;

CREATE FUNCTION analytics.report_sales_by_payment_month(store_id uuid DEFAULT NULL, from_day date DEFAULT NULL,
                                                        to_day date DEFAULT NULL)
RETURNS TABLE (month date, payment_method text, sales_count bigint, revenue_bs numeric, revenue_usd numeric,
               profit_bs numeric, profit_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('month', l.sale_date)::date, l.payment_method, count(DISTINCT l.sale_id),
           analytics.money(sum(l.revenue_bs)), analytics.money(sum(l.revenue_usd)),
           analytics.money(sum(l.profit_bs)), analytics.money(sum(l.profit_usd))
    FROM analytics.report_lines($1, $2, $3) l
    GROUP BY 1, 2
    ORDER BY 1, 2
$$;

-- ABC analysis by net revenue in bolívares: ranked by revenue (ties by product id), class A
-- while the products ranked before make less than 80 % of the revenue, B less than 95 %, C the
-- rest. Name and category: the product's latest version.
CREATE FUNCTION analytics.report_product_abc(store_id uuid DEFAULT NULL, from_day date DEFAULT NULL,
                                             to_day date DEFAULT NULL)
RETURNS TABLE (rank bigint, product_id uuid, name text, category text, qty numeric, revenue_bs numeric,
               revenue_usd numeric, profit_bs numeric, share numeric, cumulative_share numeric, class text)
LANGUAGE sql STABLE AS $$
    WITH per_product AS (
        SELECT l.product_id, sum(l.qty) AS qty, sum(l.revenue_bs) AS revenue_bs, sum(l.revenue_usd) AS revenue_usd,
               sum(l.profit_bs) AS profit_bs
        FROM analytics.report_lines($1, $2, $3) l
        GROUP BY l.product_id),
    ranked AS (
        SELECT p.*, row_number() OVER w AS rank,
               sum(p.revenue_bs) OVER w AS running, sum(p.revenue_bs) OVER () AS total
        FROM per_product p
        WINDOW w AS (ORDER BY p.revenue_bs DESC, p.product_id ROWS UNBOUNDED PRECEDING))
    SELECT r.rank, r.product_id, latest.name, latest.category, r.qty, analytics.money(r.revenue_bs),
           analytics.money(r.revenue_usd), analytics.money(r.profit_bs),
           round(r.revenue_bs / nullif(r.total, 0), 6), round(r.running / nullif(r.total, 0), 6),
           CASE WHEN r.total > 0 AND (r.running - r.revenue_bs) < 0.80 * r.total THEN 'A'
                WHEN r.total > 0 AND (r.running - r.revenue_bs) < 0.95 * r.total THEN 'B'
                ELSE 'C' END
    FROM ranked r
    LEFT JOIN LATERAL (SELECT v.name, v.category FROM analytics.dim_product v
                       WHERE v.product_id = r.product_id ORDER BY v.valid_from DESC LIMIT 1) AS latest ON true
    ORDER BY r.rank
$$;
