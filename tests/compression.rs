//! Compressed chunks on a real server: still LA-CAJA's table. The same rows before, during
//! and after compression; the POS workload (late sales, voids, deletes, sales moved to another
//! day, rollbacks, savepoints) writing into compressed ranges while chunks are compressed
//! again, with every rollup equal to its definition; constraints enforced on compressed rows
//! with Postgres' own errors; concurrent writers of one compressed row serialized as on a
//! heap; and a dump restored with the same rows.

mod common;

use common::workload::{assert_exact, run_sessions, seed_products, SharedIds};
use common::{connect, lacaja_database, server};
use postgres::Client;
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const CONVERT: [&str; 2] = [
    "SELECT analytics.create_hypertable('events', 'created_at', chunk_time_interval => INTERVAL '1 day',
                                        migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                        replace_unique => true)",
    "SELECT analytics.create_hypertable('sales', 'sold_at', chunk_time_interval => INTERVAL '1 day',
                                        migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                        replace_unique => true)",
];

/// Events over the last 20 days, LA-CAJA-like: sale created / voided, stock moved; half with a
/// request id (idempotent sync).
fn insert_events(db: &mut Client, n: i32) {
    db.execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, version, created_at, received_at, payload, request_id)
         SELECT gen_random_uuid(), s.id, d.device, i, (ARRAY['SaleCreated', 'SaleVoided', 'StockMoved'])[1 + i % 3], 1 + i % 2,
                now() - (i % 20) * interval '1 day' - (i % 1440) * interval '1 minute',
                now() - (i % 20) * interval '1 day' - (i % 1440) * interval '1 minute' + interval '4 seconds',
                jsonb_build_object('sale_id', gen_random_uuid(), 'total_bs', round((i % 997) * 1.37, 2),
                                   'items', jsonb_build_array(jsonb_build_object('qty', 1 + i % 5, 'price', i % 50))),
                CASE WHEN i % 2 = 0 THEN gen_random_uuid() END
         FROM generate_series(1, $1) i
         CROSS JOIN LATERAL (SELECT id FROM stores ORDER BY id OFFSET i % 3 LIMIT 1) s
         CROSS JOIN LATERAL (SELECT md5(s.id::text || (i % 4))::uuid AS device) d",
        &[&n],
    )
    .unwrap();
}

fn checksum(db: &mut Client, table: &str, key: &str) -> String {
    db.query_one(&format!("SELECT md5(string_agg(t::text, ',' ORDER BY {key})) || '/' || count(*) FROM {table} t"), &[])
        .unwrap()
        .get(0)
}

/// Compresses every chunk of `table` that ended before `older_than` ago and is not fully
/// compressed; returns how many it compressed.
fn compress_old_chunks(db: &mut Client, table: &str, older_than: &str) -> i64 {
    db.query_one(
        "SELECT count(analytics.compress_chunk(c.chunk)) FROM analytics.chunks c
         WHERE c.hypertable_name = $1 AND c.range_end < now() - $2::text::interval
           AND analytics_internal._compression_state(c.chunk) <> 'compressed'",
        &[&table, &older_than],
    )
    .unwrap()
    .get(0)
}

fn sqlstate(result: Result<impl Sized, postgres::Error>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => e.code().map(|c| c.code().to_string()).unwrap_or_else(|| format!("{e}")),
    }
}

