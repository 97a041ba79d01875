//! Hands what a transaction captured to the SQL that folds it into the rollups: one call of
//! `analytics_internal._fold_rows(...)` and one of `_fold_items(...)`, with arrays as
//! parameters, through plans prepared once per session. As the extension's owner, with
//! `search_path` pinned: the fold runs in the POS session, whose role may use none of it.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;

use super::{Frame, Id, SaleRow, StockRow};

/// A saved SPI plan of one fold function (per session; Postgres re-plans it when its
/// objects change, e.g. attach() regenerating the function).
struct SavedPlan {
    sql: &'static CStr,
    types: &'static [pg_sys::Oid],
    plan: Cell<pg_sys::SPIPlanPtr>,
}

const INT4: pg_sys::Oid = pg_sys::INT4OID;
const INT4S: pg_sys::Oid = pg_sys::INT4ARRAYOID;
const UUIDS: pg_sys::Oid = pg_sys::UUIDARRAYOID;
const TIMES: pg_sys::Oid = pg_sys::TIMESTAMPTZARRAYOID;
const JSONBS: pg_sys::Oid = pg_sys::JSONBARRAYOID;
const BOOLS: pg_sys::Oid = pg_sys::BOOLARRAYOID;
const TEXTS: pg_sys::Oid = pg_sys::TEXTARRAYOID;

thread_local! {
    static FOLD_ROWS: SavedPlan = const { SavedPlan {
        sql: c"SELECT analytics_internal._fold_rows($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        types: &[INT4, INT4S, UUIDS, UUIDS, TIMES, UUIDS, JSONBS, JSONBS, BOOLS, INT4S, UUIDS, UUIDS, UUIDS, TEXTS, BOOLS],
        plan: Cell::new(std::ptr::null_mut()),
    } };
    /// The fold of 0.1.0's SQL (stock parts without warehouses): the library serves it until
    /// `ALTER EXTENSION lacaja_analytics UPDATE` runs.
    static FOLD_ROWS_0_1: SavedPlan = const { SavedPlan {
        sql: c"SELECT analytics_internal._fold_rows($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        types: &[INT4, INT4S, UUIDS, UUIDS, TIMES, UUIDS, JSONBS, JSONBS, BOOLS, INT4S, UUIDS, UUIDS, TEXTS],
        plan: Cell::new(std::ptr::null_mut()),
    } };
    static NOTE_CHANGED_STORES: SavedPlan = const { SavedPlan {
        sql: c"SELECT analytics_internal._note_changed_stores($1, $2, $3)",
        types: &[UUIDS, UUIDS, UUIDS],
        plan: Cell::new(std::ptr::null_mut()),
    } };
    static FOLD_ITEMS: SavedPlan = const { SavedPlan {
        sql: c"SELECT analytics_internal._fold_items($1, $2, $3, $4, $5, $6, $7)",
        types: &[INT4, UUIDS, UUIDS, UUIDS, UUIDS, TIMES, UUIDS],
        plan: Cell::new(std::ptr::null_mut()),
    } };
}

/// Folds sales and stock rows into the parts of `shard`.
pub(super) fn rows(owner: pg_sys::Oid, shard: i32, sales: &[SaleRow], stock: &[StockRow]) {
    // In slices, so that no call builds arrays of more than a slice of rows.
    if sales.len() > super::FOLD_EARLY_ROWS || stock.len() > super::FOLD_EARLY_ROWS {
        for slice in sales.chunks(super::FOLD_EARLY_ROWS) {
            rows(owner, shard, slice, &[]);
        }
        for slice in stock.chunks(super::FOLD_EARLY_ROWS) {
            rows(owner, shard, &[], slice);
        }
        return;
    }
    if sales.is_empty() && stock.is_empty() {
        return;
    }
    in_scratch_memory(|| {
        if !super::direct::rows(shard, sales, stock) {
            rows_now(owner, shard, sales, stock)
        }
    });
}

fn rows_now(owner: pg_sys::Oid, shard: i32, sales: &[SaleRow], stock: &[StockRow]) {
    let mut args = Args::default();
    args.int(shard);
    args.ints(sales.iter().map(|s| s.sign));
    args.uuids(sales.iter().map(|s| Some(&s.id)));
    args.uuids(sales.iter().map(|s| s.store.as_ref()));
    args.times(sales.iter().map(|s| s.sold_at));
    args.uuids(sales.iter().map(|s| s.customer.as_ref()));
    args.varlenas(JSONBS, sales.iter().map(|s| s.totals.as_deref()));
    args.varlenas(JSONBS, sales.iter().map(|s| s.payment.as_deref()));
    args.bools(sales.iter().map(|s| s.counts));
    args.ints(stock.iter().map(|s| s.sign));
    args.uuids(stock.iter().map(|s| Some(&s.store)));
    let by_warehouse = stock_parts_by_warehouse();
    if by_warehouse {
        args.uuids(stock.iter().map(|s| s.warehouse.as_ref()));
    }
    args.uuids(stock.iter().map(|s| Some(&s.product)));
    args.texts(stock.iter().map(|s| s.qty.as_deref()));
    if by_warehouse {
        args.bools(stock.iter().map(|s| s.escrow));
        FOLD_ROWS.with(|plan| execute(owner, plan, &args));
    } else {
        FOLD_ROWS_0_1.with(|plan| execute(owner, plan, &args));
    }
}

