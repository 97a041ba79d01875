//! Dump and restore on the demo's data (LA-CAJA's schema, the demo's generated history, sales
//! and events as hypertables, compatibility views, jobs, the warehouse), with pg_dump and
//! pg_restore as a DBA runs them: custom format (restored with --jobs), plain format, and custom
//! restored section by section. The restored database must be the same (rollups, jobs, settings, zones,
//! hypertables and chunks, the warehouse), exact without a refresh, capturing at once; and
//! writes made there with triggers off (session_replication_role = replica) must be noted and
//! repaired by the continuous-aggregate policy.

mod common;

use common::workload::{assert_exact, run_sessions, seed_products, SharedIds};
use common::{add_pos_stores, connect, server, STORES};
use postgres::Client;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

const WAREHOUSE_ORACLE: &str = include_str!("sql/warehouse_oracle.sql");

fn conninfo(database: &str) -> String {
    format!("{} dbname={database}", server())
}

/// Runs a client program (pg_dump, pg_restore, psql); panics with its output if it fails or
/// says ERROR (pg_restore goes on after errors and says so only on stderr).
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success() && !stderr.contains("ERROR"), "{program} {args:?} failed:\n{stderr}");
    stderr
}

fn recreate(name: &str) {
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
}

/// The demo's database, as scripts/demo.sh builds it (fewer days), plus the test stores the
/// POS workload sells in.
fn demo_database(name: &str, seed: u64) -> Client {
    recreate(name);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    run("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "days=14", "-d", &conninfo(name),
                  "-f", root.join("sql/fixtures/lacaja_schema.sql").to_str().unwrap(),
                  "-f", root.join("demo/generate.sql").to_str().unwrap(),
                  "-f", root.join("sql/fixtures/lacaja_materialized_views.sql").to_str().unwrap()]);
    let mut db = connect(name);
    add_pos_stores(&mut db);
    seed_products(&mut db);
    db.batch_execute("CREATE EXTENSION lacaja_analytics").unwrap();
    run("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &conninfo(name), "-f", root.join("tests/sql/demo_setup.sql").to_str().unwrap()]);
    for (store, tz) in STORES {
        db.execute("SELECT analytics.set_store_timezone($1::text::uuid, $2)", &[&store, &tz]).unwrap();
    }
    let shared: SharedIds = Arc::new(Mutex::new(Vec::new()));
    for handle in run_sessions(name, seed, 2, 300, &shared) {
        handle.join().expect("a POS session failed");
    }
    db.batch_execute("SELECT analytics.etl_load_sales(); SELECT analytics.run_pending_jobs();").unwrap();
    // What the warehouse has not loaded yet stays in its change log, dumped with it.
    for handle in run_sessions(name, seed ^ 0x5EED, 1, 50, &shared) {
        handle.join().expect("a POS session failed");
    }
    db
}

