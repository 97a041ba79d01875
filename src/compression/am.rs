//! `lacaja_compressed`, the table access method of a compressed chunk.
//!
//! A compressed chunk is two things under one table: its own heap, exactly as before (rows
//! that arrived after compression: late syncs, new versions of updated rows), and its batches
//! in `analytics_internal.compressed_batches`. Every callback is heap's, except where the
//! batches are concerned:
//! - a sequential scan returns the heap's rows, then the batches' (minus the deleted ones);
//! - a compressed row has an item pointer no heap row can have — block `0x8000_0000 | batch`,
//!   offset `row + 1` — and fetching, locking, deleting or updating one goes to its batch;
//! - deleting one records it in `compressed_row_deletions` (an update also inserts the new
//!   version into the heap), under a heavyweight lock on its batch held to the end of the
//!   transaction, as heap holds a row lock: so MVCC, rollback and concurrent writers behave
//!   as on any table;
//! - unique (and exclusion) indexes keep an entry for every compressed row, so Postgres
//!   itself enforces them; other indexes hold the heap's rows only, and the planner does not
//!   see them for a compressed chunk (`hide_incomplete_indexes`): an index entry per row
//!   would cost as much as the compressed row itself.
//!
//! Heap's own code reads some relations through `rd_tableam` and insists on heap there
//! (`heap_getnext`): index builds and VACUUM FULL run with the relation's access method
//! switched to heap for their duration ([`as_heap`]).

use super::batch::{self, Batch, MAX_BATCH_ROWS};
use super::store;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::sync::atomic::{AtomicU32, Ordering};

/// Block numbers of compressed rows have this bit; a heap would need 16 TB to reach it.
const COMPRESSED_BLOCK: u32 = 0x8000_0000;

pub fn compressed_tid(batch: i32, row: usize) -> pg_sys::ItemPointerData {
    let block = COMPRESSED_BLOCK | batch as u32;
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData { bi_hi: (block >> 16) as u16, bi_lo: (block & 0xffff) as u16 },
        ip_posid: (row + 1) as u16,
    }
}

/// The batch and row of a compressed row's item pointer; None for a heap row.
pub fn batch_and_row(tid: &pg_sys::ItemPointerData) -> Option<(i32, usize)> {
    let block = ((tid.ip_blkid.bi_hi as u32) << 16) | tid.ip_blkid.bi_lo as u32;
    if block == pg_sys::InvalidBlockNumber || block & COMPRESSED_BLOCK == 0 || tid.ip_posid == 0 {
        return None;
    }
    Some(((block & !COMPRESSED_BLOCK) as i32, tid.ip_posid as usize - 1))
}

static mut ROUTINE: Option<pg_sys::TableAmRoutine> = None;

fn heap() -> &'static pg_sys::TableAmRoutine {
    unsafe { &*pg_sys::GetHeapamTableAmRoutine() }
}

macro_rules! heap_fn {
    ($name:ident) => {
        heap().$name.expect(concat!("heap has ", stringify!($name)))
    };
}

/// The routine: heap's, with the callbacks that concern batches replaced.
pub fn routine() -> *const pg_sys::TableAmRoutine {
    unsafe {
        let slot = &mut *std::ptr::addr_of_mut!(ROUTINE);
        if slot.is_none() {
            let mut r = *heap();
            r.scan_begin = Some(scan_begin);
            r.scan_end = Some(scan_end);
            r.scan_rescan = Some(scan_rescan);
            r.scan_getnextslot = Some(scan_getnextslot);
            // no TID range or bitmap scans: the planner then plans neither
            r.scan_set_tidrange = None;
            r.scan_getnextslot_tidrange = None;
            r.scan_bitmap_next_block = None;
            r.scan_bitmap_next_tuple = None;
            r.parallelscan_estimate = Some(parallelscan_estimate);
            r.parallelscan_initialize = Some(parallelscan_initialize);
            r.parallelscan_reinitialize = Some(parallelscan_reinitialize);
            r.index_fetch_begin = Some(index_fetch_begin);
            r.index_fetch_reset = Some(index_fetch_reset);
            r.index_fetch_end = Some(index_fetch_end);
            r.index_fetch_tuple = Some(index_fetch_tuple);
            r.tuple_fetch_row_version = Some(tuple_fetch_row_version);
            r.tuple_tid_valid = Some(tuple_tid_valid);
            r.tuple_get_latest_tid = Some(tuple_get_latest_tid);
            r.tuple_satisfies_snapshot = Some(tuple_satisfies_snapshot);
            r.index_delete_tuples = Some(index_delete_tuples);
            r.tuple_delete = Some(tuple_delete);
            r.tuple_update = Some(tuple_update);
            r.tuple_lock = Some(tuple_lock);
            r.relation_set_new_filenode = Some(relation_set_new_filenode);
            r.relation_nontransactional_truncate = Some(relation_nontransactional_truncate);
            r.relation_copy_for_cluster = Some(relation_copy_for_cluster);
            r.index_build_range_scan = Some(index_build_range_scan);
            r.index_validate_scan = Some(index_validate_scan);
            r.relation_estimate_size = Some(relation_estimate_size);
            *slot = Some(r);
        }
        slot.as_ref().unwrap() as *const _
    }
}

pub unsafe fn is_compressed(relation: pg_sys::Relation) -> bool {
    !relation.is_null() && (*relation).rd_tableam == routine()
}

