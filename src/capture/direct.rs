//! The usual commit folded without SQL.
//!
//! A POS commit is one sale and its items, inserted. Folding it through the generated SQL
//! (`_fold_rows`, `_fold_items`) costs about a millisecond of executor start-up and plpgsql —
//! more than the sale itself. Here the same arithmetic is done in Rust with Postgres's own
//! functions (`numeric_add`, `timestamptz_zone`, …, so every value and its scale is what the
//! SQL gives); the part row of each key is found through its primary key and updated in place
//! through the table access method (HOT where no key changes), or inserted with the
//! executor's single-row routine that logical replication's apply worker uses
//! (`ExecSimpleRelationInsert`, index entries and constraints included). Only this session
//! writes its shard's rows; an update that meets a concurrent compaction waits for it and
//! reads the row again.
//!
//! Only what is simple takes this path; anything else returns `false` and the caller folds
//! with the generated SQL, which stays the definition (and keeps `ingest_errors`): a sale
//! whose JSON is not six plain numbers and a method, an amount with more than two decimals,
//! items updated, deleted or returned in the transaction, sales changed, a schema whose items
//! or products lack a column (attach() says so in the items trigger's argument), a part table
//! someone put a trigger on. The oracle tests run both paths over the same workloads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CStr;

use pgrx::pg_sys::{self, Datum};

use super::{column_number, palloc_varlena, Frame, Id, SaleRow, StockRow};

const NIL_UUID: Id = [0; 16];
/// `'-infinity'::timestamptz`.
const NO_BEGIN: i64 = i64::MIN;

/// Calls a built-in SQL function; `None` for a NULL result.
fn call(function: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, args: &[Datum]) -> Option<Datum> {
    let args: Vec<Option<Datum>> = args.iter().map(|a| Some(*a)).collect();
    unsafe { pgrx::direct_function_call_as_datum(function, &args) }
}

fn call_value(function: unsafe fn(pg_sys::FunctionCallInfo) -> Datum, args: &[Datum]) -> Datum {
    call(function, args).expect("a strict built-in function returned NULL for non-NULL arguments")
}

fn text(value: impl AsRef<[u8]>) -> Datum {
    let value = value.as_ref();
    Datum::from(unsafe { pg_sys::cstring_to_text_with_len(value.as_ptr().cast(), value.len() as i32) })
}

/// The bytes of a text result (in the database's encoding).
fn text_result(value: Datum) -> Vec<u8> {
    unsafe { pgrx::varlena::varlena_to_byte_slice(value.cast_mut_ptr()) }.to_vec()
}

fn numeric_of(value: i64) -> Datum {
    call_value(pg_sys::int8_numeric, &[Datum::from(value)])
}

fn add(a: Datum, b: Datum) -> Datum {
    call_value(pg_sys::numeric_add, &[a, b])
}

fn sub(a: Datum, b: Datum) -> Datum {
    call_value(pg_sys::numeric_sub, &[a, b])
}

fn mul(a: Datum, b: Datum) -> Datum {
    call_value(pg_sys::numeric_mul, &[a, b])
}

fn is_zero(a: Datum, zero: Datum) -> bool {
    call_value(pg_sys::numeric_eq, &[a, zero]).value() != 0
}

/// `sign * amount`, as SQL computes it (the scale is the amount's).
fn signed(sign: i32, amount: Datum) -> Datum {
    if sign == 1 {
        amount
    } else {
        mul(numeric_of(sign as i64), amount)
    }
}

/// What a statement of the SQL fold would see (SPI does the same before each statement):
/// everything the transaction wrote so far, including its last command and earlier folds of
/// this command (whose rows must also be lockable), in a fresh snapshot under READ COMMITTED.
struct FreshSnapshot;

impl FreshSnapshot {
    fn push() -> FreshSnapshot {
        unsafe {
            pg_sys::CommandCounterIncrement();
            pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::UpdateActiveSnapshotCommandId();
        }
        FreshSnapshot
    }
}

impl Drop for FreshSnapshot {
    fn drop(&mut self) {
        unsafe { pg_sys::PopActiveSnapshot() };
    }
}

/// A measure of a part row: a count (bigint) or an amount (numeric).
#[derive(Clone, Copy)]
enum Measure {
    Count(i64),
    Amount(Datum),
}

/// Sums of one key, kept as SQL's `sum()` keeps them (NULL until the first value).
#[derive(Clone)]
struct Sums(Vec<Option<Measure>>);

impl Sums {
    fn new(width: usize) -> Sums {
        Sums(vec![None; width])
    }

    fn count(&mut self, at: usize, value: i64) {
        let current = match self.0[at] {
            Some(Measure::Count(c)) => c,
            _ => 0,
        };
        self.0[at] = Some(Measure::Count(current.checked_add(value).expect("bigint out of range")));
    }

    fn amount(&mut self, at: usize, value: Datum) {
        self.0[at] = Some(Measure::Amount(match self.0[at] {
            Some(Measure::Amount(current)) => add(current, value),
            _ => value,
        }));
    }

