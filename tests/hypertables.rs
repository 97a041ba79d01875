//! Hypertables on a real server: the original design's migration on a LA-CAJA database
//! (blockers reported, then accepted explicitly) while the POS keeps selling, partition
//! pruning, late sales drained from the default partition, and retention that leaves every
//! rollup as it was.

mod common;

use common::workload::{assert_exact, run_sessions, seed_products, SharedIds};
use common::{connect, lacaja_database, STORES};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The original design's migration, with only the `analytics.` prefix added.
const ORIGINAL_MIGRATION: [&str; 5] = [
    "SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day')",
    "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day')",
    "SELECT analytics.create_hypertable('inventory_movements', 'happened_at', chunk_time_interval => INTERVAL '1 day')",
    "SELECT analytics.create_hypertable('real_time_metrics', 'created_at', chunk_time_interval => INTERVAL '1 hour')",
    "SELECT analytics.add_retention_policy('events', INTERVAL '2 years')",
];

fn error_of(db: &mut Client, sql: &str) -> String {
    match db.batch_execute(sql) {
        Ok(()) => panic!("expected {sql} to be refused"),
        Err(e) => {
            let e = e.as_db_error().expect("a database error").clone();
            format!("{}\n{}", e.message(), e.hint().unwrap_or(""))
        }
    }
}

/// Every rollup's rows, as one text, to show they did not move.
fn rollup_fingerprint(db: &mut Client) -> String {
    db.query_one(
        "SELECT md5(concat(
            (SELECT string_agg(d::text, ',' ORDER BY d.store_id, d.day) FROM analytics.sales_daily d),
            (SELECT string_agg(h::text, ',' ORDER BY h.store_id, h.bucket) FROM analytics.sales_hourly h),
            (SELECT string_agg(p::text, ',' ORDER BY p.store_id, p.day, p.method) FROM analytics.sales_by_payment_daily p),
            (SELECT string_agg(p::text, ',' ORDER BY p.store_id, p.day, p.product_id) FROM analytics.product_sales_daily p),
            (SELECT string_agg(concat_ws('/', store_id, day, cost_bs, cost_usd, returned_cost_bs, returned_cost_usd), ',' ORDER BY store_id, day)
               FROM (SELECT store_id, day, sum(cost_bs) AS cost_bs, sum(cost_usd) AS cost_usd, sum(returned_cost_bs) AS returned_cost_bs,
                            sum(returned_cost_usd) AS returned_cost_usd FROM analytics_internal.cost_daily_parts GROUP BY 1, 2) c)))",
        &[],
    )
    .unwrap()
    .get(0)
}

fn insert_events(db: &mut Client, n: i32) {
    db.execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), s.id, gen_random_uuid(), i, 'SaleCreated',
                now() - (i % 60) * interval '1 day' - (i % 24) * interval '1 hour', jsonb_build_object('i', i)
         FROM generate_series(1, $1) i CROSS JOIN LATERAL (SELECT id FROM stores ORDER BY id OFFSET i % 3 LIMIT 1) s",
        &[&n],
    )
    .unwrap();
}

fn relkind(db: &mut Client, table: &str) -> String {
    db.query_one("SELECT relkind::text FROM pg_class WHERE oid = $1::text::regclass", &[&table]).unwrap().get(0)
}

