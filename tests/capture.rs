//! The capture folds a transaction's changes once, at commit (src/capture): every way a
//! transaction can end, or end in part, must leave the rollups equal to their definition.
//! Savepoints, PL/pgSQL exception blocks, two-phase commit, a sale inserted and deleted or
//! updated many times in one transaction, TRUNCATE, LA-CAJA's own triggers writing sales, a
//! transaction of a million rows (with the backend's memory measured).

mod common;

use common::workload::{assert_exact, insert_sales, seed_products};
use common::{connect, lacaja_database, Rng, STORES};
use postgres::error::SqlState;

fn count(db: &mut postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap().get(0)
}

/// One POS sale with two items, as SQL (id given).
fn sale_with_items(id: &str, store: &str, total: &str) -> String {
    format!(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment)
         VALUES ('{id}', '{store}', now() - interval '1 hour',
                 '{{\"subtotal_bs\": {total}, \"total_bs\": {total}, \"total_usd\": 1.5}}', '{{\"method\": \"CASH_BS\"}}');
         INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
         SELECT gen_random_uuid(), '{id}', p.id, 2, p.price_bs, p.price_usd
         FROM products p WHERE p.store_id = '{store}' ORDER BY p.id LIMIT 2;"
    )
}

fn uuid(n: u64) -> String {
    format!("5a1e0000-0000-4000-8000-{n:012}")
}

#[test]
fn savepoints_and_exception_blocks_drop_exactly_their_changes() {
    let seed = common::seed();
    let database = "lacaja_test_savepoints";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let store = STORES[0].0;
    db.batch_execute(&sale_with_items(&uuid(1), store, "10.00")).unwrap();

    // Nested savepoints, rolled back and released, around every kind of change.
    db.batch_execute(&format!(
        "BEGIN;
         {s2}
         SAVEPOINT a;
           {s3}
           UPDATE sales SET voided_at = now() WHERE id = '{one}';
           SAVEPOINT b;
             {s4}
             DELETE FROM sale_items WHERE sale_id = '{two}';
           RELEASE SAVEPOINT b;
           SAVEPOINT c;
             UPDATE sales SET totals = totals || '{{\"total_bs\": 99}}' WHERE id = '{two}';
             INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta)
             SELECT gen_random_uuid(), '{store}', id, 'adjust', 7 FROM products WHERE store_id = '{store}' LIMIT 1;
           ROLLBACK TO SAVEPOINT c;
           WITH r AS (INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
                      VALUES (gen_random_uuid(), '{store}', '{three}', 5, 0.1) RETURNING id)
           INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
           SELECT gen_random_uuid(), r.id, i.id, i.product_id, 1, 5, 0.1
           FROM r, LATERAL (SELECT * FROM sale_items WHERE sale_id = '{three}' ORDER BY id LIMIT 1) i;
         ROLLBACK TO SAVEPOINT a;
         WITH r AS (INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
                    VALUES (gen_random_uuid(), '{store}', '{one}', 5, 0.1) RETURNING id)
         INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
         SELECT gen_random_uuid(), r.id, i.id, i.product_id, 1, 5, 0.1
         FROM r, LATERAL (SELECT * FROM sale_items WHERE sale_id = '{one}' ORDER BY id LIMIT 1) i;
         SAVEPOINT d;
           UPDATE sales SET sold_at = sold_at - interval '3 days' WHERE id = '{two}';
         RELEASE SAVEPOINT d;
         SAVEPOINT e;
           UPDATE sales SET sold_at = sold_at - interval '9 days' WHERE id = '{one}';
           SAVEPOINT f;
             UPDATE sales SET voided_at = now() WHERE id = '{one}';
           ROLLBACK TO SAVEPOINT f;
         RELEASE SAVEPOINT e;
         COMMIT;",
        s2 = sale_with_items(&uuid(2), store, "20.00"),
        s3 = sale_with_items(&uuid(3), store, "30.00"),
        s4 = sale_with_items(&uuid(4), store, "40.00"),
        one = uuid(1),
        two = uuid(2),
        three = uuid(3),
    ))
    .unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM sales"), 2, "sales 3 and 4 were rolled back with savepoint a");
    assert_exact(&mut db, seed, "after nested savepoints");

    // A PL/pgSQL EXCEPTION block swallows a failed insert: its sale is gone, the rest counts.
    db.batch_execute(&format!(
        "DO $$
         BEGIN
             {s5}
             BEGIN
                 {s6}
                 INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
                 SELECT gen_random_uuid(), '{missing}', p.id, 1, 1, 1 FROM products p LIMIT 1;  -- no such sale: fails
             EXCEPTION WHEN foreign_key_violation THEN
                 NULL;
             END;
             {s7}
         END $$;",
        s5 = sale_with_items(&uuid(5), store, "50.00"),
        s6 = sale_with_items(&uuid(6), store, "60.00"),
        s7 = sale_with_items(&uuid(7), STORES[1].0, "70.00"),
        missing = uuid(999),
    ))
    .unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM sales"), 4, "sale 6 went with the exception block");
    assert_exact(&mut db, seed, "after an exception block swallowed a failed insert");

    // A driver's autosave: a savepoint around every statement, released; one statement fails.
    let mut tx = db.transaction().unwrap();
    for n in 10..20u64 {
        tx.batch_execute("SAVEPOINT autosave").unwrap();
        let outcome = if n == 15 {
            tx.batch_execute("INSERT INTO sales (id, store_id, sold_at, totals, payment) VALUES (NULL, NULL, now(), '{}', '{}')")
        } else {
            tx.batch_execute(&sale_with_items(&uuid(n), STORES[2].0, &format!("{n}.25")))
        };
        match outcome {
            Ok(()) => tx.batch_execute("RELEASE SAVEPOINT autosave").unwrap(),
            Err(e) => {
                assert_eq!(e.code(), Some(&SqlState::NOT_NULL_VIOLATION), "{e}");
                tx.batch_execute("ROLLBACK TO SAVEPOINT autosave").unwrap();
            }
        }
    }
    tx.commit().unwrap();
    assert_exact(&mut db, seed, "after a driver's autosave with one failed statement");
}

