//! Builds the indexes `analytics.create_recommended_indexes(dry_run => false)` queued.
//!
//! `CREATE INDEX CONCURRENTLY` cannot run inside a function (nor a procedure), and a plain
//! `CREATE INDEX` would hold LA-CAJA's sales back for the whole build. So the function only
//! queues statements in `analytics.index_builds`; when its transaction commits, a dynamic
//! background worker (no `shared_preload_libraries` needed) runs them one by one as
//! top-level statements, as the role that asked, and records the outcome of each.

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::prelude::*;
use pgrx::{PgList, PgXactCallbackEvent};
use std::ffi::CString;

/// Starts the builder when the calling transaction commits (the queued rows are visible then;
/// a rollback queues and starts nothing).
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal")]
fn _start_index_builder() -> bool {
    let database = unsafe { pg_sys::MyDatabaseId };
    let user = unsafe { pg_sys::GetUserId() };
    pgrx::register_xact_callback(PgXactCallbackEvent::Commit, move || {
        // Post-commit: must not raise an error; a full worker table only delays the builds.
        let started = BackgroundWorkerBuilder::new("lacaja_analytics index builder")
            .set_type("lacaja_analytics index builder")
            .set_library("lacaja_analytics")
            .set_function("lacaja_index_builder_main")
            .set_argument(Some(pg_sys::Datum::from(database.to_u32())))
            .set_extra(&user.to_u32().to_string())
            .enable_spi_access()
            .load_dynamic();
        if started.is_err() {
            pgrx::warning!(
                "lacaja_analytics: no background worker slot to build the queued indexes; \
                 raise max_worker_processes or run SELECT analytics.create_recommended_indexes(false) again"
            );
        }
    });
    true
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lacaja_index_builder_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = pg_sys::Oid::from(arg.value() as u32);
    let user = pg_sys::Oid::from(BackgroundWorker::get_extra().parse::<u32>().unwrap_or(0));
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), Some(user));
    crate::security::pin_worker_search_path();

    while !BackgroundWorker::sigterm_received() {
        let next: Option<(i64, String)> = BackgroundWorker::transaction(|| {
            Spi::connect_mut(|client| {
                let claimed = client.update(
                    "UPDATE analytics.index_builds SET status = 'building', started_at = now(), worker_pid = pg_backend_pid()
                     WHERE id = (SELECT b.id FROM analytics.index_builds b WHERE b.status = 'queued'
                                 ORDER BY b.id LIMIT 1 FOR UPDATE SKIP LOCKED)
                     RETURNING id, statement",
                    None,
                    &[],
                )?;
                let mut rows = claimed.into_iter();
                Ok::<_, pgrx::spi::Error>(match rows.next() {
                    Some(row) => Some((row.get::<i64>(1)?.unwrap_or(0), row.get::<String>(2)?.unwrap_or_default())),
                    None => None,
                })
            })
            .unwrap_or(None)
        });
        let Some((id, statement)) = next else { break };
        // Maintenance running now (analytics_internal._by_short_tries) would wait for this build
        // while the build waits for it: each build waits for maintenance to end, and maintenance
        // gives way to a build it finds running.
        let outcome = BackgroundWorker::transaction(|| Spi::run("SELECT pg_advisory_lock(1279345482, 3)"))
            .map_err(|e| (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))
            .and_then(|()| {
                let outcome = if statement.contains(" CONCURRENTLY ") {
                    // Its waits for older transactions are lock waits too: no lock_timeout here.
                    run_top_level(&statement)
                } else {
                    run_by_short_tries(&statement)
                };
                let _ = BackgroundWorker::transaction(|| Spi::run("SELECT pg_advisory_unlock(1279345482, 3)"));
                outcome
            });
        let error = outcome.err().map(|(_, message)| message);
        BackgroundWorker::transaction(|| {
            Spi::run_with_args(
                "UPDATE analytics.index_builds SET status = CASE WHEN $2 IS NULL THEN 'built' ELSE 'failed' END,
                        finished_at = now(), error = $2
                 WHERE id = $1",
                &[id.into(), error.clone().into()],
            )?;
            // The later steps of the same index (a hypertable's attach) must not run on a
            // partial build: a plain CREATE INDEX would hold sales back while it builds.
            Spi::run_with_args(
                "UPDATE analytics.index_builds b SET status = 'failed', finished_at = now(),
                        error = format('not run: step %s of this index failed', $1)
                 WHERE $2 IS NOT NULL AND b.status = 'queued' AND b.id > $1
                   AND b.index_name = (SELECT f.index_name FROM analytics.index_builds f WHERE f.id = $1)",
                &[id.into(), error.into()],
            )
        })
        .unwrap_or_else(|e| pgrx::warning!("lacaja_analytics: could not record index build {id}: {e}"));
    }
}