    /// The deltas to add, unless they are all zero (the SQL skips such keys).
    fn deltas(&self, zero: Datum) -> Option<Vec<Measure>> {
        let deltas: Vec<Measure> = self.0.iter().map(|m| m.unwrap_or(Measure::Count(0))).collect();
        let all_zero = deltas.iter().all(|m| match m {
            Measure::Count(c) => *c == 0,
            Measure::Amount(a) => is_zero(*a, zero),
        });
        (!all_zero).then_some(deltas)
    }
}

/// One of the extension's tables, written through the executor's single-row routines.
struct Table {
    rel: pg_sys::Relation,
    estate: *mut pg_sys::EState,
    info: *mut pg_sys::ResultRelInfo,
    /// The primary key, and per key column: the position of its value among the columns
    /// given to `open`, and the equality function of its operator class.
    primary_key: pg_sys::Relation,
    key_lookup: Vec<(usize, pg_sys::RegProcedure)>,
    /// Attribute numbers of the columns given to `open`, in that order.
    columns: Vec<pg_sys::AttrNumber>,
    natts: usize,
    found: *mut pg_sys::TupleTableSlot,
    new: *mut pg_sys::TupleTableSlot,
}

impl Table {
    /// `analytics_internal.<name>`, unless it is not as this code expects (then the SQL folds).
    fn open(name: &CStr, columns: &[&CStr]) -> Option<Table> {
        unsafe {
            let namespace = pg_sys::get_namespace_oid(c"analytics_internal".as_ptr(), true);
            let relid = pg_sys::get_relname_relid(name.as_ptr(), namespace);
            if relid == pg_sys::InvalidOid {
                return None;
            }
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
            let columns: Vec<pg_sys::AttrNumber> = columns
                .iter()
                .map(|c| column_number((*rel).rd_att, &c.to_string_lossy(), pg_sys::InvalidOid).unwrap_or(0) as pg_sys::AttrNumber)
                .collect();
            let plain = (*(*rel).rd_rel).relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
                && (*rel).trigdesc.is_null()
                && columns.iter().all(|a| *a > 0);
            if !plain {
                pg_sys::table_close(rel, pg_sys::RowExclusiveLock as i32);
                return None;
            }
            let estate = pg_sys::CreateExecutorState();
            let mut rte = pgrx::PgBox::<pg_sys::RangeTblEntry>::alloc_node(pg_sys::NodeTag::T_RangeTblEntry);
            rte.rtekind = pg_sys::RTEKind::RTE_RELATION;
            rte.relid = relid;
            rte.relkind = (*(*rel).rd_rel).relkind;
            rte.rellockmode = pg_sys::AccessShareLock as i32;
            pg_sys::ExecInitRangeTable(estate, pg_sys::list_make1_impl(pg_sys::NodeTag::T_List, pg_sys::ListCell { ptr_value: rte.into_pg().cast() }));
            let info = pgrx::PgBox::<pg_sys::ResultRelInfo>::alloc_node(pg_sys::NodeTag::T_ResultRelInfo).into_pg();
            pg_sys::InitResultRelInfo(info, rel, 1, std::ptr::null_mut(), 0);
            (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
            pg_sys::ExecOpenIndices(info, false);
            let desc = (*rel).rd_att;
            let (primary_key, key_lookup) = match pg_sys::RelationGetPrimaryKeyIndex(rel) {
                oid if oid == pg_sys::InvalidOid => (std::ptr::null_mut(), Vec::new()),
                oid => {
                    let index = pg_sys::index_open(oid, pg_sys::RowExclusiveLock as i32);
                    let n = (*(*index).rd_index).indnkeyatts as usize;
                    let heap_columns = (*(*index).rd_index).indkey.values.as_slice(n);
                    let lookup = (0..n)
                        .map(|i| {
                            let position = columns.iter().position(|a| *a == heap_columns[i]);
                            let (family, input) = (*(*index).rd_opfamily.add(i), *(*index).rd_opcintype.add(i));
                            let operator =
                                pg_sys::get_opfamily_member(family, input, input, pg_sys::BTEqualStrategyNumber as i16);
                            position.map(|p| (p, pg_sys::get_opcode(operator)))
                        })
                        .collect::<Option<Vec<_>>>()
                        .unwrap_or_default();
                    (index, lookup)
                }
            };
            let table = Table {
                rel,
                estate,
                info,
                primary_key,
                key_lookup,
                columns,
                natts: (*desc).natts as usize,
                found: pg_sys::table_slot_create(rel, &mut (*estate).es_tupleTable),
                new: pg_sys::ExecInitExtraTupleSlot(estate, desc, &pg_sys::TTSOpsVirtual),
            };
            Some(table)
        }
    }

    /// Fills `slot` with `values` for the first columns given to `open`, NULL elsewhere.
    unsafe fn fill(&self, slot: *mut pg_sys::TupleTableSlot, values: &[Datum]) {
        pg_sys::ExecClearTuple(slot);
        let datums = std::slice::from_raw_parts_mut((*slot).tts_values, self.natts);
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, self.natts);
        nulls.fill(true);
        for (value, attnum) in values.iter().zip(&self.columns) {
            datums[*attnum as usize - 1] = *value;
            nulls[*attnum as usize - 1] = false;
        }
        pg_sys::ExecStoreVirtualTuple(slot);
    }