#[test]
fn one_transaction_inserting_deleting_and_updating_the_same_sale() {
    let seed = common::seed();
    let database = "lacaja_test_same_sale";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let store = STORES[1].0;
    db.batch_execute(&sale_with_items(&uuid(1), store, "10.00")).unwrap();

    // Inserted and deleted in the same transaction: no trace.
    db.batch_execute(&format!("BEGIN; {} DELETE FROM sales WHERE id = '{}'; COMMIT;", sale_with_items(&uuid(2), store, "5"), uuid(2)))
        .unwrap();
    // Deleted and inserted again under the same id, with other items.
    db.batch_execute(&format!("BEGIN; DELETE FROM sales WHERE id = '{one}'; {again} COMMIT;", one = uuid(1), again = sale_with_items(&uuid(1), STORES[2].0, "11")))
        .unwrap();
    assert_exact(&mut db, seed, "after a sale inserted and deleted, and one deleted and inserted again");

    // The same sale updated many times in one transaction: voided, restored, moved, retotalled.
    let mut tx = db.transaction().unwrap();
    tx.batch_execute(&sale_with_items(&uuid(3), store, "30.00")).unwrap();
    for round in 0..200 {
        let sql = match round % 5 {
            0 => "UPDATE sales SET voided_at = now() WHERE id = $1::text::uuid",
            1 => "UPDATE sales SET voided_at = NULL WHERE id = $1::text::uuid",
            2 => "UPDATE sales SET sold_at = sold_at - interval '7 hours' WHERE id = $1::text::uuid",
            3 => "UPDATE sales SET totals = jsonb_set(totals, '{total_bs}', to_jsonb(round(random()::numeric * 100, 2))) WHERE id = $1::text::uuid",
            _ => "UPDATE sale_items SET qty = qty + 1 WHERE sale_id = $1::text::uuid",
        };
        tx.execute(sql, &[&uuid(if round % 2 == 0 { 3 } else { 1 })]).unwrap();
    }
    tx.commit().unwrap();
    assert_exact(&mut db, seed, "after 200 updates of two sales in one transaction");

    // TRUNCATE inside a transaction that sold before and after it, and one rolled back.
    db.batch_execute(&format!(
        "BEGIN; {a} SAVEPOINT s; TRUNCATE sales CASCADE; ROLLBACK TO SAVEPOINT s; {b} COMMIT;",
        a = sale_with_items(&uuid(4), store, "4"),
        b = sale_with_items(&uuid(5), store, "5")
    ))
    .unwrap();
    assert_exact(&mut db, seed, "after a TRUNCATE rolled back to its savepoint");
    db.batch_execute(&format!(
        "BEGIN; {a} SAVEPOINT s; {b} TRUNCATE sales CASCADE; RELEASE SAVEPOINT s; {c} COMMIT;",
        a = sale_with_items(&uuid(6), store, "6"),
        b = sale_with_items(&uuid(7), store, "7"),
        c = sale_with_items(&uuid(8), store, "8")
    ))
    .unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM sales"), 1);
    assert_exact(&mut db, seed, "after a TRUNCATE between sales of one transaction");
}

