//! Who is asking, and running other people's code with exactly their rights.
//!
//! Inside a `SECURITY DEFINER` function `current_user` is the extension's owner, and in the
//! scheduler `session_user` is a superuser; neither says whose request it is, and neither does
//! Postgres' "outer" user (it stays the login role inside other roles' SECURITY DEFINER
//! functions and during ANALYZE or REFRESH, which run as a table owner). What does is
//! `current_user` at the moment the API was called, before any switch. The public functions
//! that need the owner's rights are therefore thin SQL wrappers with invoker rights that pass
//! [`_caller_token`] (minted from `current_user` right there) to the owner's implementation,
//! which redeems it with [`_redeem_caller`]. A token names only the role that minted it, so
//! calling an implementation with someone else's identity is impossible, even for code that
//! could reach it.
//!
//! [`_call_as`] runs a job's procedure (or a `check_config` function) the way Postgres runs
//! `REFRESH MATERIALIZED VIEW` and autovacuum run users' code: as that role, in a
//! security-restricted operation, so that `SET ROLE`, `RESET ROLE` and `SET SESSION
//! AUTHORIZATION` fail, and with its settings undone afterwards.

use std::cell::RefCell;
use std::rc::Rc;
use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::JsonB;

#[derive(Default)]
struct CallerTokens {
    next: i64,
    open: HashMap<i64, pg_sys::Oid>,
}

thread_local! {
    static CALLERS: RefCell<CallerTokens> = RefCell::new(CallerTokens::default());
}

/// A one-time token for `current_user` as it is now: the wrappers mint it in the caller's
/// context and hand it to the implementation, which runs as the owner.
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal")]
fn _caller_token() -> i64 {
    let role = unsafe { pg_sys::GetUserId() };
    CALLERS.with(|tokens| {
        let mut tokens = tokens.borrow_mut();
        // Tokens are redeemed at once; ones an error left behind are dropped in bulk.
        if tokens.open.len() > 1000 {
            tokens.open.clear();
        }
        tokens.next += 1;
        let token = tokens.next;
        tokens.open.insert(token, role);
        token
    })
}

/// The role that minted `token` (once: the token is spent).
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal")]
fn _redeem_caller(token: i64) -> pg_sys::Oid {
    match CALLERS.with(|tokens| tokens.borrow_mut().open.remove(&token)) {
        Some(role) => role,
        None => {
            ereport!(
                PgLogLevel::ERROR,
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "unknown caller token",
                "Call the functions of schema analytics; the helpers of analytics_internal are not an API."
            );
            unreachable!("ERROR does not return")
        }
    }
}

/// Runs `proc` as `role` in a security-restricted operation: a procedure or function taking
/// `(job_id int, config jsonb)`, or, when `job_id` is NULL, a `check_config` function taking
/// `(config jsonb)`. The role must be allowed to execute it. Errors propagate after the
/// caller's identity and settings are restored.
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal")]
fn _call_as(role: pg_sys::Oid, proc: pg_sys::Oid, job_id: Option<i32>, config: Option<JsonB>) {
    let target = Spi::get_three_with_args::<String, bool, bool>(
        "SELECT format('%I.%I', n.nspname, p.proname), p.prokind = 'p',
                has_function_privilege($2, p.oid, 'EXECUTE') AND has_schema_privilege($2, n.oid, 'USAGE')
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = $1",
        &[proc.into(), role.into()],
    )
    .expect("reading pg_proc");
    let (Some(name), Some(is_procedure), Some(allowed)) = target else {
        error!("function with OID {} does not exist", u32::from(proc));
    };
    // The extension's own policies (chunk maintenance moves rows through a temporary table)
    // run as a SECURITY DEFINER function of the owner would: SET ROLE and SET SESSION
    // AUTHORIZATION are refused there too. Anyone else's code runs restricted.
    let extension_policy = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                        WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.objid = $1
                          AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                          AND e.extname = 'lacaja_analytics')",
        &[proc.into()],
    )
    .expect("reading pg_depend")
    .unwrap_or(false);
    if !allowed {
        ereport!(
            PgLogLevel::ERROR,
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("role {} may not execute {name}", role_name(role)),
            "A job runs with its owner's rights: grant EXECUTE on it (and USAGE on its schema) to that role."
        );
    }
    let statement = match (job_id.is_some(), is_procedure) {
        (true, true) => format!("CALL {name}($1::int, $2::jsonb)"),
        (true, false) => format!("SELECT {name}($1::int, $2::jsonb)"),
        (false, _) => format!("SELECT {name}($2::jsonb)"),
    };

    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
    let context = saved_context
        | if extension_policy {
            pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
        } else {
            pg_sys::SECURITY_RESTRICTED_OPERATION as i32
        };
    unsafe { pg_sys::SetUserIdAndSecContext(role, context) };
    let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
    let restore = move |commit: bool| unsafe {
        pg_sys::AtEOXact_GUC(commit, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    };
    PgTryBuilder::new(|| {
        if extension_policy {
            pin_search_path();
        } else {
            // The job's own name lookups (the database's default path), not the extension's.
            Spi::run("SET LOCAL search_path TO DEFAULT").expect("resetting search_path");
        }
        Spi::run_with_args(&statement, &[job_id.into(), config.into()]).expect("running the job");
    })
    .catch_others(|caught| {
        restore(false);
        caught.rethrow()
    })
    .execute();
    // A job's SET (even SET LOCAL) ends with it, as in REFRESH MATERIALIZED VIEW.
    restore(false);
}