    /// Inserts a row of the columns given to `open`, in that order (`None`: NULL).
    fn insert(&mut self, values: &[Option<Datum>]) {
        unsafe {
            let datums: Vec<Datum> = values.iter().map(|v| v.unwrap_or(Datum::from(0usize))).collect();
            self.fill(self.new, &datums);
            let nulls = std::slice::from_raw_parts_mut((*self.new).tts_isnull, self.natts);
            for (value, attnum) in values.iter().zip(&self.columns) {
                nulls[*attnum as usize - 1] = value.is_none();
            }
            pg_sys::ExecSimpleRelationInsert(self.info, self.estate, self.new);
        }
    }

    /// The part row of `key` (the primary key's columns, first given to `open`) in the
    /// latest snapshot, into `found`. The latest: under REPEATABLE READ the transaction's
    /// snapshot would keep showing a row a compaction has since replaced.
    unsafe fn find(&mut self, key: &[Datum]) -> bool {
        let mut scan_keys: Vec<pg_sys::ScanKeyData> = Vec::with_capacity(self.key_lookup.len());
        for (i, (position, equality)) in self.key_lookup.iter().enumerate() {
            let mut scan_key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyInit(&mut scan_key, (i + 1) as i16, pg_sys::BTEqualStrategyNumber as u16, *equality, key[*position]);
            scan_keys.push(scan_key);
        }
        let scan = pg_sys::index_beginscan(self.rel, self.primary_key, pg_sys::GetLatestSnapshot(), scan_keys.len() as i32, 0);
        pg_sys::index_rescan(scan, scan_keys.as_mut_ptr(), scan_keys.len() as i32, std::ptr::null_mut(), 0);
        let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, self.found);
        pg_sys::index_endscan(scan);
        found
    }

    /// Adds `deltas` to the measures (the columns after the key) of the part row `key`,
    /// inserting it when missing. Only this session writes its shard's rows; a compaction
    /// may fold them away meanwhile: the update then waits for it and starts again.
    fn add_to(&mut self, key: &[Datum], deltas: &[Measure]) {
        if self.primary_key.is_null() || self.key_lookup.len() != key.len() {
            pgrx::error!("lacaja_analytics: part table without the expected primary key");
        }
        unsafe {
            loop {
                if !self.find(key) {
                    let mut values: Vec<Datum> = key.to_vec();
                    values.extend(deltas.iter().map(|d| match d {
                        Measure::Count(c) => Datum::from(*c),
                        Measure::Amount(a) => *a,
                    }));
                    self.fill(self.new, &values);
                    pg_sys::ExecSimpleRelationInsert(self.info, self.estate, self.new);
                    return;
                }
                pg_sys::slot_getallattrs(self.found);
                pg_sys::ExecClearTuple(self.new);
                std::ptr::copy_nonoverlapping((*self.found).tts_values, (*self.new).tts_values, self.natts);
                std::ptr::copy_nonoverlapping((*self.found).tts_isnull, (*self.new).tts_isnull, self.natts);
                let datums = std::slice::from_raw_parts_mut((*self.new).tts_values, self.natts);
                for (delta, attnum) in deltas.iter().zip(&self.columns[key.len()..]) {
                    let at = *attnum as usize - 1;
                    datums[at] = match delta {
                        Measure::Count(c) => {
                            Datum::from((datums[at].value() as i64).checked_add(*c).expect("bigint out of range"))
                        }
                        Measure::Amount(a) => add(datums[at], *a),
                    };
                }
                pg_sys::ExecStoreVirtualTuple(self.new);
                let update = (*(*self.rel).rd_tableam).tuple_update.expect("a table access method updates");
                let (mut failure, mut lock_mode, mut update_indexes) = (std::mem::zeroed(), 0, false);
                let result = update(
                    self.rel,
                    &mut (*self.found).tts_tid,
                    self.new,
                    (*self.estate).es_output_cid,
                    pg_sys::GetActiveSnapshot(),
                    std::ptr::null_mut(),
                    true,
                    &mut failure,
                    &mut lock_mode,
                    &mut update_indexes,
                );
                match result {
                    pg_sys::TM_Result::TM_Ok => {
                        if update_indexes && (*self.info).ri_NumIndices > 0 {
                            pg_sys::ExecInsertIndexTuples(self.info, self.new, self.estate, true, false, std::ptr::null_mut(), std::ptr::null_mut());
                        }
                        return;
                    }
                    // A compaction changed or removed the row and committed: read it again.
                    pg_sys::TM_Result::TM_Updated | pg_sys::TM_Result::TM_Deleted => continue,
                    other => pgrx::error!("lacaja_analytics: could not update a part row (table AM result {other})"),
                }
            }
        }
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        unsafe {
            pg_sys::ExecCloseIndices(self.info);
            pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
            pg_sys::FreeExecutorState(self.estate);
            if !self.primary_key.is_null() {
                pg_sys::index_close(self.primary_key, pg_sys::NoLock as i32);
            }
            pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}

/// A table read through its primary key (one uuid column).
struct Lookup {
    rel: pg_sys::Relation,
    index: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
}

impl Lookup {
    fn open(relid: pg_sys::Oid) -> Option<Lookup> {
        unsafe {
            if relid == pg_sys::InvalidOid {
                return None;
            }
            let rel = pg_sys::table_open(relid, pg_sys::AccessShareLock as i32);
            let index = pg_sys::RelationGetPrimaryKeyIndex(rel);
            if index == pg_sys::InvalidOid {
                pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
                return None;
            }
            let index = pg_sys::index_open(index, pg_sys::AccessShareLock as i32);
            let key = &*(*index).rd_index;
            let by_uuid = key.indnkeyatts == 1 && (*(*index).rd_opcintype) == pg_sys::UUIDOID;
            let slot = pg_sys::table_slot_create(rel, std::ptr::null_mut());
            let lookup = Lookup { rel, index, slot };
            by_uuid.then_some(lookup)
        }
    }

    fn column(&self, name: &CStr, expected: pg_sys::Oid) -> Option<i32> {
        column_number(unsafe { (*self.rel).rd_att }, &name.to_string_lossy(), expected)
    }

    /// The row with primary key `id`, in the fold's snapshot; read its columns with `get`.
    fn find(&mut self, id: &Id) -> bool {
        unsafe {
            let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyInit(
                &mut key,
                1,
                pg_sys::BTEqualStrategyNumber as u16,
                pg_sys::regproc::from(pg_sys::F_UUID_EQ),
                Datum::from(id.as_ptr()),
            );
            let scan = pg_sys::index_beginscan(self.rel, self.index, pg_sys::GetActiveSnapshot(), 1, 0);
            pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
            let found = pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::ForwardScanDirection, self.slot);
            pg_sys::index_endscan(scan);
            found
        }
    }

    /// A column of the row last found (copied into the fold's memory).
    fn get(&self, attnum: Option<i32>) -> Option<Datum> {
        let attnum = attnum?;
        unsafe {
            let mut is_null = false;
            let datum = pg_sys::slot_getattr(self.slot, attnum, &mut is_null);
            if is_null {
                return None;
            }
            let attribute = &(*(*self.rel).rd_att).attrs.as_slice((*(*self.rel).rd_att).natts as usize)[attnum as usize - 1];
            Some(match (attribute.attbyval, attribute.attlen) {
                (true, _) => datum,
                (false, -1) => Datum::from(pg_sys::pg_detoast_datum_copy(datum.cast_mut_ptr())),
                (false, length) => {
                    let copy = pg_sys::palloc(length as usize);
                    std::ptr::copy_nonoverlapping(datum.cast_mut_ptr::<u8>(), copy.cast::<u8>(), length as usize);
                    Datum::from(copy)
                }
            })
        }
    }
}

