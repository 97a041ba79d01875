-- Sales rollups kept exact at commit by statement-level triggers (SPEC §2).
--
-- How it stays exact without blocking the POS:
-- * Every rollup is stored as additive "parts": one row per key and per writing session
--   (`shard` = backend id). A trigger adds its statement's net delta to its own session's
--   rows, so concurrent sales never wait on, nor deadlock over, a rollup row. The public
--   relations (`analytics.sales_daily`, ...) are views that sum the parts.
-- * A repair never rewrites parts: `refresh_all`/`refresh_store` add the difference between
--   the definition over the source tables and the current sums, both read in one snapshot,
--   to shard 0, which no session writes. Transactions still in flight are in neither side
--   of that difference and add their own deltas when they commit.
-- * Each rollup is described once in `analytics_internal.rollup_catalog`; the trigger body, `verify`
--   and the repair are all generated from that description.

-- Settings and bookkeeping ---------------------------------------------------------------

CREATE TABLE analytics.store_settings (
    store_id   uuid PRIMARY KEY,
    timezone   text NOT NULL CONSTRAINT store_settings_timezone_valid
                    CHECK (analytics.is_valid_timezone(timezone)),
    updated_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE analytics.store_settings IS
    'Per-store settings. Change a zone with analytics.set_store_timezone(), which re-buckets the store.';

CREATE TABLE analytics_internal.source_config (
    singleton           bool PRIMARY KEY DEFAULT true CHECK (singleton),
    source_schema       name NOT NULL,
    -- regnamespace, not oid: a dump keeps the name, so a restored database checks its own schema.
    source_schema_oid   regnamespace NOT NULL,
    variant             text NOT NULL CHECK (variant IN ('real', 'simplified')),
    sales_has_status    bool NOT NULL,
    sales_has_voided_at bool NOT NULL,
    valid_sale          text NOT NULL,
    stock_source        text CHECK (stock_source IN ('movements', 'current_stock')),
    captures_items      boolean NOT NULL DEFAULT false,
    attached_at         timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE analytics_internal.source_config IS 'What analytics.attach() found and captures.';

CREATE TABLE analytics.ingest_errors (
    id           bigserial PRIMARY KEY,
    source_table text NOT NULL,
    source_id    text NOT NULL,
    column_name  text NOT NULL,
    problem      text NOT NULL,
    value        text,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ingest_errors_once UNIQUE (source_table, source_id, column_name)
);
COMMENT ON TABLE analytics.ingest_errors IS
    'Source values that could not be read (counted as 0); one row per source row and column.';

-- Reading LA-CAJA's JSON without ever failing ------------------------------------------

-- amount(): SPEC §2 "amount(sale, key)". JSON numbers and decimal strings count; anything
-- else (missing, null, text, object, NaN) and magnitudes >= 10^1000 count as 0.
CREATE FUNCTION analytics.amount(value jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(value)
        WHEN 'number' THEN CASE WHEN abs(value::numeric) < 1e1000 THEN value::numeric ELSE 0 END
        WHEN 'string' THEN coalesce(analytics.parse_amount(value #>> '{}'), 0)
        ELSE 0
    END
$$;

CREATE FUNCTION analytics_internal.amount_problem(value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN value IS NULL THEN 'missing'
        WHEN jsonb_typeof(value) = 'number' THEN
            CASE WHEN abs(value::numeric) >= 1e1000 THEN 'number out of range (>= 1e1000)' END
        WHEN jsonb_typeof(value) = 'string' THEN
            CASE WHEN analytics.parse_amount(value #>> '{}') IS NULL THEN 'string is not a finite decimal' END
        ELSE 'is ' || jsonb_typeof(value) || ', not a number'
    END
$$;

-- SPEC §2: coalesce(nullif(payment->>'method',''),'UNKNOWN'). A method longer than 64
-- characters is not one of LA-CAJA's and could not be a rollup key: it counts as UNKNOWN.
CREATE FUNCTION analytics.payment_method(payment jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN length(payment ->> 'method') > 64 THEN 'UNKNOWN'
                ELSE coalesce(nullif(payment ->> 'method', ''), 'UNKNOWN') END
$$;

-- What is wrong with a sale's JSON, one row per key. plpgsql on purpose: it is not inlined,
-- so the capture statement only pays for it on the rare malformed sale.
CREATE FUNCTION analytics_internal.sale_problems(totals jsonb, payment jsonb)
RETURNS TABLE (column_name text, problem text, value text)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT p.column_name, p.problem, left(p.value, 200)
    FROM (VALUES
        ('totals.subtotal_bs',  analytics_internal.amount_problem(totals -> 'subtotal_bs'),  (totals -> 'subtotal_bs')::text),
        ('totals.subtotal_usd', analytics_internal.amount_problem(totals -> 'subtotal_usd'), (totals -> 'subtotal_usd')::text),
        ('totals.discount_bs',  analytics_internal.amount_problem(totals -> 'discount_bs'),  (totals -> 'discount_bs')::text),
        ('totals.discount_usd', analytics_internal.amount_problem(totals -> 'discount_usd'), (totals -> 'discount_usd')::text),
        ('totals.total_bs',     analytics_internal.amount_problem(totals -> 'total_bs'),     (totals -> 'total_bs')::text),
        ('totals.total_usd',    analytics_internal.amount_problem(totals -> 'total_usd'),    (totals -> 'total_usd')::text),
        ('payment.method',
         CASE WHEN jsonb_typeof(payment -> 'method') IS DISTINCT FROM 'string' THEN 'missing or not a string'
              WHEN length(payment ->> 'method') > 64 THEN 'longer than 64 characters' END,
         (payment -> 'method')::text)
    ) AS p (column_name, problem, value)
    WHERE p.problem IS NOT NULL;
END
$$;

-- The cheap test that spares well-formed sales (nearly all) the per-key problem report: one
-- jsonpath predicate, so the capture statement stays small.
CREATE FUNCTION analytics_internal.sale_is_well_formed(totals jsonb, payment jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_typeof(payment -> 'method') = 'string' AND length(payment ->> 'method') <= 64
        AND totals @@ 'strict $.subtotal_bs.type() == "number" && $.subtotal_bs < 1e1000 && $.subtotal_bs > -1e1000
                    && $.subtotal_usd.type() == "number" && $.subtotal_usd < 1e1000 && $.subtotal_usd > -1e1000
                    && $.discount_bs.type() == "number" && $.discount_bs < 1e1000 && $.discount_bs > -1e1000
                    && $.discount_usd.type() == "number" && $.discount_usd < 1e1000 && $.discount_usd > -1e1000
                    && $.total_bs.type() == "number" && $.total_bs < 1e1000 && $.total_bs > -1e1000
                    && $.total_usd.type() == "number" && $.total_usd < 1e1000 && $.total_usd > -1e1000', false)
$$;

-- SECURITY DEFINER: views that show local days (ours, and LA-CAJA's views that install_compat
-- puts over them) call it for readers who have no privilege on analytics.store_settings.
-- PL/pgSQL: its plan is kept for the session (a SQL function that cannot be inlined, as a
-- SECURITY DEFINER one, is planned again in every transaction).
CREATE FUNCTION analytics.store_timezone(store_id uuid) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce((SELECT s.timezone FROM analytics.store_settings s WHERE s.store_id = store_timezone.store_id),
                    analytics.default_timezone());
END
$$;

-- Storage: additive parts --------------------------------------------------------------

-- The measures every sales rollup keeps per key (a template: it never holds rows).
CREATE TABLE analytics_internal.sale_measures (
    sales_count      bigint  NOT NULL,
    subtotal_bs      numeric NOT NULL,
    subtotal_usd     numeric NOT NULL,
    discount_bs      numeric NOT NULL,
    discount_usd     numeric NOT NULL,
    total_bs         numeric NOT NULL,
    total_usd        numeric NOT NULL,
    total_bs_scales  numeric NOT NULL,
    total_usd_scales numeric NOT NULL
);

CREATE TABLE analytics_internal.sales_hourly_parts (
    store_id   uuid        NOT NULL,
    bucket     timestamptz NOT NULL,
    local_hour timestamp   NOT NULL,
    shard      int         NOT NULL,
    LIKE analytics_internal.sale_measures,
    PRIMARY KEY (store_id, bucket, local_hour, shard)
) WITH (fillfactor = 80);
CREATE INDEX sales_hourly_parts_local ON analytics_internal.sales_hourly_parts (store_id, local_hour);

-- Daily totals are kept per payment method: sales_daily sums the methods of a day.
CREATE TABLE analytics_internal.sales_daily_parts (
    store_id uuid NOT NULL,
    day      date NOT NULL,
    method   text NOT NULL,
    shard    int  NOT NULL,
    LIKE analytics_internal.sale_measures,
    PRIMARY KEY (store_id, day, method, shard)
) WITH (fillfactor = 80);

-- Distinct customers are not additive; their per-day sale counts are.
CREATE TABLE analytics_internal.customer_daily_parts (
    store_id    uuid   NOT NULL,
    day         date   NOT NULL,
    customer_id uuid   NOT NULL,
    shard       int    NOT NULL,
    sales_count bigint NOT NULL,
    PRIMARY KEY (store_id, day, customer_id, shard)
) WITH (fillfactor = 80);

-- The stock ledger per store, warehouse and product: the sum of its inventory movements (or
-- products.current_stock in the simplified variant, counted as one movement per product).
-- Movements without a warehouse (and sources without the column) are kept under the nil uuid;
-- `escrow` is the part of `stock` moved by escrow movements (from_escrow: LA-CAJA's offline
-- devices sell stock granted to them, which no warehouse row gives back). stock_drift() reads
-- both; without warehouse_stock the ledger is the stock.
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

-- One description per rollup; everything that writes or checks parts is generated from it.
-- Expressions read the columns of a "measured sale" (see analytics_internal._measure_sql).
CREATE TABLE analytics_internal.rollup_catalog (
    name      text PRIMARY KEY,
    parts     regclass NOT NULL,
    keys      text[] NOT NULL,
    key_exprs text[] NOT NULL,
    vals      text[] NOT NULL,
    val_exprs text[] NOT NULL,
    filter    text NOT NULL DEFAULT 'true',
    position  int NOT NULL UNIQUE,
    source    text NOT NULL DEFAULT 'sales' CHECK (source IN ('sales', 'stock', 'items'))
);
COMMENT ON TABLE analytics_internal.rollup_catalog IS
    'How each rollup is computed from measured sales; drives the triggers, verify() and refresh.';

INSERT INTO analytics_internal.rollup_catalog (position, name, parts, keys, key_exprs, vals, val_exprs, filter) VALUES
 (1, 'sales_hourly', 'analytics_internal.sales_hourly_parts',
  '{store_id,bucket,local_hour}', '{store_id,"local_hour AT TIME ZONE tz",local_hour}',
  '{sales_count,subtotal_bs,subtotal_usd,discount_bs,discount_usd,total_bs,total_usd,total_bs_scales,total_usd_scales}',
  '{sum(sign),sum(subtotal_bs),sum(subtotal_usd),sum(discount_bs),sum(discount_usd),sum(total_bs),sum(total_usd),sum(total_bs_scales),sum(total_usd_scales)}',
  'true'),
 (2, 'sales_daily_by_method', 'analytics_internal.sales_daily_parts',
  '{store_id,day,method}', '{store_id,day,method}',
  '{sales_count,subtotal_bs,subtotal_usd,discount_bs,discount_usd,total_bs,total_usd,total_bs_scales,total_usd_scales}',
  '{sum(sign),sum(subtotal_bs),sum(subtotal_usd),sum(discount_bs),sum(discount_usd),sum(total_bs),sum(total_usd),sum(total_bs_scales),sum(total_usd_scales)}',
  'true'),
 (3, 'sales_daily_customers', 'analytics_internal.customer_daily_parts',
  '{store_id,day,customer_id}', '{store_id,day,customer_id}',
  '{sales_count}', '{sum(sign)}',
  'customer_id IS NOT NULL');
INSERT INTO analytics_internal.rollup_catalog (position, name, parts, keys, key_exprs, vals, val_exprs, source) VALUES
 (4, 'product_stock', 'analytics_internal.product_stock_parts',
  '{store_id,warehouse_id,product_id}', '{store_id,"coalesce(warehouse_id, ''00000000-0000-0000-0000-000000000000'')",product_id}',
  '{stock,movements,escrow}', '{sum(qty),sum(sign),sum(escrow)}', 'stock');

-- What readers see: the definitions of SPEC §2 ------------------------------------------

-- A sum of parts equals the sum over the source, but carries the largest scale any delta
-- ever had (a voided 0.000001 leaves 240.860000). Readers get it at the scale of its digits,
-- at least cents. Totals that feed averages are kept at their exact scale (below).
CREATE FUNCTION analytics.money(amount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT round(amount, greatest(2, scale(trim_scale(amount))))
$$;

-- Averages must divide exactly as sum/count over the source does, and numeric division keeps
-- as many decimals as the dividend has: the largest scale among the sales now in the group.
-- A maximum cannot be un-added when a sale is voided, so parts keep an additive histogram
-- of scales instead: each amount adds 2^(32*scale); the highest non-zero base-2^32 digit of
-- the sum is the largest scale present.
CREATE FUNCTION analytics_internal.scale_mark(amount numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE scale(amount) WHEN 0 THEN 1::numeric WHEN 1 THEN 4294967296::numeric
                              WHEN 2 THEN 18446744073709551616::numeric
                              ELSE trunc(power(4294967296::numeric, scale(amount))) END
$$;

-- analytics_internal.largest_scale(scales): the highest non-zero base-2^32 digit (src/rollups.rs).

-- A sum of parts at the scale the same sum over the source has.
-- A SQL-standard body: it is parsed once, here, so readers of the views that call it need no
-- access to analytics_internal to run it (a quoted body is parsed again, as the reader).
CREATE FUNCTION analytics_internal.at_scale(amount numeric, scales numeric) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN round(amount, analytics_internal.largest_scale(scales));

CREATE VIEW analytics.sales_hourly WITH (security_barrier) AS
SELECT p.store_id, p.bucket,
       sum(p.sales_count)::bigint AS sales_count,
       analytics.money(sum(p.subtotal_bs)) AS subtotal_bs, analytics.money(sum(p.subtotal_usd)) AS subtotal_usd,
       analytics.money(sum(p.discount_bs)) AS discount_bs, analytics.money(sum(p.discount_usd)) AS discount_usd,
       analytics_internal.at_scale(sum(p.total_bs), sum(p.total_bs_scales)) AS total_bs, analytics_internal.at_scale(sum(p.total_usd), sum(p.total_usd_scales)) AS total_usd,
       analytics_internal.at_scale(sum(p.total_bs), sum(p.total_bs_scales)) / sum(p.sales_count)::bigint AS avg_ticket_bs,
       analytics_internal.at_scale(sum(p.total_usd), sum(p.total_usd_scales)) / sum(p.sales_count)::bigint AS avg_ticket_usd
FROM analytics_internal.sales_hourly_parts p
WHERE analytics_internal._store_visible(p.store_id)
GROUP BY p.store_id, p.bucket
HAVING sum(p.sales_count) <> 0;

CREATE VIEW analytics.sales_daily WITH (security_barrier) AS
SELECT d.store_id, d.day,
       d.day::timestamp AT TIME ZONE analytics.store_timezone(d.store_id) AS bucket,
       d.sales_count, d.subtotal_bs, d.subtotal_usd, d.discount_bs, d.discount_usd,
       d.total_bs, d.total_usd,
       d.total_bs / d.sales_count AS avg_ticket_bs,
       d.total_usd / d.sales_count AS avg_ticket_usd,
       (SELECT count(*) FROM (
            SELECT 1 FROM analytics_internal.customer_daily_parts c
            WHERE c.store_id = d.store_id AND c.day = d.day
            GROUP BY c.customer_id HAVING sum(c.sales_count) > 0) AS present
       ) AS unique_customers
FROM (
    SELECT p.store_id, p.day,
           sum(p.sales_count)::bigint AS sales_count,
           analytics.money(sum(p.subtotal_bs)) AS subtotal_bs, analytics.money(sum(p.subtotal_usd)) AS subtotal_usd,
           analytics.money(sum(p.discount_bs)) AS discount_bs, analytics.money(sum(p.discount_usd)) AS discount_usd,
           analytics_internal.at_scale(sum(p.total_bs), sum(p.total_bs_scales)) AS total_bs, analytics_internal.at_scale(sum(p.total_usd), sum(p.total_usd_scales)) AS total_usd
    FROM analytics_internal.sales_daily_parts p
    WHERE analytics_internal._store_visible(p.store_id)
    GROUP BY p.store_id, p.day
    HAVING sum(p.sales_count) <> 0
) AS d;

CREATE VIEW analytics.sales_by_payment_daily WITH (security_barrier) AS
SELECT p.store_id, p.day, p.method,
       sum(p.sales_count)::bigint AS sales_count,
       analytics_internal.at_scale(sum(p.total_bs), sum(p.total_bs_scales)) AS total_bs,
       analytics_internal.at_scale(sum(p.total_usd), sum(p.total_usd_scales)) AS total_usd
FROM analytics_internal.sales_daily_parts p
WHERE analytics_internal._store_visible(p.store_id)
GROUP BY p.store_id, p.day, p.method
HAVING sum(p.sales_count) <> 0;

-- Stock per store and product (SPEC §2): with LA-CAJA's warehouse_stock, Σ stock over the
-- store's warehouses, every variant and the base row (reserved not included), read when asked
-- (one row per warehouse, product and variant: the table is its own rollup); without it, the
-- ledger rollup. attach() writes the bodies for the tables it finds: the stores that hold stock,
-- and one store's stock (the view calls it per store, so a reader of one store reads that one).
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

-- The bodies of _stock_stores() and _product_stock(uuid), in that order.
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

-- A filter on store_id applies to the stores before their stock is read (only the stores a
-- reader asks for are read).
CREATE VIEW analytics.product_stock WITH (security_barrier) AS
SELECT st.store_id, s.product_id, s.stock
FROM analytics_internal._stock_stores() AS st (store_id)
CROSS JOIN LATERAL analytics_internal._product_stock(st.store_id) AS s
WHERE analytics_internal._store_visible(st.store_id);

-- Drift (SPEC §2 stock_drift): per store, warehouse and product, the ledger (Σ qty_delta, from
-- the ledger rollup; movements without a warehouse under warehouse_id NULL) against what the
-- warehouse holds (Σ stock + reserved over the product's variants), where they differ. `escrow`
-- is the part of the ledger moved by escrow movements. The cause, where it can be told:
--   movements without a warehouse  the row of warehouse_id NULL (no warehouse row to hold them)
--   escrow sales                   escrow movements: stock granted to an offline device and sold
--                                  there, written to the ledger and never to a warehouse row
--   transfer in transit            the warehouse holds more than its ledger (escrow aside), and
--                                  the ledger less than what is reserved for a transfer: a sale
--                                  found the stock reserved and LA-CAJA's clamp
--                                  (stock = greatest(0, stock - qty)) hid it
--   clamp hid a negative           the ledger (escrow aside) is below zero, which a warehouse row
--                                  cannot be: a decrement larger than the stock, clamped at 0
-- Otherwise no cause is told: stock added or removed without a movement, or an old clamp since
-- made up by deliveries, leave the same rows.
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

-- LA-CAJA's heatmap shape; a local hour that a DST fall-back repeats is one cell.
CREATE VIEW analytics.sales_heatmap WITH (security_barrier) AS
SELECT p.store_id,
       p.local_hour::date AS date,
       extract(hour FROM p.local_hour)::int AS hour,
       extract(dow FROM p.local_hour)::int AS day_of_week,
       sum(p.sales_count)::bigint AS sales_count,
       analytics_internal.at_scale(sum(p.total_bs), sum(p.total_bs_scales)) AS total_amount_bs,
       analytics_internal.at_scale(sum(p.total_usd), sum(p.total_usd_scales)) AS total_amount_usd,
       analytics_internal.at_scale(sum(p.total_bs), sum(p.total_bs_scales)) / sum(p.sales_count)::bigint AS avg_ticket_bs,
       analytics_internal.at_scale(sum(p.total_usd), sum(p.total_usd_scales)) / sum(p.sales_count)::bigint AS avg_ticket_usd
FROM analytics_internal.sales_hourly_parts p
WHERE analytics_internal._store_visible(p.store_id)
GROUP BY p.store_id, p.local_hour::date, extract(hour FROM p.local_hour), extract(dow FROM p.local_hour)
HAVING sum(p.sales_count) <> 0;

-- SQL generation from the catalog ------------------------------------------------------

-- A measured sale: what every rollup is computed from. `source` yields sign, store_id,
-- sold_at, customer_id, totals and payment for valid sales only.
CREATE FUNCTION analytics_internal._measure_sales_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
        SELECT c.sign, c.store_id, c.customer_id, z.tz,
               date_trunc('hour', c.sold_at AT TIME ZONE z.tz) AS local_hour,
               (c.sold_at AT TIME ZONE z.tz)::date AS day,
               analytics.payment_method(c.payment) AS method,
               c.sign * a.subtotal_bs AS subtotal_bs, c.sign * a.subtotal_usd AS subtotal_usd,
               c.sign * a.discount_bs AS discount_bs, c.sign * a.discount_usd AS discount_usd,
               c.sign * a.total_bs AS total_bs, c.sign * a.total_usd AS total_usd,
               c.sign * analytics_internal.scale_mark(a.total_bs) AS total_bs_scales,
               c.sign * analytics_internal.scale_mark(a.total_usd) AS total_usd_scales
        FROM (%s) AS c
        LEFT JOIN analytics.store_settings AS st ON st.store_id = c.store_id
        CROSS JOIN LATERAL (SELECT coalesce(st.timezone, analytics.default_timezone()) AS tz) AS z
        CROSS JOIN LATERAL (SELECT
               analytics.amount(c.totals -> 'subtotal_bs')  AS subtotal_bs,
               analytics.amount(c.totals -> 'subtotal_usd') AS subtotal_usd,
               analytics.amount(c.totals -> 'discount_bs')  AS discount_bs,
               analytics.amount(c.totals -> 'discount_usd') AS discount_usd,
               analytics.amount(c.totals -> 'total_bs')     AS total_bs,
               analytics.amount(c.totals -> 'total_usd')    AS total_usd
               OFFSET 0) AS a
        WHERE c.store_id IS NOT NULL AND c.sold_at IS NOT NULL$q$, source)
$$;

-- A measured stock change: sign, store, warehouse, product, the signed quantity and the
-- signed quantity again when it is an escrow movement.
CREATE FUNCTION analytics_internal._measure_stock_sql(source text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$
        SELECT c.sign, c.store_id, c.warehouse_id, c.product_id, c.sign * coalesce(c.qty::numeric, 0) AS qty,
               CASE WHEN c.from_escrow THEN c.sign * coalesce(c.qty::numeric, 0) ELSE 0 END AS escrow
        FROM (%s) AS c
        WHERE c.store_id IS NOT NULL AND c.product_id IS NOT NULL$q$, source)
$$;

CREATE FUNCTION analytics_internal._measured_sql(source text, rows_sql text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE source WHEN 'sales' THEN analytics_internal._measure_sales_sql(rows_sql)
                       WHEN 'stock' THEN analytics_internal._measure_stock_sql(rows_sql)
                       WHEN 'items' THEN rows_sql END
$$;

-- The rollup's rows aggregated from measured sales in `measured` (a CTE name).
CREATE FUNCTION analytics_internal._aggregate_sql(r analytics_internal.rollup_catalog, measured text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('SELECT %s FROM %I WHERE %s GROUP BY %s',
        (SELECT string_agg(format('%s AS %I', e, k), ', ')
           FROM unnest(r.key_exprs || r.val_exprs, r.keys || r.vals) AS x(e, k)),
        measured, r.filter,
        (SELECT string_agg(i::text, ', ') FROM generate_series(1, cardinality(r.keys)) AS i))
$$;

-- The rollup's current sums over all shards, optionally for one store.
CREATE FUNCTION analytics_internal._actual_sql(r analytics_internal.rollup_catalog, store_filter text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT format('SELECT %s, %s FROM %s WHERE %s GROUP BY %s',
        (SELECT string_agg(format('%I', k), ', ') FROM unnest(r.keys) AS k),
        (SELECT string_agg(format('sum(%1$I) AS %1$I', v), ', ') FROM unnest(r.vals) AS v),
        r.parts, store_filter,
        (SELECT string_agg(format('%I', k), ', ') FROM unnest(r.keys) AS k))
$$;

-- INSERT ... ON CONFLICT that adds `rows` (unique per key) to `shard_expr`'s parts; with
-- `skip_zero`, keys whose delta is all zero are left alone. No lock ordering is needed: a
-- session's shard has one writer, and shard 0 is written under the repair's advisory lock.
CREATE FUNCTION analytics_internal._add_to_parts_sql(r analytics_internal.rollup_catalog, rows_sql text, shard_expr text,
                                            skip_zero boolean)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$INSERT INTO %1$s AS p (%2$s, shard, %3$s)
        SELECT %2$s, %4$s, %3$s FROM (%5$s) AS d
        WHERE %6$s
        ON CONFLICT (%2$s, shard) DO UPDATE SET %7$s$q$,
        r.parts,
        (SELECT string_agg(format('%I', k), ', ') FROM unnest(r.keys) AS k),
        (SELECT string_agg(format('%I', v), ', ') FROM unnest(r.vals) AS v),
        shard_expr,
        rows_sql,
        CASE WHEN skip_zero
             THEN format('ROW(%s) <> ROW(%s)', (SELECT string_agg(format('%I', v), ', ') FROM unnest(r.vals) AS v),
                                               (SELECT string_agg('0', ', ') FROM unnest(r.vals)))
             ELSE 'true' END,
        (SELECT string_agg(format('%1$I = p.%1$I + excluded.%1$I', v), ', ') FROM unnest(r.vals) AS v))
$$;

-- Expected (definition over the source) against actual (sums of parts), per key.
CREATE FUNCTION analytics_internal._difference_sql(r analytics_internal.rollup_catalog, measured text, store_filter text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT format($q$SELECT %1$s, %2$s, %3$s, %4$s
        FROM (%5$s) AS e FULL JOIN (%6$s) AS a USING (%1$s)
        WHERE ROW(%7$s) <> ROW(%8$s)$q$,
        (SELECT string_agg(format('%I', k), ', ') FROM unnest(r.keys) AS k),
        (SELECT string_agg(format('coalesce(e.%1$I, 0) - coalesce(a.%1$I, 0) AS %1$I', v), ', ') FROM unnest(r.vals) AS v),
        (SELECT string_agg(format('e.%1$I AS %2$I', v, 'expected_' || v), ', ') FROM unnest(r.vals) AS v),
        (SELECT string_agg(format('a.%1$I AS %2$I', v, 'actual_' || v), ', ') FROM unnest(r.vals) AS v),
        analytics_internal._aggregate_sql(r, measured),
        analytics_internal._actual_sql(r, store_filter),
        (SELECT string_agg(format('coalesce(e.%I, 0)', v), ', ') FROM unnest(r.vals) AS v),
        (SELECT string_agg(format('coalesce(a.%I, 0)', v), ', ') FROM unnest(r.vals) AS v))
$$;

-- The rows of the attached source tables that a source's rollups are computed from, as the
-- capture triggers see them (`sign`, then the source's columns), optionally for one store.
-- NULL when that source is not attached.
CREATE FUNCTION analytics_internal._source_rows_sql(source text, store_filter text) RETURNS text
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

-- `r.<column>` when `rel` has the column with exactly that type, else `otherwise`.
CREATE FUNCTION analytics_internal._column_or(rel regclass, column_name name, column_type regtype, otherwise text)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_attribute a
                             WHERE a.attrelid = rel AND a.attname = column_name AND a.atttypid = column_type
                               AND a.attnum > 0 AND NOT a.attisdropped)
                THEN format('r.%I', column_name) ELSE otherwise END
$$;

-- The columns a source's capture reads from its table (alias r). A movement's warehouse and
-- escrow flag are read when `movements` has them with those types (as the capture trigger
-- does, src/capture/triggers.rs), else NULL and false.
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

-- The fold of the sales and stock rows a transaction captured (src/capture calls it when the
-- transaction commits, and earlier for a level that captured many rows): every rollup of the
-- source receives the net delta per key in one statement per source, into `target_shard`'s
-- parts. Rows are signed (old −1, new +1); `sale_counts` says which sales rows count (valid,
-- with store and time); new rows are checked for malformed JSON (ingest_errors), counted or
-- not. attach() generates the body.
CREATE FUNCTION analytics_internal._fold_rows(target_shard int, sale_signs int[], sale_ids uuid[], sale_stores uuid[],
        sale_times timestamptz[], sale_customers uuid[], sale_totals jsonb[], sale_payments jsonb[], sale_counts boolean[],
        stock_signs int[], stock_stores uuid[], stock_warehouses uuid[], stock_products uuid[], stock_quantities text[],
        stock_escrow boolean[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RETURN;
END
$$;

CREATE FUNCTION analytics_internal._fold_rows_body() RETURNS text
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

-- Sets the body of a fold function (it stays a member of the extension).
CREATE FUNCTION analytics_internal._set_fold_rows_body(body text) RETURNS void
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

-- The capture triggers (src/capture/triggers.rs) run as the extension's owner, who folds what
-- they capture when the transaction commits, whatever the POS session's role.
ALTER FUNCTION analytics_internal._capture_sales() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION analytics_internal._capture_items() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION analytics_internal._capture_item_returns() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION analytics_internal._capture_stock() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Whether trigger `trigger_name` on `relation` is one the extension created (and bound to itself
-- with _bind_trigger_to_extension): nobody else can make such a trigger.
CREATE FUNCTION analytics_internal._is_extension_trigger(relation oid, trigger_name name) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_trigger t
        JOIN pg_depend d ON d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                        AND d.refclassid = 'pg_extension'::regclass
        JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'lacaja_analytics'
        WHERE t.tgrelid = relation AND t.tgname = trigger_name)
$$;

-- Binds a trigger to the extension once (binding twice would record the dependency twice).
CREATE FUNCTION analytics_internal._bind_trigger(relation regclass, trigger_name name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT analytics_internal._is_extension_trigger(relation, trigger_name) THEN
        PERFORM analytics_internal._bind_trigger_to_extension(relation::oid, trigger_name);
    END IF;
END
$$;

-- TRUNCATE of a source table empties the rollups of that source (TG_ARGV[0]). Only from the
-- extension's own triggers: attached anywhere else it refuses.
CREATE FUNCTION analytics_internal._capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r analytics_internal.rollup_catalog;
BEGIN
    IF NOT analytics_internal._is_extension_trigger(TG_RELID, TG_NAME) OR TG_NAME <> format('lacaja_analytics_%s_truncate', TG_ARGV[0]) THEN
        RAISE EXCEPTION 'trigger % on % is not one of lacaja_analytics'' capture triggers', TG_NAME, TG_RELID::regclass
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_ARGV[0] LIKE 'warehouse\_%' THEN
        -- What the table held is gone without a trace in the change log: reload it all.
        UPDATE analytics_internal.warehouse_state SET full_load_pending = true;
        RETURN NULL;
    END IF;
    IF TG_ARGV[0] = 'item_returns' THEN
        -- Returned quantities are part of the item facts: the sales that had any are
        -- recomputed when the transaction commits, with whatever else it changed.
        PERFORM analytics_internal._capture_changed_sales(ARRAY(
            SELECT DISTINCT f.sale_id FROM analytics_internal.item_facts f
            WHERE (f.returned_qty, f.returned_bs, f.returned_usd) <> (0, 0, 0)));
        RETURN NULL;
    END IF;
    -- What this transaction captured of the table and has not folded yet is gone with it.
    PERFORM analytics_internal._capture_discard(TG_ARGV[0]);
    FOR r IN SELECT * FROM analytics_internal.rollup_catalog WHERE source = TG_ARGV[0] ORDER BY position LOOP
        EXECUTE format('TRUNCATE %s', r.parts);
    END LOOP;
    IF TG_ARGV[0] = 'items' THEN
        TRUNCATE analytics_internal.item_facts;
    END IF;
    RETURN NULL;
END
$$;

-- The four capture triggers of one table, bound to the extension so DROP EXTENSION removes them.
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

-- Replaces a capture function's body (it stays a member of the extension).
CREATE FUNCTION analytics_internal._set_capture_body(source text, body text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format($f$CREATE OR REPLACE FUNCTION analytics_internal.%I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS %L$f$,
        '_capture_' || source, body);
END
$$;


-- Attach and detach ---------------------------------------------------------------------

-- A name as it may appear in a generated `--` comment: a newline in a quoted identifier would
-- end the comment and make the rest of the name code of the function.
CREATE FUNCTION analytics_internal._in_comment(name text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT translate(name, E'\n\r', '  ')
$$;

-- `schema_name.table_name` when it is a table (plain or partitioned), else NULL: the owner's
-- code reads and writes LA-CAJA's tables, never views or foreign tables in their place.
CREATE FUNCTION analytics_internal._source_table(schema_name name, table_name name) RETURNS regclass
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass FROM pg_class c
    WHERE c.oid = to_regclass(format('%I.%I', schema_name, table_name)) AND c.relkind IN ('r', 'p')
      -- every column of a built-in type (see _has_columns)
      AND NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                      WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                        AND t.typnamespace <> 'pg_catalog'::regnamespace)
$$;

-- Whether `rel` is a table (plain or partitioned) with all of `columns`, each of a built-in
-- type. Only tables: the owner's code never reads a view or a foreign table of the source
-- schema, whose functions would run with the owner's rights; only built-in types: a cast or
-- operator of a type someone else owns would too.
CREATE FUNCTION analytics_internal._has_columns(rel regclass, columns text[]) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT rel IS NOT NULL AND (SELECT c.relkind FROM pg_class c WHERE c.oid = rel) IN ('r', 'p')
       AND NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
                       WHERE a.attrelid = rel AND a.attname = ANY (columns) AND a.attnum > 0
                         AND t.typnamespace <> 'pg_catalog'::regnamespace)
       AND NOT EXISTS (
        SELECT 1 FROM unnest(columns) AS c
        WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a
                          WHERE a.attrelid = rel AND a.attname = c AND a.attnum > 0 AND NOT a.attisdropped))
$$;

-- Drops the capture triggers named `prefix`…, on whatever tables; returns table.trigger names.
CREATE FUNCTION analytics_internal._drop_capture_triggers(prefix text) RETURNS text[]
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

-- Creating a trigger takes SHARE ROW EXCLUSIVE on its table and dropping one ACCESS
-- EXCLUSIVE, both in conflict with the POS's writes: every table attach or detach touches is
-- locked at once by short tries (_lock_tables), so that no sale queues behind a report.
CREATE FUNCTION analytics_internal._lock_capture_tables(source_schema name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM analytics_internal._lock_tables(ARRAY(
        SELECT DISTINCT t.rel::text FROM (
            SELECT to_regclass(format('%I.%I', source_schema, name)) AS rel
            FROM unnest(ARRAY['sales', 'sale_items', 'sale_returns', 'sale_return_items', 'inventory_movements', 'products']) AS name
            WHERE source_schema IS NOT NULL
            UNION
            SELECT tg.tgrelid::regclass FROM pg_trigger tg WHERE starts_with(tg.tgname, 'lacaja_analytics_') AND NOT tg.tgisinternal) AS t
        WHERE t.rel IS NOT NULL), 'ACCESS EXCLUSIVE');
END
$$;

CREATE FUNCTION analytics.detach() RETURNS jsonb
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

-- The lookups the capture makes on every POS statement, and which of them no index serves
-- (each would then scan the whole table on every sale).
CREATE FUNCTION analytics_internal._unindexed_lookups(source_schema name) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(format('%s(%s) has no index: every sale scans %s; run SELECT * FROM analytics.create_recommended_indexes(dry_run => false)',
                                     rel, col, rel) ORDER BY rel::text), '{}')
    FROM (VALUES ('sale_items', 'sale_id'), ('sale_return_items', 'sale_item_id')) AS l (tbl, col)
    CROSS JOIN LATERAL (SELECT to_regclass(format('%I.%I', source_schema, l.tbl)) AS rel) AS r
    WHERE r.rel IS NOT NULL
      AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = r.rel AND a.attname = l.col AND NOT a.attisdropped)
      AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                      WHERE i.indrelid = r.rel AND a.attname = l.col AND i.indisvalid AND i.indpred IS NULL)
$$;

CREATE FUNCTION analytics.attach(source_schema name DEFAULT 'public') RETURNS jsonb
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

-- What attach() builds from source_config: the generated fold and reader bodies, the capture
-- triggers (bound to the extension) and, with the warehouse enabled, its capture. With
-- create_triggers => false nothing is created: triggers that exist are bound — the state a
-- restore leaves, where pg_restore creates the triggers one by one (src: restore.sql).
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

CREATE FUNCTION analytics_internal._read_source_tables() RETURNS SETOF name
LANGUAGE sql IMMUTABLE AS $$
    SELECT unnest(ARRAY['sales', 'sale_items', 'sale_returns', 'sale_return_items', 'products', 'inventory_movements',
                        'stores', 'customers', 'debts', 'warehouses', 'warehouse_stock', 'product_lots', 'exchange_rates',
                        'real_time_metrics', 'alert_thresholds', 'real_time_alerts']::name[])
$$;

-- LA-CAJA's tables the owner's code reads (capture triggers, dashboards, the warehouse) must
-- be tables whose columns are of built-in types, in the schema that was attached: a view, a
-- rule, a foreign table, or a column of a type someone else owns (with its casts and
-- operators) would run that someone's code with the extension's rights. NULL when all is well,
-- else what is wrong.
CREATE FUNCTION analytics_internal._source_table_problems(source_schema name) RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH read AS (
        SELECT c.oid, c.relname, c.relkind FROM analytics_internal._read_source_tables() AS t
        JOIN pg_class c ON c.oid = to_regclass(format('%I.%I', source_schema, t)))
    SELECT string_agg(problem, '; ' ORDER BY problem) FROM (
        SELECT format('%I.%I is a %s, not a table', source_schema, r.relname,
                      CASE r.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                     WHEN 'f' THEN 'foreign table' ELSE 'relation of kind ' || r.relkind::text END) AS problem
        FROM read r WHERE r.relkind NOT IN ('r', 'p')
        UNION ALL
        SELECT format('column %I.%I.%I is of type %s, not a built-in one', source_schema, r.relname, a.attname,
                      format_type(a.atttypid, a.atttypmod))
        FROM read r
        JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_type ty ON ty.oid = a.atttypid
        WHERE ty.typnamespace <> 'pg_catalog'::regnamespace
        UNION ALL
        -- The capture triggers read these columns' values directly (src/capture).
        SELECT format('column %I.%I.%I is of type %s; lacaja_analytics reads it as %s', source_schema, r.relname, a.attname,
                      format_type(a.atttypid, a.atttypmod), x.type)
        FROM read r
        JOIN (VALUES ('sales', 'id', 'uuid'::regtype), ('sales', 'store_id', 'uuid'), ('sales', 'sold_at', 'timestamptz'),
                     ('sales', 'customer_id', 'uuid'), ('sales', 'totals', 'jsonb'), ('sales', 'payment', 'jsonb'),
                     ('sale_items', 'sale_id', 'uuid'), ('sale_return_items', 'sale_item_id', 'uuid'),
                     ('inventory_movements', 'store_id', 'uuid'), ('inventory_movements', 'product_id', 'uuid'),
                     ('products', 'id', 'uuid'), ('products', 'store_id', 'uuid')) AS x (relname, column_name, type)
          ON x.relname = r.relname
        JOIN pg_attribute a ON a.attrelid = r.oid AND a.attname = x.column_name AND a.attnum > 0 AND NOT a.attisdropped
        WHERE a.atttypid <> x.type
        UNION ALL
        SELECT format('%s is a foreign partition or child of %I.%I', i.inhrelid::regclass, source_schema, r.relname)
        FROM read r
        JOIN pg_inherits i ON i.inhparent = r.oid
        JOIN pg_class child ON child.oid = i.inhrelid AND child.relkind = 'f') AS p
$$;

-- While attached, DDL that breaks that (in the schema, or of the schema: a rename that puts
-- another schema in its place) is refused. Every command that can make or change a relation or
-- a schema is looked at (the check reads a few catalog rows); index commands are not (they
-- cannot, and CREATE INDEX CONCURRENTLY run by the index builder has no snapshot for it).
CREATE FUNCTION analytics_internal._guard_source_tables() RETURNS event_trigger
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

CREATE EVENT TRIGGER lacaja_analytics_guard_source_tables ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE', 'DROP TABLE', 'CREATE TABLE AS', 'SELECT INTO',
                 'CREATE VIEW', 'ALTER VIEW', 'DROP VIEW', 'CREATE MATERIALIZED VIEW', 'ALTER MATERIALIZED VIEW',
                 'DROP MATERIALIZED VIEW', 'CREATE FOREIGN TABLE', 'ALTER FOREIGN TABLE', 'DROP FOREIGN TABLE',
                 'IMPORT FOREIGN SCHEMA', 'CREATE RULE', 'CREATE SCHEMA', 'ALTER SCHEMA', 'DROP SCHEMA', 'ALTER TYPE')
    EXECUTE FUNCTION analytics_internal._guard_source_tables();

-- Verify and repair ---------------------------------------------------------------------

CREATE FUNCTION analytics_internal._store_filter(store_id uuid) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN store_id IS NULL THEN 'true' ELSE format('store_id = %L::uuid', store_id) END
$$;

-- `measured_<source> AS MATERIALIZED (...)` for every attached source, optionally for one
-- store, and the catalog entries those sources feed.
-- The days verify and repair compare, as a condition on `day_column`: those from `from_day`
-- until before `to_day` (NULL: unbounded), never those whose sales retention dropped
-- (SPEC §2 still holds for them in the rollups, which keep the history the source lost).
CREATE FUNCTION analytics_internal._day_filter(day_column text, from_day date, to_day date) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lowest date := analytics_internal._retained_from_day();
BEGIN
    lowest := CASE WHEN lowest IS NULL THEN from_day ELSE greatest(lowest, from_day) END;
    RETURN concat_ws(' AND ', 'true',
        CASE WHEN lowest IS NOT NULL THEN format('(%s IS NULL OR %s >= %L::date)', day_column, day_column, lowest) END,
        CASE WHEN to_day IS NOT NULL THEN format('(%s IS NULL OR %s < %L::date)', day_column, day_column, to_day) END);
END
$$;

-- The first local day whose sales are all still in the source when retention dropped chunks
-- of the sales hypertable (NULL when it never did). A chunk boundary is a UTC instant; a day
-- of margin covers every store's zone.
CREATE FUNCTION analytics_internal._retained_from_day() RETURNS date
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF to_regclass('analytics.hypertables') IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT (h.dropped_before AT TIME ZONE 'UTC')::date + 2
            FROM analytics.hypertables h, analytics_internal.source_config c
            WHERE h.relation = to_regclass(format('%I.sales', c.source_schema)) AND h.dropped_before IS NOT NULL);
END
$$;

-- A rollup's day as an expression on its parts (NULL for rollups without days).
CREATE FUNCTION analytics_internal._rollup_day_column(r analytics_internal.rollup_catalog) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN 'day' = ANY (r.keys) THEN 'day' WHEN 'local_hour' = ANY (r.keys) THEN 'local_hour::date' END
$$;

-- The parts of `r` that a verify or repair of one store (or all) over a window compares.
CREATE FUNCTION analytics_internal._parts_filter(r analytics_internal.rollup_catalog, store_id uuid, from_day date, to_day date) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT analytics_internal._store_filter(store_id) || CASE WHEN analytics_internal._rollup_day_column(r) IS NULL THEN ''
        ELSE ' AND ' || analytics_internal._day_filter(analytics_internal._rollup_day_column(r), from_day, to_day) END
$$;

CREATE FUNCTION analytics_internal._measured_ctes(store_id uuid, from_day date, to_day date,
                                         OUT ctes text[], OUT rollups analytics_internal.rollup_catalog[])
LANGUAGE plpgsql STABLE AS $$
DECLARE
    filter constant text := CASE WHEN store_id IS NULL THEN 'true' ELSE format('r.store_id = %L::uuid', store_id) END;
    src text;
    rows_sql text;
BEGIN
    ctes := '{}';
    rollups := '{}';
    FOR src IN SELECT DISTINCT c.source FROM analytics_internal.rollup_catalog c ORDER BY 1 LOOP
        rows_sql := analytics_internal._source_rows_sql(src, filter);
        CONTINUE WHEN rows_sql IS NULL;
        ctes := ctes || format('%I AS MATERIALIZED (SELECT * FROM (%s) AS m WHERE %s)', 'measured_' || src,
                               analytics_internal._measured_sql(src, rows_sql),
                               CASE WHEN src = 'stock' THEN 'true' ELSE analytics_internal._day_filter('m.day', from_day, to_day) END);
        rollups := rollups || ARRAY(SELECT c FROM analytics_internal.rollup_catalog c WHERE c.source = src ORDER BY c.position);
    END LOOP;
END
$$;

CREATE FUNCTION analytics.verify(store_id uuid DEFAULT NULL)
RETURNS TABLE (relation text, key jsonb, expected jsonb, actual jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM analytics_internal._verify(store_id, NULL, NULL)
$$;

-- verify() over the days from `from_day` until before `to_day` (NULL: unbounded).
CREATE FUNCTION analytics_internal._verify(store_id uuid, from_day date, to_day date)
RETURNS TABLE (relation text, key jsonb, expected jsonb, actual jsonb)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    measured record := analytics_internal._measured_ctes(store_id, from_day, to_day);
    parts text[] := '{}';
    c analytics_internal.rollup_catalog;
BEGIN
    FOREACH c IN ARRAY measured.rollups LOOP
        parts := parts || format($q$SELECT %L, jsonb_build_object(%s), jsonb_build_object(%s), jsonb_build_object(%s)
                                   FROM (%s) AS d$q$,
            c.name,
            (SELECT string_agg(format('%L, d.%I', k, k), ', ') FROM unnest(c.keys) k),
            (SELECT string_agg(format('%L, coalesce(d.%I, 0)', v, 'expected_' || v), ', ') FROM unnest(c.vals) v),
            (SELECT string_agg(format('%L, coalesce(d.%I, 0)', v, 'actual_' || v), ', ') FROM unnest(c.vals) v),
            analytics_internal._difference_sql(c, 'measured_' || c.source, analytics_internal._parts_filter(c, store_id, from_day, to_day)));
    END LOOP;
    -- One statement, so every rollup is compared in the same snapshot.
    RETURN QUERY EXECUTE format('WITH %s %s',
        array_to_string(measured.ctes, ', '), array_to_string(parts, ' UNION ALL '));
    RETURN QUERY SELECT * FROM analytics_internal._verify_item_facts(store_id, from_day, to_day);
END
$$;

CREATE FUNCTION analytics_internal._repair(store_id uuid, from_day date DEFAULT NULL, to_day date DEFAULT NULL) RETURNS jsonb
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

-- Folds the parts that writing sessions left (shards > 0) into shard 0, so that readers sum
-- one row per key again. The sums never change: each statement deletes parts and adds them to
-- shard 0 in one transaction. Parts a session is writing right now are skipped (SKIP LOCKED),
-- so no sale waits for it, and a session whose part was folded simply starts a new one.
-- At most `max_rows` parts per rollup per call; the compaction job calls it every few minutes.
CREATE FUNCTION analytics.compact_parts(max_rows int DEFAULT 200000) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c analytics_internal.rollup_catalog;
    folded jsonb := '{}';
    n bigint;
BEGIN
    -- shard 0 has one writer at a time: repairs and this
    PERFORM pg_advisory_xact_lock(1279345482, 1);
    FOR c IN SELECT * FROM analytics_internal.rollup_catalog ORDER BY position LOOP
        EXECUTE format('WITH moved AS (DELETE FROM %1$s AS m
                                       WHERE m.ctid = ANY (ARRAY(SELECT ctid FROM %1$s WHERE shard <> 0 LIMIT %2$s FOR UPDATE SKIP LOCKED))
                                       RETURNING m.*) %3$s',
            c.parts, max_rows,
            -- In key order: the folded rows of a store's days then sit together (a hash
            -- aggregate's order would scatter them one per page for the readers).
            analytics_internal._add_to_parts_sql(c, format('SELECT %1$s, %2$s FROM moved GROUP BY %1$s ORDER BY %1$s',
                (SELECT string_agg(format('%I', k), ', ') FROM unnest(c.keys) AS k),
                (SELECT string_agg(format('sum(%1$I) AS %1$I', v), ', ') FROM unnest(c.vals) AS v)), '0', false));
        GET DIAGNOSTICS n = ROW_COUNT;
        folded := folded || jsonb_build_object(c.name, n);
    END LOOP;
    RETURN jsonb_build_object('keys_folded', folded);
END
$$;

CREATE PROCEDURE analytics_internal.policy_compact_parts(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM analytics.compact_parts(coalesce((config ->> 'max_rows')::int, 200000));
END
$$;

CREATE FUNCTION analytics.refresh_all() RETURNS jsonb
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT analytics_internal._repair(NULL)
$$;

CREATE FUNCTION analytics.refresh_store(store_id uuid) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF store_id IS NULL THEN
        RAISE EXCEPTION 'refresh_store needs a store id' USING HINT = 'Use analytics.refresh_all() for every store.';
    END IF;
    RETURN analytics_internal._repair(store_id);
END
$$;

-- Zone changes whose stragglers are still to be settled (set_store_timezone, below).
CREATE TABLE analytics_internal.zone_changes (
    store_id   uuid PRIMARY KEY,
    changed_at timestamptz NOT NULL DEFAULT now(),
    -- First xid not yet assigned when the settle job first saw the change (committed by then):
    -- every transaction that could have folded with the old zone has an older xid or snapshot.
    horizon    xid8
);

-- Whether a transaction (or a snapshot, or a prepared transaction) older than `horizon` is
-- still alive in another session: such a transaction may have read the old zone.
CREATE FUNCTION analytics_internal._older_than_horizon_alive(horizon xid8) RETURNS boolean
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_snapshot_xmin(pg_current_snapshot()) < horizon
        OR EXISTS (SELECT 1 FROM pg_stat_activity a
                   WHERE a.pid <> pg_backend_pid() AND a.datname = current_database()
                     AND a.backend_xmin IS NOT NULL AND age(a.backend_xmin) > age(xid(horizon)))
$$;

-- Sets a store's zone and re-buckets its history into the new zone's days and hours, in the
-- caller's transaction, without stopping any sale: the repair reads one snapshot and adds the
-- difference to shard 0 (see refresh_all). Sales of this store that commit while it runs
-- were folded with the old zone and are not in its snapshot; the settle job
-- (policy_settle_zone_changes, every minute with the scheduler, or run_pending_jobs()) waits
-- until every transaction that could have read the old zone has ended and repairs the store
-- once more, which moves exactly those. Until then a few sales of that store may sit in the
-- old zone's day or hour; their totals are counted.
CREATE FUNCTION analytics.set_store_timezone(store_id uuid, tz text) RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    source_schema name := (SELECT c.source_schema FROM analytics_internal.source_config c);
BEGIN
    IF store_id IS NULL THEN
        RAISE EXCEPTION 'set_store_timezone needs a store id';
    END IF;
    IF tz IS NULL OR NOT analytics.is_valid_timezone(tz) THEN
        RAISE EXCEPTION 'unknown time zone: %', coalesce(tz, 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use a name from pg_timezone_names, e.g. America/Caracas.';
    END IF;
    -- The repair lock first: a running refresh_all() finishes (no sale waits for it).
    PERFORM pg_advisory_xact_lock(1279345482, 1);
    INSERT INTO analytics.store_settings AS s (store_id, timezone) VALUES ($1, $2)
    ON CONFLICT ON CONSTRAINT store_settings_pkey DO UPDATE SET timezone = excluded.timezone, updated_at = now();
    IF source_schema IS NULL THEN
        RETURN jsonb_build_object('store_id', $1, 'timezone', $2, 'rebucketed', NULL);
    END IF;
    INSERT INTO analytics_internal.zone_changes AS z (store_id) VALUES ($1)
    ON CONFLICT ON CONSTRAINT zone_changes_pkey DO UPDATE SET changed_at = now(), horizon = NULL;
    -- the settle job is due now (it waits for older transactions itself)
    UPDATE analytics.jobs j SET next_start = least(j.next_start, now()) WHERE j.job_id = 2;
    RETURN jsonb_build_object('store_id', $1, 'timezone', $2, 'rebucketed', analytics_internal._repair($1),
                              'settling', 'sales committed during the re-bucketing are moved by the settle job within a minute');
END
$$;

-- The settle job: for each zone change, once nothing that could have read the old zone is
-- alive, one more repair of the store (usually correcting nothing). A change seen for the
-- first time gets its horizon and is settled at a later run.
CREATE PROCEDURE analytics_internal.policy_settle_zone_changes(job_id int, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    change analytics_internal.zone_changes;
BEGIN
    UPDATE analytics_internal.zone_changes SET horizon = pg_snapshot_xmax(pg_current_snapshot()) WHERE horizon IS NULL;
    FOR change IN SELECT * FROM analytics_internal.zone_changes WHERE horizon IS NOT NULL ORDER BY changed_at LOOP
        CONTINUE WHEN analytics_internal._older_than_horizon_alive(change.horizon);
        PERFORM pg_advisory_xact_lock(1279345482, 1);
        PERFORM analytics_internal._repair(change.store_id);
        DELETE FROM analytics_internal.zone_changes z WHERE z.store_id = change.store_id AND z.horizon = change.horizon;
    END LOOP;
END
$$;

-- Inventory figures per store: SPEC §2's inventory metrics, plus the average stock level and
-- the number of categories that LA-CAJA's mv_inventory_metrics also shows. Over active
-- products. Thresholds, costs, stock, lots and rates live in LA-CAJA's tables of current state,
-- so the figures are evaluated when read (one pass over a store's products, no sales); a view
-- over those tables would block LA-CAJA's own migrations of them, so attach() writes the body
-- for the tables it finds (static SQL: its plan is kept for the session).
CREATE FUNCTION analytics_internal._inventory_figures(for_store uuid DEFAULT NULL)
RETURNS TABLE (store_id uuid, total_products bigint, low_stock_count bigint, out_of_stock_count bigint,
               stock_value_bs numeric, stock_value_usd numeric, avg_stock_level numeric, categories_count bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN;
END
$$;

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

-- Customer figures per store (LA-CAJA's mv_customer_metrics, SPEC §7): customers, those with
-- an open or partial debt and the sum of those debts, and the customers with a valid sale in
-- the store's last 30 local days (from the customer rollup). Each debt counts once: LA-CAJA's
-- own view joins debts with sales and so counts each debt once per sale of its customer.
-- Written by attach() for the customers and debts tables it finds.
CREATE FUNCTION analytics_internal._customer_figures(for_store uuid DEFAULT NULL)
RETURNS TABLE (store_id uuid, total_customers bigint, customers_with_debt bigint, total_debt_bs numeric, total_debt_usd numeric,
               active_customers_30d bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN;
END
$$;

CREATE FUNCTION analytics_internal._customer_figures_body(customers regclass, debts regclass) RETURNS text
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

-- Writes the bodies of the functions that read LA-CAJA's products for the dashboards, for the
-- attached schema (after detach(): bodies that return nothing).
CREATE FUNCTION analytics_internal._generate_readers() RETURNS void
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

CREATE FUNCTION analytics_internal._inventory_metrics_of(for_store uuid, token bigint)
RETURNS TABLE (store_id uuid, total_products bigint, low_stock_count bigint, out_of_stock_count bigint,
               stock_value_bs numeric, stock_value_usd numeric)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    caller constant oid := analytics_internal._redeem_caller(token);
BEGIN
    PERFORM analytics_internal._check_reader(caller, for_store);
    RETURN QUERY
    SELECT f.store_id, f.total_products, f.low_stock_count, f.out_of_stock_count, f.stock_value_bs, f.stock_value_usd
    FROM analytics_internal._inventory_figures(for_store) AS f
    WHERE analytics_internal._store_visible_to(caller, f.store_id);
END
$$;

-- A wrapper with the caller's rights (see analytics.kpis).
CREATE FUNCTION analytics.inventory_metrics_of(for_store uuid DEFAULT NULL)
RETURNS TABLE (store_id uuid, total_products bigint, low_stock_count bigint, out_of_stock_count bigint,
               stock_value_bs numeric, stock_value_usd numeric)
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._inventory_metrics_of(for_store, analytics_internal._caller_token());
END;

CREATE VIEW analytics.inventory_metrics WITH (security_barrier) AS
SELECT * FROM analytics.inventory_metrics_of(NULL);

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

-- Where the ledger and the warehouses disagree, and why (see analytics.stock_drift, the type).
-- A wrapper with the caller's rights (see analytics.kpis).
CREATE FUNCTION analytics.stock_drift(store_id uuid DEFAULT NULL)
RETURNS SETOF analytics.stock_drift
LANGUAGE sql STABLE
BEGIN ATOMIC
    SELECT * FROM analytics_internal._stock_drift_of(store_id, analytics_internal._caller_token());
END;