#[test]
fn original_migration_runs_online_and_rollups_stay_exact() {
    let seed = common::seed();
    eprintln!("LACAJA_TEST_SEED={seed}");
    let database = "lacaja_test_hypertables";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let shared: SharedIds = Arc::new(Mutex::new(Vec::new()));
    for handle in run_sessions(database, seed, 2, 1_500, &shared) {
        handle.join().expect("a POS session failed");
    }
    insert_events(&mut db, 3_000);

    // As written, the migration is refused with every blocker and its way out; nothing changes.
    let events = error_of(&mut db, ORIGINAL_MIGRATION[0]);
    assert!(events.contains("primary key events_pkey") && events.contains("extend_unique => true"), "{events}");
    let sales = error_of(&mut db, ORIGINAL_MIGRATION[1]);
    for expected in ["primary key sales_pkey", "foreign key sale_items_sale_id_fkey", "foreign key sale_returns_sale_id_fkey",
                     "replace_foreign_keys => true", "nothing was changed", "unique index public.idx_sales_store_sale_number",
                     "replace_unique => true"] {
        assert!(sales.contains(expected), "missing {expected:?} in:\n{sales}");
    }
    assert_eq!(relkind(&mut db, "sales"), "r");

    // Accepted explicitly, while POS sessions keep selling and one register counts its sales.
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::<String>::new()));
    let counter = {
        let (stop, committed) = (stop.clone(), committed.clone());
        thread::spawn(move || {
            let mut pos = connect(database);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("99000000-0000-4000-8000-{i:012}");
                pos.execute(
                    "INSERT INTO sales (id, store_id, sold_at, totals, payment)
                     VALUES ($1::text::uuid, $2::text::uuid, now(), '{\"total_bs\": 10, \"total_usd\": 0.27}', '{\"method\": \"CASH_BS\"}')",
                    &[&id, &STORES[0].0],
                )
                .expect("a sale during the conversion must commit");
                committed.lock().unwrap().push(id);
                i += 1;
            }
        })
    };
    let writers = run_sessions(database, seed ^ 0xC0DE, 2, 600, &shared);
    thread::sleep(Duration::from_millis(300));
    // One statement (one transaction) per table, as a migration tool would run them.
    for statement in [
        "SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day',
                                            migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                            replace_unique => true)",
        "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day',
                                            migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                            replace_unique => true)",
        "SELECT analytics.create_hypertable('inventory_movements', 'happened_at', chunk_time_interval => INTERVAL '1 day',
                                            migrate_data => true, extend_unique => true)",
        "SELECT analytics.create_hypertable('real_time_metrics', 'created_at', chunk_time_interval => INTERVAL '1 hour',
                                            extend_unique => true)",
    ] {
        db.batch_execute(statement).unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    db.batch_execute(ORIGINAL_MIGRATION[4]).expect("retention on events as written");
    for handle in writers {
        handle.join().expect("a POS session failed during the conversion");
    }
    thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    counter.join().unwrap();
    let counted = committed.lock().unwrap().clone();
    assert!(counted.len() > 10, "the register should have sold during the conversion");
    let found: i64 = db
        .query_one("SELECT count(*) FROM sales WHERE id = ANY($1::text[]::uuid[])", &[&counted])
        .unwrap()
        .get(0);
    assert_eq!(found as usize, counted.len(), "sales committed during the conversion were lost");
    let conversion = db
        .query_one(
            "SELECT online, changes_applied, longest_lock_ms::float8 FROM analytics.hypertable_conversions
             WHERE table_name = 'sales' AND status = 'done'",
            &[],
        )
        .unwrap();
    assert!(conversion.get::<_, bool>(0), "sales were converted online");
    assert!(conversion.get::<_, i64>(1) > 0, "changes made during the copy were applied");
    let longest_lock: f64 = conversion.get(2);
    assert!(longest_lock < 2_000.0, "POS writes were held back {longest_lock} ms");
    for table in ["events", "sales", "inventory_movements", "real_time_metrics"] {
        assert_eq!(relkind(&mut db, table), "p", "{table} is partitioned");
    }
    assert_exact(&mut db, seed, "after converting LA-CAJA's tables while sales kept coming");

    // A one-day query on one store reads one chunk.
    let plan: Vec<String> = db
        .query(
            "EXPLAIN (COSTS OFF) SELECT count(*) FROM events
             WHERE store_id = $1::text::uuid AND created_at >= date_trunc('day', now() - interval '3 days', 'UTC')
               AND created_at < date_trunc('day', now() - interval '2 days', 'UTC')",
            &[&STORES[0].0],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    let chunks_read = plan.matches(" on events_").count();
    assert_eq!(chunks_read, 1, "partition pruning should leave one chunk:\n{plan}");
    assert!(!plan.contains("events_default"), "{plan}");

    // An offline register syncs a sale from last year and a clock runs a month ahead: both
    // are accepted into the default partition, then drained into chunks by the job.
    db.batch_execute(&format!(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment) VALUES
           ('98000000-0000-4000-8000-000000000001', '{a}', now() - interval '400 days', '{{\"total_bs\": 7}}', '{{\"method\": \"FIAO\"}}'),
           ('98000000-0000-4000-8000-000000000002', '{a}', now() + interval '30 days', '{{\"total_bs\": 9}}', '{{\"method\": \"CASH_BS\"}}');
         INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
         SELECT gen_random_uuid(), '98000000-0000-4000-8000-000000000001', id, 2, 3.5, 0.1 FROM products WHERE store_id = '{a}' LIMIT 1;",
        a = STORES[0].0
    ))
    .expect("late and future sales must be accepted");
    // (the workload's own late sales may wait there too)
    let waiting: i64 = db
        .query_one("SELECT count(*) FROM sales_default WHERE id::text LIKE '98000000-%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(waiting, 2);
    let job: i32 = db
        .query_one(
            "SELECT job_id FROM analytics.jobs WHERE proc = 'analytics_internal.policy_chunk_maintenance'::regproc AND hypertable = 'sales'::regclass",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute("CALL analytics.run_job($1)", &[&job]).unwrap();
    let waiting: i64 = db.query_one("SELECT count(*) FROM sales_default", &[]).unwrap().get(0);
    assert_eq!(waiting, 0, "the maintenance job drains the default partition");
    let late_chunk: i64 = db
        .query_one(
            "SELECT count(*) FROM analytics.show_chunks('sales', older_than => now() - interval '399 days')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(late_chunk, 1);

    // The POS on the hypertables: deletes cascade to items through the replaced foreign key.
    for handle in run_sessions(database, seed ^ 0xAF7E, 2, 1_000, &shared) {
        handle.join().expect("a POS session failed on the hypertables");
    }
    assert_exact(&mut db, seed, "after the workload on the hypertables");
    let orphans: i64 = db
        .query_one("SELECT count(*) FROM sale_items i WHERE NOT EXISTS (SELECT 1 FROM sales s WHERE s.id = i.sale_id)", &[])
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0, "ON DELETE CASCADE must still remove a deleted sale's items");

    // Sales written with the triggers off (a restore) are found and repaired by a
    // continuous-aggregate policy over its window.
    let mut blind = connect(database);
    blind
        .batch_execute(&format!(
            "SET session_replication_role = replica;
             INSERT INTO sales (id, store_id, sold_at, totals, payment)
             SELECT gen_random_uuid(), '{a}', now() - i * interval '7 hours', '{{\"total_bs\": 12.5}}', '{{\"method\": \"CASH_BS\"}}'
             FROM generate_series(1, 20) i;",
            a = STORES[1].0
        ))
        .unwrap();
    let broken: i64 = db.query_one("SELECT count(*) FROM analytics.verify()", &[]).unwrap().get(0);
    assert!(broken > 0, "verify() must see the blind writes");
    let policy: i32 = db
        .query_one(
            "SELECT analytics.add_continuous_aggregate_policy('analytics.sales_daily', INTERVAL '10 days', INTERVAL '0 hours', INTERVAL '1 hour')",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute("CALL analytics.run_job($1)", &[&policy]).unwrap();
    assert_exact(&mut db, seed, "after the continuous-aggregate policy repaired its window");
    let refused = error_of(
        &mut db,
        "SELECT analytics.add_continuous_aggregate_policy('analytics.sales_daily', INTERVAL '1 hour', INTERVAL '2 hours', INTERVAL '1 hour')",
    );
    assert!(refused.contains("already exists") || refused.contains("window too small"), "{refused}");

    // Retention drops whole chunks of sales; every rollup keeps those days.
    let whole = rollup_fingerprint(&mut db);
    let dropped: i64 = db
        .query_one("SELECT count(*) FROM analytics.drop_chunks('sales', now() - interval '20 days')", &[])
        .unwrap()
        .get(0);
    assert!(dropped > 10, "drop_chunks should have dropped old chunks, dropped {dropped}");
    assert_eq!(rollup_fingerprint(&mut db), whole, "dropping raw sales must not change any rollup");
    let verify: i64 = db.query_one("SELECT count(*) FROM analytics.verify()", &[]).unwrap().get(0);
    assert_eq!(verify, 0, "verify() leaves the days retention dropped alone");
    db.execute("SELECT analytics.refresh_all()", &[]).unwrap();
    assert_eq!(rollup_fingerprint(&mut db), whole, "refresh_all() must not erase the dropped days");

    // Life goes on after retention: POS sessions (late sales included) stay exact.
    let recent: SharedIds = Arc::new(Mutex::new(Vec::new()));
    for handle in run_sessions(database, seed ^ 0x4E7E, 2, 500, &recent) {
        handle.join().expect("a POS session failed after retention");
    }
    let verify: i64 = db.query_one("SELECT count(*) FROM analytics.verify()", &[]).unwrap().get(0);
    assert_eq!(verify, 0, "rollups must stay exact after retention");
}

#[test]
fn a_failed_online_conversion_leaves_the_table_as_it_was() {
    let database = "lacaja_test_hypertable_failure";
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    let mut db = connect(database);
    db.batch_execute(
        "CREATE EXTENSION lacaja_analytics;
         CREATE TABLE readings (id bigint PRIMARY KEY, at timestamptz, value numeric);
         INSERT INTO readings SELECT i, CASE WHEN i = 777 THEN NULL ELSE now() - i * interval '1 hour' END, i FROM generate_series(1, 2000) i;",
    )
    .unwrap();
    let error = error_of(&mut db, "SELECT analytics.create_hypertable('readings', 'at', INTERVAL '1 day', migrate_data => true, extend_unique => true)");
    assert!(error.contains("has NULL values"), "{error}");
    let left: i64 = db
        .query_one("SELECT count(*) FROM pg_class WHERE relname LIKE 'readings%' AND relname <> 'readings' AND relname <> 'readings_pkey'", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing of the failed conversion may stay");
    let triggers: i64 = db.query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'readings'::regclass", &[]).unwrap().get(0);
    assert_eq!(triggers, 0);
    assert_eq!(relkind(&mut db, "readings"), "r");
    let registered: i64 = db.query_one("SELECT count(*) FROM analytics.hypertables", &[]).unwrap().get(0);
    assert_eq!(registered, 0);
    db.batch_execute("UPDATE readings SET at = now() WHERE at IS NULL").unwrap();
    db.batch_execute("SELECT analytics.create_hypertable('readings', 'at', INTERVAL '1 day', migrate_data => true, extend_unique => true)").unwrap();
    let rows: i64 = db.query_one("SELECT count(*) FROM readings", &[]).unwrap().get(0);
    assert_eq!(rows, 2000);
}

/// A unique index kept across chunks (replace_unique) behaves like the original between
/// sessions: a second insert of the same invoice number waits for the first, fails once it
/// commits (23505, the original index's name) and succeeds if it rolls back.
#[test]
fn invoice_numbers_stay_unique_across_chunks_between_sessions() {
    let database = "lacaja_test_invoice_numbers";
    let mut db = lacaja_database(database);
    db.batch_execute(
        "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day', migrate_data => true,
                                            extend_unique => true, replace_foreign_keys => true, replace_unique => true)",
    )
    .unwrap();
    let store = STORES[0].0;
    let insert = |number: i64, days_ago: i32| {
        format!(
            "INSERT INTO sales (id, store_id, sold_at, totals, payment, sale_number)
             VALUES (gen_random_uuid(), '{store}', now() - interval '{days_ago} days', '{{\"total_bs\": 1}}', '{{\"method\": \"CASH_BS\"}}', {number})"
        )
    };
    for (number, first_commits) in [(5_i64, true), (6, false)] {
        let mut first = connect(database);
        first.batch_execute(&format!("BEGIN; {}", insert(number, 40))).unwrap();
        let second_statement = insert(number, 0);
        let second = thread::spawn(move || {
            let mut second = connect(database);
            let started = std::time::Instant::now();
            let outcome = second.batch_execute(&second_statement);
            (outcome.map_err(|e| e.as_db_error().map(|d| (d.code().code().to_string(), d.message().to_string()))), started.elapsed())
        });
        thread::sleep(Duration::from_millis(500));
        first.batch_execute(if first_commits { "COMMIT" } else { "ROLLBACK" }).unwrap();
        let (outcome, waited) = second.join().unwrap();
        assert!(waited >= Duration::from_millis(400), "the second insert waits for the first ({waited:?})");
        if first_commits {
            let (code, message) = outcome.expect_err("a duplicate number in another chunk").expect("a database error");
            assert_eq!(code, "23505");
            assert!(message.contains("idx_sales_store_sale_number"), "{message}");
        } else {
            outcome.expect("the first rolled back: the number is free");
        }
    }
    let numbers: i64 = db
        .query_one("SELECT count(*) FROM sales WHERE sale_number IN (5, 6)", &[])
        .unwrap()
        .get(0);
    assert_eq!(numbers, 2);
}

/// A replaced foreign key whose parent keeps a registry of its key (the check probes the
/// registry) behaves like Postgres' own between sessions: an item inserted while its sale is
/// deleted either makes the delete wait and goes with the cascade, or waits for the delete and
/// fails (23503); never an item without its sale.
#[test]
fn an_item_and_the_deletion_of_its_sale_never_leave_an_orphan() {
    let database = "lacaja_test_fk_registry";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    db.batch_execute(&format!(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment)
         SELECT gen_random_uuid(), '{}', now() - d * interval '1 day', '{{\"total_bs\": 10}}', '{{\"method\": \"CASH_BS\"}}'
         FROM unnest(ARRAY[40, 0]) d",
        STORES[0].0
    ))
    .unwrap();
    db.batch_execute(
        "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day', migrate_data => true,
                                            extend_unique => true, replace_foreign_keys => true, replace_unique => true)",
    )
    .unwrap();
    let probed: bool = db
        .query_one(
            "SELECT check_function IS NOT NULL FROM analytics_internal.replaced_foreign_keys WHERE constraint_name = 'sale_items_sale_id_fkey'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(probed, "the items' key probes the registry of sale ids");
    let sale_of_item_first: String = db.query_one("SELECT id::text FROM sales ORDER BY sold_at LIMIT 1", &[]).unwrap().get(0);
    let sale_deleted_first: String = db.query_one("SELECT id::text FROM sales ORDER BY sold_at DESC LIMIT 1", &[]).unwrap().get(0);
    let item = |sale: &str| {
        format!(
            "INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
             SELECT gen_random_uuid(), '{sale}', p.id, 1, 10, 0.27 FROM products p LIMIT 1"
        )
    };
    let delete = |sale: &str| format!("DELETE FROM sales WHERE id = '{sale}'");
    for (first_statement, second_statement, item_first) in [
        (item(&sale_of_item_first), delete(&sale_of_item_first), true),
        (delete(&sale_deleted_first), item(&sale_deleted_first), false),
    ] {
        let mut first = connect(database);
        first.batch_execute(&format!("BEGIN; {first_statement}")).unwrap();
        let second = thread::spawn(move || {
            let mut second = connect(database);
            let started = std::time::Instant::now();
            let outcome = second.batch_execute(&second_statement);
            (outcome.map_err(|e| e.as_db_error().map(|d| d.code().code().to_string())), started.elapsed())
        });
        thread::sleep(Duration::from_millis(500));
        first.batch_execute("COMMIT").unwrap();
        let (outcome, waited) = second.join().unwrap();
        assert!(waited >= Duration::from_millis(400), "the second waits for the first ({waited:?})");
        if item_first {
            outcome.expect("the delete goes on and takes the new item with it");
        } else {
            assert_eq!(outcome.expect_err("an item for a deleted sale"), Some("23503".to_string()));
        }
    }
    let orphans: i64 = db
        .query_one("SELECT count(*) FROM sale_items i WHERE NOT EXISTS (SELECT 1 FROM sales s WHERE s.id = i.sale_id)", &[])
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
}