#[test]
fn compressed_chunks_stay_the_same_table_under_the_pos_workload() {
    let database = "lacaja_compression_workload";
    let mut db = lacaja_database(database);
    seed_products(&mut db);
    let seed = common::seed();
    let shared = SharedIds::default();
    for handle in run_sessions(database, seed, 2, 600, &shared) {
        handle.join().expect("a POS session failed");
    }
    insert_events(&mut db, 30_000);
    for statement in CONVERT {
        db.batch_execute(statement).unwrap_or_else(|e| panic!("{statement}: {e:?}"));
    }
    let sales_before = checksum(&mut db, "sales", "id");
    let events_before = checksum(&mut db, "events", "event_id");

    let compressed = compress_old_chunks(&mut db, "sales", "2 days") + compress_old_chunks(&mut db, "events", "2 days");
    assert!(compressed > 20, "only {compressed} chunks were compressed");
    assert_eq!(checksum(&mut db, "sales", "id"), sales_before, "sales read back from compressed chunks");
    assert_eq!(checksum(&mut db, "events", "event_id"), events_before, "events read back from compressed chunks");
    let rows: i64 = db.query_one("SELECT sum(row_count)::bigint FROM analytics_internal.compressed_chunks", &[]).unwrap().get(0);
    assert!(rows > 20_000, "{rows} rows compressed");
    assert_exact(&mut db, seed, "with the old chunks compressed");

    // The POS keeps writing into compressed days (late syncs, voids, deletes, sales moved to
    // another day) while chunks are compressed again beside it.
    let writers = run_sessions(database, seed ^ 0xC0C0, 3, 1500, &shared);
    let (stop, stopped) = mpsc::channel::<()>();
    let recompressor = thread::spawn(move || {
        let mut db = connect(database);
        // A POS that voids by id (no time in the statement) holds every chunk of sales at
        // once, so compression waits for a moment between its transactions: one chunk per
        // transaction, tries of 200 ms, giving up after 5 s (55P03) as a job run would.
        db.batch_execute("SET lacaja_analytics.maintenance_lock_timeout = '200ms'; SET lacaja_analytics.maintenance_lock_wait = '5s'")
            .unwrap();
        let (mut done, mut gave_way) = (0, 0);
        while stopped.recv_timeout(Duration::from_millis(100)).is_err() {
            let chunk: Option<String> = db
                .query_opt(
                    "SELECT c.chunk::text FROM analytics.chunks c
                     WHERE c.hypertable_name = 'sales' AND c.range_end < now() - interval '2 days'
                       AND analytics_internal._compression_state(c.chunk) = 'partially compressed'
                     ORDER BY random() LIMIT 1",
                    &[],
                )
                .unwrap()
                .map(|r| r.get(0));
            let Some(chunk) = chunk else { continue };
            match sqlstate(db.execute("SELECT analytics.compress_chunk($1::text::regclass)", &[&chunk])).as_str() {
                "ok" => done += 1,
                "55P03" => gave_way += 1,
                other => panic!("compressing {chunk} beside the POS: {other}"),
            }
        }
        (done, gave_way)
    });
    for handle in writers {
        handle.join().expect("a POS session failed while chunks were compressed");
    }
    stop.send(()).unwrap();
    let (done, gave_way) = recompressor.join().unwrap();
    assert!(done > 0, "no chunk was compressed beside the POS ({gave_way} gave way)");
    eprintln!("{done} chunks compressed again beside the POS, {gave_way} attempts gave way");
    let touched: i64 = db
        .query_one(
            "SELECT count(*) FROM analytics.chunks c
             WHERE c.hypertable_name = 'sales' AND analytics_internal._compression_state(c.chunk) <> 'uncompressed'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(touched > 10, "{touched} sales chunks compressed");
    assert_exact(&mut db, seed, "after the POS wrote into compressed chunks");

    // The unique indexes of compressed chunks are packed; decompressed, they are as the
    // hypertable's are again.
    let unique_index_options = "SELECT analytics_internal._compression_state(i.indrelid::regclass), c.reloptions::text
                                FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                                JOIN analytics.chunks ch ON ch.chunk = i.indrelid::regclass
                                WHERE ch.hypertable_name = 'sales' AND i.indisunique";
    for row in db.query(unique_index_options, &[]).unwrap() {
        let (state, options): (String, Option<String>) = (row.get(0), row.get(1));
        let packed = options.as_deref() == Some("{fillfactor=100}");
        assert_eq!(packed, state != "uncompressed", "a {state} chunk's unique index with options {options:?}");
    }
    // Decompressing gives back exactly the rows the table shows.
    let sales_now = checksum(&mut db, "sales", "id");
    db.batch_execute(
        "SELECT analytics.decompress_chunk(c.chunk) FROM analytics.chunks c
         WHERE analytics_internal._compression_state(c.chunk) <> 'uncompressed'",
    )
    .unwrap();
    assert_eq!(checksum(&mut db, "sales", "id"), sales_now, "the round trip compress → decompress");
    let left: i64 = db.query_one("SELECT count(*) FROM analytics_internal.compressed_batches", &[]).unwrap().get(0);
    assert_eq!(left, 0, "decompressed chunks leave no batches");
    for row in db.query(unique_index_options, &[]).unwrap() {
        assert_eq!(row.get::<_, Option<String>>(1), None, "a decompressed chunk's unique index keeps no option of ours");
    }
    assert_exact(&mut db, seed, "after decompressing");
}

#[test]
fn writes_to_compressed_rows_behave_as_on_a_heap() {
    let database = "lacaja_compression_writes";
    let mut db = lacaja_database(database);
    insert_events(&mut db, 6_000);
    db.batch_execute(CONVERT[0]).unwrap();
    assert!(compress_old_chunks(&mut db, "events", "2 days") > 10);
    let old = db
        .query_one(
            "SELECT event_id::text, request_id::text, tableoid::regclass::text FROM events
             WHERE created_at < now() - interval '5 days' AND request_id IS NOT NULL ORDER BY created_at LIMIT 1",
            &[],
        )
        .unwrap();
    let (event, request, chunk): (String, String, String) = (old.get(0), old.get(1), old.get(2));
    assert_eq!(
        db.query_one("SELECT analytics_internal._compression_state($1::text::regclass)", &[&chunk]).unwrap().get::<_, String>(0),
        "compressed"
    );

    // Constraints: the primary key and the idempotent-sync key, with Postgres' errors.
    let duplicate_key = "INSERT INTO events SELECT * FROM events WHERE event_id = $1::text::uuid";
    assert_eq!(sqlstate(db.execute(duplicate_key, &[&event])), "23505", "a second copy of a compressed event");
    let duplicate_request = "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload, request_id)
                             SELECT gen_random_uuid(), store_id, device_id, seq, type, created_at, payload, request_id
                             FROM events WHERE event_id = $1::text::uuid";
    assert_eq!(sqlstate(db.execute(duplicate_request, &[&event])), "23505", "a sync replayed with request {request}");
    // LA-CAJA's sync saves a pushed batch with `.orIgnore()` (INSERT … ON CONFLICT DO NOTHING):
    // a replayed compressed event is skipped, the new one beside it goes in.
    let replayed = db
        .execute(
            "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
             SELECT event_id, store_id, device_id, seq, type, created_at, payload FROM events WHERE event_id = $1::text::uuid
             UNION ALL
             SELECT gen_random_uuid(), store_id, device_id, 999998, type, created_at, payload FROM events WHERE event_id = $1::text::uuid
             ON CONFLICT DO NOTHING",
            &[&event],
        )
        .unwrap();
    assert_eq!(replayed, 1, "the replay skipped, the new event inserted");
    let copies: i64 = db.query_one("SELECT count(*) FROM events WHERE event_id = $1::text::uuid", &[&event]).unwrap().get(0);
    assert_eq!(copies, 1);
    // An upsert on the key finds the compressed row and updates it.
    db.execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT event_id, store_id, device_id, seq, type, created_at, payload FROM events WHERE event_id = $1::text::uuid
         ON CONFLICT (event_id, created_at) DO UPDATE SET version = events.version + 41",
        &[&event],
    )
    .unwrap();
    let version: i32 = db.query_one("SELECT version FROM events WHERE event_id = $1::text::uuid", &[&event]).unwrap().get(0);
    assert_eq!(version, 42, "ON CONFLICT DO UPDATE applied to the compressed row");
    // A late sync into the compressed day is accepted, and read back.
    db.execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), store_id, device_id, 999999, 'SaleVoided', created_at + interval '1 second', '{\"late\": true}'
         FROM events WHERE event_id = $1::text::uuid",
        &[&event],
    )
    .unwrap();
    let late: i64 = db.query_one(&format!("SELECT count(*) FROM {chunk} WHERE seq = 999999"), &[]).unwrap().get(0);
    assert_eq!(late, 1);

    // A conflict recorded against the compressed event: the replaced foreign key locks it,
    // and then refuses its deletion (NO ACTION).
    db.execute(
        "INSERT INTO sync_conflicts (store_id, event_id_a, event_id_b, conflict_type, entity_type, entity_id, value_a, value_b)
         SELECT store_id, event_id, event_id, 'price', 'product', gen_random_uuid(), '{}', '{}' FROM events WHERE event_id = $1::text::uuid",
        &[&event],
    )
    .expect("a conflict naming a compressed event");
    assert_eq!(sqlstate(db.execute("DELETE FROM events WHERE event_id = $1::text::uuid", &[&event])), "23503");
    db.batch_execute("DELETE FROM sync_conflicts").unwrap();

    // LA-CAJA's own role writes to compressed rows with its rights on events alone, and any
    // role's DDL passes the event triggers.
    db.batch_execute(
        "DROP ROLE IF EXISTS lacaja_app; CREATE ROLE lacaja_app LOGIN;
         GRANT SELECT, INSERT, UPDATE, DELETE ON events TO lacaja_app; GRANT CREATE ON SCHEMA public TO lacaja_app;",
    )
    .unwrap();
    {
        let mut app = postgres::Client::connect(&format!("{} dbname={database} user=lacaja_app", server()), postgres::NoTls).unwrap();
        let victim: String = db
            .query_one(&format!("SELECT event_id::text FROM {chunk} WHERE seq <> 999999 ORDER BY seq DESC LIMIT 1"), &[])
            .unwrap()
            .get(0);
        assert_eq!(app.execute("UPDATE events SET version = 7 WHERE event_id = $1::text::uuid", &[&victim]).unwrap(), 1);
        assert_eq!(app.execute("DELETE FROM events WHERE event_id = $1::text::uuid", &[&victim]).unwrap(), 1);
        app.batch_execute("CREATE TABLE app_scratch (id int); DROP TABLE app_scratch;").unwrap();
    }

    // Two sessions delete the same compressed event: the second waits for the first, then
    // finds it gone (0 rows) at READ COMMITTED, and fails to serialize at REPEATABLE READ.
    let mut first = connect(database);
    let mut tx = first.transaction().unwrap();
    assert_eq!(tx.execute("DELETE FROM events WHERE event_id = $1::text::uuid", &[&event]).unwrap(), 1);
    let waiter = {
        let event = event.clone();
        thread::spawn(move || {
            let mut second = connect(database);
            second.execute("DELETE FROM events WHERE event_id = $1::text::uuid", &[&event]).unwrap()
        })
    };
    let repeatable = {
        let mut third = connect(database);
        third.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap();
        let seen: i64 = third.query_one("SELECT count(*) FROM events WHERE event_id = $1::text::uuid", &[&event]).unwrap().get(0);
        assert_eq!(seen, 1);
        let event = event.clone();
        let handle = thread::spawn(move || {
            let result = sqlstate(third.execute("UPDATE events SET payload = '{}' WHERE event_id = $1::text::uuid", &[&event]));
            let _ = third.batch_execute("ROLLBACK");
            result
        });
        handle
    };
    thread::sleep(Duration::from_millis(500));
    assert!(!waiter.is_finished(), "the second delete must wait for the first");
    tx.commit().unwrap();
    assert_eq!(waiter.join().unwrap(), 0, "the second delete finds the event gone");
    assert_eq!(repeatable.join().unwrap(), "40001", "a repeatable-read writer cannot update a row deleted since");
    let gone: i64 = db.query_one("SELECT count(*) FROM events WHERE event_id = $1::text::uuid", &[&event]).unwrap().get(0);
    assert_eq!(gone, 0);

    // An update of a compressed row, then a concurrent one at READ COMMITTED: the second
    // applies to the first's new version (EvalPlanQual through the batch to the heap row).
    let other: String = db
        .query_one(&format!("SELECT event_id::text FROM {chunk} WHERE seq <> 999999 ORDER BY seq LIMIT 1"), &[])
        .unwrap()
        .get(0);
    let mut first = connect(database);
    let mut tx = first.transaction().unwrap();
    tx.execute("UPDATE events SET version = version + 10 WHERE event_id = $1::text::uuid", &[&other]).unwrap();
    let follower = {
        let other = other.clone();
        thread::spawn(move || {
            let mut second = connect(database);
            second.execute("UPDATE events SET version = version + 100 WHERE event_id = $1::text::uuid", &[&other]).unwrap()
        })
    };
    thread::sleep(Duration::from_millis(300));
    tx.commit().unwrap();
    assert_eq!(follower.join().unwrap(), 1);
    let version: i32 = db.query_one("SELECT version FROM events WHERE event_id = $1::text::uuid", &[&other]).unwrap().get(0);
    assert!(version >= 111, "both updates applied, in turn: version {version}");

    // A rewrite would leave the batches behind: refused, with what to do.
    assert_eq!(sqlstate(db.batch_execute("ALTER TABLE events ALTER COLUMN version TYPE bigint")), "0A000");
    // The extension cannot be dropped from under a compressed chunk.
    assert_eq!(sqlstate(db.batch_execute("DROP EXTENSION lacaja_analytics")), "2BP01");

    // TRUNCATE of a compressed chunk empties it, batches included; dropping one forgets them.
    db.batch_execute(&format!("TRUNCATE {chunk}")).unwrap();
    let rows: i64 = db.query_one(&format!("SELECT count(*) FROM {chunk}"), &[]).unwrap().get(0);
    assert_eq!(rows, 0);
    let batches: i64 = db
        .query_one("SELECT count(*) FROM analytics_internal.compressed_batches WHERE chunk = $1::text::regclass::oid", &[&chunk])
        .unwrap()
        .get(0);
    assert_eq!(batches, 0);
    let all_batches_before: i64 = db.query_one("SELECT count(*) FROM analytics_internal.compressed_batches", &[]).unwrap().get(0);
    db.batch_execute("SELECT analytics.drop_chunks('events', now() - interval '10 days')").unwrap();
    let orphans: i64 = db
        .query_one(
            "SELECT count(*) FROM analytics_internal.compressed_batches b WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = b.chunk)",
            &[],
        )
        .unwrap()
        .get(0);
    let all_batches_after: i64 = db.query_one("SELECT count(*) FROM analytics_internal.compressed_batches", &[]).unwrap().get(0);
    assert_eq!(orphans, 0, "dropped chunks leave no batches");
    assert!(all_batches_after < all_batches_before);
}

