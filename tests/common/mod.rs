//! Shared harness for integration tests against a real PostgreSQL 15 server with
//! lacaja_analytics installed and preloaded (`scripts/test.sh` starts one).
#![allow(dead_code)]

pub mod workload;

use postgres::{Client, NoTls};

pub const FIXTURE: &str = include_str!("../../sql/fixtures/lacaja_schema.sql");
pub const ORACLE: &str = include_str!("../sql/oracle.sql");

/// Stores of the randomised workloads: a zone with DST, one with a 30-minute offset, and
/// LA-CAJA's default.
pub const STORES: [(&str, &str); 3] = [
    ("a0000000-0000-4000-8000-000000000001", "America/New_York"),
    ("b0000000-0000-4000-8000-000000000002", "Asia/Kolkata"),
    ("c0000000-0000-4000-8000-000000000003", "America/Caracas"),
];

pub fn server() -> String {
    std::env::var("LACAJA_TEST_SERVER").unwrap_or_else(|_| "host=127.0.0.1 port=55432 user=postgres".into())
}

pub fn try_connect(database: &str) -> Result<Client, postgres::Error> {
    Client::connect(&format!("{} dbname={database}", server()), NoTls)
}

pub fn connect(database: &str) -> Client {
    let dsn = format!("{} dbname={database}", server());
    Client::connect(&dsn, NoTls).unwrap_or_else(|e| {
        panic!("cannot reach the test server ({dsn}): {e}\nStart it with scripts/test.sh or scripts/pg.sh start")
    })
}

/// A new database with LA-CAJA's schema, three stores and their customers, and the
/// extension installed (attached at once) with each store's zone set.
pub fn lacaja_database(name: &str) -> Client {
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    let mut db = connect(name);
    db.batch_execute(FIXTURE).unwrap();
    add_pos_stores(&mut db);
    db.batch_execute("CREATE EXTENSION lacaja_analytics").unwrap();
    for (store, tz) in STORES {
        db.execute("SELECT analytics.set_store_timezone($1::text::uuid, $2)", &[&store, &tz]).unwrap();
    }
    db
}

/// The stores the POS workload sells in (`STORES`), with ten customers each.
pub fn add_pos_stores(db: &mut Client) {
    for (i, (store, _)) in STORES.iter().enumerate() {
        db.batch_execute(&format!(
            "INSERT INTO stores (id, name) VALUES ('{store}', 'Store {i}');
             INSERT INTO warehouses (id, store_id, name, is_default) VALUES (gen_random_uuid(), '{store}', 'main', true),
                                                                         (gen_random_uuid(), '{store}', 'back', false);
             INSERT INTO customers (id, store_id, name)
             SELECT ('{}' || lpad(c::text, 12, '0'))::uuid, '{store}', 'customer ' || c FROM generate_series(1, 10) c;",
            customer_prefix(i)
        ))
        .unwrap();
    }
}

pub fn customer_prefix(store_index: usize) -> String {
    format!("e000000{store_index}-0000-4000-8000-")
}

/// Differences between every rollup and its SPEC §2 definition, by relation, kpis() against
/// its SPEC §3 reference for every store, plus the rows `analytics.verify()` reports. Empty
/// when everything is exact.
pub fn differences(db: &mut Client) -> Vec<String> {
    differences_under(db, "")
}

/// `differences`, with some of the oracle's views redefined by `overrides` (SQL run after the
/// oracle: an older release's definitions, for the upgrade test).
pub fn differences_under(db: &mut Client, overrides: &str) -> Vec<String> {
    db.batch_execute("BEGIN; SET LOCAL search_path = public;").unwrap();
    db.batch_execute(ORACLE).unwrap();
    db.batch_execute(overrides).unwrap();
    let mut found: Vec<String> = db
        .query("SELECT relation, differences FROM oracle_differences WHERE differences > 0", &[])
        .unwrap()
        .iter()
        .map(|r| format!("{}: {} rows differ from the oracle", r.get::<_, &str>(0), r.get::<_, i64>(1)))
        .collect();
    for row in db
        .query("SELECT store_id::text, period_start::text, period_end::text, actual::text, expected::text
                FROM oracle_kpis_differences LIMIT 5", &[])
        .unwrap()
    {
        found.push(format!(
            "kpis({}, {:?}, {:?}):\n  actual   {}\n  expected {}",
            row.get::<_, &str>(0),
            row.get::<_, Option<&str>>(1),
            row.get::<_, Option<&str>>(2),
            row.get::<_, &str>(3),
            row.get::<_, &str>(4)
        ));
    }
    db.batch_execute("ROLLBACK").unwrap();
    for row in db
        .query("SELECT relation, key::text, expected::text, actual::text FROM analytics.verify() LIMIT 20", &[])
        .unwrap()
    {
        found.push(format!(
            "verify: {} {} expected {} actual {}",
            row.get::<_, &str>(0),
            row.get::<_, &str>(1),
            row.get::<_, &str>(2),
            row.get::<_, &str>(3)
        ));
    }
    found
}

/// splitmix64: a small deterministic generator, so a failing run can be replayed by its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

pub fn seed() -> u64 {
    std::env::var("LACAJA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

/// Waits until `condition` holds on a connection to `database`, reconnecting through server
/// restarts (a background worker's `kill -9` restarts the whole server); looks every `every`.
pub fn eventually_in(
    database: &str,
    what: &str,
    timeout: std::time::Duration,
    every: std::time::Duration,
    mut condition: impl FnMut(&mut Client) -> bool,
) {
    let started = std::time::Instant::now();
    loop {
        if let Ok(mut db) = try_connect(database) {
            if condition(&mut db) {
                return;
            }
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(every);
    }
}

/// Points the scheduler at `database` (None: back to idle) with `naptime`, and reloads.
pub fn point_scheduler_at(database: Option<&str>, naptime: &str) {
    let mut admin = connect("postgres");
    match database {
        Some(name) => {
            admin.batch_execute(&format!("ALTER SYSTEM SET lacaja_analytics.database = '{name}'")).unwrap();
            admin.batch_execute(&format!("ALTER SYSTEM SET lacaja_analytics.scheduler_naptime = '{naptime}'")).unwrap();
        }
        None => {
            admin.batch_execute("ALTER SYSTEM RESET lacaja_analytics.database").unwrap();
            admin.batch_execute("ALTER SYSTEM RESET lacaja_analytics.scheduler_naptime").unwrap();
        }
    }
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// Waits (at most 2 minutes) until the index builder has run every queued build.
pub fn wait_for_index_builds(db: &mut Client) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let pending: i64 = db
            .query_one("SELECT count(*) FROM analytics.index_builds WHERE status IN ('queued', 'building')", &[])
            .unwrap()
            .get(0);
        if pending == 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "index builds still pending after 2 minutes");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
