//! In-transaction tests (`cargo pgrx test`): each runs in one transaction that is rolled back.
//! Commits, concurrency and the randomised oracle workload are in `tests/` against a server.

#[pgrx::pg_schema]
pub(crate) mod tests {
    use pgrx::prelude::*;

    const SCHEMA: &str = include_str!("../sql/fixtures/lacaja_schema.sql");
    const ORACLE: &str = include_str!("../tests/sql/oracle.sql");
    const WAREHOUSE_ORACLE: &str = include_str!("../tests/sql/warehouse_oracle.sql");

    pub(crate) const STORE_A: &str = "a0000000-0000-4000-8000-000000000001";
    pub(crate) const STORE_B: &str = "b0000000-0000-4000-8000-000000000002";

    /// Runs `sql`, then folds what it captured as its commit would (a test's transaction
    /// never commits).
    pub(crate) fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{e}\n---\n{sql}"));
        crate::capture::fold_current_level();
    }

    pub(crate) fn scalar<T: IntoDatum + FromDatum>(sql: &str) -> Option<T> {
        crate::capture::fold_current_level();
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{e}\n---\n{sql}"))
    }

    /// A LA-CAJA schema `pos` with two stores, attached.
    pub(crate) fn lacaja_pos() {
        run("CREATE SCHEMA pos; SET LOCAL search_path = pos, public");
        run(SCHEMA);
        run(&format!(
            "INSERT INTO stores (id, name) VALUES ('{STORE_A}', 'A'), ('{STORE_B}', 'B');
             INSERT INTO customers (id, store_id, name)
             SELECT ('c0000000-0000-4000-8000-00000000000' || i)::uuid, '{STORE_A}', 'c' || i FROM generate_series(1, 5) i"
        ));
        let report: pgrx::JsonB = scalar("SELECT analytics.attach('pos')").unwrap();
        assert_eq!(report.0["variant"], "real", "{}", report.0);
        run(ORACLE);
    }

    pub(crate) fn sale(id: u32, store: &str, sold_at: &str, total_bs: &str, method: &str, customer: Option<u32>) -> String {
        let customer = customer
            .map(|c| format!("'c0000000-0000-4000-8000-00000000000{c}'"))
            .unwrap_or_else(|| "NULL".into());
        format!(
            "INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment, customer_id)
             VALUES (('d0000000-0000-4000-8000-' || lpad('{id}', 12, '0'))::uuid, '{store}', '{sold_at}', 36.5, 'BS',
                     jsonb_build_object('subtotal_bs', {total_bs}, 'subtotal_usd', round({total_bs} / 36.5, 2),
                                        'discount_bs', 0, 'discount_usd', 0,
                                        'total_bs', {total_bs}, 'total_usd', round({total_bs} / 36.5, 2)),
                     jsonb_build_object('method', '{method}'), {customer})"
        )
    }

    pub(crate) fn sale_id(id: u32) -> String {
        format!("('d0000000-0000-4000-8000-' || lpad('{id}', 12, '0'))::uuid")
    }

    pub(crate) fn assert_matches_oracle() {
        let differences: Option<String> = scalar(
            "SELECT string_agg(relation || ': ' || differences, ', ') FROM oracle_differences WHERE differences > 0",
        );
        assert_eq!(differences, None, "rollups differ from the oracle");
        let verify: i64 = scalar("SELECT count(*) FROM analytics.verify()").unwrap();
        assert_eq!(verify, 0, "verify() reports differences");
    }

    #[pg_test]
    fn parse_amount_reads_decimal_text_only() {
        assert_eq!(scalar::<String>("SELECT analytics.parse_amount(' 12.50 ')::text").as_deref(), Some("12.50"));
        assert_eq!(scalar::<String>("SELECT analytics.parse_amount('-1e2')::text").as_deref(), Some("-100"));
        for bad in ["abc", "NaN", "Infinity", "1,5", "", "1e5000"] {
            let parsed: Option<String> = scalar(&format!("SELECT analytics.parse_amount('{bad}')::text"));
            assert_eq!(parsed, None, "{bad:?} is not an amount");
        }
    }

    #[pg_test]
    fn amount_counts_anything_odd_as_zero() {
        let cases = [
            ("'12.5'::jsonb", "12.5"),
            ("'\"7.25\"'::jsonb", "7.25"),
            ("'\"abc\"'::jsonb", "0"),
            ("'null'::jsonb", "0"),
            ("'{\"a\":1}'::jsonb", "0"),
            ("'[1]'::jsonb", "0"),
            ("NULL::jsonb", "0"),
            ("'1e1000'::jsonb", "0"),
            ("'9.99e999'::jsonb", "9.99e999"),
        ];
        for (input, expected) in cases {
            let same: bool = scalar(&format!("SELECT analytics.amount({input}) = '{expected}'::numeric")).unwrap();
            assert!(same, "amount({input}) should be {expected}");
        }
    }

    #[pg_test]
    fn timezone_validation() {
        assert_eq!(scalar::<bool>("SELECT analytics.is_valid_timezone('America/Caracas')"), Some(true));
        assert_eq!(scalar::<bool>("SELECT analytics.is_valid_timezone('Mars/Olympus')"), Some(false));
        let rejected = PgTryBuilder::new(|| {
            Spi::run("SET lacaja_analytics.default_timezone = 'Mars/Olympus'").is_err()
        })
        .catch_others(|_| true)
        .execute();
        assert!(rejected, "an unknown default zone must be refused");
    }

    #[pg_test]
    fn inserts_voids_returns_and_deletes_stay_exact() {
        lacaja_pos();
        run(&sale(1, STORE_A, "2026-03-01 10:15:00-04", "100.00", "CASH_BS", Some(1)));
        run(&sale(2, STORE_A, "2026-03-01 10:45:00-04", "50.50", "PAGO_MOVIL", Some(1)));
        run(&sale(3, STORE_A, "2026-03-01 23:30:00-04", "20", "FIAO", Some(2)));
        run(&sale(4, STORE_B, "2026-03-02 01:00:00-04", "10", "SPLIT", None));
        assert_matches_oracle();
        let count: i64 = scalar(&format!(
            "SELECT sales_count FROM analytics.sales_daily WHERE store_id = '{STORE_A}' AND day = '2026-03-01'"
        ))
        .unwrap();
        assert_eq!(count, 3);
        let customers: i64 = scalar(&format!(
            "SELECT unique_customers FROM analytics.sales_daily WHERE store_id = '{STORE_A}' AND day = '2026-03-01'"
        ))
        .unwrap();
        assert_eq!(customers, 2);

        run(&format!("UPDATE sales SET voided_at = now() WHERE id = {}", sale_id(2)));
        assert_matches_oracle();
        run(&format!("UPDATE sales SET voided_at = NULL WHERE id = {}", sale_id(2)));
        run(&format!(
            "UPDATE sales SET totals = totals || '{{\"total_bs\": 80, \"total_usd\": 2.19}}' WHERE id = {}",
            sale_id(1)
        ));
        run(&format!("UPDATE sales SET sold_at = sold_at - interval '40 days', customer_id = NULL WHERE id = {}", sale_id(3)));
        run(&format!("UPDATE sales SET store_id = '{STORE_B}', customer_id = NULL WHERE id = {}", sale_id(2)));
        assert_matches_oracle();
        run(&format!("DELETE FROM sales WHERE id IN ({}, {})", sale_id(1), sale_id(4)));
        assert_matches_oracle();
        // A statement touching many rows at once, as a COPY or a sync batch does.
        run(&format!(
            "INSERT INTO sales (id, store_id, sold_at, totals, payment, customer_id)
             SELECT gen_random_uuid(), CASE WHEN i % 2 = 0 THEN '{STORE_A}'::uuid ELSE '{STORE_B}'::uuid END,
                    '2026-02-01'::timestamptz + i * interval '37 minutes',
                    jsonb_build_object('total_bs', i, 'total_usd', i / 10.0, 'subtotal_bs', i),
                    jsonb_build_object('method', (ARRAY['CASH_BS','CASH_USD','TRANSFER',''])[1 + i % 4]),
                    NULL
             FROM generate_series(1, 500) i"
        ));
        run("UPDATE sales SET voided_at = now() WHERE sold_at < '2026-02-05'");
        assert_matches_oracle();
        run("DELETE FROM sales WHERE sold_at < '2026-02-03'");
        assert_matches_oracle();
    }

    #[pg_test]
    fn hostile_json_commits_counts_as_zero_and_is_reported() {
        lacaja_pos();
        run(&format!(
            r#"INSERT INTO sales (id, store_id, sold_at, totals, payment)
               SELECT gen_random_uuid(), '{STORE_A}', '2026-04-01 12:00-04'::timestamptz + i * interval '1 minute',
                      (ARRAY['{{}}', 'null', '"abc"', '[1,2]', '{{"total_bs": "abc"}}', '{{"total_bs": null}}',
                             '{{"total_bs": {{"x": 1}}}}', '{{"total_bs": "NaN"}}', '{{"total_bs": "Infinity"}}',
                             '{{"total_bs": 1e999, "total_usd": 1e999}}', '{{"total_bs": 5e1000}}',
                             '{{"total_bs": " 12.5 ", "total_usd": "-3e2"}}', '{{"total_bs": true}}',
                             '{{"total_bs": "1e99999999"}}', '{{"total_bs": 12.345678901234567890}}',
                         '[{{"total_bs": 5, "total_usd": 1}}]'])[1 + i % 16]::jsonb,
                      (ARRAY['{{}}', '"CASH"', '{{"method": 5}}', '{{"method": null}}', '{{"method": ""}}',
                             '{{"method": {{"a": 1}}}}', '[]', '{{"method": "FIAO"}}'])[1 + i % 8]::jsonb
               FROM generate_series(1, 300) i"#
        ));
        assert_matches_oracle();
        let committed: i64 = scalar("SELECT count(*) FROM sales").unwrap();
        assert_eq!(committed, 300);
        let reported: i64 =
            scalar("SELECT count(*) FROM analytics.ingest_errors WHERE column_name = 'totals.total_bs' AND problem <> ''")
                .unwrap();
        assert!(reported > 0, "malformed totals must be reported");
        let unreported: i64 = scalar(
            "SELECT count(*) FROM sales s
             WHERE (jsonb_typeof(s.totals) <> 'object'
                    OR EXISTS (SELECT 1 FROM unnest(ARRAY['subtotal_bs','subtotal_usd','discount_bs','discount_usd',
                                                          'total_bs','total_usd']) k
                               WHERE CASE WHEN jsonb_typeof(s.totals -> k) = 'number'
                                          THEN abs((s.totals ->> k)::numeric) >= 1e1000 ELSE true END)
                    OR jsonb_typeof(s.payment -> 'method') IS DISTINCT FROM 'string')
               AND NOT EXISTS (SELECT 1 FROM analytics.ingest_errors e WHERE e.source_id = s.id::text)",
        )
        .unwrap();
        assert_eq!(unreported, 0, "every malformed sale must be reported");
        // Reported once per row and column, however often the row changes.
        run("UPDATE sales SET voided_at = now()");
        run("UPDATE sales SET voided_at = NULL");
        let duplicates: i64 = scalar(
            "SELECT count(*) FROM (SELECT 1 FROM analytics.ingest_errors GROUP BY source_id, column_name HAVING count(*) > 1) d",
        )
        .unwrap();
        assert_eq!(duplicates, 0);
        assert_matches_oracle();
    }

    #[pg_test]
    fn refresh_repairs_what_capture_missed() {
        lacaja_pos();
        run(&sale(1, STORE_A, "2026-03-01 10:15:00-04", "100.00", "CASH_BS", Some(1)));
        run("ALTER TABLE sales DISABLE TRIGGER USER");
        run(&sale(2, STORE_A, "2026-03-01 11:15:00-04", "30.00", "CASH_USD", Some(3)));
        run(&format!("UPDATE sales SET voided_at = now() WHERE id = {}", sale_id(1)));
        run("ALTER TABLE sales ENABLE TRIGGER USER");
        let broken: i64 = scalar("SELECT count(*) FROM analytics.verify()").unwrap();
        assert!(broken > 0, "verify() must see what capture missed");
        run("SELECT analytics.refresh_all()");
        assert_matches_oracle();
        // Idempotent: a second refresh corrects nothing.
        let again: pgrx::JsonB = scalar("SELECT analytics.refresh_all()").unwrap();
        let corrected: i64 = again.0["keys_corrected"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
        assert_eq!(corrected, 0, "{}", again.0);
    }

    #[pg_test]
    fn time_zones_with_dst_and_half_hours() {
        lacaja_pos();
        run(&format!("SELECT analytics.set_store_timezone('{STORE_A}', 'America/New_York')"));
        run(&format!("SELECT analytics.set_store_timezone('{STORE_B}', 'Asia/Kolkata')"));
        // New York falls back on 2026-11-01: 01:30 EDT and 01:30 EST are one local hour.
        for (i, at) in ["2026-11-01 01:30-04", "2026-11-01 01:30-05", "2026-03-08 03:10-04", "2026-03-07 23:59-05"]
            .iter()
            .enumerate()
        {
            run(&sale(10 + i as u32, STORE_A, at, "10", "CASH_BS", None));
        }
        for (i, at) in ["2026-06-01 18:29Z", "2026-06-01 18:31Z", "2026-06-01 23:59Z"].iter().enumerate() {
            run(&sale(20 + i as u32, STORE_B, at, "5", "CASH_USD", None));
        }
        assert_matches_oracle();
        let cell: i64 = scalar(&format!(
            "SELECT sales_count FROM analytics.sales_heatmap WHERE store_id = '{STORE_A}' AND date = '2026-11-01' AND hour = 1"
        ))
        .unwrap();
        assert_eq!(cell, 2);
        // 18:29Z is 23:59 in Kolkata, 18:31Z is 00:01 the next day.
        let days: i64 = scalar(&format!("SELECT count(*) FROM analytics.sales_daily WHERE store_id = '{STORE_B}'")).unwrap();
        assert_eq!(days, 2);
        // Re-bucketing a store moves its history into the new zone's days and hours.
        run(&format!("SELECT analytics.set_store_timezone('{STORE_B}', 'UTC')"));
        assert_matches_oracle();
        let days: i64 = scalar(&format!("SELECT count(*) FROM analytics.sales_daily WHERE store_id = '{STORE_B}'")).unwrap();
        assert_eq!(days, 1);
        let refused = PgTryBuilder::new(|| {
            Spi::run(&format!("SELECT analytics.set_store_timezone('{STORE_B}', 'Nowhere/Land')")).is_err()
        })
        .catch_others(|_| true)
        .execute();
        assert!(refused);
    }

    #[pg_test]
    fn simplified_variant_counts_completed_sales_only() {
        run("CREATE SCHEMA simple");
        run("CREATE TABLE simple.sales (id uuid PRIMARY KEY, store_id uuid NOT NULL, sold_at timestamptz NOT NULL,
                totals jsonb NOT NULL, payment jsonb NOT NULL, customer_id uuid, status text NOT NULL)");
        let report: pgrx::JsonB = scalar("SELECT analytics.attach('simple')").unwrap();
        assert_eq!(report.0["variant"], "simplified", "{}", report.0);
        run(&format!(
            "INSERT INTO simple.sales SELECT gen_random_uuid(), '{STORE_A}', '2026-05-05 12:00-04',
                    '{{\"total_bs\": 10}}', '{{\"method\": \"CASH_BS\"}}', NULL, s
             FROM unnest(ARRAY['completed', 'pending', 'cancelled', 'completed']) s"
        ));
        run("UPDATE simple.sales SET status = 'completed' WHERE status = 'pending'");
        let count: i64 = scalar("SELECT sales_count FROM analytics.sales_daily").unwrap();
        assert_eq!(count, 3);
        let verify: i64 = scalar("SELECT count(*) FROM analytics.verify()").unwrap();
        assert_eq!(verify, 0);
    }

    #[pg_test]
    fn a_pos_role_without_any_analytics_privilege_sells_normally() {
        lacaja_pos();
        run("CREATE ROLE pos_app_test NOLOGIN");
        run("GRANT USAGE ON SCHEMA pos TO pos_app_test;
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA pos TO pos_app_test");
        run("SET LOCAL ROLE pos_app_test");
        run(&sale(1, STORE_A, "2026-03-01 10:15:00-04", "100.00", "CASH_BS", Some(1)));
        run(&sale(2, STORE_A, "2026-03-01 10:20:00-04", "7.5", "CASH_BS", None));
        run(&format!("UPDATE sales SET voided_at = now() WHERE id = {}", sale_id(1)));
        run(&format!("DELETE FROM sales WHERE id = {}", sale_id(2)));
        let denied = PgTryBuilder::new(|| Spi::run("SELECT count(*) FROM analytics_internal.sales_hourly_parts").is_err())
            .catch_others(|_| true)
            .execute();
        assert!(denied, "the POS role must not read analytics' internals");
        run("RESET ROLE");
        assert_matches_oracle();
    }

    /// SPEC §2: stock is what the store's warehouses hold (variants summed, reserved and other
    /// stores' warehouses not), low stock looks at lots, the value takes lots' costs, weight
    /// units and the BCV rate in force; the ledger does not count.
    #[pg_test]
    fn stock_and_inventory_metrics_follow_warehouses_lots_and_rates() {
        lacaja_pos();
        run(&format!(
            "INSERT INTO products (id, store_id, name, cost_bs, cost_usd, low_stock_threshold, is_active)
             SELECT ('f0000000-0000-4000-8000-00000000000' || i)::uuid, '{STORE_A}', 'p' || i, 10 * i, i, 5, i <> 4
             FROM generate_series(1, 6) i;
             UPDATE products SET is_weight_product = true, weight_unit = 'g', cost_usd = 1000, cost_bs = 40000
             WHERE id = 'f0000000-0000-4000-8000-000000000005';
             INSERT INTO warehouses (id, store_id, name) VALUES ('e1000000-0000-4000-8000-000000000001', '{STORE_A}', 'w1'),
                 ('e1000000-0000-4000-8000-000000000002', '{STORE_A}', 'w2'), ('e1000000-0000-4000-8000-000000000003', '{STORE_B}', 'w3');"
        ));
        let product = |i: u32| format!("'f0000000-0000-4000-8000-00000000000{i}'::uuid");
        let warehouse = |i: u32| format!("'e1000000-0000-4000-8000-00000000000{i}'::uuid");
        run(&format!(
            "INSERT INTO warehouse_stock (warehouse_id, product_id, variant_id, stock, reserved)
             VALUES ({w1}, {p1}, NULL, 20, 0), ({w2}, {p1}, gen_random_uuid(), 0.5, 0), ({w1}, {p2}, NULL, 3, 7),
                    ({w3}, {p3}, NULL, 50, 0), ({w1}, {p4}, NULL, 9, 0), ({w2}, {p5}, NULL, 100, 0);
             INSERT INTO product_lots (product_id, lot_number, initial_quantity, remaining_quantity, unit_cost_bs, unit_cost_usd)
             VALUES ({p1}, 'a', 5, 2, 160, 4), ({p1}, 'b', 5, 1, 40, 1), ({p1}, 'c', 5, 0, 999, 99);
             INSERT INTO exchange_rates (store_id, rate, rate_type, effective_from, effective_until)
             VALUES ('{STORE_A}', 40, 'BCV', now() - interval '1 day', NULL), ('{STORE_A}', 99, 'BCV', now() - interval '9 days', now() - interval '1 day'),
                    ('{STORE_A}', 70, 'PARALLEL', now() - interval '1 hour', NULL);
             -- the ledger says something else, and does not count
             INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta)
             VALUES (gen_random_uuid(), '{STORE_A}', {p6}, 'received', 30)",
            w1 = warehouse(1), w2 = warehouse(2), w3 = warehouse(3),
            p1 = product(1), p2 = product(2), p3 = product(3), p4 = product(4), p5 = product(5), p6 = product(6)
        ));
        assert_matches_oracle();
        let stock: String = scalar(
            "SELECT string_agg(format('%s/%s', right(product_id::text, 1), stock), ',' ORDER BY store_id, product_id) FROM analytics.product_stock",
        )
        .unwrap();
        assert_eq!(stock, "1/20.500,2/3.000,4/9.000,5/100.000,3/50.000", "store A's warehouses, then store B's");
        let metrics: String = scalar(&format!(
            "SELECT format('%s/%s/%s/%s/%s', total_products, low_stock_count, out_of_stock_count, stock_value_usd::numeric(12,2),
                           stock_value_bs::numeric(12,2)) FROM analytics.inventory_metrics WHERE store_id = '{STORE_A}'"
        ))
        .unwrap();
        // p1 low by its lots (3), p2 (3), p3 and p6 (none here); value 20.5 × 3 + 3 × 2 + 100 g × 1 = 167.5 USD, × 40 Bs
        assert_eq!(metrics, "5/4/2/167.50/6700.00");
        // without a BCV rate in force, Bs from the costs in Bs: 20.5 × 120 + 3 × 20 + 100 × 40
        run(&format!("UPDATE exchange_rates SET is_active = false WHERE store_id = '{STORE_A}' AND rate = 40"));
        let bs: String =
            scalar(&format!("SELECT stock_value_bs::numeric(12,2)::text FROM analytics.inventory_metrics WHERE store_id = '{STORE_A}'")).unwrap();
        assert_eq!(bs, "6520.00");
        run(&format!("UPDATE warehouse_stock SET stock = greatest(0, stock - 25) WHERE product_id = {}", product(1)));
        run(&format!("UPDATE products SET is_active = true, low_stock_threshold = 20, cost_bs = 1 WHERE id = {}", product(4)));
        run(&format!("DELETE FROM product_lots WHERE product_id = {}", product(1)));
        assert_matches_oracle();
        run("TRUNCATE warehouse_stock");
        assert_matches_oracle();
    }

    #[pg_test]
    fn stock_drift_tells_each_cause() {
        lacaja_pos();
        run(&format!(
            "INSERT INTO products (id, store_id, name, cost_bs, cost_usd, low_stock_threshold)
             SELECT ('f0000000-0000-4000-8000-00000000000' || i)::uuid, '{STORE_A}', 'p' || i, 10, 1, 0 FROM generate_series(1, 8) i;
             INSERT INTO warehouses (id, store_id, name) VALUES ('e1000000-0000-4000-8000-000000000001', '{STORE_A}', 'w1'),
                 ('e1000000-0000-4000-8000-000000000002', '{STORE_A}', 'w2'), ('e1000000-0000-4000-8000-000000000003', '{STORE_B}', 'w3');"
        ));
        // Each product's movements and the warehouse rows LA-CAJA's writes leave (clamped at 0).
        let product = |i: u32| format!("'f0000000-0000-4000-8000-00000000000{i}'::uuid");
        let warehouse = |i: u32| format!("'e1000000-0000-4000-8000-00000000000{i}'::uuid");
        let moved = |store: &str, p: u32, w: Option<u32>, qty: &str, escrow: bool| {
            run(&format!(
                "INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta, warehouse_id, from_escrow)
                 VALUES (gen_random_uuid(), '{store}', {}, 'adjust', {qty}, {}, {escrow})",
                product(p),
                w.map(warehouse).unwrap_or("NULL".into())
            ))
        };
        let held = |p: u32, w: u32, stock: &str, reserved: &str| {
            run(&format!(
                "INSERT INTO warehouse_stock (warehouse_id, product_id, stock, reserved) VALUES ({}, {}, {stock}, {reserved})
                 ON CONFLICT (warehouse_id, product_id) WHERE variant_id IS NULL DO UPDATE SET stock = excluded.stock, reserved = excluded.reserved",
                warehouse(w),
                product(p)
            ))
        };
        // p1: a void whose warehouse was unknown
        moved(STORE_A, 1, None, "1", false);
        // p2: 10 received, 2 sold from an offline device's escrow
        moved(STORE_A, 2, Some(1), "10", false);
        moved(STORE_A, 2, Some(1), "-2", true);
        held(2, 1, "10", "0");
        // p3: 4 received, 7 sold: clamped at 0
        moved(STORE_A, 3, Some(1), "4", false);
        moved(STORE_A, 3, Some(1), "-7", false);
        held(3, 1, "0", "0");
        // p4: 10 received, 5 reserved for a transfer, 7 sold: the clamp hid 2
        moved(STORE_A, 4, Some(1), "10", false);
        moved(STORE_A, 4, Some(1), "-7", false);
        held(4, 1, "0", "5");
        // p5: a transfer of 4 received from w1 into w2 (and a variant in w2): no drift
        moved(STORE_A, 5, Some(1), "10", false);
        moved(STORE_A, 5, Some(1), "-4", false);
        moved(STORE_A, 5, Some(2), "4", false);
        moved(STORE_A, 5, Some(2), "1.5", false);
        held(5, 1, "6", "0");
        held(5, 2, "4", "0");
        run(&format!(
            "INSERT INTO warehouse_stock (warehouse_id, product_id, variant_id, stock) VALUES ({}, {}, gen_random_uuid(), 1.5)",
            warehouse(2),
            product(5)
        ));
        // p6: 5 received, the warehouse row set to 2 without a movement: not told
        moved(STORE_A, 6, Some(1), "5", false);
        held(6, 1, "2", "0");
        // p7: 10 received, 1 sold from escrow, 12 sold and clamped
        moved(STORE_A, 7, Some(2), "10", false);
        moved(STORE_A, 7, Some(2), "-1", true);
        moved(STORE_A, 7, Some(2), "-12", false);
        held(7, 2, "0", "0");
        // p8: in store B's warehouse, equal
        moved(STORE_B, 8, Some(3), "3", false);
        held(8, 3, "3", "0");
        assert_matches_oracle();
        let drift = |store: &str| -> Option<String> {
            scalar(&format!(
                "SELECT string_agg(format('p%s %s %s/%s/%s/%s/%s %s', right(product_id::text, 1), coalesce(right(warehouse_id::text, 1), '-'),
                                          trim_scale(ledger), trim_scale(stock), trim_scale(reserved), trim_scale(difference),
                                          trim_scale(escrow), coalesce(cause, '?')), '; ')
                 FROM analytics.stock_drift({store})"
            ))
        };
        assert_eq!(
            drift("NULL").unwrap(),
            [
                "p1 - 1/0/0/1/0 movements without a warehouse",
                "p2 1 8/10/0/-2/-2 escrow sales",
                "p3 1 -3/0/0/-3/0 clamp hid a negative",
                "p4 1 3/0/5/-2/0 transfer in transit",
                "p6 1 5/2/0/3/0 ?",
                "p7 2 -3/0/0/-3/-1 escrow sales and clamp hid a negative",
            ]
            .join("; ")
        );
        assert_eq!(drift(&format!("'{STORE_B}'")), None, "store B's warehouse holds its ledger");
        // instant: a movement committed moves the ledger at once
        moved(STORE_A, 6, Some(1), "-3", false);
        assert_eq!(scalar::<i64>("SELECT count(*) FROM analytics.stock_drift() WHERE right(product_id::text, 1) = '6'"), Some(0));
        assert_matches_oracle();
    }

    #[pg_test]
    fn simplified_variant_takes_stock_from_current_stock() {
        run("CREATE SCHEMA simple");
        run("CREATE TABLE simple.sales (id uuid PRIMARY KEY, store_id uuid NOT NULL, sold_at timestamptz NOT NULL,
                totals jsonb NOT NULL, payment jsonb NOT NULL, customer_id uuid, status text NOT NULL)");
        run("CREATE TABLE simple.products (id uuid PRIMARY KEY, store_id uuid NOT NULL, name text,
                current_stock int NOT NULL DEFAULT 0, low_stock_threshold int NOT NULL DEFAULT 0,
                cost_bs numeric NOT NULL DEFAULT 0, cost_usd numeric NOT NULL DEFAULT 0, is_active bool NOT NULL DEFAULT true)");
        let report: pgrx::JsonB = scalar("SELECT analytics.attach('simple')").unwrap();
        assert_eq!(report.0["stock"], "current_stock", "{}", report.0);
        run(&format!(
            "INSERT INTO simple.products (id, store_id, current_stock, low_stock_threshold)
             SELECT gen_random_uuid(), '{STORE_A}', i, 2 FROM generate_series(0, 4) i"
        ));
        run("UPDATE simple.products SET current_stock = current_stock - 1 WHERE current_stock > 2");
        let stock: String = scalar("SELECT string_agg(stock::text, ',' ORDER BY stock) FROM analytics.product_stock").unwrap();
        assert_eq!(stock, "0,1,2,2,3");
        let metrics: String = scalar(
            "SELECT format('%s/%s/%s', total_products, low_stock_count, out_of_stock_count) FROM analytics.inventory_metrics",
        )
        .unwrap();
        assert_eq!(metrics, "5/4/1", "threshold 2: stock 0, 1, 2 and 2 are low (SPEC §2)");
        let verify: i64 = scalar("SELECT count(*) FROM analytics.verify()").unwrap();
        assert_eq!(verify, 0);
        // no warehouses: nothing to reconcile the ledger with
        outcome_helper();
        assert_fails("SELECT * FROM analytics.stock_drift()", "55000");
    }

    #[pg_test]
    fn product_rollup_follows_items_returns_voids_and_keeps_captured_cost() {
        lacaja_pos();
        run(&format!(
            "INSERT INTO products (id, store_id, name, cost_bs, cost_usd, cost_per_weight_bs, cost_per_weight_usd, is_weight_product)
             VALUES ('f0000000-0000-4000-8000-000000000001', '{STORE_A}', 'harina', 30, 0.8, NULL, NULL, false),
                    ('f0000000-0000-4000-8000-000000000002', '{STORE_A}', 'queso (kg)', 100, 3, 150, 4.5, true)"
        ));
        run(&sale(1, STORE_A, "2026-03-01 10:15:00-04", "100.00", "CASH_BS", Some(1)));
        run(&sale(2, STORE_A, "2026-03-01 11:15:00-04", "50.00", "CASH_BS", None));
        let item = |n: u32| format!("'a1000000-0000-4000-8000-00000000000{n}'");
        run(&format!(
            "INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd, discount_bs, discount_usd, is_weight_product)
             VALUES ({i1}, {s1}, 'f0000000-0000-4000-8000-000000000001', 2, 36.5, 1, 0, 0, false),
                    ({i2}, {s1}, 'f0000000-0000-4000-8000-000000000001', 1, 36.5, 1, 5, 0.1, false),
                    ({i3}, {s1}, 'f0000000-0000-4000-8000-000000000002', 0.750, 200, 5.5, 0, 0, true),
                    ({i4}, {s2}, 'f0000000-0000-4000-8000-000000000002', 1.250, 200, 5.5, 0, 0, true)",
            i1 = item(1), i2 = item(2), i3 = item(3), i4 = item(4), s1 = sale_id(1), s2 = sale_id(2)
        ));
        assert_matches_oracle();
        let sold: String = scalar(&format!(
            "SELECT times_sold || '/' || qty FROM analytics.product_sales_daily
             WHERE product_id = 'f0000000-0000-4000-8000-000000000001' AND store_id = '{STORE_A}'"
        ))
        .unwrap();
        assert_eq!(sold, "1/3.000", "two lines of one sale are sold once");
        // Cost is what it was when the item was recorded.
        run("UPDATE products SET cost_bs = 999, cost_per_weight_bs = 999");
        let cost: bool = scalar("SELECT sum(qty * unit_cost_bs) = 390 FROM analytics_internal.item_facts WHERE counted").unwrap();
        assert!(cost, "cost is 3 x 30 + 2 kg x 150, captured before the price change");
        run(&format!(
            "INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
             VALUES ('a2000000-0000-4000-8000-000000000001', '{STORE_A}', {s1}, 36.5, 1);
             INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
             VALUES (gen_random_uuid(), 'a2000000-0000-4000-8000-000000000001', {i1},
                     'f0000000-0000-4000-8000-000000000001', 1, 36.5, 1)",
            s1 = sale_id(1), i1 = item(1)
        ));
        assert_matches_oracle();
        run(&format!("UPDATE sales SET voided_at = now() WHERE id = {}", sale_id(2)));
        run(&format!("UPDATE sales SET sold_at = sold_at - interval '3 days' WHERE id = {}", sale_id(1)));
        run(&format!("UPDATE sale_items SET qty = qty + 1 WHERE id = {}", item(2)));
        run(&format!("DELETE FROM sale_items WHERE id = {}", item(3)));
        assert_matches_oracle();
        run(&format!("UPDATE sales SET voided_at = NULL, store_id = '{STORE_B}' WHERE id = {}", sale_id(2)));
        run(&format!("DELETE FROM sales WHERE id = {}", sale_id(1)));
        assert_matches_oracle();
        let facts: i64 = scalar("SELECT count(*) FROM analytics_internal.item_facts").unwrap();
        assert_eq!(facts, 1, "facts of deleted items go with them");
    }

    /// Sales on several local days around "today" in store A, with items of two products.
    pub(crate) fn dashboard_history() {
        lacaja_pos();
        run(&format!(
            "INSERT INTO products (id, store_id, name, category, cost_bs, cost_usd)
             VALUES ('f0000000-0000-4000-8000-000000000001', '{STORE_A}', 'harina', 'viveres', 30, 0.8),
                    ('f0000000-0000-4000-8000-000000000002', '{STORE_A}', 'malta', 'bebidas', 10, 0.3);
             INSERT INTO sales (id, store_id, sold_at, totals, payment, customer_id)
             SELECT ('d0000000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid, '{STORE_A}',
                    now() - (i * interval '7 hours'),
                    jsonb_build_object('total_bs', 10 + i, 'total_usd', round((10 + i) / 36.5, 2)),
                    jsonb_build_object('method', 'CASH_BS'),
                    CASE WHEN i % 3 = 0 THEN ('c0000000-0000-4000-8000-00000000000' || (1 + i % 5))::uuid END
             FROM generate_series(1, 250) i;
             INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
             SELECT gen_random_uuid(), s.id,
                    CASE WHEN s.sale_number IS NULL AND random() < 2 AND right(s.id::text, 1) IN ('1','3','5','7','9')
                         THEN 'f0000000-0000-4000-8000-000000000001'::uuid ELSE 'f0000000-0000-4000-8000-000000000002'::uuid END,
                    1 + (right(s.id::text, 1))::int, 36.5, 1
             FROM sales s;
             UPDATE sales SET voided_at = now() WHERE right(id::text, 2) = '07';"
        ));
    }

    #[pg_test]
    fn kpis_match_a_reference_over_source_tables() {
        dashboard_history();
        let today: String = scalar(&format!("SELECT analytics.store_today('{STORE_A}')::text")).unwrap();
        for (from, to) in [(format!("'{today}'::date - 29"), format!("'{today}'::date")),
                           ("'{today}'::date - 6".replace("{today}", &today), format!("'{today}'::date - 2")),
                           ("NULL".to_string(), "NULL".to_string())] {
            let (a, b) = if from == "NULL" { (format!("'{today}'::date - 29"), format!("'{today}'::date")) } else { (from.clone(), to.clone()) };
            let same: bool = scalar(&format!(
                "WITH k AS (SELECT analytics.kpis('{STORE_A}', {from}, {to}) AS j),
                 p AS (SELECT {a} AS a, {b} AS b),
                 ref AS (SELECT count(*) AS n, coalesce(sum(a_total_bs), 0) AS bs, coalesce(sum(a_total_usd), 0) AS usd,
                                sum(a_total_bs) / nullif(count(*), 0) AS avg_bs, count(DISTINCT customer_id) AS customers
                         FROM oracle_valid_sales, p WHERE store_id = '{STORE_A}'
                           AND (sold_at AT TIME ZONE tz)::date BETWEEN p.a AND p.b),
                 prev AS (SELECT coalesce(sum(a_total_bs), 0) AS bs FROM oracle_valid_sales, p WHERE store_id = '{STORE_A}'
                           AND (sold_at AT TIME ZONE tz)::date BETWEEN p.a - (p.b - p.a + 1) AND p.a - 1)
                 SELECT (j -> 'period' ->> 'sales_count')::bigint = ref.n
                    AND (j -> 'period' ->> 'total_bs')::numeric = ref.bs
                    AND (j -> 'period' ->> 'total_usd')::numeric = ref.usd
                    AND (j -> 'period' ->> 'avg_ticket_bs')::numeric IS NOT DISTINCT FROM ref.avg_bs
                    AND (j -> 'period' ->> 'unique_customers')::bigint = ref.customers
                    AND (j -> 'previous_period' ->> 'total_bs')::numeric = prev.bs
                    AND (j ->> 'growth_percentage')::numeric IS NOT DISTINCT FROM
                        CASE WHEN prev.bs <> 0 THEN round((ref.bs - prev.bs) / prev.bs * 100, 2) END
                 FROM k, ref, prev"
            ))
            .unwrap();
            assert!(same, "kpis differ from the reference for [{a}, {b}]");
        }
        let empty: pgrx::JsonB = scalar(&format!("SELECT analytics.kpis('{STORE_B}')")).unwrap();
        assert_eq!(empty.0["period"]["sales_count"], 0, "{}", empty.0);
        assert!(empty.0["growth_percentage"].is_null());
        assert!(empty.0["top_product"].is_null());
    }

    #[pg_test]
    fn dashboard_functions_read_rollups_only() {
        dashboard_history();
        let reads = || -> i64 {
            scalar(
                "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)), 0)::bigint FROM pg_stat_xact_user_tables
                 WHERE schemaname = 'pos' AND relname IN ('sales', 'sale_items')",
            )
            .unwrap()
        };
        let before = reads();
        run(&format!(
            "SELECT analytics.kpis('{STORE_A}'); SELECT * FROM analytics.sales_by_day('{STORE_A}', current_date - 365, current_date);
             SELECT * FROM analytics.top_products('{STORE_A}'); SELECT * FROM analytics.heatmap('{STORE_A}', current_date - 30, current_date)"
        ));
        assert_eq!(reads(), before, "dashboard functions must not read sales or sale_items");
        let top: String = scalar(&format!(
            "SELECT string_agg(name || ':' || net_qty, ',' ORDER BY rank) FROM analytics.top_products('{STORE_A}', 7, 5)"
        ))
        .unwrap();
        let expected: String = scalar(&format!(
            "SELECT string_agg(name || ':' || q, ',' ORDER BY q DESC, id) FROM (
                 SELECT p.id, p.name, sum(i.qty) AS q FROM oracle_valid_sales s JOIN sale_items i ON i.sale_id = s.id
                 JOIN products p ON p.id = i.product_id
                 WHERE s.store_id = '{STORE_A}' AND (s.sold_at AT TIME ZONE s.tz)::date > analytics.store_today('{STORE_A}') - 7
                 GROUP BY p.id, p.name) t"
        ))
        .unwrap();
        assert_eq!(top, expected);
        let by_day_matches: bool = scalar(&format!(
            "SELECT count(*) = 0 FROM (
                 (SELECT day, sales_count, total_bs FROM analytics.sales_by_day('{STORE_A}', current_date - 400, current_date + 1)
                  EXCEPT SELECT (sold_at AT TIME ZONE tz)::date, count(*), sum(a_total_bs) FROM oracle_valid_sales
                         WHERE store_id = '{STORE_A}' GROUP BY 1)
                 UNION ALL
                 (SELECT (sold_at AT TIME ZONE tz)::date, count(*), sum(a_total_bs) FROM oracle_valid_sales
                  WHERE store_id = '{STORE_A}' GROUP BY 1
                  EXCEPT SELECT day, sales_count, total_bs FROM analytics.sales_by_day('{STORE_A}', current_date - 400, current_date + 1))) d"
        ))
        .unwrap();
        assert!(by_day_matches, "sales_by_day differs from the reference");
        let cost_matches: bool = scalar(&format!(
            "SELECT sum(cost_bs) = (SELECT sum(i.qty * p.cost_bs) FROM oracle_valid_sales s JOIN sale_items i ON i.sale_id = s.id
                                    JOIN products p ON p.id = i.product_id WHERE s.store_id = '{STORE_A}')
             FROM analytics.sales_by_day('{STORE_A}', current_date - 400, current_date + 1)"
        ))
        .unwrap();
        assert!(cost_matches, "cost is quantity times the cost captured with the item");
    }

    #[pg_test]
    fn attach_refuses_a_schema_without_sales() {
        let refused = PgTryBuilder::new(|| Spi::run("SELECT analytics.attach('pg_catalog')").is_err())
            .catch_others(|_| true)
            .execute();
        assert!(refused);
    }

    #[pg_test]
    fn attach_warns_about_lookups_no_index_serves() {
        lacaja_pos();
        let warnings: i64 = scalar("SELECT jsonb_array_length(analytics.attach('pos') -> 'warnings')").unwrap();
        assert_eq!(warnings, 0, "LA-CAJA's schema indexes what the capture looks up");
        run("DROP INDEX pos.sale_return_items_sale_item");
        let warned: String = scalar("SELECT analytics.attach('pos') -> 'warnings' ->> 0").unwrap();
        assert!(warned.contains("sale_return_items(sale_item_id)"), "{warned}");
    }

    #[pg_test]
    fn public_cannot_write_analytics() {
        let writable: i64 = scalar(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname IN ('analytics', 'analytics_internal') AND c.relkind IN ('r', 'v', 'S', 'p')
               AND (has_table_privilege('public', c.oid, 'INSERT') OR has_table_privilege('public', c.oid, 'UPDATE')
                    OR has_table_privilege('public', c.oid, 'DELETE') OR has_table_privilege('public', c.oid, 'TRUNCATE'))",
        )
        .unwrap();
        assert_eq!(writable, 0);
    }


    /// dashboard_history() plus a return, stock movements, an inactive product and payment
    /// methods of every compatibility group.
    pub(crate) fn compat_history() {
        dashboard_history();
        run(&format!(
            "INSERT INTO products (id, store_id, name, category, cost_bs, cost_usd, low_stock_threshold, is_active)
             VALUES ('f0000000-0000-4000-8000-000000000003', '{STORE_A}', 'retirado', 'viveres', 5, 0.1, 0, false);
             INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta)
             VALUES (gen_random_uuid(), '{STORE_A}', 'f0000000-0000-4000-8000-000000000001', 'received', 40),
                    (gen_random_uuid(), '{STORE_A}', 'f0000000-0000-4000-8000-000000000002', 'received', 3),
                    (gen_random_uuid(), '{STORE_A}', 'f0000000-0000-4000-8000-000000000003', 'received', 9);
             UPDATE sales SET payment = jsonb_build_object('method', (ARRAY['CASH_USD', 'PAGO_MOVIL', 'TRANSFER', 'DEBIT_CARD', 'SPLIT', 'FIAO'])[1 + abs(hashtext(id::text)) % 6])
             WHERE hashtext(id::text) % 4 = 0;
             INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
             SELECT 'e0000000-0000-4000-8000-000000000001', '{STORE_A}', i.sale_id, 36.5, 1
             FROM sale_items i JOIN sales s ON s.id = i.sale_id WHERE s.voided_at IS NULL
             ORDER BY s.sold_at DESC LIMIT 1;
             INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
             SELECT gen_random_uuid(), r.id, i.id, i.product_id, 1, 36.5, 1
             FROM sale_returns r JOIN sale_items i ON i.sale_id = r.sale_id;
             INSERT INTO debts (id, store_id, customer_id, created_at, amount_bs, amount_usd, status)
             VALUES (gen_random_uuid(), '{STORE_A}', 'c0000000-0000-4000-8000-000000000001', now(), 100, 2.5, 'open'),
                    (gen_random_uuid(), '{STORE_A}', 'c0000000-0000-4000-8000-000000000001', now(), 20, 0.5, 'partial'),
                    (gen_random_uuid(), '{STORE_A}', 'c0000000-0000-4000-8000-000000000002', now(), 40, 1, 'partial'),
                    (gen_random_uuid(), '{STORE_A}', 'c0000000-0000-4000-8000-000000000003', now(), 70, 2, 'paid')"
        ));
    }

    #[pg_test]
    fn compat_views_equal_their_definitions() {
        compat_history();
        for relation in ["mv_sales_daily", "mv_top_products_30d", "mv_inventory_metrics", "mv_customer_metrics"] {
            let rows: i64 = scalar(&format!("SELECT count(*) FROM analytics.{relation}")).unwrap();
            assert!(rows > 0, "{relation} is empty, the comparison would prove nothing");
            let differences: i64 =
                scalar(&format!("SELECT differences FROM oracle_differences WHERE relation = '{relation}'")).unwrap();
            assert_eq!(differences, 0, "{relation} differs from its definition");
        }
        // Each open or partial debt once: 100 + 20 + 40 bs over two customers.
        let debts: String = scalar(&format!(
            "SELECT customers_with_debt || '/' || total_debt_bs || '/' || total_debt_usd FROM analytics.mv_customer_metrics
             WHERE store_id = '{STORE_A}'"
        ))
        .unwrap();
        assert_eq!(debts, "2/160.00/4.00");
        let groups: String = scalar(&format!(
            "SELECT sum(cash_count) || '/' || sum(card_count) || '/' || sum(transfer_count) || '/' || sum(sales_count)
             FROM analytics.mv_sales_daily WHERE store_id = '{STORE_A}'"
        ))
        .unwrap();
        let expected: String = scalar(
            "SELECT count(*) FILTER (WHERE payment ->> 'method' IN ('CASH_BS', 'CASH_USD')) || '/'
                 || count(*) FILTER (WHERE payment ->> 'method' = 'DEBIT_CARD') || '/'
                 || count(*) FILTER (WHERE payment ->> 'method' IN ('TRANSFER', 'PAGO_MOVIL')) || '/' || count(*)
             FROM sales WHERE voided_at IS NULL",
        )
        .unwrap();
        assert_eq!(groups, expected);
    }

    /// The columns of a relation in `pos`: name and type, in order.
    fn columns_of(relation: &str) -> String {
        scalar(&format!(
            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
             FROM pg_attribute WHERE attrelid = 'pos.{relation}'::regclass AND attnum > 0 AND NOT attisdropped"
        ))
        .unwrap()
    }

    fn relkind_of(relation: &str) -> String {
        scalar(&format!("SELECT relkind::text FROM pg_class WHERE oid = 'pos.{relation}'::regclass")).unwrap()
    }

    #[pg_test]
    fn install_compat_replaces_lacaja_views_and_is_reversible() {
        compat_history();
        run(include_str!("../sql/fixtures/lacaja_materialized_views.sql"));
        run("CREATE ROLE lacaja_api_reader; GRANT USAGE ON SCHEMA pos TO lacaja_api_reader;
             GRANT SELECT ON pos.mv_sales_daily, pos.sales_heatmap TO lacaja_api_reader");
        let names = ["sales_heatmap", "mv_sales_daily", "mv_top_products_30d", "mv_inventory_metrics", "mv_customer_metrics"];
        let before: Vec<String> = names.iter().map(|n| columns_of(n)).collect();
        let function_before: String = scalar("SELECT pg_get_functiondef('pos.refresh_analytics_views()'::regprocedure)").unwrap();

        let dry: pgrx::JsonB = scalar("SELECT analytics.install_compat()").unwrap();
        assert_eq!(dry.0["replaced"], false, "{}", dry.0);
        assert_eq!(relkind_of("mv_sales_daily"), "m", "a dry run changes nothing");

        // Something reading the original blocks the swap, and nothing changes.
        run("CREATE VIEW pos.reads_mv AS SELECT * FROM pos.mv_sales_daily");
        let refused = PgTryBuilder::new(|| Spi::run("SELECT analytics.install_compat(replace_public => true)").is_err())
            .catch_others(|_| true)
            .execute();
        assert!(refused, "a view reading mv_sales_daily must block install_compat");
        run("DROP VIEW pos.reads_mv");
        assert_eq!(relkind_of("mv_sales_daily"), "m");

        let report: pgrx::JsonB = scalar("SELECT analytics.install_compat(replace_public => true)").unwrap();
        assert_eq!(report.0["replaced"], true, "{}", report.0);
        for (name, columns) in names.iter().zip(&before) {
            assert_eq!(relkind_of(name), "v", "{name} is a view now");
            assert_eq!(&columns_of(name), columns, "{name} keeps its columns and types");
        }
        let heatmap_matches: bool = scalar(
            "SELECT count(*) > 0 AND count(*) = (SELECT count(*) FROM oracle_sales_heatmap)
                 AND sum(sales_count) = (SELECT sum(sales_count) FROM oracle_sales_heatmap)
                 AND count(DISTINCT id) = count(*)
             FROM pos.sales_heatmap",
        )
        .unwrap();
        assert!(heatmap_matches, "sales_heatmap is filled from the rollups");
        let daily_matches: bool = scalar(
            "SELECT count(*) = 0 FROM ((SELECT store_id, sale_date, sales_count, total_bs FROM pos.mv_sales_daily
                                        EXCEPT SELECT store_id, sale_date, sales_count, total_bs FROM oracle_mv_sales_daily)
                                       UNION ALL (SELECT store_id, sale_date, sales_count, total_bs FROM oracle_mv_sales_daily
                                        EXCEPT SELECT store_id, sale_date, sales_count, total_bs FROM pos.mv_sales_daily)) d",
        )
        .unwrap();
        assert!(daily_matches, "public mv_sales_daily reads the rollups");
        // A role that could read the original reads the view; LA-CAJA's refresh still works.
        run("SET LOCAL ROLE lacaja_api_reader");
        let readable: i64 = scalar("SELECT count(*) FROM pos.mv_sales_daily").unwrap();
        assert!(readable > 0);
        run("RESET ROLE");
        run("SELECT pos.refresh_analytics_views()");
        // What install_compat leaves no longer reads sales: nothing of LA-CAJA's views blocks a conversion.
        let blockers: String = scalar(
            "SELECT coalesce(string_agg(b, '; '), '') FROM unnest(analytics_internal._hypertable_blockers('pos.sales', 'sold_at', true, true, true)) b",
        )
        .unwrap();
        assert_eq!(blockers, "", "after install_compat the conversion of sales is free");
        let again: pgrx::JsonB = scalar("SELECT analytics.install_compat(replace_public => true)").unwrap();
        assert!(again.0["plan"].as_array().unwrap().iter().all(|p| p["action"] == "already replaced"), "{}", again.0);

        let restored: pgrx::JsonB = scalar("SELECT analytics.uninstall_compat()").unwrap();
        assert_eq!(restored.0["restored"].as_array().unwrap().len(), 6, "{}", restored.0);
        for (name, columns) in names.iter().zip(&before) {
            assert_eq!(relkind_of(name), if *name == "sales_heatmap" { "r" } else { "m" }, "{name} is back");
            assert_eq!(&columns_of(name), columns);
        }
        let function_after: String = scalar("SELECT pg_get_functiondef('pos.refresh_analytics_views()'::regprocedure)").unwrap();
        assert_eq!(function_after, function_before);
        let still_granted: bool = scalar("SELECT has_table_privilege('lacaja_api_reader', 'pos.mv_sales_daily', 'SELECT')").unwrap();
        assert!(still_granted);
        let leftovers: i64 = scalar(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'pos' AND c.relname LIKE '%\\_replaced'",
        )
        .unwrap();
        assert_eq!(leftovers, 0);
    }

    // Time series ----------------------------------------------------------------------

    /// `sql` must fail with SQLSTATE `code` (checked in a subtransaction).
    pub(crate) fn assert_fails(sql: &str, code: &str) {
        let outcome: String = scalar(&format!(
            "SELECT pg_temp.analytics_test_outcome({})",
            pgrx::spi::quote_literal(sql)
        ))
        .unwrap();
        assert_eq!(outcome, code, "{sql}");
    }

    pub(crate) fn outcome_helper() {
        run("CREATE FUNCTION pg_temp.analytics_test_outcome(statement text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE statement; RETURN 'ok';
             EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$");
        run("CREATE FUNCTION pg_temp.analytics_test_message(statement text) RETURNS text LANGUAGE plpgsql AS $$
             DECLARE message text; detail text; hint text;
             BEGIN EXECUTE statement; RETURN 'no error';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS message = MESSAGE_TEXT, detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
                 RETURN concat_ws(E'\n', message, detail, hint);
             END $$");
    }

    #[pg_test]
    fn time_bucket_matches_timescaledb() {
        run("SET LOCAL timezone = 'UTC'");
        // (expression, expected text) — TimescaleDB's documented behaviour.
        let cases = [
            ("analytics.time_bucket('5 minutes', timestamptz '2020-01-01 10:32:29+00')", "2020-01-01 10:30:00+00"),
            ("analytics.time_bucket('5 minutes', timestamptz '2020-01-01 10:32:29+00', '-2.5 minutes'::interval)", "2020-01-01 10:27:30+00"),
            ("analytics.time_bucket('5 minutes', timestamptz '2020-01-01 10:32:29+00', '2.5 minutes'::interval)", "2020-01-01 10:27:30+00"),
            ("analytics.time_bucket('5 minutes', timestamptz '2020-01-01 10:32:31+00', '2.5 minutes'::interval)", "2020-01-01 10:32:30+00"),
            ("analytics.time_bucket('1 week', date '2021-09-08')", "2021-09-06"),
            ("analytics.time_bucket('1 week', timestamp '2000-01-01 00:00')", "1999-12-27 00:00:00"),
            ("analytics.time_bucket('1 week', timestamp '1999-12-30 10:00')", "1999-12-27 00:00:00"),
            ("analytics.time_bucket('1 month', date '2021-09-08')", "2021-09-01"),
            ("analytics.time_bucket('3 months', date '2021-08-01')", "2021-07-01"),
            ("analytics.time_bucket('1 year', date '2021-09-08')", "2021-01-01"),
            ("analytics.time_bucket('1 month', timestamptz '2021-08-31 23:00:00-05')", "2021-09-01 00:00:00+00"),
            ("analytics.time_bucket('2 months', timestamp '1999-12-15 12:00')", "1999-11-01 00:00:00"),
            ("analytics.time_bucket('2 weeks', timestamp '2022-02-21', timestamp '2022-02-14')", "2022-02-14 00:00:00"),
            ("analytics.time_bucket('1 day', timestamptz '2024-01-01 11:27+00', timestamptz '2024-01-01 06:00+00')", "2024-01-01 06:00:00+00"),
            ("analytics.time_bucket('2 days', date '2000-01-01')", "2000-01-01"),
            ("analytics.time_bucket('10 days', date '2021-09-08', date '2021-09-01')", "2021-09-01"),
            ("analytics.time_bucket('1 day', date '2021-09-08', '12 hours'::interval)", "2021-09-07"),
            // a local day across DST: 23 hours in spring, 25 in autumn
            ("analytics.time_bucket('1 day', timestamptz '2021-03-14 23:30-04', 'America/New_York')", "2021-03-14 05:00:00+00"),
            ("analytics.time_bucket('1 day', timestamptz '2021-11-07 23:30-05', 'America/New_York')", "2021-11-07 04:00:00+00"),
            ("analytics.time_bucket('2 hours', timestamptz '2021-03-14 05:30-04', 'America/New_York')", "2021-03-14 08:00:00+00"),
            ("analytics.time_bucket('1 month', timestamptz '2021-08-01 02:00+00', 'America/Caracas')", "2021-07-01 04:00:00+00"),
            ("analytics.time_bucket('1 day', timestamptz '2021-09-08 10:00+00', 'Asia/Kolkata', timestamptz '2000-01-01 06:00 Asia/Kolkata')", "2021-09-08 00:30:00+00"),
            ("analytics.time_bucket('1 day', timestamptz '2021-09-08 10:00+00', 'Europe/Berlin', \"offset\" => '6 hours')", "2021-09-08 04:00:00+00"),
            ("analytics.time_bucket('1 day', 'infinity'::timestamptz)", "infinity"),
            ("analytics.time_bucket(10, 23)", "20"),
            ("analytics.time_bucket(10, -23)", "-30"),
            ("analytics.time_bucket(10, 23, 5)", "15"),
            ("analytics.time_bucket(10::bigint, -20::bigint)", "-20"),
        ];
        let mut wrong = Vec::new();
        for (expression, expected) in cases {
            let got: Option<String> = Spi::get_one(&format!("SELECT ({expression})::text")).unwrap_or_else(|e| Some(format!("ERROR {e}")));
            if got.as_deref() != Some(expected) {
                wrong.push(format!("{expression} = {got:?}, expected {expected}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));

        outcome_helper();
        assert_fails("SELECT analytics.time_bucket('0 minutes', now())", "22023");
        assert_fails("SELECT analytics.time_bucket('-1 hour', now())", "22023");
        assert_fails("SELECT analytics.time_bucket(0, 5)", "22023");
        assert_fails("SELECT analytics.time_bucket('1 month 1 day', now())", "0A000");
        assert_fails("SELECT analytics.time_bucket('1 hour', current_date)", "0A000");
        assert_fails("SELECT analytics.time_bucket('36 hours', current_date)", "0A000");
        assert_fails("SELECT analytics.time_bucket(5::smallint, (-32768)::smallint)", "22003");
        assert_fails("SELECT analytics.time_bucket('1 day', now(), 'Mars/Olympus')", "22023");
        let nulls: i64 = scalar(
            "SELECT count(*) FROM (VALUES (analytics.time_bucket('1 day', NULL::timestamptz)),
                                         (analytics.time_bucket(NULL::interval, now())),
                                         (analytics.time_bucket('1 day', NULL::timestamptz, 'UTC'))) v (b) WHERE b IS NULL",
        )
        .unwrap();
        assert_eq!(nulls, 3);
        // Usable in indexes and parallel plans, as TimescaleDB's.
        let not_immutable: i64 = scalar(
            "SELECT count(*) FROM pg_proc WHERE proname = 'time_bucket' AND pronamespace = 'analytics'::regnamespace
             AND (provolatile <> 'i' OR proparallel <> 's')",
        )
        .unwrap();
        assert_eq!(not_immutable, 0);
        let overloads: i64 =
            scalar("SELECT count(*) FROM pg_proc WHERE proname = 'time_bucket' AND pronamespace = 'analytics'::regnamespace").unwrap();
        assert_eq!(overloads, 16);
    }

    #[pg_test]
    fn create_hypertable_refuses_what_cannot_carry_over_and_changes_nothing() {
        lacaja_pos();
        outcome_helper();
        run(&sale(1, STORE_A, "2026-01-10 10:00+00", "10", "CASH_BS", None));
        run("CREATE MATERIALIZED VIEW pos.sales_mv AS SELECT store_id, count(*) FROM pos.sales GROUP BY 1");
        let message: String = scalar(
            "SELECT pg_temp.analytics_test_message('SELECT analytics.create_hypertable(''pos.sales'', ''sold_at'', migrate_data => true)')",
        )
        .unwrap();
        for expected in ["primary key sales_pkey", "extend_unique => true", "foreign key sale_items_sale_id_fkey",
                         "foreign key sale_returns_sale_id_fkey", "replace_foreign_keys => true", "materialized view pos.sales_mv",
                         "unique index pos.idx_sales_store_sale_number", "replace_unique => true"] {
            assert!(message.contains(expected), "missing {expected:?} in:\n{message}");
        }
        let kind: String = scalar("SELECT relkind::text FROM pg_class WHERE oid = 'pos.sales'::regclass").unwrap();
        assert_eq!(kind, "r", "nothing changes when refused");
        run("DROP MATERIALIZED VIEW pos.sales_mv");
        // TimescaleDB's rules: data needs migrate_data; a second call needs if_not_exists.
        let message: String = scalar(
            "SELECT pg_temp.analytics_test_message('SELECT analytics.create_hypertable(''pos.sales'', ''sold_at'', extend_unique => true, replace_foreign_keys => true, replace_unique => true)')",
        )
        .unwrap();
        assert!(message.contains("is not empty") && message.contains("migrate_data => true"), "{message}");
        assert_fails("SELECT analytics.create_hypertable('pos.sales', 'no_such_column')", "42703");
        assert_fails("SELECT analytics.create_hypertable('pos.sales', 'totals')", "22023");
        run("SELECT analytics.create_hypertable('pos.events', 'created_at', INTERVAL '1 day', extend_unique => true, replace_foreign_keys => true, replace_unique => true)");
        assert_fails("SELECT analytics.create_hypertable('pos.events', 'created_at', extend_unique => true)", "42710");
        let again: bool = scalar(
            "SELECT created FROM analytics.create_hypertable('pos.events', 'created_at', extend_unique => true, if_not_exists => true)",
        )
        .unwrap();
        assert!(!again);
    }

    #[pg_test]
    fn replaced_foreign_keys_keep_restrict_cascade_and_set_null() {
        outcome_helper();
        run("CREATE SCHEMA fk;
             CREATE TABLE fk.parent (id int PRIMARY KEY, at timestamptz NOT NULL);
             CREATE TABLE fk.child_restrict (id int PRIMARY KEY, parent_id int REFERENCES fk.parent ON DELETE RESTRICT);
             CREATE TABLE fk.child_cascade (id int PRIMARY KEY, parent_id int REFERENCES fk.parent ON DELETE CASCADE ON UPDATE CASCADE);
             CREATE TABLE fk.child_set_null (id int PRIMARY KEY, parent_id int REFERENCES fk.parent ON DELETE SET NULL);
             INSERT INTO fk.parent SELECT i, '2026-01-01'::timestamptz + i * interval '1 day' FROM generate_series(1, 6) i;
             INSERT INTO fk.child_restrict VALUES (1, 1);
             INSERT INTO fk.child_cascade VALUES (1, 2), (2, 2), (3, 5);
             INSERT INTO fk.child_set_null VALUES (1, 3);");
        run("SELECT analytics.create_hypertable('fk.parent', 'at', INTERVAL '1 day', migrate_data => true,
                                               extend_unique => true, replace_foreign_keys => true)");
        let replaced: i64 = scalar("SELECT count(*) FROM analytics_internal.replaced_foreign_keys WHERE parent = 'fk.parent'::regclass").unwrap();
        assert_eq!(replaced, 3);
        // The referenced key is kept in a registry, which the checks probe (generated functions).
        let generated: i64 = scalar(
            "SELECT count(*) FROM analytics_internal.replaced_foreign_keys WHERE parent = 'fk.parent'::regclass AND check_function IS NOT NULL",
        )
        .unwrap();
        assert_eq!(generated, 3);
        // ... which keeps the key unique across chunks, as it was.
        assert_fails("INSERT INTO fk.parent VALUES (1, '2026-03-01')", "23505");
        // child side: the parent must exist
        assert_fails("INSERT INTO fk.child_restrict VALUES (2, 99)", "23503");
        assert_fails("UPDATE fk.child_cascade SET parent_id = 98 WHERE id = 3", "23503");
        run("INSERT INTO fk.child_restrict VALUES (3, 4), (4, NULL)");
        // RESTRICT
        assert_fails("DELETE FROM fk.parent WHERE id = 1", "23503");
        // CASCADE on delete and on update
        run("DELETE FROM fk.parent WHERE id = 2");
        let cascaded: i64 = scalar("SELECT count(*) FROM fk.child_cascade WHERE parent_id = 2").unwrap();
        assert_eq!(cascaded, 0);
        run("UPDATE fk.parent SET id = 50 WHERE id = 5");
        let followed: i32 = scalar("SELECT parent_id FROM fk.child_cascade WHERE id = 3").unwrap();
        assert_eq!(followed, 50);
        // SET NULL
        run("DELETE FROM fk.parent WHERE id = 3");
        let nulled: Option<i32> = scalar("SELECT parent_id FROM fk.child_set_null WHERE id = 1");
        assert_eq!(nulled, None);
        // unrelated parents delete freely; the row with no children too
        run("DELETE FROM fk.parent WHERE id = 6");
    }

    #[pg_test]
    fn create_hypertable_keeps_what_the_table_had() {
        lacaja_pos();
        outcome_helper();
        run("CREATE ROLE lacaja_ht_reader; CREATE ROLE lacaja_ht_clerk;
             CREATE SCHEMA ht;
             CREATE TABLE ht.shops (id int PRIMARY KEY);
             INSERT INTO ht.shops VALUES (1), (2);
             CREATE TABLE ht.readings (
                 id bigserial PRIMARY KEY,
                 shop int NOT NULL REFERENCES ht.shops,
                 at timestamptz NOT NULL DEFAULT now(),
                 value numeric NOT NULL CHECK (value >= 0),
                 doubled numeric GENERATED ALWAYS AS (value * 2) STORED,
                 note text DEFAULT 'none');
             COMMENT ON TABLE ht.readings IS 'meter readings';
             CREATE INDEX readings_shop_at ON ht.readings (shop, at DESC) WHERE value > 0;
             GRANT SELECT ON ht.readings TO lacaja_ht_reader;
             GRANT INSERT, SELECT ON ht.readings TO lacaja_ht_clerk;
             ALTER TABLE ht.readings ENABLE ROW LEVEL SECURITY;
             CREATE POLICY shop_one ON ht.readings FOR SELECT TO lacaja_ht_reader USING (shop = 1);
             CREATE POLICY clerk_all ON ht.readings TO lacaja_ht_clerk USING (true) WITH CHECK (value < 1000);
             CREATE VIEW ht.big_readings AS SELECT id, value FROM ht.readings WHERE value > 5;
             GRANT SELECT ON ht.big_readings TO lacaja_ht_reader;
             GRANT USAGE ON SCHEMA ht TO lacaja_ht_reader, lacaja_ht_clerk;
             GRANT USAGE ON SEQUENCE ht.readings_id_seq TO lacaja_ht_clerk;
             INSERT INTO ht.readings (shop, at, value) SELECT 1 + i % 2, '2026-01-01'::timestamptz + i * interval '5 hours', i
             FROM generate_series(1, 40) i;");
        // In a transaction block the conversion runs in place (online needs its own transactions).
        let path_before: String = scalar("SELECT current_setting('search_path')").unwrap();
        run("SELECT analytics.create_hypertable('ht.readings', 'at', INTERVAL '1 day', migrate_data => true, extend_unique => true)");
        let path_after: String = scalar("SELECT current_setting('search_path')").unwrap();
        assert_eq!(path_before, path_after);
        let kind: String = scalar("SELECT relkind::text FROM pg_class WHERE oid = 'ht.readings'::regclass").unwrap();
        assert_eq!(kind, "p");
        let count: i64 = scalar("SELECT count(*) FROM ht.readings").unwrap();
        assert_eq!(count, 40);
        // defaults, serial, generated column, check constraint, outbound foreign key
        run("INSERT INTO ht.readings (shop, value) VALUES (2, 3)");
        let (next_id, doubled, note): (Option<i64>, Option<pgrx::AnyNumeric>, Option<String>) =
            Spi::get_three("SELECT id, doubled, note FROM ht.readings WHERE value = 3 AND at > '2026-06-01'").unwrap();
        assert_eq!(next_id, Some(41), "the serial keeps counting");
        assert_eq!(doubled.unwrap().to_string(), "6");
        assert_eq!(note.as_deref(), Some("none"));
        assert_fails("INSERT INTO ht.readings (shop, value) VALUES (1, -1)", "23514");
        assert_fails("INSERT INTO ht.readings (shop, value) VALUES (9, 1)", "23503");
        assert_fails("INSERT INTO ht.readings (id, shop, at, value) SELECT id, shop, at, 1 FROM ht.readings LIMIT 1", "23505");
        // indexes (partial, descending), the key extended by the time column, the default time index
        let indexes: String = scalar(
            "SELECT string_agg(pg_get_indexdef(indexrelid), ' | ' ORDER BY indexrelid::regclass::text) FROM pg_index
             WHERE indrelid = 'ht.readings'::regclass",
        )
        .unwrap();
        assert!(indexes.contains("readings_shop_at ON ONLY ht.readings USING btree (shop, at DESC) WHERE (value > (0)::numeric)"), "{indexes}");
        assert!(indexes.contains("readings_pkey ON ONLY ht.readings USING btree (id, at)"), "{indexes}");
        assert!(indexes.contains("(at DESC)"), "{indexes}");
        // grants, row-level security and its policies, comment, owner, the view over it
        let comment: String = scalar("SELECT obj_description('ht.readings'::regclass, 'pg_class')").unwrap();
        assert_eq!(comment, "meter readings");
        run("SET LOCAL ROLE lacaja_ht_reader");
        let visible: i64 = scalar("SELECT count(*) FROM ht.readings").unwrap();
        let through_view: i64 = scalar("SELECT count(*) FROM ht.big_readings").unwrap();
        run("RESET ROLE");
        let shop_one: i64 = scalar("SELECT count(*) FROM ht.readings WHERE shop = 1").unwrap();
        assert_eq!(visible, shop_one, "the policy still filters the reader");
        assert!(through_view > 0, "the view reads the new table");
        run("SET LOCAL ROLE lacaja_ht_clerk");
        run("INSERT INTO ht.readings (shop, value) VALUES (1, 10)");
        let refused: String = scalar("SELECT pg_temp.analytics_test_outcome('INSERT INTO ht.readings (shop, value) VALUES (1, 5000)')").unwrap();
        run("RESET ROLE");
        assert_eq!(refused, "42501", "the clerk's WITH CHECK policy still applies");
        let view_reads_new: bool = scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON d.objid = r.oid
                            WHERE r.ev_class = 'ht.big_readings'::regclass AND d.refobjid = 'ht.readings'::regclass)",
        )
        .unwrap();
        assert!(view_reads_new);
        let leftovers: i64 = scalar(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'ht'::regnamespace AND relname LIKE '%lacaja%'",
        )
        .unwrap();
        assert_eq!(leftovers, 0);
        // retention: refused where it would be wrong, allowed and said elsewhere
        run("SELECT analytics.create_hypertable('pos.inventory_movements', 'happened_at', INTERVAL '1 day', extend_unique => true)");
        let refusal: String = scalar(
            "SELECT pg_temp.analytics_test_message('SELECT analytics.add_retention_policy(''pos.inventory_movements'', INTERVAL ''1 year'')')",
        )
        .unwrap();
        assert!(refusal.contains("stock"), "{refusal}");
        let job: i32 = scalar("SELECT analytics.add_retention_policy('ht.readings', INTERVAL '30 days')").unwrap();
        assert!(job >= 1000);
        assert_fails("SELECT analytics.add_retention_policy('ht.readings', INTERVAL '30 days')", "42710");
        let dropped: i64 = scalar("SELECT count(*) FROM analytics.drop_chunks('ht.readings', '2026-01-05'::timestamptz)").unwrap();
        assert!(dropped >= 3);
        let left: i64 = scalar("SELECT count(*) FROM ht.readings WHERE at < '2026-01-05'").unwrap();
        assert_eq!(left, 0);
    }

    // Anomalies ------------------------------------------------------------------------

    /// Sales of `store` (Caracas time) on every day from `from` to `to` inclusive, hours 8–19:
    /// `weekday` sales an hour Monday to Saturday, `sunday` on Sundays, 100 bs each; on the
    /// last day only until `until_hour`, with `last_day_share` of the usual volume.
    fn trade(store: &str, from: &str, to: &str, weekday: i32, sunday: i32, until_hour: i32, last_day_share: f64) {
        run(&format!(
            "INSERT INTO pos.sales (id, store_id, sold_at, totals, payment)
             SELECT gen_random_uuid(), '{store}',
                    (d + make_interval(hours => h, secs => i * 3600.0 / n.per_hour))::timestamp AT TIME ZONE 'America/Caracas',
                    jsonb_build_object('total_bs', 100, 'total_usd', 2.5), jsonb_build_object('method', 'CASH_BS')
             FROM generate_series(date '{from}', date '{to}', interval '1 day') AS d
             CROSS JOIN generate_series(8, 19) AS h
             CROSS JOIN LATERAL (SELECT round(CASE WHEN extract(dow FROM d) = 0 THEN {sunday} ELSE {weekday} END
                                              * CASE WHEN d = date '{to}' THEN {last_day_share} ELSE 1 END)::int AS per_hour) AS n
             CROSS JOIN LATERAL generate_series(0, n.per_hour - 1) AS i
             WHERE d < date '{to}' OR h < {until_hour}"
        ));
    }

    fn anomalies(store: &str, at: &str, method: &str) -> Vec<(String, String, f64)> {
        Spi::connect(|client| {
            client
                .select(
                    &format!(
                        "SELECT metric_name, severity, z_score::float8 FROM analytics.detect_anomalies('{store}', '{at}', '{method}')
                         ORDER BY metric_name"
                    ),
                    None,
                    &[],
                )
                .unwrap()
                .map(|r| (r.get::<String>(1).unwrap().unwrap(), r.get::<String>(2).unwrap().unwrap(), r.get::<f64>(3).unwrap().unwrap()))
                .collect()
        })
    }

    #[pg_test]
    fn anomalies_respect_weekdays_partial_days_and_history() {
        lacaja_pos();
        // 2026-03-15 is a Sunday; ten weeks of history before it.
        trade(STORE_A, "2026-01-04", "2026-03-15", 10, 4, 18, 1.0);
        // A normal Sunday evening: the original z-score cries "drop", ours is quiet.
        let sunday = "2026-03-15 18:00 America/Caracas";
        assert!(anomalies(STORE_A, sunday, "seasonal").is_empty(), "{:?}", anomalies(STORE_A, sunday, "seasonal"));
        assert!(!anomalies(STORE_A, sunday, "zscore").is_empty(), "the original method fires on a normal Sunday");
        // A normal Monday morning, two hours after opening.
        trade(STORE_A, "2026-03-16", "2026-03-16", 10, 4, 10, 1.0);
        let morning = "2026-03-16 10:00 America/Caracas";
        assert!(anomalies(STORE_A, morning, "seasonal").is_empty(), "{:?}", anomalies(STORE_A, morning, "seasonal"));
        assert!(!anomalies(STORE_A, morning, "zscore").is_empty(), "the original method fires every morning");

        // A real drop: Tuesday at 15 % of its usual volume until 15:00.
        trade(STORE_A, "2026-03-17", "2026-03-17", 10, 4, 15, 0.15);
        let found = anomalies(STORE_A, "2026-03-17 15:00 America/Caracas", "seasonal");
        let count = found.iter().find(|(m, _, _)| m == "daily_sales_count").expect("the drop in sales is found");
        assert_eq!(count.1, "high", "{found:?}");
        assert!(count.2 < -6.0);
        assert!(found.iter().any(|(m, _, _)| m == "daily_revenue_bs"), "{found:?}");
        assert!(!found.iter().any(|(m, _, _)| m == "avg_ticket_bs"), "tickets did not change: {found:?}");
        // Severity between the thresholds: half the usual volume is medium (z ≈ −4.2 with a
        // spread of √n on 70 sales: beyond 3 and 30 %, not beyond 5).
        trade(STORE_A, "2026-03-18", "2026-03-18", 10, 4, 15, 0.5);
        let found = anomalies(STORE_A, "2026-03-18 15:00 America/Caracas", "seasonal");
        let count = found.iter().find(|(m, _, _)| m == "daily_sales_count").expect("a medium drop");
        assert_eq!(count.1, "medium", "{found:?}");

        // Stored once per store, metric and period; resolved when back to normal.
        let stored: i64 = scalar(&format!(
            "SELECT count(*) FROM analytics.anomaly_predictions WHERE store_id = '{STORE_A}' AND method = 'seasonal'
               AND period_start = '2026-03-18 00:00 America/Caracas' AND metric_name = 'daily_sales_count'"
        ))
        .unwrap();
        assert_eq!(stored, 1);
        anomalies(STORE_A, "2026-03-18 15:00 America/Caracas", "seasonal");
        let again: i64 = scalar("SELECT count(*) FROM analytics.anomaly_predictions WHERE method = 'seasonal'").unwrap();
        let distinct: i64 = scalar(
            "SELECT count(DISTINCT (store_id, metric_name, period_start)) FROM analytics.anomaly_predictions WHERE method = 'seasonal'",
        )
        .unwrap();
        assert_eq!(again, distinct, "a second run adds no duplicate");
        // the late sales of an offline register arrive: the day is normal again
        trade(STORE_A, "2026-03-18", "2026-03-18", 5, 0, 15, 1.0);
        assert!(anomalies(STORE_A, "2026-03-18 15:00 America/Caracas", "seasonal").iter().all(|(m, _, _)| m != "daily_sales_count"));
        let open: i64 = scalar(&format!(
            "SELECT count(*) FROM analytics.anomaly_predictions WHERE store_id = '{STORE_A}' AND method = 'seasonal'
               AND metric_name = 'daily_sales_count' AND resolved_at IS NULL"
        ))
        .unwrap();
        assert_eq!(open, 0, "back to normal resolves the open anomalies of that metric");

        // Too little history: two weeks of a new store say nothing, even on a dead day.
        trade(STORE_B, "2026-03-04", "2026-03-17", 10, 4, 15, 0.1);
        assert!(anomalies(STORE_B, "2026-03-17 15:00 America/Caracas", "seasonal").is_empty());
        // A holiday is not judged.
        run("INSERT INTO analytics.holidays (day, name) VALUES ('2026-03-17', 'test holiday')");
        assert!(anomalies(STORE_A, "2026-03-17 15:00 America/Caracas", "seasonal").is_empty());
        // Columns do not overflow: a 5,000 % spike is stored.
        run("DELETE FROM analytics.holidays");
        trade(STORE_A, "2026-03-19", "2026-03-19", 10, 4, 15, 50.0);
        let spike: f64 = scalar(
            "SELECT max(deviation_percentage)::float8 FROM analytics.detect_anomalies(NULL, '2026-03-19 15:00 America/Caracas')",
        )
        .unwrap();
        assert!(spike > 4_000.0, "{spike}");
        // The detection job runs it for every store.
        let job: i32 = scalar("SELECT analytics.add_anomaly_detection_policy('5 minutes')").unwrap();
        let same: i32 = scalar("SELECT analytics.add_anomaly_detection_policy('5 minutes')").unwrap();
        assert_eq!(job, same, "scheduled once");
        run(&format!("CALL analytics.run_job({job})"));
        let status: String = scalar(&format!("SELECT last_run_status FROM analytics.job_stats WHERE job_id = {job}")).unwrap();
        assert_eq!(status, "Success");
    }

    #[pg_test]
    fn real_time_metrics_are_written_once_and_alerts_follow_thresholds() {
        lacaja_pos();
        let at = "'2026-03-10 15:00 America/Caracas'::timestamptz";
        run(&sale(1, STORE_A, "2026-03-09 10:00 America/Caracas", "1", "CASH_BS", None));
        for id in 2..=4 {
            run(&sale(id, STORE_A, "2026-03-10 10:00 America/Caracas", "100", "CASH_BS", None));
        }
        run(&format!(
            "INSERT INTO pos.alert_thresholds (id, store_id, alert_type, metric_name, threshold_value, comparison_operator, severity) VALUES
               ('f0000000-0000-4000-8000-000000000001', '{STORE_A}', 'sales', 'daily_sales_count', 2, 'greater_than', 'info'),
               ('f0000000-0000-4000-8000-000000000002', '{STORE_A}', 'sales', 'daily_sales_count', 2, 'less_than', 'high'),
               ('f0000000-0000-4000-8000-000000000003', '{STORE_A}', 'sales', 'daily_sales_count', 3, 'equals', 'info'),
               ('f0000000-0000-4000-8000-000000000004', '{STORE_A}', 'sales', 'daily_sales_count', 3, 'not_equals', 'info')"
        ));
        let first: pgrx::JsonB = scalar(&format!("SELECT analytics.refresh_real_time_metrics({at})")).unwrap();
        assert!(first.0["metrics_written"].as_i64().unwrap() >= 5, "{}", first.0);
        assert_eq!(first.0["alerts_raised"], 2, "greater_than 2 and equals 3 hold: {}", first.0);
        let (value, change, exact): (Option<pgrx::AnyNumeric>, Option<pgrx::AnyNumeric>, Option<String>) = Spi::get_three(&format!(
            "SELECT metric_value, change_percentage, metadata ->> 'exact_change_percentage' FROM pos.real_time_metrics
             WHERE store_id = '{STORE_A}' AND metric_name = 'daily_revenue_bs'"
        ))
        .unwrap();
        assert_eq!(value.unwrap().to_string(), "300.00");
        assert_eq!(change.unwrap().to_string(), "999.99", "+29,900 % clamped to numeric(5,2)");
        assert!(exact.unwrap().starts_with("29900"));
        // Nothing changed: nothing written, no alert repeated.
        let again: pgrx::JsonB = scalar(&format!("SELECT analytics.refresh_real_time_metrics({at})")).unwrap();
        assert_eq!(again.0["metrics_written"], 0, "{}", again.0);
        assert_eq!(again.0["alerts_raised"], 0, "{}", again.0);
        // A fourth sale: only the changed metrics are written; equals stops holding, not_equals starts.
        run(&sale(5, STORE_A, "2026-03-10 11:00 America/Caracas", "100", "CASH_BS", None));
        let third: pgrx::JsonB = scalar(&format!("SELECT analytics.refresh_real_time_metrics({at})")).unwrap();
        assert_eq!(third.0["alerts_raised"], 1, "{}", third.0);
        let written = third.0["metrics_written"].as_i64().unwrap();
        assert!((3..=5).contains(&written), "revenue, count and the averages that moved: {}", third.0);
        let raised: Vec<String> = Spi::connect(|c| {
            c.select("SELECT t.comparison_operator FROM pos.real_time_alerts a JOIN pos.alert_thresholds t ON t.id = a.threshold_id ORDER BY a.created_at, 1", None, &[])
                .unwrap()
                .map(|r| r.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        assert_eq!(raised.len(), 3);
        assert!(raised.contains(&"not_equals".to_string()) && !raised.contains(&"less_than".to_string()), "{raised:?}");
    }

    // Warehouse ------------------------------------------------------------------------

    #[pg_test]
    fn time_dimension_and_venezuelan_holidays() {
        for (year, easter) in [(2000, "2000-04-23"), (2019, "2019-04-21"), (2024, "2024-03-31"), (2025, "2025-04-20"), (2026, "2026-04-05")] {
            let got: String = scalar(&format!("SELECT analytics.easter_sunday({year})::text")).unwrap();
            assert_eq!(got, easter, "Easter {year}");
        }
        let added: i32 = scalar("SELECT analytics.load_venezuela_holidays(2025, 2026)").unwrap();
        assert_eq!(added, 28);
        let again: i32 = scalar("SELECT analytics.load_venezuela_holidays(2025, 2026)").unwrap();
        assert_eq!(again, 0, "loading twice adds nothing");
        let carnival: String = scalar(
            "SELECT string_agg(day::text, ',' ORDER BY day) FROM analytics.holidays WHERE name LIKE '%Carnaval' AND day >= '2026-01-01'",
        )
        .unwrap();
        assert_eq!(carnival, "2026-02-16,2026-02-17");
        let (holiday, dow, week): (Option<bool>, Option<i32>, Option<i32>) =
            Spi::get_three("SELECT is_holiday, day_of_week, iso_week FROM analytics.dim_time WHERE date_key = '2026-04-03'").unwrap();
        assert_eq!((holiday, dow, week), (Some(true), Some(5), Some(14)), "Good Friday 2026");
        let (weekend, quarter, name): (Option<bool>, Option<i32>, Option<String>) =
            Spi::get_three("SELECT is_weekend, quarter, holiday_name FROM analytics.dim_time WHERE date_key = '2026-07-05'").unwrap();
        assert_eq!((weekend, quarter, name.as_deref()), (Some(true), Some(3), Some("Día de la Independencia")));
        let days: i64 = scalar("SELECT count(*) FROM analytics.dim_time WHERE year = 2024").unwrap();
        assert_eq!(days, 366);
        // anomaly detection does not judge them
        let not_judged: bool = scalar(
            "SELECT bool_and(holiday) FROM analytics_internal._anomaly_samples(ARRAY['a0000000-0000-4000-8000-000000000001'::uuid],
                                                                     '2026-12-25 15:00 America/Caracas', 1) WHERE k = 0 AND kind = 'day'",
        )
        .unwrap();
        assert!(not_judged);
    }

    fn etl() -> serde_json::Value {
        scalar::<pgrx::JsonB>("SELECT analytics.etl_load_sales()").unwrap().0
    }

    fn assert_warehouse_exact(when: &str) {
        let facts: i64 = scalar("SELECT count(*) FROM oracle_fact_differences").unwrap();
        let sample: Option<String> = scalar("SELECT string_agg(d::text, E'\\n') FROM (SELECT * FROM oracle_fact_differences LIMIT 4) d");
        assert_eq!(facts, 0, "{when}: facts differ from their definition:\n{}", sample.unwrap_or_default());
        let reports: Option<String> = scalar("SELECT string_agg(report || ' of ' || store_id, ', ') FROM oracle_report_differences");
        assert_eq!(reports, None, "{when}: reports differ from the same questions over the source tables");
    }

    fn product(n: u32) -> String {
        format!("('f0000000-0000-4000-8000-' || lpad('{n}', 12, '0'))::uuid")
    }

    #[pg_test]
    fn warehouse_loads_every_change_once_and_keeps_product_history() {
        outcome_helper();
        lacaja_pos();
        run(&format!(
            "INSERT INTO products (id, store_id, name, category, price_bs, price_usd, cost_bs, cost_usd, cost_per_weight_bs, cost_per_weight_usd, is_weight_product)
             VALUES ({p1}, '{STORE_A}', 'Harina PAN', 'víveres', 40, 1.10, 30, 0.80, NULL, NULL, false),
                    ({p2}, '{STORE_A}', 'Queso', 'charcutería', 0, 0, 200, 5.40, 180.5, 4.9, true),
                    ({p3}, '{STORE_A}', 'Malta', NULL, 25, 0.70, 18, 0.50, NULL, NULL, false),
                    ({p4}, '{STORE_B}', 'Café', 'víveres', 90, 2.50, 60, 1.60, NULL, NULL, false)",
            p1 = product(1), p2 = product(2), p3 = product(3), p4 = product(4)
        ));
        let item = |sale: u32, n: u32, prod: u32, qty: &str, price: &str, discount: &str, weight: bool| {
            format!(
                "INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd, discount_bs, discount_usd, is_weight_product)
                 VALUES (('e0000000-0000-4000-8000-' || lpad('{}', 12, '0'))::uuid, {}, {}, {qty}, {price}, round({price} / 36.5, 4), {discount}, 0, {weight})",
                sale * 10 + n, sale_id(sale), product(prod)
            )
        };
        for (id, store, at, method, customer) in [
            (1, STORE_A, "2026-10-03 09:15-04", "CASH_BS", Some(1)),
            (2, STORE_A, "2026-10-31 23:30-04", "PAGO_MOVIL", None),
            (3, STORE_A, "2026-11-01 00:10-04", "SPLIT", Some(2)),
            (4, STORE_B, "2026-11-02 12:00-04", "CASH_USD", None),
        ] {
            run(&sale(id, store, at, "100", method, customer));
        }
        for statement in [
            item(1, 1, 1, "2", "40", "0", false),
            item(1, 2, 2, "0.750", "260", "5", true),
            item(2, 1, 1, "1", "40", "0", false),
            item(2, 2, 3, "6", "25", "1.50", false),
            item(3, 1, 3, "3", "25", "0", false),
            item(4, 1, 4, "1", "90", "0", false),
        ] {
            run(&statement);
        }
        run(&format!(
            "INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
             VALUES ('a1000000-0000-4000-8000-000000000001', '{STORE_A}', {s2}, 50, 1.37);
             INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
             VALUES ('a2000000-0000-4000-8000-000000000001', 'a1000000-0000-4000-8000-000000000001',
                     ('e0000000-0000-4000-8000-' || lpad('22', 12, '0'))::uuid, {p3}, 2, 50, 1.37)",
            s2 = sale_id(2), p3 = product(3)
        ));
        run(WAREHOUSE_ORACLE);

        let refused: String = scalar("SELECT pg_temp.analytics_test_message('SELECT analytics.etl_load_sales()')").unwrap();
        assert!(refused.contains("not enabled") && refused.contains("enable_warehouse()"), "{refused}");
        let enabled: pgrx::JsonB = scalar("SELECT analytics.enable_warehouse(NULL)").unwrap();
        assert_eq!(enabled.0["full_load_pending"], true, "{}", enabled.0);

        let first = etl();
        assert_eq!((first["mode"].as_str(), first["facts_inserted"].as_i64()), (Some("full"), Some(6)), "{first}");
        assert_warehouse_exact("after the first load");
        // The category × month report is the plain question over LA-CAJA's tables (no
        // product has changed yet, so today's category is the one at the time of sale).
        let plain: Option<String> = scalar(&format!(
            "SELECT string_agg(concat_ws(' ', month, category, n, round(revenue, 4)), '; ' ORDER BY month, category) FROM (
                 SELECT date_trunc('month', s.sold_at AT TIME ZONE 'America/Caracas')::date AS month, p.category,
                        count(DISTINCT s.id) AS n,
                        sum(i.unit_price_bs * i.qty - i.discount_bs - coalesce((SELECT sum(x.total_bs) FROM sale_return_items x
                                                                                 WHERE x.sale_item_id = i.id), 0)) AS revenue
                 FROM sales s JOIN sale_items i ON i.sale_id = s.id JOIN products p ON p.id = i.product_id
                 WHERE s.voided_at IS NULL AND s.store_id = '{STORE_A}' GROUP BY 1, 2) q"
        ));
        let report: Option<String> = scalar(&format!(
            "SELECT string_agg(concat_ws(' ', month, category, sales_count, round(revenue_bs, 4)), '; ' ORDER BY month, category)
             FROM analytics.report_sales_by_category_month('{STORE_A}')"
        ));
        assert_eq!(report, plain);
        assert!(report.unwrap().contains("2026-10-01 víveres 2 120"), "Harina PAN: 2×40 + 1×40");

        let again = etl();
        assert_eq!(
            (again["changes"].as_i64(), again["facts_inserted"].as_i64(), again["facts_updated"].as_i64(), again["facts_deleted"].as_i64()),
            (Some(0), Some(0), Some(0), Some(0)),
            "a second run changes nothing: {again}"
        );

        // A rename and a category change open a version at that moment. A sale an offline
        // register made before it, synced after, belongs to the old version; one made after
        // it, to the new one.
        run(&format!("UPDATE products SET name = 'Harina P.A.N. 1kg', category = 'harinas' WHERE id = {}", product(1)));
        run(&format!(
            "INSERT INTO sales (id, store_id, sold_at, exchange_rate, totals, payment)
             VALUES ({late}, '{STORE_A}', clock_timestamp() - interval '2 hours', 36.5, '{{\"total_bs\": 40}}', '{{\"method\": \"CASH_BS\"}}'),
                    ({after}, '{STORE_A}', clock_timestamp() + interval '1 second', 36.5, '{{\"total_bs\": 40}}', '{{\"method\": \"FIAO\"}}')",
            late = sale_id(5), after = sale_id(6)
        ));
        run(&item(5, 1, 1, "1", "40", "0", false));
        run(&item(6, 1, 1, "1", "40", "0", false));
        // A void, a deleted sale, an item's quantity corrected, a sale moved to a past day.
        run(&format!("UPDATE sales SET voided_at = now() WHERE id = {}", sale_id(3)));
        run(&format!("DELETE FROM sales WHERE id = {}", sale_id(4)));
        run("UPDATE sale_items SET qty = 3 WHERE id = ('e0000000-0000-4000-8000-' || lpad('11', 12, '0'))::uuid");
        run(&format!("UPDATE sales SET sold_at = sold_at - interval '40 days' WHERE id = {}", sale_id(2)));
        // A totals rewrite alone (a return's) changes no fact: nothing is logged for it.
        let logged: i64 = scalar("SELECT count(*) FROM analytics_internal.warehouse_changes").unwrap();
        run(&format!("UPDATE sales SET totals = totals || '{{\"total_bs\": 1}}' WHERE id = {}", sale_id(1)));
        assert_eq!(scalar::<i64>("SELECT count(*) FROM analytics_internal.warehouse_changes").unwrap(), logged);

        let third = etl();
        assert_eq!(third["product_versions_opened"].as_i64(), Some(1), "{third}");
        assert_eq!(third["facts_deleted"].as_i64(), Some(1), "sale 4's item: {third}");
        assert_warehouse_exact("after versions, a void, a delete, an edit and a moved sale");
        let names: String = scalar(&format!(
            "SELECT string_agg(v.name || '/' || v.version, ',' ORDER BY f.sale_id)
             FROM analytics.fact_sales f JOIN analytics.dim_product v ON v.product_key = f.product_key
             WHERE f.sale_id IN ({}, {})",
            sale_id(5),
            sale_id(6)
        ))
        .unwrap();
        assert_eq!(names, "Harina PAN/1,Harina P.A.N. 1kg/2");
        let voided: bool = scalar(&format!("SELECT bool_and(is_voided) FROM analytics.fact_sales WHERE sale_id = {}", sale_id(3))).unwrap();
        assert!(voided, "a void flags the facts and keeps them");

        // Un-void, a store's new zone (its facts are re-dated), and re-attaching: exact again,
        // and no reload for an attach that missed nothing.
        run(&format!("UPDATE sales SET voided_at = NULL WHERE id = {}", sale_id(3)));
        run(&format!("SELECT analytics.set_store_timezone('{STORE_A}', 'America/Bogota')"));
        run("SELECT analytics.attach('pos')");
        let fourth = etl();
        assert_eq!((fourth["mode"].as_str(), fourth["stores_rezoned"].as_i64()), (Some("incremental"), Some(1)), "{fourth}");
        assert_warehouse_exact("after an un-void, a new zone and attach()");
        let date: String = scalar(&format!("SELECT min(sale_date)::text FROM analytics.fact_sales WHERE sale_id = {}", sale_id(3))).unwrap();
        assert_eq!(date, "2026-10-31", "00:10 in Caracas is 23:10 the day before in Bogotá");

        // Detached, changes are not captured: the next run reloads everything.
        run("SELECT analytics.detach()");
        let detached: String = scalar("SELECT pg_temp.analytics_test_message('SELECT analytics.etl_load_sales()')").unwrap();
        assert!(detached.contains("detached") && detached.contains("analytics.attach("), "{detached}");
        run(&format!("UPDATE sales SET voided_at = now() WHERE id = {}", sale_id(1)));
        run("SELECT analytics.attach('pos')");
        let fifth = etl();
        assert_eq!(fifth["mode"].as_str(), Some("full"), "{fifth}");
        assert_warehouse_exact("after a reload");
        let versions: i64 = scalar("SELECT count(*) FROM analytics.dim_product").unwrap();
        assert_eq!(versions, 5, "a reload keeps the product history and adds no version");
    }
}