#[test]
fn a_lacaja_trigger_on_another_table_writes_sales() {
    let seed = common::seed();
    let database = "lacaja_test_foreign_trigger";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    // As LA-CAJA's sync does: an event row becomes a sale, from a trigger on events.
    db.batch_execute(
        "CREATE FUNCTION public.event_to_sale() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.type = 'SaleCreated' THEN
                 INSERT INTO sales (id, store_id, sold_at, totals, payment)
                 VALUES ((NEW.payload ->> 'id')::uuid, NEW.store_id, NEW.created_at, NEW.payload -> 'totals', NEW.payload -> 'payment');
                 INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
                 SELECT gen_random_uuid(), (NEW.payload ->> 'id')::uuid, p.id, 1, p.price_bs, p.price_usd
                 FROM products p WHERE p.store_id = NEW.store_id LIMIT 3;
             ELSIF NEW.type = 'SaleVoided' THEN
                 UPDATE sales SET voided_at = NEW.created_at WHERE id = (NEW.payload ->> 'id')::uuid;
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER event_to_sale AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION public.event_to_sale();",
    )
    .unwrap();
    let mut rng = Rng::new(seed);
    for n in 0..300u64 {
        let store = STORES[(n % 3) as usize].0;
        let kind = if n > 10 && rng.chance(20) { "SaleVoided" } else { "SaleCreated" };
        let target = if kind == "SaleVoided" { uuid(rng.below(n)) } else { uuid(n) };
        let mut tx = db.transaction().unwrap();
        tx.execute(
            "INSERT INTO events (event_id, store_id, device_id, seq, type, version, created_at, received_at, payload)
             VALUES (gen_random_uuid(), $1::text::uuid, gen_random_uuid(), $2, $3, 1, now() - $2::bigint * interval '1 minute', now(),
                     jsonb_build_object('id', $4::text, 'totals', jsonb_build_object('total_bs', $2::bigint * 1.25, 'total_usd', 0.5),
                                        'payment', jsonb_build_object('method', 'PAGO_MOVIL')))",
            &[&store, &(n as i64), &kind, &target],
        )
        .unwrap();
        if rng.chance(10) {
            tx.rollback().unwrap();
        } else {
            tx.commit().unwrap();
        }
    }
    assert!(count(&mut db, "SELECT count(*) FROM sales") > 200);
    assert_exact(&mut db, seed, "after sales written by LA-CAJA's trigger on events");
}

