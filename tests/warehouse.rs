//! The warehouse against its definition on a real server (issue 7): randomised concurrent POS
//! workloads while products are renamed and recategorised, ETL runs interleaved, cancelled
//! mid-run, repeated, killed, and after a long gap; product versions against a history the
//! test records itself; reports against the same questions over the source tables.

mod common;

use common::workload::{run_sessions, seed_products, SharedIds};
use common::{connect, lacaja_database, Rng};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

const WAREHOUSE_ORACLE: &str = include_str!("sql/warehouse_oracle.sql");

/// A fourth store, where products come and go; the POS sessions sell in the other three.
const CATALOGUE_STORE: &str = "d0000000-0000-4000-8000-000000000004";

/// The test's own record of every product state, written by a row trigger: what the type-2
/// dimension must reproduce.
const PRODUCT_HISTORY: &str = "
    CREATE TABLE test_product_history (
        seen_at timestamptz NOT NULL DEFAULT clock_timestamp(), product_id uuid NOT NULL, deleted boolean NOT NULL,
        store_id uuid, name text, category text, sku text);
    INSERT INTO test_product_history (seen_at, product_id, deleted, store_id, name, category, sku)
    SELECT '-infinity', id, false, store_id, name, category, sku FROM products;
    CREATE FUNCTION test_record_product() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO test_product_history (product_id, deleted) VALUES (OLD.id, true);
        ELSIF TG_OP = 'INSERT' OR (OLD.store_id, OLD.name, OLD.category, OLD.sku) IS DISTINCT FROM
                                  (NEW.store_id, NEW.name, NEW.category, NEW.sku) THEN
            INSERT INTO test_product_history (product_id, deleted, store_id, name, category, sku)
            VALUES (NEW.id, false, NEW.store_id, NEW.name, NEW.category, NEW.sku);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER test_record_product AFTER INSERT OR UPDATE OR DELETE ON products
        FOR EACH ROW EXECUTE FUNCTION test_record_product();";

/// Product versions that do not follow the recorded history: per product, the states in
/// the order seen (consecutive repeats folded) must be the versions in order, each opened
/// within 0.1 s of the change (the first one valid from -infinity), the last one current
/// unless the product was deleted.
const VERSION_DIFFERENCES: &str = "
    WITH states AS (
        SELECT product_id, seen_at, deleted, store_id, name, category, sku,
               lag((deleted, store_id, name, category, sku)) OVER (PARTITION BY product_id ORDER BY seen_at) AS before
        FROM test_product_history),
    expected AS (
        SELECT product_id, row_number() OVER (PARTITION BY product_id ORDER BY seen_at) AS version,
               -- A product's first version is valid from -infinity: a sale an offline register
               -- made before the product reached the server still finds it.
               CASE WHEN row_number() OVER (PARTITION BY product_id ORDER BY seen_at) = 1 THEN '-infinity' ELSE seen_at END AS seen_at,
               store_id, name, category, sku,
               lead(seen_at) OVER (PARTITION BY product_id ORDER BY seen_at) AS until
        FROM states
        WHERE NOT deleted AND (before IS NULL OR before IS DISTINCT FROM (deleted, store_id, name, category, sku)))
    SELECT coalesce(e.product_id, v.product_id) AS product_id, e.version, v.version AS actual_version, e.name, v.name AS actual_name
    FROM expected e
    FULL JOIN analytics.dim_product v ON v.product_id = e.product_id AND v.version = e.version
    WHERE e.product_id IS NULL OR v.product_id IS NULL
       OR (e.store_id, e.name, e.category, e.sku) IS DISTINCT FROM (v.store_id, v.name, v.category, v.sku)
       OR (e.seen_at = '-infinity') <> (v.valid_from = '-infinity')
       OR CASE WHEN e.seen_at = '-infinity' OR v.valid_from = '-infinity' THEN false
               ELSE abs(extract(epoch FROM e.seen_at - v.valid_from)) > 0.1 END
       OR (e.until IS NULL AND v.is_current <> EXISTS (SELECT 1 FROM products p WHERE p.id = e.product_id))";

fn etl(db: &mut Client) -> serde_json::Value {
    let row = db.query_one("SELECT analytics.etl_load_sales()::text", &[]).unwrap();
    serde_json::from_str(row.get::<_, &str>(0)).unwrap()
}

/// The first column of every row of `sql`, as text.
fn texts(db: &mut Client, sql: &str) -> Vec<String> {
    db.query(sql, &[]).unwrap_or_else(|e| panic!("{e}\n---\n{sql}")).iter().map(|r| r.get(0)).collect()
}