impl Drop for Lookup {
    fn drop(&mut self) {
        unsafe {
            pg_sys::ExecDropSingleTupleTableSlot(self.slot);
            pg_sys::index_close(self.index, pg_sys::NoLock as i32);
            pg_sys::table_close(self.rel, pg_sys::NoLock as i32);
        }
    }
}

/// Store zones, looked up once per store and fold (`store_timezone()`'s rule).
struct Zones {
    settings: Option<Lookup>,
    zone_column: Option<i32>,
    zones: HashMap<Option<Id>, Datum>,
}

impl Zones {
    fn new() -> Zones {
        let relid = unsafe {
            let namespace = pg_sys::get_namespace_oid(c"analytics".as_ptr(), true);
            pg_sys::get_relname_relid(c"store_settings".as_ptr(), namespace)
        };
        let settings = Lookup::open(relid);
        let zone_column = settings.as_ref().and_then(|s| s.column(c"timezone", pg_sys::TEXTOID));
        Zones { settings, zone_column, zones: HashMap::new() }
    }

    fn of(&mut self, store: Option<Id>) -> Datum {
        if let Some(zone) = self.zones.get(&store) {
            return *zone;
        }
        let own = match (store, self.settings.as_mut()) {
            (Some(id), Some(settings)) => {
                if settings.find(&id) {
                    settings.get(self.zone_column)
                } else {
                    None
                }
            }
            _ => None,
        };
        let zone = own.unwrap_or_else(|| text(&crate::guc::default_timezone()));
        self.zones.insert(store, zone);
        zone
    }
}

/// Where a time falls for a store: its local hour, that hour's start and its local day.
struct LocalTime {
    bucket: Datum,
    local_hour: Datum,
    day: Datum,
}

fn local_time(zone: Datum, sold_at: i64) -> LocalTime {
    let local = call_value(pg_sys::timestamptz_zone, &[zone, Datum::from(sold_at)]);
    let local_hour = call_value(pg_sys::timestamp_trunc, &[text("hour"), local]);
    LocalTime {
        bucket: call_value(pg_sys::timestamp_zone, &[zone, local_hour]),
        local_hour,
        day: call_value(pg_sys::timestamp_date, &[local]),
    }
}

/// What the sales rollups read of one sale, when its JSON is as the POS writes it.
struct Measured {
    method: Vec<u8>,
    /// subtotal_bs, subtotal_usd, discount_bs, discount_usd, total_bs, total_usd.
    amounts: [Datum; 6],
    total_bs_scales: Datum,
    total_usd_scales: Datum,
}

