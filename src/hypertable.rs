//! The online path of `analytics.create_hypertable`.
//!
//! Converting a table online needs transactions of its own (the log of concurrent changes
//! must be committed before the copy starts, the copy must not hold the table), which a
//! function called from SQL cannot have. So the call starts a dynamic background worker
//! running as the caller, and waits: the worker records the conversion, then runs each step
//! of sql/timeseries.sql as its own transaction until the swap is done. A failed step is
//! undone (`_conversion_abandon`) and its error handed back to the caller.

use std::time::Duration;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, SignalWakeFlags};
use pgrx::datum::Interval;
use pgrx::prelude::*;

use crate::jobs::in_transaction;

/// True inside BEGIN ... COMMIT, where a conversion cannot wait for another transaction.
#[pg_extern(stable, parallel_safe, schema = "analytics_internal")]
fn _in_transaction_block() -> bool {
    unsafe { pg_sys::IsTransactionBlock() }
}

/// Starts the conversion worker and returns its pid once it runs.
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal")]
#[allow(clippy::too_many_arguments)]
fn _start_conversion_worker(
    relation: pg_sys::Oid,
    time_column: &str,
    chunk_interval: Interval,
    chunks_ahead: i32,
    extend_unique: bool,
    replace_foreign_keys: bool,
    create_default_indexes: bool,
    migrate_data: bool,
    replace_unique: bool,
) -> i32 {
    let time_attnum = Spi::get_one_with_args::<i16>(
        "SELECT attnum FROM pg_attribute WHERE attrelid = $1 AND attname = $2",
        &[relation.into(), time_column.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    let flags = extend_unique as u8
        | (replace_foreign_keys as u8) << 1
        | (create_default_indexes as u8) << 2
        | (migrate_data as u8) << 3
        | (replace_unique as u8) << 4;
    let interval_us = chunk_interval.micros() + chunk_interval.days() as i64 * 86_400_000_000 + chunk_interval.months() as i64 * 30 * 86_400_000_000;
    let extra = format!(
        "{}:{}:{}:{}:{}:{}:{}",
        relation.to_u32(),
        time_attnum,
        interval_us,
        chunks_ahead,
        flags,
        unsafe { pg_sys::MyProcPid },
        unsafe { pg_sys::GetUserId() }.to_u32()
    );
    let worker = BackgroundWorkerBuilder::new("lacaja_analytics hypertable conversion")
        .set_type("lacaja_analytics hypertable conversion")
        .set_library("lacaja_analytics")
        .set_function("lacaja_conversion_main")
        .set_argument(Some(pg_sys::Datum::from(unsafe { pg_sys::MyDatabaseId }.to_u32())))
        .set_extra(&extra)
        .enable_spi_access()
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .unwrap_or_else(|_| {
            pgrx::error!(
                "no background worker slot for the online conversion; raise max_worker_processes, or pass online => false"
            )
        });
    match worker.wait_for_startup() {
        Ok(pid) => pid,
        Err(status) => pgrx::error!("the conversion worker did not start: {status:?}"),
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lacaja_conversion_main(arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let database = pg_sys::Oid::from(arg.value() as u32);
    let parts: Vec<i64> = BackgroundWorker::get_extra().split(':').map(|p| p.parse().unwrap_or(0)).collect();
    let [relation, time_attnum, interval_us, chunks_ahead, flags, caller_pid, user] = parts[..] else {
        pgrx::warning!("lacaja_analytics conversion: malformed request");
        return;
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(database), Some(pg_sys::Oid::from(user as u32)));
    crate::security::pin_worker_search_path();
    let flag = |bit: i64| flags & (1 << bit) != 0;
    let requested = in_transaction(0, || {
        Spi::get_one_with_args::<i32>(
            "SELECT (analytics_internal._request_conversion($1::oid::regclass,
                        (SELECT attname FROM pg_attribute WHERE attrelid = $1::oid AND attnum = $2::int2),
                        make_interval(secs => $3::float8 / 1e6), $4, $5, $6, $7, $8, true, $9, $10)).conversion_id",
            &[
                pg_sys::Oid::from(relation as u32).into(),
                (time_attnum as i16).into(),
                (interval_us as f64).into(),
                (chunks_ahead as i32).into(),
                flag(0).into(),
                flag(1).into(),
                flag(2).into(),
                flag(3).into(),
                (caller_pid as i32).into(),
                flag(4).into(),
            ],
        )
    });
    let id = match requested {
        Ok(Some(id)) => id,
        Ok(None) => return,
        Err(failure) => {
            pgrx::warning!("lacaja_analytics conversion of table {relation}: {}", failure.message);
            return;
        }
    };
    loop {
        let step = in_transaction(0, || Spi::get_one_with_args::<String>("SELECT analytics_internal._conversion_step($1)", &[id.into()]));
        match step {
            Ok(Some(status)) if status == "done" || status == "failed" => return,
            Ok(_) => {}
            Err(failure) => {
                let abandoned = in_transaction(0, || {
                    Spi::run_with_args(
                        "SELECT analytics_internal._conversion_abandon($1, $2, $3)",
                        &[id.into(), failure.sqlstate.clone().into(), failure.message.clone().into()],
                    )
                });
                if let Err(cleanup) = abandoned {
                    pgrx::warning!(
                        "lacaja_analytics conversion {id} failed ({}) and could not be undone: {}",
                        failure.message,
                        cleanup.message
                    );
                }
                return;
            }
        }
        // Let the POS breathe between batches; stop when asked.
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(1))) {
            return;
        }
    }
}