fn role_name(role: pg_sys::Oid) -> String {
    Spi::get_one_with_args::<String>("SELECT $1::regrole::text", &[role.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| u32::from(role).to_string())
}

/// Store isolation: whether the current user may see `store_id`, by the predicate that
/// `analytics.enable_store_isolation()` recorded (always true while it is off). Per-store views
/// and row-level security policies call it; they run as the reader. Verdicts are kept for the
/// rest of the statement (views call this once per rollup row): a statement that changes a
/// setting the predicate reads is answered afresh.
#[pg_extern(stable, parallel_restricted, schema = "analytics_internal")]
fn _store_visible(store_id: Option<pgrx::Uuid>) -> bool {
    visible(unsafe { pg_sys::GetUserId() }, store_id)
}

/// The same question for `role`: what the owner's implementations of the dashboard functions
/// ask about the role that called them.
#[pg_extern(stable, parallel_restricted, schema = "analytics_internal")]
fn _store_visible_to(role: pg_sys::Oid, store_id: Option<pgrx::Uuid>) -> bool {
    visible(role, store_id)
}

/// The predicate runs as `role`, as row-level security would run it. Superusers and roles
/// with BYPASSRLS see every store (as with row-level security), so nobody else's predicate
/// ever runs with their rights. A predicate that was dropped hides every store.
fn visible(role: pg_sys::Oid, store_id: Option<pgrx::Uuid>) -> bool {
    let Some(store_id) = store_id else { return false };
    let statement = unsafe {
        ((*pg_sys::MyProc).lxid, pg_sys::GetCurrentStatementStartTimestamp(), pg_sys::GetCurrentCommandId(false))
    };
    let cached = VISIBILITY.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.statement != Some(statement) {
            cache.statement = Some(statement);
            cache.predicate = None;
            cache.verdicts.clear();
        }
        cache.predicate.as_ref().map(|_| cache.verdicts.get(&(*store_id.as_bytes(), role)).copied())
    });
    let predicate = match cached {
        Some(Some(verdict)) => return verdict,
        Some(None) => VISIBILITY.with(|cache| cache.borrow().predicate.clone().flatten()),
        None => {
            // The setting is the owner's (analytics_internal): read it as the owner.
            let owner = extension_owner();
            let (mut user, mut context) = (pg_sys::InvalidOid, 0i32);
            unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut context) };
            let predicate = as_role_with(owner, context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, SearchPath::Pinned, || {
                Spi::get_one::<String>(
                    "SELECT CASE WHEN EXISTS (SELECT 1 FROM analytics_internal.store_isolation)
                                 THEN coalesce((SELECT format('%I.%I', n.nspname, p.proname)
                                                FROM analytics_internal.store_isolation i
                                                JOIN pg_catalog.pg_proc p ON p.oid = i.predicate
                                                JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace), '') END",
                )
                .expect("reading the store predicate")
            });
            VISIBILITY.with(|cache| cache.borrow_mut().predicate = Some(predicate.clone()));
            predicate
        }
    };
    let verdict = match predicate.as_deref() {
        None => true,
        Some(_) if unsafe { pg_sys::superuser_arg(role) || has_bypassrls(role) } => true,
        Some("") => false,
        Some(predicate) => as_role(role, || {
            Spi::get_one_with_args::<bool>(&format!("SELECT coalesce({predicate}($1), false)"), &[store_id.into()])
                .expect("evaluating the store predicate")
                .unwrap_or(false)
        }),
    };
    VISIBILITY.with(|cache| cache.borrow_mut().verdicts.insert((*store_id.as_bytes(), role), verdict));
    verdict
}