const AMOUNT_KEYS: [&str; 6] = ["subtotal_bs", "subtotal_usd", "discount_bs", "discount_usd", "total_bs", "total_usd"];

/// `scale_mark(amount)` for amounts with at most two decimals (`None` beyond).
fn scale_mark(amount: Datum) -> Option<Datum> {
    let scale = call(pg_sys::numeric_scale, &[amount])?.value() as i32;
    let mark = match scale {
        0 => 1i128,
        1 => 1i128 << 32,
        2 => 1i128 << 64,
        _ => return None,
    };
    let text = std::ffi::CString::new(mark.to_string()).expect("digits");
    Some(call_value(
        pg_sys::numeric_in,
        &[Datum::from(text.as_ptr()), Datum::from(pg_sys::InvalidOid), Datum::from(-1i32)],
    ))
}

/// The sale's amounts and method when `sale_is_well_formed` holds for it and its totals have
/// at most two decimals; `None` sends the fold to SQL (which also reports what is malformed).
fn measure(totals: Option<&[u8]>, payment: Option<&[u8]>, bound: Datum) -> Option<Measured> {
    let (totals, payment) = (palloc_varlena(totals?), palloc_varlena(payment?));
    let method_json = call(pg_sys::jsonb_object_field, &[payment, text("method")])?;
    if text_result(call_value(pg_sys::jsonb_typeof, &[method_json])) != b"string" {
        return None;
    }
    let method = text_result(call_value(pg_sys::jsonb_object_field_text, &[payment, text("method")]));
    let characters = unsafe { pg_sys::pg_mbstrlen_with_len(method.as_ptr().cast(), method.len() as i32) };
    if characters > 64 {
        return None;
    }
    let mut amounts = [Datum::from(0usize); 6];
    for (slot, key) in amounts.iter_mut().zip(AMOUNT_KEYS) {
        let value = call(pg_sys::jsonb_object_field, &[totals, text(key)])?;
        if text_result(call_value(pg_sys::jsonb_typeof, &[value])) != b"number" {
            return None;
        }
        let amount = call_value(pg_sys::jsonb_numeric, &[value]);
        let magnitude = call_value(pg_sys::numeric_abs, &[amount]);
        if call_value(pg_sys::numeric_lt, &[magnitude, bound]).value() == 0 {
            return None;
        }
        *slot = amount;
    }
    Some(Measured {
        method: if method.is_empty() { b"UNKNOWN".to_vec() } else { method },
        total_bs_scales: scale_mark(amounts[4])?,
        total_usd_scales: scale_mark(amounts[5])?,
        amounts,
    })
}

/// Keys of the sales rollups, ordered (part rows are locked in a fixed order).
type HourKey = (Id, i64, i64);
type DayKey = (Id, i32, Vec<u8>);
type CustomerKey = (Id, i32, Id);

unsafe extern "C-unwind" {
    /// commands/sequence.h (not in pgrx's bindings): `nextval()` without the permission check
    /// (the outbox's sequence is the extension's).
    fn nextval_internal(relid: pg_sys::Oid, check_permissions: bool) -> i64;
}

/// The stream outbox (src/streaming.rs) as the events trigger appends to it: each event's
/// columns as LA-CAJA stored them, with the outbox's own (id, transaction, time) filled here,
/// since an insert without SQL applies no defaults.
pub(super) struct StreamOutbox {
    table: Table,
    ids: pg_sys::Oid,
    xid: Datum,
    now: Datum,
}

impl StreamOutbox {
    /// None when the outbox is not as this code expects (an older SQL: nothing is streamed).
    pub(super) fn open() -> Option<StreamOutbox> {
        let table = Table::open(
            c"stream_outbox",
            &[c"id", c"xid", c"enqueued_at", c"store_id", c"event_id", c"type", c"payload", c"created_at", c"seq"],
        )?;
        unsafe {
            let namespace = pg_sys::get_namespace_oid(c"analytics_internal".as_ptr(), true);
            let ids = pg_sys::get_relname_relid(c"stream_outbox_id_seq".as_ptr(), namespace);
            if ids == pg_sys::InvalidOid {
                return None;
            }
            let xid = Datum::from(pg_sys::GetTopFullTransactionId().value);
            let now = Datum::from(pg_sys::GetCurrentTransactionStartTimestamp());
            Some(StreamOutbox { table, ids, xid, now })
        }
    }

    /// One event: store_id, event_id, type, payload, created_at, seq (None: NULL).
    pub(super) fn push(&mut self, event: [Option<Datum>; 6]) {
        let id = Datum::from(unsafe { nextval_internal(self.ids, false) });
        let mut values = vec![Some(id), Some(self.xid), Some(self.now)];
        values.extend(event);
        self.table.insert(&values);
    }
}

/// Notes `stores` in the cache outbox (src/streaming.rs) without SQL: one row each. False when
/// the table is not as this code expects (then the SQL notes them).
pub(super) fn note_stores(stores: &std::collections::HashSet<Id>) -> bool {
    if !crate::guc::direct_fold() {
        return false;
    }
    let _snapshot = FreshSnapshot::push();
    let Some(mut outbox) = Table::open(c"cache_outbox", &[c"store_id", c"noted_at"]) else { return false };
    let now = Datum::from(unsafe { pg_sys::GetCurrentTransactionStartTimestamp() });
    for store in stores {
        outbox.insert(&[Some(Datum::from(store.as_ptr())), Some(now)]);
    }
    true
}

