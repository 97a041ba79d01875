//! Every setting of the extension, registered in one place.

use std::ffi::{c_char, c_void, CStr, CString};

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

/// Time zone of stores that have no row in `analytics.store_settings` (SPEC §2).
pub static DEFAULT_TIMEZONE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"America/Caracas"));

/// Schema whose LA-CAJA tables `CREATE EXTENSION` attaches to.
pub static SOURCE_SCHEMA: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"public"));

/// Database whose `analytics.jobs` the scheduler worker runs (empty: the scheduler idles).
pub static SCHEDULER_DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Longest the scheduler sleeps between looks at `analytics.jobs`, in milliseconds.
pub static SCHEDULER_NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(5000);

/// Whether commits whose changes are plain (new sales and items, stock movements) are folded
/// by the Rust fold (`src/capture/direct.rs`) rather than by the generated SQL.
pub static DIRECT_FOLD: GucSetting<bool> = GucSetting::<bool>::new(true);

/// How long one try for a lock that would stop POS writers may wait, in milliseconds: while a
/// maintenance step waits for such a lock, every sale queues behind it.
pub static MAINTENANCE_LOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(20);

/// How long maintenance keeps retrying those tries before it gives up (and a job retries later).
pub static MAINTENANCE_LOCK_WAIT_MS: GucSetting<i32> = GucSetting::<i32>::new(120_000);

/// Redis that events are published to (`redis://[user:password@]host:port[/db]`; empty:
/// streaming off, no outbox grows). Holds a password: readable by superusers only.
pub static REDIS_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Approximate length a stream `events:{store_id}` is trimmed to (`XADD … MAXLEN ~`).
pub static REDIS_STREAM_MAXLEN: GucSetting<i32> = GucSetting::<i32>::new(100_000);

/// Seconds a cached dashboard `kpis:{store_id}` lives in Redis.
pub static REDIS_CACHE_TTL_S: GucSetting<i32> = GucSetting::<i32>::new(300);

/// Events the outbox holds at most while Redis is away; beyond, the oldest are dropped.
pub static STREAM_OUTBOX_MAX_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000_000);

