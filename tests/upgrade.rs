//! `ALTER EXTENSION lacaja_analytics UPDATE` from the previous release, on the database
//! scripts/previous_release.sh built with it (the demo's data, zones, compatibility views,
//! hypertables, policies, the warehouse, and a user's view over the extension's views): the
//! current library first serves the old SQL (the POS sells, exact), then the update keeps every
//! figure, job, setting, hypertable and the warehouse, the database stays exact and keeps
//! capturing, and its catalog equals a fresh install of the current version.

mod common;

use common::workload::{assert_exact, assert_exact_under, run_sessions, seed_products, SharedIds};
use common::{add_pos_stores, connect};
use postgres::Client;
use std::sync::{Arc, Mutex};

const DATABASE: &str = "lacaja_upgrade";
const CATALOG: &str = include_str!("sql/extension_catalog.sql");
const WAREHOUSE_ORACLE: &str = include_str!("sql/warehouse_oracle.sql");

fn version(db: &mut Client) -> String {
    db.query_one("SELECT extversion FROM pg_extension WHERE extname = 'lacaja_analytics'", &[]).unwrap().get(0)
}

fn figures_changed(db: &mut Client) -> Vec<String> {
    db.query(
        "SELECT b.part || E':\\n  before ' || left(coalesce(b.value, ''), 300) || E'\\n  now    ' || left(coalesce(f.value, ''), 300)
         FROM upgrade_check.before b FULL JOIN upgrade_check.figures f USING (part)
         WHERE b.value IS DISTINCT FROM f.value",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn catalog(db: &mut Client) -> Vec<String> {
    db.query(CATALOG, &[]).unwrap().iter().map(|r| format!("{} {}: {}", r.get::<_, &str>(0), r.get::<_, &str>(1), r.get::<_, &str>(2))).collect()
}

fn sell(seed: u64, transactions: usize) {
    let shared: SharedIds = Arc::new(Mutex::new(Vec::new()));
    for handle in run_sessions(DATABASE, seed, 2, transactions, &shared) {
        handle.join().expect("a POS session failed");
    }
}


/// SPEC §2's stock and inventory definitions before 0.2.0 (the ledger), which the previous
/// release's SQL implements until `ALTER EXTENSION … UPDATE`.
const PREVIOUS_STOCK_ORACLE: &str = include_str!("sql/oracle_stock_0_1_0.sql");
#[test]
fn update_from_the_previous_release_keeps_everything_and_equals_a_fresh_install() {
    let seed = common::seed();
    eprintln!("LACAJA_TEST_SEED={seed}");
    let mut db = common::try_connect(DATABASE).unwrap_or_else(|e| {
        panic!("no database {DATABASE} ({e}): scripts/test.sh builds it on the previous release (scripts/previous_release.sh)")
    });
    let current: String = db
        .query_one("SELECT default_version FROM pg_available_extensions WHERE name = 'lacaja_analytics'", &[])
        .unwrap()
        .get(0);
    let previous = version(&mut db);
    assert_ne!(previous, current, "{DATABASE} must still be at the previous release (run scripts/test.sh)");

    // The current library under the previous release's SQL: every C function it names is there,
    // and the POS sells, exact.
    let missing: Vec<String> = db
        .query(
            "SELECT p.oid::regprocedure::text, p.prosrc FROM pg_proc p
             JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'lacaja_analytics'
             WHERE p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'c')",
            &[],
        )
        .unwrap()
        .iter()
        .filter_map(|r| {
            let (function, symbol): (String, String) = (r.get(0), r.get(1));
            let probe = format!(
                "CREATE FUNCTION pg_temp.lacaja_symbol_probe() RETURNS void AS '$libdir/lacaja_analytics', '{symbol}' LANGUAGE c"
            );
            let found = db.batch_execute(&format!("BEGIN; {probe}; ROLLBACK")).is_ok();
            if !found {
                db.batch_execute("ROLLBACK").ok();
            }
            (!found).then(|| format!("{function} ({symbol})"))
        })
        .collect();
    assert!(missing.is_empty(), "the current library lacks functions the {previous} SQL calls: {missing:?}");
    assert!(figures_changed(&mut db).is_empty(), "the new library changed figures: {:?}", figures_changed(&mut db));
    add_pos_stores(&mut db);
    seed_products(&mut db);
    sell(seed, 100);
    // The previous release's SQL keeps the previous release's stock definitions until the update.
    assert_exact_under(&mut db, seed, &format!("the current library serving the {previous} SQL"), PREVIOUS_STOCK_ORACLE);

    // The update.
    db.batch_execute("CREATE TABLE upgrade_check.just_before AS SELECT * FROM upgrade_check.figures").unwrap();
    db.batch_execute("ALTER EXTENSION lacaja_analytics UPDATE").unwrap();
    assert_eq!(version(&mut db), current);
    let changed: Vec<String> = db
        .query(
            "SELECT b.part FROM upgrade_check.just_before b JOIN upgrade_check.figures f USING (part)
             WHERE b.value IS DISTINCT FROM f.value",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(changed.is_empty(), "the update changed {changed:?}");
    let problems: Vec<String> = db
        .query("SELECT check_name || ': ' || detail FROM analytics.health() WHERE status = 'problem'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(problems.is_empty(), "health() after the update: {problems:?}");
    assert_exact(&mut db, seed, "right after the update");

    // It keeps capturing, the jobs run, the warehouse loads exact, the replaced key holds.
    sell(seed ^ 0xA11, 150);
    assert_exact(&mut db, seed, "selling after the update");
    db.batch_execute("UPDATE analytics.jobs SET next_start = now() WHERE scheduled; SELECT analytics.run_pending_jobs();").unwrap();
    let failing: i64 = db.query_one("SELECT count(*) FROM analytics.job_stats WHERE consecutive_failures > 0", &[]).unwrap().get(0);
    assert_eq!(failing, 0, "jobs fail after the update");
    db.batch_execute("SELECT analytics.etl_load_sales(); BEGIN").unwrap();
    db.batch_execute(WAREHOUSE_ORACLE).unwrap();
    let facts: i64 = db.query_one("SELECT count(*) FROM oracle_fact_differences", &[]).unwrap().get(0);
    db.batch_execute("ROLLBACK").unwrap();
    assert_eq!(facts, 0, "warehouse facts after the update");
    let duplicate = db.batch_execute(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment, sale_number)
         SELECT gen_random_uuid(), store_id, now(), totals, payment, sale_number FROM sales WHERE sale_number IS NOT NULL LIMIT 1",
    );
    assert_eq!(duplicate.expect_err("a duplicate invoice number").code(), Some(&postgres::error::SqlState::UNIQUE_VIOLATION));

    // The upgraded catalog is a fresh install's.
    let mut admin = connect("postgres");
    admin.batch_execute("DROP DATABASE IF EXISTS lacaja_upgrade_fresh WITH (FORCE)").unwrap();
    admin.batch_execute("CREATE DATABASE lacaja_upgrade_fresh").unwrap();
    let mut fresh = connect("lacaja_upgrade_fresh");
    fresh.batch_execute("CREATE EXTENSION lacaja_analytics").unwrap();
    let (upgraded, installed) = (catalog(&mut db), catalog(&mut fresh));
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|r| !installed.contains(r)).collect();
    let only_installed: Vec<&String> = installed.iter().filter(|r| !upgraded.contains(r)).collect();
    assert!(
        only_upgraded.is_empty() && only_installed.is_empty(),
        "the upgraded catalog differs from a fresh {current} install:\n--- only after the update:\n{}\n--- only in a fresh install:\n{}",
        only_upgraded.iter().map(|s| format!("{s:.600}")).collect::<Vec<_>>().join("\n"),
        only_installed.iter().map(|s| format!("{s:.600}")).collect::<Vec<_>>().join("\n")
    );
}
