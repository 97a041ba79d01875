//! The job scheduler background worker on a real server with the library preloaded: jobs on
//! time, retries with backoff, errors recorded, timeouts, and survival of `kill -9` of
//! itself while idle and while it runs a job, of the extension being dropped, and of a
//! database without the extension.
//!
//! One test on purpose: `kill -9` restarts the whole server, which no parallel test could
//! survive.

mod common;

use common::connect;
use postgres::Client;
use std::time::Duration;

const DATABASE: &str = "lacaja_test_jobs";

/// Waits until `condition` holds, reconnecting through server restarts.
fn eventually(what: &str, timeout: Duration, condition: impl FnMut(&mut Client) -> bool) {
    common::eventually_in(DATABASE, what, timeout, Duration::from_millis(250), condition)
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).map(|r| r.get::<_, i64>(0)).unwrap_or(-1)
}

fn scheduler_pid(db: &mut Client) -> Option<i32> {
    db.query_opt("SELECT pid FROM pg_stat_activity WHERE backend_type = 'lacaja_analytics scheduler'", &[])
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Whether the scheduler is connected to the test database.
fn scheduler_in_database(db: &mut Client) -> bool {
    db.query_opt("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'lacaja_analytics scheduler' AND datname = $1", &[&DATABASE])
        .ok()
        .flatten()
        .is_some()
}

fn kill_9(pid: i32) {
    let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

fn reset_scheduler_settings() {
    common::point_scheduler_at(None, "");
}

fn set_scheduler_database(name: &str) {
    common::point_scheduler_at(Some(name), "500ms");
}

#[test]
fn scheduler_runs_jobs_on_time_retries_and_survives_kill_9() {
    let mut admin = connect("postgres");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")).unwrap();
    admin.batch_execute(&format!("CREATE DATABASE {DATABASE}")).unwrap();

    // A database without the extension: the scheduler connects and waits.
    set_scheduler_database(DATABASE);
    eventually("the scheduler to connect to the database", Duration::from_secs(30), |db| {
        scheduler_in_database(db)
    });
    let mut db = connect(DATABASE);
    db.batch_execute(
        "CREATE EXTENSION lacaja_analytics;
         CREATE TABLE job_log (job_id int, at timestamptz DEFAULT clock_timestamp());
         CREATE PROCEDURE log_run(job_id int, config jsonb) LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO job_log (job_id) VALUES (job_id); END $$;
         CREATE FUNCTION fail_run(job_id int, config jsonb) RETURNS void LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'the shelf is empty (job %)', job_id USING ERRCODE = 'data_exception'; END $$;
         CREATE PROCEDURE long_run(job_id int, config jsonb) LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO job_log (job_id) VALUES (job_id); PERFORM pg_sleep((config ->> 'seconds')::float8); END $$;",
    )
    .unwrap();
    let every_second: i32 = db.query_one("SELECT analytics.add_job('log_run', '1 second')", &[]).unwrap().get(0);
    // Added paused and configured before they may run: the scheduler picks a due job at once.
    let failing: i32 = db.query_one("SELECT analytics.add_job('fail_run', '1 hour', scheduled => false)", &[]).unwrap().get(0);
    db.execute("SELECT analytics.alter_job($1, retry_period => '500 milliseconds', scheduled => true)", &[&failing]).unwrap();
    let timed_out: i32 = db
        .query_one("SELECT analytics.add_job('long_run', '1 hour', '{\"seconds\": 30}', scheduled => false)", &[])
        .unwrap()
        .get(0);
    db.execute("SELECT analytics.alter_job($1, max_runtime => '1 second', scheduled => true)", &[&timed_out]).unwrap();

    // On time: a 1-second job runs about once a second, on its fixed schedule.
    std::thread::sleep(Duration::from_secs(6));
    let runs = count(&mut db, &format!("SELECT count(*) FROM job_log WHERE job_id = {every_second}"));
    assert!((4..=8).contains(&runs), "a 1-second job ran {runs} times in 6 seconds");
    let late = count(
        &mut db,
        &format!(
            "SELECT count(*) FROM (SELECT at - lag(at) OVER (ORDER BY at) AS gap FROM job_log WHERE job_id = {every_second}) g
             WHERE gap > interval '1.9 seconds'"
        ),
    );
    assert!(late <= 1, "runs of a 1-second job should be about a second apart ({late} gaps over 1.9 s)");

    // Retries: each failure recorded, waits doubling (0.5, 1, 2, 4 s ...), never the scheduler down.
    let failures = count(&mut db, &format!("SELECT count(*) FROM analytics.job_errors WHERE job_id = {failing}"));
    assert!((3..=5).contains(&failures), "a failing job retried {failures} times in 6 s (backoff from 0.5 s)");
    let row = db
        .query_one(
            "SELECT sqlerrcode, err_message FROM analytics.job_errors WHERE job_id = $1 ORDER BY id DESC LIMIT 1",
            &[&failing],
        )
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "22000");
    assert!(row.get::<_, &str>(1).contains("the shelf is empty"));
    let stats = db
        .query_one(
            "SELECT last_run_status, consecutive_failures::int, total_failures FROM analytics.job_stats WHERE job_id = $1",
            &[&failing],
        )
        .unwrap();
    assert_eq!(stats.get::<_, &str>(0), "Failed");
    assert!(stats.get::<_, i32>(1) >= 3);

    // max_runtime cancels a job that runs too long; the others go on.
    let timeouts = count(
        &mut db,
        &format!("SELECT count(*) FROM analytics.job_errors WHERE job_id = {timed_out} AND sqlerrcode = '57014'"),
    );
    assert_eq!(timeouts, 1, "the 30-second job with max_runtime 1 s must be cancelled once");

    // kill -9 of the scheduler while it is idle: the server restarts, so does the scheduler.
    db.execute("SELECT analytics.alter_job($1, scheduled => false)", &[&failing]).unwrap();
    let before = count(&mut db, &format!("SELECT count(*) FROM job_log WHERE job_id = {every_second}"));
    kill_9(scheduler_pid(&mut db).expect("the scheduler runs"));
    drop(db);
    eventually("jobs to run again after kill -9 of the scheduler", Duration::from_secs(60), |db| {
        count(db, &format!("SELECT count(*) FROM job_log WHERE job_id = {every_second}")) >= before + 3
    });

    // kill -9 of the backend running a job (a 60-second one): recorded as a crash, the
    // job is retried, the others keep their schedule.
    let mut db = connect(DATABASE);
    db.execute("SELECT analytics.alter_job($1, scheduled => false)", &[&every_second]).unwrap();
    let crashing: i32 = db
        .query_one("SELECT analytics.add_job('long_run', '1 hour', '{\"seconds\": 60}')", &[])
        .unwrap()
        .get(0);
    let mut job_pid = None;
    eventually("the 60-second job to start", Duration::from_secs(20), |db| {
        job_pid = db
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                &[&format!("lacaja_analytics job {crashing}")],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0));
        job_pid.is_some()
    });
    kill_9(job_pid.unwrap());
    drop(db);
    eventually("the killed run to be recorded as a crash", Duration::from_secs(60), |db| {
        count(db, &format!("SELECT count(*) FROM analytics.job_errors WHERE job_id = {crashing} AND sqlerrcode = 'crash'")) == 1
    });
    let mut db = connect(DATABASE);
    let state = db
        .query_one("SELECT job_status, total_crashes, next_start > now() FROM analytics.job_stats WHERE job_id = $1", &[&crashing])
        .unwrap();
    assert_ne!(state.get::<_, &str>(0), "Running");
    assert_eq!(state.get::<_, i64>(1), 1);
    assert!(state.get::<_, bool>(2), "a crashed job waits for its retry");
    db.execute("SELECT analytics.delete_job($1)", &[&crashing]).unwrap();
    db.execute("SELECT analytics.alter_job($1, scheduled => true)", &[&every_second]).unwrap();
    let before = count(&mut db, &format!("SELECT count(*) FROM job_log WHERE job_id = {every_second}"));
    eventually("the other job to keep running", Duration::from_secs(20), |db| {
        count(db, &format!("SELECT count(*) FROM job_log WHERE job_id = {every_second}")) >= before + 2
    });

    // The extension dropped under the scheduler: it waits, and picks up when it is back.
    db.batch_execute("DROP EXTENSION lacaja_analytics CASCADE").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let pid = scheduler_pid(&mut db);
    assert!(pid.is_some(), "the scheduler must survive DROP EXTENSION");
    db.batch_execute("CREATE EXTENSION lacaja_analytics; TRUNCATE job_log;").unwrap();
    let again: i32 = db.query_one("SELECT analytics.add_job('log_run', '1 second')", &[]).unwrap().get(0);
    eventually("jobs to run once the extension is back", Duration::from_secs(30), |db| {
        count(db, &format!("SELECT count(*) FROM job_log WHERE job_id = {again}")) >= 2
    });
    assert_eq!(scheduler_pid(&mut db), pid, "the same scheduler process carried on");

    // Without the scheduler, run_pending_jobs() runs what is due, in the caller's session.
    reset_scheduler_settings();
    eventually("the scheduler to leave the database", Duration::from_secs(30), |db| {
        !scheduler_in_database(db)
    });
    let mut db = connect(DATABASE);
    db.batch_execute("SELECT analytics.delete_job(job_id) FROM analytics.jobs; TRUNCATE job_log;").unwrap();
    let manual: i32 = db.query_one("SELECT analytics.add_job('log_run', '1 day')", &[]).unwrap().get(0);
    let _failing_manual: i32 = db.query_one("SELECT analytics.add_job('fail_run', '1 day')", &[]).unwrap().get(0);
    let ran: String = db.query_one("SELECT analytics.run_pending_jobs()::text", &[]).unwrap().get(0);
    assert!(ran.contains(r#""jobs_run": 2"#) && ran.contains(r#""jobs_failed": 1"#), "{ran}");
    let ran: String = db.query_one("SELECT analytics.run_pending_jobs()::text", &[]).unwrap().get(0);
    assert!(ran.contains(r#""jobs_run": 0"#), "nothing is due any more: {ran}");
    db.execute("CALL analytics.run_job($1)", &[&manual]).unwrap();
    assert_eq!(count(&mut db, &format!("SELECT count(*) FROM job_log WHERE job_id = {manual}")), 2);
}