/// Whether the installed SQL keeps the stock ledger per warehouse (0.2.0 on), by the column
/// (a syscache lookup per fold: the session may outlive an update).
fn stock_parts_by_warehouse() -> bool {
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"analytics_internal".as_ptr(), true);
        let relid = pg_sys::get_relname_relid(c"product_stock_parts".as_ptr(), namespace);
        relid != pg_sys::InvalidOid && pg_sys::get_attnum(relid, c"warehouse_id".as_ptr()) != pg_sys::InvalidAttrNumber as i16
    }
}

/// Sales whose item facts one call of `_fold_items` recomputes: a million-sale transaction is
/// folded in slices, each with bounded memory (recomputing a sale twice is harmless: the
/// second call takes back what the first stored).
const ITEM_FOLD_SALES: usize = 10_000;

/// Recomputes the item facts of the sales the transaction inserted or changed.
pub(super) fn items(owner: pg_sys::Oid, shard: i32, frame: &Frame) {
    use std::collections::{HashMap, HashSet};
    if frame.new_sales.is_empty() && frame.changed_sales.is_empty() && frame.returned_items.is_empty() {
        return;
    }
    let mut direct = false;
    in_scratch_memory(|| direct = super::direct::items(shard, frame));
    if direct {
        return;
    }
    // A sale both inserted and changed (deleted and inserted again under its id) is changed:
    // its old facts are taken back.
    // Sorted: the slices lock their sales in id order, so two large commits cannot deadlock.
    let mut changed: Vec<Id> = frame.changed_sales.iter().copied().collect::<HashSet<_>>().into_iter().collect();
    changed.sort_unstable();
    let changed_set: HashSet<&Id> = changed.iter().collect();
    let inserted: Vec<&Id> = frame.new_sales.iter().filter(|id| !changed_set.contains(id)).collect();
    let mut moved: HashMap<&Id, Vec<&super::Location>> = HashMap::new();
    for (id, at) in &frame.moved_from {
        moved.entry(id).or_default().push(at);
    }
    let slices = changed.len().div_ceil(ITEM_FOLD_SALES).max(inserted.len().div_ceil(ITEM_FOLD_SALES)).max(1);
    for slice in 0..slices {
        let range = |len: usize| (slice * ITEM_FOLD_SALES).min(len)..((slice + 1) * ITEM_FOLD_SALES).min(len);
        let changed_here = &changed[range(changed.len())];
        let inserted_here = &inserted[range(inserted.len())];
        let moved_here: Vec<(&Id, &super::Location)> =
            changed_here.iter().flat_map(|id| moved.get(id).into_iter().flatten().map(move |at| (id, *at))).collect();
        // Returned items go with the last slice: their sales are found in SQL, and a sale
        // inserted here whose facts an earlier slice stored is then recomputed like any other.
        let returned: &[Id] = if slice + 1 == slices { &frame.returned_items } else { &[] };
        in_scratch_memory(|| {
            let mut args = Args::default();
            args.int(shard);
            args.uuids(inserted_here.iter().map(|id| Some(*id)));
            args.uuids(changed_here.iter().map(Some));
            args.uuids(moved_here.iter().map(|(id, _)| Some(*id)));
            args.uuids(moved_here.iter().map(|(_, at)| at.store.as_ref()));
            args.times(moved_here.iter().map(|(_, at)| at.sold_at));
            args.uuids(returned.iter().map(Some));
            FOLD_ITEMS.with(|plan| execute(owner, plan, &args));
        });
    }
}

/// Runs `fold` in a memory context of its own, deleted afterwards: the arrays of an early fold
/// would otherwise pile up in the trigger call's context until a million-row statement ends.
fn in_scratch_memory(fold: impl FnOnce()) {
    let mut scratch = pgrx::PgMemoryContexts::new("lacaja_analytics fold");
    unsafe { scratch.switch_to(|_| fold()) };
}

/// Datums of the parameters, and the memory they point into.
#[derive(Default)]
struct Args {
    values: Vec<pg_sys::Datum>,
    nulls: Vec<std::ffi::c_char>,
}

impl Args {
    fn int(&mut self, value: i32) {
        self.values.push(pg_sys::Datum::from(value));
        self.nulls.push(b' ' as std::ffi::c_char);
    }

    fn array(&mut self, element: pg_sys::Oid, mut datums: Vec<pg_sys::Datum>, nulls: Vec<bool>) {
        let array = unsafe { build_array(element, &mut datums, &nulls) };
        self.values.push(pg_sys::Datum::from(array));
        self.nulls.push(b' ' as std::ffi::c_char);
    }

    fn ints(&mut self, values: impl Iterator<Item = i32>) {
        let datums: Vec<_> = values.map(pg_sys::Datum::from).collect();
        let nulls = vec![false; datums.len()];
        self.array(pg_sys::INT4OID, datums, nulls);
    }

