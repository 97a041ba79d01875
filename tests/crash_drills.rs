//! Crash drills: the whole server killed (`kill -9` of the postmaster and of every process it
//! started, as a power cut leaves it) during a bulk load, during `refresh_all()`, during an
//! online `create_hypertable`, during `etl_load_sales()` and during a job; then restarted
//! (crash recovery). After each: no committed source row is lost, the rollups equal their
//! definition, an interrupted conversion is undone, and `health()` says what happened.
//! One test in its own binary: it restarts the local cluster (scripts/pg.sh).

mod common;

use common::workload::{assert_exact, seed_products};
use common::{connect, lacaja_database, try_connect, STORES};
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const DATABASE: &str = "lacaja_test_crash_drills";

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so read after its closing parenthesis
    stat[stat.rfind(')')? + 2..].split_whitespace().nth(1)?.parse().ok()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Kills the postmaster and everything it started at once, waits until they are gone, starts
/// the cluster again (crash recovery) and reconnects.
fn crash_and_restart(db: &mut Client) -> Client {
    let backend: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let postmaster = parent_of(backend).expect("the tests run on the server's machine (scripts/pg.sh's cluster)");
    let children: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(postmaster))
        .collect();
    for pid in std::iter::once(postmaster).chain(children.iter().copied()) {
        let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(postmaster) || children.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "the killed server's processes did not go away");
        thread::sleep(Duration::from_millis(100));
    }
    let started = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh"))
        .arg("start")
        .status()
        .expect("scripts/pg.sh runs");
    assert!(started.success(), "the cluster did not start again after the crash");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut db) = try_connect(DATABASE) {
            if db.batch_execute("SELECT 1").is_ok() {
                return db;
            }
        }
        assert!(Instant::now() < deadline, "the server did not come back after the crash");
        thread::sleep(Duration::from_millis(300));
    }
}

/// Waits until `condition` (a boolean query) holds, at most 60 s.
fn wait_for(db: &mut Client, what: &str, condition: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !db.query_one(condition, &[]).unwrap().get::<_, bool>(0) {
        assert!(Instant::now() < deadline, "waited 60 s for {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn health(db: &mut Client) -> Vec<(String, String, String)> {
    db.query("SELECT check_name, status, detail FROM analytics.health()", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn problems(db: &mut Client) -> Vec<String> {
    health(db).into_iter().filter(|(_, status, _)| status == "problem").map(|(c, _, d)| format!("{c}: {d}")).collect()
}

/// `n` sales of the first POS store with two items each, in one statement pair.
fn bulk_sales(n: i32) -> String {
    format!(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment)
         SELECT gen_random_uuid(), '{store}', now() - (i % 90) * interval '1 day' - (i % 1440) * interval '1 minute',
                jsonb_build_object('total_bs', 36.5 + i % 100, 'total_usd', 1 + (i % 100) / 36.5), '{{\"method\": \"CASH_BS\"}}'
         FROM generate_series(1, {n}) i;
         INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
         SELECT gen_random_uuid(), s.id, p.id, 1 + k, p.price_bs, p.price_usd
         FROM sales s CROSS JOIN generate_series(0, 1) k
         CROSS JOIN LATERAL (SELECT id, price_bs, price_usd FROM products WHERE store_id = s.store_id ORDER BY id OFFSET k LIMIT 1) p
         WHERE NOT EXISTS (SELECT 1 FROM sale_items x WHERE x.sale_id = s.id);",
        store = STORES[0].0
    )
}

/// A register that commits one sale after another until stopped, and the ids acknowledged.
fn register(stop: Arc<AtomicBool>, acknowledged: Arc<Mutex<Vec<String>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut pos = connect(DATABASE);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let id = format!("d1000000-0000-4000-8000-{n:012}");
            let sold = pos.execute(
                "INSERT INTO sales (id, store_id, sold_at, totals, payment)
                 VALUES ($1::text::uuid, $2::text::uuid, now(), '{\"total_bs\": 10, \"total_usd\": 0.27}', '{\"method\": \"CASH_BS\"}')",
                &[&id, &STORES[1].0],
            );
            match sold {
                Ok(_) => acknowledged.lock().unwrap().push(id),
                Err(_) => return, // the server went away: this sale was never acknowledged
            }
            n += 1;
        }
    })
}

