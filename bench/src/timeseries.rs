//! `scripts/bench.sh --events 50M`: LA-CAJA's `events` as a plain table and as a hypertable.
//!
//! Builds `lacaja_bench_events` (LA-CAJA's schema, 100 stores, `--events` sync events over
//! `--days` days), then measures, in the same run: a one-store one-day query on the plain
//! table and after the conversion (with LA-CAJA's indexes, and with a (store_id, created_at)
//! index on both), the online `create_hypertable` while a register keeps writing (duration,
//! the longest time POS writes were held back, what the register felt), and insert throughput
//! into the plain and the partitioned table. Writes its section of docs/benchmarks.md.

use super::{connect, ms, progress, spread, thousands};
use postgres::Client;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DATABASE: &str = "lacaja_bench_events";
pub const BEGIN: &str = "<!-- events benchmark: scripts/bench.sh --events N -->";
pub const END: &str = "<!-- end of events benchmark -->";

struct Inserts {
    rows_per_s: f64,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    rows: usize,
}

/// `clients` registers each inserting one event per transaction until `stop` (or `duration`).
fn insert_events(server: &str, clients: u64, duration: Option<Duration>, stop: Arc<AtomicBool>) -> Inserts {
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|client| {
            let (server, stop) = (server.to_string(), stop.clone());
            std::thread::spawn(move || {
                let mut db = connect(&server, DATABASE);
                let insert = db
                    .prepare(
                        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
                         SELECT gen_random_uuid(), s.id, md5('device' || $1::int)::uuid, $2::bigint, 'SaleCreated', now(),
                                jsonb_build_object('client', $1::int, 'seq', $2::bigint)
                         FROM bench_event_stores s WHERE s.n = $1::int % 100",
                    )
                    .unwrap();
                let mut latencies = Vec::new();
                let mut seq = 0i64;
                let deadline = duration.map(|d| Instant::now() + d);
                while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
                    let t = Instant::now();
                    db.execute(&insert, &[&(client as i32), &seq]).expect("a register's event must commit");
                    latencies.push(ms(t.elapsed()));
                    seq += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies: Vec<f64> = Vec::new();
    for h in handles {
        latencies.extend(h.join().expect("a register failed"));
    }
    let seconds = started.elapsed().as_secs_f64();
    let rows = latencies.len();
    let max_ms = latencies.iter().cloned().fold(0.0, f64::max);
    let (median_ms, _) = spread(latencies.clone());
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p99_ms = latencies.get(((rows as f64 - 1.0) * 0.99).round() as usize).copied().unwrap_or(f64::NAN);
    Inserts { rows_per_s: rows as f64 / seconds, median_ms, p99_ms, max_ms, rows }
}

/// Median and p95 of the one-store one-day question, over `runs` different store/day pairs.
fn one_store_one_day(db: &mut Client, days: u64, runs: u64) -> (f64, f64, String) {
    let mut samples = Vec::new();
    let mut plan = String::new();
    for run in 0..runs {
        let store = (run * 37 % 100) as i32;
        let day_back = (1 + run * 53 % (days - 1)) as i32;
        // What the application sends: literal bounds (or parameters), which the planner prunes by.
        let bounds = db
            .query_one(
                "SELECT (SELECT id::text FROM bench_event_stores WHERE n = $1),
                        (date_trunc('day', now(), 'UTC') - make_interval(days => $2))::text,
                        (date_trunc('day', now(), 'UTC') - make_interval(days => $2 - 1))::text",
                &[&store, &day_back],
            )
            .unwrap();
        let sql = format!(
            "SELECT count(*), count(DISTINCT device_id) FROM events
             WHERE store_id = '{}' AND created_at >= '{}' AND created_at < '{}'",
            bounds.get::<_, String>(0),
            bounds.get::<_, String>(1),
            bounds.get::<_, String>(2)
        );
        if run == 0 {
            plan = db
                .query(&format!("EXPLAIN (COSTS OFF) {sql}"), &[])
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .filter(|l| l.contains("Scan"))
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
                .join("; ");
        }
        let t = Instant::now();
        db.batch_execute(&sql).unwrap();
        samples.push(ms(t.elapsed()));
    }
    let (median, p95) = spread(samples);
    (median, p95, plan)
}

pub fn run(server: &str, events: u64, days: u64, duration: u64, runs: u64, command: &str, output: &str) {
    let started = Instant::now();
    let mut db = super::fresh_lacaja_database(server, DATABASE);
    db.batch_execute(
        "CREATE TABLE bench_event_stores AS SELECT n, md5('store' || n)::uuid AS id FROM generate_series(0, 99) n;
         INSERT INTO stores (id, name) SELECT id, 'Store ' || n FROM bench_event_stores;
         ALTER TABLE sync_conflicts DROP CONSTRAINT sync_conflicts_event_id_a_fkey, DROP CONSTRAINT sync_conflicts_event_id_b_fkey;
         ALTER TABLE events DROP CONSTRAINT events_pkey;",
    )
    .unwrap();

    eprintln!("==> loading {} events over {days} days", thousands(events));
    let batch = 2_000_000u64;
    let load_started = Instant::now();
    let mut done = 0;
    while done < events {
        let to = (done + batch).min(events);
        db.batch_execute(&format!(
            "INSERT INTO events (event_id, store_id, device_id, seq, type, version, created_at, received_at, payload)
             SELECT md5('event' || i)::uuid, s.id, md5('device' || (i % 1000))::uuid, i,
                    (ARRAY['SaleCreated', 'SaleCreated', 'SaleCreated', 'StockMoved', 'SaleVoided', 'CashClosed'])[1 + i % 6],
                    1, t, t + (i % 17) * interval '1 second',
                    jsonb_build_object('sale_number', i, 'total_bs', (i % 9973) / 7.0, 'items', i % 9)
             FROM generate_series({from}::bigint, {to}::bigint - 1) i
             CROSS JOIN LATERAL (SELECT now() - (i::float8 / {events}::float8) * interval '{days} days' AS t) tt
             JOIN bench_event_stores s ON s.n = i % 100",
            from = done
        ))
        .unwrap();
        done = to;
        progress("events", done, events, load_started);
    }
    eprintln!();
    // LA-CAJA's keys back after the load (sync_conflicts references events twice, SPEC §7).
    db.batch_execute(
        "ALTER TABLE events ADD PRIMARY KEY (event_id);
         ALTER TABLE sync_conflicts ADD CONSTRAINT sync_conflicts_event_id_a_fkey FOREIGN KEY (event_id_a) REFERENCES events (event_id),
                                    ADD CONSTRAINT sync_conflicts_event_id_b_fkey FOREIGN KEY (event_id_b) REFERENCES events (event_id);",
    )
    .unwrap();
    db.batch_execute("VACUUM ANALYZE events").unwrap();
    let load_s = load_started.elapsed().as_secs_f64();
    let size: String = db.query_one("SELECT pg_size_pretty(pg_total_relation_size('events'))", &[]).unwrap().get(0);

    eprintln!("==> one store, one day on the plain table");
    let slow_runs = runs.clamp(3, 5);
    let plain_as_is = one_store_one_day(&mut db, days, slow_runs);
    db.batch_execute("CREATE INDEX events_store_created ON events (store_id, created_at); ANALYZE events;").unwrap();
    let plain_indexed = one_store_one_day(&mut db, days, runs);

    eprintln!("==> inserts into the plain table ({duration} s, 4 registers)");
    let plain_inserts = insert_events(server, 4, Some(Duration::from_secs(duration)), Arc::new(AtomicBool::new(false)));

    eprintln!("==> create_hypertable online while a register keeps writing");
    let before: i64 = db.query_one("SELECT count(*) FROM events", &[]).unwrap().get(0);
    let stop = Arc::new(AtomicBool::new(false));
    let register = {
        let (server, stop) = (server.to_string(), stop.clone());
        std::thread::spawn(move || insert_events(&server, 1, None, stop))
    };
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    db.batch_execute(
        "SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day',
                                            migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                            replace_unique => true)",
    )
    .unwrap();
    let convert_s = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let during = register.join().unwrap();
    let conversion = db
        .query_one(
            "SELECT rows_copied, changes_applied, longest_lock_ms::float8,
                    (SELECT count(*) FROM analytics.chunks WHERE hypertable_name = 'events')
             FROM analytics.hypertable_conversions WHERE table_name = 'events' AND status = 'done'",
            &[],
        )
        .unwrap();
    let after: i64 = db.query_one("SELECT count(*) FROM events", &[]).unwrap().get(0);
    let lost = before + during.rows as i64 - after;
    db.batch_execute("ANALYZE events").unwrap();

    eprintln!("==> one store, one day on the hypertable");
    let hyper_indexed = one_store_one_day(&mut db, days, runs);
    db.batch_execute("DROP INDEX events_store_created").unwrap();
    let hyper_as_is = one_store_one_day(&mut db, days, runs);
    db.batch_execute("CREATE INDEX events_store_created ON events (store_id, created_at)").unwrap();

    eprintln!("==> inserts into the hypertable ({duration} s, 4 registers)");
    let hyper_inserts = insert_events(server, 4, Some(Duration::from_secs(duration)), Arc::new(AtomicBool::new(false)));

    let mut md = String::new();
    let _ = writeln!(md, "{BEGIN}\n## Time series: `events` as a hypertable\n");
    let _ = writeln!(
        md,
        "Produced by `{command}` ({:.0} min): {} events of 100 stores over {days} days ({size}, loaded in {:.0} s), \
         converted online with `analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day', \
         migrate_data => true, extend_unique => true, replace_foreign_keys => true, replace_unique => true)`.\n",
        started.elapsed().as_secs_f64() / 60.0,
        thousands(events),
        load_s
    );
    let _ = writeln!(md, "| one store, one day (median / p95) | plain table | hypertable | ratio |\n|---|---|---|---|");
    let row = |what: &str, plain: &(f64, f64, String), hyper: &(f64, f64, String)| {
        format!(
            "| {what} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0}× |\n| plan | {} | {} | |",
            plain.0,
            plain.1,
            hyper.0,
            hyper.1,
            plain.0 / hyper.0,
            plain.2,
            hyper.2
        )
    };
    let _ = writeln!(md, "{}", row("LA-CAJA's indexes (primary key only)", &plain_as_is, &hyper_as_is));
    let _ = writeln!(md, "{}", row("with an index on (store_id, created_at)", &plain_indexed, &hyper_indexed));
    let _ = writeln!(md);
    let _ = writeln!(md, "| the conversion | |\n|---|---|");
    let _ = writeln!(md, "| duration of `create_hypertable` | {convert_s:.1} s |");
    let _ = writeln!(
        md,
        "| rows copied / changes made meanwhile and applied / chunks | {} / {} / {} |",
        thousands(conversion.get::<_, i64>(0) as u64),
        thousands(conversion.get::<_, i64>(1) as u64),
        conversion.get::<_, i64>(3)
    );
    let _ = writeln!(md, "| longest hold on POS writes (the swap) | {:.1} ms |", conversion.get::<_, f64>(2));
    let _ = writeln!(
        md,
        "| a register writing throughout: events / median / p99 / slowest insert | {} / {:.2} ms / {:.2} ms / {:.0} ms |",
        thousands(during.rows as u64),
        during.median_ms,
        during.p99_ms,
        during.max_ms
    );
    let _ = writeln!(md, "| events lost (before + written during − after) | {lost} |\n");
    let _ = writeln!(md, "| inserts, 4 registers, {duration} s | plain table | hypertable | ratio |\n|---|---|---|---|");
    let _ = writeln!(
        md,
        "| events per second | {:.0} | {:.0} | {:.2} |\n| median / p99 latency | {:.2} / {:.2} ms | {:.2} / {:.2} ms | |",
        plain_inserts.rows_per_s,
        hyper_inserts.rows_per_s,
        hyper_inserts.rows_per_s / plain_inserts.rows_per_s,
        plain_inserts.median_ms,
        plain_inserts.p99_ms,
        hyper_inserts.median_ms,
        hyper_inserts.p99_ms
    );
    let _ = writeln!(md, "\n{END}");
    super::write_section(output, BEGIN, END, &md);
    eprintln!("==> {output}: events section rewritten ({:.0} s in all)", started.elapsed().as_secs_f64());
}

