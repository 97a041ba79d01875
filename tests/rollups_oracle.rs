//! The rollups against their oracle (SPEC §2) on a real server: randomised concurrent
//! workloads with commits and rollbacks, repair while sales keep coming, hostile JSON, and
//! dropping the extension.

mod common;

use common::workload::{assert_exact, change_stock, insert_sales, run_sessions, seed_products, store_products, SharedIds};
use common::{connect, lacaja_database, Rng, STORES};
use std::sync::{Arc, Mutex};
use std::thread;

#[test]
fn randomised_concurrent_workload_matches_oracle() {
    let seed = common::seed();
    eprintln!("LACAJA_TEST_SEED={seed}");
    let database = "lacaja_test_workload";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let shared: SharedIds = Arc::new(Mutex::new(Vec::new()));

    // 4 sessions x 5,000 transactions on 3 stores in 3 zones.
    for handle in run_sessions(database, seed, 4, 5_000, &shared) {
        handle.join().expect("a POS session failed");
    }
    let sales: i64 = db.query_one("SELECT count(*) FROM sales", &[]).unwrap().get(0);
    assert!(sales > 5_000, "the workload should have left many sales, found {sales}");
    assert_exact(&mut db, seed, "after the concurrent workload");

    // Writes the triggers never saw (as during a restore with triggers off) ...
    let mut blind = connect(database);
    blind.batch_execute("SET session_replication_role = replica").unwrap();
    let mut rng = Rng::new(seed ^ 0xB11D);
    let products = store_products(&mut db);
    for _ in 0..200 {
        let mut tx = blind.transaction().unwrap();
        change_stock(&mut tx, &mut rng, &products);
        let n = 1 + rng.below(3) as usize;
        let created = insert_sales(&mut tx, &mut rng, n);
        let picked = {
            let ids = shared.lock().unwrap();
            ids[rng.below(ids.len() as u64) as usize].clone()
        };
        tx.execute("UPDATE sales SET voided_at = CASE WHEN voided_at IS NULL THEN now() END WHERE id = $1::text::uuid", &[&picked])
            .unwrap();
        tx.commit().unwrap();
        shared.lock().unwrap().extend(created);
    }
    let broken: i64 = db.query_one("SELECT count(*) FROM analytics.verify()", &[]).unwrap().get(0);
    assert!(broken > 0, "verify() must notice writes the triggers never saw");

    // ... are repaired by refresh_all() and refresh_store() while POS sessions keep writing.
    let writers = run_sessions(database, seed ^ 0x5EED, 3, 1_500, &shared);
    for round in 0..3 {
        thread::sleep(std::time::Duration::from_millis(300));
        // The compaction job's work, while sessions keep writing their parts.
        db.execute("SELECT analytics.compact_parts(2000)", &[]).unwrap();
        if round == 1 {
            db.execute("SELECT analytics.refresh_store($1::text::uuid)", &[&STORES[1].0]).unwrap();
        } else {
            db.execute("SELECT analytics.refresh_all()", &[]).unwrap();
        }
    }
    for handle in writers {
        handle.join().expect("a POS session failed during refresh");
    }
    assert_exact(&mut db, seed, "after refresh_all() and compact_parts() ran while sessions kept writing");
    db.execute("SELECT analytics.compact_parts()", &[]).unwrap();
    let left: i64 = db
        .query_one("SELECT count(*) FROM analytics_internal.sales_daily_parts WHERE shard <> 0", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "with no session writing, compaction folds every part into shard 0");
    assert_exact(&mut db, seed, "after compacting every part");
}