#[test]
fn two_phase_commit_counts_at_commit_prepared_only() {
    let seed = common::seed();
    let database = "lacaja_test_two_phase";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let store = STORES[0].0;
    let mut pos = connect(database);
    // Prepared, then committed from another session.
    pos.batch_execute(&format!("BEGIN; {} PREPARE TRANSACTION 'lacaja_2pc_commit';", sale_with_items(&uuid(1), store, "10.00")))
        .unwrap();
    // The same session sells at once in the same store and day: it must not wait for the
    // prepared transaction's locks (it writes parts of its own shard).
    pos.batch_execute("SET statement_timeout = '5s'").unwrap();
    pos.batch_execute(&format!("BEGIN; {} COMMIT;", sale_with_items(&uuid(2), store, "20.00")))
        .expect("a session's next sale must not wait for its prepared transaction");
    pos.batch_execute(&format!("BEGIN; {} PREPARE TRANSACTION 'lacaja_2pc_rollback';", sale_with_items(&uuid(3), store, "30.00")))
        .unwrap();
    let prepared_sum: String = db.query_one("SELECT coalesce(sum(sales_count), 0)::text FROM analytics.sales_daily", &[]).unwrap().get(0);
    assert_eq!(prepared_sum, "1", "prepared sales are not counted before COMMIT PREPARED");
    db.batch_execute("COMMIT PREPARED 'lacaja_2pc_commit'").unwrap();
    db.batch_execute("ROLLBACK PREPARED 'lacaja_2pc_rollback'").unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM sales"), 2);
    assert_exact(&mut db, seed, "after COMMIT PREPARED and ROLLBACK PREPARED");
    // Compaction folds the prepared transaction's shard like any other.
    db.execute("SELECT analytics.compact_parts()", &[]).unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM analytics_internal.sales_daily_parts WHERE shard <> 0"), 0);
    assert_exact(&mut db, seed, "after compacting the prepared transaction's parts");
}