unsafe fn has_bypassrls(role: pg_sys::Oid) -> bool {
    pg_sys::has_bypassrls_privilege(role)
}

/// The owner of the extension, from the catalog cache (no SQL: nothing to resolve by name).
fn extension_owner() -> pg_sys::Oid {
    unsafe {
        let extension = pg_sys::get_extension_oid(c"lacaja_analytics".as_ptr(), false);
        let relation = pg_sys::table_open(pg_sys::ExtensionRelationId, pg_sys::AccessShareLock as i32);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyInit(
            &mut key,
            1, // Anum_pg_extension_oid
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(extension),
        );
        let scan = pg_sys::systable_beginscan(relation, pg_sys::Oid::from(pg_sys::ExtensionOidIndexId), true, std::ptr::null_mut(), 1, &mut key);
        let tuple = pg_sys::systable_getnext(scan);
        let owner = if tuple.is_null() {
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID)
        } else {
            let form = pg_sys::GETSTRUCT(tuple) as *const pg_sys::FormData_pg_extension;
            (*form).extowner
        };
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(relation, pg_sys::AccessShareLock as i32);
        owner
    }
}

#[derive(Default)]
struct VisibilityCache {
    /// (local transaction, statement start, command) the entries below belong to: a new
    /// statement, or a write (enable_store_isolation() itself) earlier in this one, starts afresh.
    statement: Option<(u32, i64, u32)>,
    /// None: not read yet in this statement; Some(None): isolation is off.
    predicate: Option<Option<String>>,
    verdicts: std::collections::HashMap<([u8; 16], pg_sys::Oid), bool>,
}

thread_local! {
    static VISIBILITY: std::cell::RefCell<VisibilityCache> = std::cell::RefCell::new(VisibilityCache::default());
}

/// Runs `body` with `role` as the current user, as a SECURITY DEFINER function of that role
/// would (SET ROLE is refused inside), restoring the caller's identity on error too.
fn as_role<R>(role: pg_sys::Oid, body: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
    as_role_with(role, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, SearchPath::Keep, body)
}

/// Runs `body` as the extension's owner with `search_path` pinned: what the compressed
/// chunks' access method writes to its own tables (a deleted compressed row, batches gone with
/// a truncated chunk) whoever deletes or truncates, as heap would write a row's xmax.
pub(crate) fn as_extension_owner<R>(body: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
    as_role_with(extension_owner(), saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, SearchPath::Pinned, body)
}

/// What `search_path` code run by [`as_role_with`] sees.
#[derive(Clone, Copy, PartialEq)]
enum SearchPath {
    /// The session's: for code that is the role's own (a store predicate runs as the reader,
    /// with the reader's path, exactly as if the reader had called it).
    Keep,
    /// `pg_catalog, pg_temp`: for the extension's own SQL, which must never resolve a name,
    /// an operator or a function from a schema somebody else controls.
    Pinned,
}

