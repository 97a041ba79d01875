//! The row work of compress_chunk and decompress_chunk (compression.sql does the checks, the
//! lock and the catalog): reading a chunk's rows into batches, and batches back into its heap.

use super::am;
use super::batch::{self, Batch, Value, MAX_BATCH_ROWS};
use super::store;
use pgrx::pg_sys;
use pgrx::prelude::*;

fn attribute_number(desc: pg_sys::TupleDesc, name: &str) -> Option<usize> {
    unsafe {
        (*desc).attrs.as_slice((*desc).natts as usize).iter().position(|a| {
            !a.attisdropped && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
        })
    }
}

/// Every live row of the chunk (its heap and, when recompressing, its batches).
unsafe fn read_rows(relation: pg_sys::Relation) -> Vec<Vec<Value>> {
    let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
    let routine = &*(*relation).rd_tableam;
    let flags = pg_sys::ScanOptions::SO_TYPE_SEQSCAN | pg_sys::ScanOptions::SO_ALLOW_PAGEMODE;
    let scan = routine.scan_begin.unwrap()(relation, snapshot, 0, std::ptr::null_mut(), std::ptr::null_mut(), flags);
    let slot = pg_sys::table_slot_create(relation, std::ptr::null_mut());
    let mut rows = Vec::new();
    let context = batch::row_context(c"lacaja_analytics compress row");
    while routine.scan_getnextslot.unwrap()(scan, pg_sys::ScanDirection::ForwardScanDirection, slot) {
        let before = pg_sys::MemoryContextSwitchTo(context);
        rows.push(batch::row_of_slot(slot));
        pg_sys::MemoryContextSwitchTo(before);
        pg_sys::ExecClearTuple(slot);
        pg_sys::MemoryContextReset(context);
    }
    pg_sys::MemoryContextDelete(context);
    pg_sys::ExecDropSingleTupleTableSlot(slot);
    routine.scan_end.unwrap()(scan);
    pg_sys::UnregisterSnapshot(snapshot);
    rows
}

/// Compresses the chunk's rows into batches: one segment value per batch, ordered by
/// `order_by` within it, at most MAX_BATCH_ROWS rows each. The chunk already has the
/// compressed access method and is locked ACCESS EXCLUSIVE by the caller. Replaces its earlier
/// batches, then empties its heap (a new file, as TRUNCATE gives it, keeping the batches).
/// Returns (rows, batches, bytes of the batches).
#[pg_extern(schema = "analytics_internal")]
pub fn _compress_chunk_rows(chunk: pg_sys::Oid, segment_by: Option<&str>, order_by: &str) -> TableIterator<'static, (name!(rows, i64), name!(batches, i32), name!(compressed_bytes, i64))> {
    unsafe {
        let relation = pg_sys::table_open(chunk, pg_sys::NoLock as pg_sys::LOCKMODE);
        if !am::is_compressed(relation) {
            error!("lacaja_analytics: chunk {} does not have the compressed access method yet", u32::from(chunk));
        }
        let desc = (*relation).rd_att;
        let segment = segment_by.map(|name| {
            attribute_number(desc, name).unwrap_or_else(|| error!("lacaja_analytics: segment_by column \"{name}\" not found"))
        });
        let order = attribute_number(desc, order_by).unwrap_or_else(|| error!("lacaja_analytics: order_by column \"{order_by}\" not found"));
        let mut rows = read_rows(relation);
        let row_count = rows.len() as i64;
        rows.sort_by(|a, b| {
            let segment_order = segment.map_or(std::cmp::Ordering::Equal, |s| a[s].cmp(&b[s]));
            segment_order.then_with(|| a[order].cmp(&b[order]))
        });
        Spi::run_with_args("DELETE FROM analytics_internal.compressed_batches WHERE chunk = $1", &[chunk.into()])
            .and_then(|_| Spi::run_with_args("DELETE FROM analytics_internal.compressed_row_deletions WHERE chunk = $1", &[chunk.into()]))
            .unwrap_or_else(|e| error!("lacaja_analytics: {e}"));
        let mut batches = 0i32;
        let mut bytes = 0i64;
        let mut start = 0usize;
        while start < rows.len() {
            let mut end = start + 1;
            while end < rows.len() && end - start < MAX_BATCH_ROWS && segment.map_or(true, |s| rows[end][s] == rows[start][s]) {
                end += 1;
            }
            let slice = &rows[start..end];
            let data = batch::encode(desc, slice);
            let bound = |value: &Value| if let Value::Word(w) = value { Some(*w) } else { None };
            let min_order = slice.iter().filter_map(|r| bound(&r[order])).min();
            let max_order = slice.iter().filter_map(|r| bound(&r[order])).max();
            bytes += data.len() as i64;
            Spi::run_with_args(
                "INSERT INTO analytics_internal.compressed_batches (chunk, batch_id, row_count, segment, min_order, max_order, data)
                 VALUES ($1, nextval('analytics_internal.compressed_batch_ids'), $2, $3, $4, $5, $6)",
                &[
                    chunk.into(),
                    (slice.len() as i32).into(),
                    segment.and_then(|s| batch::segment_bytes(&slice[0][s])).into(),
                    min_order.into(),
                    max_order.into(),
                    data.into(),
                ],
            )
            .unwrap_or_else(|e| error!("lacaja_analytics: {e}"));
            batches += 1;
            start = end;
        }
        drop(rows);
        empty_heap(relation);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        TableIterator::once((row_count, batches, bytes))
    }
}