/// Runs `work` on `db` while sampling the backend's private memory (RssAnon, kB: what malloc
/// and palloc hold, not the shared buffers it touches); returns the peak seen.
fn peak_private_memory_kb(db: &mut postgres::Client, work: impl FnOnce(&mut postgres::Client)) -> u64 {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let (done, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let anon = status.lines().find_map(|l| l.strip_prefix("RssAnon:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0);
                    peak.fetch_max(anon, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        })
    };
    work(db);
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    peak.load(Ordering::Relaxed)
}

const MILLION_SALES: &str = "
    BEGIN;
    INSERT INTO sales (id, store_id, sold_at, totals, payment, customer_id)
    SELECT gen_random_uuid(), (ARRAY['a0000000-0000-4000-8000-000000000001', 'b0000000-0000-4000-8000-000000000002',
                                     'c0000000-0000-4000-8000-000000000003'])[1 + g % 3]::uuid,
           now() - (g % 5000) * interval '7 minutes',
           jsonb_build_object('subtotal_bs', g % 997 + 0.25, 'total_bs', g % 997 + 0.25, 'total_usd', (g % 31) / 4.0),
           jsonb_build_object('method', (ARRAY['CASH_BS', 'PAGO_MOVIL', 'FIAO'])[1 + g % 3]),
           CASE WHEN g % 4 = 0 THEN ('e000000' || g % 3 || '-0000-4000-8000-' || lpad((1 + g % 10)::text, 12, '0'))::uuid END
    FROM generate_series(1, 1000000) g;
    UPDATE sales SET voided_at = now() WHERE sold_at < now() - interval '20 days' AND voided_at IS NULL;
    COMMIT;";

#[test]
fn a_million_row_transaction_stays_exact_in_bounded_memory() {
    let seed = common::seed();
    let database = "lacaja_test_million";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let mut rng = Rng::new(seed);
    let mut tx = db.transaction().unwrap();
    insert_sales(&mut tx, &mut rng, 10);
    tx.commit().unwrap();
    // The same transaction without the extension's triggers, for the memory Postgres itself
    // needs (transition tables, the executor), rolled back.
    db.execute("SELECT analytics.detach()", &[]).unwrap();
    let mut bare = connect(database);
    let without = peak_private_memory_kb(&mut bare, |c| c.batch_execute(&MILLION_SALES.replace("COMMIT;", "ROLLBACK;")).unwrap());
    db.execute("SELECT analytics.attach('public')", &[]).unwrap();
    let mut pos = connect(database);
    let with = peak_private_memory_kb(&mut pos, |c| c.batch_execute(MILLION_SALES).unwrap());
    eprintln!("backend peak private memory for a million-row transaction: {without} kB without the extension, {with} kB with it");
    assert_eq!(count(&mut db, "SELECT count(*) FROM sales"), 1_000_010);
    assert_exact(&mut db, seed, "after one transaction of a million sales and a void of many");
    // What the extension may add: Postgres' transition tables (an update keeps old and new
    // rows, each up to work_mem in memory before spilling), the sales' ids that wait for
    // commit (16 bytes each in a hash set: under 64 per sale), and the fold's statements over
    // at most 20,000 rows or 10,000 sales at a time (under 100 MB). Not the million rows.
    let work_mem_kb: i64 = count(&mut db, "SELECT setting::bigint FROM pg_settings WHERE name = 'work_mem'");
    let bound = 3 * work_mem_kb as u64 + 1_000_000 * 64 / 1024 + 100_000;
    assert!(
        with < without + bound,
        "capture grew a million-row transaction's backend by {} kB, more than {bound} kB",
        with.saturating_sub(without)
    );
}

#[test]
fn dropping_the_extension_in_the_selling_transaction_commits() {
    let database = "lacaja_test_drop_in_transaction";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    db.batch_execute(&format!("BEGIN; {} DROP EXTENSION lacaja_analytics; COMMIT;", sale_with_items(&uuid(1), STORES[0].0, "9.50")))
        .expect("nothing is left to fold into; the commit goes through");
    assert_eq!(count(&mut db, "SELECT count(*) FROM sales"), 1);
}

#[test]
fn exception_block_loops_read_only_commits_and_truncated_returns() {
    let seed = common::seed();
    let database = "lacaja_test_capture_edges";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    // 30,000 sales, each in its own EXCEPTION block (as a PL/pgSQL import loop or a driver's
    // autosave does): the outer level never records, its children fold as they commit.
    db.batch_execute(
        "DO $$
         BEGIN
             FOR g IN 1..30000 LOOP
                 BEGIN
                     INSERT INTO sales (id, store_id, sold_at, totals, payment)
                     VALUES (gen_random_uuid(), (ARRAY['a0000000-0000-4000-8000-000000000001'::uuid,
                                                       'b0000000-0000-4000-8000-000000000002'::uuid])[1 + g % 2],
                             now() - g * interval '3 minutes', jsonb_build_object('total_bs', g % 50 + 0.5, 'total_usd', 0.1),
                             '{\"method\": \"CASH_USD\"}');
                     IF g % 1000 = 0 THEN
                         RAISE EXCEPTION 'this one is rolled back';
                     END IF;
                 EXCEPTION WHEN raise_exception THEN
                     NULL;
                 END;
             END LOOP;
         END $$;",
    )
    .unwrap();
    assert_eq!(count(&mut db, "SELECT count(*) FROM sales"), 29_970);
    assert_exact(&mut db, seed, "after 30,000 sales in EXCEPTION blocks, 30 of them rolled back");

    // A transaction that wrote, then turned read-only: its commit still folds what it wrote.
    db.batch_execute(&format!("BEGIN; {} SET TRANSACTION READ ONLY; COMMIT;", sale_with_items(&uuid(1), STORES[0].0, "12.00")))
        .unwrap();
    assert_exact(&mut db, seed, "after a transaction set read-only once it had sold");

    // Returns truncated in a transaction that also moved a returned sale.
    db.batch_execute(&format!(
        "{sale}
         WITH r AS (INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
                    VALUES (gen_random_uuid(), '{store}', '{id}', 5, 0.1) RETURNING id)
         INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
         SELECT gen_random_uuid(), r.id, i.id, i.product_id, 1, 5, 0.1
         FROM r, LATERAL (SELECT * FROM sale_items WHERE sale_id = '{id}' ORDER BY id LIMIT 1) i;",
        sale = sale_with_items(&uuid(2), STORES[0].0, "20.00"),
        store = STORES[0].0,
        id = uuid(2)
    ))
    .unwrap();
    db.batch_execute(&format!(
        "BEGIN; UPDATE sales SET sold_at = sold_at - interval '5 days' WHERE id = '{}'; TRUNCATE sale_return_items; COMMIT;",
        uuid(2)
    ))
    .unwrap();
    assert_exact(&mut db, seed, "after returns were truncated in a transaction that moved a returned sale");
}

/// Deterministic transactions covering what the direct fold takes (new sales with items,
/// weight items, discounts, customers, stock movements, several sales a commit) and what it
/// leaves to the generated SQL (amounts with more decimals, malformed JSON, sales voided or
/// deleted in their own transaction, items rewritten, returns, savepoints rolled back).
fn direct_fold_workload() -> Vec<String> {
    let id = |kind: &str, n: usize| format!("md5('{kind}/{n}')::uuid");
    let product = |store: usize, n: usize| id(&format!("product/{store}"), n);
    let mut transactions = vec![format!(
        "INSERT INTO products (id, store_id, name, category, price_bs, price_usd, cost_bs, cost_usd,
                               cost_per_weight_bs, cost_per_weight_usd, is_weight_product)
         SELECT md5('product/' || s.n || '/' || i)::uuid, s.id, 'product ' || i, 'cat ' || (i % 3),
                36.5 * i, i, 20 * i, 0.55 * i,
                CASE WHEN i % 2 = 0 THEN 1.123456 * i END, CASE WHEN i % 2 = 0 THEN 0.031234 * i END, i % 3 = 0
         FROM (SELECT id, (row_number() OVER (ORDER BY id) - 1)::int AS n FROM stores) s, generate_series(1, 6) i;"
    )];
    let totals = ["12.50", "7", "100.1", "3.333", "\"4.20\"", "0.99", "1e3", "250.00"];
    for n in 0..48 {
        let store = n % 3;
        let (store_id, _) = STORES[store];
        let sale = id("sale", n);
        let total = totals[n % totals.len()];
        let customer = if n % 4 == 0 { format!("'{}{:012}'", common::customer_prefix(store), 1 + n % 10) } else { "NULL".into() };
        let method = ["CASH_BS", "PAGO_MOVIL", "", "TRANSFER"][n % 4];
        let mut sql = format!(
            "INSERT INTO sales (id, store_id, sold_at, totals, payment, customer_id)
             VALUES ({sale}, '{store_id}', timestamptz '2026-03-08 05:30:00+00' + {n} * interval '97 minutes',
                     '{{\"subtotal_bs\": {total}, \"subtotal_usd\": 1.25, \"discount_bs\": 0, \"discount_usd\": 0,
                       \"total_bs\": {total}, \"total_usd\": 1.25}}', '{{\"method\": \"{method}\"}}', {customer});
             INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd, discount_bs, is_weight_product)
             SELECT md5('item/{n}/' || i)::uuid, {sale}, md5('product/{store}/' || i)::uuid,
                    CASE WHEN i % 3 = 0 THEN 0.125 * i ELSE i END, 10.5 * i, 0.2875 * i, CASE WHEN i = 2 THEN 1.5 ELSE 0 END, i % 3 = 0
             FROM generate_series(1, 1 + {n} % 5) i;"
        );
        match n % 12 {
            3 => sql.push_str(&format!("UPDATE sales SET voided_at = sold_at WHERE id = {sale};")),
            5 => sql.push_str(&format!("DELETE FROM sale_items WHERE sale_id = {sale}; DELETE FROM sales WHERE id = {sale};")),
            7 => sql.push_str(&format!("UPDATE sale_items SET qty = qty + 1 WHERE sale_id = {sale};")),
            8 => sql.push_str(&format!(
                "INSERT INTO inventory_movements (id, store_id, product_id, movement_type, qty_delta)
                 SELECT md5('move/{n}/' || i)::uuid, '{store_id}', md5('product/{store}/' || i)::uuid, 'sale', -1.5 * i
                 FROM generate_series(1, 3) i;"
            )),
            9 => sql = format!("SAVEPOINT s; {sql} ROLLBACK TO SAVEPOINT s; {}", sql.replace(&format!("'item/{n}/'"), &format!("'item/{n}/again/'"))),
            // A product created and sold, and a store's zone set, in the selling transaction:
            // the fold sees what its own transaction wrote last.
            11 => {
                sql = format!(
                    "INSERT INTO products (id, store_id, name, price_bs, price_usd, cost_bs, cost_usd)
                     VALUES (md5('product/{store}/' || 100 + {n})::uuid, '{store_id}', 'new {n}', 3, 0.1, 1.25, 0.05);
                     SELECT analytics.set_store_timezone('{store_id}', '{}');
                     {}",
                    ["Europe/Madrid", "Asia/Kathmandu", "America/Caracas"][n % 3],
                    sql.replace(&format!("md5('product/{store}/' || i)"), &format!("md5('product/{store}/' || 100 + {n})"))
                )
            }
            10 if n > 12 => sql.push_str(&format!(
                "WITH r AS (INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
                            VALUES ({}, '{store_id}', {}, 5, 0.1) RETURNING id)
                 INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
                 SELECT {}, r.id, {}, {}, 1, 5, 0.1 FROM r;",
                id("return", n), id("sale", n - 12), id("return item", n), format!("md5('item/{}/1')::uuid", n - 12), product(store, 1)
            )),
            _ => {}
        }
        transactions.push(sql);
    }
    transactions
}