/// The SQL block of docs/operations.md's section on compression.
fn operations_example() -> String {
    let doc = include_str!("../docs/operations.md");
    let section = &doc[doc.find("## Compressing old chunks").expect("the section")..];
    let block = &section[section.find("```sql").expect("its example") + 6..];
    block[..block.find("```").unwrap()].to_string()
}

#[test]
fn a_dump_of_compressed_chunks_restores_the_same_rows() {
    let source = "lacaja_compression_dump";
    let target = "lacaja_compression_restored";
    let mut db = lacaja_database(source);
    insert_events(&mut db, 4_000);
    db.batch_execute(CONVERT[0]).unwrap();
    assert!(compress_old_chunks(&mut db, "events", "2 days") > 5);
    db.execute("DELETE FROM events WHERE seq % 97 = 0", &[]).unwrap();
    let before = checksum(&mut db, "events", "event_id");
    let dump = std::env::temp_dir().join("lacaja_compression.dump");
    let conninfo = |name: &str| format!("{} dbname={name}", server());
    let run = |program: &str, args: &[&str]| {
        let output = Command::new(program).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success() && !stderr.contains("ERROR"), "{program} failed:\n{stderr}");
    };
    run("pg_dump", &["-Fc", "-d", &conninfo(source), "-f", dump.to_str().unwrap()]);
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {target} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {target}")).unwrap();
    run("pg_restore", &["-d", &conninfo(target), dump.to_str().unwrap()]);
    let mut restored = connect(target);
    assert_eq!(checksum(&mut restored, "events", "event_id"), before, "the restored events");
    // the restored chunks hold their rows uncompressed until the next compression
    assert!(compress_old_chunks(&mut restored, "events", "2 days") > 5);
    assert_eq!(checksum(&mut restored, "events", "event_id"), before, "compressed again after the restore");
    // docs/operations.md's example, as a DBA would paste it
    restored.batch_execute(&operations_example()).expect("docs/operations.md, \"Compressing old chunks\"");
    let policies: i64 = restored
        .query_one("SELECT count(*) FROM analytics.jobs WHERE proc = 'analytics_internal.policy_compression'::regproc", &[])
        .unwrap()
        .get(0);
    assert_eq!(policies, 1);
}