/// Folds sales and stock rows into the parts of `shard`; `false` when the SQL must.
pub(super) fn rows(shard: i32, sales: &[SaleRow], stock: &[StockRow]) -> bool {
    if !crate::guc::direct_fold() {
        return false;
    }
    let _snapshot = FreshSnapshot::push();
    let zero = numeric_of(0);
    let bound = call_value(
        pg_sys::numeric_in,
        &[Datum::from(c"1e1000".as_ptr()), Datum::from(pg_sys::InvalidOid), Datum::from(-1i32)],
    );
    let mut zones = Zones::new();
    let mut hourly: BTreeMap<HourKey, Sums> = BTreeMap::new();
    let mut daily: BTreeMap<DayKey, Sums> = BTreeMap::new();
    let mut customers: BTreeMap<CustomerKey, i64> = BTreeMap::new();
    for sale in sales {
        // New rows are checked for what ingest_errors reports; counted rows are measured.
        if sale.sign < 0 && !sale.counts {
            continue;
        }
        let Some(measured) = measure(sale.totals.as_deref(), sale.payment.as_deref(), bound) else {
            return false;
        };
        if !sale.counts {
            continue;
        }
        let (Some(store), Some(sold_at)) = (sale.store, sale.sold_at) else { continue };
        let at = local_time(zones.of(Some(store)), sold_at);
        let day = at.day.value() as i32;
        let hour = hourly.entry((store, at.bucket.value() as i64, at.local_hour.value() as i64)).or_insert_with(|| Sums::new(9));
        let by_method = daily.entry((store, day, measured.method.clone())).or_insert_with(|| Sums::new(9));
        for sums in [hour, by_method] {
            sums.count(0, sale.sign as i64);
            for (i, amount) in measured.amounts.iter().enumerate() {
                sums.amount(1 + i, signed(sale.sign, *amount));
            }
            sums.amount(7, signed(sale.sign, measured.total_bs_scales));
            sums.amount(8, signed(sale.sign, measured.total_usd_scales));
        }
        if let Some(customer) = sale.customer {
            *customers.entry((store, day, customer)).or_default() += sale.sign as i64;
        }
    }
    // Keyed as the parts are: a movement without a warehouse under the nil uuid.
    let mut stocks: BTreeMap<(Id, Id, Id), Sums> = BTreeMap::new();
    for row in stock {
        let qty = match &row.qty {
            Some(qty) => {
                let qty = std::ffi::CString::new(qty.as_str()).expect("a quantity has no NUL");
                call_value(pg_sys::numeric_in, &[Datum::from(qty.as_ptr()), Datum::from(pg_sys::InvalidOid), Datum::from(-1i32)])
            }
            None => zero,
        };
        let warehouse = row.warehouse.unwrap_or(NIL_UUID);
        let sums = stocks.entry((row.store, warehouse, row.product)).or_insert_with(|| Sums::new(3));
        let qty = signed(row.sign, qty);
        sums.amount(0, qty);
        sums.count(1, row.sign as i64);
        sums.amount(2, if row.escrow { qty } else { zero });
    }

    const MEASURES: [&CStr; 9] = [
        c"sales_count",
        c"subtotal_bs",
        c"subtotal_usd",
        c"discount_bs",
        c"discount_usd",
        c"total_bs",
        c"total_usd",
        c"total_bs_scales",
        c"total_usd_scales",
    ];
    let columns = |key: &[&'static CStr], measures: &[&'static CStr]| -> Vec<&'static CStr> {
        key.iter().chain(measures).copied().collect()
    };
    let shard = Datum::from(shard);
    // Only the tables this fold writes, all opened before the first write (a table that is
    // not as expected leaves the whole fold to the SQL).
    let open = |wanted: bool, name: &CStr, columns: &[&CStr]| -> Result<Option<Table>, ()> {
        if !wanted {
            return Ok(None);
        }
        Table::open(name, columns).map(Some).ok_or(())
    };
    let Ok((hourly_parts, daily_parts, customer_parts, stock_parts)) = (|| {
        Ok::<_, ()>((
            open(!hourly.is_empty(), c"sales_hourly_parts", &columns(&[c"store_id", c"bucket", c"local_hour", c"shard"], &MEASURES))?,
            open(!daily.is_empty(), c"sales_daily_parts", &columns(&[c"store_id", c"day", c"method", c"shard"], &MEASURES))?,
            open(!customers.is_empty(), c"customer_daily_parts", &[c"store_id", c"day", c"customer_id", c"shard", c"sales_count"])?,
            open(
                !stocks.is_empty(),
                c"product_stock_parts",
                &[c"store_id", c"warehouse_id", c"product_id", c"shard", c"stock", c"movements", c"escrow"],
            )?,
        ))
    })() else {
        return false;
    };
    if let Some(mut parts) = hourly_parts {
        for ((store, bucket, local_hour), sums) in &hourly {
            if let Some(deltas) = sums.deltas(zero) {
                parts.add_to(&[Datum::from(store.as_ptr()), Datum::from(*bucket), Datum::from(*local_hour), shard], &deltas);
            }
        }
    }
    if let Some(mut parts) = daily_parts {
        for ((store, day, method), sums) in &daily {
            if let Some(deltas) = sums.deltas(zero) {
                parts.add_to(&[Datum::from(store.as_ptr()), Datum::from(*day), text(method), shard], &deltas);
            }
        }
    }
    if let Some(mut parts) = customer_parts {
        for ((store, day, customer), count) in &customers {
            if *count != 0 {
                parts.add_to(
                    &[Datum::from(store.as_ptr()), Datum::from(*day), Datum::from(customer.as_ptr()), shard],
                    &[Measure::Count(*count)],
                );
            }
        }
    }
    if let Some(mut parts) = stock_parts {
        for ((store, warehouse, product), sums) in &stocks {
            if let Some(deltas) = sums.deltas(zero) {
                parts.add_to(&[Datum::from(store.as_ptr()), Datum::from(warehouse.as_ptr()), Datum::from(product.as_ptr()), shard], &deltas);
            }
        }
    }
    true
}