#[test]
fn hostile_json_always_commits() {
    let seed = common::seed();
    let database = "lacaja_test_hostile";
    let mut db = lacaja_database(database);
    let hostile = [
        r#"{}"#, r#"null"#, r#""abc""#, r#"[1, 2]"#, r#"{"total_bs": "abc"}"#, r#"{"total_bs": null}"#,
        r#"{"total_bs": {"x": 1}}"#, r#"{"total_bs": "NaN", "total_usd": "-Infinity"}"#,
        r#"{"total_bs": 1e999, "total_usd": 9.99e999}"#, r#"{"total_bs": 5e1000}"#,
        r#"{"total_bs": " 12.5 ", "total_usd": "-3e2"}"#, r#"{"total_bs": true}"#,
        r#"{"total_bs": "1e99999999"}"#, r#"{"total_bs": 12.345678901234567890123}"#,
        r#"{"subtotal_bs": 1, "total_bs": 99999999999999999999999999999999.99}"#,
        r#"[{"total_bs": 5, "total_usd": 1}]"#,
    ];
    let payments = [
        r#"{}"#, r#""CASH""#, r#"{"method": 5}"#, r#"{"method": null}"#, r#"{"method": ""}"#,
        r#"{"method": {"a": 1}}"#, r#"[]"#, r#"{"method": "FIAO"}"#, r#"null"#,
    ];
    let mut rng = Rng::new(seed);
    let long_method = format!(r#"{{"method": "{}"}}"#, "X".repeat(5000));
    for i in 0..1_000 {
        let store = STORES[i % 3].0;
        let payment = if i % 97 == 0 { long_method.as_str() } else { *rng.pick(&payments) };
        let totals_text = *rng.pick(&hostile);
        // Every one commits on its own, as a POS sale does.
        db.execute(
            "INSERT INTO sales (id, store_id, sold_at, totals, payment)
             VALUES (gen_random_uuid(), $1::text::uuid, now() - ($2::int * interval '1 minute'), $3::text::jsonb, $4::text::jsonb)",
            &[&store, &(i as i32), &totals_text, &payment],
        )
        .unwrap_or_else(|e| panic!("a malformed sale must commit: {e}"));
    }
    let committed: i64 = db.query_one("SELECT count(*) FROM sales", &[]).unwrap().get(0);
    assert_eq!(committed, 1_000);
    let reported: i64 = db.query_one("SELECT count(DISTINCT source_id) FROM analytics.ingest_errors", &[]).unwrap().get(0);
    assert!(reported > 500, "malformed sales must be reported, got {reported}");
    assert_exact(&mut db, seed, "after 1,000 malformed sales");
}

#[test]
fn drop_extension_leaves_source_tables_untouched() {
    let database = "lacaja_test_drop";
    let mut db = lacaja_database(database);
    let mut rng = Rng::new(7);
    let mut tx = db.transaction().unwrap();
    insert_sales(&mut tx, &mut rng, 200);
    tx.commit().unwrap();
    let fingerprint = "SELECT md5(string_agg(s::text, ',' ORDER BY s.id)) FROM sales s";
    let before: String = db.query_one(fingerprint, &[]).unwrap().get(0);

    db.batch_execute("DROP EXTENSION lacaja_analytics").expect("a plain DROP EXTENSION must work");

    let after: String = db.query_one(fingerprint, &[]).unwrap().get(0);
    assert_eq!(before, after);
    let triggers: i64 = db
        .query_one("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sales'::regclass AND NOT tgisinternal", &[])
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "capture triggers must go with the extension");
    // Postgres keeps a schema that CREATE EXTENSION created for the control file; it must be empty.
    let left: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = n.oid)
                  + (SELECT count(*) FROM pg_proc WHERE pronamespace = n.oid)
             FROM pg_namespace n WHERE nspname = 'analytics'
             UNION ALL SELECT 0 LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing of the extension may stay behind");
    let internal: i64 = db
        .query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'analytics_internal'", &[])
        .unwrap()
        .get(0);
    assert_eq!(internal, 0, "the internal schema goes with the extension");
    let mut tx = db.transaction().unwrap();
    insert_sales(&mut tx, &mut rng, 5);
    tx.commit().expect("sales keep working without the extension");
}

#[test]
fn copy_is_captured_as_one_statement() {
    use std::io::Write;
    let seed = common::seed();
    let database = "lacaja_test_copy";
    let mut db = lacaja_database(database);
    let mut rng = Rng::new(seed);
    let mut writer = db
        .copy_in("COPY sales (id, store_id, sold_at, totals, payment, customer_id, voided_at) FROM STDIN")
        .unwrap();
    for i in 0..5_000u64 {
        let store = STORES[(i % 3) as usize].0;
        let cents = 100 + rng.below(100_000);
        let voided = if rng.chance(5) { "2026-01-01 00:00:00+00" } else { "\\N" };
        let customer = if rng.chance(50) {
            format!("{}{:012}", common::customer_prefix((i % 3) as usize), 1 + rng.below(10))
        } else {
            "\\N".into()
        };
        writeln!(
            writer,
            "{uuid}\t{store}\t2026-{month:02}-{day:02} {hour:02}:{minute:02}:00+00\t{{\"total_bs\": {bs}.{c:02}, \"total_usd\": {usd}, \"subtotal_bs\": {bs}.{c:02}}}\t{{\"method\": \"CASH_BS\"}}\t{customer}\t{voided}",
            uuid = format!("f0000000-0000-4000-8000-{i:012}"),
            month = 1 + rng.below(12),
            day = 1 + rng.below(28),
            hour = rng.below(24),
            minute = rng.below(60),
            bs = cents / 100,
            c = cents % 100,
            usd = cents / 3650,
        )
        .unwrap();
    }
    writer.finish().unwrap();
    let count: i64 = db.query_one("SELECT count(*) FROM sales", &[]).unwrap().get(0);
    assert_eq!(count, 5_000);
    assert_exact(&mut db, seed, "after a COPY of 5,000 sales");
}