#[test]
fn filters_on_store_and_time_skip_batches_and_return_what_a_heap_returns() {
    let database = "lacaja_compression_filters";
    let mut db = lacaja_database(database);
    insert_events(&mut db, 12_000);
    db.batch_execute(CONVERT[0]).unwrap();
    db.batch_execute("CREATE TABLE events_copy AS SELECT * FROM events").unwrap();
    assert!(compress_old_chunks(&mut db, "events", "2 days") > 10);
    // a late sync and a deleted compressed row: both sides of the chunk in every answer
    db.batch_execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), store_id, device_id, -1, type, created_at + interval '1 second', payload
         FROM events WHERE created_at < now() - interval '5 days' ORDER BY created_at LIMIT 30;
         INSERT INTO events_copy SELECT * FROM events WHERE seq = -1;
         DELETE FROM events WHERE seq % 101 = 0; DELETE FROM events_copy WHERE seq % 101 = 0;",
    )
    .unwrap();
    let store = db.query_one("SELECT store_id::text FROM events LIMIT 1", &[]).unwrap().get::<_, String>(0);
    let day: String = db.query_one("SELECT (date_trunc('day', now(), 'UTC') - interval '6 days')::text", &[]).unwrap().get(0);
    let conditions = [
        format!("store_id = '{store}' AND created_at >= '{day}' AND created_at < '{day}'::timestamptz + interval '1 day'"),
        format!("store_id = '{store}' AND created_at >= now() - interval '30 days'"),
        format!("'{store}' = store_id AND '{day}' <= created_at AND created_at <= '{day}'::timestamptz + interval '36 hours'"),
        format!("created_at = (SELECT min(created_at) FROM events_copy)"),
        "store_id = NULL::uuid".to_string(),
        format!("store_id IN ('{store}') AND created_at > '{day}'"),
        "created_at < now() - interval '8 days' AND seq % 3 = 0".to_string(),
        "true".to_string(),
    ];
    let answer = |db: &mut Client, table: &str, condition: &str| -> String {
        db.query_one(
            &format!("SELECT count(*) || '/' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t WHERE {condition}"),
            &[],
        )
        .unwrap()
        .get(0)
    };
    for condition in &conditions {
        assert_eq!(answer(&mut db, "events", condition), answer(&mut db, "events_copy", condition), "WHERE {condition}");
    }
    // a parameter, read when the scan starts, and again on each rescan of a nested loop
    let statement = db.prepare("SELECT count(*) FROM events WHERE store_id = $1::text::uuid AND created_at >= $2::text::timestamptz").unwrap();
    let copy = db.prepare("SELECT count(*) FROM events_copy WHERE store_id = $1::text::uuid AND created_at >= $2::text::timestamptz").unwrap();
    for _ in 0..7 {
        let (a, b): (i64, i64) =
            (db.query_one(&statement, &[&store, &day]).unwrap().get(0), db.query_one(&copy, &[&store, &day]).unwrap().get(0));
        assert_eq!(a, b, "prepared, run again (a generic plan after five)");
    }
    db.batch_execute("SET enable_hashjoin = off; SET enable_mergejoin = off").unwrap();
    let nested = "SELECT count(*) FROM (SELECT DISTINCT store_id FROM events_copy) s
                  JOIN events e ON e.store_id = s.store_id AND e.created_at >= now() - interval '9 days'";
    let by_copy = "SELECT count(*) FROM (SELECT DISTINCT store_id FROM events_copy) s
                   JOIN events_copy e ON e.store_id = s.store_id AND e.created_at >= now() - interval '9 days'";
    let (a, b): (i64, i64) = (db.query_one(nested, &[]).unwrap().get(0), db.query_one(by_copy, &[]).unwrap().get(0));
    assert_eq!(a, b, "a nested loop rescanning compressed chunks with each store");
    // the plan reads the compressed chunks with the node that skips batches
    let plan: Vec<String> = db
        .query(&format!("EXPLAIN (COSTS OFF) SELECT count(*) FROM events WHERE {}", conditions[0]), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("Custom Scan (CompressedChunkScan)")), "{plan:?}");
}