/// Runs `body` with `relation` read as a plain heap (heap's code that calls back through
/// `rd_tableam`), restoring it on error too.
unsafe fn as_heap<T>(relation: pg_sys::Relation, body: impl FnOnce() -> T) -> T {
    let before = (*relation).rd_tableam;
    (*relation).rd_tableam = pg_sys::GetHeapamTableAmRoutine();
    let body = std::panic::AssertUnwindSafe(body);
    PgTryBuilder::new(move || {
        let body = body;
        let result = (body.0)();
        (*relation).rd_tableam = before;
        result
    })
    .catch_others(|e| {
        (*relation).rd_tableam = before;
        e.rethrow()
    })
    .execute()
}

/// Whether batches must stay when the heap is given a new file: set by compress_chunk, which
/// empties the heap after writing its batches. Otherwise a new file (TRUNCATE, or a table
/// created under an OID a dropped chunk had) means the batches go too.
pub static mut KEEPING_BATCHES: bool = false;

// Decoded batches ----------------------------------------------------------------------------

/// The last batch decoded for point reads, with its deletions as seen by one snapshot.
struct BatchCache {
    relation: pg_sys::Oid,
    batch: i32,
    local_xid: pg_sys::LocalTransactionId,
    decoded: Option<Batch>,
    /// a memory context for one row's by-reference values, reset before the next row
    row_context: pg_sys::MemoryContext,
}

impl BatchCache {
    unsafe fn new() -> BatchCache {
        BatchCache {
            relation: pg_sys::InvalidOid,
            batch: -1,
            local_xid: 0,
            decoded: None,
            row_context: batch::row_context(c"lacaja_analytics compressed row"),
        }
    }

    /// The batch, decoded; None if it does not exist. Batches never change once written (a
    /// recompression writes new ones under new ids), so one decode serves the transaction.
    unsafe fn batch(&mut self, relation: pg_sys::Relation, batch: i32) -> Option<&Batch> {
        let relid = (*relation).rd_id;
        let lxid = (*pg_sys::MyProc).lxid;
        if self.relation != relid || self.batch != batch || self.local_xid != lxid {
            let bytes = store::batch_data(relid, batch, pg_sys::GetLatestSnapshot());
            self.decoded = bytes.map(|b| Batch::decode((*relation).rd_att, &b));
            self.relation = relid;
            self.batch = batch;
            self.local_xid = lxid;
        }
        self.decoded.as_ref()
    }

    /// Fetches one compressed row into `slot` (materialized: it outlives this cache's next
    /// row) if it exists and is not deleted as `snapshot` sees it.
    unsafe fn fetch(
        &mut self,
        relation: pg_sys::Relation,
        batch: i32,
        row: usize,
        snapshot: pg_sys::Snapshot,
        slot: *mut pg_sys::TupleTableSlot,
    ) -> bool {
        if !snapshot.is_null() && (*snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_DIRTY {
            // a dirty snapshot reports whom to wait for; a compressed row has nobody in
            // progress (heap's HeapTupleSatisfiesDirty clears these the same way)
            (*snapshot).xmin = pg_sys::InvalidTransactionId;
            (*snapshot).xmax = pg_sys::InvalidTransactionId;
            (*snapshot).speculativeToken = 0;
        }
        let row_context = self.row_context;
        let Some(decoded) = self.batch(relation, batch) else {
            return false;
        };
        if row >= decoded.rows {
            return false;
        }
        let seen = store::deletions_seen(snapshot);
        if store::deletions((*relation).rd_id, batch, &seen).iter().any(|d| d.row == row) {
            return false;
        }
        pg_sys::MemoryContextReset(row_context);
        let before = pg_sys::MemoryContextSwitchTo(row_context);
        decoded.store_row(row, slot);
        pg_sys::MemoryContextSwitchTo(before);
        (*slot).tts_tid = compressed_tid(batch, row);
        (*slot).tts_tableOid = (*relation).rd_id;
        pg_sys::ExecMaterializeSlot(slot);
        pg_sys::MemoryContextReset(row_context);
        true
    }
}

/// The cache of point reads outside an index scan (EvalPlanQual, triggers, `WHERE ctid =`).
static mut POINT_READS: Option<BatchCache> = None;

unsafe fn point_reads() -> &'static mut BatchCache {
    let cache = &mut *std::ptr::addr_of_mut!(POINT_READS);
    if cache.is_none() {
        let before = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        *cache = Some(BatchCache::new());
        pg_sys::MemoryContextSwitchTo(before);
    }
    cache.as_mut().unwrap()
}

// Sequential scans ---------------------------------------------------------------------------

/// A sequential scan: heap's own scan, then the batches. Other scans (ANALYZE, TABLESAMPLE)
/// are heap's alone and never wrapped, told apart by their flags.
#[repr(C)]
struct CompressedScan {
    base: pg_sys::TableScanDescData,
    heap: pg_sys::TableScanDesc,
    state: *mut ScanState,
}

/// Which batches a scan may skip, from the query's conditions on the segment and order
/// columns (set by the scan node of scan.rs); the rows of the batches kept are still checked
/// against every condition, so a filter only ever needs to keep too much.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchFilter {
    /// a condition compares with NULL: no row can match
    pub nothing: bool,
    /// segment = this (as batch.rs stores the value)
    pub segment: Option<Vec<u8>>,
    /// order >= this
    pub min_order: Option<i64>,
    /// order <= this
    pub max_order: Option<i64>,
}

impl BatchFilter {
    pub fn keeps(&self, batch: &store::BatchMeta) -> bool {
        if self.nothing {
            return false;
        }
        if let Some(segment) = &self.segment {
            if batch.segment.as_ref() != Some(segment) {
                return false;
            }
        }
        // min and max are over the batch's non-null values, which are the only ones a range
        // condition can match
        if let (Some(low), Some(max)) = (self.min_order, batch.max_order) {
            if max < low {
                return false;
            }
        }
        if let (Some(high), Some(min)) = (self.max_order, batch.min_order) {
            if min > high {
                return false;
            }
        }
        true
    }
}

