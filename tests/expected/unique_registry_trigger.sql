CREATE OR REPLACE FUNCTION analytics_internal.idx_sales_store_sale_number_keys()
 RETURNS trigger
 LANGUAGE plpgsql
 SECURITY DEFINER
 SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    detail text;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        TRUNCATE analytics_internal.idx_sales_store_sale_number_keys;
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        DELETE FROM analytics_internal.idx_sales_store_sale_number_keys AS k USING old_rows AS o WHERE k.store_id = o.store_id AND k.sale_number = o.sale_number;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO analytics_internal.idx_sales_store_sale_number_keys (store_id, sale_number) SELECT n.store_id, n.sale_number FROM new_rows AS n WHERE n.store_id IS NOT NULL AND n.sale_number IS NOT NULL;
    ELSE
        -- Only keys that changed (a void leaves the numbers alone and writes nothing here);
        -- counted, so that two rows given one number in one statement still collide.
        DELETE FROM analytics_internal.idx_sales_store_sale_number_keys AS k USING (SELECT store_id, sale_number FROM old_rows EXCEPT ALL SELECT store_id, sale_number FROM new_rows) AS o WHERE k.store_id = o.store_id AND k.sale_number = o.sale_number;
        INSERT INTO analytics_internal.idx_sales_store_sale_number_keys (store_id, sale_number) SELECT n.store_id, n.sale_number FROM (SELECT store_id, sale_number FROM new_rows EXCEPT ALL SELECT store_id, sale_number FROM old_rows) AS n WHERE n.store_id IS NOT NULL AND n.sale_number IS NOT NULL;
    END IF;
    RETURN NULL;
EXCEPTION WHEN unique_violation THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RAISE EXCEPTION 'duplicate key value violates unique constraint "%"', 'idx_sales_store_sale_number' USING ERRCODE = 'unique_violation',
        CONSTRAINT = 'idx_sales_store_sale_number', DETAIL = detail, TABLE = TG_TABLE_NAME, SCHEMA = TG_TABLE_SCHEMA;
END$function$
