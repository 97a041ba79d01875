//! In-transaction tests of sql/restore.sql: the capture re-established when pg_restore creates
//! its triggers, triggers of the same name elsewhere left unbound, and writes made with
//! triggers off (session_replication_role = replica) noted, reported and repaired.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::tests::{assert_matches_oracle, lacaja_pos, run, sale, sale_id, scalar, STORE_A, STORE_B};
    use pgrx::prelude::*;

    fn capture_status() -> String {
        scalar("SELECT status || ': ' || detail FROM analytics.health() WHERE check_name = 'capture'").unwrap()
    }

    fn products_and_items() {
        run(&format!(
            "INSERT INTO products (id, store_id, name, cost_bs, cost_usd)
             VALUES ('f0000000-0000-4000-8000-000000000001', '{STORE_A}', 'harina', 30, 0.8)"
        ));
        run(&sale(1, STORE_A, "2026-03-01 10:15:00-04", "100.00", "CASH_BS", Some(1)));
        run(&format!(
            "INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd, discount_bs, discount_usd)
             VALUES ('a1000000-0000-4000-8000-000000000001', {s1}, 'f0000000-0000-4000-8000-000000000001', 2, 36.5, 1, 0, 0)",
            s1 = sale_id(1)
        ));
    }

    /// What a restore leaves before its post-data section: the generated bodies of a fresh
    /// install and triggers that are not bound (pg_restore creates them as plain triggers).
    #[pg_test]
    fn triggers_created_by_a_restore_re_establish_the_capture() {
        lacaja_pos();
        products_and_items();
        let definitions: Vec<String> = Spi::connect(|client| {
            client
                .select("SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t
                         WHERE t.tgrelid = 'pos.sales'::regclass AND t.tgname LIKE 'lacaja\\_analytics\\_sales\\_%' ORDER BY t.tgname",
                        None, &[])
                .unwrap()
                .map(|row| row.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        assert_eq!(definitions.len(), 6, "{definitions:?}");
        run("DROP TRIGGER lacaja_analytics_sales_insert ON pos.sales; DROP TRIGGER lacaja_analytics_sales_update ON pos.sales;
             DROP TRIGGER lacaja_analytics_sales_delete ON pos.sales; DROP TRIGGER lacaja_analytics_sales_truncate ON pos.sales;
             DROP TRIGGER lacaja_analytics_sales_replica ON pos.sales; DROP TRIGGER lacaja_analytics_sales_replica_truncate ON pos.sales;
             DELETE FROM analytics_internal.capture_established;
             SELECT analytics_internal._set_fold_rows_body('BEGIN RETURN; END')");
        let status = capture_status();
        assert!(status.starts_with("problem: the capture was not rebuilt"), "{status}");

        // pg_restore's post-data: the triggers come back one by one, as pg_dump wrote them
        // (a trigger's firing mode in a statement of its own).
        for definition in &definitions {
            run(definition);
        }
        run("ALTER TABLE pos.sales ENABLE ALWAYS TRIGGER lacaja_analytics_sales_replica;
             ALTER TABLE pos.sales ENABLE ALWAYS TRIGGER lacaja_analytics_sales_replica_truncate");
        let status = capture_status();
        assert!(status.starts_with("ok: attached to schema pos"), "{status}");
        let bound: i64 = scalar(
            "SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = 'pos.sales'::regclass AND t.tgname LIKE 'lacaja\\_analytics\\_sales\\_%'
               AND analytics_internal._is_extension_trigger(t.tgrelid, t.tgname)",
        )
        .unwrap();
        assert_eq!(bound, 6);
        run(&sale(2, STORE_A, "2026-03-02 10:15:00-04", "40.00", "CASH_BS", None));
        assert_eq!(scalar::<i64>("SELECT sum(sales_count)::bigint FROM analytics.sales_daily"), Some(2));
        assert_matches_oracle();

        // The same trigger on another table is nobody's: not bound, and its TRUNCATE refused.
        crate::pg_tests::tests::outcome_helper();
        run("CREATE TABLE pos.scratch (id int)");
        run("CREATE TRIGGER lacaja_analytics_sales_truncate AFTER TRUNCATE ON pos.scratch
             FOR EACH STATEMENT EXECUTE FUNCTION analytics_internal._capture_truncate('sales')");
        assert_eq!(scalar::<bool>("SELECT analytics_internal._is_extension_trigger('pos.scratch'::regclass, 'lacaja_analytics_sales_truncate')"),
                   Some(false));
        crate::pg_tests::tests::assert_fails("TRUNCATE pos.scratch", "42501");
        assert_eq!(scalar::<i64>("SELECT sum(sales_count)::bigint FROM analytics.sales_daily"), Some(2));
    }

    #[pg_test]
    fn writes_with_triggers_off_are_noted_reported_and_repaired() {
        lacaja_pos();
        products_and_items();
        run("SET LOCAL session_replication_role = replica");
        run(&sale(2, STORE_B, "2025-12-24 20:00:00-04", "75.00", "CASH_USD", None));
        run(&format!("UPDATE sale_items SET qty = 3 WHERE sale_id = {}", sale_id(1)));
        run(&format!(
            "INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta)
             VALUES (gen_random_uuid(), '{STORE_A}', 'f0000000-0000-4000-8000-000000000001', 'received', 12)"
        ));
        run("SET LOCAL session_replication_role = origin");
        let noted: String = scalar(
            "SELECT string_agg(source || ':' || coalesce(store_id::text, '-') || ':' || coalesce(utc_day::text, '-') || ':' || coalesce(sale_id::text, '-'),
                               ' ' ORDER BY source) FROM analytics_internal.replica_writes",
        )
        .unwrap();
        assert_eq!(
            noted,
            format!("items:-:-:{s1} sales:{STORE_B}:2025-12-25:- stock:{STORE_A}:-:-", s1 = "d0000000-0000-4000-8000-000000000001")
        );
        let verify: i64 = scalar("SELECT count(*) FROM analytics.verify()").unwrap();
        assert!(verify >= 3, "the rollups miss the three writes until repaired ({verify})");
        let said: String = scalar("SELECT status || ': ' || detail || ' / ' || hint FROM analytics.health() WHERE check_name = 'writes with triggers off'").unwrap();
        assert!(said.starts_with("problem: 3 key(s)") && said.contains("Add a continuous-aggregate policy"), "{said}");

        let repaired: pgrx::JsonB = scalar("SELECT analytics_internal._repair_replica_writes()").unwrap();
        assert_eq!(repaired.0["noted"], 3, "{}", repaired.0);
        assert_matches_oracle();
        assert_eq!(scalar::<i64>("SELECT count(*) FROM analytics_internal.replica_writes"), Some(0));
        assert_eq!(scalar::<i64>("SELECT count(*) FROM analytics.health() WHERE check_name = 'writes with triggers off'"), Some(0));

        // A TRUNCATE with triggers off: everything is compared again.
        run("SET LOCAL session_replication_role = replica");
        run("TRUNCATE inventory_movements");
        run("SET LOCAL session_replication_role = origin");
        let repaired: pgrx::JsonB = scalar("SELECT analytics_internal._repair_replica_writes()").unwrap();
        assert_eq!(repaired.0["repairs"][0]["store_id"], serde_json::Value::Null, "{}", repaired.0);
        assert_matches_oracle();
    }

    /// Names reach `--` comments of generated SECURITY DEFINER bodies: a newline in a schema's
    /// or a foreign key's name must not end the comment and make the rest of the name code run
    /// with the extension's rights.
    #[pg_test]
    fn a_newline_in_a_name_stays_in_the_generated_comment() {
        lacaja_pos();
        run("CREATE TABLE public.canary (x int)");
        run("SELECT analytics.detach()");
        run("ALTER SCHEMA pos RENAME TO \"pos
DROP TABLE public.canary; --\"");
        run("SELECT analytics.attach(E'pos\nDROP TABLE public.canary; --')");
        run("SELECT count(*) FROM analytics.product_stock; SELECT count(*) FROM analytics.inventory_metrics;
             SELECT count(*) FROM analytics.mv_customer_metrics; SELECT count(*) FROM analytics.stock_drift()");
        run("CREATE TABLE public.fk_parent (id int PRIMARY KEY, at timestamptz NOT NULL);
             INSERT INTO public.fk_parent VALUES (1, '2026-01-01');
             CREATE TABLE public.fk_child (parent_id int);
             ALTER TABLE public.fk_child ADD CONSTRAINT \"fk
DROP TABLE public.canary; --\" FOREIGN KEY (parent_id) REFERENCES public.fk_parent;
             SELECT analytics.create_hypertable('public.fk_parent', 'at', INTERVAL '1 day', migrate_data => true,
                                                extend_unique => true, replace_foreign_keys => true);
             INSERT INTO public.fk_child VALUES (1)");
        let generated: i64 =
            scalar("SELECT count(*) FROM analytics_internal.replaced_foreign_keys WHERE check_function IS NOT NULL AND child = 'public.fk_child'::regclass")
                .unwrap();
        assert_eq!(generated, 1, "the key got its generated check");
        let canary: bool = scalar("SELECT to_regclass('public.canary') IS NOT NULL").unwrap();
        assert!(canary, "a name's newline ended a comment and ran the rest as code");
    }

    /// The schema's name reaches the generated triggers and the repair's dynamic SQL: a hostile
    /// one stays an identifier (quoted once), and the noted keys are repaired all the same.
    #[pg_test]
    fn a_hostile_schema_name_stays_an_identifier_in_noting_and_repairing() {
        lacaja_pos();
        products_and_items();
        run("CREATE TABLE public.canary (x int)");
        run("SELECT analytics.detach()");
        run(r#"ALTER SCHEMA pos RENAME TO "pos""; DROP TABLE public.canary; --""#);
        run(r#"SET LOCAL search_path = "pos""; DROP TABLE public.canary; --", public"#);
        run(r#"SELECT analytics.attach('pos"; DROP TABLE public.canary; --')"#);
        run("SELECT analytics.refresh_all()");
        let replica_triggers: i64 = scalar(
            "SELECT count(*) FROM pg_trigger t WHERE t.tgname LIKE 'lacaja\\_analytics\\_%\\_replica%' AND t.tgenabled = 'A'
               AND analytics_internal._is_extension_trigger(t.tgrelid, t.tgname)",
        )
        .unwrap();
        assert_eq!(replica_triggers, 8, "two noting triggers on each of the four captured tables, bound, ENABLE ALWAYS");
        run("SET LOCAL session_replication_role = replica");
        run(&sale(3, STORE_B, "2026-01-10 12:00:00-04", "20.00", "CASH_BS", None));
        run(&format!("UPDATE sale_items SET qty = 5 WHERE sale_id = {}", sale_id(1)));
        run("SET LOCAL session_replication_role = origin");
        let repaired: pgrx::JsonB = scalar("SELECT analytics_internal._repair_replica_writes()").unwrap();
        assert_eq!(repaired.0["noted"], 2, "{}", repaired.0);
        assert_eq!(scalar::<bool>("SELECT to_regclass('public.canary') IS NOT NULL"), Some(true));
        assert_matches_oracle();
    }
}
