//! Capture: what a transaction changes in LA-CAJA's tables reaches the rollups once, as it
//! commits.
//!
//! The capture triggers (`triggers.rs`) read each statement's transition tables directly and
//! copy the few columns the rollups need into backend memory: no SQL runs per statement. At
//! `PRE_COMMIT` (or `PRE_PREPARE`) the transaction's rows are folded into the rollups by two
//! SQL functions generated at attach (`_fold_rows`, `_fold_items`), called once each. Per
//! subtransaction level a [`Frame`] keeps what that level captured, so `ROLLBACK TO SAVEPOINT`
//! (and a PL/pgSQL `EXCEPTION` block) drops exactly its rows. A level that has captured many
//! rows folds them early, inside that level (they are rolled back with it), so memory stays
//! bounded: only the ids of the sales the transaction inserted or changed wait for commit.
//! A prepared transaction writes parts of its own shard (its locks outlive the session).

mod triggers;

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::c_void;

use pgrx::pg_sys;
use pgrx::prelude::*;

pub(crate) type Id = [u8; 16];

/// Rows of sales or stock a level may hold before it folds them early.
const FOLD_EARLY_ROWS: usize = 20_000;

/// Where a sale's item facts are stored: its store and time (NULL sale columns included).
#[derive(Clone, Copy)]
pub(crate) struct Location {
    pub store: Option<Id>,
    pub sold_at: Option<i64>,
}

/// One sales row as the sales rollups see it: `sign` +1 (new row) or −1 (old row).
pub(crate) struct SaleRow {
    pub sign: i32,
    pub id: Id,
    pub store: Option<Id>,
    pub sold_at: Option<i64>,
    pub customer: Option<Id>,
    /// `totals` and `payment` as detoasted varlenas (jsonb), exactly as stored.
    pub totals: Option<Box<[u8]>>,
    pub payment: Option<Box<[u8]>>,
    /// A valid sale with a store and a time: counted. Other new rows are only checked for
    /// malformed JSON (ingest_errors).
    pub counts: bool,
}

/// One stock row: a movement (or a product's current_stock), signed.
pub(crate) struct StockRow {
    pub sign: i32,
    pub store: Id,
    /// The movement's warehouse (None: none, or the source has no `warehouse_id uuid`).
    pub warehouse: Option<Id>,
    pub product: Id,
    /// The quantity as text (numeric or integer columns alike); NULL counts as 0.
    pub qty: Option<String>,
    /// An escrow movement (`from_escrow`): stock an offline device was granted and sold.
    pub escrow: bool,
}

/// One item inserted into a sale this transaction inserted, as the item facts read it
/// (numeric columns as detoasted varlenas).
pub(crate) struct ItemRow {
    pub id: Id,
    pub sale_id: Id,
    pub product: Option<Id>,
    pub qty: Option<Box<[u8]>>,
    pub unit_price_bs: Option<Box<[u8]>>,
    pub unit_price_usd: Option<Box<[u8]>>,
    pub discount_bs: Option<Box<[u8]>>,
    pub discount_usd: Option<Box<[u8]>>,
    pub weight: Option<bool>,
}

/// Items a transaction may hold for the direct fold; beyond, its items are folded by SQL.
pub(crate) const DIRECT_ITEMS: usize = 10_000;

/// What one subtransaction level captured.
#[derive(Default)]
pub(crate) struct Frame {
    level: i32,
    pub sales: Vec<SaleRow>,
    pub stock: Vec<StockRow>,
    /// Sales inserted at this level: their item facts are computed at commit from the source,
    /// with nothing to take back.
    pub new_sales: HashSet<Id>,
    /// Sales whose item facts must be recomputed (taken back from where they are stored).
    pub changed_sales: Vec<Id>,
    /// Where changed sales were (old rows of updates and deletes).
    pub moved_from: Vec<(Id, Location)>,
    /// Sale items whose returns changed (their sales are found at commit).
    pub returned_items: Vec<Id>,
    /// Items inserted into the sales of `new_sales`, for the direct fold (`direct.rs`).
    pub new_items: Vec<ItemRow>,
    /// Items of new sales were updated, deleted, truncated, too many or unreadable: the
    /// generated SQL folds the items.
    pub items_by_sql: bool,
    /// Schema of the `sale_items` the items came from (its `products` gives the costs).
    pub items_namespace: Option<pg_sys::Oid>,
    /// A TRUNCATE at this level: what the levels below captured of that source is gone too
    /// once this level commits.
    truncated_sales: bool,
    truncated_stock: bool,
    /// Stores of the rows this level folded early (for the dashboard cache, src/streaming.rs).
    folded_stores: HashSet<Id>,
}

