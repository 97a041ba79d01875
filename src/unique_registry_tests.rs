//! In-transaction tests of unique indexes kept across chunks (create_hypertable(replace_unique
//! => true), sql/timeseries.sql "Unique keys across chunks"): LA-CAJA's invoice numbers stay
//! unique over every chunk, the generated trigger is the expected one, and what cannot be kept
//! that way is refused with its reason.

#[pgrx::pg_schema]
mod tests {
    use crate::pg_tests::tests::{assert_fails, lacaja_pos, outcome_helper, run, sale, sale_id, scalar, STORE_A, STORE_B};
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

    /// The check generated for LA-CAJA's `sale_items.sale_id` once `sales` keeps a registry of
    /// its ids and times (`tests/expected/foreign_key_check.sql`, the child's oid written
    /// `<child>`; when a change is intended, replace the file with the text this test prints).
    #[pg_test]
    fn the_generated_foreign_key_check_is_the_expected_one() {
        sales_hypertable();
        let actual: String = scalar(
            "SELECT regexp_replace(pg_get_functiondef(f.check_function), '_check_[0-9]+', '_check_<child>', 'g')
             FROM analytics_internal.replaced_foreign_keys f WHERE f.constraint_name = 'sale_items_sale_id_fkey'",
        )
        .unwrap();
        let expected = include_str!("../tests/expected/foreign_key_check.sql");
        assert!(actual.trim_end() == expected.trim_end(), "the foreign key check differs from tests/expected; it is now:\n{actual}");
    }

    /// Items need their sale in whatever chunk it is, through the registry of sale ids; the ids
    /// stay unique across chunks; a deleted sale takes its items and its id; a child column of
    /// another type keeps the generic check over the chunks.
    #[pg_test]
    fn a_replaced_foreign_key_finds_its_parent_in_the_registry() {
        sales_hypertable();
        let kept: i64 = scalar("SELECT count(*) FROM analytics_internal.sales_pkey_keys").unwrap();
        assert_eq!(kept, 3, "every sale's id");
        let checks: i64 = scalar(
            "SELECT count(*) FROM analytics_internal.replaced_foreign_keys
             WHERE parent = 'pos.sales'::regclass AND check_function IS NOT NULL",
        )
        .unwrap();
        let replaced: i64 = scalar("SELECT count(*) FROM analytics_internal.replaced_foreign_keys WHERE parent = 'pos.sales'::regclass").unwrap();
        assert!(replaced > 5 && checks == replaced, "{checks} of {replaced} replaced keys probe the registry");
        let item = |sale: &str| {
            format!(
                "INSERT INTO pos.sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
                 SELECT gen_random_uuid(), {sale}, p.id, 1, 10, 0.27 FROM pos.products p LIMIT 1"
            )
        };
        run(&format!(
            "INSERT INTO pos.products (id, store_id, name, price_bs, price_usd, cost_bs, cost_usd)
             VALUES (gen_random_uuid(), '{STORE_A}', 'p', 10, 0.27, 5, 0.13)"
        ));
        // January's sale is in another chunk than March's
        run(&item(&sale_id(1)));
        run(&item(&sale_id(2)));
        assert_fails(&item("gen_random_uuid()"), "23503");
        let message: String = scalar(&format!(
            "SELECT pg_temp.analytics_test_message({})",
            pgrx::spi::quote_literal(&item("'e0000000-0000-4000-8000-000000000001'::uuid"))
        ))
        .unwrap();
        assert!(message.contains("sale_items_sale_id_fkey"), "{message}");
        // moving an item to a sale that does not exist, or to one that does
        assert_fails(&format!("UPDATE pos.sale_items SET sale_id = gen_random_uuid() WHERE sale_id = {}", sale_id(1)), "23503");
        run(&format!("UPDATE pos.sale_items SET sale_id = {} WHERE sale_id = {}", sale_id(3), sale_id(1)));
        // a sale's id stays unique across chunks (the original primary key)
        assert_fails(
            // (sale 1 has no items left, so no foreign key stops it first)
            &format!("UPDATE pos.sales SET id = {} WHERE id = {}", sale_id(2), sale_id(1)),
            "23505",
        );
        // a deleted sale takes its items (ON DELETE CASCADE) and its id
        run(&format!("DELETE FROM pos.sales WHERE id = {}", sale_id(2)));
        let left: i64 = scalar(&format!(
            "SELECT (SELECT count(*) FROM pos.sale_items WHERE sale_id = {id}) + (SELECT count(*) FROM analytics_internal.sales_pkey_keys WHERE id = {id})",
            id = sale_id(2)
        ))
        .unwrap();
        assert_eq!(left, 0);
        assert_fails(&item(&sale_id(2)), "23503");
    }

    #[pg_test]
    fn a_foreign_key_of_another_type_keeps_the_generic_check() {
        outcome_helper();
        run("CREATE SCHEMA fkt;
             CREATE TABLE fkt.parent (id int PRIMARY KEY, at timestamptz NOT NULL);
             CREATE TABLE fkt.child (parent_id bigint REFERENCES fkt.parent);
             INSERT INTO fkt.parent SELECT i, '2026-01-01'::timestamptz + i * interval '1 day' FROM generate_series(1, 3) i;
             SELECT analytics.create_hypertable('fkt.parent', 'at', INTERVAL '1 day', migrate_data => true,
                                                extend_unique => true, replace_foreign_keys => true);");
        let generic: bool = scalar(
            "SELECT check_function IS NULL FROM analytics_internal.replaced_foreign_keys WHERE parent = 'fkt.parent'::regclass",
        )
        .unwrap();
        assert!(generic);
        run("INSERT INTO fkt.child VALUES (2), (NULL)");
        assert_fails("INSERT INTO fkt.child VALUES (9)", "23503");
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
