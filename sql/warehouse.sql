-- Warehouse (issue 7): the time dimension and the holidays calendar it flags. The facts, the
-- other dimensions and the ETL come next.

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
