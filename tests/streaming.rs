//! Events to Redis Streams, on a real server with the library preloaded and a real
//! `redis-server` (`scripts/redis.sh`, started by scripts/test.sh): every committed event on its
//! stream exactly once in a normal run, in each session's commit order, rolled-back ones never;
//! Redis stopped during a burst (the POS unhindered) and back with its user to re-create:
//! everything delivered; `kill -9` of the publisher mid-batch: nothing lost; an outage beyond
//! the outbox's bound: the oldest dropped and counted, the rest delivered; `KEYS` never sent;
//! the password never shown.
//!
//! Also, with quoting: a source schema whose name needs it (and reads as SQL) streams and
//! refreshes the cache through every dynamic statement; and with locks: turning streaming on
//! behind a long transaction on `events` never makes a register wait.
//!
//! The tests run one at a time (`serial()`): `kill -9` restarts the whole server, and the
//! publisher serves one database.

mod common;

use common::connect;
use postgres::Client;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const DATABASE: &str = "lacaja_test_streaming";
const PASSWORD: &str = "s3cr3t-pw";
const STORES: [&str; 3] = [
    "a0000000-0000-4000-8000-000000000001",
    "b0000000-0000-4000-8000-000000000002",
    "c0000000-0000-4000-8000-000000000003",
];

/// One test at a time (a failed test does not stop the others).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn redis_url() -> String {
    std::env::var("LACAJA_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:56379".into())
}

fn redis() -> redis::Connection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("no Redis at {} ({e}): start it with scripts/redis.sh start", redis_url()))
}

fn redis_script(command: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/redis.sh");
    let status = std::process::Command::new(script).arg(command).status().unwrap();
    assert!(status.success(), "scripts/redis.sh {command}");
}

/// The user the publisher logs in as (Redis forgets it when restarted without saving).
fn create_redis_user(redis: &mut redis::Connection) {
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg("lacaja_publisher")
        .arg("on")
        .arg(format!(">{PASSWORD}"))
        .arg("~*")
        .arg("+@all")
        .query::<()>(redis)
        .unwrap();
}

fn publisher_url() -> String {
    redis_url().replacen("redis://", &format!("redis://lacaja_publisher:{PASSWORD}@"), 1)
}

/// Streaming on, its publisher serving `database`.
fn streaming_on_for(database: &str) {
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("ALTER SYSTEM SET lacaja_analytics.redis_url = '{}'", publisher_url())).unwrap();
    admin.batch_execute(&format!("ALTER SYSTEM SET lacaja_analytics.database = '{database}'")).unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// Waits until `condition` holds, reconnecting through server restarts.
fn eventually(what: &str, timeout: Duration, condition: impl FnMut(&mut Client) -> bool) {
    common::eventually_in(DATABASE, what, timeout, Duration::from_millis(100), condition)
}

fn status(db: &mut Client, column: &str) -> String {
    try_status(db, column).unwrap_or_else(|| panic!("reading stream_status.{column}"))
}

/// `stream_status.<column>`, or None when the server went away (it restarts after kill -9).
fn try_status(db: &mut Client, column: &str) -> Option<String> {
    db.query_one(&format!("SELECT coalesce({column}::text, '') FROM analytics.stream_status"), &[]).ok().map(|row| row.get(0))
}

fn insert_event(db: &mut impl postgres::GenericClient, store: &str, seq: i64) -> String {
    db.query_one(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         VALUES (gen_random_uuid(), $1::text::uuid, gen_random_uuid(), $2::bigint, 'SaleCreated', now(),
                 jsonb_build_object('seq', $2::bigint, 'total_bs', 10.50))
         RETURNING event_id::text",
        &[&store, &seq],
    )
    .unwrap()
    .get(0)
}

fn insert_sale(db: &mut Client, store: &str) {
    db.execute(
        "INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment)
         VALUES (gen_random_uuid(), $1::text::uuid, now(), 36.5, 'BS', '{\"total_bs\": 73.00, \"total_usd\": 2.00}',
                 '{\"method\": \"CASH_BS\"}')",
        &[&store],
    )
    .unwrap();
}