/// [`as_role`] with the security context given. Whatever settings the body changes (even a
/// session-wide `SET` inside someone's trigger) are undone when it returns, as in
/// `REFRESH MATERIALIZED VIEW`: nothing the other role's code does outlives it.
fn as_role_with<R>(role: pg_sys::Oid, context: i32, search_path: SearchPath, body: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(role, context);
        pg_sys::NewGUCNestLevel()
    };
    if search_path == SearchPath::Pinned {
        pin_search_path();
    }
    let restore = move || unsafe {
        pg_sys::AtEOXact_GUC(false, nest_level);
        pg_sys::SetUserIdAndSecContext(saved_user, saved_context);
    };
    let mut body = Some(body);
    let result = PgTryBuilder::new(std::panic::AssertUnwindSafe(|| (body.take().expect("runs once"))()))
        .catch_others(|caught| {
            restore();
            caught.rethrow()
        })
        .execute();
    restore();
    result
}

/// A background worker's session starts with the database's settings, which its owner
/// chooses (`ALTER DATABASE … SET search_path`): the extension's workers run the extension's
/// SQL, as a superuser or the DBA, so they pin `search_path` for the session. Users' jobs
/// still get the database's default (`SET LOCAL search_path TO DEFAULT` in [`_call_as`]).
pub(crate) fn pin_worker_search_path() {
    let pinned = crate::jobs::in_transaction(0, || Spi::run("SET search_path = pg_catalog, pg_temp"));
    if let Err(failure) = pinned {
        pgrx::error!("lacaja_analytics worker: could not pin search_path: {}", failure.message);
    }
}

/// `SET LOCAL search_path = pg_catalog, pg_temp` at the current GUC nest level.
fn pin_search_path() {
    unsafe {
        pg_sys::set_config_option(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// Runs one statement as `role`, the way Postgres runs a foreign key's check and actions as
/// the owner of the table they touch (ri_triggers.c): that table's triggers, defaults and
/// constraint functions then run with its owner's rights, never the extension owner's.
/// `$1` and `$2` are the statement's parameters; returns the rows it processed.
///
/// The replaced foreign keys' triggers run the same few statements for every row a POS writes:
/// their plans are kept for the session (a lookup by key in a hypertable of 28 chunks plans in
/// 3.5 ms and runs in 0.3). Postgres re-plans a kept plan when a table it reads changes (a new
/// chunk) or, under row-level security, when the role does.
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal")]
fn _execute_as(role: pg_sys::Oid, statement: &str, first: Option<JsonB>, second: Option<JsonB>) -> i64 {
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
    let context = saved_context
        | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
        | pg_sys::SECURITY_NOFORCE_RLS as i32;
    as_role_with(role, context, SearchPath::Pinned, || {
        Spi::connect_mut(|client| {
            // Not borrowed while it runs: its triggers may run statements of their own here.
            let plan = KEPT_STATEMENTS.with(|kept| kept.borrow().get(statement).cloned()).unwrap_or_else(|| {
                let jsonb = PgOid::BuiltIn(PgBuiltInOids::JSONBOID);
                let prepared = Rc::new(client.prepare_mut(statement, &[jsonb, jsonb]).unwrap_or_else(|e| panic!("{e}")).keep());
                KEPT_STATEMENTS.with(|kept| {
                    let mut kept = kept.borrow_mut();
                    if kept.len() >= KEPT_STATEMENTS_MAX {
                        kept.clear();
                    }
                    kept.insert(statement.to_string(), prepared.clone());
                });
                prepared
            });
            client
                .update(&*plan, None, &[first.into(), second.into()])
                .map(|table| table.len() as i64)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    })
}

/// Plans of `_execute_as`, by statement (a few per replaced foreign key).
const KEPT_STATEMENTS_MAX: usize = 256;

thread_local! {
    static KEPT_STATEMENTS: RefCell<HashMap<String, Rc<pgrx::spi::OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// Runs the extension's own SQL as its owner (`owner`), with `search_path` pinned: the
/// capture's fold, which runs in a POS session at commit, whatever that session's role.
pub(crate) fn as_owner_pinned<R>(owner: pg_sys::Oid, body: impl FnOnce() -> R) -> R {
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    unsafe { pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context) };
    as_role_with(owner, saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, SearchPath::Pinned, body)
}