/// Narrows a sequential scan of a compressed chunk to the batches `filter` keeps; before the
/// first row is read.
pub unsafe fn set_batch_filter(scan: pg_sys::TableScanDesc, filter: BatchFilter) {
    if let Some(s) = wrapped(scan) {
        (*s.state).filter = Some(filter);
    }
}

struct ScanState {
    filter: Option<BatchFilter>,
    heap_done: bool,
    /// the batches as this scan's snapshot sees them, loaded at the first batch
    batches: Option<Vec<i32>>,
    /// next ordinal in `batches` (a parallel scan shares one counter in its descriptor)
    next_batch: u32,
    current: Option<(i32, Batch, Vec<bool>)>,
    row: usize,
    row_context: pg_sys::MemoryContext,
}

unsafe fn wrapped(scan: pg_sys::TableScanDesc) -> Option<&'static mut CompressedScan> {
    if (*scan).rs_flags & pg_sys::ScanOptions::SO_TYPE_SEQSCAN != 0 {
        Some(&mut *(scan as *mut CompressedScan))
    } else {
        None
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn scan_begin(
    rel: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    nkeys: i32,
    key: *mut pg_sys::ScanKeyData,
    pscan: pg_sys::ParallelTableScanDesc,
    flags: u32,
) -> pg_sys::TableScanDesc {
    let inner = heap_fn!(scan_begin)(rel, snapshot, nkeys, key, pscan, flags);
    if flags & pg_sys::ScanOptions::SO_TYPE_SEQSCAN == 0 {
        return inner;
    }
    let scan = pg_sys::palloc0(std::mem::size_of::<CompressedScan>()) as *mut CompressedScan;
    (*scan).base = *inner;
    (*scan).heap = inner;
    let row_context = batch::row_context(c"lacaja_analytics compressed scan row");
    // Rust state dropped with the memory context the scan lives in, should the query fail
    // before scan_end
    (*scan).state = pgrx::PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(ScanState {
        filter: None,
        heap_done: false,
        batches: None,
        next_batch: 0,
        current: None,
        row: 0,
        row_context,
    });
    scan as pg_sys::TableScanDesc
}

#[pg_guard]
unsafe extern "C-unwind" fn scan_end(scan: pg_sys::TableScanDesc) {
    match wrapped(scan) {
        Some(s) => {
            heap_fn!(scan_end)(s.heap);
            let state = &mut *s.state;
            state.current = None;
            state.batches = None;
        }
        None => heap_fn!(scan_end)(scan),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn scan_rescan(
    scan: pg_sys::TableScanDesc,
    key: *mut pg_sys::ScanKeyData,
    set_params: bool,
    allow_strat: bool,
    allow_sync: bool,
    allow_pagemode: bool,
) {
    match wrapped(scan) {
        Some(s) => {
            heap_fn!(scan_rescan)(s.heap, key, set_params, allow_strat, allow_sync, allow_pagemode);
            let flags = (*s.heap).rs_flags;
            s.base = *s.heap;
            s.base.rs_flags = flags;
            let state = &mut *s.state;
            state.heap_done = false;
            state.batches = None;
            state.next_batch = 0;
            state.current = None;
            state.row = 0;
        }
        None => heap_fn!(scan_rescan)(scan, key, set_params, allow_strat, allow_sync, allow_pagemode),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn scan_getnextslot(
    scan: pg_sys::TableScanDesc,
    direction: pg_sys::ScanDirection::Type,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    let Some(s) = wrapped(scan) else {
        return heap_fn!(scan_getnextslot)(scan, direction, slot);
    };
    if direction == pg_sys::ScanDirection::BackwardScanDirection {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "a compressed chunk is read forward only",
            "Declare the cursor without SCROLL, or decompress the chunk: SELECT analytics.decompress_chunk(…)."
        );
    }
    let state = &mut *s.state;
    if !state.heap_done {
        if heap_fn!(scan_getnextslot)(s.heap, direction, slot) {
            return true;
        }
        state.heap_done = true;
    }
    let rel = s.base.rs_rd;
    loop {
        if let Some((batch, decoded, deleted)) = &state.current {
            while state.row < decoded.rows && deleted[state.row] {
                state.row += 1;
            }
            if state.row < decoded.rows {
                pg_sys::ExecClearTuple(slot);
                pg_sys::MemoryContextReset(state.row_context);
                let before = pg_sys::MemoryContextSwitchTo(state.row_context);
                decoded.store_row(state.row, slot);
                pg_sys::MemoryContextSwitchTo(before);
                (*slot).tts_tid = compressed_tid(*batch, state.row);
                (*slot).tts_tableOid = (*rel).rd_id;
                state.row += 1;
                return true;
            }
            state.current = None;
        }
        let snapshot = s.base.rs_snapshot;
        let filter = state.filter.clone();
        let batches = state.batches.get_or_insert_with(|| {
            store::batches((*rel).rd_id, snapshot)
                .into_iter()
                .filter(|b| filter.as_ref().map_or(true, |f| f.keeps(b)))
                .map(|b| b.id)
                .collect()
        });
        let ordinal = match parallel_counter(s.base.rs_rd, s.base.rs_parallel) {
            Some(counter) => counter.fetch_add(1, Ordering::SeqCst),
            None => {
                state.next_batch += 1;
                state.next_batch - 1
            }
        } as usize;
        let Some(&batch) = batches.get(ordinal) else {
            pg_sys::ExecClearTuple(slot);
            return false;
        };
        let Some(bytes) = store::batch_data((*rel).rd_id, batch, snapshot) else {
            continue;
        };
        let decoded = Batch::decode((*rel).rd_att, &bytes);
        let mut deleted = vec![false; decoded.rows];
        for d in store::deletions((*rel).rd_id, batch, &store::deletions_seen(snapshot)) {
            if let Some(flag) = deleted.get_mut(d.row) {
                *flag = true;
            }
        }
        state.current = Some((batch, decoded, deleted));
        state.row = 0;
    }
}

// Parallel scans: heap's shared state, then a counter that deals the batches out, so that
// each batch is read by exactly one participant.

unsafe fn heap_parallel_size(rel: pg_sys::Relation) -> usize {
    let size = heap_fn!(parallelscan_estimate)(rel);
    (size + 7) & !7
}

unsafe fn parallel_counter(rel: pg_sys::Relation, pscan: pg_sys::ParallelTableScanDesc) -> Option<&'static AtomicU32> {
    if pscan.is_null() {
        return None;
    }
    Some(&*((pscan as *mut u8).add(heap_parallel_size(rel)) as *const AtomicU32))
}

#[pg_guard]
unsafe extern "C-unwind" fn parallelscan_estimate(rel: pg_sys::Relation) -> pg_sys::Size {
    heap_parallel_size(rel) + std::mem::size_of::<u64>()
}

#[pg_guard]
unsafe extern "C-unwind" fn parallelscan_initialize(rel: pg_sys::Relation, pscan: pg_sys::ParallelTableScanDesc) -> pg_sys::Size {
    heap_fn!(parallelscan_initialize)(rel, pscan);
    parallel_counter(rel, pscan).unwrap().store(0, Ordering::SeqCst);
    heap_parallel_size(rel) + std::mem::size_of::<u64>()
}

#[pg_guard]
unsafe extern "C-unwind" fn parallelscan_reinitialize(rel: pg_sys::Relation, pscan: pg_sys::ParallelTableScanDesc) {
    heap_fn!(parallelscan_reinitialize)(rel, pscan);
    parallel_counter(rel, pscan).unwrap().store(0, Ordering::SeqCst);
}

// Point reads ----------------------------------------------------------------------------------

#[repr(C)]
struct CompressedIndexFetch {
    base: pg_sys::IndexFetchTableData,
    heap: *mut pg_sys::IndexFetchTableData,
    cache: *mut BatchCache,
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_begin(rel: pg_sys::Relation) -> *mut pg_sys::IndexFetchTableData {
    let fetch = pg_sys::palloc0(std::mem::size_of::<CompressedIndexFetch>()) as *mut CompressedIndexFetch;
    (*fetch).base.rel = rel;
    (*fetch).heap = heap_fn!(index_fetch_begin)(rel);
    (*fetch).cache = pgrx::PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(BatchCache::new());
    fetch as *mut pg_sys::IndexFetchTableData
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_reset(data: *mut pg_sys::IndexFetchTableData) {
    heap_fn!(index_fetch_reset)((*(data as *mut CompressedIndexFetch)).heap);
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_end(data: *mut pg_sys::IndexFetchTableData) {
    let fetch = data as *mut CompressedIndexFetch;
    heap_fn!(index_fetch_end)((*fetch).heap);
    (*(*fetch).cache).decoded = None;
}

#[pg_guard]
unsafe extern "C-unwind" fn index_fetch_tuple(
    scan: *mut pg_sys::IndexFetchTableData,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
    call_again: *mut bool,
    all_dead: *mut bool,
) -> bool {
    let fetch = scan as *mut CompressedIndexFetch;
    match batch_and_row(&*tid) {
        None => heap_fn!(index_fetch_tuple)((*fetch).heap, tid, snapshot, slot, call_again, all_dead),
        Some((batch, row)) => {
            *call_again = false;
            if !all_dead.is_null() {
                *all_dead = false;
            }
            (*(*fetch).cache).fetch((*fetch).base.rel, batch, row, snapshot, slot)
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_fetch_row_version(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
) -> bool {
    match batch_and_row(&*tid) {
        None => heap_fn!(tuple_fetch_row_version)(rel, tid, snapshot, slot),
        Some((batch, row)) => point_reads().fetch(rel, batch, row, snapshot, slot),
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_tid_valid(scan: pg_sys::TableScanDesc, tid: pg_sys::ItemPointer) -> bool {
    match batch_and_row(&*tid) {
        None => heap_fn!(tuple_tid_valid)(wrapped(scan).map_or(scan, |s| s.heap), tid),
        Some((_, row)) => row < MAX_BATCH_ROWS,
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_get_latest_tid(scan: pg_sys::TableScanDesc, tid: pg_sys::ItemPointer) {
    let rel = (*scan).rs_rd;
    match batch_and_row(&*tid) {
        None => heap_fn!(tuple_get_latest_tid)(wrapped(scan).map_or(scan, |s| s.heap), tid),
        Some((batch, row)) => {
            // an updated compressed row's latest version is where its update put it
            let seen = store::DeletionsSeen::As((*scan).rs_snapshot);
            if let Some(moved) = store::deletions((*rel).rd_id, batch, &seen).iter().find(|d| d.row == row).and_then(|d| d.moved_to) {
                if batch_and_row(&moved).is_none() && moved.ip_posid != pg_sys::MovedPartitionsOffsetNumber as u16 {
                    *tid = moved;
                    heap_fn!(tuple_get_latest_tid)(wrapped(scan).map_or(scan, |s| s.heap), tid);
                }
            }
        }
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_satisfies_snapshot(
    rel: pg_sys::Relation,
    slot: *mut pg_sys::TupleTableSlot,
    snapshot: pg_sys::Snapshot,
) -> bool {
    match batch_and_row(&(*slot).tts_tid) {
        None => heap_fn!(tuple_satisfies_snapshot)(rel, slot, snapshot),
        Some((batch, row)) => {
            !store::deletions((*rel).rd_id, batch, &store::deletions_seen(snapshot)).iter().any(|d| d.row == row)
        }
    }
}

/// Index entries of compressed rows are never deleted by an index's own clean-up (only a
/// rebuild drops them): heap is asked about its own rows only.
#[pg_guard]
unsafe extern "C-unwind" fn index_delete_tuples(rel: pg_sys::Relation, delstate: *mut pg_sys::TM_IndexDeleteOp) -> pg_sys::TransactionId {
    let op = &mut *delstate;
    let all = std::slice::from_raw_parts_mut(op.deltids, op.ndeltids as usize);
    let mut kept = 0usize;
    for i in 0..all.len() {
        if batch_and_row(&all[i].tid).is_none() {
            all.swap(kept, i);
            kept += 1;
        }
    }
    if kept == 0 {
        op.ndeltids = 0;
        return pg_sys::InvalidTransactionId;
    }
    op.ndeltids = kept as i32;
    heap_fn!(index_delete_tuples)(rel, delstate)
}

// Writes to compressed rows ----------------------------------------------------------------------

/// The heavyweight lock that stands for the row locks of a batch's rows: Postgres' tuple lock
/// tag with the batch's block number and offset 0, which no heap row has.
unsafe fn batch_locktag(rel: pg_sys::Relation, batch: i32) -> pg_sys::LOCKTAG {
    pg_sys::LOCKTAG {
        locktag_field1: u32::from(pg_sys::MyDatabaseId),
        locktag_field2: u32::from((*rel).rd_id),
        locktag_field3: COMPRESSED_BLOCK | batch as u32,
        locktag_field4: 0,
        locktag_type: pg_sys::LockTagType::LOCKTAG_TUPLE as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    }
}

/// Heap's mapping of row lock strengths onto lock modes (heapam.c, tupleLockExtraInfo).
fn lock_mode(mode: pg_sys::LockTupleMode::Type) -> pg_sys::LOCKMODE {
    (match mode {
        pg_sys::LockTupleMode::LockTupleKeyShare => pg_sys::AccessShareLock,
        pg_sys::LockTupleMode::LockTupleShare => pg_sys::RowShareLock,
        pg_sys::LockTupleMode::LockTupleNoKeyExclusive => pg_sys::ExclusiveLock,
        _ => pg_sys::AccessExclusiveLock,
    }) as pg_sys::LOCKMODE
}

/// Takes the batch's lock for the transaction; false when `skip` and it is taken.
unsafe fn lock_batch(rel: pg_sys::Relation, batch: i32, mode: pg_sys::LOCKMODE, wait_policy: pg_sys::LockWaitPolicy::Type) -> bool {
    let tag = batch_locktag(rel, batch);
    let wait = wait_policy == pg_sys::LockWaitPolicy::LockWaitBlock;
    let got = pg_sys::LockAcquire(&tag, mode, false, !wait);
    if got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
        return true;
    }
    if wait_policy == pg_sys::LockWaitPolicy::LockWaitError {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!("could not obtain lock on row in relation \"{}\"", pgrx::name_data_to_str(&(*(*rel).rd_rel).relname))
        );
    }
    false
}

/// The state of a compressed row once its batch is locked: gone (by whom, to where) or not.
unsafe fn current_deletion(rel: pg_sys::Relation, batch: i32, row: usize) -> Option<store::Deletion> {
    pg_sys::CommandCounterIncrement();
    let seen = store::DeletionsSeen::As(pg_sys::GetLatestSnapshot());
    store::deletions((*rel).rd_id, batch, &seen).into_iter().find(|d| d.row == row)
}

/// What a write finds when the row is already gone, in heap's terms: modified by this very
/// transaction, or by another one (deleted, or updated into `moved_to`).
unsafe fn gone(deletion: store::Deletion, cid: pg_sys::CommandId, tmfd: *mut pg_sys::TM_FailureData, tid: pg_sys::ItemPointer) -> pg_sys::TM_Result::Type {
    (*tmfd).xmax = deletion.xmin;
    (*tmfd).cmax = cid;
    (*tmfd).traversed = false;
    (*tmfd).ctid = deletion.moved_to.unwrap_or(*tid);
    if pg_sys::TransactionIdIsCurrentTransactionId(deletion.xmin) {
        pg_sys::TM_Result::TM_SelfModified
    } else if deletion.moved_to.is_some() {
        pg_sys::TM_Result::TM_Updated
    } else {
        pg_sys::TM_Result::TM_Deleted
    }
}

fn moved_partitions() -> pg_sys::ItemPointerData {
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData { bi_hi: 0xffff, bi_lo: 0xffff },
        ip_posid: pg_sys::MovedPartitionsOffsetNumber as u16,
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_delete(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    changing_part: bool,
) -> pg_sys::TM_Result::Type {
    let Some((batch, row)) = batch_and_row(&*tid) else {
        return heap_fn!(tuple_delete)(rel, tid, cid, snapshot, crosscheck, wait, tmfd, changing_part);
    };
    let policy = if wait { pg_sys::LockWaitPolicy::LockWaitBlock } else { pg_sys::LockWaitPolicy::LockWaitSkip };
    if !lock_batch(rel, batch, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE, policy) {
        return pg_sys::TM_Result::TM_WouldBlock;
    }
    if let Some(deletion) = current_deletion(rel, batch, row) {
        return gone(deletion, cid, tmfd, tid);
    }
    // a row moved to another chunk by an UPDATE of its time: Postgres' own mark, so that a
    // concurrent writer is told "moved to another partition" as with heap
    store::record_deletion((*rel).rd_id, batch, row, if changing_part { Some(moved_partitions()) } else { None });
    pg_sys::TM_Result::TM_Ok
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_update(
    rel: pg_sys::Relation,
    otid: pg_sys::ItemPointer,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    snapshot: pg_sys::Snapshot,
    crosscheck: pg_sys::Snapshot,
    wait: bool,
    tmfd: *mut pg_sys::TM_FailureData,
    lockmode: *mut pg_sys::LockTupleMode::Type,
    update_indexes: *mut bool,
) -> pg_sys::TM_Result::Type {
    let Some((batch, row)) = batch_and_row(&*otid) else {
        return heap_fn!(tuple_update)(rel, otid, slot, cid, snapshot, crosscheck, wait, tmfd, lockmode, update_indexes);
    };
    let policy = if wait { pg_sys::LockWaitPolicy::LockWaitBlock } else { pg_sys::LockWaitPolicy::LockWaitSkip };
    if !lock_batch(rel, batch, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE, policy) {
        return pg_sys::TM_Result::TM_WouldBlock;
    }
    if let Some(deletion) = current_deletion(rel, batch, row) {
        return gone(deletion, cid, tmfd, otid);
    }
    // the new version is an ordinary heap row of the chunk, with every index entry
    heap_fn!(tuple_insert)(rel, slot, cid, 0, std::ptr::null_mut());
    store::record_deletion((*rel).rd_id, batch, row, Some((*slot).tts_tid));
    *lockmode = pg_sys::LockTupleMode::LockTupleExclusive;
    *update_indexes = true;
    pg_sys::TM_Result::TM_Ok
}

#[pg_guard]
unsafe extern "C-unwind" fn tuple_lock(
    rel: pg_sys::Relation,
    tid: pg_sys::ItemPointer,
    snapshot: pg_sys::Snapshot,
    slot: *mut pg_sys::TupleTableSlot,
    cid: pg_sys::CommandId,
    mode: pg_sys::LockTupleMode::Type,
    wait_policy: pg_sys::LockWaitPolicy::Type,
    flags: u8,
    tmfd: *mut pg_sys::TM_FailureData,
) -> pg_sys::TM_Result::Type {
    let Some((batch, row)) = batch_and_row(&*tid) else {
        return heap_fn!(tuple_lock)(rel, tid, snapshot, slot, cid, mode, wait_policy, flags, tmfd);
    };
    if !lock_batch(rel, batch, lock_mode(mode), wait_policy) {
        return pg_sys::TM_Result::TM_WouldBlock;
    }
    if let Some(deletion) = current_deletion(rel, batch, row) {
        let follow = flags & pg_sys::TUPLE_LOCK_FLAG_FIND_LAST_VERSION as u8 != 0;
        match deletion.moved_to {
            // EvalPlanQual asks for the latest version: it is a heap row, which heap locks
            Some(moved) if follow && !pg_sys::TransactionIdIsCurrentTransactionId(deletion.xmin)
                && moved.ip_posid != pg_sys::MovedPartitionsOffsetNumber as u16 =>
            {
                *tid = moved;
                let result = heap_fn!(tuple_lock)(rel, tid, snapshot, slot, cid, mode, wait_policy, flags, tmfd);
                (*tmfd).traversed = true;
                return result;
            }
            _ => return gone(deletion, cid, tmfd, tid),
        }
    }
    if !point_reads().fetch(rel, batch, row, pg_sys::GetLatestSnapshot(), slot) {
        (*tmfd).ctid = *tid;
        (*tmfd).xmax = pg_sys::InvalidTransactionId;
        return pg_sys::TM_Result::TM_Deleted;
    }
    pg_sys::TM_Result::TM_Ok
}

// Storage ---------------------------------------------------------------------------------------

fn forget_batches(relation: pg_sys::Oid) {
    crate::security::as_extension_owner(|| forget_batches_as_owner(relation))
}

fn forget_batches_as_owner(relation: pg_sys::Oid) {
    Spi::run_with_args(
        "DELETE FROM analytics_internal.compressed_batches WHERE chunk = $1; ",
        &[relation.into()],
    )
    .and_then(|_| Spi::run_with_args("DELETE FROM analytics_internal.compressed_row_deletions WHERE chunk = $1", &[relation.into()]))
    .and_then(|_| Spi::run_with_args("DELETE FROM analytics_internal.compressed_chunks WHERE chunk = $1", &[relation.into()]))
    .unwrap_or_else(|e| error!("lacaja_analytics: could not drop a chunk's compressed batches: {e}"));
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_set_new_filenode(
    rel: pg_sys::Relation,
    newrnode: *const pg_sys::RelFileNode,
    persistence: std::ffi::c_char,
    freeze_xid: *mut pg_sys::TransactionId,
    minmulti: *mut pg_sys::MultiXactId,
) {
    heap_fn!(relation_set_new_filenode)(rel, newrnode, persistence, freeze_xid, minmulti);
    if !KEEPING_BATCHES {
        forget_batches((*rel).rd_id);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_nontransactional_truncate(rel: pg_sys::Relation) {
    heap_fn!(relation_nontransactional_truncate)(rel);
    forget_batches((*rel).rd_id);
}

/// VACUUM FULL rewrites the heap part; the batches stay under the chunk's OID.
#[pg_guard]
unsafe extern "C-unwind" fn relation_copy_for_cluster(
    old_table: pg_sys::Relation,
    new_table: pg_sys::Relation,
    old_index: pg_sys::Relation,
    use_sort: bool,
    oldest_xmin: pg_sys::TransactionId,
    xid_cutoff: *mut pg_sys::TransactionId,
    multi_cutoff: *mut pg_sys::MultiXactId,
    num_tuples: *mut f64,
    tups_vacuumed: *mut f64,
    tups_recently_dead: *mut f64,
) {
    if !old_index.is_null() {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "CLUSTER cannot order a compressed chunk",
            "Its rows are ordered by compress_chunk already; VACUUM FULL compacts the rows that arrived since."
        );
    }
    as_heap(old_table, || {
        heap_fn!(relation_copy_for_cluster)(
            old_table, new_table, old_index, use_sort, oldest_xmin, xid_cutoff, multi_cutoff, num_tuples, tups_vacuumed,
            tups_recently_dead,
        )
    })
}

/// Whether an index keeps an entry for every compressed row: those Postgres enforces
/// something with (unique, exclusion); the others hold the heap's rows only.
pub unsafe fn index_is_complete(index: pg_sys::Relation) -> bool {
    let form = (*index).rd_index;
    !form.is_null() && ((*form).indisunique || (*form).indisexclusion)
}

#[pg_guard]
unsafe extern "C-unwind" fn index_build_range_scan(
    table_rel: pg_sys::Relation,
    index_rel: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
    allow_sync: bool,
    anyvisible: bool,
    progress: bool,
    start_blockno: pg_sys::BlockNumber,
    numblocks: pg_sys::BlockNumber,
    callback: pg_sys::IndexBuildCallback,
    callback_state: *mut std::ffi::c_void,
    scan: pg_sys::TableScanDesc,
) -> f64 {
    let complete = index_is_complete(index_rel);
    if !scan.is_null() && complete {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "a unique index on a compressed chunk is built by one process",
            "compress_chunk sets parallel_workers = 0 on the chunk; set it back to 0."
        );
    }
    let heap_scan = if scan.is_null() { scan } else { wrapped(scan).map_or(scan, |s| s.heap) };
    let mut tuples = as_heap(table_rel, || {
        heap_fn!(index_build_range_scan)(
            table_rel, index_rel, index_info, allow_sync, anyvisible, progress, start_blockno, numblocks, callback,
            callback_state, heap_scan,
        )
    });
    if complete && start_blockno == 0 && numblocks == pg_sys::InvalidBlockNumber {
        tuples += index_compressed_rows(table_rel, index_rel, index_info, callback, callback_state);
    }
    tuples
}

/// Feeds every live compressed row to an index build, as heap's build feeds its rows.
unsafe fn index_compressed_rows(
    table_rel: pg_sys::Relation,
    index_rel: pg_sys::Relation,
    index_info: *mut pg_sys::IndexInfo,
    callback: pg_sys::IndexBuildCallback,
    callback_state: *mut std::ffi::c_void,
) -> f64 {
    let callback = callback.expect("an index build passes its callback");
    let estate = pg_sys::CreateExecutorState();
    let econtext = pg_sys::MakePerTupleExprContext(estate);
    let slot = pg_sys::table_slot_create(table_rel, std::ptr::null_mut());
    (*econtext).ecxt_scantuple = slot;
    let predicate = pg_sys::ExecPrepareQual((*index_info).ii_Predicate, estate);
    let mut values = [pg_sys::Datum::from(0usize); pg_sys::INDEX_MAX_KEYS as usize];
    let mut nulls = [false; pg_sys::INDEX_MAX_KEYS as usize];
    let snapshot = pg_sys::GetLatestSnapshot();
    let seen = store::DeletionsSeen::As(snapshot);
    let relid = (*table_rel).rd_id;
    let mut count = 0f64;
    let row_context = batch::row_context(c"lacaja_analytics index build row");
    for batch in store::batch_ids(relid, snapshot) {
        let Some(bytes) = store::batch_data(relid, batch, snapshot) else { continue };
        let decoded = Batch::decode((*table_rel).rd_att, &bytes);
        let deleted: Vec<usize> = store::deletions(relid, batch, &seen).iter().map(|d| d.row).collect();
        for row in 0..decoded.rows {
            if deleted.contains(&row) {
                continue;
            }
            pg_sys::MemoryContextReset(row_context);
            pg_sys::MemoryContextReset((*econtext).ecxt_per_tuple_memory);
            let before = pg_sys::MemoryContextSwitchTo(row_context);
            decoded.store_row(row, slot);
            let mut tid = compressed_tid(batch, row);
            (*slot).tts_tid = tid;
            (*slot).tts_tableOid = relid;
            if predicate.is_null() || pg_sys::ExecQual(predicate, econtext) {
                pg_sys::FormIndexDatum(index_info, slot, estate, values.as_mut_ptr(), nulls.as_mut_ptr());
                callback(index_rel, &mut tid, values.as_mut_ptr(), nulls.as_mut_ptr(), true, callback_state);
                count += 1.0;
            }
            pg_sys::MemoryContextSwitchTo(before);
        }
    }
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    pg_sys::FreeExecutorState(estate);
    pg_sys::MemoryContextDelete(row_context);
    count
}

#[pg_guard]
unsafe extern "C-unwind" fn index_validate_scan(
    _table_rel: pg_sys::Relation,
    _index_rel: pg_sys::Relation,
    _index_info: *mut pg_sys::IndexInfo,
    _snapshot: pg_sys::Snapshot,
    _state: *mut pg_sys::ValidateIndexState,
) {
    ereport!(
        ERROR,
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        "CREATE INDEX CONCURRENTLY cannot build on a compressed chunk",
        "Create the index without CONCURRENTLY (the chunk is old: nobody writes to it), or decompress the chunk first."
    );
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_estimate_size(
    rel: pg_sys::Relation,
    attr_widths: *mut i32,
    pages: *mut pg_sys::BlockNumber,
    tuples: *mut f64,
    allvisfrac: *mut f64,
) {
    heap_fn!(relation_estimate_size)(rel, attr_widths, pages, tuples, allvisfrac);
    if let Some((rows, compressed_pages)) = store::compressed_size((*rel).rd_id) {
        // a freshly emptied heap is guessed at 10 pages by heap: the batches are the truth
        if (*(*rel).rd_rel).relpages == 0 {
            *pages = 0;
            *tuples = 0.0;
        }
        *pages += compressed_pages.ceil() as pg_sys::BlockNumber;
        *tuples += rows;
        *allvisfrac = 0.0;
    }
}

// The planner -------------------------------------------------------------------------------------

static mut PREVIOUS_GET_RELATION_INFO: pg_sys::get_relation_info_hook_type = None;

/// Removes from a compressed chunk's indexes those without its compressed rows (see the
/// module's comment): a plan over them would miss rows. Installed by `_PG_init`, which runs
/// before any compressed chunk is opened (opening one loads this library).
#[pg_guard]
unsafe extern "C-unwind" fn hide_incomplete_indexes(
    root: *mut pg_sys::PlannerInfo,
    relation_oid: pg_sys::Oid,
    inhparent: bool,
    rel: *mut pg_sys::RelOptInfo,
) {
    if let Some(previous) = PREVIOUS_GET_RELATION_INFO {
        previous(root, relation_oid, inhparent, rel);
    }
    if inhparent {
        return;
    }
    let relation = pg_sys::RelationIdGetRelation(relation_oid);
    let compressed = is_compressed(relation);
    if !relation.is_null() {
        pg_sys::RelationClose(relation);
    }
    if !compressed || (*rel).indexlist.is_null() {
        return;
    }
    let list = (*rel).indexlist;
    let mut kept: *mut pg_sys::List = std::ptr::null_mut();
    for i in 0..(*list).length as usize {
        let info = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::IndexOptInfo;
        let index = pg_sys::index_open((*info).indexoid, pg_sys::NoLock as pg_sys::LOCKMODE);
        let complete = index_is_complete(index);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        if complete {
            kept = pg_sys::lappend(kept, info as *mut std::ffi::c_void);
        }
    }
    (*rel).indexlist = kept;
}

pub fn init() {
    unsafe {
        PREVIOUS_GET_RELATION_INFO = pg_sys::get_relation_info_hook;
        pg_sys::get_relation_info_hook = Some(hide_incomplete_indexes);
    }
}

/// The access method's handler (compression.sql: `CREATE ACCESS METHOD lacaja_compressed`).
/// The routine is a static: the relation cache keeps the pointer for the life of the server.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn lacaja_compressed_am_handler(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    pg_sys::Datum::from(routine())
}

#[no_mangle]
pub extern "C" fn pg_finfo_lacaja_compressed_am_handler() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_filter_keeps_every_batch_that_may_hold_a_match() {
        let batch = |segment: Option<&[u8]>, min: Option<i64>, max: Option<i64>| store::BatchMeta {
            id: 0,
            segment: segment.map(<[u8]>::to_vec),
            min_order: min,
            max_order: max,
        };
        let day = |low: i64, high: i64| BatchFilter { min_order: Some(low), max_order: Some(high), ..Default::default() };
        let store_a = BatchFilter { segment: Some(b"a".to_vec()), ..Default::default() };
        let cases = [
            ("no filter", BatchFilter::default(), batch(Some(b"a"), Some(1), Some(9)), true),
            ("compared with NULL", BatchFilter { nothing: true, ..Default::default() }, batch(None, None, None), false),
            ("same store", store_a.clone(), batch(Some(b"a"), Some(1), Some(9)), true),
            ("other store", store_a.clone(), batch(Some(b"b"), Some(1), Some(9)), false),
            ("NULL store", store_a, batch(None, Some(1), Some(9)), false),
            ("range inside", day(3, 4), batch(None, Some(1), Some(9)), true),
            ("range touching the end", day(9, 20), batch(None, Some(1), Some(9)), true),
            ("range touching the start", day(-5, 1), batch(None, Some(1), Some(9)), true),
            ("range after", day(10, 20), batch(None, Some(1), Some(9)), false),
            ("range before", day(-5, 0), batch(None, Some(1), Some(9)), false),
            ("times all NULL", day(10, 20), batch(None, None, None), true),
            ("open above", BatchFilter { min_order: Some(5), ..Default::default() }, batch(None, Some(1), Some(4)), false),
            ("open below", BatchFilter { max_order: Some(5), ..Default::default() }, batch(None, Some(6), Some(9)), false),
        ];
        for (name, filter, meta, kept) in cases {
            assert_eq!(filter.keeps(&meta), kept, "{name}");
        }
    }

    #[test]
    fn item_pointers_of_compressed_rows_round_trip_and_never_look_like_heap_rows() {
        let cases = [(0, 0), (1, 999), (12345, 17), (0x7fff_fffe, 0)];
        for (batch, row) in cases {
            let tid = compressed_tid(batch, row);
            assert_eq!(batch_and_row(&tid), Some((batch, row)), "batch {batch} row {row}");
        }
        let heap_rows = [(0u32, 1u16), (0x7fff_ffff, 7), (4096, 291)];
        for (block, offset) in heap_rows {
            let tid = pg_sys::ItemPointerData {
                ip_blkid: pg_sys::BlockIdData { bi_hi: (block >> 16) as u16, bi_lo: block as u16 },
                ip_posid: offset,
            };
            assert_eq!(batch_and_row(&tid), None, "heap block {block}");
        }
        assert_eq!(batch_and_row(&moved_partitions()), None, "the moved-partitions mark");
    }
}