fn assert_warehouse_exact(db: &mut Client, seed: u64, when: &str) {
    db.batch_execute("BEGIN").unwrap();
    db.batch_execute(WAREHOUSE_ORACLE).unwrap();
    let facts: i64 = db.query_one("SELECT count(*) FROM oracle_fact_differences", &[]).unwrap().get(0);
    let sample = texts(db, "SELECT d::text FROM (SELECT * FROM oracle_fact_differences ORDER BY sale_item_id, side LIMIT 6) d");
    let reports = texts(db, "SELECT report || ' of ' || store_id FROM oracle_report_differences");
    let versions = texts(db, &format!("SELECT d::text FROM ({VERSION_DIFFERENCES}) d LIMIT 6"));
    db.batch_execute("ROLLBACK").unwrap();
    assert_eq!(facts, 0, "{when} (LACAJA_TEST_SEED={seed}): facts differ from their definition:\n{}", sample.join("\n"));
    assert!(reports.is_empty(), "{when} (LACAJA_TEST_SEED={seed}): reports differ: {reports:?}");
    assert!(versions.is_empty(), "{when} (LACAJA_TEST_SEED={seed}): product versions differ from the history:\n{}", versions.join("\n"));
}

/// Renames, recategorises, adds and deletes products while the POS sells them.
fn product_changes(database: &str, seed: u64, stop: Arc<AtomicBool>) {
    let mut db = connect(database);
    let mut rng = Rng::new(seed);
    let mut n = 0;
    // Deleted: only products created in this round, which no POS session has in its list.
    let mut created: Vec<String> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut tx = db.transaction().unwrap();
        match rng.below(5) {
            0 | 1 => {
                tx.execute(
                    "UPDATE products SET name = name || ' v' || $1::int
                     WHERE id = (SELECT id FROM products ORDER BY md5(id::text || $1::int) LIMIT 1)",
                    &[&n],
                )
                .unwrap();
            }
            2 => {
                tx.execute(
                    "UPDATE products SET category = CASE WHEN category IS NULL THEN 'cat ' || ($1::int % 4) END
                     WHERE id = (SELECT id FROM products ORDER BY md5(id::text || $1::int) LIMIT 1)",
                    &[&n],
                )
                .unwrap();
            }
            3 => {
                // New products go to a store the POS sessions do not sell in, so that
                // deleting one never races with a sale of it.
                let id: String = tx
                    .query_one(
                        "INSERT INTO products (id, store_id, name, category, price_bs, price_usd, cost_bs, cost_usd)
                         VALUES (gen_random_uuid(), $2::text::uuid, 'new product ' || $1::int, 'cat new', 50, 1.37, 20, 0.55)
                         RETURNING id::text",
                        &[&n, &CATALOGUE_STORE],
                    )
                    .unwrap()
                    .get(0);
                created.push(id);
            }
            _ if !created.is_empty() => {
                let id = created.swap_remove(rng.below(created.len() as u64) as usize);
                tx.execute("DELETE FROM products WHERE id = $1::text::uuid", &[&id]).unwrap();
            }
            _ => {}
        }
        if rng.chance(10) {
            tx.rollback().unwrap();
        } else {
            tx.commit().unwrap();
        }
        thread::sleep(Duration::from_millis(20 + rng.below(60)));
    }
}

/// Runs the ETL over and over; some runs are cancelled at a random moment (a statement
/// timeout of a few milliseconds), the others run back to back or after a pause.
fn etl_runs(database: &str, seed: u64, stop: Arc<AtomicBool>) -> (u32, u32) {
    let mut db = connect(database);
    let mut rng = Rng::new(seed);
    let (mut completed, mut cancelled) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        let timeout = if rng.chance(35) { 1 + rng.below(25) } else { 0 };
        db.batch_execute(&format!("SET statement_timeout = {timeout}")).unwrap();
        let outcome = db.query_one("SELECT analytics.etl_load_sales()::text", &[]).map(|_| ());
        match outcome {
            Ok(()) => completed += 1,
            Err(e) if e.code() == Some(&postgres::error::SqlState::QUERY_CANCELED) => cancelled += 1,
            Err(e) => panic!("etl_load_sales() failed: {e}"),
        }
        thread::sleep(Duration::from_millis(rng.below(150)));
    }
    (completed, cancelled)
}

