//! The job scheduler: one background worker that runs the due jobs of `analytics.jobs`.
//!
//! Registered when the library is in `shared_preload_libraries`; it connects to the database
//! named by `lacaja_analytics.database`. What a job is, when it is due and how runs are
//! recorded lives in sql/jobs.sql; this worker only provides what SQL cannot: a loop that
//! sleeps until the next job, a transaction per job with its timeout, and survival. A job's
//! error is caught and recorded; the worker's own death (kill -9, a crash) is seen when it
//! restarts, and the run it was doing is recorded as crashed.

use std::ffi::CString;
use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

use crate::guc;

/// PG15's `TimeoutId::STATEMENT_TIMEOUT` (utils/timeout.h is not in pgrx's bindings).
const STATEMENT_TIMEOUT: i32 = 3;

// They only arm and disarm a timer; neither raises an error in practice. `die` is Postgres'
// SIGTERM handler (pgrx's binding of it is a Rust wrapper, not a signal handler).
unsafe extern "C-unwind" {
    fn enable_timeout_after(id: i32, delay_ms: i32);
    fn disable_timeout(id: i32, keep_indicator: bool);
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

pub fn register_scheduler() {
    BackgroundWorkerBuilder::new("lacaja_analytics scheduler")
        .set_type("lacaja_analytics scheduler")
        .set_library("lacaja_analytics")
        .set_function("lacaja_scheduler_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// What a failed statement reported.
pub(crate) struct Failure {
    pub sqlstate: String,
    pub message: String,
}

fn sqlstate(code: PgSqlErrorCode) -> String {
    let packed = code as i32;
    (0..5).map(|i| (((packed >> (6 * i)) & 0x3F) as u8 + b'0') as char).collect()
}

/// Runs `body` as one transaction; an error rolls it back and is returned, never raised.
/// `timeout_ms` > 0 cancels the transaction's statements after that long.
pub(crate) fn in_transaction<R>(timeout_ms: i32, body: impl FnOnce() -> Result<R, pgrx::spi::Error>) -> Result<R, Failure> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        if timeout_ms > 0 {
            enable_timeout_after(STATEMENT_TIMEOUT, timeout_ms);
        }
    }
    let body = std::panic::AssertUnwindSafe(body);
    PgTryBuilder::new(move || {
        let result = body();
        unsafe {
            disable_timeout(STATEMENT_TIMEOUT, false);
        }
        match result {
            Ok(value) => {
                unsafe {
                    pg_sys::PopActiveSnapshot();
                    pg_sys::CommitTransactionCommand();
                }
                Ok(value)
            }
            Err(error) => {
                unsafe { pg_sys::AbortCurrentTransaction() };
                Err(Failure { sqlstate: "XX000".into(), message: error.to_string() })
            }
        }
    })
    .catch_others(|caught| {
        unsafe {
            disable_timeout(STATEMENT_TIMEOUT, false);
            pg_sys::AbortCurrentTransaction();
        }
        Err(match caught {
            CaughtError::PostgresError(report) | CaughtError::ErrorReport(report) => {
                Failure { sqlstate: sqlstate(report.sql_error_code()), message: report.message().to_string() }
            }
            CaughtError::RustPanic { ereport, .. } => {
                Failure { sqlstate: sqlstate(ereport.sql_error_code()), message: ereport.message().to_string() }
            }
        })
    })
    .execute()
}

pub(crate) fn report_activity(what: &str) {
    if let Ok(name) = CString::new(what) {
        unsafe { pg_sys::pgstat_report_appname(name.as_ptr()) };
    }
}

/// Runs the due jobs one after another; returns how long to sleep before looking again.
fn run_due_jobs() -> Duration {
    let naptime = Duration::from_millis(guc::scheduler_naptime_ms() as u64);
    let ready = in_transaction(0, || {
        Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'lacaja_analytics')
                    AND to_regclass('analytics.jobs') IS NOT NULL",
        )
    });
    if !matches!(ready, Ok(Some(true))) {
        // Not installed in this database (yet, or any more): look again later.
        return naptime.max(Duration::from_secs(10));
    }
    if let Ok(Some(crashed)) = in_transaction(0, || Spi::get_one::<i32>("SELECT analytics_internal._recover_crashed_runs()")) {
        if crashed > 0 {
            pgrx::log!("lacaja_analytics scheduler: recorded {crashed} job run(s) that ended without finishing");
        }
    }
    loop {
        pgrx::check_for_interrupts!();
        let claimed = in_transaction(0, || {
            Spi::get_two::<i32, i64>(
                "SELECT c.job_id, (extract(epoch FROM j.max_runtime) * 1000)::bigint
                 FROM (SELECT analytics_internal._claim_due_job() AS job_id) AS c LEFT JOIN analytics.jobs j USING (job_id)",
            )
        });
        let (job_id, max_runtime_ms) = match claimed {
            Ok((Some(job_id), runtime)) => (job_id, runtime.unwrap_or(0).clamp(0, i32::MAX as i64) as i32),
            Ok(_) => break,
            Err(failure) => {
                pgrx::warning!("lacaja_analytics scheduler: could not read the jobs: {}", failure.message);
                return naptime;
            }
        };
        report_activity(&format!("lacaja_analytics job {job_id}"));
        let outcome = in_transaction(max_runtime_ms, || {
            Spi::run_with_args("SELECT analytics_internal._execute_job($1)", &[job_id.into()])
        });
        report_activity("lacaja_analytics scheduler");
        let (code, message) = match &outcome {
            Ok(()) => (None, None),
            Err(failure) => (Some(failure.sqlstate.clone()), Some(failure.message.clone())),
        };
        if let Err(failure) = in_transaction(0, || {
            Spi::run_with_args(
                "SELECT analytics_internal._record_job_run($1, $2, $3)",
                &[job_id.into(), code.clone().into(), message.clone().into()],
            )
        }) {
            pgrx::warning!("lacaja_analytics scheduler: could not record the run of job {job_id}: {}", failure.message);
        }
        if BackgroundWorker::sighup_received() {
            reload_config();
        }
    }
    let until_next = in_transaction(0, || {
        Spi::get_one::<f64>("SELECT extract(epoch FROM analytics_internal._next_due() - clock_timestamp())::float8")
    });
    match until_next {
        Ok(Some(seconds)) if seconds > 0.0 => naptime.min(Duration::from_secs_f64(seconds)),
        Ok(Some(_)) => Duration::from_millis(10),
        _ => naptime,
    }
}

