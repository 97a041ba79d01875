//! Maintenance never queues ahead of a sale (issue 15, SPEC §4): while a report holds
//! `ACCESS SHARE` on LA-CAJA's tables for 30 s and a register sells continuously, every
//! maintenance operation that needs a lock in conflict with the POS's writes (chunk creation,
//! retention, a store's new zone, the compatibility views, attach, hypertable indexes) waits
//! by short tries instead of standing in the queue; the register's p99 stays under 100 ms,
//! every operation completes once the report ends, and the rollups stay exact.

mod common;

use common::workload::seed_products;
use common::{connect, differences, lacaja_database, STORES};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const DATABASE: &str = "lacaja_test_maintenance";
const REPORT_SECONDS: u64 = 30;

/// One POS transaction (a sale, two items, its sync event), timed from BEGIN to COMMIT.
fn sell(pos: &mut postgres::Client, n: u64) -> Duration {
    let started = Instant::now();
    let store = STORES[(n % 3) as usize].0;
    pos.batch_execute(&format!(
        "BEGIN;
         INSERT INTO sales (id, store_id, sold_at, totals, payment)
         VALUES (md5('maintenance/{n}')::uuid, '{store}', now(), '{{\"total_bs\": 12.5, \"total_usd\": 0.35}}', '{{\"method\": \"CASH_BS\"}}');
         INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
         SELECT md5('maintenance/{n}/' || p.id)::uuid, md5('maintenance/{n}')::uuid, p.id, 1, 6.25, 0.17
         FROM (SELECT id FROM products WHERE store_id = '{store}' ORDER BY id LIMIT 2) p;
         INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         VALUES (md5('maintenance/event/{n}')::uuid, '{store}', '{store}', {n}, 'SaleCreated', now(), '{{}}');
         COMMIT;"
    ))
    .expect("a sale must commit while maintenance runs");
    started.elapsed()
}