impl Frame {
    fn is_empty(&self) -> bool {
        self.sales.is_empty()
            && self.stock.is_empty()
            && self.new_sales.is_empty()
            && self.changed_sales.is_empty()
            && self.moved_from.is_empty()
            && self.returned_items.is_empty()
    }

    /// Appends a committed child level.
    fn absorb(&mut self, child: Frame) {
        if child.truncated_sales {
            self.sales.clear();
            self.truncated_sales = true;
        }
        if child.truncated_stock {
            self.stock.clear();
            self.truncated_stock = true;
        }
        self.sales.extend(child.sales);
        self.stock.extend(child.stock);
        self.new_sales.extend(child.new_sales);
        self.changed_sales.extend(child.changed_sales);
        self.moved_from.extend(child.moved_from);
        self.returned_items.extend(child.returned_items);
        self.new_items.extend(child.new_items);
        self.items_by_sql |= child.items_by_sql;
        self.folded_stores.extend(child.folded_stores);
        self.items_namespace = self.items_namespace.or(child.items_namespace);
        if self.new_items.len() > DIRECT_ITEMS {
            self.keep_items_for_sql();
        }
    }

    /// The stores whose figures this transaction changed, as far as it knows them without a
    /// lookup: those of its sales (old and new rows), stock rows and early folds.
    pub fn changed_stores(&self) -> HashSet<Id> {
        let mut stores = self.folded_stores.clone();
        stores.extend(self.sales.iter().filter_map(|s| s.store));
        stores.extend(self.stock.iter().map(|s| s.store));
        stores.extend(self.moved_from.iter().filter_map(|(_, at)| at.store));
        stores
    }

    /// Gives up the direct fold of this level's items (the SQL reads them from the source).
    pub fn keep_items_for_sql(&mut self) {
        self.new_items = Vec::new();
        self.items_by_sql = true;
    }
}

#[derive(Default)]
struct Capture {
    /// The extension's owner, as the SECURITY DEFINER capture triggers run: the fold runs as it.
    owner: Option<pg_sys::Oid>,
    frames: Vec<Frame>,
}

thread_local! {
    static CAPTURE: RefCell<Capture> = RefCell::new(Capture::default());
    static CALLBACKS_REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Registers the transaction callbacks (once per backend, when the library loads).
pub(crate) fn init() {
    if CALLBACKS_REGISTERED.with(|r| r.replace(true)) {
        return;
    }
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction_event), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
    }
}

fn nest_level() -> i32 {
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

/// Runs `record` on the frame of the current subtransaction level (made when missing), then
/// folds that level's rows early when it holds many. `record` also gets whether a sale was
/// inserted by this transaction (at any level still alive).
pub(crate) fn record(record: impl FnOnce(&mut Frame, &dyn Fn(&Id) -> bool)) {
    let level = nest_level();
    let fold_now = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        if c.owner.is_none() {
            c.owner = Some(unsafe { pg_sys::GetUserId() });
        }
        if c.frames.last().map(|f| f.level) != Some(level) {
            c.frames.push(Frame { level, ..Frame::default() });
        }
        let (frame, below) = c.frames.split_last_mut().expect("just pushed");
        let inserted_below = |id: &Id| below.iter().any(|f| f.new_sales.contains(id));
        record(frame, &inserted_below);
        frame.sales.len() + frame.stock.len() >= FOLD_EARLY_ROWS
    });
    if fold_now {
        fold_rows_of_current_level();
    }
}

