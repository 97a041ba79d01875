//! Escalation attempts on a real server, where the scheduler runs jobs from a session of the
//! bootstrap superuser (what in-transaction tests cannot show), and an online conversion of a
//! LA-CAJA table whose owner's name needs quoting, in its own worker. docs/security.md.
//!
//! One test on purpose: it points the scheduler at its database.

mod common;

use common::{connect, lacaja_database};
use postgres::Client;
use std::time::{Duration, Instant};

const DATABASE: &str = "lacaja_test_security";
const OWNER: &str = "LaCaja \"Dueño\" Owner";

fn quoted(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

fn eventually(what: &str, timeout: Duration, db: &mut Client, sql: &str) {
    let started = Instant::now();
    loop {
        if db.query_one(sql, &[]).map(|r| r.get::<_, bool>(0)).unwrap_or(false) {
            return;
        }
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn is_superuser(db: &mut Client, role: &str) -> bool {
    db.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role]).unwrap().get(0)
}

#[test]
fn no_route_to_superuser_through_the_scheduler_and_odd_owner_names_everywhere() {
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).unwrap();
    for role in ["lacaja_sec_author", OWNER] {
        admin.batch_execute(&format!("DROP ROLE IF EXISTS {}", quoted(role))).ok();
    }
    let mut db = lacaja_database(DATABASE);
    let owner = quoted(OWNER);
    db.batch_execute(&format!(
        "CREATE ROLE lacaja_sec_author NOLOGIN;
         GRANT USAGE ON SCHEMA analytics TO lacaja_sec_author;
         CREATE SCHEMA author AUTHORIZATION lacaja_sec_author;
         CREATE ROLE {owner} NOLOGIN;
         ALTER TABLE events OWNER TO {owner};
         GRANT SELECT, INSERT, UPDATE, DELETE ON events TO lacaja_sec_author;"
    ))
    .unwrap();

    // Finding 2, through the scheduler: its session is the bootstrap superuser's, so a job
    // that could RESET ROLE or SET SESSION AUTHORIZATION would become it.
    let escapes = [
        ("reset_role", "RESET ROLE; ALTER ROLE lacaja_sec_author SUPERUSER;"),
        ("set_role", "EXECUTE format('SET ROLE %I', session_user); ALTER ROLE lacaja_sec_author SUPERUSER;"),
        ("session_authorization",
         "EXECUTE format('SET SESSION AUTHORIZATION %I', session_user); ALTER ROLE lacaja_sec_author SUPERUSER;"),
        ("plain", "ALTER ROLE lacaja_sec_author SUPERUSER;"),
        ("add_job", "PERFORM analytics.add_job('author.plain'::regproc, interval '1 hour');"),
    ];
    db.batch_execute("SET ROLE lacaja_sec_author").unwrap();
    for (name, body) in escapes {
        db.batch_execute(&format!(
            "CREATE PROCEDURE author.{name}(job_id int, config jsonb) LANGUAGE plpgsql AS $$ BEGIN {body} END $$;
             SELECT analytics.add_job('author.{name}'::regproc, interval '1 hour');"
        ))
        .unwrap();
    }
    db.batch_execute("RESET ROLE").unwrap();
    common::point_scheduler_at(Some(DATABASE), "200ms");
    // every escape ran (and the job the add_job escape added, too)
    eventually(
        "the scheduler to run the six jobs",
        Duration::from_secs(60),
        &mut db,
        "SELECT count(*) = 6 FROM analytics.job_stats WHERE proc_schema = 'author' AND total_runs > 0",
    );
    common::point_scheduler_at(None, "");
    assert!(!is_superuser(&mut db, "lacaja_sec_author"), "a job became superuser");
    let failures: Vec<String> = db
        .query("SELECT DISTINCT proc_name || ':' || sqlerrcode FROM analytics.job_errors ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(failures, ["plain:42501", "reset_role:42501", "session_authorization:42501", "set_role:42501"]);
    let owners: Vec<String> = db
        .query("SELECT DISTINCT owner::text FROM analytics.jobs WHERE job_id >= 1000", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, ["lacaja_sec_author"], "every job, the one a job added included, is its author's");

    // Finding 3: an online conversion (its own worker, the swap) of a table whose owner's
    // name needs quoting, while the table is written.
    db.batch_execute(
        "INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         SELECT gen_random_uuid(), s.id, gen_random_uuid(), i, 'SaleCreated', now() - (i % 40) * interval '1 day', '{}'
         FROM generate_series(1, 3000) i CROSS JOIN LATERAL (SELECT id FROM stores ORDER BY id LIMIT 1) s",
    )
    .unwrap();
    let converted: bool = db
        .query_one(
            "SELECT created FROM analytics.create_hypertable('events', 'created_at', chunk_time_interval => interval '7 days',
                                                             migrate_data => true, extend_unique => true, replace_foreign_keys => true,
                                                             replace_unique => true)",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(converted);
    let online: bool = db
        .query_one("SELECT online FROM analytics.hypertable_conversions ORDER BY conversion_id DESC LIMIT 1", &[])
        .unwrap()
        .get(0);
    assert!(online, "the conversion ran online, in its worker");
    let table_and_chunk_owners: Vec<String> = db
        .query(
            "SELECT DISTINCT pg_get_userbyid(c.relowner)::text FROM pg_class c
             WHERE c.oid = 'events'::regclass OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass)",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(table_and_chunk_owners, [OWNER]);
    let rows: i64 = db.query_one("SELECT count(*) FROM events", &[]).unwrap().get(0);
    assert_eq!(rows, 3000);
    // the grant carried over, and the author still writes events
    db.batch_execute(
        "SET ROLE lacaja_sec_author;
         INSERT INTO events (event_id, store_id, device_id, seq, type, created_at, payload)
         VALUES (gen_random_uuid(), 'a0000000-0000-4000-8000-000000000001', gen_random_uuid(), 1, 'SaleCreated', now(), '{}');
         RESET ROLE;",
    )
    .unwrap();
    // chunk maintenance and retention as jobs of the DBA
    db.batch_execute("SELECT analytics.add_retention_policy('events', interval '21 days')").unwrap();
    for policy in ["policy_chunk_maintenance", "policy_retention"] {
        let job: i32 = db
            .query_one(
                &format!("SELECT job_id FROM analytics.jobs WHERE hypertable = 'events'::regclass AND proc = 'analytics_internal.{policy}'::regproc"),
                &[],
            )
            .unwrap()
            .get(0);
        db.batch_execute(&format!("CALL analytics.run_job({job})")).unwrap();
    }
    let old: i64 = db.query_one("SELECT count(*) FROM events WHERE created_at < now() - interval '30 days'", &[]).unwrap().get(0);
    assert_eq!(old, 0, "retention dropped the old chunks");
    assert!(!is_superuser(&mut db, "lacaja_sec_author"));

    // Store isolation changes row-level security (ACCESS EXCLUSIVE) on tables the capture reads
    // on every sale: behind a long report, it gives way to sales instead of queueing them.
    db.batch_execute(
        "CREATE FUNCTION public.sees_every_store(store_id uuid) RETURNS boolean LANGUAGE sql STABLE AS 'SELECT true'",
    )
    .unwrap();
    let mut report = connect(DATABASE);
    report.batch_execute("BEGIN; SELECT count(*) FROM analytics.store_settings;").unwrap();
    let enabling = std::thread::spawn(|| {
        let mut dba = connect(DATABASE);
        dba.batch_execute("SELECT analytics.enable_store_isolation('public.sees_every_store(uuid)')").unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    let mut pos = connect(DATABASE);
    let started = Instant::now();
    pos.batch_execute(
        "INSERT INTO sales (id, store_id, sold_at, exchange_rate, currency, totals, payment)
         VALUES (gen_random_uuid(), 'a0000000-0000-4000-8000-000000000001', now(), 36.5, 'BS',
                 '{\"total_bs\": 10, \"total_usd\": 1}', '{\"method\": \"CASH_BS\"}')",
    )
    .unwrap();
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(1000), "a sale waited {waited:?} behind enable_store_isolation()");
    std::thread::sleep(Duration::from_millis(1500));
    report.batch_execute("COMMIT").unwrap();
    enabling.join().expect("enable_store_isolation() succeeds once the report ends");
    drop(db);
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).unwrap();
}
