//! In-transaction tests of unique indexes kept across chunks (create_hypertable(replace_unique
//! => true), sql/timeseries.sql "Unique keys across chunks"): LA-CAJA's invoice numbers stay
//! unique over every chunk, the generated trigger is the expected one, and what cannot be kept
//! that way is refused with its reason.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::tests::{assert_fails, lacaja_pos, outcome_helper, run, sale, scalar, STORE_A, STORE_B};
    use pgrx::prelude::*;

    /// Sales with invoice numbers on days far apart (so in different chunks), then `pos.sales`
    /// converted with replace_unique (in this transaction: the conversion's plain mode).
    fn sales_hypertable() {
        lacaja_pos();
        outcome_helper();
        for (i, (store, at)) in [(STORE_A, "2026-01-10 10:00+00"), (STORE_A, "2026-03-10 10:00+00"), (STORE_B, "2026-03-10 11:00+00")]
            .iter()
            .enumerate()
        {
            run(&sale(i as u32 + 1, store, at, "10", "CASH_BS", None));
        }
        run("UPDATE pos.sales SET sale_number = 7 WHERE sold_at < '2026-02-01'");
        run(&format!("UPDATE pos.sales SET sale_number = 7 WHERE store_id = '{STORE_B}'"));
        run("SELECT analytics.create_hypertable('pos.sales', 'sold_at', INTERVAL '1 day', migrate_data => true,
                 extend_unique => true, replace_foreign_keys => true, replace_unique => true)");
    }

    #[pg_test]
    fn an_invoice_number_stays_unique_across_chunks() {
        sales_hypertable();
        let kind: String = scalar("SELECT relkind::text FROM pg_class WHERE oid = 'pos.sales'::regclass").unwrap();
        assert_eq!(kind, "p");
        let registered: i64 =
            scalar("SELECT count(*) FROM analytics_internal.idx_sales_store_sale_number_keys").unwrap();
        assert_eq!(registered, 2, "the two numbered sales present at the conversion");
        // Store A's number 7 is in January's chunk; a sale of March with the same number in the
        // same store is refused with the original index's name, one in store B is a duplicate too.
        let duplicate = format!(
            "INSERT INTO pos.sales (id, store_id, sold_at, totals, payment, sale_number)
             VALUES (gen_random_uuid(), '{STORE_A}', '2026-03-11 10:00+00', '{{\"total_bs\": 1}}', '{{\"method\": \"CASH_BS\"}}', 7)"
        );
        assert_fails(&duplicate, "23505");
        let message: String =
            scalar(&format!("SELECT pg_temp.analytics_test_message({})", pgrx::spi::quote_literal(&duplicate))).unwrap();
        assert!(message.contains("idx_sales_store_sale_number") && message.contains("already exists"), "{message}");
        assert_fails(&duplicate.replace(STORE_A, STORE_B), "23505");
        // Another number, or none, is accepted; renumbering frees the old number.
        run(&duplicate.replace(", 7)", ", 8)"));
        run(&duplicate.replace(", 7)", ", NULL)"));
        run(&duplicate.replace(", 7)", ", NULL)"));
        run(&format!("UPDATE pos.sales SET sale_number = 9 WHERE store_id = '{STORE_A}' AND sale_number = 7"));
        run(&duplicate);
        // Two rows of one statement with one number: refused as a whole.
        assert_fails(
            &format!(
                "INSERT INTO pos.sales (id, store_id, sold_at, totals, payment, sale_number)
                 SELECT gen_random_uuid(), '{STORE_B}', now() - i * interval '40 days', '{{}}', '{{}}', 20 FROM generate_series(1, 2) i"
            ),
            "23505",
        );
        // Deleting a sale frees its number; the registry follows every write.
        run(&format!("DELETE FROM pos.sales WHERE store_id = '{STORE_B}' AND sale_number = 7"));
        run(&duplicate.replace(STORE_A, STORE_B));
        let drift: i64 = scalar(
            "SELECT count(*) FROM ((SELECT store_id, sale_number FROM pos.sales WHERE sale_number IS NOT NULL
                                    EXCEPT ALL SELECT store_id, sale_number FROM analytics_internal.idx_sales_store_sale_number_keys)
                                   UNION ALL (SELECT store_id, sale_number FROM analytics_internal.idx_sales_store_sale_number_keys
                                    EXCEPT ALL SELECT store_id, sale_number FROM pos.sales WHERE sale_number IS NOT NULL)) d",
        )
        .unwrap();
        assert_eq!(drift, 0, "the registry holds exactly the numbered sales");
        // A lookup by number still has its index, now per chunk.
        let indexed: bool = scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                            WHERE i.indrelid = 'pos.sales'::regclass AND c.relname = 'idx_sales_store_sale_number' AND NOT i.indisunique)",
        )
        .unwrap();
        assert!(indexed);
    }

    #[pg_test]
    fn retention_and_truncate_take_their_keys_with_them() {
        sales_hypertable();
        run("SELECT count(*) FROM analytics.drop_chunks('pos.sales', '2026-02-01'::timestamptz)");
        let left: i64 = scalar("SELECT count(*) FROM analytics_internal.idx_sales_store_sale_number_keys").unwrap();
        assert_eq!(left, 1, "January's number left with its chunk");
        run(&format!(
            "INSERT INTO pos.sales (id, store_id, sold_at, totals, payment, sale_number)
             VALUES (gen_random_uuid(), '{STORE_A}', '2026-03-12 10:00+00', '{{}}', '{{}}', 7)"
        ));
        run("TRUNCATE pos.sales CASCADE");
        let left: i64 = scalar("SELECT count(*) FROM analytics_internal.idx_sales_store_sale_number_keys").unwrap();
        assert_eq!(left, 0);
    }

    /// The registry's trigger function as generated for LA-CAJA's invoice numbers
    /// (`tests/expected/unique_registry_trigger.sql`; when a change is intended, replace the file
    /// with the text this test prints).
    #[pg_test]
    fn the_generated_registry_trigger_is_the_expected_one() {
        sales_hypertable();
        let actual: String =
            scalar("SELECT pg_get_functiondef('analytics_internal.idx_sales_store_sale_number_keys'::regproc)").unwrap();
        let expected = include_str!("../tests/expected/unique_registry_trigger.sql");
        assert!(actual.trim_end() == expected.trim_end(), "the registry trigger differs from tests/expected; it is now:\n{actual}");
    }

    #[pg_test]
    fn what_a_registry_cannot_keep_is_refused_with_its_reason() {
        lacaja_pos();
        outcome_helper();
        for (index, reason) in [
            ("CREATE UNIQUE INDEX pos_sales_note ON pos.sales (lower(note))", "it indexes expressions"),
            ("CREATE UNIQUE INDEX pos_sales_note ON pos.sales (note) WHERE voided_at IS NULL", "more than \"key column IS NOT NULL\""),
            ("CREATE UNIQUE INDEX pos_sales_note ON pos.sales (note text_pattern_ops)", "operator class"),
        ] {
            run(index);
            let message: String = scalar(
                "SELECT pg_temp.analytics_test_message('SELECT analytics.create_hypertable(''pos.sales'', ''sold_at'',
                     extend_unique => true, replace_foreign_keys => true, replace_unique => true)')",
            )
            .unwrap();
            assert!(message.contains("pos_sales_note") && message.contains(reason), "{index}: {message}");
            run("DROP INDEX pos.pos_sales_note");
        }
        let kind: String = scalar("SELECT relkind::text FROM pg_class WHERE oid = 'pos.sales'::regclass").unwrap();
        assert_eq!(kind, "r", "nothing changed");
    }

    /// Updates: a void leaves the registry alone; two rows given one number in one statement
    /// collide; swapping two numbers in one statement is accepted.
    #[pg_test]
    fn updates_change_only_the_keys_they_change() {
        sales_hypertable();
        run(&format!("UPDATE pos.sales SET sale_number = 8 WHERE store_id = '{STORE_A}' AND sale_number IS NULL"));
        run(&format!("UPDATE pos.sales SET voided_at = now() WHERE store_id = '{STORE_A}'"));
        let registered: i64 = scalar("SELECT count(*) FROM analytics_internal.idx_sales_store_sale_number_keys").unwrap();
        assert_eq!(registered, 3);
        assert_fails(&format!("UPDATE pos.sales SET sale_number = 7 WHERE store_id = '{STORE_A}'"), "23505");
        run(&format!("UPDATE pos.sales SET sale_number = 15 - sale_number WHERE store_id = '{STORE_A}'"));
        let numbers: String = scalar(&format!(
            "SELECT string_agg(sale_number::text, ',' ORDER BY sale_number) FROM analytics_internal.idx_sales_store_sale_number_keys
             WHERE store_id = '{STORE_A}'"
        ))
        .unwrap();
        assert_eq!(numbers, "7,8", "swapped in one statement");
    }

    /// Names are identifiers, never SQL: a table and an index named with quotes, a semicolon
    /// and a comment marker get a registry that works, and nothing else runs.
    #[pg_test]
    fn hostile_names_stay_identifiers() {
        lacaja_pos();
        outcome_helper();
        run(r#"CREATE TABLE pos."odd""; DROP TABLE pos.sales; --" (at timestamptz NOT NULL, "co""de; --" text);
               CREATE UNIQUE INDEX "u""; DROP TABLE pos.sales; --" ON pos."odd""; DROP TABLE pos.sales; --" ("co""de; --")
                   WHERE "co""de; --" IS NOT NULL;
               INSERT INTO pos."odd""; DROP TABLE pos.sales; --" VALUES ('2026-01-01', 'x');"#);
        run(r#"SELECT analytics.create_hypertable('pos."odd""; DROP TABLE pos.sales; --"', 'at', INTERVAL '1 day',
                   migrate_data => true, replace_unique => true)"#);
        assert_fails(r#"INSERT INTO pos."odd""; DROP TABLE pos.sales; --" VALUES ('2026-03-01', 'x')"#, "23505");
        run(r#"INSERT INTO pos."odd""; DROP TABLE pos.sales; --" VALUES ('2026-03-01', 'y')"#);
        let sales_still_there: bool = scalar("SELECT to_regclass('pos.sales') IS NOT NULL").unwrap();
        assert!(sales_still_there);
    }
}