/// A sale of 1,000 units of one product (the store's top product).
fn sell_a_product(db: &mut Client, store: &str) {
    db.batch_execute(&format!(
        "INSERT INTO products (id, store_id, name, price_bs, price_usd, cost_bs, cost_usd)
         VALUES ('d0000000-0000-4000-8000-000000000001', '{store}', 'Harina', 73, 2, 40, 1.1);
         INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment)
         VALUES ('e0000000-0000-4000-8000-000000000001', '{store}', now(), 36.5, 'BS', '{{\"total_bs\": 730.00, \"total_usd\": 20.00}}',
                 '{{\"method\": \"CASH_BS\"}}');
         INSERT INTO sale_items (id, sale_id, product_id, qty, unit_price_bs, unit_price_usd)
         VALUES ('f0000000-0000-4000-8000-000000000001', 'e0000000-0000-4000-8000-000000000001',
                 'd0000000-0000-4000-8000-000000000001', 1000, 73, 2);"
    ))
    .unwrap();
}

/// A return of 999 of those units: it changes the figures through the items of an older
/// sale, whose store the capture looks up at commit (`_note_changed_stores`). Checks that the
/// dashboard changed.
fn return_most_of_it(db: &mut Client, store: &str) {
    let before: String = db.query_one("SELECT analytics.kpis($1::text::uuid)::text", &[&store]).unwrap().get(0);
    db.batch_execute(&format!(
        "INSERT INTO sale_returns (id, store_id, sale_id, total_bs, total_usd)
         VALUES ('e1000000-0000-4000-8000-000000000001', '{store}', 'e0000000-0000-4000-8000-000000000001', 730, 20);
         INSERT INTO sale_return_items (id, return_id, sale_item_id, product_id, qty, total_bs, total_usd)
         VALUES (gen_random_uuid(), 'e1000000-0000-4000-8000-000000000001', 'f0000000-0000-4000-8000-000000000001',
                 'd0000000-0000-4000-8000-000000000001', 999, 72927, 1998);"
    ))
    .unwrap();
    let after: String = db.query_one("SELECT analytics.kpis($1::text::uuid)::text", &[&store]).unwrap().get(0);
    assert_ne!(before, after, "the return changes the dashboard (top product's net quantity)");
}