/// Every part and item fact, as text (so that a numeric's scale counts), shards summed.
fn parts_as_text(db: &mut postgres::Client) -> Vec<String> {
    let catalog = db
        .query("SELECT parts::text, array_to_string(keys, ', '), vals FROM analytics_internal.rollup_catalog ORDER BY position", &[])
        .unwrap();
    let mut dump = Vec::new();
    for rollup in catalog {
        let (parts, keys, vals): (String, String, Vec<String>) = (rollup.get(0), rollup.get(1), rollup.get(2));
        let sums: Vec<String> = vals.iter().map(|v| format!("sum({v}) AS {v}")).collect();
        let sql = format!(
            "SELECT '{parts} ' || row_to_json(q)::text FROM (SELECT {keys}, {} FROM {parts} GROUP BY {keys} ORDER BY {keys}) q",
            sums.join(", ")
        );
        dump.extend(db.query(&sql, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)));
    }
    let facts = "SELECT row_to_json(f)::text FROM analytics_internal.item_facts f ORDER BY sale_item_id";
    dump.extend(db.query(facts, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)));
    dump
}

#[test]
fn direct_and_generated_folds_store_the_same_parts() {
    let workload = direct_fold_workload();
    let mut dumps = Vec::new();
    for (database, direct) in [("lacaja_test_direct_fold", "on"), ("lacaja_test_generated_fold", "off")] {
        let mut db = lacaja_database(database);
        db.batch_execute(&format!("SET lacaja_analytics.direct_fold = {direct}; SET track_functions = 'all'")).unwrap();
        for sql in &workload {
            db.batch_execute(&format!("BEGIN; {sql} COMMIT;")).unwrap_or_else(|e| panic!("{e:?}\n{sql}"));
        }
        db.batch_execute("SELECT pg_stat_force_next_flush()").unwrap();
        let generated_folds = count(
            &mut db,
            "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_user_functions WHERE funcname IN ('_fold_rows', '_fold_items')",
        );
        // Both paths were taken where direct: plain commits directly, the rest by SQL.
        if direct == "on" {
            assert!(generated_folds > 0 && generated_folds < workload.len() as i64, "generated folds: {generated_folds}");
        } else {
            assert!(generated_folds >= workload.len() as i64 - 1, "generated folds: {generated_folds}");
        }
        assert_exact(&mut db, 0, database);
        dumps.push(parts_as_text(&mut db));
    }
    let (direct, generated) = (&dumps[0], &dumps[1]);
    let differing: Vec<_> = direct.iter().zip(generated).filter(|(a, b)| a != b).take(5).collect();
    assert!(differing.is_empty() && direct.len() == generated.len(), "direct and generated folds differ: {differing:#?}");
}