/// What must come back the same, as one text per part.
fn state(db: &mut Client) -> Vec<(String, String)> {
    [
        ("sales_daily", "SELECT string_agg(d::text, ',' ORDER BY d.store_id, d.day) FROM analytics.sales_daily d"),
        ("sales_hourly", "SELECT string_agg(h::text, ',' ORDER BY h.store_id, h.bucket) FROM analytics.sales_hourly h"),
        ("product_sales_daily", "SELECT string_agg(p::text, ',' ORDER BY p.store_id, p.day, p.product_id) FROM analytics.product_sales_daily p"),
        ("product_stock", "SELECT string_agg(p::text, ',' ORDER BY p.store_id, p.product_id) FROM analytics.product_stock p"),
        ("compat view", "SELECT string_agg(m::text, ',' ORDER BY m.store_id, m.sale_date) FROM public.mv_sales_daily m"),
        ("jobs", "SELECT string_agg(concat_ws('/', job_id, proc, schedule_interval, config, scheduled, hypertable), ',' ORDER BY job_id) FROM analytics.jobs"),
        ("zones", "SELECT string_agg(s::text, ',' ORDER BY s.store_id) FROM analytics.store_settings s"),
        ("holidays", "SELECT string_agg(h::text, ',' ORDER BY h.day) FROM analytics.holidays h"),
        ("hypertables", "SELECT string_agg(concat_ws('/', hypertable_id, relation, time_column, chunk_interval), ',' ORDER BY hypertable_id) FROM analytics.hypertables"),
        ("chunks", "SELECT string_agg(concat_ws('/', hypertable_name, chunk_name, range_start, range_end), ',' ORDER BY hypertable_name, chunk_name) FROM analytics.chunks"),
        ("replaced keys", "SELECT string_agg(r::text, ',' ORDER BY r::text) FROM analytics_internal.replaced_unique_indexes r"),
        ("fact_sales", "SELECT md5(string_agg(f::text, ',' ORDER BY f.sale_item_id)) FROM analytics.fact_sales f"),
        ("dim_product", "SELECT md5(string_agg(p::text, ',' ORDER BY p.product_key)) FROM analytics.dim_product p"),
        ("warehouse change log", "SELECT string_agg(c.sale_id::text, ',' ORDER BY c.sale_id) FROM analytics_internal.warehouse_changes c"),
    ]
    .iter()
    .map(|(name, sql)| {
        let value: Option<String> = db.query_one(*sql, &[]).unwrap_or_else(|e| panic!("{name}: {e}")).get(0);
        (name.to_string(), value.unwrap_or_default())
    })
    .collect()
}

fn problems(db: &mut Client) -> Vec<String> {
    db.query("SELECT check_name || ': ' || detail FROM analytics.health() WHERE status = 'problem'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn assert_warehouse_exact(db: &mut Client, when: &str) {
    db.batch_execute("SELECT analytics.etl_load_sales(); BEGIN").unwrap();
    db.batch_execute(WAREHOUSE_ORACLE).unwrap();
    let facts: i64 = db.query_one("SELECT count(*) FROM oracle_fact_differences", &[]).unwrap().get(0);
    let reports: i64 = db.query_one("SELECT count(*) FROM oracle_report_differences", &[]).unwrap().get(0);
    db.batch_execute("ROLLBACK").unwrap();
    assert_eq!((facts, reports), (0, 0), "{when}: warehouse facts and reports against their definition");
}

/// The restored database against the source, then at work.
fn check_restored(source: &mut Client, name: &str, how: &str, seed: u64) {
    let mut db = connect(name);
    let (before, after) = (state(source), state(&mut db));
    for ((part, expected), (_, actual)) in before.iter().zip(after.iter()) {
        assert!(expected == actual, "{how}: {part} differs after the restore:\n  source   {expected:.300}\n  restored {actual:.300}");
    }
    assert_eq!(problems(&mut db), Vec::<String>::new(), "{how}: health() right after the restore");
    assert_exact(&mut db, seed, &format!("{how}: right after the restore, without a refresh"));

    // Capturing at once: the POS sells, voids, returns and moves stock in the restored database.
    let shared: SharedIds = Arc::new(Mutex::new(Vec::new()));
    for handle in run_sessions(name, seed ^ 0xD0, 2, 150, &shared) {
        handle.join().expect("a POS session failed in the restored database");
    }
    assert_exact(&mut db, seed, &format!("{how}: after selling in the restored database"));
    assert_warehouse_exact(&mut db, how);

    // The replaced invoice-number key is still enforced.
    let duplicate = db.batch_execute(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment, sale_number)
         SELECT gen_random_uuid(), store_id, now(), totals, payment, sale_number FROM sales WHERE sale_number IS NOT NULL LIMIT 1",
    );
    let code = duplicate.expect_err("a duplicate invoice number must be refused").code().cloned();
    assert_eq!(code, Some(postgres::error::SqlState::UNIQUE_VIOLATION), "{how}");

    // Jobs run: chunk maintenance, retention, the policy.
    db.batch_execute("UPDATE analytics.jobs SET next_start = now() WHERE scheduled; SELECT analytics.run_pending_jobs();").unwrap();
    let failing: i64 = db.query_one("SELECT count(*) FROM analytics.job_stats WHERE consecutive_failures > 0", &[]).unwrap().get(0);
    assert_eq!(failing, 0, "{how}: jobs fail in the restored database");

    // Writes with triggers off: noted, said by health(), repaired by the policy.
    db.batch_execute(&format!(
        "SET session_replication_role = replica;
         INSERT INTO sales (id, store_id, sold_at, totals, payment)
         VALUES (gen_random_uuid(), '{}', now() - interval '40 days', '{{\"total_bs\": 36.5, \"total_usd\": 1}}', '{{\"method\": \"CASH_BS\"}}');
         UPDATE sale_items SET qty = qty + 1 WHERE id IN (SELECT id FROM sale_items ORDER BY id LIMIT 3);
         UPDATE inventory_movements SET qty_delta = qty_delta + 2 WHERE id IN (SELECT id FROM inventory_movements ORDER BY id LIMIT 2);
         RESET session_replication_role;",
        STORES[1].0
    ))
    .unwrap();
    let noticed: i64 = db
        .query_one("SELECT count(*) FROM analytics.health() WHERE check_name = 'writes with triggers off'", &[])
        .unwrap()
        .get(0);
    assert_eq!(noticed, 1, "{how}: health() says writes were made with triggers off");
    let verify: i64 = db.query_one("SELECT count(*) FROM analytics.verify()", &[]).unwrap().get(0);
    assert!(verify > 0, "{how}: the writes made with triggers off should differ until repaired");
    let policy: i32 = db
        .query_one("SELECT min(job_id) FROM analytics.jobs WHERE proc = 'analytics_internal.policy_refresh_continuous_aggregate'::regproc", &[])
        .unwrap()
        .get(0);
    db.batch_execute(&format!("CALL analytics.run_job({policy})")).unwrap();
    assert_exact(&mut db, seed, &format!("{how}: after the policy repaired the writes made with triggers off"));
    let pending: i64 = db.query_one("SELECT count(*) FROM analytics_internal.replica_writes", &[]).unwrap().get(0);
    assert_eq!(pending, 0, "{how}: the repaired notes are gone");
}

