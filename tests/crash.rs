//! A backend killed with `kill -9` in the middle of a transaction, and while its commit is
//! folding the captured rows (at PRE_COMMIT): after the server's crash recovery the rollups
//! equal their definition. One test in its own binary: a killed backend restarts the server.

mod common;

use common::workload::{assert_exact, seed_products};
use common::{connect, lacaja_database, try_connect, STORES};
use std::time::{Duration, Instant};

fn kill_backend(pid: i32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill -9 {pid} failed (the tests run on the server's machine, as root or postgres)");
}

/// Waits until the server accepts connections again after its crash recovery.
fn reconnect(database: &str) -> postgres::Client {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(mut db) = try_connect(database) {
            if db.batch_execute("SELECT 1").is_ok() {
                return db;
            }
        }
        assert!(Instant::now() < deadline, "the server did not come back after the crash");
    }
}

fn sale(id: &str, store: &str) -> String {
    format!(
        "INSERT INTO sales (id, store_id, sold_at, totals, payment)
         VALUES ('{id}', '{store}', now(), '{{\"total_bs\": 12.5, \"total_usd\": 0.35}}', '{{\"method\": \"CASH_BS\"}}');
         INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
         SELECT gen_random_uuid(), '{id}', p.id, 1, p.price_bs, p.price_usd FROM products p WHERE p.store_id = '{store}' LIMIT 2;"
    )
}

#[test]
fn backends_killed_mid_transaction_and_at_pre_commit_leave_exact_rollups() {
    let seed = common::seed();
    let database = "lacaja_test_crash";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let store = STORES[0].0;
    db.batch_execute(&sale("c0ffee00-0000-4000-8000-000000000001", store)).unwrap();

    // Mid-transaction: sales written, nothing committed.
    let mut doomed = connect(database);
    let pid: i32 = doomed.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    doomed.batch_execute("BEGIN").unwrap();
    for n in 2..50 {
        doomed.batch_execute(&sale(&format!("c0ffee00-0000-4000-8000-{n:012}"), store)).unwrap();
    }
    kill_backend(pid);
    drop(doomed);
    let mut db = reconnect(database);
    assert_eq!(db.query_one("SELECT count(*) FROM sales", &[]).unwrap().get::<_, i64>(0), 1);
    assert_exact(&mut db, seed, "after a backend was killed in the middle of a transaction");

    // At pre-commit: the committing session's fold waits on a part row another session holds,
    // and is killed there.
    let mut seller = connect(database);
    let seller_pid: i32 = seller.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let seller_shard: i32 = seller.query_one("SELECT analytics_internal.backend_shard()", &[]).unwrap().get(0);
    seller.batch_execute(&sale("c0ffee00-0000-4000-8000-000000000100", store)).unwrap();
    let mut blocker = connect(database);
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM analytics_internal.sales_daily_parts
             WHERE store_id = '{store}' AND shard = {seller_shard} FOR UPDATE"
        ))
        .unwrap();
    let committing = std::thread::spawn(move || {
        let outcome = seller.batch_execute(&format!("BEGIN; {} COMMIT;", sale("c0ffee00-0000-4000-8000-000000000101", store)));
        assert!(outcome.is_err(), "the commit was killed; it cannot have succeeded");
    });
    let mut watcher = connect("postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting: bool = watcher
            .query_one(
                "SELECT coalesce(bool_or(wait_event_type = 'Lock' AND query ILIKE '%COMMIT%'), false)
                 FROM pg_stat_activity WHERE pid = $1",
                &[&seller_pid],
            )
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        assert!(Instant::now() < deadline, "the commit never reached its fold");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_backend(seller_pid);
    committing.join().unwrap();
    drop(blocker);
    drop(watcher);
    let mut db = reconnect(database);
    let committed: i64 = db
        .query_one("SELECT count(*) FROM sales WHERE id = 'c0ffee00-0000-4000-8000-000000000101'", &[])
        .unwrap()
        .get(0);
    assert_eq!(committed, 0, "a commit killed in its fold did not commit");
    assert_exact(&mut db, seed, "after a backend was killed while its commit folded the captured rows");
    // And capture goes on.
    db.batch_execute(&sale("c0ffee00-0000-4000-8000-000000000102", STORES[1].0)).unwrap();
    assert_exact(&mut db, seed, "after selling again once the server recovered");
}