/// A long report on an old chunk (ACCESS SHARE held in an open transaction): compression gives
/// way by short tries and gives up with 55P03 leaving the chunk as it was, while the registers
/// keep writing to the current day without waiting; once the report ends, it goes through.
#[test]
fn compression_gives_way_to_a_long_report_and_never_holds_up_the_registers() {
    let database = "lacaja_compression_report";
    let mut db = lacaja_database(database);
    insert_events(&mut db, 3_000);
    db.batch_execute(CONVERT[0]).unwrap();
    let chunk: String = db
        .query_one(
            "SELECT chunk::text FROM analytics.chunks WHERE hypertable_name = 'events' AND range_end < now() - interval '3 days'
             ORDER BY range_start LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let mut report = connect(database);
    report.batch_execute(&format!("BEGIN; SELECT count(*) FROM {chunk};")).unwrap();

    let register = thread::spawn(move || {
        let mut pos = connect(database);
        let mut slowest = Duration::ZERO;
        for _ in 0..40 {
            let started = std::time::Instant::now();
            pos.batch_execute(
                "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
                 SELECT gen_random_uuid(), id, gen_random_uuid(), 1, 'SaleCreated', now(), '{}' FROM stores LIMIT 1",
            )
            .unwrap();
            slowest = slowest.max(started.elapsed());
            thread::sleep(Duration::from_millis(25));
        }
        slowest
    });
    db.batch_execute("SET lacaja_analytics.maintenance_lock_wait = '1s'").unwrap();
    let refused = db.execute("SELECT analytics.compress_chunk($1::text::regclass)", &[&chunk]);
    assert_eq!(sqlstate(refused), "55P03", "compression gives up while the report reads the chunk");
    let state: String =
        db.query_one("SELECT analytics_internal._compression_state($1::text::regclass)", &[&chunk]).unwrap().get(0);
    assert_eq!(state, "uncompressed", "nothing was changed");
    let slowest = register.join().unwrap();
    assert!(slowest < Duration::from_millis(500), "a register waited {slowest:?} while compression tried");

    report.batch_execute("COMMIT").unwrap();
    db.execute("SELECT analytics.compress_chunk($1::text::regclass)", &[&chunk]).expect("compressed once the report ended");
}