/// Holds ACCESS SHARE on every table a report reads for REPORT_SECONDS while `operations` run,
/// each in a session of its own; every operation must succeed within 30 s of the report's end.
fn behind_a_report(operations: &[(&str, &[&str])]) {
    let report = thread::spawn(|| {
        let mut reader = connect(DATABASE);
        reader
            .batch_execute(&format!(
                "BEGIN;
                 SELECT count(*) FROM sales; SELECT count(*) FROM sale_items; SELECT count(*) FROM events;
                 SELECT count(*) FROM products; SELECT count(*) FROM inventory_movements;
                 SELECT count(*) FROM mv_sales_daily; SELECT count(*) FROM mv_top_products_30d;
                 SELECT count(*) FROM mv_inventory_metrics; SELECT count(*) FROM mv_customer_metrics;
                 SELECT count(*) FROM sales_heatmap;
                 SELECT pg_sleep({REPORT_SECONDS});
                 COMMIT;"
            ))
            .unwrap();
        Instant::now()
    });
    thread::sleep(Duration::from_millis(1_000));
    let started = Instant::now();
    let runs: Vec<_> = operations
        .iter()
        .map(|(name, statements)| {
            let (name, statements) = (name.to_string(), statements.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            thread::spawn(move || {
                let mut maintenance = connect(DATABASE);
                for statement in &statements {
                    maintenance.batch_execute(statement).unwrap_or_else(|e| panic!("{name}: {statement}: {e:?}"));
                }
                (name, started.elapsed(), Instant::now())
            })
        })
        .collect();
    let report_ended = report.join().unwrap();
    for run in runs {
        let (name, took, done) = run.join().expect("a maintenance operation failed");
        eprintln!("{name}: done after {took:?}");
        assert!(
            done.saturating_duration_since(report_ended) < Duration::from_secs(30),
            "{name} should complete soon after the report ends"
        );
    }
}

#[test]
fn maintenance_waits_by_short_tries_behind_a_report_and_sales_go_on() {
    let mut db = lacaja_database(DATABASE);
    seed_products(&mut db);
    db.batch_execute(include_str!("../sql/fixtures/lacaja_materialized_views.sql")).unwrap();
    db.batch_execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), s.id, s.id, i, 'SaleCreated', now() - i * interval '1 day', '{}'
         FROM generate_series(1, 60) i CROSS JOIN stores s;
         SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day',
                                            migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                            replace_unique => true);
         -- a register's event from before any chunk: it waits in the default partition
         INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), id, id, 0, 'SaleCreated', now() - interval '400 days', '{}' FROM stores;",
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let register = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut pos = connect(DATABASE);
            let mut latencies = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                latencies.push(sell(&mut pos, n));
                n += 1;
                thread::sleep(Duration::from_millis(5));
            }
            latencies
        })
    };
    thread::sleep(Duration::from_millis(500));

    // Phase one: the report, and every operation but the index builds at once (an index build
    // and maintenance take turns, see phase two).
    let operations: &[(&str, &[&str])] = &[
        ("chunk creation", &["UPDATE analytics.hypertables SET chunks_ahead = chunks_ahead + 3 WHERE relation = 'events'::regclass",
                             "SELECT analytics_internal._maintain_chunks(h) FROM analytics.hypertables h WHERE relation = 'events'::regclass"]),
        ("retention", &["SELECT count(*) FROM analytics.drop_chunks('events', INTERVAL '30 days')"]),
        ("a store's new zone", &["SELECT analytics.set_store_timezone('c0000000-0000-4000-8000-000000000003', 'America/Bogota')"]),
        ("compatibility views", &["SELECT analytics.install_compat(replace_public => true)", "SELECT analytics.uninstall_compat()"]),
        ("attach", &["SELECT analytics.attach('public')"]),
    ];
    behind_a_report(operations);
    // Phase two: the recommended indexes, built CONCURRENTLY per chunk on the hypertable, then
    // attached by short tries.
    behind_a_report(&[("hypertable indexes", &["SELECT count(*) FROM analytics.create_recommended_indexes(dry_run => false)"])]);
    // The index builder works after its queuing transaction committed: wait for it.
    common::wait_for_index_builds(&mut db);
    stop.store(true, Ordering::Relaxed);
    let mut latencies = register.join().unwrap();
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    eprintln!("register: {} sales, p99 {p99:?}, slowest {:?}", latencies.len(), latencies.last().unwrap());
    assert!(latencies.len() > 300, "the register should have kept selling");
    assert!(p99 < Duration::from_millis(100), "POS p99 {p99:?} while maintenance waited behind a report");

    // Each operation did its work.
    let failed: Vec<String> = db
        .query("SELECT index_name || ': ' || error FROM analytics.index_builds WHERE status = 'failed'", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(failed.is_empty(), "index builds failed: {failed:?}");
    let invalid: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'events'::regclass AND c.relname LIKE 'lacaja_events_%' AND i.indisvalid",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(invalid, 3, "the three recommended indexes on the events hypertable, each valid over every chunk");
    // A chunk created afterwards has them from its attach.
    db.batch_execute(
        "UPDATE analytics.hypertables SET chunks_ahead = chunks_ahead + 1 WHERE relation = 'events'::regclass;
         SELECT analytics_internal._maintain_chunks(h) FROM analytics.hypertables h WHERE relation = 'events'::regclass;",
    )
    .unwrap();
    let newest_indexed: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_inherits p ON p.inhrelid = i.indexrelid
             JOIN pg_class parent ON parent.oid = p.inhparent AND parent.relname LIKE 'lacaja_events_%'
             WHERE i.indrelid = (SELECT chunk FROM analytics.chunks WHERE hypertable_name = 'events' ORDER BY range_start DESC LIMIT 1)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(newest_indexed, 3, "a new chunk gets the hypertable's indexes");
    // Chunk creation may have moved the late row into a chunk of its own after retention listed
    // what to drop: the policy's next run drops it.
    db.batch_execute("SELECT count(*) FROM analytics.drop_chunks('events', INTERVAL '30 days')").unwrap();
    let (old_chunks, default_rows, dropped_before): (i64, i64, bool) = {
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM analytics.chunks WHERE hypertable_name = 'events' AND range_end <= now() - interval '30 days'),
                        (SELECT count(*) FROM events_default),
                        (SELECT dropped_before IS NOT NULL FROM analytics.hypertables WHERE relation = 'events'::regclass)",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!((old_chunks, default_rows, dropped_before), (0, 0, true), "retention dropped the old chunks and the waiting row");
    let ahead: i64 = db
        .query_one("SELECT count(*) FROM analytics.chunks WHERE hypertable_name = 'events' AND range_start > now() + interval '7 days'", &[])
        .unwrap()
        .get(0);
    assert!(ahead >= 2, "chunks were created further ahead");
    let zone: String = db
        .query_one("SELECT timezone FROM analytics.store_settings WHERE store_id = 'c0000000-0000-4000-8000-000000000003'", &[])
        .unwrap()
        .get(0);
    assert_eq!(zone, "America/Bogota");
    let replaced: i64 = db.query_one("SELECT count(*) FROM analytics_internal.compat_replaced", &[]).unwrap().get(0);
    assert_eq!(replaced, 0, "install_compat, then uninstall_compat");

    // Sales of the re-zoned store that committed during its re-bucketing are moved by the
    // settle job; then every rollup equals its definition.
    db.batch_execute("CALL analytics.run_job(2)").unwrap();
    let settling: i64 = db.query_one("SELECT count(*) FROM analytics_internal.zone_changes", &[]).unwrap().get(0);
    assert_eq!(settling, 0, "the settle job ran");
    let found = differences(&mut db);
    assert!(found.is_empty(), "after maintenance behind a report:\n{}", found.join("\n"));
}

#[test]
fn retention_accepts_timescaledb_interval_form_and_gives_up_with_55p03() {
    let mut db = lacaja_database("lacaja_test_retention_forms");
    db.batch_execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), s.id, s.id, i, 'SaleCreated', now() - i * interval '1 day', '{}'
         FROM generate_series(1, 10) i CROSS JOIN stores s;
         SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day',
                                            migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                            replace_unique => true);",
    )
    .unwrap();
    let dropped: i64 = db
        .query_one("SELECT count(*) FROM analytics.drop_chunks('events', INTERVAL '5 days')", &[])
        .expect("TimescaleDB's documented interval form")
        .get(0);
    assert!(dropped >= 4, "{dropped} chunks dropped");

    // A report that never ends: the drop gives up after lacaja_analytics.maintenance_lock_wait
    // with lock_not_available, having changed nothing.
    let mut reader = connect("lacaja_test_retention_forms");
    reader.batch_execute("BEGIN; SELECT count(*) FROM events;").unwrap();
    let chunks_before: i64 = db.query_one("SELECT count(*) FROM analytics.chunks", &[]).unwrap().get(0);
    db.batch_execute("SET lacaja_analytics.maintenance_lock_wait = '1s'").unwrap();
    let error = db
        .query_one("SELECT count(*) FROM analytics.drop_chunks('events', INTERVAL '2 days')", &[])
        .expect_err("the report holds every chunk");
    let error = error.as_db_error().expect("a database error");
    assert_eq!(error.code().code(), "55P03", "{error:?}");
    assert!(error.hint().unwrap_or("").contains("Nothing was changed"), "{error:?}");
    reader.batch_execute("COMMIT").unwrap();
    let chunks_after: i64 = db.query_one("SELECT count(*) FROM analytics.chunks", &[]).unwrap().get(0);
    assert_eq!(chunks_before, chunks_after);
}