/// TRUNCATE of a source: what this transaction captured of it is gone with its rows.
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal", name = "_capture_discard")]
fn capture_discard(source: &str) {
    record(|frame, _| match source {
        "sales" => {
            frame.sales.clear();
            frame.truncated_sales = true;
        }
        "stock" => {
            frame.stock.clear();
            frame.truncated_stock = true;
        }
        "items" => frame.keep_items_for_sql(),
        _ => {}
    });
}

/// Sales whose item facts must be recomputed at commit (TRUNCATE of the returns table).
#[pg_extern(volatile, parallel_unsafe, schema = "analytics_internal", name = "_capture_changed_sales")]
fn capture_changed_sales(sale_ids: Vec<Option<pgrx::Uuid>>) {
    record(|frame, _| frame.changed_sales.extend(sale_ids.into_iter().flatten().map(|id| *id.as_bytes())));
}

/// Folds the sales and stock rows of the current level now (inside it).
fn fold_rows_of_current_level() {
    let level = nest_level();
    let (owner, sales, stock) = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let owner = c.owner;
        match c.frames.last_mut() {
            Some(frame) if frame.level == level => {
                // Only the dashboard cache needs the stores folded early (noted at commit);
                // without streaming, the sales path does not pay for collecting them.
                if crate::streaming::enabled() {
                    frame.folded_stores = frame.changed_stores();
                }
                (owner, std::mem::take(&mut frame.sales), std::mem::take(&mut frame.stock))
            }
            _ => (owner, Vec::new(), Vec::new()),
        }
    });
    if let Some(owner) = owner {
        // Not the session's shard: if this transaction is prepared, the rows folded now stay
        // locked until COMMIT PREPARED, and the session's next sale must not wait for them.
        fold::rows(owner, transaction_shard(), &sales, &stock);
    }
}

/// The number of column `name` of a row type, when it has it (not dropped) with type
/// `expected` (`InvalidOid`: any type). Read from the descriptor: the triggers and the direct
/// fold look columns up on every statement and commit, the syscache would cost more.
pub(crate) fn column_number(desc: pg_sys::TupleDesc, name: &str, expected: pg_sys::Oid) -> Option<i32> {
    let desc = unsafe { &*desc };
    let attributes = unsafe { desc.attrs.as_slice(desc.natts as usize) };
    attributes.iter().find_map(|a| {
        let matches = !a.attisdropped
            && unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) }.to_bytes() == name.as_bytes()
            && (expected == pg_sys::InvalidOid || a.atttypid == expected);
        matches.then_some(a.attnum as i32)
    })
}

/// A varlena the triggers copied (4-byte header), in palloc'd memory: maximally aligned, as
/// Postgres reads varlena headers.
pub(crate) fn palloc_varlena(bytes: &[u8]) -> pg_sys::Datum {
    unsafe {
        let copy = pg_sys::palloc(bytes.len()) as *mut u8;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), copy, bytes.len());
        pg_sys::Datum::from(copy)
    }
}

fn extension_exists() -> bool {
    unsafe { pg_sys::get_extension_oid(c"lacaja_analytics".as_ptr(), true) != pg_sys::InvalidOid }
}

fn backend_shard() -> i32 {
    unsafe { pg_sys::MyBackendId }
}

/// A shard of this transaction's own, for what it folds before its end (early folds) or as it
/// is prepared: those rows may stay locked after the session moves on (until COMMIT PREPARED),
/// and the session's next sale must never wait for them. Negative (backend ids are positive;
/// 0 is the repair's), unique among live transactions; compaction folds them like any other.
fn transaction_shard() -> i32 {
    let xid = unsafe { pg_sys::GetTopTransactionIdIfAny() }.into_inner();
    -1 - (xid % (i32::MAX as u32 - 1)) as i32
}