    fn bools(&mut self, values: impl Iterator<Item = bool>) {
        let datums: Vec<_> = values.map(pg_sys::Datum::from).collect();
        let nulls = vec![false; datums.len()];
        self.array(pg_sys::BOOLOID, datums, nulls);
    }

    fn uuids<'a>(&mut self, values: impl Iterator<Item = Option<&'a Id>>) {
        let (datums, nulls) = values
            .map(|v| match v {
                Some(id) => (pg_sys::Datum::from(id.as_ptr()), false),
                None => (pg_sys::Datum::from(0usize), true),
            })
            .unzip();
        self.array(pg_sys::UUIDOID, datums, nulls);
    }

    fn times(&mut self, values: impl Iterator<Item = Option<i64>>) {
        let (datums, nulls) = values
            .map(|v| match v {
                Some(t) => (pg_sys::Datum::from(t), false),
                None => (pg_sys::Datum::from(0usize), true),
            })
            .unzip();
        self.array(pg_sys::TIMESTAMPTZOID, datums, nulls);
    }

    /// Varlenas with a 4-byte header, as copied by the triggers.
    fn varlenas<'a>(&mut self, array_type: pg_sys::Oid, values: impl Iterator<Item = Option<&'a [u8]>>) {
        let element = if array_type == JSONBS { pg_sys::JSONBOID } else { pg_sys::TEXTOID };
        let (datums, nulls) = values
            .map(|v| match v {
                Some(bytes) => (super::palloc_varlena(bytes), false),
                None => (pg_sys::Datum::from(0usize), true),
            })
            .unzip();
        self.array(element, datums, nulls);
    }

    fn texts<'a>(&mut self, values: impl Iterator<Item = Option<&'a str>>) {
        let (datums, nulls) = values
            .map(|v| match v {
                Some(text) => (pg_sys::Datum::from(unsafe { pg_sys::cstring_to_text_with_len(text.as_ptr().cast(), text.len() as i32) }), false),
                None => (pg_sys::Datum::from(0usize), true),
            })
            .unzip();
        self.array(pg_sys::TEXTOID, datums, nulls);
    }
}

/// A one-dimensional array of `element` (copied: the datums may point into Rust memory).
unsafe fn build_array(element: pg_sys::Oid, datums: &mut [pg_sys::Datum], nulls: &[bool]) -> *mut pg_sys::ArrayType {
    if datums.is_empty() {
        return pg_sys::construct_empty_array(element);
    }
    let (mut length, mut by_value, mut align) = (0i16, false, 0 as std::ffi::c_char);
    pg_sys::get_typlenbyvalalign(element, &mut length, &mut by_value, &mut align);
    let mut dims = [datums.len() as i32];
    let mut lower_bounds = [1i32];
    pg_sys::construct_md_array(
        datums.as_mut_ptr(),
        nulls.as_ptr() as *mut bool,
        1,
        dims.as_mut_ptr(),
        lower_bounds.as_mut_ptr(),
        element,
        length as i32,
        by_value,
        align,
    )
}

/// Tells the publisher which stores' dashboards this transaction changed (streaming on): one
/// call, as the transaction commits.
pub(super) fn note_changed_stores(owner: pg_sys::Oid, frame: &Frame) {
    let stores = frame.changed_stores();
    if stores.is_empty() && frame.changed_sales.is_empty() && frame.returned_items.is_empty() {
        return;
    }
    let mut direct = false;
    if frame.changed_sales.is_empty() && frame.returned_items.is_empty() {
        in_scratch_memory(|| direct = super::direct::note_stores(&stores));
    }
    if direct {
        return;
    }
    in_scratch_memory(|| {
        let mut args = Args::default();
        args.uuids(stores.iter().map(Some));
        args.uuids(frame.changed_sales.iter().map(Some));
        args.uuids(frame.returned_items.iter().map(Some));
        NOTE_CHANGED_STORES.with(|plan| execute(owner, plan, &args));
    });
}

/// Runs a fold function as the extension's owner with `search_path` pinned.
fn execute(owner: pg_sys::Oid, saved: &SavedPlan, args: &Args) {
    crate::security::as_owner_pinned(owner, || unsafe {
        if pg_sys::SPI_connect() != pg_sys::SPI_OK_CONNECT as i32 {
            pgrx::error!("lacaja_analytics: SPI_connect failed while folding captured rows");
        }
        if saved.plan.get().is_null() {
            let plan = pg_sys::SPI_prepare(saved.sql.as_ptr(), saved.types.len() as i32, saved.types.as_ptr() as *mut _);
            if plan.is_null() {
                pgrx::error!("lacaja_analytics: could not prepare {:?}", saved.sql);
            }
            pg_sys::SPI_keepplan(plan);
            saved.plan.set(plan);
        }
        let status = pg_sys::SPI_execute_plan(saved.plan.get(), args.values.as_ptr() as *mut _, args.nulls.as_ptr(), false, 0);
        if status < 0 {
            pgrx::error!("lacaja_analytics: folding captured rows failed (SPI status {status})");
        }
        pg_sys::SPI_finish();
    });
}
