//! Events to Redis Streams: the publisher background worker (SQL side: sql/streaming.sql).
//!
//! Registered when the library is preloaded; it idles until `lacaja_analytics.redis_url` and
//! `lacaja_analytics.database` are both set, then connects to that database and loops:
//! - puts the outbox trigger on the attached schema's `events` (every few seconds, in case a
//!   restore or a DROP TRIGGER took it away);
//! - reads up to a batch of committed outbox rows, oldest transaction first;
//! - sends them as one pipeline of `XADD events:{store_id} MAXLEN ~ N * event_id … type …
//!   payload … created_at … seq …` (Redis applies a connection's commands in order, so a store's
//!   events are appended in the order read);
//! - deletes them from the outbox only after Redis answered every XADD.
//!
//! A crash between Redis' answer and the delete's commit sends those events again after the
//! restart: delivery is at least once, consumers dedupe on `event_id`. Redis down or slow: the
//! outbox grows (the POS never waits for Redis), the error is recorded in `stream_status`, and
//! the worker retries with a backoff from 100 ms to 30 s.

use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::prelude::*;

use crate::guc;
use crate::jobs::{die_on_sigterm, in_transaction, report_activity};

const WORKER_TYPE: &str = "lacaja_analytics publisher";
/// Outbox rows sent in one pipeline (and deleted in one transaction).
const BATCH_ROWS: i64 = 1_000;
/// How often an idle publisher looks at the outbox: the bound on commit-to-XADD latency.
const POLL: Duration = Duration::from_millis(20);
/// How often it makes sure the outbox trigger is on `events`.
const TRIGGER_CHECK: Duration = Duration::from_secs(5);
/// How long one check retries the trigger's lock (short tries) before giving way.
const TRIGGER_LOCK_WAIT: &str = "1s";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Whether events go to the outbox: `lacaja_analytics.redis_url` is set. Without it the
/// trigger (if a publisher ever put one on `events`) writes nothing.
#[pg_extern(stable, parallel_safe, schema = "analytics_internal", name = "_streaming_enabled")]
fn streaming_enabled() -> bool {
    enabled()
}

pub(crate) fn enabled() -> bool {
    !guc::redis_url().is_empty()
}

/// Whether a committing transaction notes the stores whose dashboards it changed: streaming
/// is on and the installed SQL has the cache outbox (a library newer than the database's SQL
/// serves it until `ALTER EXTENSION … UPDATE`).
pub(crate) fn cache_enabled() -> bool {
    enabled()
        && unsafe {
            let namespace = pg_sys::get_namespace_oid(c"analytics_internal".as_ptr(), true);
            namespace != pg_sys::InvalidOid && pg_sys::get_relname_relid(c"cache_outbox".as_ptr(), namespace) != pg_sys::InvalidOid
        }
}