/// Re-reads postgresql.conf; a different database needs a new connection, so the worker
/// exits and the postmaster starts it again.
fn reload_config() {
    let before = guc::scheduler_database();
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    if guc::scheduler_database() != before {
        pgrx::log!("lacaja_analytics scheduler: lacaja_analytics.database changed; restarting to connect to it");
        unsafe { pg_sys::proc_exit(1) };
    }
}

/// Postgres' own SIGTERM handling for a worker: what it runs is interrupted at once (shutdown,
/// pg_terminate_backend) rather than when it finishes. SIGINT stays the statement cancel.
pub(crate) fn die_on_sigterm() {
    unsafe { pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die)) };
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lacaja_scheduler_main(_arg: pg_sys::Datum) {
    // A running job is interrupted at once by SIGTERM; SIGINT is the cancel max_runtime uses.
    die_on_sigterm();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let database = guc::scheduler_database();
    if database.is_empty() {
        pgrx::log!("lacaja_analytics scheduler: idle until lacaja_analytics.database names a database (then reload)");
        while BackgroundWorker::wait_latch(None) {
            pgrx::check_for_interrupts!();
            if BackgroundWorker::sighup_received() {
                reload_config();
            }
        }
        return;
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    crate::security::pin_worker_search_path();
    report_activity("lacaja_analytics scheduler");
    loop {
        if BackgroundWorker::sighup_received() {
            reload_config();
        }
        let sleep = run_due_jobs();
        if !BackgroundWorker::wait_latch(Some(sleep)) {
            break;
        }
        pgrx::check_for_interrupts!();
    }
}