#[test]
fn dump_and_restore_keep_every_number_and_capture_at_once() {
    let seed = common::seed();
    eprintln!("LACAJA_TEST_SEED={seed}");
    let source_name = "lacaja_test_restore_source";
    let mut source = demo_database(source_name, seed);
    assert_exact(&mut source, seed, "the source before the dump");

    let dir = std::env::temp_dir().join(format!("lacaja_restore_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let custom = dir.join("demo.dump");
    let plain = dir.join("demo.sql");
    run("pg_dump", &["-Fc", "-d", &conninfo(source_name), "-f", custom.to_str().unwrap()]);
    run("pg_dump", &["-Fp", "-d", &conninfo(source_name), "-f", plain.to_str().unwrap()]);

    let target = "lacaja_test_restore_custom";
    recreate(target);
    // --jobs: triggers of several tables are created at once (the rebuild takes a lock).
    run("pg_restore", &["--jobs", "2", "-d", &conninfo(target), custom.to_str().unwrap()]);
    check_restored(&mut source, target, "pg_restore --jobs 2 of pg_dump -Fc", seed);

    let target = "lacaja_test_restore_plain";
    recreate(target);
    run("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &conninfo(target), "-f", plain.to_str().unwrap()]);
    check_restored(&mut source, target, "psql of pg_dump -Fp", seed);

    let target = "lacaja_test_restore_sections";
    recreate(target);
    for section in ["pre-data", "data", "post-data"] {
        run("pg_restore", &["--section", section, "-d", &conninfo(target), custom.to_str().unwrap()]);
    }
    check_restored(&mut source, target, "pg_restore --section pre-data, data, post-data", seed);
    std::fs::remove_dir_all(&dir).ok();
}