/// Runs a statement whose lock conflicts with the POS's writes (a hypertable's index ON ONLY,
/// an index partition's attach: catalog changes of milliseconds) the way maintenance takes
/// such locks (analytics_internal._lock_tables): tries of `maintenance_lock_timeout`, retried
/// with backoff until `maintenance_lock_wait`, so that no sale queues behind a report for it.
fn run_by_short_tries(statement: &str) -> Result<(), (PgSqlErrorCode, String)> {
    let try_for = crate::guc::MAINTENANCE_LOCK_TIMEOUT_MS.get();
    let give_up_at = std::time::Instant::now()
        + std::time::Duration::from_millis(crate::guc::MAINTENANCE_LOCK_WAIT_MS.get().max(0) as u64);
    let mut backoff = std::time::Duration::from_millis(50);
    run_top_level(&format!("SET lock_timeout = {try_for}"))?;
    let outcome = loop {
        match run_top_level(statement) {
            Err((PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, _)) if std::time::Instant::now() < give_up_at => {
                if !BackgroundWorker::wait_latch(Some(backoff)) {
                    break Err((PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, "stopped while waiting for a lock".into()));
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
            }
            other => break other,
        }
    };
    run_top_level("RESET lock_timeout")?;
    outcome
}

/// Runs one utility statement as the top level of its own transaction (what psql would do),
/// which is what CREATE / DROP INDEX CONCURRENTLY require. Returns the error if it fails.
fn run_top_level(statement: &str) -> Result<(), (PgSqlErrorCode, String)> {
    let sql = CString::new(statement).map_err(|e| (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()))?;
    // The statement's trees must outlive the transactions a concurrent build commits on the
    // way, so they live in a context of their own rather than the transaction's.
    let context = unsafe {
        pg_sys::AllocSetContextCreateExtended(
            pg_sys::TopMemoryContext,
            c"lacaja_analytics index build".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        )
    };
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::MemoryContextSwitchTo(context);
    }
    let result = PgTryBuilder::new(|| unsafe {
        let parsed = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::raw_parser(
            sql.as_ptr(),
            pg_sys::RawParseMode::RAW_PARSE_DEFAULT,
        ));
        if parsed.len() != 1 {
            pgrx::error!("expected one statement, got {}", parsed.len());
        }
        let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
            parsed.head().unwrap(),
            sql.as_ptr(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
        );
        let planned = PgList::<pg_sys::PlannedStmt>::from_pg(pg_sys::pg_plan_queries(
            queries,
            sql.as_ptr(),
            0,
            std::ptr::null_mut(),
        ));
        let statement = planned.head().unwrap();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        let snapshot = pg_sys::GetActiveSnapshot();
        let mut completion = pg_sys::QueryCompletion::default();
        pg_sys::ProcessUtility(
            statement,
            sql.as_ptr(),
            false,
            pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            pg_sys::None_Receiver,
            &mut completion,
        );
        // A concurrent build commits and restarts transactions itself, releasing this snapshot.
        if pg_sys::ActiveSnapshotSet() && pg_sys::GetActiveSnapshot() == snapshot {
            pg_sys::PopActiveSnapshot();
        }
        pg_sys::CommitTransactionCommand();
        Ok(())
    })
    .catch_others(|caught| {
        unsafe { pg_sys::AbortCurrentTransaction() };
        Err(match caught {
            pg_sys::panic::CaughtError::PostgresError(report)
            | pg_sys::panic::CaughtError::ErrorReport(report) => (report.sql_error_code(), report.message().to_string()),
            pg_sys::panic::CaughtError::RustPanic { ereport, .. } => (ereport.sql_error_code(), ereport.message().to_string()),
        })
    })
    .execute();
    unsafe {
        pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        pg_sys::MemoryContextDelete(context);
    }
    result
}
