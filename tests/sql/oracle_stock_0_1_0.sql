-- The stock and inventory definitions of SPEC §2 before 0.2.0 (issue 17 changed them): stock is
-- the movement ledger; low stock is a threshold above 0 and a stock above 0 at or under it; the
-- value counts positive stock at the product's costs. Run after oracle.sql, over its views, by
-- tests/upgrade.rs while the previous release's SQL is installed. It had no stock_drift().
DELETE FROM oracle_compared WHERE relation = 'stock_drift';
CREATE OR REPLACE TEMP VIEW oracle_product_stock AS
SELECT store_id, product_id, sum(qty_delta)::numeric AS stock
FROM inventory_movements GROUP BY 1, 2;

CREATE OR REPLACE TEMP VIEW oracle_inventory_metrics AS
SELECT p.store_id, count(*) AS total_products,
       count(*) FILTER (WHERE p.low_stock_threshold > 0 AND s.stock > 0 AND s.stock <= p.low_stock_threshold) AS low_stock_count,
       count(*) FILTER (WHERE coalesce(s.stock, 0) <= 0) AS out_of_stock_count,
       coalesce(sum(s.stock * p.cost_bs) FILTER (WHERE s.stock > 0), 0) AS stock_value_bs,
       coalesce(sum(s.stock * p.cost_usd) FILTER (WHERE s.stock > 0), 0) AS stock_value_usd
FROM products p
LEFT JOIN oracle_product_stock s ON s.store_id = p.store_id AND s.product_id = p.id
WHERE p.is_active
GROUP BY p.store_id;