/// Folds everything the transaction captured, once, before it commits or prepares.
fn fold_transaction(shard: i32) {
    let (owner, frame) = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let mut frames = std::mem::take(&mut c.frames);
        // Subtransactions have all ended: every level has been merged into the top one.
        let mut all = Frame::default();
        for frame in frames.drain(..) {
            all.absorb(frame);
        }
        (c.owner, all)
    });
    let Some(owner) = owner else { return };
    // DROP EXTENSION in the same transaction took the rollups with it: nothing to fold into.
    if frame.is_empty() || !extension_exists() {
        return;
    }
    // SET TRANSACTION READ ONLY is allowed after a transaction wrote; what it wrote is still
    // to be folded (the fold writes only the extension's own tables).
    let read_only = unsafe { pg_sys::XactReadOnly };
    unsafe { pg_sys::XactReadOnly = false };
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    fold::rows(owner, shard, &frame.sales, &frame.stock);
    fold::items(owner, shard, &frame);
    if crate::streaming::cache_enabled() {
        fold::note_changed_stores(owner, &frame);
    }
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::XactReadOnly = read_only;
    }
}

/// Folds what the current subtransaction level captured, now, inside it: as if it committed,
/// for the capture's purposes (a sale inserted here is an existing sale afterwards). The
/// in-transaction tests read rollups this way; a TRUNCATE recorded at this level stays
/// recorded.
#[cfg(any(test, feature = "pg_test"))]
pub(crate) fn fold_current_level() {
    let level = nest_level();
    let (owner, frame) = CAPTURE.with(|c| {
        let mut c = c.borrow_mut();
        let owner = c.owner;
        match c.frames.last_mut() {
            Some(frame) if frame.level == level => {
                let kept = Frame {
                    level,
                    truncated_sales: frame.truncated_sales,
                    truncated_stock: frame.truncated_stock,
                    ..Frame::default()
                };
                (owner, Some(std::mem::replace(frame, kept)))
            }
            _ => (owner, None),
        }
    });
    if let (Some(owner), Some(frame)) = (owner, frame) {
        fold::rows(owner, backend_shard(), &frame.sales, &frame.stock);
        fold::items(owner, backend_shard(), &frame);
    }
}

fn forget_transaction() {
    CAPTURE.with(|c| *c.borrow_mut() = Capture::default());
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction_event(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => fold_transaction(backend_shard()),
        XACT_EVENT_PRE_PREPARE => fold_transaction(transaction_shard()),
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PREPARE | XACT_EVENT_PARALLEL_COMMIT
        | XACT_EVENT_PARALLEL_ABORT => forget_transaction(),
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    _subtransaction: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut c_void,
) {
    use pg_sys::SubXactEvent::*;
    // Called while the ending subtransaction is still the current one.
    let level = nest_level();
    match event {
        // Still inside the child, where SQL may run: a child whose rows would take its parent
        // past the threshold folds them now (a loop of EXCEPTION blocks or a driver's autosave
        // never records at the parent's level, so the parent would never fold early).
        SUBXACT_EVENT_PRE_COMMIT_SUB => {
            let rows = CAPTURE.with(|c| {
                let c = c.borrow();
                c.frames.iter().filter(|f| f.level >= level - 1).map(|f| f.sales.len() + f.stock.len()).sum::<usize>()
            });
            if rows >= FOLD_EARLY_ROWS {
                fold_rows_of_current_level();
            }
        }
        SUBXACT_EVENT_ABORT_SUB => CAPTURE.with(|c| {
            c.borrow_mut().frames.retain(|f| f.level < level);
        }),
        SUBXACT_EVENT_COMMIT_SUB => CAPTURE.with(|c| {
            let mut c = c.borrow_mut();
            while c.frames.last().is_some_and(|f| f.level >= level) {
                let mut child = c.frames.pop().expect("checked");
                match c.frames.last_mut() {
                    Some(parent) if parent.level == level - 1 => parent.absorb(child),
                    _ => {
                        child.level = level - 1;
                        c.frames.push(child);
                    }
                }
            }
        }),
        _ => {}
    }
}

mod direct;
mod fold;

#[cfg(any(test, feature = "pg_test"))]
mod capture_tests;