/// The columns of the source's `products` this fold reads.
struct Products {
    lookup: Lookup,
    /// Unit costs found in this fold, per product and weight flag (a sale sells a product
    /// on several lines, a commit several sales).
    known: HashMap<(Id, bool), (Option<Datum>, Option<Datum>)>,
    cost_bs: Option<i32>,
    cost_usd: Option<i32>,
    cost_per_weight_bs: Option<i32>,
    cost_per_weight_usd: Option<i32>,
}

impl Products {
    fn open(namespace: pg_sys::Oid) -> Option<Products> {
        let relid = unsafe { pg_sys::get_relname_relid(c"products".as_ptr(), namespace) };
        let lookup = Lookup::open(relid)?;
        let numeric = |name: &CStr| lookup.column(name, pg_sys::NUMERICOID);
        let products = Products {
            cost_bs: numeric(c"cost_bs"),
            cost_usd: numeric(c"cost_usd"),
            cost_per_weight_bs: numeric(c"cost_per_weight_bs"),
            cost_per_weight_usd: numeric(c"cost_per_weight_usd"),
            lookup,
            known: HashMap::new(),
        };
        let complete = products.cost_bs.is_some()
            && products.cost_usd.is_some()
            && products.cost_per_weight_bs.is_some()
            && products.cost_per_weight_usd.is_some();
        complete.then_some(products)
    }

    /// The unit costs (bs, usd) an item of `product` is recorded with (SPEC §2), NULL when the
    /// product is unknown.
    fn unit_costs(&mut self, product: Option<&Id>, weight: bool) -> (Option<Datum>, Option<Datum>) {
        let Some(id) = product else { return (None, None) };
        if let Some(costs) = self.known.get(&(*id, weight)) {
            return *costs;
        }
        let costs = self.look_up_costs(Some(id), weight);
        self.known.insert((*id, weight), costs);
        costs
    }

    fn look_up_costs(&mut self, product: Option<&Id>, weight: bool) -> (Option<Datum>, Option<Datum>) {
        match product {
            Some(id) if self.lookup.find(id) => {
                let (bs, usd) = (self.lookup.get(self.cost_bs), self.lookup.get(self.cost_usd));
                if weight {
                    (self.lookup.get(self.cost_per_weight_bs).or(bs), self.lookup.get(self.cost_per_weight_usd).or(usd))
                } else {
                    (bs, usd)
                }
            }
            _ => (None, None),
        }
    }
}