pub fn init() {
    // SUSET: the zone decides which bucket every sale lands in; a POS session that could
    // change it would scatter its own sales into the wrong days.
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"lacaja_analytics.default_timezone",
            c"Time zone of stores without an entry in analytics.store_settings.",
            c"Days and hours of the rollups are store-local. After changing it, run analytics.refresh_all().",
            &DEFAULT_TIMEZONE,
            GucContext::Suset,
            GucFlags::default(),
            Some(check_timezone),
            None,
            None,
        );
    }
    GucRegistry::define_string_guc(
        c"lacaja_analytics.source_schema",
        c"Schema holding LA-CAJA's tables (sales, sale_items, ...).",
        c"CREATE EXTENSION attaches to the tables found there.",
        &SOURCE_SCHEMA,
        GucContext::Suset,
        GucFlags::default(),
    );
    // SUSET: it changes how, not what, the rollups count; only a superuser compares the two.
    GucRegistry::define_bool_guc(
        c"lacaja_analytics.direct_fold",
        c"Fold plain commits (new sales and items, stock movements) without SQL.",
        c"Off: every commit is folded by the SQL generated at attach (same numbers, about a millisecond more per commit).",
        &DIRECT_FOLD,
        GucContext::Suset,
        GucFlags::default(),
    );
    // USERSET: a DBA may give one maintenance call longer or shorter tries; sales are protected
    // by the upper bound, not by who sets it.
    GucRegistry::define_int_guc(
        c"lacaja_analytics.maintenance_lock_timeout",
        c"Longest one try for a lock that stops POS writes may wait (chunks, retention, swaps, compatibility views).",
        c"While a try waits, sales queue behind it; a failed try is retried with backoff until lacaja_analytics.maintenance_lock_wait.",
        &MAINTENANCE_LOCK_TIMEOUT_MS,
        1,
        1_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"lacaja_analytics.maintenance_lock_wait",
        c"How long maintenance retries a lock that stops POS writes before it gives up.",
        c"A job that gives up is retried at its next run; a call gives up with SQLSTATE 55P03 and changes nothing.",
        &MAINTENANCE_LOCK_WAIT_MS,
        0,
        86_400_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    // SIGHUP: the scheduler reads them on reload (a new database restarts it).
    GucRegistry::define_string_guc(
        c"lacaja_analytics.database",
        c"Database whose analytics.jobs the scheduler background worker runs.",
        c"Needs shared_preload_libraries = 'lacaja_analytics'. Empty: the scheduler idles; run analytics.run_pending_jobs() from cron instead.",
        &SCHEDULER_DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    // SIGHUP: the publisher reads them on reload (a new URL reconnects it).
    GucRegistry::define_string_guc(
        c"lacaja_analytics.redis_url",
        c"Redis that events are published to (redis://user:password@host:port).",
        c"Needs shared_preload_libraries = 'lacaja_analytics' and lacaja_analytics.database. Empty: streaming is off.",
        &REDIS_URL,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"lacaja_analytics.redis_stream_maxlen",
        c"Approximate length each stream events:{store_id} is trimmed to.",
        c"XADD … MAXLEN ~ this; consumers that fall further behind miss the oldest entries.",
        &REDIS_STREAM_MAXLEN,
        1_000,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"lacaja_analytics.redis_cache_ttl",
        c"Seconds a cached dashboard kpis:{store_id} lives in Redis.",
        c"The publisher rewrites it after each change of the store's figures.",
        &REDIS_CACHE_TTL_S,
        1,
        7 * 24 * 3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"lacaja_analytics.stream_outbox_max_rows",
        c"Events the outbox holds at most while Redis is unreachable.",
        c"Beyond it the oldest are dropped from the outbox (counted in analytics.stream_status; LA-CAJA's events table keeps them).",
        &STREAM_OUTBOX_MAX_ROWS,
        1_000,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"lacaja_analytics.scheduler_naptime",
        c"Longest the job scheduler sleeps before looking for due jobs again.",
        c"A job added or changed is noticed within this time; due jobs wake it on time.",
        &SCHEDULER_NAPTIME_MS,
        10,
        3_600_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}

pub fn direct_fold() -> bool {
    DIRECT_FOLD.get()
}

pub fn scheduler_database() -> String {
    setting_string(&SCHEDULER_DATABASE, "")
}

pub fn redis_url() -> String {
    setting_string(&REDIS_URL, "")
}

pub fn redis_cache_ttl_s() -> i32 {
    REDIS_CACHE_TTL_S.get()
}

pub fn stream_outbox_max_rows() -> i32 {
    STREAM_OUTBOX_MAX_ROWS.get()
}

pub fn redis_stream_maxlen() -> i32 {
    REDIS_STREAM_MAXLEN.get()
}

pub fn scheduler_naptime_ms() -> i32 {
    SCHEDULER_NAPTIME_MS.get()
}

pub fn default_timezone() -> String {
    setting_string(&DEFAULT_TIMEZONE, "America/Caracas")
}

pub fn source_schema() -> String {
    setting_string(&SOURCE_SCHEMA, "public")
}

fn setting_string(setting: &GucSetting<Option<CString>>, fallback: &str) -> String {
    setting
        .get()
        .map(|value| value.to_string_lossy().into_owned())
        .filter(|value| !value.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}

/// Rejects a zone Postgres cannot load, so that no trigger ever meets an unknown zone.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_timezone(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    if newval.is_null() || (*newval).is_null() {
        return false;
    }
    let name = CStr::from_ptr(*newval);
    if crate::rollups::timezone_is_known(name) {
        true
    } else {
        pg_sys::GUC_check_errmsg_string =
            pg_sys::pstrdup(c"unknown time zone; use a name from pg_timezone_names".as_ptr());
        false
    }
}