#[test]
fn the_server_killed_during_loads_refreshes_conversions_etl_and_jobs_loses_nothing() {
    let seed = common::seed();
    eprintln!("LACAJA_TEST_SEED={seed}");
    let mut db = lacaja_database(DATABASE);
    seed_products(&mut db);
    db.batch_execute(&bulk_sales(60_000)).unwrap();
    assert_exact(&mut db, seed, "after the first load");

    // 1. A bulk load of 200,000 sales in one transaction, while a register commits sale after sale.
    let before: i64 = db.query_one("SELECT count(*) FROM sales", &[]).unwrap().get(0);
    let (stop, acknowledged) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
    let till = register(stop.clone(), acknowledged.clone());
    let loader = thread::spawn(|| {
        let mut load = connect(DATABASE);
        let _ = load.batch_execute(&format!("BEGIN; {} COMMIT;", bulk_sales(200_000)));
    });
    wait_for(&mut db, "the bulk load to run a while",
             "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE 'BEGIN; INSERT INTO sales%'
                              AND state = 'active' AND now() - query_start > interval '1 second')");
    let mut db = crash_and_restart(&mut db);
    stop.store(true, Ordering::Relaxed);
    let _ = (till.join(), loader.join());
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 5, "the register sold during the load");
    let (after, kept): (i64, i64) = {
        let row = db
            .query_one("SELECT (SELECT count(*) FROM sales), (SELECT count(*) FROM sales WHERE id = ANY($1::text[]::uuid[]))",
                       &[&acknowledged])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(kept as usize, acknowledged.len(), "a sale the server acknowledged was lost");
    assert!(after == before + kept || after == before + kept + 1, "the killed load left rows: {after} vs {before} + {kept}");
    assert_exact(&mut db, seed, "after the server was killed during a bulk load");
    assert_eq!(problems(&mut db), Vec::<String>::new(), "health() after the bulk load's crash");

    // 2. refresh_all(), killed while it compares and corrects.
    let refresher = thread::spawn(|| {
        let _ = connect(DATABASE).batch_execute("SELECT analytics.refresh_all()");
    });
    wait_for(&mut db, "refresh_all() to run a while",
             "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT analytics.refresh_all()'
                              AND state = 'active' AND now() - query_start > interval '1 second')");
    let mut db = crash_and_restart(&mut db);
    let _ = refresher.join();
    assert_exact(&mut db, seed, "after the server was killed during refresh_all()");

    // 3. An online create_hypertable, killed while it waits to swap (a report holds the table).
    let mut report = connect(DATABASE);
    report.batch_execute("BEGIN; SELECT count(*) FROM sales;").unwrap();
    let converter = thread::spawn(|| {
        let _ = connect(DATABASE).batch_execute(
            "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '7 days', migrate_data => true,
                                                extend_unique => true, replace_foreign_keys => true, replace_unique => true)",
        );
    });
    wait_for(&mut db, "the conversion to copy and wait for its swap",
             "SELECT EXISTS (SELECT 1 FROM analytics.hypertable_conversions
                              WHERE table_name = 'sales' AND status IN ('catching_up', 'swapping') AND rows_copied > 0)");
    let mut db = crash_and_restart(&mut db);
    let _ = converter.join();
    drop(report);
    let said = health(&mut db);
    assert!(said.iter().any(|(c, s, d)| c == "conversion of sales" && s == "problem" && d.contains("its worker ended")), "{said:?}");
    db.batch_execute("SELECT analytics.run_pending_jobs()").unwrap();  // what cron or the scheduler's start does
    let said = health(&mut db);
    assert!(said.iter().any(|(c, s, d)| c == "conversion of sales" && s == "notice" && d.contains("interrupted")), "{said:?}");
    let (kind, leftovers): (String, i64) = {
        let row = db
            .query_one(
                "SELECT (SELECT relkind::text FROM pg_class WHERE oid = 'sales'::regclass),
                        (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'lacaja\\_conversion\\_log\\_%')
                        + (SELECT count(*) FROM pg_class WHERE relname LIKE '%lacaja\\_%' AND relname LIKE 'sales%')",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((kind.as_str(), leftovers), ("r", 0), "the interrupted conversion is undone: the table as it was, nothing left");
    assert_exact(&mut db, seed, "after the server was killed during create_hypertable");
    db.batch_execute(
        "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '7 days', migrate_data => true,
                                            extend_unique => true, replace_foreign_keys => true, replace_unique => true)",
    )
    .expect("create_hypertable again after the undone one");
    assert_exact(&mut db, seed, "after converting again");

    // 4. etl_load_sales(), killed after it consumed the change log (it waits on the facts table).
    db.batch_execute("SELECT analytics.enable_warehouse(schedule_interval => NULL); SELECT analytics.etl_load_sales();").unwrap();
    db.batch_execute(&bulk_sales(3_000)).unwrap();
    let logged: i64 = db.query_one("SELECT count(DISTINCT sale_id) FROM analytics_internal.warehouse_changes", &[]).unwrap().get(0);
    assert!(logged >= 3_000, "the new sales are in the change log ({logged})");
    let mut blocker = connect(DATABASE);
    blocker.batch_execute("BEGIN; LOCK TABLE analytics.fact_sales IN SHARE MODE;").unwrap();
    let etl = thread::spawn(|| {
        let _ = connect(DATABASE).batch_execute("SELECT analytics.etl_load_sales()");
    });
    wait_for(&mut db, "the ETL to wait on the facts table",
             "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT analytics.etl_load_sales()' AND wait_event_type = 'Lock')");
    let mut db = crash_and_restart(&mut db);
    let _ = etl.join();
    drop(blocker);
    let still: i64 = db.query_one("SELECT count(DISTINCT sale_id) FROM analytics_internal.warehouse_changes", &[]).unwrap().get(0);
    assert_eq!(still, logged, "the killed ETL's consumption of the change log was rolled back");
    db.batch_execute("SELECT analytics.etl_load_sales(); BEGIN").unwrap();
    db.batch_execute(include_str!("sql/warehouse_oracle.sql")).unwrap();
    let facts: i64 = db.query_one("SELECT count(*) FROM oracle_fact_differences", &[]).unwrap().get(0);
    db.batch_execute("ROLLBACK").unwrap();
    assert_eq!(facts, 0, "the warehouse after the server was killed during etl_load_sales()");

    // 5. A job run by the scheduler, killed while it runs. (run_pending_jobs() runs its jobs in
    // the caller's transaction: killed, it leaves nothing, and the job is still due.)
    db.batch_execute(
        "CREATE PROCEDURE public.slow_job(job_id int, config jsonb) LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(60); END $$",
    )
    .unwrap();
    common::point_scheduler_at(Some(DATABASE), "1s");
    let job: i32 = db.query_one("SELECT analytics.add_job('public.slow_job', interval '1 hour')", &[]).unwrap().get(0);
    wait_for(&mut db, "the scheduler to run the job",
             &format!("SELECT EXISTS (SELECT 1 FROM analytics_internal.job_run_state WHERE job_id = {job} AND running_pid IS NOT NULL)"));
    let mut db = crash_and_restart(&mut db);
    let check = format!("job {job}");
    let said = health(&mut db);
    assert!(said.iter().any(|(c, s, d)| *c == check && s == "problem"
                            && (d.contains("was running when its process ended") || d.contains("failed its last 1 run(s)"))),
            "{said:?}");
    // The scheduler, back with the server, records the run as crashed (and retries it later).
    wait_for(&mut db, "the scheduler to record the crash",
             &format!("SELECT EXISTS (SELECT 1 FROM analytics.job_errors WHERE job_id = {job} AND sqlerrcode = 'crash')"));
    common::point_scheduler_at(None, "1s");
    let said = health(&mut db);
    assert!(said.iter().any(|(c, s, d)| *c == check && s == "problem" && d.contains("failed its last 1 run(s)")
                            && d.contains("ended without finishing")), "{said:?}");
    assert_exact(&mut db, seed, "after the server was killed during a job");
    db.batch_execute(&format!("SELECT analytics.delete_job({job})")).unwrap();
}