/// Stores the item facts of the sales this transaction inserted and adds them to the product
/// rollups; `false` when the SQL must (sales changed, items rewritten or returned, …).
pub(super) fn items(shard: i32, frame: &Frame) -> bool {
    let simple = crate::guc::direct_fold()
        && !frame.items_by_sql
        && frame.changed_sales.is_empty()
        && frame.moved_from.is_empty()
        && frame.returned_items.is_empty();
    if !simple {
        return false;
    }
    let _snapshot = FreshSnapshot::push();
    if frame.new_items.is_empty() {
        // Sales without items: no facts.
        return true;
    }
    let Some(namespace) = frame.items_namespace else { return false };
    // Each new sale as it now is: its last row (a sale deleted again leaves it to the SQL).
    let mut latest: HashMap<&Id, &SaleRow> = HashMap::new();
    for row in &frame.sales {
        latest.insert(&row.id, row);
    }
    for item in &frame.new_items {
        match latest.get(&item.sale_id) {
            Some(sale) if sale.sign > 0 && frame.new_sales.contains(&item.sale_id) => {}
            _ => return false,
        }
    }
    let Some(mut products) = Products::open(namespace) else { return false };
    let Some(mut facts) = Table::open(
        c"item_facts",
        &[
            c"store_id",
            c"sold_at",
            c"sale_id",
            c"sale_item_id",
            c"product_id",
            c"day",
            c"counted",
            c"qty",
            c"revenue_bs",
            c"revenue_usd",
            c"unit_cost_bs",
            c"unit_cost_usd",
            c"returned_qty",
            c"returned_bs",
            c"returned_usd",
        ],
    ) else {
        return false;
    };
    let (Some(mut product_parts), Some(mut cost_parts)) = (
        Table::open(
            c"product_daily_parts",
            &[
                c"store_id",
                c"day",
                c"product_id",
                c"shard",
                c"lines",
                c"qty",
                c"revenue_bs",
                c"revenue_usd",
                c"times_sold",
                c"returned_qty",
                c"returned_bs",
                c"returned_usd",
                c"cost_bs",
                c"cost_usd",
                c"returned_cost_bs",
                c"returned_cost_usd",
            ],
        ),
        Table::open(
            c"cost_daily_parts",
            &[c"store_id", c"day", c"shard", c"lines", c"cost_bs", c"cost_usd", c"returned_cost_bs", c"returned_cost_usd"],
        ),
    ) else {
        return false;
    };
    let zero = numeric_of(0);
    let mut zones = Zones::new();
    let mut by_product: BTreeMap<(Id, i32, Id), (Sums, HashSet<Id>)> = BTreeMap::new();
    let mut by_day: BTreeMap<(Id, i32), Sums> = BTreeMap::new();
    for item in &frame.new_items {
        let sale = latest[&item.sale_id];
        let day = sale.sold_at.map(|t| local_time(zones.of(sale.store), t).day);
        let counted = sale.counts && item.product.is_some();
        let amount = |v: &Option<Box<[u8]>>| v.as_deref().map(palloc_varlena);
        let item_qty = amount(&item.qty);
        let qty = item_qty.unwrap_or(zero);
        // `coalesce(price * qty - coalesce(discount, 0), 0)`: a NULL price or quantity is 0.
        let revenue = |price: &Option<Box<[u8]>>, discount: &Option<Box<[u8]>>| match (amount(price), item_qty) {
            (Some(price), Some(qty)) => sub(mul(price, qty), amount(discount).unwrap_or(zero)),
            _ => zero,
        };
        let (revenue_bs, revenue_usd) = (revenue(&item.unit_price_bs, &item.discount_bs), revenue(&item.unit_price_usd, &item.discount_usd));
        let (cost_bs, cost_usd) = products.unit_costs(item.product.as_ref(), item.weight.unwrap_or(false));
        let (unit_cost_bs, unit_cost_usd) = (cost_bs.unwrap_or(zero), cost_usd.unwrap_or(zero));
        let store = sale.store.unwrap_or(NIL_UUID);
        facts.insert(&[
            Some(Datum::from(store.as_ptr())),
            Some(Datum::from(sale.sold_at.unwrap_or(NO_BEGIN))),
            Some(Datum::from(item.sale_id.as_ptr())),
            Some(Datum::from(item.id.as_ptr())),
            item.product.as_ref().map(|p| Datum::from(p.as_ptr())),
            day,
            Some(Datum::from(counted)),
            Some(qty),
            Some(revenue_bs),
            Some(revenue_usd),
            Some(unit_cost_bs),
            Some(unit_cost_usd),
            Some(zero),
            Some(zero),
            Some(zero),
        ]);
        if !counted {
            continue;
        }
        let (Some(day), Some(product)) = (day, item.product) else { continue };
        let day = day.value() as i32;
        // returned quantities are 0 here (no return is recorded for an item inserted now); the
        // returned costs are 0 × the unit cost, with its scale, as the SQL computes them.
        let (returned_cost_bs, returned_cost_usd) = (mul(zero, unit_cost_bs), mul(zero, unit_cost_usd));
        let (line_cost_bs, line_cost_usd) = (mul(qty, unit_cost_bs), mul(qty, unit_cost_usd));
        let (sums, sales_of) = by_product.entry((store, day, product)).or_insert_with(|| (Sums::new(12), HashSet::new()));
        sums.count(0, 1);
        sums.amount(1, qty);
        sums.amount(2, revenue_bs);
        sums.amount(3, revenue_usd);
        sales_of.insert(item.sale_id);
        sums.amount(8, line_cost_bs);
        sums.amount(9, line_cost_usd);
        sums.amount(10, returned_cost_bs);
        sums.amount(11, returned_cost_usd);
        let day_sums = by_day.entry((store, day)).or_insert_with(|| Sums::new(5));
        day_sums.count(0, 1);
        day_sums.amount(1, line_cost_bs);
        day_sums.amount(2, line_cost_usd);
        day_sums.amount(3, returned_cost_bs);
        day_sums.amount(4, returned_cost_usd);
    }
    let shard = Datum::from(shard);
    for ((store, day, product), (sums, sales_of)) in &mut by_product {
        sums.count(4, sales_of.len() as i64);
        // Returned quantity and amounts: sums of zeros (integer 0 in the SQL: scale 0).
        for returned in 5..8 {
            sums.amount(returned, zero);
        }
        if let Some(deltas) = sums.deltas(zero) {
            product_parts.add_to(&[Datum::from(store.as_ptr()), Datum::from(*day), Datum::from(product.as_ptr()), shard], &deltas);
        }
    }
    for ((store, day), sums) in &by_day {
        if let Some(deltas) = sums.deltas(zero) {
            cost_parts.add_to(&[Datum::from(store.as_ptr()), Datum::from(*day), shard], &deltas);
        }
    }
    true
}