pub fn register_publisher() {
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("lacaja_analytics")
        .set_function("lacaja_publisher_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// The password of a `redis://user:password@host` URL, as written and percent-decoded.
fn url_password(url: &str) -> Vec<String> {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else { return Vec::new() };
    let Some((credentials, _)) = rest.rsplit_once('@') else { return Vec::new() };
    // `user@host` names a user without a password
    let Some((_, password)) = credentials.split_once(':') else { return Vec::new() };
    if password.is_empty() {
        return Vec::new();
    }
    let mut forms = vec![password.to_owned()];
    let decoded = percent_decode(password);
    if decoded != password {
        forms.push(decoded);
    }
    forms
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `message` with the URL's password replaced: errors and logs never show it.
fn redact(message: &str, url: &str) -> String {
    url_password(url).iter().fold(message.to_owned(), |text, password| text.replace(password.as_str(), "***"))
}

/// `text` with the password of every `redis://` or `rediss://` URL in it replaced, or None
/// when there is none. Postgres logs a reloaded setting's new value ("parameter … changed to
/// …"), and a statement's text with its error: the log hook below passes every server log
/// message through this.
fn redact_urls(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(at) = rest.find("redis://").or_else(|| rest.find("rediss://")) {
        let scheme_end = at + rest[at..].find("://").expect("found above") + 3;
        out.push_str(&rest[..scheme_end]);
        rest = &rest[scheme_end..];
        // the authority ends at the first '/', space, quote or end; its last '@' ends the credentials
        let authority_end = rest.find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@').and_then(|at_sign| rest[..at_sign].find(':').map(|colon| (colon, at_sign))) {
            Some((colon, at_sign)) => {
                out.push_str(&rest[..=colon]);
                out.push_str("***");
                rest = &rest[at_sign..];
                changed = true;
            }
            None => {}
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

static mut PREVIOUS_EMIT_LOG_HOOK: pg_sys::emit_log_hook_type = None;

/// Installs the log hook that keeps Redis passwords out of the server log (every process that
/// loads the library: the postmaster, which logs reloaded settings, and every backend).
pub(crate) fn init() {
    unsafe {
        PREVIOUS_EMIT_LOG_HOOK = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(redact_redis_passwords);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn redact_redis_passwords(edata: *mut pg_sys::ErrorData) {
    if !edata.is_null() {
        for field in [&mut (*edata).message, &mut (*edata).detail, &mut (*edata).detail_log, &mut (*edata).context] {
            if field.is_null() {
                continue;
            }
            let text = std::ffi::CStr::from_ptr(*field).to_string_lossy();
            if let Some(redacted) = redact_urls(&text) {
                if let Ok(redacted) = std::ffi::CString::new(redacted) {
                    // errfinish runs the hook in ErrorContext: the copy lives as long as the report
                    *field = pg_sys::pstrdup(redacted.as_ptr());
                }
            }
        }
    }
    if let Some(previous) = PREVIOUS_EMIT_LOG_HOOK {
        previous(edata);
    }
}

/// Runs `body` as one transaction, as the extension's owner with `search_path` pinned: the
/// publisher connects as the bootstrap superuser, and keeps that only for putting its trigger
/// on LA-CAJA's `events` (fixed DDL); the outbox and `analytics.kpis()` run with the owner's
/// rights, whose store-visibility predicate they may call.
fn as_owner<R>(body: impl FnOnce() -> Result<R, pgrx::spi::Error>) -> Result<R, String> {
    in_transaction(0, || crate::security::as_extension_owner(body)).map_err(|failure| failure.message)
}

/// One outbox row, every field as the text the stream entry carries.
struct OutboxRow {
    /// Where the row is (`ctid`, as text): the publisher deletes by it.
    ctid: String,
    store_id: Option<String>,
    fields: [(&'static str, Option<String>); 5],
}

fn read_batch() -> Result<Vec<OutboxRow>, String> {
    as_owner(|| {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT ctid::text, store_id::text, event_id::text, type, payload::text, to_jsonb(created_at) #>> '{}', seq::text
                 FROM analytics_internal.stream_outbox ORDER BY xid, id LIMIT $1",
                None,
                &[BATCH_ROWS.into()],
            )?;
            let mut batch = Vec::new();
            for row in rows {
                let text = |n: usize| row.get::<String>(n);
                batch.push(OutboxRow {
                    ctid: row.get::<String>(1)?.unwrap_or_default(),
                    store_id: text(2)?,
                    fields: [
                        ("event_id", text(3)?),
                        ("type", text(4)?),
                        ("payload", text(5)?),
                        ("created_at", text(6)?),
                        ("seq", text(7)?),
                    ],
                });
            }
            Ok(batch)
        })
    })
}

/// Appends the batch to its streams: one pipeline, every command answered or an error.
fn publish(connection: &mut redis::Connection, batch: &[OutboxRow]) -> redis::RedisResult<()> {
    let maxlen = guc::redis_stream_maxlen();
    let mut pipeline = redis::pipe();
    for row in batch {
        let command = pipeline.cmd("XADD");
        command.arg(format!("events:{}", row.store_id.as_deref().unwrap_or("unknown"))).arg("MAXLEN").arg("~").arg(maxlen).arg("*");
        for (name, value) in &row.fields {
            command.arg(*name).arg(value.as_deref().unwrap_or(""));
        }
    }
    pipeline.query::<Vec<String>>(connection).map(|_| ())
}

fn forget_published(batch: &[OutboxRow]) -> Result<(), String> {
    let ctids: Vec<String> = batch.iter().map(|row| row.ctid.clone()).collect();
    as_owner(|| {
        // Nothing else deletes or updates outbox rows (but _bound_outbox, run by this worker),
        // so a row is where it was read.
        Spi::run_with_args("DELETE FROM analytics_internal.stream_outbox WHERE ctid = ANY($1::tid[])", &[ctids.clone().into()])?;
        Spi::run_with_args(
            "UPDATE analytics_internal.stream_state SET published = published + $1, last_published_at = now(), connected = true",
            &[(ctids.len() as i64).into()],
        )
    })
}

/// Stores whose cached dashboard is stale, and the outbox rows that say so.
fn stale_stores() -> Result<(Vec<String>, Vec<String>), String> {
    as_owner(|| {
        Spi::connect(|client| {
            let rows = client.select("SELECT ctid::text, store_id::text FROM analytics_internal.cache_outbox LIMIT 100000", None, &[])?;
            let (mut stores, mut ids) = (Vec::new(), Vec::new());
            for row in rows {
                ids.push(row.get::<String>(1)?.unwrap_or_default());
                if let Some(store) = row.get::<String>(2)? {
                    if !stores.contains(&store) {
                        stores.push(store);
                    }
                }
            }
            Ok((stores, ids))
        })
    })
}

/// The dashboard of `store` as `analytics.kpis()` gives it now.
fn dashboard(store: &str) -> Result<Option<String>, String> {
    as_owner(|| Spi::get_one_with_args::<String>("SELECT analytics.kpis($1::uuid)::text", &[store.into()]))
}

/// Deletes the keys matching `pattern` with SCAN (never KEYS, which blocks Redis).
fn unlink_matching(connection: &mut redis::Connection, pattern: &str) -> redis::RedisResult<u64> {
    let mut cursor: u64 = 0;
    let mut unlinked = 0;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query(connection)?;
        if !keys.is_empty() {
            unlinked += redis::cmd("UNLINK").arg(&keys).query::<u64>(connection)?;
        }
        if next == 0 {
            return Ok(unlinked);
        }
        cursor = next;
    }
}

fn forget_refreshed(ctids: &[String], stores: usize) -> Result<(), String> {
    as_owner(|| {
        Spi::run_with_args("DELETE FROM analytics_internal.cache_outbox WHERE ctid = ANY($1::tid[])", &[ctids.to_vec().into()])?;
        Spi::run_with_args(
            "UPDATE analytics_internal.stream_state SET cache_refreshes = cache_refreshes + $1, last_cache_refresh_at = now()",
            &[(stores as i64).into()],
        )
    })
}

/// The trigger could not be put on events (a long transaction holds its lock): shown in
/// stream_status and health(); the connection to Redis is not in question.
fn record_trigger_failure(message: &str) {
    let _ = as_owner(|| {
        Spi::run_with_args(
            "UPDATE analytics_internal.stream_state SET last_error = $1, last_error_at = now()",
            &[message.into()],
        )
    });
}

fn record_error(message: &str) {
    let _ = as_owner(|| {
        Spi::run_with_args(
            "UPDATE analytics_internal.stream_state SET connected = false, last_error = $1, last_error_at = now()",
            &[message.into()],
        )
    });
}

/// A store's cached dashboard is rewritten at most this often: a burst of sales causes one
/// refresh per period, not one per sale (a sale after a quiet spell: at the next poll).
const CACHE_PERIOD: Duration = Duration::from_millis(500);
/// How often a publisher that cannot publish enforces the outbox's bound.
const BOUND_CHECK: Duration = Duration::from_secs(60);

struct Publisher {
    url: String,
    connection: Option<redis::Connection>,
    backoff: Duration,
    trigger_checked: Option<Instant>,
    cache_refreshed: Option<Instant>,
    bound_checked: Option<Instant>,
    last_logged: String,
}

impl Publisher {
    fn new(url: String) -> Publisher {
        Publisher {
            url,
            connection: None,
            backoff: Duration::ZERO,
            trigger_checked: None,
            cache_refreshed: None,
            bound_checked: None,
            last_logged: String::new(),
        }
    }

    /// A failure: recorded (password redacted), logged when it differs from the last one,
    /// and the connection dropped. Returns how long to wait before the next try.
    fn failed(&mut self, what: &str, error: &str) -> Duration {
        let message = redact(&format!("{what}: {error}"), &self.url);
        record_error(&message);
        if message != self.last_logged {
            pgrx::warning!("{WORKER_TYPE}: {message} (events wait in the outbox; retrying)");
            self.last_logged = message;
        }
        self.connection = None;
        self.backoff = (self.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        if self.bound_checked.is_none_or(|at| at.elapsed() >= BOUND_CHECK) {
            self.bound_checked = Some(Instant::now());
            let max_rows = guc::stream_outbox_max_rows() as i64;
            match as_owner(|| Spi::get_one_with_args::<i64>("SELECT analytics_internal._bound_outbox($1)", &[max_rows.into()])) {
                Ok(Some(dropped)) if dropped > 0 => pgrx::warning!(
                    "{WORKER_TYPE}: the outbox held more than lacaja_analytics.stream_outbox_max_rows = {max_rows} events; \
                     the oldest {dropped} were dropped from it (they stay in the events table)"
                ),
                Ok(_) => {}
                Err(message) => pgrx::warning!("{WORKER_TYPE}: could not bound the outbox: {message}"),
            }
        }
        self.backoff
    }

    /// Rewrites the cached dashboards of the stores whose figures changed, at most once per
    /// CACHE_PERIOD; on an error the stores stay noted for the next try.
    fn refresh_cache(&mut self) -> Result<(), (String, String)> {
        if self.cache_refreshed.is_some_and(|at| at.elapsed() < CACHE_PERIOD) {
            return Ok(());
        }
        let (stores, ids) = stale_stores().map_err(|m| ("reading the cache outbox".to_owned(), m))?;
        if ids.is_empty() {
            return Ok(());
        }
        // The first change after a quiet spell is refreshed at once; the next ones wait for
        // the period to end, together.
        self.cache_refreshed = Some(Instant::now());
        self.ensure_connected().map_err(|m| ("connecting to Redis".to_owned(), m))?;
        let ttl = guc::redis_cache_ttl_s();
        let connection = self.connection.as_mut().expect("connected by the caller");
        for store in &stores {
            let json = match dashboard(store) {
                Ok(Some(json)) => json,
                Ok(None) => continue,
                Err(message) => {
                    pgrx::warning!("{WORKER_TYPE}: analytics.kpis('{store}') failed, its cache is left to expire: {message}");
                    continue;
                }
            };
            redis::cmd("SET")
                .arg(format!("kpis:{store}"))
                .arg(json)
                .arg("EX")
                .arg(ttl)
                .query::<()>(connection)
                .map_err(|e| ("SET kpis".to_owned(), e.to_string()))?;
            for pattern in [format!("metrics:{store}:*"), format!("reports:{store}:*")] {
                unlink_matching(connection, &pattern).map_err(|e| ("SCAN/UNLINK".to_owned(), e.to_string()))?;
            }
        }
        forget_refreshed(&ids, stores.len()).map_err(|m| ("deleting refreshed stores from the cache outbox".to_owned(), m))
    }

    fn ensure_connected(&mut self) -> Result<(), String> {
        if self.connection.is_some() {
            return Ok(());
        }
        self.connect()
    }

    fn connect(&mut self) -> Result<(), String> {
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let connection = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| e.to_string())?;
        connection.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        connection.set_write_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        self.connection = Some(connection);
        if !self.last_logged.is_empty() {
            pgrx::log!("{WORKER_TYPE}: connected to Redis again");
            self.last_logged.clear();
        }
        Ok(())
    }

    /// One round; returns how long to sleep before the next.
    fn step(&mut self) -> Duration {
        let installed = in_transaction(0, || {
            Spi::get_one::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'lacaja_analytics')
                        AND to_regclass('analytics_internal.stream_outbox') IS NOT NULL",
            )
        });
        if !matches!(installed, Ok(Some(true))) {
            return Duration::from_secs(10);
        }
        if self.trigger_checked.is_none_or(|at| at.elapsed() >= TRIGGER_CHECK) {
            self.trigger_checked = Some(Instant::now());
            // The lock it needs is taken by short tries; behind a long transaction on events it
            // gives up after TRIGGER_LOCK_WAIT rather than stall publishing, and tries again at
            // the next check.
            let ensured = in_transaction(0, || {
                Spi::run_with_args(
                    "SELECT set_config('lacaja_analytics.maintenance_lock_wait', $1, true)",
                    &[TRIGGER_LOCK_WAIT.into()],
                )?;
                Spi::get_one::<String>("SELECT analytics_internal._ensure_stream_trigger()")
            });
            if let Err(failure) = ensured {
                let message = format!("putting the outbox trigger on events: {} (SQLSTATE {})", failure.message, failure.sqlstate);
                record_trigger_failure(&message);
                if message != self.last_logged {
                    pgrx::warning!("{WORKER_TYPE}: {message} (tried again every {} s)", TRIGGER_CHECK.as_secs());
                    self.last_logged = message;
                }
            }
        }
        let batch = match read_batch() {
            Ok(batch) => batch,
            Err(message) => return self.failed("reading the outbox", &message),
        };
        if !batch.is_empty() {
            if let Err(message) = self.ensure_connected() {
                return self.failed("connecting to Redis", &message);
            }
            let connection = self.connection.as_mut().expect("connected above");
            if let Err(error) = publish(connection, &batch) {
                return self.failed("XADD", &error.to_string());
            }
            if let Err(message) = forget_published(&batch) {
                // Redis has them: sent again after this error clears (at least once).
                return self.failed("deleting published events from the outbox", &message);
            }
        }
        if let Err((what, message)) = self.refresh_cache() {
            return self.failed(&what, &message);
        }
        self.backoff = Duration::ZERO;
        if batch.len() as i64 == BATCH_ROWS {
            Duration::ZERO
        } else {
            POLL
        }
    }
}

/// Re-reads postgresql.conf; a new database or URL restarts the worker (the postmaster starts
/// it again in a few seconds, connected to what is set now).
fn reload_config(database: &str, url: &str) {
    unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
    if guc::scheduler_database() != database || guc::redis_url() != url {
        pgrx::log!("{WORKER_TYPE}: lacaja_analytics.database or redis_url changed; restarting");
        unsafe { pg_sys::proc_exit(1) };
    }
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn lacaja_publisher_main(_arg: pg_sys::Datum) {
    die_on_sigterm();
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let database = guc::scheduler_database();
    let url = guc::redis_url();
    if database.is_empty() || url.is_empty() {
        // Streaming off: nothing to do until a reload sets both.
        while BackgroundWorker::wait_latch(None) {
            pgrx::check_for_interrupts!();
            if BackgroundWorker::sighup_received() {
                reload_config(&database, &url);
            }
        }
        return;
    }
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    crate::security::pin_worker_search_path();
    // The publisher's commits (outbox rows deleted, its state) need no flush to disk: lost in a
    // crash, the rows come back and are sent again (at least once). Waiting for the flush would
    // only queue beside the POS's own commits.
    if let Err(failure) = in_transaction(0, || Spi::run("SET synchronous_commit = off")) {
        pgrx::warning!("{WORKER_TYPE}: {}", failure.message);
    }
    report_activity(WORKER_TYPE);
    let mut publisher = Publisher::new(url.clone());
    loop {
        if BackgroundWorker::sighup_received() {
            reload_config(&database, &url);
        }
        let sleep = publisher.step();
        if !sleep.is_zero() && !BackgroundWorker::wait_latch(Some(sleep)) {
            break;
        }
        pgrx::check_for_interrupts!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let cases = [
            ("redis://lacaja:s3cr3t@127.0.0.1:6379", "WRONGPASS for s3cr3t", "WRONGPASS for ***"),
            ("redis://:only-password@host", "auth only-password failed", "auth *** failed"),
            ("redis://user:p%40ss@host/0", "bad p@ss and p%40ss", "bad *** and ***"),
            ("redis://127.0.0.1:6379", "Connection refused", "Connection refused"),
            ("redis://user@host", "user@host down", "user@host down"),
            ("not a url", "not a url", "not a url"),
        ];
        for (url, message, expected) in cases {
            assert_eq!(redact(message, url), expected, "{url}");
        }
    }

    #[test]
    fn urls_in_log_messages_lose_their_passwords() {
        let cases = [
            (
                "parameter \"lacaja_analytics.redis_url\" changed to \"redis://lacaja:s3cr3t@127.0.0.1:6379\"",
                Some("parameter \"lacaja_analytics.redis_url\" changed to \"redis://lacaja:***@127.0.0.1:6379\""),
            ),
            ("ALTER SYSTEM SET lacaja_analytics.redis_url = 'rediss://:p@ss:w@host/0'", Some("ALTER SYSTEM SET lacaja_analytics.redis_url = 'rediss://:***@host/0'")),
            ("two: redis://a:1@h redis://b:2@k", Some("two: redis://a:***@h redis://b:***@k")),
            ("no password: redis://user@host:6379 and redis://host", None),
            ("a path with @: redis://host/x@y", None),
            ("nothing here", None),
            ("ends at the scheme redis://", None),
        ];
        for (text, expected) in cases {
            assert_eq!(redact_urls(text).as_deref(), expected, "{text}");
        }
    }

    #[test]
    fn percent_decoding() {
        for (text, expected) in [("a%40b", "a@b"), ("%", "%"), ("%4", "%4"), ("%zz", "%zz"), ("100%25", "100%")] {
            assert_eq!(percent_decode(text), expected);
        }
    }
}