/// Gives the chunk's heap (and TOAST) a new, empty file, as TRUNCATE does, keeping its batches.
unsafe fn empty_heap(relation: pg_sys::Relation) {
    am::KEEPING_BATCHES = true;
    PgTryBuilder::new(|| {
        let persistence = (*(*relation).rd_rel).relpersistence;
        pg_sys::RelationSetNewRelfilenode(relation, persistence);
        let toast = (*(*relation).rd_rel).reltoastrelid;
        if toast != pg_sys::InvalidOid {
            let toast_relation = pg_sys::table_open(toast, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE);
            pg_sys::RelationSetNewRelfilenode(toast_relation, persistence);
            pg_sys::table_close(toast_relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
        am::KEEPING_BATCHES = false;
    })
    .catch_others(|e| {
        am::KEEPING_BATCHES = false;
        e.rethrow()
    })
    .execute();
    pg_sys::CommandCounterIncrement();
}

/// Writes every live compressed row of the chunk into its heap (without index entries: the
/// caller rebuilds the indexes once the chunk is heap again). Returns the rows written.
#[pg_extern(schema = "analytics_internal")]
pub fn _decompress_chunk_rows(chunk: pg_sys::Oid) -> i64 {
    unsafe {
        let relation = pg_sys::table_open(chunk, pg_sys::NoLock as pg_sys::LOCKMODE);
        if !am::is_compressed(relation) {
            pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
            return 0;
        }
        let desc = (*relation).rd_att;
        let snapshot = pg_sys::RegisterSnapshot(pg_sys::GetLatestSnapshot());
        let seen = store::DeletionsSeen::As(snapshot);
        let slot = pg_sys::MakeSingleTupleTableSlot(desc, &pg_sys::TTSOpsVirtual);
        let cid = pg_sys::GetCurrentCommandId(true);
        let mut written = 0i64;
        let context = batch::row_context(c"lacaja_analytics decompress row");
        for batch_id in store::batch_ids(chunk, snapshot) {
            let Some(bytes) = store::batch_data(chunk, batch_id, snapshot) else { continue };
            let decoded = Batch::decode(desc, &bytes);
            let deleted: Vec<usize> = store::deletions(chunk, batch_id, &seen).iter().map(|d| d.row).collect();
            for row in (0..decoded.rows).filter(|r| !deleted.contains(r)) {
                let before = pg_sys::MemoryContextSwitchTo(context);
                decoded.store_row(row, slot);
                let tuple = pg_sys::heap_form_tuple(desc, (*slot).tts_values, (*slot).tts_isnull);
                pg_sys::heap_insert(relation, tuple, cid, 0, std::ptr::null_mut());
                pg_sys::MemoryContextSwitchTo(before);
                pg_sys::ExecClearTuple(slot);
                pg_sys::MemoryContextReset(context);
                written += 1;
            }
        }
        pg_sys::MemoryContextDelete(context);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        written
    }
}