#[test]
fn warehouse_equals_its_definition_under_concurrent_changes_and_interrupted_runs() {
    let seed = common::seed();
    eprintln!("LACAJA_TEST_SEED={seed}");
    let database = "lacaja_test_warehouse";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    db.execute("INSERT INTO stores (id, name) VALUES ($1::text::uuid, 'Catalogue')", &[&CATALOGUE_STORE]).unwrap();
    db.batch_execute("UPDATE products SET sku = 'SKU-' || left(id::text, 8), category = CASE WHEN name LIKE '%1' THEN NULL ELSE category END")
        .unwrap();
    let shared: SharedIds = Arc::new(Mutex::new(Vec::new()));

    // History from before the warehouse existed.
    for handle in run_sessions(database, seed, 2, 400, &shared) {
        handle.join().expect("a POS session failed");
    }
    db.batch_execute(PRODUCT_HISTORY).unwrap();
    let enabled = db.query_one("SELECT analytics.enable_warehouse()::text", &[]).unwrap();
    let job: serde_json::Value = serde_json::from_str(enabled.get::<_, &str>(0)).unwrap();
    let job_id = job["job_id"].as_i64().expect("enable_warehouse() schedules the ETL") as i32;
    // The first load, by the scheduler's job run by hand.
    db.execute("CALL analytics.run_job($1)", &[&job_id]).unwrap();
    let last: serde_json::Value = serde_json::from_str(
        db.query_one("SELECT result::text FROM analytics.etl_runs ORDER BY run_id DESC LIMIT 1", &[])
            .unwrap()
            .get::<_, &str>(0),
    )
    .unwrap();
    assert_eq!(last["mode"], "full", "{last}");
    assert!(last["facts_inserted"].as_i64().unwrap() > 100, "{last}");
    assert_warehouse_exact(&mut db, seed, "after the first load");

    for round in 0..2u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let sessions = run_sessions(database, seed.wrapping_add(round * 101), 3, 700, &shared);
        let changer = {
            let stop = stop.clone();
            let database = database.to_string();
            thread::spawn(move || product_changes(&database, seed ^ (0xC0FFEE + round), stop))
        };
        let loader = {
            let stop = stop.clone();
            let database = database.to_string();
            thread::spawn(move || etl_runs(&database, seed ^ (0xE71 + round), stop))
        };
        for handle in sessions {
            handle.join().expect("a POS session failed");
        }
        stop.store(true, Ordering::Relaxed);
        changer.join().expect("the product changes failed");
        let (completed, cancelled) = loader.join().expect("the ETL runs failed");
        eprintln!("round {round}: {completed} ETL runs completed, {cancelled} cancelled");
        assert!(completed > 0, "some runs complete while the POS writes");

        let caught_up = etl(&mut db);
        assert_eq!(caught_up["mode"], "incremental", "{caught_up}");
        assert_warehouse_exact(&mut db, seed, &format!("round {round}, after the last run"));
        let again = etl(&mut db);
        for counter in ["changes", "facts_inserted", "facts_updated", "facts_deleted", "facts_repointed", "product_versions_opened"] {
            assert_eq!(again[counter], 0, "a run with nothing new changes nothing: {again}");
        }
    }

    // A run killed while it waits (after it consumed the change log) loses nothing.
    for handle in run_sessions(database, seed ^ 0x4B1, 2, 200, &shared) {
        handle.join().expect("a POS session failed");
    }
    let pending: i64 = db.query_one("SELECT count(*) FROM analytics_internal.warehouse_changes", &[]).unwrap().get(0);
    assert!(pending > 0);
    let mut blocker = connect(database);
    blocker.batch_execute("BEGIN; LOCK TABLE analytics.fact_sales IN ACCESS EXCLUSIVE MODE").unwrap();
    let victim = thread::spawn(move || {
        let mut etl_session = connect(database);
        etl_session.query_one("SELECT analytics.etl_load_sales()::text", &[]).map(|_| ())
    });
    let killed = wait_until_killed(&mut db);
    assert!(killed, "the ETL run should have been waiting on the lock");
    assert!(victim.join().unwrap().is_err(), "the killed run failed");
    blocker.batch_execute("ROLLBACK").unwrap();
    let still: i64 = db.query_one("SELECT count(*) FROM analytics_internal.warehouse_changes", &[]).unwrap().get(0);
    assert_eq!(still, pending, "the killed run's consumption of the log rolled back");

    // A gap: weeks of POS work, late offline sales among them, and one run catches up.
    for handle in run_sessions(database, seed ^ 0x6A9, 3, 600, &shared) {
        handle.join().expect("a POS session failed");
    }
    let caught_up = etl(&mut db);
    assert!(caught_up["changes"].as_i64().unwrap() > pending, "{caught_up}");
    assert_warehouse_exact(&mut db, seed, "after a gap");

    // A forced reload agrees with the incremental loads and rewrites nothing.
    let reload = db.query_one("SELECT analytics.etl_load_sales(full_reload => true)::text", &[]).unwrap();
    let reload: serde_json::Value = serde_json::from_str(reload.get::<_, &str>(0)).unwrap();
    assert_eq!(reload["mode"], "full");
    for counter in ["facts_inserted", "facts_updated", "facts_deleted"] {
        assert_eq!(reload[counter], 0, "incremental loads left nothing for a reload to fix: {reload}");
    }
}

/// Terminates the backend running etl_load_sales() once it waits on a lock.
fn wait_until_killed(db: &mut Client) -> bool {
    for _ in 0..200 {
        db.batch_execute("SELECT pg_stat_clear_snapshot()").unwrap();
        let row = db
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE '%etl_load_sales%' AND wait_event_type = 'Lock'
                   AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap();
        if let Some(row) = row {
            let pid: i32 = row.get(0);
            return db.query_one("SELECT pg_terminate_backend($1)", &[&pid]).unwrap().get(0);
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}