/// Waits up to `within` for `kpis:{store}` in Redis to hold what `kpis()` returns now.
fn cache_follows(db: &mut Client, redis: &mut redis::Connection, store: &str, within: Duration, what: &str) {
    let started = Instant::now();
    loop {
        let expected: serde_json::Value =
            serde_json::from_str(&db.query_one("SELECT analytics.kpis($1::text::uuid)::text", &[&store]).unwrap().get::<_, String>(0))
                .unwrap();
        let cached: Option<String> = redis::cmd("GET").arg(format!("kpis:{store}")).query(redis).unwrap();
        if cached.map(|c| serde_json::from_str::<serde_json::Value>(&c).unwrap()) == Some(expected) {
            return;
        }
        assert!(started.elapsed() < within, "kpis:{store} did not follow {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every entry of each store's stream: (event_id, fields), in stream order.
fn streams(redis: &mut redis::Connection) -> HashMap<String, Vec<(String, HashMap<String, String>)>> {
    let mut all = HashMap::new();
    for store in STORES {
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XRANGE").arg(format!("events:{store}")).arg("-").arg("+").query(redis).unwrap();
        let entries = entries
            .into_iter()
            .map(|(_, fields)| {
                let fields: HashMap<String, String> = fields.into_iter().collect();
                (fields["event_id"].clone(), fields)
            })
            .collect();
        all.insert(store.to_string(), entries);
    }
    all
}

fn wait_for_empty_outbox(what: &str) {
    eventually(what, Duration::from_secs(60), |db| try_status(db, "backlog").as_deref() == Some("0"));
}

/// Streaming off again (no redis_url, no database) when the test ends, passed or not.
struct StreamingOff;

impl StreamingOff {
    fn now() -> StreamingOff {
        let mut admin = connect("postgres");
        admin.batch_execute("ALTER SYSTEM RESET lacaja_analytics.redis_url").unwrap();
        admin.batch_execute("ALTER SYSTEM RESET lacaja_analytics.database").unwrap();
        admin.batch_execute("SELECT pg_reload_conf()").unwrap();
        std::thread::sleep(Duration::from_millis(200)); // backends read it at their next command
        StreamingOff
    }
}

impl Drop for StreamingOff {
    fn drop(&mut self) {
        if let Ok(mut admin) = common::try_connect("postgres") {
            // one statement each: ALTER SYSTEM refuses to run inside a (multi-statement) transaction
            for statement in
                ["ALTER SYSTEM RESET lacaja_analytics.redis_url", "ALTER SYSTEM RESET lacaja_analytics.database",
                 "ALTER SYSTEM RESET lacaja_analytics.stream_outbox_max_rows", "SELECT pg_reload_conf()"]
            {
                let _ = admin.batch_execute(statement);
            }
        }
    }
}

#[test]
fn committed_events_reach_their_streams_once_in_order_through_failures() {
    let _one_at_a_time = serial();
    let _off_at_the_end = StreamingOff::now();
    let mut db = common::lacaja_database(DATABASE);
    let mut redis = redis();
    redis::cmd("FLUSHALL").query::<()>(&mut redis).unwrap();
    redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(&mut redis).unwrap();
    create_redis_user(&mut redis);

    // Off (no redis_url): the extension behaves as before, no trigger, no outbox.
    for seq in 0..5 {
        insert_event(&mut db, STORES[0], seq);
    }
    assert_eq!(status(&mut db, "enabled"), "false");
    assert_eq!(status(&mut db, "capturing"), "false");
    assert_eq!(status(&mut db, "backlog"), "0");
    let triggers: i64 = db
        .query_one("SELECT count(*) FROM pg_trigger WHERE tgname = 'lacaja_analytics_stream_events'", &[])
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0);

    // On: the publisher puts its trigger on events.
    streaming_on_for(DATABASE);
    eventually("the publisher to capture events", Duration::from_secs(30), |db| {
        status(db, "capturing") == "true" && status(db, "publisher_running") == "true"
    });
    // Only a superuser sees the URL (it holds a password).
    db.batch_execute("DROP ROLE IF EXISTS streaming_reader; CREATE ROLE streaming_reader").unwrap();
    let shown = db.batch_execute("SET ROLE streaming_reader; SHOW lacaja_analytics.redis_url");
    assert_eq!(shown.unwrap_err().code().map(|c| c.code().to_string()).as_deref(), Some("42501"));
    db.batch_execute("RESET ROLE").unwrap();

    // Four sessions: commits, rollbacks and rolled-back savepoints; each session's commits in
    // its order.
    let sessions: Vec<_> = (0..4i64)
        .map(|session| {
            std::thread::spawn(move || {
                let mut db = connect(DATABASE);
                let mut rng = common::Rng::new(common::seed() ^ session as u64);
                let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
                for transaction in 0..60i64 {
                    let store = STORES[rng.below(3) as usize];
                    let mut tx = db.transaction().unwrap();
                    let mut events = Vec::new();
                    for n in 0..(1 + rng.below(4) as i64) {
                        events.push(insert_event(&mut tx, store, session * 1_000_000 + transaction * 10 + n));
                    }
                    if rng.chance(15) {
                        let mut savepoint = tx.transaction().unwrap();
                        rolled_back.push(insert_event(&mut savepoint, store, -1));
                        savepoint.rollback().unwrap();
                    }
                    if rng.chance(15) {
                        tx.rollback().unwrap();
                        rolled_back.extend(events);
                    } else {
                        tx.commit().unwrap();
                        committed.extend(events.into_iter().map(|e| (store, e)));
                    }
                }
                (committed, rolled_back)
            })
        })
        .collect();
    let results: Vec<_> = sessions.into_iter().map(|s| s.join().unwrap()).collect();
    wait_for_empty_outbox("the publisher to drain the workload");
    let published = streams(&mut redis);
    let position: HashMap<&str, usize> = published
        .values()
        .flat_map(|entries| entries.iter().enumerate().map(|(i, (id, _))| (id.as_str(), i)))
        .collect();
    let mut expected = 0;
    for (committed, rolled_back) in &results {
        for event in rolled_back {
            assert!(!position.contains_key(event.as_str()), "rolled-back event {event} was published");
        }
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (store, event) in committed {
            let at = *position.get(event.as_str()).unwrap_or_else(|| panic!("committed event {event} missing from its stream"));
            assert!(published[*store][at].0 == *event, "event {event} on another store's stream");
            if let Some(before) = last.insert(store, at) {
                assert!(before < at, "a session's events out of commit order on events:{store}");
            }
            expected += 1;
        }
    }
    let total: usize = published.values().map(Vec::len).sum();
    assert_eq!(total, expected, "every committed event once, nothing else");
    // The entry carries the event as stored.
    let (event, fields) = &published[STORES[0]][0];
    let stored = db
        .query_one(
            "SELECT type, payload::text, seq::text, to_jsonb(created_at) #>> '{}' FROM events WHERE event_id = $1::text::uuid",
            &[event],
        )
        .unwrap();
    assert_eq!(fields["type"], stored.get::<_, String>(0));
    assert_eq!(fields["payload"], stored.get::<_, String>(1));
    assert_eq!(fields["seq"], stored.get::<_, String>(2));
    assert_eq!(fields["created_at"], stored.get::<_, String>(3));

    // The dashboard cache: a sale rewrites its store's kpis:{store_id} within a second, drops
    // that store's metrics:/reports: keys (and no other store's); a burst of sales causes one
    // refresh per half second, not one per sale.
    let (store, other) = (STORES[1], STORES[2]);
    for key in [format!("metrics:{store}:today"), format!("reports:{store}:abc"), format!("metrics:{other}:today")] {
        redis::cmd("SET").arg(&key).arg("stale").query::<()>(&mut redis).unwrap();
    }
    let refreshes_before: i64 = status(&mut db, "cache_refreshes").parse().unwrap();
    let burst_started = Instant::now();
    let mut sales = 0;
    while burst_started.elapsed() < Duration::from_secs(1) {
        insert_sale(&mut db, store);
        sales += 1;
    }
    let sold = Instant::now();
    let expected: serde_json::Value =
        serde_json::from_str(&db.query_one("SELECT analytics.kpis($1::text::uuid)::text", &[&store]).unwrap().get::<_, String>(0)).unwrap();
    loop {
        let cached: Option<String> = redis::cmd("GET").arg(format!("kpis:{store}")).query(&mut redis).unwrap();
        if cached.as_deref().map(|c| serde_json::from_str::<serde_json::Value>(c).unwrap()) == Some(expected.clone()) {
            break;
        }
        assert!(sold.elapsed() < Duration::from_secs(1), "kpis:{store} not equal to kpis() a second after the last sale: {cached:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ttl: i64 = redis::cmd("TTL").arg(format!("kpis:{store}")).query(&mut redis).unwrap();
    assert!(ttl > 0 && ttl <= 300, "TTL {ttl}");
    let exists = |redis: &mut redis::Connection, key: String| redis::cmd("EXISTS").arg(key).query::<i64>(redis).unwrap();
    assert_eq!(exists(&mut redis, format!("metrics:{store}:today")), 0);
    assert_eq!(exists(&mut redis, format!("reports:{store}:abc")), 0);
    assert_eq!(exists(&mut redis, format!("metrics:{other}:today")), 1, "another store's key was dropped");
    std::thread::sleep(Duration::from_millis(600));
    let refreshes = status(&mut db, "cache_refreshes").parse::<i64>().unwrap() - refreshes_before;
    assert!(refreshes >= 1 && refreshes <= 4, "{sales} sales in a second caused {refreshes} cache refreshes");

    // A return changes the figures through the items of an older sale, whose store the capture
    // looks up at commit: the cache follows it too.
    sell_a_product(&mut db, store);
    cache_follows(&mut db, &mut redis, store, Duration::from_secs(2), "the sale of product d000…");
    return_most_of_it(&mut db, store);
    cache_follows(&mut db, &mut redis, store, Duration::from_secs(1), "the return");

    // Redis goes away during a burst: sales go on at full speed, the outbox grows and says why.
    redis::cmd("SHUTDOWN").arg("NOSAVE").exec(&mut redis).ok();
    let mut burst = Vec::new();
    let mut slowest = Duration::ZERO;
    for seq in 0..300 {
        let started = Instant::now();
        burst.push(insert_event(&mut db, STORES[seq as usize % 3], 5_000_000 + seq));
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_millis(250), "an insert took {slowest:?} with Redis down");
    eventually("the outage to show in stream_status", Duration::from_secs(30), |db| {
        status(db, "connected") == "false" && !status(db, "last_error").is_empty()
    });
    assert!(status(&mut db, "backlog").parse::<i64>().unwrap() > 0);
    let (health, detail, hint): (String, String, String) = {
        let row = db.query_one("SELECT status, detail, hint FROM analytics.health() WHERE check_name = 'streaming'", &[]).unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(health, "problem", "{detail}");
    assert!(detail.contains("waiting") && detail.contains("last error") && hint.contains("redis_url"), "{detail} / {hint}");
    // Back, but without the publisher's user: authentication fails, without the password.
    redis_script("start");
    let mut redis = self::redis();
    eventually("a failed login to be recorded", Duration::from_secs(60), |db| {
        let error = status(db, "last_error");
        assert!(!error.contains(PASSWORD), "the password in stream_status: {error}");
        error.to_lowercase().contains("auth") || error.to_lowercase().contains("pass")
    });
    create_redis_user(&mut redis);
    wait_for_empty_outbox("the backlog to be delivered once Redis is back");
    let health: String =
        db.query_one("SELECT status FROM analytics.health() WHERE check_name = 'streaming'", &[]).unwrap().get(0);
    assert_eq!(health, "ok");
    let published = streams(&mut redis);
    let delivered: HashSet<&str> = published.values().flatten().map(|(id, _)| id.as_str()).collect();
    for event in &burst {
        assert!(delivered.contains(event.as_str()), "event {event} of the outage was not delivered");
    }

    // kill -9 of the publisher in the middle of a large batch: nothing lost.
    let mut many = Vec::new();
    let mut tx = db.transaction().unwrap();
    for seq in 0..3_000 {
        many.push(insert_event(&mut tx, STORES[seq as usize % 3], 6_000_000 + seq));
    }
    tx.commit().unwrap();
    let pid: i32 = db
        .query_one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'lacaja_analytics publisher'", &[])
        .unwrap()
        .get(0);
    let killed = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    assert!(killed.success());
    drop(db);
    wait_for_empty_outbox("the publisher to deliver after kill -9");
    let published = streams(&mut redis);
    let delivered: HashSet<&str> = published.values().flatten().map(|(id, _)| id.as_str()).collect();
    for event in &many {
        assert!(delivered.contains(event.as_str()), "event {event} lost to kill -9");
    }

    // An outage longer than the outbox holds: beyond lacaja_analytics.stream_outbox_max_rows the
    // oldest events are dropped from the outbox (counted, reported), the newest delivered later.
    let (mut admin, mut db) = (connect("postgres"), connect(DATABASE)); // the server restarted
    admin.batch_execute("ALTER SYSTEM SET lacaja_analytics.stream_outbox_max_rows = 1000").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let dropped_before: i64 = status(&mut db, "dropped").parse().unwrap();
    redis::cmd("SHUTDOWN").arg("NOSAVE").exec(&mut redis).ok();
    let overflow: Vec<String> = db
        .query(
            "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
             SELECT gen_random_uuid(), $1::text::uuid, gen_random_uuid(), 7000000 + i, 'StockDeltaApplied', now(), '{}'
             FROM generate_series(1, 1500) i ORDER BY i RETURNING event_id::text",
            &[&STORES[0]],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    eventually("the outbox to be bounded", Duration::from_secs(30), |db| try_status(db, "backlog").as_deref() == Some("1000"));
    assert_eq!(status(&mut db, "dropped").parse::<i64>().unwrap() - dropped_before, 500);
    let detail: String =
        db.query_one("SELECT detail FROM analytics.health() WHERE check_name = 'streaming'", &[]).unwrap().get(0);
    assert!(detail.contains("dropped from a full outbox"), "{detail}");
    redis_script("start");
    let mut redis = self::redis();
    create_redis_user(&mut redis);
    wait_for_empty_outbox("the newest events to be delivered after the bound");
    let delivered: HashSet<String> = streams(&mut redis).into_values().flatten().map(|(id, _)| id).collect();
    assert!(overflow[..500].iter().all(|e| !delivered.contains(e)), "a dropped event was delivered");
    assert!(overflow[500..].iter().all(|e| delivered.contains(e)), "an event within the bound was lost");
    admin.batch_execute("ALTER SYSTEM RESET lacaja_analytics.stream_outbox_max_rows").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();

    // KEYS (which blocks Redis) was never sent.
    let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut redis).unwrap();
    assert!(stats.contains("cmdstat_xadd"), "{stats}");
    assert!(!stats.contains("cmdstat_keys"), "KEYS was sent: {stats}");
    // Nor is the password in the server's log.
    let log = std::env::var("LACAJA_PGDATA").map_or("/var/tmp/lacaja_analytics".into(), |d| format!("{d}/.."));
    if let Ok(text) = std::fs::read_to_string(format!("{log}/postgres.log")) {
        assert!(!text.contains(PASSWORD), "the Redis password is in the server log");
    }
}

/// A source schema named like SQL: `_note_changed_stores` (its lookups of returned sales) and
/// `_ensure_stream_trigger` (CREATE TRIGGER) build statements around it.
const ODD_SCHEMA: &str = "Tienda \"Ñ\"; DROP TABLE public.decoy; --";

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[test]
fn a_source_schema_whose_name_needs_quoting_streams_and_caches() {
    let _one_at_a_time = serial();
    let _off_at_the_end = StreamingOff::now();
    let database = "lacaja_test_streaming_names";
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    let mut db = connect(database);
    let schema = quote_ident(ODD_SCHEMA);
    db.batch_execute(&format!("CREATE TABLE public.decoy (); CREATE SCHEMA {schema}; SET search_path = {schema}, public;")).unwrap();
    db.batch_execute(common::FIXTURE).unwrap();
    common::add_pos_stores(&mut db);
    db.execute("SELECT set_config('lacaja_analytics.source_schema', $1, false)", &[&ODD_SCHEMA]).unwrap();
    db.batch_execute("CREATE EXTENSION lacaja_analytics").unwrap();
    let attached: String = db.query_one("SELECT source_schema::text FROM analytics_internal.source_config", &[]).unwrap().get(0);
    assert_eq!(attached, ODD_SCHEMA);
    let mut redis = redis();
    create_redis_user(&mut redis);

    streaming_on_for(database);
    common::eventually_in(database, "the publisher to capture the odd schema's events", Duration::from_secs(30), Duration::from_millis(100), |db| {
        status(db, "capturing") == "true" && status(db, "publisher_running") == "true"
    });
    let on: (String, String) = {
        let row = db
            .query_one(
                "SELECT n.nspname::text, c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE t.tgname = 'lacaja_analytics_stream_events'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(on, (ODD_SCHEMA.to_string(), "events".to_string()));

    let store = STORES[0];
    redis::cmd("DEL").arg(format!("events:{store}")).query::<()>(&mut redis).unwrap();
    let event = insert_event(&mut db, store, 1);
    sell_a_product(&mut db, store);
    cache_follows(&mut db, &mut redis, store, Duration::from_secs(2), "a sale in the odd schema");
    return_most_of_it(&mut db, store);
    cache_follows(&mut db, &mut redis, store, Duration::from_secs(1), "a return in the odd schema (stores looked up by name)");
    common::eventually_in(database, "the event on its stream", Duration::from_secs(10), Duration::from_millis(50), |db| {
        try_status(db, "backlog").as_deref() == Some("0")
    });
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(format!("events:{store}")).arg("-").arg("+").query(&mut redis).unwrap();
    let ids: Vec<&str> =
        entries.iter().flat_map(|(_, fields)| fields.iter().filter(|(k, _)| k == "event_id").map(|(_, v)| v.as_str())).collect();
    assert_eq!(ids, [event.as_str()]);
    // the forecasts' generated reader of products and the alerts' writes name that schema too
    let products: i64 = db.query_one("SELECT count(*) FROM analytics.stock_forecast($1::text::uuid)", &[&store]).unwrap().get(0);
    assert_eq!(products, 1, "Harina, read through _forecast_products");
    db.batch_execute("SELECT analytics.refresh_forecast_alerts(7)").unwrap();
    // the name ran as a name: nothing dropped, nothing failed
    let decoy: Option<String> = db.query_one("SELECT to_regclass('public.decoy')::text", &[]).unwrap().get(0);
    assert_eq!(decoy.as_deref(), Some("decoy"));
    assert_eq!(status(&mut db, "last_error"), "");
    // (the test sale leaves out its subtotals and discounts, which are recorded as missing)
    let ingest_errors: i64 =
        db.query_one("SELECT count(*) FROM analytics.ingest_errors WHERE problem <> 'missing'", &[]).unwrap().get(0);
    assert_eq!(ingest_errors, 0);
    drop(db);
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).unwrap();
}

/// Turning streaming on puts a trigger on `events`, whose lock (SHARE ROW EXCLUSIVE) waits
/// for every open transaction that wrote there. Behind a long one, the publisher's short tries
/// give way: registers go on writing at full speed, `stream_status` and `health()` say why
/// nothing is captured yet, and the trigger goes on once the long transaction ends.
#[test]
fn turning_streaming_on_gives_way_to_a_long_transaction_on_events() {
    let _one_at_a_time = serial();
    let _off_at_the_end = StreamingOff::now();
    let database = "lacaja_test_streaming_locks";
    let mut db = common::lacaja_database(database);
    let mut redis = redis();
    create_redis_user(&mut redis);
    // a sync batch still open (or a report that wrote to events): ROW EXCLUSIVE held
    let mut long = connect(database);
    long.batch_execute("BEGIN").unwrap();
    insert_event(&mut long, STORES[1], 1);

    streaming_on_for(database);
    let started = Instant::now();
    let (mut slowest, mut inserts, mut gave_way_at) = (Duration::ZERO, 0i64, None::<Instant>);
    // registers write until the publisher has given way, and 2 s beyond (another round of tries)
    while gave_way_at.is_none_or(|at| at.elapsed() < Duration::from_secs(2)) {
        assert!(started.elapsed() < Duration::from_secs(60), "the publisher never reported giving way");
        let insert_started = Instant::now();
        insert_event(&mut db, STORES[0], 10 + inserts);
        slowest = slowest.max(insert_started.elapsed());
        inserts += 1;
        if gave_way_at.is_none() && status(&mut db, "last_error").contains("putting the outbox trigger on events") {
            gave_way_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(slowest < Duration::from_millis(250), "a register waited {slowest:?} behind the publisher ({inserts} inserts)");
    assert_eq!(status(&mut db, "capturing"), "false");
    let error = status(&mut db, "last_error");
    assert!(error.contains("SQLSTATE 55P03") && error.contains("SHARE ROW EXCLUSIVE"), "{error}");
    let (state, detail, hint): (String, String, String) = {
        let row = db.query_one("SELECT status, detail, hint FROM analytics.health() WHERE check_name = 'streaming'", &[]).unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(state, "problem");
    assert!(detail.contains("not captured yet") && detail.contains("55P03"), "{detail}");
    assert!(hint.contains("long transaction"), "{hint}");

    long.batch_execute("COMMIT").unwrap();
    common::eventually_in(database, "the trigger once the long transaction ended", Duration::from_secs(20), Duration::from_millis(100), |db| {
        status(db, "capturing") == "true"
    });
    redis::cmd("DEL").arg(format!("events:{}", STORES[2])).query::<()>(&mut redis).unwrap();
    let event = insert_event(&mut db, STORES[2], 1);
    common::eventually_in(database, "the event on its stream", Duration::from_secs(10), Duration::from_millis(50), |db| {
        try_status(db, "backlog").as_deref() == Some("0")
    });
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(format!("events:{}", STORES[2])).arg("-").arg("+").query(&mut redis).unwrap();
    assert_eq!(entries.len(), 1);
    assert!(entries[0].1.contains(&("event_id".to_string(), event)));
    drop((db, long));
    connect("postgres").batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).unwrap();
}
